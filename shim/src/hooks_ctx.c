/*
 * cuInit and context creation. A context occupies device memory of its own (hundreds of MiB on
 * real GPUs); the first context this process creates on a device is charged to the claim like an
 * allocation. Its footprint is measured once per claim and GPU, by the claim's first process
 * there (see struct ctx_measure), kept in the region (context_bytes, context_measurements), and
 * every later process of the claim is charged it without measuring, which keeps NVML out of its
 * start-up. When it cannot be measured (no NVML and no current context, or another process
 * starting on the GPU at the same moment) it is charged an upper bound instead (footprint_bound),
 * the fail-safe counter says so, and the claim's next process measures again (docs/shim.md): an
 * error never leaves a context uncharged. A context charged around its creating call that does
 * not fit under the wall is undone and the call answers CUDA_ERROR_OUT_OF_MEMORY, as the driver
 * would; one measured later (LATER below) had its upper bound reserved before the call, so it
 * always fits. The charge stays until the process ends (its slot is refunded then).
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

VGPU_EXPORT CUresult cuInit(unsigned int flags)
{
    VGPU_GATE(cuInit, (flags));
    return vgpu_real.cuInit(flags);
}

/* ---- what a context takes ------------------------------------------------------------------ */

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

/* What a context that could not be measured is charged: the device's used memory as the driver
 * reports it with ctx current (every process on the GPU, this context among them), at most
 * VGPU_CONTEXT_MAX_BYTES, and that bound when the driver cannot say. More than the context takes
 * whenever the GPU has other tenants, never less. */
static int64_t footprint_bound(CUdevice dev, CUcontext ctx)
{
    int pushed = ctx && vgpu_helper.cuCtxPushCurrent_v2 && vgpu_helper.cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS;
    int64_t used = cuda_used(dev);
    if (pushed) {
        CUcontext popped;
        vgpu_helper.cuCtxPopCurrent_v2(&popped);
    }
    return used >= 0 && used < VGPU_CONTEXT_MAX_BYTES ? used : VGPU_CONTEXT_MAX_BYTES;
}

/* Owned by this file: which devices already carry this process's context charge (0/1), set by
 * CAS so two threads creating contexts at once measure once. Cleared in a fork child. */
static int g_ctx_charged[VGPU_MAX_DEVICES];

void vgpu_contexts_forget(void)
{
    memset(g_ctx_charged, 0, sizeof(g_ctx_charged));
}

/*
 * How a first context is measured, when the claim has no earlier measurement:
 *   LATER no context of the device is current and the claim has room for the upper bound
 *         VGPU_CONTEXT_MAX_BYTES: that much is reserved before the call, and the context is
 *         measured with NVML at the next intercepted call (ctx_deferred.c), where the reservation
 *         is corrected to the footprint (vgpu_context_settle). Keeps NVML off the creating call.
 *   NVML  no context of the device is current and the bound does not fit: NVML's process list
 *         before and after the call; the one PID that appeared is this process, its usage the
 *         context (and its PID the host PID, learned on the way). Two newcomers at once: not
 *         measured this time. A context that does not fit is refused here, as the driver would.
 *   CUDA  a context of the device is current (the first charged context is not the process's
 *         first): the drop of device-wide free memory (cuMemGetInfo) across the call, less
 *         what the claims' other processes admitted meanwhile.
 */
struct ctx_measure {
    struct vgpu_account *acct;
    CUdevice dev;
    int64_t known;   /* the claim's earlier measurement, charged as is; -1 when measuring now */
    int64_t before;  /* CUDA: device-wide used before the call; -1 when not measuring that way */
    int64_t claims_before; /* CUDA: what the GPU's claims (of this process) accounted for then */
    struct vgpu_nvml_snapshot *listed; /* NVML: the process list before the call */
    struct vgpu_account *reserved; /* LATER: the account holding the upper bound, else NULL */
    int estimated; /* measure_now found an upper bound, not the footprint */
};

/* Bytes the GPU's claims (of this process) account for, every process of them, plus what was ever
 * refunded from dead processes' slots: its change across a context creation is what the claims'
 * live processes allocated or freed meanwhile (a dead process's bytes left the driver's count
 * when it died, but leave the claim's only when its slot is refunded). */
static int64_t claims_used(const struct vgpu_account *head)
{
    int64_t limit, used;
    vgpu_chain_totals(head, &limit, &used);
    for (const struct vgpu_account *a = head; a; a = a->next)
        used += __atomic_load_n(&a->region->map->dead_refunded_bytes, __ATOMIC_RELAXED);
    return used;
}

/* The footprint an earlier process of one of the GPU's claims measured, or -1. Read from the
 * region: a tenant that rewrites it under-charges only its own claim's contexts. */
static int64_t measured_before(const struct vgpu_account *head)
{
    for (const struct vgpu_account *a = head; a; a = a->next) {
        int64_t bytes = __atomic_load_n(&a->gpu->context_bytes, __ATOMIC_RELAXED);
        if (__atomic_load_n(&a->gpu->context_measurements, __ATOMIC_ACQUIRE) > 0 && bytes > 0 &&
            bytes <= VGPU_CONTEXT_MAX_BYTES)
            return bytes;
    }
    return -1;
}

/* Before a context-creating call: 1 when this call should be charged. */
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
    m->before = -1;
    m->listed = NULL;
    m->reserved = NULL;
    m->estimated = 0;
    if (!m->acct) {
        __atomic_store_n(&g_ctx_charged[dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    m->known = measured_before(m->acct);
    if (m->known >= 0)
        return 1;
    m->claims_before = claims_used(m->acct);
    m->before = cuda_used(dev);
    if (m->before < 0) {
        /* A GPU in several claims: the bound in the first claim where it fits, like any charge. */
        for (struct vgpu_account *a = m->acct; a && !m->reserved; a = a->next) {
            /* Said before the reservation: an allocation it refuses can see it will come back. */
            vgpu_context_pending(a, 1);
            if (vgpu_admit_quiet(a, VGPU_CONTEXT_MAX_BYTES))
                m->reserved = a;
            else
                vgpu_context_pending(a, 0);
        }
        if (m->reserved)
            return 1;
        char uuid[VGPU_UUID_LEN];
        memcpy(uuid, m->acct->gpu->uuid, sizeof(uuid));
        uuid[sizeof(uuid) - 1] = '\0';
        m->listed = vgpu_nvml_snapshot(uuid);
    }
    return 1;
}

/* What the creating call took; -1 when it cannot be told this time. */
static int64_t measure_now(struct ctx_measure *m, CUcontext ctx)
{
    if (m->listed) {
        char uuid[VGPU_UUID_LEN];
        unsigned int pid = 0;
        int64_t used = -1;
        memcpy(uuid, m->acct->gpu->uuid, sizeof(uuid));
        uuid[sizeof(uuid) - 1] = '\0';
        struct vgpu_nvml_snapshot *after = vgpu_nvml_snapshot(uuid);
        int newcomers = after ? vgpu_nvml_newcomers(m->listed, after, &pid, &used) : 0;
        free(after);
        if (newcomers == 1) {
            vgpu_hostpid_record(pid);
            return used;
        }
        /* Other processes started on the GPU at the same moment (or NVML did not list this one):
         * with room for a probe, tell this process apart by an allocation of its own. */
        int64_t probed = -1, stuck = 0, bound = -1;
        /* Room that another first process's provisional bound holds is waited for: the pod's
         * other workers, started at the same moment, are the usual newcomers beside this one. */
        struct vgpu_account *room = vgpu_admit_chain_uncounted(m->acct, VGPU_CONTEXT_PROBE_MAX_BYTES);
        if (room) {
            probed = vgpu_hostpid_probe_context(room, ctx, &stuck, &bound);
            vgpu_refund(room, VGPU_CONTEXT_PROBE_MAX_BYTES - stuck); /* a probe the driver kept stays charged */
        }
        if (probed >= 0)
            return probed;
        vgpu_limit_error(m->acct->gpu, VGPU_ERRCALL_CONTEXT, CUDA_ERROR_NOT_READY);
        if (newcomers == 0 && bound < 0)
            return -1; /* NVML failed, or does not list this process */
        /* This process is among the newcomers (or the probe's candidates): the largest of their
         * usages is an upper bound of its context. */
        m->estimated = 1;
        return newcomers > 0 && (bound < 0 || used < bound) ? used : bound;
    }
    if (m->before < 0) {
        vgpu_limit_error(m->acct->gpu, VGPU_ERRCALL_CONTEXT, CUDA_ERROR_NOT_FOUND);
        return -1; /* neither a current context nor NVML to measure with */
    }
    /* Same source after as before: the new context may not be current (primary retain). */
    int pushed = ctx && vgpu_helper.cuCtxPushCurrent_v2 && vgpu_helper.cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS;
    int64_t after = cuda_used(m->dev);
    if (pushed) {
        CUcontext popped;
        vgpu_helper.cuCtxPopCurrent_v2(&popped);
    }
    if (after < 0) {
        vgpu_limit_error(m->acct->gpu, VGPU_ERRCALL_CONTEXT, CUDA_ERROR_NOT_FOUND);
        return -1;
    }
    /* Other processes of the claim allocated (or freed) meanwhile: their bytes are not the
     * context's. */
    return after - m->before - (claims_used(m->acct) - m->claims_before);
}

/* After it: charge the footprint. 0, or -1 when the context does not fit under the wall. */
static int measure_end(struct ctx_measure *m, CUresult rc, CUcontext ctx)
{
    if (m->reserved) {
        if (rc == CUDA_SUCCESS) {
            vgpu_context_defer(m->dev, m->reserved, ctx);
            return 0;
        }
        vgpu_refund(m->reserved, VGPU_CONTEXT_MAX_BYTES);
        vgpu_context_pending(m->reserved, 0);
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    int64_t footprint = rc != CUDA_SUCCESS ? -1 : m->known >= 0 ? m->known : measure_now(m, ctx);
    free(m->listed);
    if (rc != CUDA_SUCCESS) {
        /* No context: the next context of this process on the device is its first again. */
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return 0;
    }
    int estimated = m->estimated || footprint < 0 || footprint > VGPU_CONTEXT_MAX_BYTES;
    if (footprint < 0 || footprint > VGPU_CONTEXT_MAX_BYTES) {
        /* Not measurable this time, or implausible (another tenant allocated meanwhile). */
        if (footprint > VGPU_CONTEXT_MAX_BYTES)
            vgpu_limit_error(m->acct->gpu, VGPU_ERRCALL_CONTEXT, CUDA_ERROR_NOT_READY);
        footprint = footprint_bound(m->dev, ctx);
    }
    if (footprint == 0)
        return 0; /* nothing to charge (and a zero is not kept for reuse) */
    /* A GPU in several claims: the footprint goes whole to the first claim (uid order) it fits in. */
    struct vgpu_account *charged = vgpu_admit_chain(m->acct, footprint);
    if (!charged) {
        __atomic_store_n(&g_ctx_charged[m->dev], 0, __ATOMIC_RELEASE);
        return -1;
    }
    if (m->known < 0 && !estimated) {
        __atomic_store_n(&charged->gpu->context_bytes, footprint, __ATOMIC_RELAXED);
        __atomic_add_fetch(&charged->gpu->context_measurements, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

void vgpu_context_settle(CUdevice dev, struct vgpu_account *acct, CUcontext ctx)
{
    int64_t stuck = 0, bound = -1, footprint = measured_before(acct->head); /* measured meanwhile elsewhere */
    int measured = footprint < 0;
    if (measured) {
        footprint = vgpu_hostpid_probe_context(acct, ctx, &stuck, &bound);
        if (footprint < 0)
            vgpu_limit_error(acct->gpu, VGPU_ERRCALL_CONTEXT, vgpu_nvml() ? CUDA_ERROR_NOT_READY : CUDA_ERROR_NOT_FOUND);
    }
    /* The probe lives inside the reservation, so footprint + stuck <= the bound always fits. */
    if (footprint < 0 || footprint + stuck > VGPU_CONTEXT_MAX_BYTES) {
        /* Not measurable this time, or implausible: the reservation shrinks to an upper bound
         * and stays (the claim's next process measures again). */
        if (footprint >= 0)
            vgpu_limit_error(acct->gpu, VGPU_ERRCALL_CONTEXT, CUDA_ERROR_NOT_READY);
        footprint = footprint < 0 && bound >= 0 ? bound : footprint_bound(dev, ctx);
        if (footprint + stuck > VGPU_CONTEXT_MAX_BYTES)
            footprint = VGPU_CONTEXT_MAX_BYTES - stuck;
        measured = 0;
    }
    vgpu_refund(acct, VGPU_CONTEXT_MAX_BYTES - stuck - footprint);
    if (measured && footprint > 0) { /* a zero is simply not charged, and not kept for reuse */
        __atomic_store_n(&acct->gpu->context_bytes, footprint, __ATOMIC_RELAXED);
        __atomic_add_fetch(&acct->gpu->context_measurements, 1, __ATOMIC_RELEASE);
    }
}

/* Undo a context that does not fit; if the driver will not, its memory stays uncharged (it does
 * not fit): the failure is counted. */
static CUresult refuse_context(CUcontext ctx, int primary, CUdevice dev)
{
    CUresult rc = CUDA_ERROR_NOT_FOUND;
    if (primary) {
        CUresult (*release)(CUdevice) = (CUresult(*)(CUdevice))vgpu_real_dlsym(vgpu_libcuda, "cuDevicePrimaryCtxRelease_v2");
        if (release)
            rc = release(dev);
    } else {
        CUresult (*destroy)(CUcontext) = (CUresult(*)(CUcontext))vgpu_real_dlsym(vgpu_libcuda, "cuCtxDestroy_v2");
        if (destroy)
            rc = destroy(ctx);
    }
    if (rc != CUDA_SUCCESS) {
        CUresult err = CUDA_SUCCESS;
        struct vgpu_account *a = vgpu_account_for_device(dev, &err);
        vgpu_limit_error(a ? a->gpu : NULL, VGPU_ERRCALL_UNDO, rc);
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
