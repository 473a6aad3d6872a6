/*
 * cuInit and context creation. A context occupies device memory of its own (hundreds of MiB on
 * real GPUs); the first context this process creates on a device is measured and charged to the
 * claim like an allocation: the drop of device-wide free memory across the creating call, read
 * through the driver (cuMemGetInfo) when a context on that device is already current, else through
 * NVML. Without a baseline, or when the drop is implausibly large for a context (another
 * tenant allocated meanwhile), nothing is charged (docs/shim.md). A context that does not fit under the
 * wall is undone and the call answers CUDA_ERROR_OUT_OF_MEMORY, as the driver would.
 * The charge stays until the process ends (its slot is refunded then).
 */
#include <dlfcn.h>
#include <string.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

VGPU_EXPORT CUresult cuInit(unsigned int flags)
{
    VGPU_GATE(cuInit, (flags));
    return vgpu_real.cuInit(flags);
}

/* ---- device-wide used memory through NVML (only when no context is current) ---------------- */

typedef struct {
    unsigned long long total, free, used;
} nvml_memory;
typedef int (*nvml_init_fn)(void);
typedef int (*nvml_by_uuid_fn)(const char *, void **);
typedef int (*nvml_meminfo_fn)(void *, nvml_memory *);

static int64_t nvml_used(const char *uuid)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NODELETE);
    nvml_init_fn init, shutdown;
    nvml_by_uuid_fn by_uuid;
    nvml_meminfo_fn meminfo;
    void *dev = NULL;
    nvml_memory mem;
    int64_t used = -1;
    if (!h)
        return -1;
    init = (nvml_init_fn)vgpu_real_dlsym(h, "nvmlInit_v2");
    shutdown = (nvml_init_fn)vgpu_real_dlsym(h, "nvmlShutdown");
    by_uuid = (nvml_by_uuid_fn)vgpu_real_dlsym(h, "nvmlDeviceGetHandleByUUID");
    meminfo = (nvml_meminfo_fn)vgpu_real_dlsym(h, "nvmlDeviceGetMemoryInfo");
    if (!init || !shutdown || !by_uuid || !meminfo || init() != 0)
        return -1;
    if (by_uuid(uuid, &dev) == 0 && meminfo(dev, &mem) == 0)
        used = (int64_t)mem.used;
    shutdown();
    return used;
}

/* Device-wide used bytes as the driver sees them, if a context on dev is current. */
static int64_t cuda_used(CUdevice dev)
{
    CUcontext cur = NULL;
    CUdevice cur_dev = -1;
    size_t f = 0, t = 0;
    if (!vgpu_helper.cuCtxGetCurrent || vgpu_helper.cuCtxGetCurrent(&cur) != CUDA_SUCCESS || !cur)
        return -1;
    if (vgpu_helper.cuCtxGetDevice(&cur_dev) != CUDA_SUCCESS || cur_dev != dev)
        return -1;
    if (!vgpu_real.cuMemGetInfo_v2 || vgpu_real.cuMemGetInfo_v2(&f, &t) != CUDA_SUCCESS)
        return -1;
    return (int64_t)(t - f);
}

static int64_t used_now(CUdevice dev, const struct vgpu_account *a, int *via_cuda)
{
    int64_t u = cuda_used(dev);
    if (u >= 0) {
        *via_cuda = 1;
        return u;
    }
    *via_cuda = 0;
    return nvml_used(a->gpu->uuid);
}

/* Contexts take hundreds of MiB on real GPUs; a larger drop was caused by someone else. */
#define VGPU_CONTEXT_MAX_BYTES (2LL << 30)

/* Owned by this file: which devices already carry this process's context charge (0/1), set by
 * CAS so two threads creating contexts at once measure once. Cleared in a fork child. */
static int g_ctx_charged[VGPU_MAX_DEVICES];

void vgpu_contexts_forget(void)
{
    memset(g_ctx_charged, 0, sizeof(g_ctx_charged));
}

struct ctx_measure {
    struct vgpu_account *acct;
    CUdevice dev;
    int64_t before;
    int via_cuda;
};

/* Before a context-creating call: 1 when this call should be measured. */
static int measure_begin(CUdevice dev, struct ctx_measure *m)
{
    CUresult err = CUDA_SUCCESS;
    int expected = 0;
    if (dev < 0 || dev >= VGPU_MAX_DEVICES)
        return 0;
    if (__atomic_load_n(&g_ctx_charged[dev], __ATOMIC_RELAXED) ||
        !__atomic_compare_exchange_n(&g_ctx_charged[dev], &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return 0;
    m->acct = vgpu_account_for_device(dev, &err);
    m->dev = dev;
    if (!m->acct) {
        __atomic_store_n(&g_ctx_charged[dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    m->before = used_now(dev, m->acct, &m->via_cuda);
    return 1;
}

/* After it: charge the growth. 0, or -1 when the context does not fit under the wall. */
static int measure_end(struct ctx_measure *m, CUresult rc, CUcontext ctx)
{
    int64_t after = -1;
    if (rc != CUDA_SUCCESS || m->before < 0) {
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    if (m->via_cuda) {
        /* Same source after as before: the new context may not be current (primary retain). */
        int pushed = ctx && vgpu_helper.cuCtxPushCurrent_v2 && vgpu_helper.cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS;
        after = cuda_used(m->dev);
        if (pushed) {
            CUcontext popped;
            vgpu_helper.cuCtxPopCurrent_v2(&popped);
        }
    } else {
        after = nvml_used(m->acct->gpu->uuid);
    }
    if (after <= m->before)
        return 0;
    int64_t footprint = after - m->before;
    if (footprint > VGPU_CONTEXT_MAX_BYTES) {
        /* Another tenant allocated during the creation: the delta is not ours. Measure again at
         * this process's next context on the device rather than charge someone else's bytes. */
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    /* A GPU in several claims: the footprint goes whole to the first claim (uid order) it fits in. */
    struct vgpu_account *charged = vgpu_admit_chain(m->acct, footprint);
    if (!charged) {
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return -1;
    }
    __atomic_store_n(&charged->gpu->context_bytes, footprint, __ATOMIC_RELAXED);
    return 0;
}

static CUresult refuse_context(CUcontext ctx, int primary, CUdevice dev)
{
    if (primary) {
        CUresult (*release)(CUdevice) = (CUresult(*)(CUdevice))vgpu_real_dlsym(vgpu_libcuda, "cuDevicePrimaryCtxRelease_v2");
        if (release)
            release(dev);
    } else {
        CUresult (*destroy)(CUcontext) = (CUresult(*)(CUcontext))vgpu_real_dlsym(vgpu_libcuda, "cuCtxDestroy_v2");
        if (destroy)
            destroy(ctx);
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

#define CREATE_BODY(real_call, primary)                                                               \
    do {                                                                                              \
        struct ctx_measure m;                                                                         \
        int measuring = pctx && measure_begin(dev, &m);                                               \
        CUresult rc = real_call;                                                                      \
        if (measuring && measure_end(&m, rc, *pctx) != 0)                                             \
            return refuse_context(*pctx, (primary), dev);                                             \
        return rc;                                                                                    \
    } while (0)

VGPU_EXPORT CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    VGPU_GATE(cuCtxCreate, (pctx, flags, dev));
    CREATE_BODY(vgpu_real.cuCtxCreate(pctx, flags, dev), 0);
}

VGPU_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    VGPU_GATE(cuCtxCreate_v2, (pctx, flags, dev));
    CREATE_BODY(vgpu_real.cuCtxCreate_v2(pctx, flags, dev), 0);
}

VGPU_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags,
                                    CUdevice dev)
{
    VGPU_GATE(cuCtxCreate_v3, (pctx, params, n, flags, dev));
    CREATE_BODY(vgpu_real.cuCtxCreate_v3(pctx, params, n, flags, dev), 0);
}

VGPU_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev)
{
    VGPU_GATE(cuCtxCreate_v4, (pctx, params, flags, dev));
    CREATE_BODY(vgpu_real.cuCtxCreate_v4(pctx, params, flags, dev), 0);
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    VGPU_GATE(cuDevicePrimaryCtxRetain, (pctx, dev));
    CREATE_BODY(vgpu_real.cuDevicePrimaryCtxRetain(pctx, dev), 1);
}
