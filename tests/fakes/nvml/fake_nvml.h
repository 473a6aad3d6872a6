/*
 * Fake libnvidia-ml.so.1 for tests: the subset of the NVML ABI that vgpu-dra (through the
 * unmodified pynvml) and the shim's tests use, answered from an inventory file.
 *
 * The types below mirror NVML's public ABI (struct layouts, enum values, version words) so that
 * callers compiled against the real nvml.h, and pynvml's ctypes structures, read the same bytes.
 * Only what the fake implements is declared; see README.md for the inventory format.
 */
#ifndef FAKE_NVML_H
#define FAKE_NVML_H

#include <stddef.h>

#define FAKE_NVML_EXPORT __attribute__((visibility("default")))

/* ---- NVML ABI subset ------------------------------------------------------------------------ */

typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef struct fake_gpu *nvmlDevice_t;

typedef unsigned int nvmlBrandType_t;
typedef unsigned int nvmlDeviceArchitecture_t;

#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16

typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used; /* v1: includes the driver's reserved memory */
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used; /* v2: allocations only, reserved excluded */
} nvmlMemory_v2_t;

/* NVML_STRUCT_VERSION(Memory, 2): sizeof in the low bits, version in the top byte. */
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

/* The unversioned nvmlDeviceGetComputeRunningProcesses symbol uses the v1 layout. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

/* _v2 and _v3 share this layout (v3 only changed the semantics of MIG instance ids). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFu

/* ---- The fake's model of a node ------------------------------------------------------------- */

/* One injected failure: `function` answers `code` instead of its normal result. */
struct fake_error {
    char function[64];
    nvmlReturn_t code;
};

struct fake_process {
    unsigned int pid;
    int is_self; /* `process self ...`: reported with the pid of the calling process */
    unsigned long long used_bytes;
};

#define FAKE_MAX_ERRORS 16
#define FAKE_NAME_LEN 96
#define FAKE_UUID_LEN 96

struct fake_gpu {
    unsigned int index;
    char uuid[FAKE_UUID_LEN];
    char name[FAKE_NAME_LEN];
    nvmlBrandType_t brand;
    nvmlDeviceArchitecture_t architecture;
    int cc_major;
    int cc_minor;
    char pci_bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned int pci_device_id;
    unsigned int pci_subsystem_id;
    unsigned int minor_number;
    int numa_node;
    unsigned long long memory_total;
    unsigned long long memory_reserved;
    unsigned int mig_current;
    unsigned int mig_pending;
    unsigned int util_gpu;
    unsigned int util_memory;
    struct fake_process *processes;
    size_t process_count;
    struct fake_error errors[FAKE_MAX_ERRORS];
    size_t error_count;
};

struct fake_inventory {
    char driver_version[64];
    int cuda_driver_version; /* 12040 for CUDA 12.4, as nvmlSystemGetCudaDriverVersion reports */
    char nvml_version[96];
    struct fake_gpu *gpus;
    size_t gpu_count;
    struct fake_error errors[FAKE_MAX_ERRORS]; /* failures of system-level calls */
    size_t error_count;
};

/* inventory.c: parse the flat inventory file (format in README.md). Returns 0 on success; on
 * failure writes one line naming the file, line and problem to stderr and returns -1. */
int fake_inventory_load(const char *path, struct fake_inventory *out);
void fake_inventory_free(struct fake_inventory *inv);

/* errors.c */
int fake_error_code_from_text(const char *text, nvmlReturn_t *out);
nvmlReturn_t fake_injected_error(const struct fake_error *errors, size_t count, const char *function);

/* system.c: the loaded inventory while initialised, NULL otherwise. */
const struct fake_inventory *fake_current(void);
/* "[domain:]bus:device.function" in hex; 0 on success. */
int fake_parse_pci_bus_id(const char *text, unsigned int *domain, unsigned int *bus,
                          unsigned int *device, unsigned int *function);
/* Validates a handle against the loaded inventory; NVML_SUCCESS or the error to return. */
nvmlReturn_t fake_check_device(nvmlDevice_t device, const char *function);

/* activity.c: the seam for live activity (utilization now; shared occupancy later). */
nvmlReturn_t fake_activity_utilization(const struct fake_gpu *gpu, nvmlUtilization_t *out);
unsigned long long fake_activity_used_bytes(const struct fake_gpu *gpu);
unsigned int fake_activity_pid(const struct fake_process *process);

/* processes.c: processes a test sets while NVML runs (FAKE_NVML_PROCESSES, see README.md). */
struct fake_listed {
    unsigned int pid;
    unsigned long long used;
};
/* Appends the live file's compute (graphics = 0) or graphics entries of gpu to out from index n
 * (writing only below cap); returns the new count. */
size_t fake_live_processes(const struct fake_gpu *gpu, int graphics, struct fake_listed *out, size_t cap, size_t n);
unsigned long long fake_live_graphics_bytes(const struct fake_gpu *gpu);
/* The code the live file makes `function` answer, NVML_SUCCESS when none. */
nvmlReturn_t fake_live_error(const char *function);
/* The processes of gpu a query lists, written below cap; returns how many there are. */
typedef size_t (*fake_process_lister)(const struct fake_gpu *gpu, struct fake_listed *out, size_t cap);
/* NVML's two-call protocol for a process query (compute or graphics, by `list`): with *count
 * smaller than the number of processes (or infos NULL) the call stores the needed count and
 * answers INSUFFICIENT_SIZE; otherwise it fills the array and stores how many it wrote. Zero
 * processes answer SUCCESS with *count = 0. `v1` selects the unversioned symbol's layout. */
nvmlReturn_t fake_process_query(nvmlDevice_t device, const char *function, unsigned int *count, void *infos, int v1,
                                fake_process_lister list);
/* events.c: whether the control file (FAKE_NVML_CONTROL) says this GPU fell off the bus. */
int fake_gpu_lost(const struct fake_gpu *gpu);

#endif
