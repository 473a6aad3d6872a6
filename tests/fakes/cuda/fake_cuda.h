/*
 * Fake libcuda.so.1 for the shim tests: a simulated device set with per-process usage and a
 * device-wide peak kept in a shared state file, so several processes see one device like on a real
 * GPU. The ABI types come from shim/include/vgpu_cuda.h (the subset of cuda.h the shim wraps).
 *
 * Environment (read once, at load):
 *   FAKE_CUDA_DEVICES   "GPU-<uuid>=<bytes>[,GPU-<uuid>=<bytes>...]"; default one 16 GiB device
 *                       GPU-00000000-0000-0000-0000-000000000000
 *   FAKE_CUDA_STATE     path of the shared state file (created if missing); unset = this process only
 *   FAKE_CUDA_CTX_BYTES device memory a context occupies (default 0)
 *   FAKE_CUDA_FAIL      comma-separated entry points that fail (fault injection): "name" answers
 *                       CUDA_ERROR_UNKNOWN, "name:801" that code (e.g. cuStreamIsCapturing:801)
 *   FAKE_CUDA_NS_PER_THREAD  device time a launched kernel takes per thread (default 1 ns): a kernel
 *                       occupies its stream for gridX*gridY*gridZ * blockX*blockY*blockZ * this
 *   FAKE_CUDA_QUEUE_NS  how much work a stream may have queued before a launch blocks (default 20 ms)
 *   FAKE_CUDA_LEVEL_ALIGN  the boundary every mipmap level starts on (default 65536 bytes)
 *
 * State file layout (the peak is read by tests/shim/harness.py, the occupancy by the fake NVML):
 * struct fake_state below.
 */
#ifndef FAKE_CUDA_H
#define FAKE_CUDA_H

#include <stdint.h>

#include "vgpu_cuda.h"

#define FAKE_EXPORT __attribute__((visibility("default")))
#define FAKE_MAX_DEVICES 8
#define FAKE_MAX_PROCS 1024
#define FAKE_STATE_MAGIC 0x4154534144554346ULL /* "FCUDASTA" */

struct fake_proc {
    int32_t pid;
    int32_t ctx_mask; /* bit d: the process holds a context on device d (NVML lists it there) */
    int64_t used[FAKE_MAX_DEVICES];
};

struct fake_state {
    uint64_t magic;
    int64_t used[FAKE_MAX_DEVICES]; /* device-wide bytes in use */
    int64_t peak[FAKE_MAX_DEVICES]; /* highest device-wide use ever */
    int32_t proc_high_water;        /* entries [0, proc_high_water) have ever been used */
    int32_t pad;
    struct fake_proc procs[FAKE_MAX_PROCS];
    /* Occupancy (appended, so the offsets above stay): written by launches, read by the fake NVML. */
    char uuid[FAKE_MAX_DEVICES][96];   /* device UUIDs as in FAKE_CUDA_DEVICES (NVML matches by UUID) */
    int64_t busy_ns[FAKE_MAX_DEVICES]; /* device time of every kernel ever submitted, all processes */
};

struct fake_device {
    char uuid_text[96];
    CUuuid uuid;
    int64_t capacity;
};

/* state.c — all of it set up once by the library constructor, read-only afterwards except the
 * shared counters (atomics) and g_fake_me (rewired by the fork child handler). */
extern struct fake_device g_fake_devices[FAKE_MAX_DEVICES];
extern int g_fake_device_count;
extern int64_t g_fake_ctx_bytes;
extern struct fake_state *g_fake_state;
extern struct fake_proc *g_fake_me;
extern int g_fake_initialized; /* cuInit called */

/* 0, or the CUresult the entry point named function must answer (FAKE_CUDA_FAIL). */
int fake_should_fail(const char *function);
/* Charge bytes to dev for this process; CUDA_ERROR_OUT_OF_MEMORY when the device is full. */
CUresult fake_charge(int dev, int64_t bytes);
void fake_uncharge(int dev, int64_t bytes);
int fake_valid_device(CUdevice dev);

/* memory.c: allocation bookkeeping (address -> size, device). */
uint64_t fake_new_address(int64_t bytes, int low32);
void fake_remember(uint64_t addr, int64_t bytes, int dev);
int fake_forget(uint64_t addr, int64_t *bytes, int *dev);

/* context.c */
int fake_current_device(void); /* -1 without a current context */
void fake_context_count(int dev, int delta); /* keeps g_fake_me->ctx_mask in step */
void fake_contexts_forget(void);            /* fork child: the parent's contexts are not its own */

/* launch.c */
int64_t fake_now_ns(void); /* CLOCK_MONOTONIC: the same clock in every process */

#endif
