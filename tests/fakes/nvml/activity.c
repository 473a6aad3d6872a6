/*
 * Live activity of a GPU: utilization and the compute processes using it.
 *
 * This is the seam for a later shared occupancy state: today both come from the inventory file;
 * a fake that tracks what fake-CUDA processes really do only has to change the two fake_activity_*
 * functions, and every NVML entry point below (and memory `used` in device.c) follows.
 */
#define _GNU_SOURCE
#include <string.h>
#include <unistd.h>

#include "fake_nvml.h"

nvmlReturn_t fake_activity_utilization(const struct fake_gpu *gpu, nvmlUtilization_t *out)
{
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
