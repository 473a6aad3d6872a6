/*
 * vgpu_region.h — the one definition of the per-claim shared "region" file.
 *
 * Written by libvgpu.so in every process of a claim (admission counters, process slots) and by the
 * kubelet plugin at Prepare (driver/region.py creates and reads it through cffi). driver/region.py
 * extracts the text between the VGPU_CFFI_BEGIN and VGPU_CFFI_END markers and hands it to
 * cffi.FFI.cdef(), so that part must stay in cffi's C subset: plain structs, fixed-size arrays,
 * integer #defines, no _Atomic, no expressions in #defines. C code accesses the counters with
 * __atomic builtins.
 *
 * Layout rules: the layout never changes within one VGPU_REGION_LAYOUT_VERSION; new fields go into
 * the spare words. The SM-core limiter's fields were reserved from version 1 on and are used as is.
 */
#ifndef VGPU_REGION_H
#define VGPU_REGION_H

#include <stdint.h>

/* VGPU_CFFI_BEGIN */
/* "VGPUREG1" read as a little-endian 64-bit integer; written last, so 0 means "not initialised". */
#define VGPU_REGION_MAGIC 0x3147455255504756
#define VGPU_REGION_LAYOUT_VERSION 1
#define VGPU_MAX_GPUS 16
#define VGPU_MAX_PROCS 1024
#define VGPU_UUID_LEN 96
#define VGPU_CLAIM_LEN 128
#define VGPU_LIMITER_WORDS 8

/*
 * Byte-range locks (Linux open-file-description locks, F_OFD_SETLK) on the region file. They lie
 * past the end of the file, so they never overlap data. The kernel drops them when the owning
 * process dies, whatever its PID namespace: that is how a kill -9 is detected.
 *   VGPU_LOCK_INIT      held while the header and GPU table are (re)initialised
 *   VGPU_LOCK_SLOT_BASE + i  held by the process that owns process slot i for its whole life
 */
#define VGPU_LOCK_INIT 1099511627776
#define VGPU_LOCK_SLOT_BASE 1099511628800

/* vgpu_proc.state */
#define VGPU_PROC_FREE 0
#define VGPU_PROC_LIVE 1

/*
 * vgpu_gpu.limit_error_call: which driver or NVML call failed where its answer decides whether
 * or how a limit applies (docs/shim.md, "When the driver fails"). The limit was applied anyway.
 */
#define VGPU_ERRCALL_CAPTURE_QUERY 1   /* cuStreamIsCapturing: launch held and timed as not captured */
#define VGPU_ERRCALL_LAUNCH_DEVICE 2   /* cuCtxGetDevice/cuDeviceGetUuid at a launch: strictest cap applied */
#define VGPU_ERRCALL_EVENT_RECORD 3    /* cuCtxGetCurrent/cuEventCreate/cuEventRecord: launch untimed */
#define VGPU_ERRCALL_EVENT_READ 4      /* cuEventQuery/cuEventElapsedTime: launch's time unknown */
#define VGPU_ERRCALL_NO_EVENTS 5       /* the driver lacks the event API: launches untimed */
#define VGPU_ERRCALL_NVML_UTIL 6       /* NVML device utilization unreadable: soft acts as hard */
#define VGPU_ERRCALL_ARRAY_REQ 7       /* cuArrayGetMemoryRequirements: upper bound charged */
#define VGPU_ERRCALL_MIPMAP_REQ 8      /* cuMipmappedArrayGetMemoryRequirements: upper bound charged */
#define VGPU_ERRCALL_CONTEXT 9         /* context footprint unmeasurable (cuMemGetInfo/NVML) */
#define VGPU_ERRCALL_MONITOR 10        /* the limiter's monitor thread could not start */
#define VGPU_ERRCALL_UNDO 11           /* undoing an allocation or context past the wall failed: charge kept */

/* vgpu_gpu.core_policy */
#define VGPU_POLICY_SOFT 0
#define VGPU_POLICY_HARD 1

/*
 * vgpu_gpu.limiter_state[]: the SM-core limiter's state, shared by every process of the claim
 * (shim/src/limiter.c, limiter_monitor.c). Plain words changed only by atomics and CAS, never
 * under a lock, so a process killed at any instruction leaves nothing held.
 *   VGPU_LIM_VCLOCK      virtual clock (ns, CLOCK_MONOTONIC): wall time the claim's charged device
 *                        time has paid for; a launch may go while it is at most the allowed debt
 *                        ahead of now
 *   VGPU_LIM_BUSY_NS     device time of the claim's kernels measured so far (all processes)
 *   VGPU_LIM_CTL_AT      when the controller last ran (ns); the CAS on it elects one updater
 *   VGPU_LIM_CTL_BUSY    VGPU_LIM_BUSY_NS at that moment
 *   VGPU_LIM_GATE        1 while the cap is enforced (always for hard; soft: while others want it)
 *   VGPU_LIM_HOLD_UNTIL  soft: keep enforcing at least until then (ns)
 *   VGPU_LIM_PROBE_AT    soft, released: when to enforce again briefly to look for other tenants
 *   VGPU_LIM_OTHERS_PPM  soft: the device utilization not explained by this claim, last seen
 */
#define VGPU_LIM_VCLOCK 0
#define VGPU_LIM_BUSY_NS 1
#define VGPU_LIM_CTL_AT 2
#define VGPU_LIM_CTL_BUSY 3
#define VGPU_LIM_GATE 4
#define VGPU_LIM_HOLD_UNTIL 5
#define VGPU_LIM_PROBE_AT 6
#define VGPU_LIM_OTHERS_PPM 7

/* Per claim and GPU. Counters are signed bytes and never negative. */
struct vgpu_gpu {
    char uuid[VGPU_UUID_LEN];      /* "GPU-..." / "MIG-..." as in the claim config */
    int64_t limit_bytes;           /* the wall, copied from the config by every attaching process */
    int64_t used_bytes;            /* admitted bytes of all live processes (the CAS target) */
    int64_t peak_bytes;            /* highest used_bytes seen */
    int64_t rejected_allocs;       /* allocations refused by the wall */
    int64_t context_bytes;         /* part of used_bytes that is measured context footprint */
    /* SM-core limiter */
    int32_t core_cap;              /* percent of the GPU's time, 0 (or 100) = no cap */
    int32_t core_policy;           /* VGPU_POLICY_* */
    int64_t measured_share_ppm;    /* the claim's measured share of device time, parts per million */
    int64_t throttled_ns;          /* total time launches were held back, all processes */
    int64_t launches_delayed;      /* launches that waited at least once */
    int64_t limiter_state[VGPU_LIMITER_WORDS]; /* VGPU_LIM_* above */
    /* Fail-safe: calls that failed where their answer decides a limit (VGPU_ERRCALL_*), all
     * processes; the limit held anyway. The last failure's call and its CUresult/nvmlReturn_t. */
    int64_t limit_errors;
    int32_t limit_error_call;
    int32_t limit_error_code;
    int64_t context_measurements;  /* processes that measured the context footprint (context_bytes) */
    int64_t spare[5];
};

/* One per process of the claim; owned by whoever holds its slot lock. Never compacted. */
struct vgpu_proc {
    int32_t state;                 /* VGPU_PROC_* */
    int32_t pid;                   /* PID in the process's own namespace (display only) */
    uint64_t generation;           /* bumped on every claim of the slot */
    int64_t used[VGPU_MAX_GPUS];   /* bytes this process holds, indexed like vgpu_region.gpus */
    /* Learned once by the process (docs/shim.md, "Process lists"): its PID as NVML reports it
     * (the host's, in a container), 0 until known; and the inode of its own PID namespace. */
    int32_t host_pid;
    int32_t host_pid_pad;
    uint64_t pid_ns;
    /* Bit g set: this process reserved the context bound on gpus[g] and has not measured its
     * context yet (shim/src/ctx_deferred.c). An allocation of another process that does not fit
     * waits for it to clear (shim/src/admission.c): the bound mostly comes back within moments. */
    uint64_t context_pending;
    int64_t spare[1];
};

struct vgpu_region {
    uint64_t magic;                /* VGPU_REGION_MAGIC once initialised */
    uint32_t layout_version;       /* VGPU_REGION_LAYOUT_VERSION */
    uint32_t size_bytes;           /* sizeof(struct vgpu_region) */
    uint32_t gpu_count;            /* used entries of gpus[] */
    uint32_t proc_high_water;      /* slots [0, proc_high_water) have ever been claimed */
    char claim_uid[VGPU_CLAIM_LEN];
    uint64_t attach_count;         /* process attaches over the region's life */
    int64_t dead_refunded_bytes;   /* bytes refunded from slots of processes that died, ever */
    int64_t spare[6];
    struct vgpu_gpu gpus[VGPU_MAX_GPUS];
    struct vgpu_proc procs[VGPU_MAX_PROCS];
};
/* VGPU_CFFI_END */

#endif /* VGPU_REGION_H */
