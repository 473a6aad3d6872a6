/*
 * Admission against the wall: reserve with a compare-and-swap on the claim's shared counter (never
 * above the limit from the config), refund with a clamped subtraction. No lock, no syscall on the
 * success path; a refusal first reclaims the slots of dead processes once. A GPU in several claims
 * is a chain of accounts tried in claim-uid order, one whole allocation in one claim.
 */
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

/* count_rejection: 0 while trying the accounts of a chain (only the whole refusal counts).
 * may_reclaim: 0 skips the scan for dead processes' slots (a syscall per live process). */
static inline __attribute__((always_inline)) int admit(struct vgpu_account *a, int64_t bytes, int count_rejection,
                                                       int may_reclaim)
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
            if (count_rejection)
                __atomic_add_fetch(&a->gpu->rejected_allocs, 1, __ATOMIC_RELAXED);
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

int vgpu_admit(struct vgpu_account *a, int64_t bytes)
{
    return admit(a, bytes, 1, 1);
}

int vgpu_admit_quiet(struct vgpu_account *a, int64_t bytes)
{
    return admit(a, bytes, 0, 0);
}

struct vgpu_account *vgpu_admit_chain_slow(struct vgpu_account *head, int64_t bytes)
{
    /* First where there is room now; only then scan for dead processes' bytes, so a full first
     * claim does not cost every allocation that scan. */
    for (int pass = 0; pass < 2; pass++)
        for (struct vgpu_account *a = head; a; a = a->next)
            if (admit(a, bytes, 0, pass))
                return a;
    __atomic_add_fetch(&head->gpu->rejected_allocs, 1, __ATOMIC_RELAXED);
    return NULL;
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
