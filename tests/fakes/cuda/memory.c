/* Device memory of the fake driver: every allocation path the shim accounts, with real sizes. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cuda.h"

#define CHECK_CTX(dev)                                                                                \
    int dev = fake_current_device();                                                                  \
    do {                                                                                              \
        if (!g_fake_initialized)                                                                      \
            return CUDA_ERROR_NOT_INITIALIZED;                                                        \
        if (dev < 0)                                                                                  \
            return CUDA_ERROR_INVALID_CONTEXT;                                                        \
    } while (0)
#define INJECT()                                                                                      \
    do {                                                                                              \
        if (fake_should_fail(__func__))                                                               \
            return (CUresult)fake_should_fail(__func__);                                                                \
    } while (0)

/* ---- address -> (bytes, device): a chained hash table under one mutex ------------------------ */

struct node {
    uint64_t addr;
    int64_t bytes;
    int dev;
    struct node *next;
};
#define BUCKETS 4096
static struct node *g_buckets[BUCKETS];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_next_addr = 0x7f0000000000ULL;
static uint64_t g_next_low = 0x10000000ULL; /* 32-bit addresses for the v1 API */

static unsigned bucket(uint64_t a)
{
    return (unsigned)((a >> 8) * 0x9E3779B97F4A7C15ULL >> 52) & (BUCKETS - 1);
}

uint64_t fake_new_address(int64_t bytes, int low32)
{
    uint64_t step = ((uint64_t)bytes + 511) & ~511ULL;
    if (step == 0)
        step = 512;
    return __atomic_fetch_add(low32 ? &g_next_low : &g_next_addr, step, __ATOMIC_RELAXED);
}

void fake_remember(uint64_t addr, int64_t bytes, int dev)
{
    struct node *n = malloc(sizeof(*n));
    n->addr = addr;
    n->bytes = bytes;
    n->dev = dev;
    pthread_mutex_lock(&g_lock);
    n->next = g_buckets[bucket(addr)];
    g_buckets[bucket(addr)] = n;
    pthread_mutex_unlock(&g_lock);
}

int fake_forget(uint64_t addr, int64_t *bytes, int *dev)
{
    struct node **pp, *n = NULL;
    pthread_mutex_lock(&g_lock);
    for (pp = &g_buckets[bucket(addr)]; *pp; pp = &(*pp)->next)
        if ((*pp)->addr == addr) {
            n = *pp;
            *pp = n->next;
            break;
        }
    pthread_mutex_unlock(&g_lock);
    if (!n)
        return 0;
    *bytes = n->bytes;
    *dev = n->dev;
    free(n);
    return 1;
}

static CUresult alloc_on(int dev, int64_t bytes, CUdeviceptr *out, int low32)
{
    if (bytes <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_charge(dev, bytes) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *out = fake_new_address(bytes, low32);
    fake_remember(*out, bytes, dev);
    return CUDA_SUCCESS;
}

static CUresult free_addr(uint64_t addr)
{
    int64_t bytes;
    int dev;
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!fake_forget(addr, &bytes, &dev))
        return CUDA_ERROR_INVALID_VALUE;
    fake_uncharge(dev, bytes);
    return CUDA_SUCCESS;
}

/* ---- linear memory ---------------------------------------------------------------------------- */

FAKE_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    CHECK_CTX(dev);
    INJECT();
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_on(dev, (int64_t)bytesize, dptr, 0);
}

FAKE_EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    CHECK_CTX(dev);
    INJECT();
    CUdeviceptr a;
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = alloc_on(dev, bytesize, &a, 1);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr_v1)a;
    return rc;
}

FAKE_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    INJECT();
    return free_addr(dptr);
}

FAKE_EXPORT CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    INJECT();
    return free_addr(dptr);
}

FAKE_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    (void)flags;
    CHECK_CTX(dev);
    INJECT();
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_on(dev, (int64_t)bytesize, dptr, 0);
}

/* Rows are aligned to 512 bytes, as on many real GPUs; the shim must charge pitch x height. */
FAKE_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem)
{
    CHECK_CTX(dev);
    INJECT();
    if (!dptr || !pitch || w == 0 || h == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t p = (w + 511) & ~(size_t)511;
    CUresult rc = alloc_on(dev, (int64_t)(p * h), dptr, 0);
    if (rc == CUDA_SUCCESS)
        *pitch = p;
    return rc;
}

FAKE_EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int w, unsigned int h,
                                     unsigned int elem)
{
    CHECK_CTX(dev);
    INJECT();
    CUdeviceptr a;
    if (!dptr || !pitch || w == 0 || h == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned int p = (w + 511) & ~511u;
    CUresult rc = alloc_on(dev, (int64_t)p * h, &a, 1);
    if (rc == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr_v1)a;
        *pitch = p;
    }
    return rc;
}

/* ---- stream-ordered allocation and pools ------------------------------------------------------ */

struct CUmemPoolHandle_st {
    int dev;
};
static struct CUmemPoolHandle_st g_pools[FAKE_MAX_DEVICES];

FAKE_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pool || !props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE || !fake_valid_device(props->location.id))
        return CUDA_ERROR_INVALID_VALUE;
    CUmemoryPool p = malloc(sizeof(*p));
    p->dev = props->location.id;
    *pool = p;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    if (!pool)
        return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < FAKE_MAX_DEVICES; i++)
        if (pool == &g_pools[i])
            return CUDA_ERROR_INVALID_VALUE; /* default pools cannot be destroyed */
    free(pool);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pool || !fake_valid_device(dev))
        return CUDA_ERROR_INVALID_VALUE;
    g_pools[dev].dev = dev;
    *pool = &g_pools[dev];
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pool || !fake_valid_device(dev))
        return CUDA_ERROR_INVALID_VALUE;
    g_pools[dev].dev = dev;
    *pool = &g_pools[dev];
    return CUDA_SUCCESS;
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t bytesize, int dev)
{
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_on(dev, (int64_t)bytesize, dptr, 0);
}

FAKE_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    (void)s;
    CHECK_CTX(dev);
    INJECT();
    return alloc_async(dptr, bytesize, dev);
}

FAKE_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    (void)s;
    CHECK_CTX(dev);
    INJECT();
    return alloc_async(dptr, bytesize, dev);
}

FAKE_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s)
{
    (void)s;
    CHECK_CTX(dev);
    INJECT();
    if (!pool)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_async(dptr, bytesize, pool->dev);
}

FAKE_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                  CUstream s)
{
    (void)s;
    CHECK_CTX(dev);
    INJECT();
    if (!pool)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_async(dptr, bytesize, pool->dev);
}

FAKE_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream s)
{
    (void)s;
    INJECT();
    return free_addr(dptr);
}

FAKE_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s)
{
    (void)s;
    INJECT();
    return free_addr(dptr);
}

/* ---- virtual memory management ------------------------------------------------------------------ */

static uint64_t g_next_handle = 0x1000;

FAKE_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                                 unsigned long long flags)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    INJECT();
    if (!h || !prop || flags != 0 || size == 0 || size % (2u << 20) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
        *h = __atomic_fetch_add(&g_next_handle, 1, __ATOMIC_RELAXED); /* host memory: not device usage */
        fake_remember(*h, 0, 0);
        return CUDA_SUCCESS;
    }
    if (!fake_valid_device(prop->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    if (fake_charge(prop->location.id, (int64_t)size) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *h = __atomic_fetch_add(&g_next_handle, 1, __ATOMIC_RELAXED);
    fake_remember(*h, (int64_t)size, prop->location.id);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    INJECT();
    return free_addr(h);
}

/* ---- arrays: rows padded to 512 bytes, mipmap levels summed ------------------------------------ */

struct CUarray_st {
    int64_t bytes;
    int dev;
};
struct CUmipmappedArray_st {
    int64_t bytes;
    int dev;
};

static unsigned elem_size(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    default:
        return 4;
    }
}

static int64_t array_size(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch)
{
    size_t row = (w * elem_size(f) * (ch ? ch : 1) + 511) & ~(size_t)511;
    return (int64_t)(row * (h ? h : 1) * (d ? d : 1));
}

static CUresult make_array(CUarray *arr, int dev, int64_t bytes)
{
    if (fake_charge(dev, bytes) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUarray a = malloc(sizeof(*a));
    a->bytes = bytes;
    a->dev = dev;
    *arr = a;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *d)
{
    CHECK_CTX(dev);
    INJECT();
    if (!arr || !d || d->Width == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return make_array(arr, dev, array_size(d->Width, d->Height, 1, d->Format, d->NumChannels));
}

FAKE_EXPORT CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    CHECK_CTX(dev);
    INJECT();
    if (!arr || !d || d->Width == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return make_array(arr, dev, array_size(d->Width, d->Height, d->Depth, d->Format, d->NumChannels));
}

FAKE_EXPORT CUresult cuArrayDestroy(CUarray arr)
{
    INJECT();
    if (!arr)
        return CUDA_ERROR_INVALID_HANDLE;
    fake_uncharge(arr->dev, arr->bytes);
    free(arr);
    return CUDA_SUCCESS;
}

/* The "old-driver" variant (Makefile) lacks both memory-requirements calls (new in CUDA 11.6). */
#ifndef FAKE_OMIT_MEMORY_REQUIREMENTS
FAKE_EXPORT CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray arr, CUdevice dev)
{
    INJECT();
    if (!req || !arr || dev != arr->dev)
        return CUDA_ERROR_INVALID_VALUE;
    memset(req, 0, sizeof(*req));
    req->size = (size_t)arr->bytes;
    req->alignment = 512;
    return CUDA_SUCCESS;
}
#endif

FAKE_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels)
{
    CHECK_CTX(dev);
    INJECT();
    int64_t total = 0;
    if (!h || !d || d->Width == 0 || levels == 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* Each level starts on a 64 KiB boundary (like a block-linear layout's level alignment), so
     * small levels take far more than their texels; FAKE_CUDA_LEVEL_ALIGN makes it coarser. */
    const char *align_env = getenv("FAKE_CUDA_LEVEL_ALIGN");
    int64_t align = align_env && atoll(align_env) > 0 ? atoll(align_env) : 65536;
    for (unsigned l = 0; l < levels; l++) {
        size_t w = d->Width >> l, hh = d->Height >> l, z = d->Depth >> l;
        int64_t level = array_size(w ? w : 1, d->Height ? (hh ? hh : 1) : 0, d->Depth ? (z ? z : 1) : 0, d->Format,
                                   d->NumChannels);
        total += (level + align - 1) / align * align;
    }
    if (fake_charge(dev, total) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUmipmappedArray m = malloc(sizeof(*m));
    m->bytes = total;
    m->dev = dev;
    *h = m;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    INJECT();
    if (!h)
        return CUDA_ERROR_INVALID_HANDLE;
    fake_uncharge(h->dev, h->bytes);
    free(h);
    return CUDA_SUCCESS;
}

#ifndef FAKE_OMIT_MEMORY_REQUIREMENTS
FAKE_EXPORT CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUmipmappedArray h,
                                                           CUdevice dev)
{
    INJECT();
    if (!req || !h || dev != h->dev)
        return CUDA_ERROR_INVALID_VALUE;
    memset(req, 0, sizeof(*req));
    req->size = (size_t)h->bytes;
    req->alignment = 512;
    return CUDA_SUCCESS;
}
#endif
