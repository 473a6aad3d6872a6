/*
 * The real NVML for the shim's own questions (device memory in use while a context is created,
 * device utilization for the SM cap, the process list for learning this process's host PID):
 * loaded and initialised once per process, by exact names from dlopen("libnvidia-ml.so.1"), and
 * kept initialised for the process's life. NVML counts nvmlInit references, so the application's
 * own nvmlInit/nvmlShutdown pairs are unaffected. The NVML hooks (nvml.c) resolve their own.
 */
#include <dlfcn.h>
#include <pthread.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
/* Written once under g_once, read-only afterwards; usable only when g_ready. */
static struct vgpu_nvml_api g_api;
static int g_ready;

static void load(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NODELETE);
    int (*init)(void);
    if (!h)
        return;
    *(void **)&init = vgpu_real_dlsym(h, "nvmlInit_v2");
    *(void **)&g_api.by_uuid = vgpu_real_dlsym(h, "nvmlDeviceGetHandleByUUID");
    *(void **)&g_api.memory = vgpu_real_dlsym(h, "nvmlDeviceGetMemoryInfo");
    *(void **)&g_api.utilization = vgpu_real_dlsym(h, "nvmlDeviceGetUtilizationRates");
    /* _v3 and _v2 share one layout (vgpu_nvml_process); either will do. */
    *(void **)&g_api.processes = vgpu_real_dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (!g_api.processes)
        *(void **)&g_api.processes = vgpu_real_dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v2");
    if (init && g_api.by_uuid && init() == 0)
        g_ready = 1;
}

const struct vgpu_nvml_api *vgpu_nvml(void)
{
    pthread_once(&g_once, load);
    return g_ready ? &g_api : NULL;
}

void *vgpu_nvml_device(const char *uuid)
{
    const struct vgpu_nvml_api *api = vgpu_nvml();
    void *dev = NULL;
    if (!api || api->by_uuid(uuid, &dev) != 0)
        return NULL;
    return dev;
}
