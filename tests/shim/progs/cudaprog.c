/*
 * A scriptable CUDA driver-API client for the shim tests. Linked against libcuda.so.1 (the fake in
 * tests), it runs the commands given on the command line in order and prints one line per command:
 *   "<command> rc=<CUresult> [values]"
 * The first argument picks how it obtains the API:
 *   link               call the functions it is linked against (what -lcuda programs do)
 *   dlsym              dlopen("libcuda.so.1") + dlsym(handle, "<name>_v2") (what loaders do)
 *   dlsym-next         dlsym(RTLD_NEXT, ...)
 *   procaddr:<ver>     cuGetProcAddress_v2(base name, cudaVersion=<ver>, flags 0)
 *   procaddr1:<ver>    the same through the v1 cuGetProcAddress
 *   ptds:<ver>         cuGetProcAddress_v2 with CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
 * Commands (N bytes, D device ordinal, I the index of an earlier allocation):
 *   init | ctx D | ctxcreate D | alloc N | alloc1 N | managed N | pitch W H | array W H |
 *   array3d W H Z | mipmap W H LEVELS | vmm D N | vmmhost N | async N | pool N | free I |
 *   info | info1 | infonull | total D | launch K | resolve NAME VER FLAGS | fork CMDS... |
 *   exec CMDS... | hold | sleep MS | fill N (alloc N-byte blocks until refused; prints count) |
 *   fillarray W H | fillmip W H LEVELS (arrays / mipmapped arrays until refused; prints count) |
 *   busy MS US (launch US-microsecond kernels back to back for MS ms; prints the share of the
 *   device its kernels used over the second half, from the fake driver's fakeCudaBusyNs)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vgpu_cuda.h"

CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuMemAlloc(CUdeviceptr_v1 *, unsigned int);
CUresult cuMemFree(CUdeviceptr_v1);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArray3DCreate_v2(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMipmappedArrayCreate(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned int);
CUresult cuMipmappedArrayDestroy(CUmipmappedArray);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *, CUdevice);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuMemGetInfo(unsigned int *, unsigned int *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

/* The API as this run obtains it. */
static struct {
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuCtxCreate_v2)(CUcontext *, unsigned int, CUdevice);
    CUresult (*cuMemAlloc)(CUdeviceptr_v1 *, unsigned int);
    CUresult (*cuMemFree)(CUdeviceptr_v1);
    CUresult (*cuMemAlloc_v2)(CUdeviceptr *, size_t);
    CUresult (*cuMemFree_v2)(CUdeviceptr);
    CUresult (*cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*cuMemAllocPitch_v2)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
    CUresult (*cuArrayCreate_v2)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
    CUresult (*cuArray3DCreate_v2)(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
    CUresult (*cuArrayDestroy)(CUarray);
    CUresult (*cuMipmappedArrayCreate)(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned int);
    CUresult (*cuMipmappedArrayDestroy)(CUmipmappedArray);
    CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
    CUresult (*cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
    CUresult (*cuMemFreeAsync)(CUdeviceptr, CUstream);
    CUresult (*cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*cuDeviceGetDefaultMemPool)(CUmemoryPool *, CUdevice);
    CUresult (*cuMemGetInfo_v2)(size_t *, size_t *);
    CUresult (*cuMemGetInfo)(unsigned int *, unsigned int *);
    CUresult (*cuDeviceTotalMem_v2)(size_t *, CUdevice);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               CUstream, void **, void **);
} api;

/* (field, linked function, exported name, base name for cuGetProcAddress, cudaVersion floor) */
#define API(X)                                                                                        \
    X(cuInit, "cuInit", "cuInit")                                                                     \
    X(cuDeviceGet, "cuDeviceGet", "cuDeviceGet")                                                      \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain")               \
    X(cuCtxSetCurrent, "cuCtxSetCurrent", "cuCtxSetCurrent")                                          \
    X(cuCtxCreate_v2, "cuCtxCreate_v2", "cuCtxCreate")                                                \
    X(cuMemAlloc, "cuMemAlloc", NULL)                                                                 \
    X(cuMemFree, "cuMemFree", NULL)                                                                   \
    X(cuMemAlloc_v2, "cuMemAlloc_v2", "cuMemAlloc")                                                   \
    X(cuMemFree_v2, "cuMemFree_v2", "cuMemFree")                                                      \
    X(cuMemAllocManaged, "cuMemAllocManaged", "cuMemAllocManaged")                                    \
    X(cuMemAllocPitch_v2, "cuMemAllocPitch_v2", "cuMemAllocPitch")                                    \
    X(cuArrayCreate_v2, "cuArrayCreate_v2", "cuArrayCreate")                                          \
    X(cuArray3DCreate_v2, "cuArray3DCreate_v2", "cuArray3DCreate")                                    \
    X(cuArrayDestroy, "cuArrayDestroy", "cuArrayDestroy")                                             \
    X(cuMipmappedArrayCreate, "cuMipmappedArrayCreate", "cuMipmappedArrayCreate")                     \
    X(cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy", "cuMipmappedArrayDestroy")                  \
    X(cuMemCreate, "cuMemCreate", "cuMemCreate")                                                      \
    X(cuMemRelease, "cuMemRelease", "cuMemRelease")                                                   \
    X(cuMemAllocAsync, "cuMemAllocAsync", "cuMemAllocAsync")                                          \
    X(cuMemFreeAsync, "cuMemFreeAsync", "cuMemFreeAsync")                                             \
    X(cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync")                  \
    X(cuDeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool", "cuDeviceGetDefaultMemPool")            \
    X(cuMemGetInfo_v2, "cuMemGetInfo_v2", "cuMemGetInfo")                                             \
    X(cuMemGetInfo, "cuMemGetInfo", NULL)                                                             \
    X(cuDeviceTotalMem_v2, "cuDeviceTotalMem_v2", "cuDeviceTotalMem")                                 \
    X(cuLaunchKernel, "cuLaunchKernel", "cuLaunchKernel")

static void bind_api(const char *mode)
{
    if (strcmp(mode, "link") == 0) {
#define LINK(f, exported, base) api.f = f;
        API(LINK)
#undef LINK
        return;
    }
    if (strncmp(mode, "dlsym", 5) == 0) {
        void *h = strcmp(mode, "dlsym-next") == 0 ? RTLD_NEXT : dlopen("libcuda.so.1", RTLD_NOW);
#define DLSYM(f, exported, base) *(void **)&api.f = dlsym(h, exported);
        API(DLSYM)
#undef DLSYM
        return;
    }
    int v1 = strncmp(mode, "procaddr1:", 10) == 0;
    int ptds = strncmp(mode, "ptds:", 5) == 0;
    int ver = atoi(strchr(mode, ':') + 1);
    cuuint64_t flags = ptds ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0;
    /* The entry point itself comes through dlsym, as cudart gets it. */
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    CUresult (*gpa)(const char *, void **, int, cuuint64_t) = dlsym(h, "cuGetProcAddress");
    CUresult (*gpa2)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
        dlsym(h, "cuGetProcAddress_v2");
    /* v1-only entry points are not reachable by base name at a modern version: keep them linked. */
    api.cuMemAlloc = cuMemAlloc;
    api.cuMemFree = cuMemFree;
    api.cuMemGetInfo = cuMemGetInfo;
#define PROC(f, exported, base)                                                                       \
    if (base) {                                                                                       \
        CUdriverProcAddressQueryResult st;                                                            \
        CUresult rc_ = v1 ? gpa(base, (void **)&api.f, ver, flags) : gpa2(base, (void **)&api.f, ver, flags, &st); \
        if (rc_ != CUDA_SUCCESS)                                                                      \
            api.f = NULL;                                                                             \
    }
    API(PROC)
#undef PROC
}

struct alloc {
    char kind; /* d device, 1 v1, a array, m mipmap, v vmm, s async */
    unsigned long long value;
};
static struct alloc allocs[100000];
static int nallocs;

static void record(char kind, unsigned long long value)
{
    allocs[nallocs].kind = kind;
    allocs[nallocs].value = value;
    nallocs++;
}

static unsigned long long num(const char *s)
{
    return strtoull(s, NULL, 0);
}

static int run(int argc, char **argv, const char *self, const char *mode);

/* mtfill: threads allocate blocks concurrently until refused, then free everything they got. */
static pthread_barrier_t fill_barrier; /* nobody frees before everybody was refused */

struct filler {
    CUcontext ctx;
    size_t block;
    int count;
    int freed_ok;
};

static pthread_barrier_t start_barrier; /* mtfirst: every thread's first call at the same moment */
static int start_together;
static CUcontext last_ctx; /* the context the last "ctx" command made current */

static void *fill_thread(void *arg)
{
    struct filler *f = arg;
    CUdeviceptr *ptrs = calloc(1 << 20, sizeof(*ptrs));
    api.cuCtxSetCurrent(f->ctx);
    if (start_together)
        pthread_barrier_wait(&start_barrier);
    while (f->count < (1 << 20) && api.cuMemAlloc_v2(&ptrs[f->count], f->block) == CUDA_SUCCESS)
        f->count++;
    pthread_barrier_wait(&fill_barrier);
    f->freed_ok = 1;
    for (int i = 0; i < f->count; i++)
        if (api.cuMemFree_v2(ptrs[i]) != CUDA_SUCCESS)
            f->freed_ok = 0;
    free(ptrs);
    return NULL;
}

static const char *const launch_names[] = {
    "cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz", "cuGraphLaunch", "cuGraphLaunch_ptsz",
};

static int run_one(char **argv, int i, int argc, const char *self, const char *mode)
{
    const char *cmd = argv[i];
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
#define NEED(n)                                                                                       \
    if (i + (n) >= argc) {                                                                            \
        fprintf(stderr, "%s needs %d arguments\n", cmd, (n));                                         \
        exit(2);                                                                                      \
    }
    if (!strcmp(cmd, "init")) {
        rc = api.cuInit(0);
        printf("init rc=%d\n", rc);
        return 1;
    }
    if (!strcmp(cmd, "ctx")) {
        NEED(1);
        CUcontext c = NULL;
        CUdevice dev;
        rc = api.cuDeviceGet(&dev, (int)num(argv[i + 1]));
        if (rc == CUDA_SUCCESS)
            rc = api.cuDevicePrimaryCtxRetain(&c, dev);
        if (rc == CUDA_SUCCESS)
            rc = api.cuCtxSetCurrent(c);
        last_ctx = c;
        printf("ctx rc=%d\n", rc);
        return 2;
    }
    if (!strcmp(cmd, "ctxcreate")) {
        NEED(1);
        CUcontext c = NULL;
        rc = api.cuCtxCreate_v2(&c, 0, (int)num(argv[i + 1]));
        printf("ctxcreate rc=%d\n", rc);
        return 2;
    }
    if (!strcmp(cmd, "alloc") || !strcmp(cmd, "managed") || !strcmp(cmd, "async") || !strcmp(cmd, "pool")) {
        NEED(1);
        CUdeviceptr p = 0;
        size_t n = num(argv[i + 1]);
        char kind = 'd';
        if (!strcmp(cmd, "alloc"))
            rc = api.cuMemAlloc_v2(&p, n);
        else if (!strcmp(cmd, "managed"))
            rc = api.cuMemAllocManaged(&p, n, 1);
        else if (!strcmp(cmd, "async")) {
            rc = api.cuMemAllocAsync(&p, n, NULL);
            kind = 's';
        } else {
            /* "pool N": the default pool of device 0; "pool N D": of device D;
             * "pool N D new": a pool created with cuMemPoolCreate on device D. */
            CUmemoryPool pool = NULL;
            CUdevice dev = 0;
            int extra = 0;
            if (i + 2 < argc && argv[i + 2][0] >= '0' && argv[i + 2][0] <= '9') {
                dev = (int)num(argv[i + 2]);
                extra = 1;
                if (i + 3 < argc && !strcmp(argv[i + 3], "new")) {
                    CUresult (*create)(CUmemoryPool *, const CUmemPoolProps *) = dlsym(RTLD_DEFAULT, "cuMemPoolCreate");
                    CUmemPoolProps props;
                    memset(&props, 0, sizeof(props));
                    props.allocType = 1;
                    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
                    props.location.id = dev;
                    create(&pool, &props);
                    extra = 2;
                }
            }
            if (!pool)
                api.cuDeviceGetDefaultMemPool(&pool, dev);
            rc = api.cuMemAllocFromPoolAsync(&p, n, pool, NULL);
            kind = 's';
            printf("%s rc=%d id=%d\n", cmd, rc, rc == CUDA_SUCCESS ? nallocs : -1);
            if (rc == CUDA_SUCCESS)
                record(kind, p);
            return 2 + extra;
        }
        printf("%s rc=%d id=%d\n", cmd, rc, rc == CUDA_SUCCESS ? nallocs : -1);
        if (rc == CUDA_SUCCESS)
            record(kind, p);
        return 2;
    }
    if (!strcmp(cmd, "alloc1")) {
        NEED(1);
        CUdeviceptr_v1 p = 0;
        rc = api.cuMemAlloc(&p, (unsigned)num(argv[i + 1]));
        printf("alloc1 rc=%d id=%d\n", rc, rc == CUDA_SUCCESS ? nallocs : -1);
        if (rc == CUDA_SUCCESS)
            record('1', p);
        return 2;
    }
    if (!strcmp(cmd, "fill")) {
        NEED(1);
        size_t n = num(argv[i + 1]);
        int count = 0;
        for (;;) {
            CUdeviceptr p = 0;
            rc = api.cuMemAlloc_v2(&p, n);
            if (rc != CUDA_SUCCESS)
                break;
            record('d', p);
            count++;
        }
        printf("fill rc=%d count=%d\n", rc, count);
        return 2;
    }
    if (!strcmp(cmd, "pitch")) {
        NEED(2);
        CUdeviceptr p = 0;
        size_t pitch = 0;
        rc = api.cuMemAllocPitch_v2(&p, &pitch, num(argv[i + 1]), num(argv[i + 2]), 4);
        printf("pitch rc=%d id=%d pitch=%zu\n", rc, rc == CUDA_SUCCESS ? nallocs : -1, pitch);
        if (rc == CUDA_SUCCESS)
            record('d', p);
        return 3;
    }
    if (!strcmp(cmd, "array") || !strcmp(cmd, "array3d")) {
        int three = !strcmp(cmd, "array3d");
        NEED(three ? 3 : 2);
        CUarray a = NULL;
        if (three) {
            CUDA_ARRAY3D_DESCRIPTOR d = {num(argv[i + 1]), num(argv[i + 2]), num(argv[i + 3]),
                                         CU_AD_FORMAT_FLOAT, 1, 0};
            rc = api.cuArray3DCreate_v2(&a, &d);
        } else {
            CUDA_ARRAY_DESCRIPTOR d = {num(argv[i + 1]), num(argv[i + 2]), CU_AD_FORMAT_FLOAT, 1};
            rc = api.cuArrayCreate_v2(&a, &d);
        }
        printf("%s rc=%d id=%d\n", cmd, rc, rc == CUDA_SUCCESS ? nallocs : -1);
        if (rc == CUDA_SUCCESS)
            record('a', (unsigned long long)(uintptr_t)a);
        return three ? 4 : 3;
    }
    if (!strcmp(cmd, "fillarray") || !strcmp(cmd, "fillmip")) {
        /* Create W x H arrays (float) or mipmapped arrays (RGBA8, LEVELS levels) until refused. */
        int mip = !strcmp(cmd, "fillmip");
        NEED(mip ? 3 : 2);
        long count = 0;
        for (;;) {
            if (mip) {
                CUmipmappedArray m = NULL;
                CUDA_ARRAY3D_DESCRIPTOR d = {num(argv[i + 1]), num(argv[i + 2]), 0, CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
                rc = api.cuMipmappedArrayCreate(&m, &d, (unsigned)num(argv[i + 3]));
            } else {
                CUarray a = NULL;
                CUDA_ARRAY_DESCRIPTOR d = {num(argv[i + 1]), num(argv[i + 2]), CU_AD_FORMAT_FLOAT, 1};
                rc = api.cuArrayCreate_v2(&a, &d);
            }
            if (rc != CUDA_SUCCESS)
                break;
            count++;
        }
        printf("%s rc=%d count=%ld\n", cmd, rc, count);
        return mip ? 4 : 3;
    }
    if (!strcmp(cmd, "mipmap")) {
        NEED(3);
        CUmipmappedArray m = NULL;
        CUDA_ARRAY3D_DESCRIPTOR d = {num(argv[i + 1]), num(argv[i + 2]), 0, CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
        rc = api.cuMipmappedArrayCreate(&m, &d, (unsigned)num(argv[i + 3]));
        printf("mipmap rc=%d id=%d\n", rc, rc == CUDA_SUCCESS ? nallocs : -1);
        if (rc == CUDA_SUCCESS)
            record('m', (unsigned long long)(uintptr_t)m);
        return 4;
    }
    if (!strcmp(cmd, "vmm") || !strcmp(cmd, "vmmhost")) {
        int host = !strcmp(cmd, "vmmhost");
        NEED(host ? 1 : 2);
        CUmemAllocationProp prop;
        CUmemGenericAllocationHandle h = 0;
        memset(&prop, 0, sizeof(prop));
        prop.type = 1;
        prop.location.type = host ? 2 : CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = host ? 0 : (int)num(argv[i + 1]);
        rc = api.cuMemCreate(&h, num(argv[i + (host ? 1 : 2)]), &prop, 0);
        printf("%s rc=%d id=%d\n", cmd, rc, rc == CUDA_SUCCESS ? nallocs : -1);
        if (rc == CUDA_SUCCESS)
            record('v', h);
        return host ? 2 : 3;
    }
    if (!strcmp(cmd, "free")) {
        NEED(1);
        int id = (int)num(argv[i + 1]);
        struct alloc *a = &allocs[id];
        switch (a->kind) {
        case 'd': rc = api.cuMemFree_v2(a->value); break;
        case '1': rc = api.cuMemFree((CUdeviceptr_v1)a->value); break;
        case 's': rc = api.cuMemFreeAsync(a->value, NULL); break;
        case 'a': rc = api.cuArrayDestroy((CUarray)(uintptr_t)a->value); break;
        case 'm': rc = api.cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)a->value); break;
        case 'v': rc = api.cuMemRelease(a->value); break;
        }
        printf("free rc=%d\n", rc);
        return 2;
    }
    if (!strcmp(cmd, "info")) {
        size_t f = 0, t = 0;
        rc = api.cuMemGetInfo_v2(&f, &t);
        printf("info rc=%d free=%zu total=%zu\n", rc, f, t);
        return 1;
    }
    if (!strcmp(cmd, "info1")) {
        unsigned int f = 0, t = 0;
        rc = api.cuMemGetInfo(&f, &t);
        printf("info1 rc=%d free=%u total=%u\n", rc, f, t);
        return 1;
    }
    if (!strcmp(cmd, "infonull")) {
        rc = api.cuMemGetInfo_v2(NULL, NULL);
        printf("infonull rc=%d\n", rc);
        return 1;
    }
    if (!strcmp(cmd, "total")) {
        NEED(1);
        size_t t = 0;
        rc = api.cuDeviceTotalMem_v2(&t, (int)num(argv[i + 1]));
        printf("total rc=%d total=%zu\n", rc, t);
        return 2;
    }
    if (!strcmp(cmd, "launch")) {
        NEED(1);
        unsigned long long n = num(argv[i + 1]);
        rc = CUDA_SUCCESS;
        for (unsigned long long k = 0; k < n && rc == CUDA_SUCCESS; k++)
            rc = api.cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        printf("launch rc=%d\n", rc);
        return 2;
    }
    if (!strcmp(cmd, "resolve")) {
        /* Which library and symbol cuGetProcAddress_v2 hands out for (name, version, flags). */
        NEED(3);
        void *fn = NULL;
        Dl_info info;
        CUdriverProcAddressQueryResult st = -1;
        void *h = dlopen("libcuda.so.1", RTLD_NOW);
        CUresult (*gpa2)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
            dlsym(h, "cuGetProcAddress_v2");
        rc = gpa2(argv[i + 1], &fn, (int)num(argv[i + 2]), num(argv[i + 3]), &st);
        if (rc == CUDA_SUCCESS && fn && dladdr(fn, &info) && info.dli_sname) {
            const char *lib = strrchr(info.dli_fname, '/');
            printf("resolve rc=%d lib=%s sym=%s\n", rc, lib ? lib + 1 : info.dli_fname, info.dli_sname);
        } else {
            printf("resolve rc=%d status=%d\n", rc, st);
        }
        return 4;
    }
    if (!strcmp(cmd, "mtfirst")) {
        /* Like mtfill, but no intercepted call runs on the main thread first: the threads' first
         * allocations are the process's next intercepted calls after "ctx", all at once. */
        NEED(2);
        int threads = (int)num(argv[i + 1]);
        struct filler f[64];
        pthread_t t[64];
        int total = 0, freed_ok = 1;
        if (threads > 64)
            threads = 64;
        start_together = 1;
        pthread_barrier_init(&start_barrier, NULL, (unsigned)threads);
        pthread_barrier_init(&fill_barrier, NULL, (unsigned)threads);
        for (int k = 0; k < threads; k++) {
            f[k] = (struct filler){last_ctx, num(argv[i + 2]), 0, 0};
            pthread_create(&t[k], NULL, fill_thread, &f[k]);
        }
        for (int k = 0; k < threads; k++) {
            pthread_join(t[k], NULL);
            total += f[k].count;
            freed_ok &= f[k].freed_ok;
        }
        start_together = 0;
        printf("mtfirst rc=%d count=%d\n", freed_ok ? 0 : 1, total);
        return 3;
    }
    if (!strcmp(cmd, "mtfill")) {
        NEED(2);
        int threads = (int)num(argv[i + 1]);
        struct filler f[64];
        pthread_t t[64];
        CUcontext ctx = NULL;
        CUresult (*get_current)(CUcontext *) = dlsym(RTLD_DEFAULT, "cuCtxGetCurrent");
        int total = 0, freed_ok = 1;
        get_current(&ctx);
        if (threads > 64)
            threads = 64;
        pthread_barrier_init(&fill_barrier, NULL, (unsigned)threads);
        for (int k = 0; k < threads; k++) {
            f[k] = (struct filler){ctx, num(argv[i + 2]), 0, 0};
            pthread_create(&t[k], NULL, fill_thread, &f[k]);
        }
        for (int k = 0; k < threads; k++) {
            pthread_join(t[k], NULL);
            total += f[k].count;
            freed_ok &= f[k].freed_ok;
        }
        printf("mtfill rc=%d count=%d\n", freed_ok ? 0 : 1, total);
        return 3;
    }
    if (!strcmp(cmd, "freeall")) {
        rc = CUDA_SUCCESS;
        for (int k = 0; k < nallocs && rc == CUDA_SUCCESS; k++)
            if (allocs[k].kind == 'd')
                rc = api.cuMemFree_v2(allocs[k].value);
        printf("freeall rc=%d\n", rc);
        return 1;
    }
    if (!strcmp(cmd, "dlsymname")) {
        /* Where dlsym(libcuda handle, NAME) leads. */
        NEED(1);
        Dl_info info;
        void *fn = dlsym(dlopen("libcuda.so.1", RTLD_NOW), argv[i + 1]);
        if (fn && dladdr(fn, &info) && info.dli_sname) {
            const char *lib = strrchr(info.dli_fname, '/');
            printf("dlsymname rc=0 lib=%s sym=%s\n", lib ? lib + 1 : info.dli_fname, info.dli_sname);
        } else {
            printf("dlsymname rc=500\n");
        }
        return 2;
    }
    if (!strcmp(cmd, "launchall")) {
        /* Every launch variant, as exported (dlsym RTLD_DEFAULT), with valid arguments (a 1-thread
         * kernel, a graph of 1 us from the fake driver's test hook): their return codes. */
        CUresult (*make_graph)(CUgraphExec *, long long) = dlsym(RTLD_DEFAULT, "fakeCudaGraphExecCreate");
        CUgraphExec graph = NULL;
        CUlaunchConfig config;
        memset(&config, 0, sizeof(config));
        config.gridDimX = config.gridDimY = config.gridDimZ = 1;
        config.blockDimX = config.blockDimY = config.blockDimZ = 1;
        if (make_graph)
            make_graph(&graph, 1000);
        printf("launchall rc=0");
        for (unsigned k = 0; k < sizeof(launch_names) / sizeof(launch_names[0]); k++) {
            void *fn = dlsym(RTLD_DEFAULT, launch_names[k]);
            CUresult r;
            if (strstr(launch_names[k], "Graph"))
                r = ((CUresult(*)(void *, void *))fn)(graph, NULL);
            else if (strstr(launch_names[k], "Ex"))
                r = ((CUresult(*)(void *, void *, void *, void *))fn)(&config, NULL, NULL, NULL);
            else if (strstr(launch_names[k], "Cooperative"))
                r = ((CUresult(*)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  void *, void *))fn)(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL);
            else
                r = ((CUresult(*)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  void *, void *, void *))fn)(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
            printf(" %s=%d", launch_names[k], r);
        }
        printf("\n");
        return 1;
    }
    if (!strcmp(cmd, "busy")) {
        NEED(2);
        long long (*busy_ns)(int) = (long long (*)(int))dlsym(RTLD_DEFAULT, "fakeCudaBusyNs");
        long long ms = (long long)num(argv[i + 1]), us = (long long)num(argv[i + 2]);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long start = ts.tv_sec * 1000000000LL + ts.tv_nsec, mid_t = 0, mid_b = 0, now = start;
        rc = CUDA_SUCCESS;
        while (rc == CUDA_SUCCESS && now - start < ms * 1000000LL) {
            rc = api.cuLaunchKernel(NULL, (unsigned)us, 1, 1, 1000, 1, 1, 0, NULL, NULL, NULL);
            clock_gettime(CLOCK_MONOTONIC, &ts);
            now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
            if (!mid_t && now - start >= ms * 500000LL) {
                mid_t = now;
                mid_b = busy_ns(0);
            }
        }
        double share = mid_t && now > mid_t ? 100.0 * (double)(busy_ns(0) - mid_b) / (double)(now - mid_t) : -1;
        printf("busy rc=%d share=%.1f\n", rc, share);
        return 3;
    }
    if (!strcmp(cmd, "sleep")) {
        NEED(1);
        usleep((useconds_t)num(argv[i + 1]) * 1000);
        printf("sleep rc=0\n");
        return 2;
    }
    if (!strcmp(cmd, "hold")) {
        printf("hold rc=0\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (!strcmp(cmd, "fork")) {
        /* The child runs the remaining commands; the parent waits for it and stops. */
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0)
            exit(run(argc - i - 1, argv + i + 1, self, mode));
        int status = 0;
        waitpid(pid, &status, 0);
        printf("fork rc=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return argc - i;
    }
    if (!strcmp(cmd, "exec")) {
        char **args = calloc((size_t)(argc - i + 2), sizeof(char *));
        args[0] = (char *)self;
        args[1] = (char *)mode;
        for (int k = i + 1; k < argc; k++)
            args[k - i + 1] = argv[k];
        fflush(stdout);
        execv(self, args);
        perror("execv");
        exit(3);
    }
    fprintf(stderr, "unknown command %s\n", cmd);
    exit(2);
}

static int run(int argc, char **argv, const char *self, const char *mode)
{
    for (int i = 0; i < argc;) {
        i += run_one(argv, i, argc, self, mode);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: cudaprog MODE COMMANDS...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    bind_api(argv[1]);
    return run(argc - 2, argv + 2, "/proc/self/exe", argv[1]);
}
