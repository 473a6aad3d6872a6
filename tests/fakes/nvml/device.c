/* Static per-device facts: identity, PCI location, architecture, memory, MIG and NUMA. */
#include <stdio.h>
#include <string.h>

#include "fake_nvml.h"

static nvmlReturn_t copy_out(const char *value, char *buffer, unsigned int length)
{
    if (buffer == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buffer, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

/* Every query starts the same way: a valid handle, no injected failure, a non-NULL output. */
#define DEVICE_PREAMBLE(out)                                         \
    do {                                                             \
        nvmlReturn_t preamble_rc = fake_check_device(device, __func__); \
        if (preamble_rc != NVML_SUCCESS)                             \
            return preamble_rc;                                      \
        if ((out) == NULL)                                           \
            return NVML_ERROR_INVALID_ARGUMENT;                      \
    } while (0)

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    DEVICE_PREAMBLE(index);
    *index = device->index;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    DEVICE_PREAMBLE(uuid);
    return copy_out(device->uuid, uuid, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    DEVICE_PREAMBLE(name);
    return copy_out(device->name, name, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, nvmlBrandType_t *type)
{
    DEVICE_PREAMBLE(type);
    *type = device->brand;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch)
{
    DEVICE_PREAMBLE(arch);
    *arch = device->architecture;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    DEVICE_PREAMBLE(major);
    if (minor == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}

static void fill_pci_info(const struct fake_gpu *gpu, nvmlPciInfo_t *pci)
{
    unsigned int function;
    memset(pci, 0, sizeof(*pci));
    /* The inventory loader already checked the address parses. */
    fake_parse_pci_bus_id(gpu->pci_bus_id, &pci->domain, &pci->bus, &pci->device, &function);
    snprintf(pci->busId, sizeof(pci->busId), "%08X:%02X:%02X.%X", pci->domain, pci->bus, pci->device, function);
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X", pci->domain & 0xFFFFu, pci->bus,
             pci->device & 0xFFu, function & 0xFu);
    pci->pciDeviceId = gpu->pci_device_id;
    pci->pciSubSystemId = gpu->pci_subsystem_id;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEVICE_PREAMBLE(pci);
    fill_pci_info(device, pci);
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEVICE_PREAMBLE(pci);
    fill_pci_info(device, pci);
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    DEVICE_PREAMBLE(minorNumber);
    *minorNumber = device->minor_number;
    return NVML_SUCCESS;
}

/* Used memory grows with the processes on the GPU; never past what the GPU has. */
static unsigned long long allocated_bytes(const struct fake_gpu *gpu)
{
    unsigned long long used = fake_activity_used_bytes(gpu);
    unsigned long long usable = gpu->memory_total - gpu->memory_reserved;
    return used < usable ? used : usable;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    DEVICE_PREAMBLE(memory);
    /* The v1 struct has no `reserved`: NVML folds the driver's reservation into `used`. */
    memory->total = device->memory_total;
    memory->used = device->memory_reserved + allocated_bytes(device);
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    DEVICE_PREAMBLE(memory);
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->memory_total;
    memory->reserved = device->memory_reserved;
    memory->used = allocated_bytes(device);
    memory->free = memory->total - memory->reserved - memory->used;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                                   unsigned int *pendingMode)
{
    DEVICE_PREAMBLE(currentMode);
    if (pendingMode == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *currentMode = device->mig_current;
    *pendingMode = device->mig_pending;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t device, unsigned int *node)
{
    DEVICE_PREAMBLE(node);
    /* The inventory spells "no NUMA affinity" -1; the fake answers NOT_SUPPORTED for it, the
     * answer callers must handle anyway from drivers and platforms without the query. */
    if (device->numa_node < 0)
        return NVML_ERROR_NOT_SUPPORTED;
    *node = (unsigned int)device->numa_node;
    return NVML_SUCCESS;
}
