/*
 * Timing loop for bench/shim_overhead.py: the same driver-API calls with or without libvgpu.so
 * preloaded (the script decides). Prints, per round, nanoseconds per cuMemAlloc_v2+cuMemFree_v2
 * pair, per cuLaunchKernel, and per step of a fixed CPU-only loop that calls nothing (the
 * machine's speed at that moment, to tell a slow VM phase from a slow shim):
 * "round <alloc_free_ns> <launch_ns> <calibration_ns>" (launch_ns is 0 when the third argument is
 * "alloc-only"). With "startup" as the third argument it times only this
 * process's first CUDA calls, cuInit + cuDevicePrimaryCtxRetain, then its first allocation and
 * free (4 KiB): "startup <init_ns> <first_alloc_ns>". With "refuse:<bytes>" it times cuMemAlloc_v2
 * calls of that size that the claim's wall refuses (the enforcement latency of
 * bench/gpu_scorecard.py): "refuse <ns per call> <CUresult of the last>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vgpu_cuda.h"

CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* ns per step of a dependent integer chain: no memory traffic, no call, nothing the shim touches. */
static double calibration_ns(void)
{
    volatile unsigned long long sink;
    unsigned long long x = 88172645463325252ULL;
    const long steps = 2000000;
    double t0 = now_ns();
    for (long i = 0; i < steps; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    sink = x;
    (void)sink;
    return (now_ns() - t0) / steps;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    int launches = !(argc > 3 && strcmp(argv[3], "alloc-only") == 0);
    CUcontext ctx;
    if (argc > 3 && strcmp(argv[3], "startup") == 0) {
        /* Any real program has used malloc before its first CUDA call: do not time libc's first
         * heap set-up as the shim's (dlopen inside the shim's init would otherwise pay it). */
        free(malloc(4096));
        double t0 = now_ns();
        if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0)) {
            fprintf(stderr, "CUDA init failed\n");
            return 1;
        }
        double t1 = now_ns();
        /* The process's first allocation: where a claim's first process measures its context. */
        CUdeviceptr p;
        if (cuCtxSetCurrent(ctx))
            return 1;
        double t2 = now_ns();
        if (cuMemAlloc_v2(&p, 4096) || cuMemFree_v2(p)) {
            fprintf(stderr, "first allocation failed\n");
            return 1;
        }
        printf("startup %.0f %.0f\n", t1 - t0, now_ns() - t2);
        return 0;
    }
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx)) {
        fprintf(stderr, "CUDA init failed\n");
        return 1;
    }
    if (argc > 3 && strncmp(argv[3], "refuse:", 7) == 0) {
        size_t bytes = strtoull(argv[3] + 7, NULL, 10);
        CUresult last = CUDA_SUCCESS;
        for (int r = 0; r < rounds; r++) {
            double t0 = now_ns();
            for (long i = 0; i < iters; i++) {
                CUdeviceptr p = 0;
                last = cuMemAlloc_v2(&p, bytes);
                if (last == CUDA_SUCCESS)
                    cuMemFree_v2(p); /* not refused: the caller sees rc 0 and reports it */
            }
            printf("refuse %.2f %d\n", (now_ns() - t0) / iters, (int)last);
        }
        return 0;
    }
    for (int r = 0; r < rounds; r++) {
        double calib = calibration_ns();
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            CUdeviceptr p;
            if (cuMemAlloc_v2(&p, 4096) != CUDA_SUCCESS || cuMemFree_v2(p) != CUDA_SUCCESS) {
                fprintf(stderr, "alloc/free failed\n");
                return 1;
            }
        }
        double t1 = now_ns();
        for (long i = 0; launches && i < iters; i++)
            if (cuLaunchKernel(NULL, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL) != CUDA_SUCCESS) {
                fprintf(stderr, "launch failed\n");
                return 1;
            }
        double t2 = now_ns();
        printf("round %.2f %.2f %.3f\n", (t1 - t0) / iters, launches ? (t2 - t1) / iters : 0.0, calib);
    }
    return 0;
}
