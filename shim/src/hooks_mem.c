/*
 * The memory wall: every entry point that creates device memory reserves its bytes first (CAS
 * under the claim's limit), then calls the driver, then commits (remembers pointer -> bytes) or
 * rolls back. Every free refunds exactly what was charged. Where the size is only known after the
 * driver answered (pitch; arrays: hooks_array.c), the reservation is an estimate corrected right after the call,
 * and an allocation that would cross the wall after correction is undone. A GPU in several claims
 * charges each allocation whole to one of them (vgpu_admit_chain); the pointer map remembers which,
 * and the correction and the free go to that same claim.
 */
#include <string.h>

#include "mem_charge.h"

/* ---- linear allocations ---------------------------------------------------------------------- */

VGPU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    VGPU_GATE(cuMemAlloc_v2, (dptr, bytesize));
    if (!dptr)
        return vgpu_real.cuMemAlloc_v2(dptr, bytesize);
    int64_t bytes = clamp_bytes(bytesize);
    CHARGE_CURRENT(a, bytes);
    CUresult rc = VGPU_WATCHED_CALL(a, bytes, vgpu_real.cuMemAlloc_v2(dptr, bytesize));
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, bytes);
        return rc;
    }
    vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, bytes, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    VGPU_GATE(cuMemAlloc, (dptr, bytesize));
    if (!dptr)
        return vgpu_real.cuMemAlloc(dptr, bytesize);
    int64_t bytes = bytesize;
    CHARGE_CURRENT(a, bytes);
    CUresult rc = VGPU_WATCHED_CALL(a, bytes, vgpu_real.cuMemAlloc(dptr, bytesize));
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, bytes);
        return rc;
    }
    vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, bytes, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    VGPU_GATE(cuMemAllocManaged, (dptr, bytesize, flags));
    if (!dptr)
        return vgpu_real.cuMemAllocManaged(dptr, bytesize, flags);
    /* Managed memory is charged in full to the current device: no oversubscription (docs/shim.md). */
    int64_t bytes = clamp_bytes(bytesize);
    CHARGE_CURRENT(a, bytes);
    CUresult rc = vgpu_real.cuMemAllocManaged(dptr, bytesize, flags);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, bytes);
        return rc;
    }
    vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, bytes, a);
    return CUDA_SUCCESS;
}

static int64_t pitch_estimate(unsigned long long width, unsigned long long height)
{
    /* Drivers align rows to at most 512 bytes; the real pitch corrects this right after. */
    unsigned long long row = (width + 511ULL) & ~511ULL, total;
    if (row < width || __builtin_mul_overflow(row, height, &total))
        return INT64_MAX;
    return clamp_bytes(total);
}

VGPU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem)
{
    VGPU_GATE(cuMemAllocPitch_v2, (dptr, pitch, w, h, elem));
    if (!dptr || !pitch)
        return vgpu_real.cuMemAllocPitch_v2(dptr, pitch, w, h, elem);
    int64_t estimate = pitch_estimate(w, h);
    CHARGE_CURRENT(a, estimate);
    CUresult rc = vgpu_real.cuMemAllocPitch_v2(dptr, pitch, w, h, elem);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, estimate);
        return rc;
    }
    unsigned long long actual_u;
    int64_t actual = __builtin_mul_overflow((unsigned long long)*pitch, (unsigned long long)h, &actual_u)
                         ? INT64_MAX
                         : clamp_bytes(actual_u);
    if (settle(&a, estimate, actual) != 0) {
        UNDO(a, estimate, vgpu_real.cuMemFree_v2(*dptr));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, actual, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int w, unsigned int h,
                                     unsigned int elem)
{
    VGPU_GATE(cuMemAllocPitch, (dptr, pitch, w, h, elem));
    if (!dptr || !pitch)
        return vgpu_real.cuMemAllocPitch(dptr, pitch, w, h, elem);
    int64_t estimate = pitch_estimate(w, h);
    CHARGE_CURRENT(a, estimate);
    CUresult rc = vgpu_real.cuMemAllocPitch(dptr, pitch, w, h, elem);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, estimate);
        return rc;
    }
    int64_t actual = (int64_t)*pitch * (int64_t)h;
    if (settle(&a, estimate, actual) != 0) {
        UNDO(a, estimate, vgpu_real.cuMemFree(*dptr));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, actual, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    VGPU_GATE(cuMemFree_v2, (dptr));
    FREE_BODY(VGPU_PTR_DEVICE, dptr, vgpu_real.cuMemFree_v2(dptr));
}

VGPU_EXPORT CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    VGPU_GATE(cuMemFree, (dptr));
    FREE_BODY(VGPU_PTR_DEVICE, dptr, vgpu_real.cuMemFree(dptr));
}

/* ---- stream-ordered allocations (charged at the call, refunded at the free call) -------------- */

#define ALLOC_ASYNC_BODY(real_call)                                                                   \
    do {                                                                                              \
        if (!dptr)                                                                                    \
            return real_call;                                                                         \
        int64_t bytes = clamp_bytes(bytesize);                                                        \
        CHARGE_CURRENT(a, bytes);                                                                     \
        CUresult rc = real_call;                                                                      \
        if (rc != CUDA_SUCCESS) {                                                                     \
            vgpu_refund(a, bytes);                                                                    \
            return rc;                                                                                \
        }                                                                                             \
        vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, bytes, a);                                            \
        return CUDA_SUCCESS;                                                                          \
    } while (0)

VGPU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    VGPU_GATE(cuMemAllocAsync, (dptr, bytesize, s));
    ALLOC_ASYNC_BODY(vgpu_real.cuMemAllocAsync(dptr, bytesize, s));
}

VGPU_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    VGPU_GATE(cuMemAllocAsync_ptsz, (dptr, bytesize, s));
    ALLOC_ASYNC_BODY(vgpu_real.cuMemAllocAsync_ptsz(dptr, bytesize, s));
}

/* ---- memory pools: an allocation from a pool is charged to the pool's device ---------------- */

static void remember_pool(CUmemoryPool pool, CUdevice dev)
{
    CUresult err = CUDA_SUCCESS;
    /* A pool of a device in no claim maps to no account: its allocations are refused. */
    vgpu_ptrmap_put(VGPU_PTR_POOL, (uint64_t)(uintptr_t)pool, dev, vgpu_account_for_device(dev, &err));
}

VGPU_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    VGPU_GATE(cuMemPoolCreate, (pool, props));
    CUresult rc = vgpu_real.cuMemPoolCreate(pool, props);
    if (rc == CUDA_SUCCESS && pool && props && props->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
        remember_pool(*pool, props->location.id);
    return rc;
}

VGPU_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    VGPU_GATE(cuMemPoolDestroy, (pool));
    int64_t dev;
    struct vgpu_account *a;
    vgpu_ptrmap_take(VGPU_PTR_POOL, (uint64_t)(uintptr_t)pool, &dev, &a);
    return vgpu_real.cuMemPoolDestroy(pool);
}

VGPU_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev)
{
    VGPU_GATE(cuDeviceGetDefaultMemPool, (pool, dev));
    CUresult rc = vgpu_real.cuDeviceGetDefaultMemPool(pool, dev);
    if (rc == CUDA_SUCCESS && pool)
        remember_pool(*pool, dev);
    return rc;
}

VGPU_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    VGPU_GATE(cuDeviceGetMemPool, (pool, dev));
    CUresult rc = vgpu_real.cuDeviceGetMemPool(pool, dev);
    if (rc == CUDA_SUCCESS && pool)
        remember_pool(*pool, dev);
    return rc;
}

/* The pool's account when the pool is known, else the current context's device. */
static struct vgpu_account *pool_account(CUmemoryPool pool, CUresult *err)
{
    int64_t dev;
    struct vgpu_account *a = NULL;
    if (vgpu_ptrmap_get(VGPU_PTR_POOL, (uint64_t)(uintptr_t)pool, &dev, &a)) {
        if (!a)
            *err = CUDA_ERROR_OUT_OF_MEMORY;
        return a;
    }
    return vgpu_account_current(NULL, err);
}

#define ALLOC_POOL_BODY(real_call)                                                                    \
    do {                                                                                              \
        if (!dptr)                                                                                    \
            return real_call;                                                                         \
        CUresult err = CUDA_SUCCESS;                                                                  \
        struct vgpu_account *head = pool_account(pool, &err);                                         \
        if (!head)                                                                                    \
            return err;                                                                               \
        int64_t bytes = clamp_bytes(bytesize);                                                        \
        struct vgpu_account *a = vgpu_admit_chain(head, bytes);                                       \
        if (!a)                                                                                       \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                          \
        CUresult rc = real_call;                                                                      \
        if (rc != CUDA_SUCCESS) {                                                                     \
            vgpu_refund(a, bytes);                                                                    \
            return rc;                                                                                \
        }                                                                                             \
        vgpu_ptrmap_put(VGPU_PTR_DEVICE, *dptr, bytes, a);                                            \
        return CUDA_SUCCESS;                                                                          \
    } while (0)

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s)
{
    VGPU_GATE(cuMemAllocFromPoolAsync, (dptr, bytesize, pool, s));
    ALLOC_POOL_BODY(vgpu_real.cuMemAllocFromPoolAsync(dptr, bytesize, pool, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                  CUstream s)
{
    VGPU_GATE(cuMemAllocFromPoolAsync_ptsz, (dptr, bytesize, pool, s));
    ALLOC_POOL_BODY(vgpu_real.cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, pool, s));
}

VGPU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream s)
{
    VGPU_GATE(cuMemFreeAsync, (dptr, s));
    FREE_BODY(VGPU_PTR_DEVICE, dptr, vgpu_real.cuMemFreeAsync(dptr, s));
}

VGPU_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s)
{
    VGPU_GATE(cuMemFreeAsync_ptsz, (dptr, s));
    FREE_BODY(VGPU_PTR_DEVICE, dptr, vgpu_real.cuMemFreeAsync_ptsz(dptr, s));
}

/* ---- virtual memory management: physical memory is charged at cuMemCreate ------------------- */

VGPU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                                 unsigned long long flags)
{
    VGPU_GATE(cuMemCreate, (h, size, prop, flags));
    if (!h || !prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return vgpu_real.cuMemCreate(h, size, prop, flags); /* host memory is not the wall's business */
    CUresult err = CUDA_SUCCESS;
    /* The device comes from the request, checked by UUID lookup: never an unchecked index. */
    struct vgpu_account *head = vgpu_account_for_device(prop->location.id, &err);
    if (!head)
        return err == CUDA_ERROR_OUT_OF_MEMORY ? err : CUDA_ERROR_INVALID_DEVICE;
    int64_t bytes = clamp_bytes(size);
    struct vgpu_account *a = vgpu_admit_chain(head, bytes);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = VGPU_WATCHED_CALL(a, bytes, vgpu_real.cuMemCreate(h, size, prop, flags));
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, bytes);
        return rc;
    }
    vgpu_ptrmap_put(VGPU_PTR_VMM, *h, bytes, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    VGPU_GATE(cuMemRelease, (h));
    FREE_BODY(VGPU_PTR_VMM, h, vgpu_real.cuMemRelease(h));
}
