/*
 * Memory queries answer the claim's view: total = min(limit, physical total), free = what the
 * claim may still allocate (limit - used, clamped to 0 and to the physical free memory). A GPU in
 * several claims of this process shows their sums: the limits added up, the used bytes added up. The
 * real call runs first into our own variables, so its errors are preserved and NULL output
 * pointers never crash.
 */
#include <limits.h>

#include "vgpu_internal.h"

static void claim_view(const struct vgpu_account *a, size_t phys_free, size_t phys_total, size_t *free_out,
                       size_t *total_out)
{
    int64_t used, limit;
    vgpu_chain_totals(a, &limit, &used);
    unsigned long long total = (unsigned long long)limit < phys_total ? (unsigned long long)limit : phys_total;
    unsigned long long room = used <= 0 ? total : (used >= (int64_t)total ? 0 : total - (unsigned long long)used);
    *total_out = (size_t)total;
    *free_out = (size_t)(room < phys_free ? room : phys_free);
}

/* min(sum of the GPU's claim limits, the card) */
static size_t claimed_total(const struct vgpu_account *a, size_t phys_total)
{
    int64_t limit, used;
    vgpu_chain_totals(a, &limit, &used);
    return (unsigned long long)limit < phys_total ? (size_t)limit : phys_total;
}

VGPU_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    VGPU_GATE(cuMemGetInfo_v2, (free_bytes, total));
    size_t f = 0, t = 0;
    CUresult rc = vgpu_real.cuMemGetInfo_v2(&f, &t);
    if (rc != CUDA_SUCCESS)
        return rc;
    CUresult err = CUDA_SUCCESS;
    struct vgpu_account *a = vgpu_account_current(NULL, &err);
    if (a)
        claim_view(a, f, t, &f, &t);
    if (free_bytes)
        *free_bytes = f;
    if (total)
        *total = t;
    return CUDA_SUCCESS;
}

static unsigned int clamp_u32(size_t v)
{
    return v > UINT_MAX ? UINT_MAX : (unsigned int)v;
}

VGPU_EXPORT CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total)
{
    VGPU_GATE(cuMemGetInfo, (free_bytes, total));
    size_t f = 0, t = 0;
    unsigned int f32 = 0, t32 = 0;
    CUresult rc = vgpu_real.cuMemGetInfo(&f32, &t32);
    if (rc != CUDA_SUCCESS)
        return rc;
    f = f32;
    t = t32;
    CUresult err = CUDA_SUCCESS;
    struct vgpu_account *a = vgpu_account_current(NULL, &err);
    if (a)
        claim_view(a, f, t, &f, &t);
    if (free_bytes)
        *free_bytes = clamp_u32(f);
    if (total)
        *total = clamp_u32(t);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    VGPU_GATE(cuDeviceTotalMem_v2, (bytes, dev));
    size_t t = 0;
    CUresult rc = vgpu_real.cuDeviceTotalMem_v2(&t, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    CUresult err = CUDA_SUCCESS;
    struct vgpu_account *a = vgpu_account_for_device(dev, &err);
    if (a)
        t = claimed_total(a, t);
    if (bytes)
        *bytes = t;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    VGPU_GATE(cuDeviceTotalMem, (bytes, dev));
    unsigned int t32 = 0;
    CUresult rc = vgpu_real.cuDeviceTotalMem(&t32, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    size_t t = t32;
    CUresult err = CUDA_SUCCESS;
    struct vgpu_account *a = vgpu_account_for_device(dev, &err);
    if (a)
        t = claimed_total(a, t);
    if (bytes)
        *bytes = clamp_u32(t);
    return CUDA_SUCCESS;
}
