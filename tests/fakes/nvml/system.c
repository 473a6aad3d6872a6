/* Library lifetime (init/shutdown), system-level queries and device handles. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fake_nvml.h"

/*
 * The loaded inventory and NVML's init refcount. Owned by nvmlInit (all variants) and nvmlShutdown under
 * g_lock: the first init loads the file named by FAKE_NVML_INVENTORY, the last shutdown frees
 * it, so one process can switch inventories between init cycles (as tests do). Queries read
 * the inventory without the lock: it is immutable while the refcount is above zero, and calling
 * NVML after the last shutdown is a caller bug in real NVML too.
 */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fake_inventory g_inventory;
static unsigned int g_refcount;

const struct fake_inventory *fake_current(void)
{
    return g_refcount > 0 ? &g_inventory : NULL;
}

static nvmlReturn_t system_error(const char *function)
{
    const struct fake_inventory *inv = fake_current();
    if (inv == NULL)
        return NVML_ERROR_UNINITIALIZED;
    return fake_injected_error(inv->errors, inv->error_count, function);
}

nvmlReturn_t fake_check_device(nvmlDevice_t device, const char *function)
{
    const struct fake_inventory *inv = fake_current();
    nvmlReturn_t rc;
    if (inv == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || inv->gpu_count == 0 || device < inv->gpus || device >= inv->gpus + inv->gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (fake_gpu_lost(device))
        return NVML_ERROR_GPU_IS_LOST;
    rc = fake_injected_error(inv->errors, inv->error_count, function);
    if (rc != NVML_SUCCESS)
        return rc;
    return fake_injected_error(device->errors, device->error_count, function);
}

static nvmlReturn_t init_locked(void)
{
    const char *fail = getenv("FAKE_NVML_FAIL_INIT");
    const char *path = getenv("FAKE_NVML_INVENTORY");
    nvmlReturn_t code;

    if (g_refcount > 0) {
        g_refcount++;
        return NVML_SUCCESS;
    }
    if (fail != NULL && *fail != '\0') {
        if (fake_error_code_from_text(fail, &code) != 0) {
            fprintf(stderr, "fake-nvml: FAKE_NVML_FAIL_INIT=%s is not an NVML return code\n", fail);
            return NVML_ERROR_UNKNOWN;
        }
        return code;
    }
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "fake-nvml: FAKE_NVML_INVENTORY is not set; answering as a node without a driver\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if (fake_inventory_load(path, &g_inventory) != 0)
        return NVML_ERROR_UNKNOWN;
    g_refcount = 1;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t rc;
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for a fake without hardware */
    pthread_mutex_lock(&g_lock);
    rc = init_locked();
    pthread_mutex_unlock(&g_lock);
    return rc;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&g_lock);
    if (g_refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (--g_refcount == 0) {
        fake_inventory_free(&g_inventory);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static nvmlReturn_t copy_out(const char *value, char *buffer, unsigned int length)
{
    if (buffer == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buffer, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = system_error("nvmlSystemGetDriverVersion");
    return rc != NVML_SUCCESS ? rc : copy_out(fake_current()->driver_version, version, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = system_error("nvmlSystemGetNVMLVersion");
    return rc != NVML_SUCCESS ? rc : copy_out(fake_current()->nvml_version, version, length);
}

static nvmlReturn_t cuda_version(const char *function, int *out)
{
    nvmlReturn_t rc = system_error(function);
    if (rc != NVML_SUCCESS)
        return rc;
    if (out == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = fake_current()->cuda_driver_version;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion", cudaDriverVersion);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion_v2", cudaDriverVersion);
}

static nvmlReturn_t device_count(const char *function, unsigned int *count)
{
    nvmlReturn_t rc = system_error(function);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)fake_current()->gpu_count;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    return device_count("nvmlDeviceGetCount_v2", deviceCount);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return device_count("nvmlDeviceGetCount", deviceCount);
}

static nvmlReturn_t handle_by_index(const char *function, unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = system_error(function);
    const struct fake_inventory *inv = fake_current();
    if (rc != NVML_SUCCESS)
        return rc;
    if (device == NULL || index >= inv->gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &inv->gpus[index];
    if (fake_gpu_lost(*device))
        return NVML_ERROR_GPU_IS_LOST;
    return fake_injected_error((*device)->errors, (*device)->error_count, function);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index("nvmlDeviceGetHandleByIndex_v2", index, device);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index("nvmlDeviceGetHandleByIndex", index, device);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t rc = system_error("nvmlDeviceGetHandleByUUID");
    const struct fake_inventory *inv = fake_current();
    size_t i;
    if (rc != NVML_SUCCESS)
        return rc;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < inv->gpu_count; i++) {
        if (strcmp(inv->gpus[i].uuid, uuid) == 0) {
            *device = &inv->gpus[i];
            return fake_gpu_lost(*device) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* "[domain:]bus:device.function" in hex, as NVML and sysfs spell PCI addresses. */
int fake_parse_pci_bus_id(const char *text, unsigned int *domain, unsigned int *bus,
                          unsigned int *device, unsigned int *function)
{
    char tail;
    if (sscanf(text, "%x:%x:%x.%x%c", domain, bus, device, function, &tail) == 4)
        return 0;
    *domain = 0;
    if (sscanf(text, "%x:%x.%x%c", bus, device, function, &tail) == 3)
        return 0;
    return -1;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    nvmlReturn_t rc = system_error("nvmlDeviceGetHandleByPciBusId_v2");
    const struct fake_inventory *inv = fake_current();
    unsigned int want[4], have[4];
    size_t i;
    if (rc != NVML_SUCCESS)
        return rc;
    if (pciBusId == NULL || device == NULL ||
        fake_parse_pci_bus_id(pciBusId, &want[0], &want[1], &want[2], &want[3]) != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < inv->gpu_count; i++) {
        if (fake_parse_pci_bus_id(inv->gpus[i].pci_bus_id, &have[0], &have[1], &have[2], &have[3]) == 0 &&
            memcmp(want, have, sizeof(want)) == 0) {
            *device = &inv->gpus[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}
