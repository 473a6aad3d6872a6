/*
 * Live activity of a GPU: utilization and the compute processes using it.
 *
 * Utilization follows the fake CUDA driver when both share a node: with FAKE_CUDA_STATE naming
 * the fake driver's state file and the GPU's UUID among its devices, `gpu` is the percentage of
 * the last sample period (100 ms, like NVML's own sampling) the device spent running kernels of
 * any process (the sum of their device time, capped at 100). Otherwise both numbers come from
 * the inventory file. Process lists and memory in use always come from the inventory.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "fake_nvml.h"

#define SAMPLE_PERIOD_NS 100000000LL

/* The fake driver's state, mapped read-only at the first utilization query; samples per device
 * slot of that state. Guarded by g_occ_lock. */
static pthread_mutex_t g_occ_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct fake_state *g_occ;
static int g_occ_tried;
static struct {
    long long at_ns, busy_ns;
    unsigned int percent;
} g_sample[FAKE_MAX_DEVICES];

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const struct fake_state *occupancy(void)
{
    const char *path;
    struct stat st;
    int fd;
    if (g_occ_tried)
        return g_occ;
    g_occ_tried = 1;
    path = getenv("FAKE_CUDA_STATE");
    if (!path || !*path || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return NULL;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(struct fake_state)) {
        void *map = mmap(NULL, sizeof(struct fake_state), PROT_READ, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED)
            g_occ = map;
    }
    close(fd);
    return g_occ;
}

/* Utilization from the fake driver's occupancy; 0 when this GPU is not one of its devices. */
static int utilization_from_occupancy(const struct fake_gpu *gpu, unsigned int *percent)
{
    const struct fake_state *st;
    int found = 0;
    pthread_mutex_lock(&g_occ_lock);
    st = occupancy();
    for (int d = 0; st && d < FAKE_MAX_DEVICES && !found; d++) {
        if (strncmp(st->uuid[d], gpu->uuid, sizeof(st->uuid[d])) != 0)
            continue;
        found = 1;
        long long now = mono_ns(), busy = __atomic_load_n(&st->busy_ns[d], __ATOMIC_ACQUIRE);
        if (g_sample[d].at_ns == 0) {
            g_sample[d].at_ns = now;
            g_sample[d].busy_ns = busy;
        } else if (now - g_sample[d].at_ns >= SAMPLE_PERIOD_NS) {
            long long pct = (busy - g_sample[d].busy_ns) * 100 / (now - g_sample[d].at_ns);
            g_sample[d].percent = (unsigned int)(pct < 0 ? 0 : pct > 100 ? 100 : pct);
            g_sample[d].at_ns = now;
            g_sample[d].busy_ns = busy;
        }
        *percent = g_sample[d].percent;
    }
    pthread_mutex_unlock(&g_occ_lock);
    return found;
}

nvmlReturn_t fake_activity_utilization(const struct fake_gpu *gpu, nvmlUtilization_t *out)
{
    unsigned int live;
    if (utilization_from_occupancy(gpu, &live)) {
        out->gpu = live;
        out->memory = gpu->util_memory;
        return NVML_SUCCESS;
    }
    out->gpu = gpu->util_gpu;
    out->memory = gpu->util_memory;
    return NVML_SUCCESS;
}

unsigned int fake_activity_pid(const struct fake_process *process)
{
    return process->is_self ? (unsigned int)getpid() : process->pid;
}

unsigned long long fake_activity_used_bytes(const struct fake_gpu *gpu)
{
    unsigned long long used = 0;
    size_t i;
    for (i = 0; i < gpu->process_count; i++)
        used += gpu->processes[i].used_bytes;
    return used;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    if (rc != NVML_SUCCESS)
        return rc;
    if (utilization == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fake_activity_utilization(device, utilization);
}

/*
 * NVML's two-call protocol: with *count smaller than the number of processes (or infos NULL)
 * the call stores the needed count and answers INSUFFICIENT_SIZE; otherwise it fills the array
 * and stores how many it wrote. Zero processes answer SUCCESS with *count = 0.
 */
static nvmlReturn_t check_process_query(nvmlDevice_t device, const char *function, unsigned int *count,
                                        const void *infos)
{
    nvmlReturn_t rc = fake_check_device(device, function);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->process_count == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (infos == NULL || *count < device->process_count) {
        *count = (unsigned int)device->process_count;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = (unsigned int)device->process_count;
    return NVML_SUCCESS;
}

static nvmlReturn_t processes_current(nvmlDevice_t device, const char *function, unsigned int *count,
                                      nvmlProcessInfo_t *infos)
{
    nvmlReturn_t rc = check_process_query(device, function, count, infos);
    size_t i;
    if (rc != NVML_SUCCESS || device->process_count == 0)
        return rc;
    for (i = 0; i < device->process_count; i++) {
        memset(&infos[i], 0, sizeof(infos[i]));
        infos[i].pid = fake_activity_pid(&device->processes[i]);
        infos[i].usedGpuMemory = device->processes[i].used_bytes;
        /* Not a MIG device: NVML reports both instance ids as "not available". */
        infos[i].gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        infos[i].computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
    }
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                      nvmlProcessInfo_t *infos)
{
    return processes_current(device, __func__, infoCount, infos);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                      nvmlProcessInfo_t *infos)
{
    return processes_current(device, __func__, infoCount, infos);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                                   nvmlProcessInfo_v1_t *infos)
{
    nvmlReturn_t rc = check_process_query(device, __func__, infoCount, infos);
    size_t i;
    if (rc != NVML_SUCCESS || device->process_count == 0)
        return rc;
    for (i = 0; i < device->process_count; i++) {
        memset(&infos[i], 0, sizeof(infos[i]));
        infos[i].pid = fake_activity_pid(&device->processes[i]);
        infos[i].usedGpuMemory = device->processes[i].used_bytes;
    }
    return NVML_SUCCESS;
}
