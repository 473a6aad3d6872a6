/*
 * A claim's first process measures its first context on a GPU through NVML (hooks_ctx.c), and
 * loading and asking NVML costs more than the rest of the shim's start-up together. So when the
 * claim has room for any plausible context, the creating call reserves that upper bound
 * (VGPU_CONTEXT_MAX_BYTES) and returns at once; the measurement runs at the start of the next
 * intercepted call, of any thread, before that call does anything (an allocation, a query, a
 * launch), and corrects the reservation to the footprint. The wall therefore holds throughout:
 * until the measurement, the claim is charged more than the context takes, never less.
 *
 * The next call finds the work through vgpu_ready (VGPU_READY_WORK sends every intercepted call
 * to the slow path), so the fast path of the calls is unchanged: one load and one comparison.
 * Other threads arriving meanwhile wait on the lock until the measurement is done.
 */
#include <pthread.h>
#include <string.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

/* Owned by this file, guarded by g_lock: the contexts created with the bound reserved and not yet
 * measured, per device ordinal. Reset in a fork child (vgpu_deferred_forget). */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int pending;
    struct vgpu_account *acct; /* where the bound is reserved */
    CUcontext ctx;
} g_pending[VGPU_MAX_DEVICES];
/* The thread measuring now: NVML's loading may call back into the shim (dlsym). */
static __thread int t_settling;

void vgpu_context_pending(struct vgpu_account *acct, int pending)
{
    struct vgpu_attached_region *r = acct->region;
    uint64_t bit = 1ULL << (acct->gpu - r->map->gpus);
    if (r->slot < 0)
        return;
    if (pending)
        __atomic_or_fetch(&r->map->procs[r->slot].context_pending, bit, __ATOMIC_SEQ_CST);
    else
        __atomic_and_fetch(&r->map->procs[r->slot].context_pending, ~bit, __ATOMIC_SEQ_CST);
}

void vgpu_context_defer(CUdevice dev, struct vgpu_account *acct, CUcontext ctx)
{
    pthread_mutex_lock(&g_lock);
    g_pending[dev].acct = acct;
    g_pending[dev].ctx = ctx;
    g_pending[dev].pending = 1;
    vgpu_slow_path_needed(1);
    pthread_mutex_unlock(&g_lock);
}

void vgpu_contexts_settle(void)
{
    if (t_settling)
        return;
    t_settling = 1;
    pthread_mutex_lock(&g_lock);
    for (int dev = 0; dev < VGPU_MAX_DEVICES; dev++)
        if (g_pending[dev].pending) {
            g_pending[dev].pending = 0;
            vgpu_context_settle(dev, g_pending[dev].acct, g_pending[dev].ctx);
            vgpu_context_pending(g_pending[dev].acct, 0); /* after the refund: waiters find the room */
        }
    vgpu_slow_path_needed(0);
    pthread_mutex_unlock(&g_lock);
    t_settling = 0;
}

void vgpu_deferred_forget(void)
{
    /* The fork child has one thread: a lock the parent's other threads held is reinitialised. */
    pthread_mutex_init(&g_lock, NULL);
    memset(g_pending, 0, sizeof(g_pending));
    t_settling = 0;
}
