/* Internal declarations shared by the shim's source files (never installed, never exported). */
#ifndef VGPU_INTERNAL_H
#define VGPU_INTERNAL_H

#include <stdint.h>

#include "vgpu_cuda.h"
#include "vgpu_region.h"

#define VGPU_EXPORT __attribute__((visibility("default")))
#define VGPU_LIKELY(x) __builtin_expect(!!(x), 1)
#define VGPU_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Claims root inside containers; the kubelet plugin mounts one directory per claim under it. */
#ifndef VGPU_CLAIMS_ROOT_DEFAULT
#define VGPU_CLAIMS_ROOT_DEFAULT "/var/run/vgpu-dra/claims"
#endif

#define VGPU_MAX_CLAIMS 16
#define VGPU_MAX_DEVICES 64 /* CUDA ordinals we keep a cached mapping for */

/* ---- config.c: the claim config format (docs/shim.md, driver/claimconfig.py) ---------------- */

struct vgpu_gpu_limit {
    char uuid[VGPU_UUID_LEN];
    unsigned char uuid_bytes[16]; /* hex digits of the UUID, for matching cuDeviceGetUuid */
    int64_t memory_bytes;
    int cores;
    int policy; /* VGPU_POLICY_* */
};

struct vgpu_claim_config {
    char claim_uid[VGPU_CLAIM_LEN];
    int gpu_count;
    struct vgpu_gpu_limit gpus[VGPU_MAX_GPUS];
};

/* Parses one config text. 0 on success; else -1 with a message naming the line in err. */
int vgpu_config_parse(const char *text, struct vgpu_claim_config *out, char *err, unsigned err_len);

enum vgpu_claims_status { VGPU_CLAIMS_NONE, VGPU_CLAIMS_OK, VGPU_CLAIMS_INVALID };

/* Reads every <root>/<claim>/config, sorted by claim uid (then directory). NONE when the root is
 * absent or has no claim directory. One GPU may be in several claims (docs/shim.md). */
struct vgpu_claim_set {
    int count;
    struct vgpu_claim_config claims[VGPU_MAX_CLAIMS];
    char dirs[VGPU_MAX_CLAIMS][600];
};
enum vgpu_claims_status vgpu_claims_load(const char *root, struct vgpu_claim_set *out, char *err,
                                         unsigned err_len);

/* ---- region.c: the shared accounting region of one claim --------------------------------------- */

struct vgpu_attached_region {
    struct vgpu_region *map;
    int fd;    /* holds our slot lock; O_CLOEXEC */
    int slot;  /* our process slot, -1 if none */
};

/* Opens (creating and initialising under the init lock if needed), maps and fills the GPU table
 * from cfg, then claims a process slot. 0 on success; else -1 with a reason in err. */
int vgpu_region_attach(const char *path, const struct vgpu_claim_config *cfg,
                       struct vgpu_attached_region *out, char *err, unsigned err_len);
/* After fork in the child: a fresh open file description and a fresh slot. */
int vgpu_region_reattach_child(const char *path, struct vgpu_attached_region *r);
/* Normal exit: refund everything this process still holds and free its slot. */
void vgpu_region_detach(struct vgpu_attached_region *r);
/* Refunds the slots of dead processes. Returns the number of slots reclaimed. */
int vgpu_region_reclaim_dead(struct vgpu_attached_region *r);

/* ---- admission.c ------------------------------------------------------------------------------ */

/* Where a CUDA device's bytes are charged: one GPU of one claim. */
struct vgpu_account {
    struct vgpu_gpu *gpu;             /* in the shared region */
    int64_t *proc_used;               /* our slot's counter for this GPU */
    int64_t limit;                    /* from the root-owned config, never from the region */
    struct vgpu_attached_region *region;
    int cores;                        /* SM-core cap in percent from the config, 0 = none */
    int policy;                       /* VGPU_POLICY_* from the config */
    /* The same GPU in the next claim (claim-uid order), NULL in the common case of one claim per
     * GPU. Only the first account of a GPU is ever returned by devices.c; it heads the chain. */
    struct vgpu_account *next;
    struct vgpu_account *head; /* the first account of this GPU's chain (itself in the common case) */
    /* The last other process whose pending context measurement an allocation here waited for in
     * vain (admission.c: slot + 1, its generation above bit 16), so that one idle process costs
     * this process one wait, not one per refused allocation. Any thread; atomics. */
    uint64_t settle_gave_up;
};

/* Reserve bytes under the wall (CAS). 1 = admitted, 0 = refused (counted as rejected). What does
 * not fit while another process of the claim holds a provisional context bound waits for its
 * measurement (at most VGPU_CONTEXT_SETTLE_WAIT_NS); so does vgpu_admit_chain_slow. */
int vgpu_admit(struct vgpu_account *acct, int64_t bytes);
/* vgpu_admit without counting a refusal, without the scan for dead processes and without waiting. */
int vgpu_admit_quiet(struct vgpu_account *acct, int64_t bytes);
/* Reserve bytes in one account of head's chain: the first (claim-uid order) where they fit whole;
 * an allocation is never split across claims. The account charged, or NULL when none has room
 * (counted as one rejection, on head). Free/refund with vgpu_refund on the account returned. */
struct vgpu_account *vgpu_admit_chain_slow(struct vgpu_account *head, int64_t bytes);
/* vgpu_admit_chain_slow for the shim's own bytes (a context probe): a refusal is not counted. */
struct vgpu_account *vgpu_admit_chain_uncounted(struct vgpu_account *head, int64_t bytes);
static inline struct vgpu_account *vgpu_admit_chain(struct vgpu_account *head, int64_t bytes)
{
    /* The common case, one claim per GPU, costs one predictable branch over vgpu_admit. */
    if (VGPU_LIKELY(!head->next))
        return vgpu_admit(head, bytes) ? head : NULL;
    return vgpu_admit_chain_slow(head, bytes);
}
/* Limits and used bytes of head's whole chain (the process's view of the GPU). */
void vgpu_chain_totals(const struct vgpu_account *head, int64_t *limit, int64_t *used);
/* Give back bytes admitted earlier (a free, or the roll-back of a failed driver call). */
void vgpu_refund(struct vgpu_account *acct, int64_t bytes);
/* *counter -= bytes, atomically, never below zero. */
void vgpu_sub_clamped(int64_t *counter, int64_t bytes);

/* ---- devices.c: CUDA ordinal -> account --------------------------------------------------- */

enum vgpu_mode { VGPU_MODE_PASS = 0, VGPU_MODE_ENFORCE = 1, VGPU_MODE_FAIL_CLOSED = 2 };

/* The account of a device ordinal; NULL with the error to return when the device is in no claim
 * (CUDA_ERROR_OUT_OF_MEMORY: its allocations are refused) or cannot be identified. */
struct vgpu_account *vgpu_account_for_device(CUdevice dev, CUresult *err);
/* The account of the current context's device (stored in *dev when dev is not NULL), or NULL. */
struct vgpu_account *vgpu_account_current(CUdevice *dev, CUresult *err);

/* Entry gate of every hook: init once, then ENFORCE goes on; PASS calls the real function;
 * FAIL_CLOSED refuses. */
#define VGPU_CALL_REAL(name, args) (vgpu_real.name ? vgpu_real.name args : CUDA_ERROR_NOT_INITIALIZED)
#define VGPU_GATE(name, args)                                                                         \
    do {                                                                                              \
        vgpu_ensure_init();                                                                           \
        if (VGPU_UNLIKELY(vgpu_mode != VGPU_MODE_ENFORCE))                                           \
            return vgpu_mode == VGPU_MODE_FAIL_CLOSED ? CUDA_ERROR_NOT_PERMITTED                      \
                                                      : VGPU_CALL_REAL(name, args);                   \
    } while (0)

/* ---- loader.c: real driver, mode, init ------------------------------------------------------ */

/* The real entry points, resolved by exact name from libcuda.so.1. */
#define VGPU_CUDA_HOOKS(X)                                                                            \
    X(cuInit, (unsigned int flags), (flags))                                                          \
    X(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags),          \
      (symbol, pfn, cudaVersion, flags))                                                              \
    X(cuGetProcAddress_v2,                                                                            \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,                            \
       CUdriverProcAddressQueryResult *symbolStatus),                                                 \
      (symbol, pfn, cudaVersion, flags, symbolStatus))                                                \
    X(cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev), (bytes, dev))                            \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev), (bytes, dev))                               \
    X(cuMemGetInfo, (unsigned int *free_bytes, unsigned int *total), (free_bytes, total))             \
    X(cuMemGetInfo_v2, (size_t *free_bytes, size_t *total), (free_bytes, total))                      \
    X(cuCtxCreate, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev))           \
    X(cuCtxCreate_v2, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev))        \
    X(cuCtxCreate_v3,                                                                                 \
      (CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags, CUdevice dev),        \
      (pctx, params, n, flags, dev))                                                                  \
    X(cuCtxCreate_v4, (CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev), \
      (pctx, params, flags, dev))                                                                     \
    X(cuDevicePrimaryCtxRetain, (CUcontext *pctx, CUdevice dev), (pctx, dev))                         \
    X(cuMemAlloc, (CUdeviceptr_v1 *dptr, unsigned int bytesize), (dptr, bytesize))                    \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize), (dptr, bytesize))                          \
    X(cuMemFree, (CUdeviceptr_v1 dptr), (dptr))                                                       \
    X(cuMemFree_v2, (CUdeviceptr dptr), (dptr))                                                       \
    X(cuMemAllocPitch,                                                                                \
      (CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int w, unsigned int h, unsigned int elem), \
      (dptr, pitch, w, h, elem))                                                                      \
    X(cuMemAllocPitch_v2, (CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem),  \
      (dptr, pitch, w, h, elem))                                                                      \
    X(cuMemAllocManaged, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags),                    \
      (dptr, bytesize, flags))                                                                        \
    X(cuArrayCreate_v2, (CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *desc), (arr, desc))               \
    X(cuArray3DCreate_v2, (CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc), (arr, desc))           \
    X(cuArrayDestroy, (CUarray arr), (arr))                                                           \
    X(cuMipmappedArrayCreate,                                                                         \
      (CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned int levels),                \
      (h, desc, levels))                                                                              \
    X(cuMipmappedArrayDestroy, (CUmipmappedArray h), (h))                                             \
    X(cuMemCreate,                                                                                    \
      (CUmemGenericAllocationHandle * h, size_t size, const CUmemAllocationProp *prop,               \
       unsigned long long flags),                                                                     \
      (h, size, prop, flags))                                                                         \
    X(cuMemRelease, (CUmemGenericAllocationHandle h), (h))                                            \
    X(cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytesize, CUstream s), (dptr, bytesize, s))         \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr *dptr, size_t bytesize, CUstream s), (dptr, bytesize, s))    \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s),   \
      (dptr, bytesize, pool, s))                                                                      \
    X(cuMemAllocFromPoolAsync_ptsz,                                                                   \
      (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s), (dptr, bytesize, pool, s)) \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream s), (dptr, s))                                      \
    X(cuMemPoolCreate, (CUmemoryPool * pool, const CUmemPoolProps *props), (pool, props))             \
    X(cuMemPoolDestroy, (CUmemoryPool pool), (pool))                                                  \
    X(cuDeviceGetDefaultMemPool, (CUmemoryPool * pool, CUdevice dev), (pool, dev))                    \
    X(cuDeviceGetMemPool, (CUmemoryPool * pool, CUdevice dev), (pool, dev))                           \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream s), (dptr, s))                                 \
    X(cuLaunchKernel,                                                                                 \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,              \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,               \
       void **extra),                                                                                 \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra))                                           \
    X(cuLaunchKernel_ptsz,                                                                            \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,              \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,               \
       void **extra),                                                                                 \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra))                                           \
    X(cuLaunchKernelEx, (const CUlaunchConfig *config, CUfunction f, void **params, void **extra),    \
      (config, f, params, extra))                                                                     \
    X(cuLaunchKernelEx_ptsz,                                                                          \
      (const CUlaunchConfig *config, CUfunction f, void **params, void **extra),                      \
      (config, f, params, extra))                                                                     \
    X(cuLaunchCooperativeKernel,                                                                      \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,              \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params),              \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params))                                                  \
    X(cuLaunchCooperativeKernel_ptsz,                                                                 \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,              \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params),              \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params))                                                  \
    X(cuGraphLaunch, (CUgraphExec g, CUstream s), (g, s))                                             \
    X(cuGraphLaunch_ptsz, (CUgraphExec g, CUstream s), (g, s))

/* Real driver functions the shim calls but does not intercept. */
#define VGPU_CUDA_HELPERS(X)                                                                          \
    X(cuCtxGetDevice, (CUdevice * dev), (dev))                                                        \
    X(cuDeviceGetCount, (int *count), (count))                                                        \
    X(cuDeviceGetUuid, (CUuuid * uuid, CUdevice dev), (uuid, dev))                                    \
    X(cuArrayGetMemoryRequirements,                                                                   \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS * req, CUarray arr, CUdevice dev), (req, arr, dev))             \
    X(cuMipmappedArrayGetMemoryRequirements,                                                          \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS * req, CUmipmappedArray arr, CUdevice dev), (req, arr, dev))    \
    X(cuCtxGetCurrent, (CUcontext * pctx), (pctx))                                                    \
    X(cuCtxPushCurrent_v2, (CUcontext ctx), (ctx))                                                    \
    X(cuCtxPopCurrent_v2, (CUcontext * pctx), (pctx))                                                \
    X(cuEventCreate, (CUevent * ev, unsigned int flags), (ev, flags))                                 \
    X(cuEventDestroy_v2, (CUevent ev), (ev))                                                          \
    X(cuEventRecord, (CUevent ev, CUstream s), (ev, s))                                               \
    X(cuEventQuery, (CUevent ev), (ev))                                                               \
    X(cuEventElapsedTime, (float *ms, CUevent start, CUevent end), (ms, start, end))               \
    X(cuCtxSetCurrent, (CUcontext ctx), (ctx))                                                        \
    X(cuStreamIsCapturing, (CUstream s, int *status), (s, status))                                    \
    X(cuThreadExchangeStreamCaptureMode, (int *mode), (mode))

#define VGPU_DECLARE_PFN(name, params, args) typedef CUresult(*vgpu_pfn_##name) params;
VGPU_CUDA_HOOKS(VGPU_DECLARE_PFN)
#undef VGPU_DECLARE_PFN

#define VGPU_REAL_FIELD(name, params, args) vgpu_pfn_##name name;
#define VGPU_HELPER_FIELD(name, params, args) CUresult(*name) params;
struct vgpu_real_cuda {
    VGPU_CUDA_HOOKS(VGPU_REAL_FIELD)
};
struct vgpu_real_helpers {
    VGPU_CUDA_HELPERS(VGPU_HELPER_FIELD)
};
#undef VGPU_REAL_FIELD
#undef VGPU_HELPER_FIELD

/* Owned by loader.c; written once during vgpu_init (under its once-guard), read-only after. */
extern struct vgpu_real_cuda vgpu_real;
extern struct vgpu_real_helpers vgpu_helper;
extern int vgpu_mode;            /* enum vgpu_mode */
extern int vgpu_ready;           /* VGPU_READY_*; read with acquire */
extern void *vgpu_libcuda;       /* dlopen handle of the real driver, NULL if absent */

/* 0: not initialised; DONE: nothing to do before a call; WORK: initialised, and a first context's
 * measurement waits for the next intercepted call (ctx_deferred.c), which takes the slow path. */
#define VGPU_READY_DONE 1
#define VGPU_READY_WORK 2
void vgpu_init_slow(void);
static inline void vgpu_ensure_init(void)
{
    if (VGPU_UNLIKELY(__atomic_load_n(&vgpu_ready, __ATOMIC_ACQUIRE) != VGPU_READY_DONE))
        vgpu_init_slow();
}
/* loader.c: an intercepted call must take the slow path first (1) or need not any more (0). */
void vgpu_slow_path_needed(int needed);

/* Nonzero on the thread that is running vgpu_init (the driver may call back into us). */
int vgpu_in_init(void);

/* Accounts built by loader.c at init (and rewired in a fork child); read-only otherwise. */
extern struct vgpu_account vgpu_accounts[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS];
extern unsigned char vgpu_account_uuid[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS][16];
extern int vgpu_account_count;

/* dlsym's pass-through must reach the real dlsym by a jump, not a call: glibc resolves
 * RTLD_NEXT relative to its caller's return address, which a call would replace with ours.
 * Forced even in an unoptimised build; test_rtld_next_keeps_its_meaning_for_other_interposers
 * breaks (infinite recursion in the other interposer) if it is ever lost. */
#define VGPU_TAIL_CALLS __attribute__((optimize("O2", "optimize-sibling-calls")))

/* The real dlsym, bootstrapped with dlvsym (never through our exported dlsym). */
VGPU_TAIL_CALLS void *vgpu_real_dlsym(void *handle, const char *name);

/* One line on stderr, prefixed "vgpu: "; each distinct call site prints at most once. */
void vgpu_log_once(int *once_flag, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- procaddress.c ---------------------------------------------------------------------------- */

/* Our wrapper for the real function at address real (by identity), or NULL. */
void *vgpu_hook_for_real(void *real);
/* nvml.c: the same for the NVML functions we wrap. */
void *vgpu_nvml_hook_for_real(void *real);

/* ---- ptrmap.c: device pointer / handle -> (bytes, account) ------------------------------------ */

/* VGPU_PTR_POOL maps a memory pool to the account of its device (bytes = the device ordinal). */
enum vgpu_ptr_kind { VGPU_PTR_DEVICE = 1, VGPU_PTR_ARRAY, VGPU_PTR_MIPMAP, VGPU_PTR_VMM, VGPU_PTR_POOL };
/* Stores key -> (bytes, acct). An existing entry for the same key belongs to an allocation the
 * driver no longer has (it reused the address): its bytes are refunded. */
void vgpu_ptrmap_put(int kind, uint64_t key, int64_t bytes, struct vgpu_account *acct);
/* Looks an entry up without removing it; 1 when found. */
int vgpu_ptrmap_get(int kind, uint64_t key, int64_t *bytes, struct vgpu_account **acct);
/* Removes the entry; 1 and the entry's values when found, 0 otherwise. */
int vgpu_ptrmap_take(int kind, uint64_t key, int64_t *bytes, struct vgpu_account **acct);
void vgpu_ptrmap_clear(void); /* fork child: the parent's allocations are not ours */

/* ---- limiter.c / limiter_monitor.c: the SM-core cap (docs/shim.md, "SM-core cap") ---------- */

/* Nonzero while any GPU of this process has a core cap; read relaxed on every launch. Written by
 * loader.c at init (and in a fork child), read-only otherwise. */
extern int vgpu_limiter_active;

/* What a launch is, for the estimate of the device time it will take. */
enum vgpu_launch_kind { VGPU_LAUNCH_KERNEL = 0, VGPU_LAUNCH_GRAPH = 1 };

/* One measured launch: its start/end events (a slot of the limiter's table) and what it was
 * charged before it ran. Lives on the launching thread's stack between before and after. */
struct vgpu_launch_ticket {
    struct vgpu_limiter *lim; /* the lane charged; NULL: not limited (device in no capped claim) */
    int slot;                 /* timing slot, -1 when unmeasured */
    int kind;
    int blind;                /* untimed because a driver call failed (fail-safe accounting) */
    CUresult device_error;    /* the device could not be identified: the strictest cap was applied */
    int64_t estimate_ns;      /* the device time expected of this launch */
    int64_t charged_ns;       /* estimate charged to the virtual clock, 0 when the gate was open */
};

/* Called by every launch hook while vgpu_limiter_active: waits (bounded sleeps) until the claim
 * may use the device, charges the launch's estimated device time and starts its timing. */
void vgpu_limiter_before_launch(struct vgpu_launch_ticket *t, CUstream s, int per_thread_stream, int kind);
/* After the driver call: finishes the timing (or refunds the estimate when the launch failed). */
void vgpu_limiter_after_launch(struct vgpu_launch_ticket *t, CUstream s, int per_thread_stream, CUresult rc);
/* loader.c, at init and in a fork child: the limiter of every account with a cap. */
void vgpu_limiter_setup(int fork_child);

/* Process-local state of one capped (claim, GPU); the shared part lives in the region. */
#define VGPU_TIMING_SLOTS 256
/* One cache line each: a launcher taking slot i never shares a line with the monitor thread
 * freeing slot i + 1. */
struct __attribute__((aligned(64))) vgpu_timing_slot {
    int state;                /* VGPU_SLOT_*; CAS-owned by a launcher, then by the monitor */
    int kind;
    CUevent start, end;       /* created by the first launch using the slot, in its context */
    CUcontext ctx;            /* the context the events belong to */
    int64_t charged_ns;
};
#define VGPU_SLOT_FREE 0
#define VGPU_SLOT_LAUNCHING 1
#define VGPU_SLOT_PENDING 2

/*
 * A lane: one capped claim on one GPU, as this process sees it. A GPU in several capped claims of
 * the process has one lane per claim, chained in claim-uid order; a launch goes through the first
 * lane whose clock allows it and is charged there, so the claims' caps add up while each claim's
 * clock (shared with its other processes) holds that claim to its own cap.
 */
struct vgpu_limiter {
    struct vgpu_gpu *gpu;     /* the claim's GPU entry in the region (shared state) */
    int cap;                  /* 1..99 percent, from the root-owned config */
    int policy;               /* VGPU_POLICY_* */
    struct vgpu_limiter *next_lane; /* the GPU's next capped claim of this process, NULL usually */
    struct vgpu_limiter *head;      /* the GPU's first lane (itself usually): owns the estimates */
    int total_cap;            /* head only: the caps of all lanes added up (at most 100) */
    /* Written by launchers on every launch: a line of their own, apart from what the monitor
     * thread writes (a launch would otherwise miss on its line after each monitor pass). */
    unsigned next_slot __attribute__((aligned(64))); /* where launchers start looking for a free timing slot */
    unsigned launch_seq;      /* launches so far, for timing one in 8 when far under the cap */
    /* Written by the monitor thread, read by launchers. */
    int64_t estimate_ns[2] __attribute__((aligned(64))); /* head only, per vgpu_launch_kind: running mean of measured device time */
    int64_t blind_launches;   /* untimed because of a driver error, since the monitor last looked */
    int64_t blind_charged_ns; /* what those launches were charged */
    int64_t blind_at;         /* monitor only: when it last settled the blind launches */
    int64_t errors_seen;      /* monitor only: limit_errors when its controller last ran */
    void *nvml_device;        /* monitor thread only: NVML handle, NULL until found */
    int nvml_state;           /* monitor thread only: 0 unknown, 1 usable, -1 unavailable */
    struct vgpu_timing_slot slots[VGPU_TIMING_SLOTS];
};

/* Owned by limiter.c: the lane of every account with a cap (indexed like vgpu_accounts; a chain
 * head's entry is the GPU's first lane), set up at init. */
extern struct vgpu_limiter *vgpu_limiters[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS];
int64_t vgpu_mono_ns(void);
/* limiter_monitor.c: starts the monitor thread of this process (once; again in a fork child). */
void vgpu_limiter_monitor_start(void);
/* A fork child has no monitor thread: the next capped launch starts its own. */
void vgpu_limiter_monitor_forget(void);
/* Nonzero when the monitor thread could not be started: no launch can be timed. */
int vgpu_limiter_monitor_failed(void);
/* limiter.c: charge (or refund, negative) device time to a claim's virtual clock. */
void vgpu_limiter_charge(struct vgpu_limiter *lim, int64_t device_ns);
/* Device time charged for a launch that could not be timed when nothing better is known. */
#define VGPU_BLIND_LAUNCH_NS 1000000LL

/* ---- nvml_real.c: the real NVML for the shim's own questions --------------------------------- */

struct vgpu_nvml_memory {
    unsigned long long total, free, used;
};
struct vgpu_nvml_utilization {
    unsigned int gpu, memory;
};
struct vgpu_nvml_process { /* nvmlProcessInfo_t of _v2/_v3 */
    unsigned int pid;
    unsigned long long used_gpu_memory;
    unsigned int gpu_instance_id, compute_instance_id;
};
struct vgpu_nvml_api {
    int (*by_uuid)(const char *uuid, void **device);
    int (*memory)(void *device, struct vgpu_nvml_memory *out);
    int (*utilization)(void *device, struct vgpu_nvml_utilization *out);
    int (*processes)(void *device, unsigned int *count, struct vgpu_nvml_process *out);
};
/* Loaded and initialised at the first call, kept for the process's life; NULL without a usable
 * NVML. Any member but by_uuid may be NULL (an older library). */
const struct vgpu_nvml_api *vgpu_nvml(void);
/* The NVML handle of the GPU with this UUID, or NULL. */
void *vgpu_nvml_device(const char *uuid);

/* ---- hostpid.c: this process's PID as NVML reports it (docs/shim.md, "Process lists") ------- */

struct vgpu_pid_probe {
    struct vgpu_account *head; /* the GPU's accounts */
    int64_t bytes;             /* the allocation the probe watches */
    void *device;              /* NVML handle */
    void *before;              /* NVML's process list before the driver call */
};
/* 0 while still learning, 1 learned, -1 gave up; read relaxed at every allocation. */
extern int vgpu_hostpid_state;
/* Around one allocation of bytes charged to acct: begin (1 = probing, then call end with the
 * driver's answer). Only allocations of at least 2 MiB are watched, and only until learned. */
int vgpu_hostpid_begin(struct vgpu_pid_probe *probe, struct vgpu_account *acct, int64_t bytes);
void vgpu_hostpid_end(struct vgpu_pid_probe *probe, CUresult rc);
void vgpu_hostpid_forget(void); /* fork child: a new process, a new PID */
/* The inode number of this process's PID namespace (readlink /proc/self/ns/pid), 0 if unknown. */
uint64_t vgpu_pid_namespace(void);
/* A host PID learned another way (the one process that appeared across a context creation). */
void vgpu_hostpid_record(unsigned int pid);
/* The claim's first process: the footprint of ctx (current or not) on acct's GPU, measured with
 * NVML around a probe allocation of the shim's own (learning the host PID on the way); -1 when it
 * cannot be told, with an upper bound in *bound when other processes' usage grew alike (else -1).
 * Probe bytes the driver would not free again are added to *stuck. */
int64_t vgpu_hostpid_probe_context(struct vgpu_account *acct, CUcontext ctx, int64_t *stuck, int64_t *bound);
#define VGPU_CONTEXT_PROBE_MAX_BYTES (8LL << 20)
/* NVML's process list of the GPU with this UUID (malloc'd, free() it), NULL when unreadable. */
struct vgpu_nvml_snapshot;
struct vgpu_nvml_snapshot *vgpu_nvml_snapshot(const char *uuid);
/* How many PIDs are listed in after and not in before; the largest NVML usage among them in *used
 * (0 when none) and one of their PIDs in *pid (the one, when there is one). */
int vgpu_nvml_newcomers(const struct vgpu_nvml_snapshot *before, const struct vgpu_nvml_snapshot *after,
                        unsigned int *pid, int64_t *used);
static inline int vgpu_hostpid_wanted(int64_t bytes)
{
    return VGPU_UNLIKELY(bytes >= (2LL << 20)) && __atomic_load_n(&vgpu_hostpid_state, __ATOMIC_RELAXED) == 0;
}
/* Wraps one allocating driver call: learns the host PID from it while still unknown. */
#define VGPU_WATCHED_CALL(acct, bytes, call)                                                          \
    ({                                                                                                \
        struct vgpu_pid_probe probe_;                                                                 \
        int probing_ = vgpu_hostpid_wanted(bytes) && vgpu_hostpid_begin(&probe_, (acct), (bytes));    \
        CUresult watched_rc_ = (call);                                                                \
        if (VGPU_UNLIKELY(probing_))                                                                  \
            vgpu_hostpid_end(&probe_, watched_rc_);                                                   \
        watched_rc_;                                                                                  \
    })

/* ---- failsafe.c: a driver call failed where its answer decides a limit ----------------------- */

/* Counts the failure in the region (limit_errors, limit_error_call/code) and says so once per
 * process and call on stderr. call is VGPU_ERRCALL_*; code the CUresult or nvmlReturn_t. */
void vgpu_limit_error(struct vgpu_gpu *gpu, int call, int code);

/* hooks_ctx.c: a fork child creates its own contexts, to be charged again. */
void vgpu_contexts_forget(void);
/* Contexts take hundreds of MiB on real GPUs: a larger measurement was caused by someone else. */
#define VGPU_CONTEXT_MAX_BYTES (2LL << 30)
/* How long an allocation that does not fit waits for other processes of the claim to measure the
 * contexts they reserved that bound for (admission.c): their next CUDA call does it, at once. */
#define VGPU_CONTEXT_SETTLE_WAIT_NS (2000LL * 1000 * 1000)
/* hooks_ctx.c: measure a first context created earlier with VGPU_CONTEXT_MAX_BYTES reserved in acct
 * (ctx_deferred.c calls it), correct the reservation to the footprint and record it. */
void vgpu_context_settle(CUdevice dev, struct vgpu_account *acct, CUcontext ctx);

/* ---- ctx_deferred.c: first contexts measured at the next intercepted call ------------------- */

/* Tell the claim's other processes, in our slot, whether the context bound reserved on acct's
 * GPU is provisional (set before the reservation, cleared after its correction): an allocation of
 * theirs that does not fit meanwhile waits for it (admission.c) instead of failing. */
void vgpu_context_pending(struct vgpu_account *acct, int pending);
/* After a first context was created with the upper bound reserved in acct: measure it before the
 * next intercepted call of any thread goes on. */
void vgpu_context_defer(CUdevice dev, struct vgpu_account *acct, CUcontext ctx);
/* The slow path of every intercepted call while one is pending (loader.c). */
void vgpu_contexts_settle(void);
/* Fork child: the parent's contexts are not the child's. */
void vgpu_deferred_forget(void);

#endif /* VGPU_INTERNAL_H */
