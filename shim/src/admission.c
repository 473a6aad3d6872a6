/*
 * Admission against the wall: reserve with a compare-and-swap on the claim's shared counter (never
 * above the limit from the config), refund with a clamped subtraction. No lock, no syscall on the
 * success path; a refusal first reclaims the slots of dead processes once, then waits a moment if
 * another process's context bound is provisional. A GPU in several claims is a chain of accounts
 * tried in claim-uid order, one whole allocation in one claim.
 */
#include <time.h>

#include "vgpu_internal.h"

void vgpu_sub_clamped(int64_t *counter, int64_t bytes)
{
    int64_t cur = __atomic_load_n(counter, __ATOMIC_RELAXED);
    for (;;) {
        int64_t next = cur - bytes;
        if (next < 0)
            next = 0;
        if (__atomic_compare_exchange_n(counter, &cur, next, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return;
    }
}

/* Never counts a refusal: the callers count the whole refusal once (a chain tries several accounts).
 * may_reclaim: 0 skips the scan for dead processes' slots (a syscall per live process). */
static inline __attribute__((always_inline)) int admit(struct vgpu_account *a, int64_t bytes, int may_reclaim)
{
    int64_t *used = &a->gpu->used_bytes;
    int64_t cur, base;
    int reclaimed = !may_reclaim;
    if (bytes <= 0)
        return 1;
    cur = __atomic_load_n(used, __ATOMIC_RELAXED);
    for (;;) {
        base = cur < 0 ? 0 : cur; /* a corrupted negative counter never grants extra room */
        if (bytes > a->limit - base) {
            if (!reclaimed && vgpu_region_reclaim_dead(a->region) > 0) {
                reclaimed = 1;
                cur = __atomic_load_n(used, __ATOMIC_RELAXED);
                continue;
            }
            return 0;
        }
        if (__atomic_compare_exchange_n(used, &cur, base + bytes, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            break;
    }
    int64_t now = base + bytes;
    int64_t peak = __atomic_load_n(&a->gpu->peak_bytes, __ATOMIC_RELAXED);
    while (now > peak &&
           !__atomic_compare_exchange_n(&a->gpu->peak_bytes, &peak, now, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    /* A kill -9 between the CAS above and this add leaks the reservation (fails safe: never over). */
    __atomic_add_fetch(a->proc_used, bytes, __ATOMIC_RELAXED);
    return 1;
}

/* Another live process of a's claim that holds the context bound on a's GPU for a measurement it
 * has not made yet (ctx_deferred.c), and is not the one a wait already timed out on: its key
 * (slot + 1, generation above bit 16), else 0. */
static uint64_t pending_holder(struct vgpu_account *a)
{
    const struct vgpu_region *r = a->region->map;
    uint64_t bit = 1ULL << (a->gpu - r->gpus), gave_up = __atomic_load_n(&a->settle_gave_up, __ATOMIC_RELAXED);
    uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < hw && i < VGPU_MAX_PROCS; i++) {
        const struct vgpu_proc *p = &r->procs[i];
        if ((int)i == a->region->slot || __atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != VGPU_PROC_LIVE ||
            !(__atomic_load_n(&p->context_pending, __ATOMIC_SEQ_CST) & bit))
            continue;
        uint64_t key = (uint64_t)(i + 1) | __atomic_load_n(&p->generation, __ATOMIC_RELAXED) << 16;
        if (key != gave_up)
            return key;
    }
    return 0;
}

/* The first account (of head's chain, or head alone when !chain) where bytes fit now, else NULL;
 * reclaim: look for dead processes' slots first. */
static struct vgpu_account *admit_in_any(struct vgpu_account *head, int chain, int64_t bytes, int reclaim)
{
    for (struct vgpu_account *a = head; a; a = chain ? a->next : NULL) {
        if (reclaim)
            vgpu_region_reclaim_dead(a->region);
        if (admit(a, bytes, 0))
            return a;
    }
    return NULL;
}

/*
 * The allocation did not fit; was that only because another process of the claim holds the
 * context bound it reserved at its first context and measures at its next CUDA call? Then wait
 * for that measurement (it gives most of the bound back) and try again, for at most
 * VGPU_CONTEXT_SETTLE_WAIT_NS: processes of one pod starting together must not fail each other's
 * first allocations. The wall holds throughout; on timeout the caller refuses as before. The
 * account admitted (one of head's chain, or head alone when !chain), else NULL.
 */
static struct vgpu_account *admit_after_settling(struct vgpu_account *head, int chain, int64_t bytes)
{
    const struct timespec nap = {0, 1000 * 1000};
    int64_t deadline = 0;
    for (unsigned round = 0;; round++) {
        uint64_t holder = 0;
        struct vgpu_account *holder_acct = NULL;
        for (struct vgpu_account *a = head; a && !holder; a = chain ? a->next : NULL)
            if ((holder = pending_holder(a)) != 0)
                holder_acct = a;
        /* Nothing provisional (now): the claim is full, unless a holder measured and gave its
         * bound back between the refusal and this look, so look at the room once more. */
        if (!holder)
            return admit_in_any(head, chain, bytes, 0);
        int64_t now = vgpu_mono_ns();
        if (!deadline)
            deadline = now + VGPU_CONTEXT_SETTLE_WAIT_NS;
        else if (now >= deadline) {
            /* An idle process keeps its bound (docs/shim.md): stop waiting for that one. */
            __atomic_store_n(&holder_acct->settle_gave_up, holder, __ATOMIC_RELAXED);
            return NULL;
        }
        nanosleep(&nap, NULL);
        /* A holder killed before it measured is refunded with its slot: look now and then. */
        struct vgpu_account *a = admit_in_any(head, chain, bytes, round % 32 == 31);
        if (a)
            return a;
    }
}

int vgpu_admit(struct vgpu_account *a, int64_t bytes)
{
    if (admit(a, bytes, 1) || admit_after_settling(a, 0, bytes))
        return 1;
    __atomic_add_fetch(&a->gpu->rejected_allocs, 1, __ATOMIC_RELAXED);
    return 0;
}

int vgpu_admit_quiet(struct vgpu_account *a, int64_t bytes)
{
    return admit(a, bytes, 0);
}

struct vgpu_account *vgpu_admit_chain_uncounted(struct vgpu_account *head, int64_t bytes)
{
    /* First where there is room now; only then scan for dead processes' bytes, so a full first
     * claim does not cost every allocation that scan. */
    for (int pass = 0; pass < 2; pass++)
        for (struct vgpu_account *a = head; a; a = a->next)
            if (admit(a, bytes, pass))
                return a;
    return admit_after_settling(head, 1, bytes);
}

struct vgpu_account *vgpu_admit_chain_slow(struct vgpu_account *head, int64_t bytes)
{
    struct vgpu_account *a = vgpu_admit_chain_uncounted(head, bytes);
    if (!a)
        __atomic_add_fetch(&head->gpu->rejected_allocs, 1, __ATOMIC_RELAXED);
    return a;
}

void vgpu_chain_totals(const struct vgpu_account *head, int64_t *limit, int64_t *used)
{
    int64_t l = 0, u = 0;
    for (const struct vgpu_account *a = head; a; a = a->next) {
        int64_t au = __atomic_load_n(&a->gpu->used_bytes, __ATOMIC_RELAXED);
        l = a->limit > INT64_MAX - l ? INT64_MAX : l + a->limit;
        if (au > 0)
            u = au > INT64_MAX - u ? INT64_MAX : u + au;
    }
    *limit = l;
    *used = u;
}

void vgpu_refund(struct vgpu_account *a, int64_t bytes)
{
    if (bytes <= 0)
        return;
    __atomic_sub_fetch(a->proc_used, bytes, __ATOMIC_RELAXED);
    vgpu_sub_clamped(&a->gpu->used_bytes, bytes);
}
