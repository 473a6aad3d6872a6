/*
 * A GPU "busy loop" for the SM-core cap tests: threads launch kernels (or graphs) of a fixed device
 * time back to back, as a training or inference loop would, and the main thread prints the
 * ground truth every 100 ms: the device time of this process's kernels that has completed, as the
 * fake driver simulates it (fakeCudaBusyNs), on the shared CLOCK_MONOTONIC timeline.
 *
 *   launchloop [--seconds S] [--linger S] [--delay S] [--kernel-us U] [--kind K] [--via V]
 *              [--threads T] [--streams N] [--dev D]
 *     --delay   wait this long (idle, CUDA initialised) before launching for --seconds
 *     --kind    kernel | ptsz | ex | ex_ptsz | coop | coop_ptsz | graph | graph_ptsz
 *     --via     link (exported symbols) | dlsym (dlsym on the libcuda handle, exact names) |
 *               procaddr (cuGetProcAddress_v2 at CUDA 12.8, per-thread flag for the _ptsz kinds)
 *   Lines: "tick t=<ns> busy=<ns> launches=<n>" and at the end "done launches=<n> errors=<n> rc=<first error>".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vgpu_cuda.h"

CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuStreamCreate(CUstream *, unsigned int);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
long long fakeCudaBusyNs(int dev);
CUresult fakeCudaGraphExecCreate(CUgraphExec *, long long ns);

typedef CUresult (*launch_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              CUstream, void **, void **);
typedef CUresult (*coop_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                            CUstream, void **);
typedef CUresult (*ex_fn)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*graph_fn)(CUgraphExec, CUstream);

static double g_seconds = 5, g_linger = 0, g_delay = 0;
static long long g_kernel_us = 1000;
static const char *g_kind = "kernel", *g_via = "link";
static int g_threads = 1, g_streams = 1, g_dev = 0;
static void *g_fn;
static CUcontext g_ctx;
static CUstream g_stream_list[64];
static CUgraphExec g_graph;
static volatile int g_stop;
static unsigned long long g_launches, g_errors;
static int g_first_error;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *resolve(const char *exported, const char *base, int per_thread)
{
    if (!strcmp(g_via, "link") || !strcmp(g_via, "dlsym")) {
        void *h = !strcmp(g_via, "link") ? RTLD_DEFAULT : dlopen("libcuda.so.1", RTLD_NOW);
        return dlsym(h, exported);
    }
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    cuuint64_t flags = per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0;
    return cuGetProcAddress_v2(base, &fn, 12080, flags, &st) == CUDA_SUCCESS ? fn : NULL;
}

static CUresult launch_once(CUstream s)
{
    /* 1 ns per thread in the fake: kernel-us x 1000 threads of 1 ns = kernel-us microseconds. */
    unsigned grid = (unsigned)g_kernel_us, block = 1000;
    if (!strncmp(g_kind, "graph", 5))
        return ((graph_fn)g_fn)(g_graph, s);
    if (!strncmp(g_kind, "ex", 2)) {
        CUlaunchConfig c;
        memset(&c, 0, sizeof(c));
        c.gridDimX = grid, c.gridDimY = 1, c.gridDimZ = 1;
        c.blockDimX = block, c.blockDimY = 1, c.blockDimZ = 1;
        c.hStream = s;
        return ((ex_fn)g_fn)(&c, NULL, NULL, NULL);
    }
    if (!strncmp(g_kind, "coop", 4))
        return ((coop_fn)g_fn)(NULL, grid, 1, 1, block, 1, 1, 0, s, NULL);
    return ((launch_fn)g_fn)(NULL, grid, 1, 1, block, 1, 1, 0, s, NULL, NULL);
}

static void *worker(void *arg)
{
    long index = (long)arg;
    CUstream s = g_stream_list[index % g_streams];
    cuCtxSetCurrent(g_ctx);
    while (!g_stop) {
        CUresult rc = launch_once(s);
        if (rc != CUDA_SUCCESS) {
            if (!__atomic_fetch_add(&g_errors, 1, __ATOMIC_RELAXED))
                g_first_error = rc;
            break;
        }
        __atomic_add_fetch(&g_launches, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--seconds")) g_seconds = atof(v);
        else if (!strcmp(k, "--linger")) g_linger = atof(v);
        else if (!strcmp(k, "--delay")) g_delay = atof(v);
        else if (!strcmp(k, "--kernel-us")) g_kernel_us = atoll(v);
        else if (!strcmp(k, "--kind")) g_kind = v;
        else if (!strcmp(k, "--via")) g_via = v;
        else if (!strcmp(k, "--threads")) g_threads = atoi(v);
        else if (!strcmp(k, "--streams")) g_streams = atoi(v);
        else if (!strcmp(k, "--dev")) g_dev = atoi(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (g_threads < 1 || g_threads > 64 || g_streams < 1 || g_streams > 64) {
        fprintf(stderr, "1..64 threads and streams\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUresult rc = cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&g_ctx, g_dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(g_ctx);
    if (rc != CUDA_SUCCESS) {
        printf("done launches=0 errors=1 rc=%d\n", rc);
        return 1;
    }
    int per_thread = strstr(g_kind, "ptsz") != NULL;
    static const struct {
        const char *kind, *exported, *base;
    } kinds[] = {
        {"kernel", "cuLaunchKernel", "cuLaunchKernel"},
        {"ptsz", "cuLaunchKernel_ptsz", "cuLaunchKernel"},
        {"ex", "cuLaunchKernelEx", "cuLaunchKernelEx"},
        {"ex_ptsz", "cuLaunchKernelEx_ptsz", "cuLaunchKernelEx"},
        {"coop", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel"},
        {"coop_ptsz", "cuLaunchCooperativeKernel_ptsz", "cuLaunchCooperativeKernel"},
        {"graph", "cuGraphLaunch", "cuGraphLaunch"},
        {"graph_ptsz", "cuGraphLaunch_ptsz", "cuGraphLaunch"},
    };
    for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if (!strcmp(kinds[k].kind, g_kind))
            g_fn = resolve(kinds[k].exported, kinds[k].base, per_thread);
    if (!g_fn) {
        fprintf(stderr, "cannot resolve kind %s via %s\n", g_kind, g_via);
        return 2;
    }
    if (!strncmp(g_kind, "graph", 5) && fakeCudaGraphExecCreate(&g_graph, g_kernel_us * 1000) != CUDA_SUCCESS)
        return 2;
    /* One stream: the default one (NULL), as most simple programs use; more: created streams. */
    for (int k = 0; k < g_streams && g_streams > 1; k++)
        if (cuStreamCreate(&g_stream_list[k], 0) != CUDA_SUCCESS)
            return 2;
    pthread_t threads[64];
    if (g_delay > 0)
        usleep((useconds_t)(g_delay * 1e6));
    for (long t = 0; t < g_threads; t++)
        pthread_create(&threads[t], NULL, worker, (void *)t);
    long long start = now_ns(), end = start + (long long)(g_seconds * 1e9);
    long long stop_all = end + (long long)(g_linger * 1e9);
    for (;;) {
        long long t = now_ns();
        printf("tick t=%lld busy=%lld launches=%llu\n", t, fakeCudaBusyNs(g_dev),
               __atomic_load_n(&g_launches, __ATOMIC_RELAXED));
        if (t >= end && !g_stop) {
            g_stop = 1;
            for (int k = 0; k < g_threads; k++)
                pthread_join(threads[k], NULL);
        }
        if (t >= stop_all)
            break;
        usleep(100000);
    }
    printf("done launches=%llu errors=%llu rc=%d\n", g_launches, g_errors, g_first_error);
    return 0;
}
