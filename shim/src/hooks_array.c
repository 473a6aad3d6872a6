/*
 * Arrays and mipmapped arrays: the size is known only after creation, from the driver's
 * cuArrayGetMemoryRequirements / cuMipmappedArrayGetMemoryRequirements. Without them (an older or
 * minimal driver, or a call that fails) the charge is an upper bound: the larger of a structural
 * bound of the layout and what device-wide free memory says the creation took (docs/shim.md,
 * "When the driver fails").
 */
#include <limits.h>
#include <string.h>

#include "mem_charge.h"

/* ---- arrays: estimate from the descriptor, then the driver's own memory requirements -------- */

static unsigned element_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
        return 4;
    default:
        return 16; /* unknown or block-compressed formats: overestimate, corrected after creation */
    }
}

static int64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned channels)
{
    unsigned long long n = 1, t;
    unsigned long long dims[5] = {w ? w : 1, h ? h : 1, d ? d : 1, channels ? channels : 1, element_bytes(f)};
    for (int i = 0; i < 5; i++) {
        if (__builtin_mul_overflow(n, dims[i], &t))
            return INT64_MAX;
        n = t;
    }
    return clamp_bytes(n);
}

/* The levels of a mipmapped array: level l has each non-zero extent halved l times (at least 1). */
#define LEVEL_EXTENT(extent, l) ((extent) ? ((extent) >> (l) ? (extent) >> (l) : 1) : 0)
#define MAX_LEVELS 64

static int64_t mipmap_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    int64_t total = 0;
    if (levels == 0)
        levels = 1;
    for (unsigned l = 0; l < levels && l < MAX_LEVELS; l++) {
        int64_t level = array_bytes(LEVEL_EXTENT(d->Width, l) ? LEVEL_EXTENT(d->Width, l) : 1,
                                    LEVEL_EXTENT(d->Height, l), LEVEL_EXTENT(d->Depth, l), d->Format, d->NumChannels);
        if (level > INT64_MAX - total)
            return INT64_MAX;
        total += level;
    }
    return total;
}

/* ---- what an array takes when the driver cannot say (no memory-requirements call) ----------- */

#define ROW_ALIGN 512ULL        /* no driver pads a row to more than the next power of two of this */
#define LEVEL_ALIGN 65536ULL    /* ... nor starts an array or a level on a coarser boundary */
#define MEASURED_MAX_FACTOR 8   /* a free-memory drop beyond 8 x the bound was someone else's */

static unsigned long long pow2_at_least(unsigned long long v, unsigned long long min)
{
    unsigned long long p = min;
    while (p < v) {
        if (p > ULLONG_MAX / 2)
            return ULLONG_MAX;
        p <<= 1;
    }
    return p;
}

/* An upper bound of one level (or plain array) in any layout that pads the row to at most the
 * next power of two (>= 512 bytes), the height and depth to at most the next power of two
 * (block-linear tiling does less), and starts it on a 64 KiB boundary. */
static int64_t level_bound(size_t w, size_t h, size_t d, CUarray_format f, unsigned channels)
{
    unsigned long long row, rows, depth, t, total;
    if (__builtin_mul_overflow((unsigned long long)(w ? w : 1), (unsigned long long)element_bytes(f) * (channels ? channels : 1),
                               &row))
        return INT64_MAX;
    row = pow2_at_least(row, ROW_ALIGN);
    rows = pow2_at_least(h ? h : 1, 1);
    depth = pow2_at_least(d ? d : 1, 1);
    if (row == ULLONG_MAX || rows == ULLONG_MAX || depth == ULLONG_MAX || __builtin_mul_overflow(row, rows, &t) ||
        __builtin_mul_overflow(t, depth, &total) || total > ULLONG_MAX - LEVEL_ALIGN)
        return INT64_MAX;
    return clamp_bytes((total + LEVEL_ALIGN - 1) & ~(LEVEL_ALIGN - 1));
}

static int64_t mipmap_bound(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    int64_t total = 0;
    if (levels == 0)
        levels = 1;
    for (unsigned l = 0; l < levels && l < MAX_LEVELS; l++) {
        int64_t level = level_bound(LEVEL_EXTENT(d->Width, l), LEVEL_EXTENT(d->Height, l), LEVEL_EXTENT(d->Depth, l),
                                    d->Format, d->NumChannels);
        if (level > INT64_MAX - total)
            return INT64_MAX;
        total += level;
    }
    return total;
}

/* Device-wide free bytes now (the current context's device), -1 if unknown: read around an
 * array's creation, in case the driver cannot say what it took (arrays are no hot path). */
static int64_t free_now(void)
{
    size_t f = 0, t = 0;
    if (!vgpu_real.cuMemGetInfo_v2 || vgpu_real.cuMemGetInfo_v2(&f, &t) != CUDA_SUCCESS)
        return -1;
    return clamp_bytes(f);
}

/*
 * The bytes to charge for an array the driver could not size (call missing: rc NOT_FOUND, or
 * failed): the structural upper bound, or what device-wide free memory says the creation took
 * when that is more (a layout coarser than the bound assumes) and plausibly ours. Counted.
 */
static int64_t fallback_size(struct vgpu_account *a, int call, CUresult rc, int64_t bound, int64_t free_before)
{
    int64_t after = free_before >= 0 ? free_now() : -1, taken = after >= 0 ? free_before - after : -1;
    vgpu_limit_error(a->gpu, call, rc);
    if (taken > bound && bound <= INT64_MAX / MEASURED_MAX_FACTOR && taken <= bound * MEASURED_MAX_FACTOR)
        return taken;
    return bound;
}

/* What to reserve before the creation: the texels, corrected after the call; without the driver's
 * memory-requirements call, the upper bound straight away (the driver never holds more than the
 * wall while the creation runs). */
#define RESERVE(requirements_call, bound, texels) (vgpu_helper.requirements_call ? (texels) : (bound))

static CUresult finish_array(struct vgpu_account *a, CUdevice dev, int64_t estimate, int64_t bound,
                             int64_t free_before, CUarray arr)
{
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    int64_t actual;
    CUresult rc = CUDA_ERROR_NOT_FOUND; /* the driver has no cuArrayGetMemoryRequirements */
    memset(&req, 0, sizeof(req));
    if (vgpu_helper.cuArrayGetMemoryRequirements &&
        (rc = vgpu_helper.cuArrayGetMemoryRequirements(&req, arr, dev)) == CUDA_SUCCESS && req.size > 0)
        actual = clamp_bytes(req.size);
    else
        actual = fallback_size(a, VGPU_ERRCALL_ARRAY_REQ, rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_VALUE, bound,
                               free_before);
    if (settle(&a, estimate, actual) != 0) {
        UNDO(a, estimate, vgpu_real.cuArrayDestroy(arr));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_ptrmap_put(VGPU_PTR_ARRAY, (uint64_t)(uintptr_t)arr, actual, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    VGPU_GATE(cuArrayCreate_v2, (arr, desc));
    if (!arr || !desc)
        return vgpu_real.cuArrayCreate_v2(arr, desc);
    int64_t bound = level_bound(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
    int64_t estimate = RESERVE(cuArrayGetMemoryRequirements, bound,
                               array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels));
    CUdevice dev = 0;
    CHARGE_ON(a, &dev, estimate);
    int64_t free_before = free_now();
    CUresult rc = vgpu_real.cuArrayCreate_v2(arr, desc);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, estimate);
        return rc;
    }
    return finish_array(a, dev, estimate, bound, free_before, *arr);
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    VGPU_GATE(cuArray3DCreate_v2, (arr, desc));
    if (!arr || !desc)
        return vgpu_real.cuArray3DCreate_v2(arr, desc);
    int64_t bound = level_bound(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
    int64_t estimate = RESERVE(cuArrayGetMemoryRequirements, bound,
                               array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels));
    CUdevice dev = 0;
    CHARGE_ON(a, &dev, estimate);
    int64_t free_before = free_now();
    CUresult rc = vgpu_real.cuArray3DCreate_v2(arr, desc);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, estimate);
        return rc;
    }
    return finish_array(a, dev, estimate, bound, free_before, *arr);
}

VGPU_EXPORT CUresult cuArrayDestroy(CUarray arr)
{
    VGPU_GATE(cuArrayDestroy, (arr));
    FREE_BODY(VGPU_PTR_ARRAY, (uintptr_t)arr, vgpu_real.cuArrayDestroy(arr));
}

VGPU_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                            unsigned int levels)
{
    VGPU_GATE(cuMipmappedArrayCreate, (h, desc, levels));
    if (!h || !desc)
        return vgpu_real.cuMipmappedArrayCreate(h, desc, levels);
    int64_t bound = mipmap_bound(desc, levels);
    int64_t estimate = RESERVE(cuMipmappedArrayGetMemoryRequirements, bound, mipmap_bytes(desc, levels));
    CUdevice dev = 0;
    CHARGE_ON(a, &dev, estimate);
    int64_t free_before = free_now();
    CUresult rc = vgpu_real.cuMipmappedArrayCreate(h, desc, levels);
    if (rc != CUDA_SUCCESS) {
        vgpu_refund(a, estimate);
        return rc;
    }
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    int64_t actual;
    rc = CUDA_ERROR_NOT_FOUND; /* the driver has no cuMipmappedArrayGetMemoryRequirements */
    memset(&req, 0, sizeof(req));
    if (vgpu_helper.cuMipmappedArrayGetMemoryRequirements &&
        (rc = vgpu_helper.cuMipmappedArrayGetMemoryRequirements(&req, *h, dev)) == CUDA_SUCCESS && req.size > 0)
        actual = clamp_bytes(req.size);
    else
        actual = fallback_size(a, VGPU_ERRCALL_MIPMAP_REQ, rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_VALUE,
                               bound, free_before);
    if (settle(&a, estimate, actual) != 0) {
        UNDO(a, estimate, vgpu_real.cuMipmappedArrayDestroy(*h));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_ptrmap_put(VGPU_PTR_MIPMAP, (uint64_t)(uintptr_t)*h, actual, a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    VGPU_GATE(cuMipmappedArrayDestroy, (h));
    FREE_BODY(VGPU_PTR_MIPMAP, (uintptr_t)h, vgpu_real.cuMipmappedArrayDestroy(h));
}
