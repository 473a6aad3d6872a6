/* Charging helpers shared by the memory hooks (hooks_mem.c, hooks_array.c); internal only. */
#ifndef VGPU_MEM_CHARGE_H
#define VGPU_MEM_CHARGE_H

#include "vgpu_internal.h"

static inline int64_t clamp_bytes(unsigned long long n)
{
    return n > (unsigned long long)INT64_MAX ? INT64_MAX : (int64_t)n;
}

/* Correct a reservation from `estimate` to `actual`. 0 on success; -1 when the extra bytes do not
 * fit (the estimate stays reserved in *charged, the caller undoes the allocation and refunds it).
 * On a GPU in several claims an allocation whose extra bytes do not fit in the claim charged
 * moves whole to the first claim with room for all of it (*charged is updated): never split. */
static inline int settle(struct vgpu_account **charged, int64_t estimate, int64_t actual)
{
    struct vgpu_account *a = *charged, *moved;
    if (actual <= estimate) {
        vgpu_refund(a, estimate - actual);
        return 0;
    }
    if (VGPU_LIKELY(!a->head->next))
        return vgpu_admit(a, actual - estimate) ? 0 : -1;
    if (vgpu_admit_quiet(a, actual - estimate))
        return 0;
    moved = vgpu_admit_chain(a->head, actual);
    if (!moved)
        return -1;
    vgpu_refund(a, estimate);
    *charged = moved;
    return 0;
}

/* Reserve `bytes` on the current context's GPU in the first claim with room, declaring `acct`;
 * `devp` (NULL or a CUdevice *) receives that GPU. Returns from the hook when nothing is admitted. */
#define CHARGE_ON(acct, devp, bytes)                                                                  \
    struct vgpu_account *acct;                                                                        \
    do {                                                                                              \
        CUresult charge_err_ = CUDA_SUCCESS;                                                          \
        struct vgpu_account *head_ = vgpu_account_current((devp), &charge_err_);                      \
        if (!head_)                                                                                   \
            return charge_err_;                                                                       \
        acct = vgpu_admit_chain(head_, (bytes));                                                      \
        if (!acct)                                                                                    \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                          \
    } while (0)
#define CHARGE_CURRENT(acct, bytes) CHARGE_ON(acct, NULL, bytes)

/* Frees: forget first (another thread may get the same address right after the driver frees it),
 * put back if the driver refuses. Unknown pointers are always forwarded. */
#define FREE_BODY(kind, key, call)                                                                    \
    do {                                                                                              \
        int64_t bytes_ = 0;                                                                           \
        struct vgpu_account *acct_ = NULL;                                                            \
        int known_ = vgpu_ptrmap_take((kind), (uint64_t)(key), &bytes_, &acct_);                      \
        CUresult rc_ = (call);                                                                        \
        if (known_) {                                                                                 \
            if (rc_ == CUDA_SUCCESS)                                                                  \
                vgpu_refund(acct_, bytes_);                                                           \
            else                                                                                      \
                vgpu_ptrmap_put((kind), (uint64_t)(key), bytes_, acct_);                              \
        }                                                                                             \
        return rc_;                                                                                   \
    } while (0)

/* Undo an allocation whose size correction did not fit: the driver frees it and its reservation
 * is refunded; when the driver refuses to free it, the memory is still there: the reservation is
 * kept (until the process exits) and the failure counted. */
#define UNDO(acct, reserved, free_call)                                                               \
    do {                                                                                              \
        CUresult undo_rc_ = (free_call);                                                              \
        if (VGPU_LIKELY(undo_rc_ == CUDA_SUCCESS))                                                    \
            vgpu_refund((acct), (reserved));                                                          \
        else                                                                                          \
            vgpu_limit_error((acct)->gpu, VGPU_ERRCALL_UNDO, undo_rc_);                               \
    } while (0)

#endif /* VGPU_MEM_CHARGE_H */
