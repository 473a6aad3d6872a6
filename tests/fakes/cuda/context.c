/* Initialisation, devices and contexts of the fake driver. A context occupies FAKE_CUDA_CTX_BYTES;
 * creating one takes FAKE_CUDA_CTX_MS milliseconds (default 0), once its memory is taken, as a real
 * driver's does (hundreds of ms on real GPUs). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_cuda.h"

struct CUctx_st {
    int dev;
    int primary;
};

/* Per-process primary contexts and their retain counts; guarded by the caller's discipline in
 * tests (primary retain/release are not raced there) and by atomics on the count. */
static struct CUctx_st g_primary[FAKE_MAX_DEVICES];
static int g_primary_refs[FAKE_MAX_DEVICES];

#define STACK_DEPTH 16
static __thread CUcontext t_stack[STACK_DEPTH];
static __thread int t_depth; /* t_stack[t_depth-1] is current */

#define CHECK_INIT()                                                                                  \
    do {                                                                                              \
        if (!g_fake_initialized)                                                                      \
            return CUDA_ERROR_NOT_INITIALIZED;                                                        \
    } while (0)
#define INJECT()                                                                                      \
    do {                                                                                              \
        if (fake_should_fail(__func__))                                                               \
            return (CUresult)fake_should_fail(__func__);                                                                \
    } while (0)

int fake_current_device(void)
{
    return t_depth > 0 && t_stack[t_depth - 1] ? t_stack[t_depth - 1]->dev : -1;
}

/* Contexts this process holds per device (created + primary retained once); NVML lists a process
 * on a device while it holds one there, like the real driver. */
static int g_contexts[FAKE_MAX_DEVICES];

void fake_contexts_forget(void)
{
    memset(g_contexts, 0, sizeof(g_contexts));
}

void fake_context_count(int dev, int delta)
{
    int now = __atomic_add_fetch(&g_contexts[dev], delta, __ATOMIC_ACQ_REL);
    if (now > 0)
        __atomic_or_fetch(&g_fake_me->ctx_mask, 1 << dev, __ATOMIC_RELEASE);
    else
        __atomic_and_fetch(&g_fake_me->ctx_mask, ~(1 << dev), __ATOMIC_RELEASE);
}

FAKE_EXPORT CUresult cuInit(unsigned int flags)
{
    INJECT();
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    g_fake_initialized = 1;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDriverGetVersion(int *v)
{
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    *v = 12080;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int *n)
{
    CHECK_INIT();
    if (!n)
        return CUDA_ERROR_INVALID_VALUE;
    *n = g_fake_device_count;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal)
{
    CHECK_INIT();
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_valid_device(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d)
{
    CHECK_INIT();
    if (!u)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_valid_device(d))
        return CUDA_ERROR_INVALID_DEVICE;
    *u = g_fake_devices[d].uuid;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d)
{
    return cuDeviceGetUuid(u, d);
}

FAKE_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d)
{
    CHECK_INIT();
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_valid_device(d))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = (size_t)g_fake_devices[d].capacity;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice d)
{
    size_t b = 0;
    CUresult rc = cuDeviceTotalMem_v2(&b, d);
    if (rc == CUDA_SUCCESS && bytes)
        *bytes = b > 0xffffffffu ? 0xffffffffu : (unsigned int)b;
    return bytes ? rc : CUDA_ERROR_INVALID_VALUE;
}

FAKE_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    CHECK_INIT();
    int dev = fake_current_device();
    if (dev < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!free_bytes || !total)
        return CUDA_ERROR_INVALID_VALUE;
    int64_t used = __atomic_load_n(&g_fake_state->used[dev], __ATOMIC_RELAXED);
    *total = (size_t)g_fake_devices[dev].capacity;
    *free_bytes = (size_t)(g_fake_devices[dev].capacity - used);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total)
{
    size_t f, t;
    CUresult rc;
    if (!free_bytes || !total)
        return CUDA_ERROR_INVALID_VALUE;
    rc = cuMemGetInfo_v2(&f, &t);
    if (rc == CUDA_SUCCESS) {
        *free_bytes = f > 0xffffffffu ? 0xffffffffu : (unsigned int)f;
        *total = t > 0xffffffffu ? 0xffffffffu : (unsigned int)t;
    }
    return rc;
}

static void creation_takes_time(void)
{
    const char *env = getenv("FAKE_CUDA_CTX_MS");
    long ms = env ? atol(env) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    if (ms > 0)
        nanosleep(&ts, NULL);
}

static CUresult create(CUcontext *pctx, CUdevice dev)
{
    CHECK_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (fake_charge(dev, g_fake_ctx_bytes) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUcontext c = calloc(1, sizeof(*c));
    c->dev = dev;
    fake_context_count(dev, 1);
    creation_takes_time();
    if (t_depth < STACK_DEPTH)
        t_stack[t_depth++] = c;
    *pctx = c;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    INJECT();
    return create(pctx, dev);
}

FAKE_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    INJECT();
    return create(pctx, dev);
}

FAKE_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *p, int n, unsigned int flags, CUdevice dev)
{
    (void)p;
    (void)n;
    (void)flags;
    INJECT();
    return create(pctx, dev);
}

FAKE_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *p, unsigned int flags, CUdevice dev)
{
    (void)p;
    (void)flags;
    INJECT();
    return create(pctx, dev);
}

FAKE_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    CHECK_INIT();
    if (!ctx || ctx->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] == ctx) {
            memmove(&t_stack[i], &t_stack[i + 1], (size_t)(t_depth - i - 1) * sizeof(CUcontext));
            t_depth--;
            break;
        }
    fake_uncharge(ctx->dev, g_fake_ctx_bytes);
    fake_context_count(ctx->dev, -1);
    free(ctx);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CHECK_INIT();
    INJECT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary_refs[dev] == 0 && fake_charge(dev, g_fake_ctx_bytes) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (g_primary_refs[dev] == 0) {
        fake_context_count(dev, 1);
        creation_takes_time();
    }
    g_primary_refs[dev]++;
    g_primary[dev].dev = dev;
    g_primary[dev].primary = 1;
    *pctx = &g_primary[dev];
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    CHECK_INIT();
    if (!fake_valid_device(dev) || g_primary_refs[dev] == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (--g_primary_refs[dev] == 0) {
        fake_uncharge(dev, g_fake_ctx_bytes);
        fake_context_count(dev, -1);
    }
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    CHECK_INIT();
    if (t_depth == 0)
        t_depth = 1;
    t_stack[t_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    CHECK_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = t_depth > 0 ? t_stack[t_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    CHECK_INIT();
    if (!ctx || t_depth == STACK_DEPTH)
        return CUDA_ERROR_INVALID_VALUE;
    t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    CHECK_INIT();
    if (t_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = t_stack[--t_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetDevice(CUdevice *dev)
{
    CHECK_INIT();
    INJECT();
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE;
    int d = fake_current_device();
    if (d < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = d;
    return CUDA_SUCCESS;
}
