/*
 * Fail-safe accounting (docs/shim.md, "When the driver fails"). Wherever a driver or NVML call
 * decides whether or how a limit applies, a failure of that call is answered by applying the limit
 * anyway (each call site says how), and counted here: in the claim's region, so the node metrics
 * show it (vgpu_dra_claim_limit_errors_total), and with one stderr line per process and call, so
 * the workload's own log says so too. An error never means "unlimited" without this counter.
 */
#include "vgpu_internal.h"

#define CALLS 12 /* VGPU_ERRCALL_* are 1..11 */

/* One flag per call: each process says it once (vgpu_log_once). */
static int g_logged[CALLS];

static const char *const g_what[CALLS] = {
    [VGPU_ERRCALL_CAPTURE_QUERY] = "cuStreamIsCapturing failed; launches are held and timed as if no graph "
                                   "capture ran (the SM cap holds)",
    [VGPU_ERRCALL_LAUNCH_DEVICE] = "the device of a launch could not be identified (cuCtxGetDevice/"
                                   "cuDeviceGetUuid failed); the strictest SM cap of this process was applied",
    [VGPU_ERRCALL_EVENT_RECORD] = "a launch could not be timed (cuCtxGetCurrent/cuEventCreate/cuEventRecord "
                                  "failed); it is charged from NVML device utilization instead",
    [VGPU_ERRCALL_EVENT_READ] = "a launch's timing could not be read (cuEventQuery/cuEventElapsedTime failed); "
                                "it is charged from NVML device utilization instead",
    [VGPU_ERRCALL_NO_EVENTS] = "the driver has no event API; launches are charged from NVML device "
                               "utilization instead",
    [VGPU_ERRCALL_NVML_UTIL] = "NVML device utilization is unreadable; a soft SM cap holds like a hard one and "
                               "untimed launches are charged 1 ms each",
    [VGPU_ERRCALL_ARRAY_REQ] = "cuArrayGetMemoryRequirements failed; the array is charged an upper bound of "
                               "its size",
    [VGPU_ERRCALL_MIPMAP_REQ] = "cuMipmappedArrayGetMemoryRequirements failed; the mipmapped array is charged "
                                "an upper bound of its size",
    [VGPU_ERRCALL_CONTEXT] = "the context footprint could not be measured (no NVML or current context to "
                             "measure with, or another process started on the GPU at the same moment) and the "
                             "claim has no earlier measurement; it is charged an upper bound instead (the GPU's used "
                             "memory as the driver reports it, at most 2 GiB), or refused when that does not fit",
    [VGPU_ERRCALL_MONITOR] = "the SM cap's monitor thread could not start; launches are charged 1 ms each and "
                             "a soft cap holds like a hard one",
    [VGPU_ERRCALL_UNDO] = "undoing an allocation (or context) that did not fit under the wall failed "
                          "(cuMemFree/cuArrayDestroy/cuMipmappedArrayDestroy/cuCtxDestroy/cuDevicePrimaryCtxRelease); "
                          "its charge is kept until the process exits",
};

void vgpu_limit_error(struct vgpu_gpu *gpu, int call, int code)
{
    if (gpu) {
        __atomic_add_fetch(&gpu->limit_errors, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&gpu->limit_error_call, call, __ATOMIC_RELAXED);
        __atomic_store_n(&gpu->limit_error_code, code, __ATOMIC_RELAXED);
    }
    if (call > 0 && call < CALLS && g_what[call])
        vgpu_log_once(&g_logged[call], "%.*s: %s (error %d)", gpu ? VGPU_UUID_LEN - 1 : 3, gpu ? gpu->uuid : "GPU",
                      g_what[call], code);
}
