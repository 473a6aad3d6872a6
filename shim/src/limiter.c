/*
 * The SM-core cap on the launch path (docs/shim.md, "SM-core cap").
 *
 * Each capped (claim, GPU) has a virtual clock in the region (VGPU_LIM_VCLOCK): every launch is
 * charged its estimated device time divided by the cap (a 1 ms kernel at cap 25 costs 4 ms of
 * wall time), and a launch may go while the clock is at most DEBT_NS ahead of now; otherwise the
 * thread sleeps in bounded quanta. When the launch's real device time is measured (start/end
 * events, read by the monitor thread) the difference to the estimate is charged too, so the
 * clock integrates exactly "device time used - cap x wall time": the integral part of the
 * controller. The monitor (limiter_monitor.c) adds the feedback: the measured share, and for
 * `soft` whether the cap is enforced at all.
 *
 * A GPU in several capped claims of the process has one lane per claim (struct vgpu_limiter,
 * chained in claim-uid order): a launch goes through the first lane whose clock allows it and is
 * charged there, so the process gets the caps added up and each claim stays within its own.
 *
 * No lock is taken anywhere: the shared words change by CAS and atomic adds, so a process killed
 * at any point leaves nothing held; a clock pushed absurdly far ahead (a corrupted or tampered
 * region) is pulled back to now, so no wait can become unbounded. A driver call that fails on
 * this path never lifts the cap: the launch is held and charged anyway, and failsafe.c counts it.
 */
#include <string.h>
#include <time.h>

#include "vgpu_internal.h"

#define DEBT_NS 1000000LL             /* a launch may go while the clock is <= 1 ms ahead */
#define CREDIT_NS 20000000LL          /* at most 20 ms of unused entitlement is kept (burst) */
#define QUANTUM_NS 5000000LL          /* longest single sleep before re-checking */
#define MAX_AHEAD_NS 60000000000LL    /* a clock further ahead than 60 s is corrupt: reset it */
#define SLOT_TRIES 8                  /* timing slots tried before a launch goes unmeasured */
#define SAMPLE_EVERY 8                /* well under the cap, one launch in this many is timed */
#define CU_STREAM_PER_THREAD ((CUstream)0x2)

/* Owned by this file; filled once by vgpu_limiter_setup at init (under loader.c's once-guard)
 * and reset by the fork child handler; the pointed-to structs are shared with the monitor. */
struct vgpu_limiter *vgpu_limiters[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS];
int vgpu_limiter_active;
/* Owned by this file: the storage of every lane, indexed like vgpu_accounts. Static rather than
 * allocated so that setting up a cap cannot fail (an allocation failure would have left the GPU
 * uncapped); zero pages cost no memory until a lane is used. */
static struct vgpu_limiter g_lanes[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS];
/* The head lane with the smallest total cap: applied when a launch's device is unknown. */
static struct vgpu_limiter *g_strictest;
/* CLOCK_MONOTONIC_COARSE's tick (ns) when it is usable for the launch fast path, else 0. */
static int64_t g_coarse_res;

int64_t vgpu_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The same clock at tick resolution: several times cheaper to read than CLOCK_MONOTONIC on many
 * VMs (tens of ns there, a fair share of a capped launch). It never runs ahead of the precise
 * clock, so "clock <= coarse now + DEBT" proves a launch may go; only launches near the cap, and
 * every wait, read the precise clock.
 */
static int64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int capped(const struct vgpu_account *a)
{
    return a->cores > 0 && a->cores < 100;
}

void vgpu_limiter_setup(int fork_child)
{
    int any = 0;
    if (fork_child)
        vgpu_limiter_monitor_forget();
    g_strictest = NULL;
    struct timespec res;
    /* A coarse tick above 5 ms (HZ=100) would make the credit below too coarse: not used then. */
    g_coarse_res = clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0 && res.tv_sec == 0 && res.tv_nsec <= 5000000
                       ? res.tv_nsec
                       : 0;
    for (int i = 0; i < vgpu_account_count; i++) {
        struct vgpu_account *head = &vgpu_accounts[i];
        if (head->head != head)
            continue; /* wired below with its chain's head */
        /* A claim without a cap (0 or 100) on the GPU lets every launch go: no lane at all. */
        int all_capped = 1, total = 0;
        for (struct vgpu_account *a = head; a; a = a->next) {
            all_capped = all_capped && capped(a);
            total += a->cores;
        }
        struct vgpu_limiter *prev = NULL, *first = NULL;
        for (struct vgpu_account *a = head; a; a = a->next) {
            int index = (int)(a - vgpu_accounts);
            struct vgpu_limiter *lim = vgpu_limiters[index];
            if (!all_capped)
                continue;
            if (!lim) {
                lim = &g_lanes[index]; /* zero since load: never used before */
                vgpu_limiters[index] = lim;
            } else if (fork_child) {
                /* The parent's events belong to its contexts; the child starts with fresh slots. */
                memset(lim->slots, 0, sizeof(lim->slots));
                lim->nvml_device = NULL;
                lim->nvml_state = 0;
                lim->blind_launches = lim->blind_charged_ns = lim->blind_at = 0;
            }
            lim->gpu = a->gpu;
            lim->cap = a->cores;
            lim->policy = a->policy;
            lim->next_lane = NULL;
            if (prev)
                prev->next_lane = lim;
            else
                first = lim;
            lim->head = first;
            prev = lim;
        }
        if (!first)
            continue;
        first->total_cap = total > 100 ? 100 : total;
        if (!g_strictest || first->total_cap < g_strictest->total_cap)
            g_strictest = first;
        any = 1;
    }
    __atomic_store_n(&vgpu_limiter_active, any, __ATOMIC_RELEASE);
}

static int cap_enforced(const struct vgpu_limiter *lim)
{
    return lim->policy == VGPU_POLICY_HARD ||
           __atomic_load_n(&lim->gpu->limiter_state[VGPU_LIM_GATE], __ATOMIC_RELAXED) != 0 ||
           VGPU_UNLIKELY(vgpu_limiter_monitor_failed());
}

void vgpu_limiter_charge(struct vgpu_limiter *lim, int64_t device_ns)
{
    if (device_ns != 0)
        __atomic_add_fetch(&lim->gpu->limiter_state[VGPU_LIM_VCLOCK], device_ns * 100 / lim->cap,
                           __ATOMIC_RELAXED);
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {0, (long)ns};
    nanosleep(&ts, NULL);
}

/* The clock of a lane, pulled back to now when it is corrupt (absurdly far ahead). */
static int64_t lane_clock(struct vgpu_limiter *lim, int64_t now)
{
    int64_t *vclock = &lim->gpu->limiter_state[VGPU_LIM_VCLOCK];
    int64_t v = __atomic_load_n(vclock, __ATOMIC_RELAXED);
    if (VGPU_UNLIKELY(v > now + MAX_AHEAD_NS) &&
        __atomic_compare_exchange_n(vclock, &v, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        v = now;
    return v;
}

/* Waits until a lane's clock allows a launch; returns that lane (first in order), *enforced
 * saying whether its cap holds now. */
static struct vgpu_limiter *wait_for_lane(struct vgpu_limiter *first, int64_t *now_out, int *enforced)
{
    int64_t now = vgpu_mono_ns(), waited = 0;
    struct vgpu_limiter *chosen;
    for (;;) {
        int64_t soonest = INT64_MAX;
        chosen = NULL;
        for (struct vgpu_limiter *lim = first; lim; lim = lim->next_lane) {
            if (!cap_enforced(lim)) {
                *enforced = 0;
                chosen = lim;
                break;
            }
            int64_t ahead = lane_clock(lim, now) - now;
            if (ahead <= DEBT_NS) {
                *enforced = 1;
                chosen = lim;
                break;
            }
            if (ahead < soonest)
                soonest = ahead;
        }
        if (chosen)
            break;
        int64_t nap = soonest - DEBT_NS;
        sleep_ns(nap < QUANTUM_NS ? nap : QUANTUM_NS);
        int64_t later = vgpu_mono_ns();
        waited += later - now;
        now = later;
    }
    if (waited) {
        __atomic_add_fetch(&chosen->gpu->throttled_ns, waited, __ATOMIC_RELAXED);
        __atomic_add_fetch(&chosen->gpu->launches_delayed, 1, __ATOMIC_RELAXED);
    }
    *now_out = now;
    return chosen;
}

/* Without waiting: the first lane whose clock is at most DEBT_NS ahead of the coarse clock (so
 * surely of the precise one), *now_out set to the earliest time the credit below may start
 * from; NULL when a lane would have to be checked against the precise clock. */
static struct vgpu_limiter *lane_at_a_glance(struct vgpu_limiter *first, int64_t *now_out)
{
    if (!g_coarse_res)
        return NULL;
    int64_t now = coarse_ns();
    for (struct vgpu_limiter *lim = first; lim; lim = lim->next_lane)
        if (__atomic_load_n(&lim->gpu->limiter_state[VGPU_LIM_VCLOCK], __ATOMIC_RELAXED) <= now + DEBT_NS) {
            /* The precise now is up to one tick later: credit counts from there. */
            *now_out = now + g_coarse_res;
            return lim;
        }
    return NULL;
}

/* Charges a launch's estimate to the lane's clock; unused entitlement is kept for at most
 * CREDIT_NS, so an idle claim cannot bank a long burst. */
static void charge_launch(struct vgpu_limiter *lim, int64_t now, int64_t estimate)
{
    int64_t *vclock = &lim->gpu->limiter_state[VGPU_LIM_VCLOCK];
    int64_t v = __atomic_load_n(vclock, __ATOMIC_RELAXED);
    int64_t cost = estimate * 100 / lim->cap;
    for (;;) {
        int64_t base = v < now - CREDIT_NS ? now - CREDIT_NS : v;
        if (__atomic_compare_exchange_n(vclock, &v, base + cost, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            break;
    }
}

static CUstream timing_stream(CUstream s, int per_thread_stream)
{
    return !s && per_thread_stream ? CU_STREAM_PER_THREAD : s;
}

/* A free timing slot with events of the current context, its start event recorded on s; -1 when
 * every slot tried is busy, -2 when a driver call failed (or the driver has no event API). */
static int start_timing(struct vgpu_limiter *lim, CUstream s)
{
    CUcontext ctx = NULL;
    CUresult rc;
    if (VGPU_UNLIKELY(!vgpu_helper.cuEventRecord || !vgpu_helper.cuEventCreate || !vgpu_helper.cuCtxGetCurrent ||
                      !vgpu_helper.cuEventQuery)) {
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_NO_EVENTS, CUDA_ERROR_NOT_FOUND);
        return -2;
    }
    if (VGPU_UNLIKELY((rc = vgpu_helper.cuCtxGetCurrent(&ctx)) != CUDA_SUCCESS || !ctx)) {
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_EVENT_RECORD, rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_CONTEXT);
        return -2;
    }
    /* Where to look first is only a hint (a plain load and store: threads racing here just look at
     * the same slots); the CAS on a slot's state decides who owns it, and a slot seen busy is
     * passed over with a plain load, so its line (which the monitor thread writes) is not pulled
     * over for a CAS that cannot succeed. */
    unsigned first = __atomic_load_n(&lim->next_slot, __ATOMIC_RELAXED);
    for (int k = 0; k < SLOT_TRIES; k++) {
        unsigned i = (first + (unsigned)k) % VGPU_TIMING_SLOTS;
        struct vgpu_timing_slot *slot = &lim->slots[i];
        int expected = VGPU_SLOT_FREE;
        if (__atomic_load_n(&slot->state, __ATOMIC_RELAXED) != VGPU_SLOT_FREE ||
            !__atomic_compare_exchange_n(&slot->state, &expected, VGPU_SLOT_LAUNCHING, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&lim->next_slot, i + 1, __ATOMIC_RELAXED);
        if (slot->ctx != ctx || !slot->start || !slot->end) {
            if (slot->start && vgpu_helper.cuEventDestroy_v2)
                vgpu_helper.cuEventDestroy_v2(slot->start);
            if (slot->end && vgpu_helper.cuEventDestroy_v2)
                vgpu_helper.cuEventDestroy_v2(slot->end);
            slot->start = slot->end = NULL;
            if ((rc = vgpu_helper.cuEventCreate(&slot->start, CU_EVENT_DEFAULT)) != CUDA_SUCCESS ||
                (rc = vgpu_helper.cuEventCreate(&slot->end, CU_EVENT_DEFAULT)) != CUDA_SUCCESS) {
                __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
                vgpu_limit_error(lim->gpu, VGPU_ERRCALL_EVENT_RECORD, rc);
                return -2;
            }
            slot->ctx = ctx;
        }
        if ((rc = vgpu_helper.cuEventRecord(slot->start, s)) != CUDA_SUCCESS) {
            /* Events of a destroyed context (whose address a new context may reuse) fail for
             * good: forget them, the next use of the slot creates fresh ones. */
            slot->start = slot->end = NULL;
            slot->ctx = NULL;
            __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
            vgpu_limit_error(lim->gpu, VGPU_ERRCALL_EVENT_RECORD, rc);
            return -2;
        }
        return (int)i;
    }
    __atomic_store_n(&lim->next_slot, first + SLOT_TRIES, __ATOMIC_RELAXED);
    return -1; /* every slot tried is busy: this launch is charged its estimate only */
}

/* The lanes of the current context's GPU, or NULL when its launches are not limited. */
static struct vgpu_limiter *lanes_of_current(CUresult *device_error)
{
    CUresult err = CUDA_SUCCESS;
    struct vgpu_account *acct = vgpu_account_current(NULL, &err);
    *device_error = CUDA_SUCCESS;
    if (VGPU_LIKELY(acct != NULL))
        return vgpu_limiters[acct - vgpu_accounts];
    /* CUDA_ERROR_OUT_OF_MEMORY: a device in no claim of the container (its allocations are
     * refused, its launches are not ours to hold). Any other error: the device is unknown, so the
     * strictest cap applies; counted after the launch if the driver ran it. */
    if (err == CUDA_ERROR_OUT_OF_MEMORY)
        return NULL;
    *device_error = err;
    return g_strictest;
}

void vgpu_limiter_before_launch(struct vgpu_launch_ticket *t, CUstream s, int per_thread_stream, int kind)
{
    CUstream ts = timing_stream(s, per_thread_stream);
    t->lim = NULL;
    t->slot = -1;
    t->kind = kind;
    t->blind = 0;
    t->estimate_ns = 0;
    t->charged_ns = 0;
    struct vgpu_limiter *first = lanes_of_current(&t->device_error);
    if (!first)
        return;
    /* A launch into a stream being captured only records a graph node: nothing runs now (the
     * graph's launch is what gets limited), and an event recorded here would join the graph. A
     * capture query that fails says nothing: the launch is held and timed like any other. */
    int capturing = 0, may_time = 1;
    if (VGPU_LIKELY(vgpu_helper.cuStreamIsCapturing != NULL)) {
        CUresult rc = vgpu_helper.cuStreamIsCapturing(ts, &capturing);
        if (VGPU_UNLIKELY(rc != CUDA_SUCCESS)) {
            vgpu_limit_error(first->gpu, VGPU_ERRCALL_CAPTURE_QUERY, rc);
            capturing = 0;
        } else if (capturing != 0) {
            return;
        }
    }
    vgpu_limiter_monitor_start();
    struct vgpu_limiter *head = first->head;
    int64_t now = 0;
    int enforced = 0;
    struct vgpu_limiter *lim = first;
    if (first->next_lane || cap_enforced(first)) {
        /* Under the cap (the clock behind now) the coarse clock decides; near it, the precise. */
        lim = cap_enforced(first) ? lane_at_a_glance(first, &now) : NULL;
        if (lim)
            enforced = 1;
        else
            lim = wait_for_lane(first, &now, &enforced);
    }
    t->lim = lim;
    t->estimate_ns = __atomic_load_n(&head->estimate_ns[kind], __ATOMIC_RELAXED);
    if (VGPU_UNLIKELY(vgpu_limiter_monitor_failed())) {
        /* Nothing can time launches in this process: a fixed charge keeps the cap in force. */
        t->blind = 1;
        may_time = 0;
        if (t->estimate_ns < VGPU_BLIND_LAUNCH_NS)
            t->estimate_ns = VGPU_BLIND_LAUNCH_NS;
    }
    if (enforced) {
        charge_launch(lim, now, t->estimate_ns);
        t->charged_ns = t->estimate_ns;
    }
    if (!may_time)
        return;
    /* Well under its cap the claim's time needs no per-launch precision: time one launch in
     * SAMPLE_EVERY (the others count their estimate) and spare the driver the event records. */
    int64_t share = __atomic_load_n(&lim->gpu->measured_share_ppm, __ATOMIC_RELAXED);
    if (share * 2 < (int64_t)lim->cap * 10000 && t->estimate_ns) {
        /* A plain load and store: a count lost to a race between threads only shifts the sample. */
        unsigned seq = __atomic_load_n(&lim->launch_seq, __ATOMIC_RELAXED);
        __atomic_store_n(&lim->launch_seq, seq + 1, __ATOMIC_RELAXED);
        if (seq % SAMPLE_EVERY != 0)
            return;
    }
    t->slot = start_timing(lim, ts);
    if (VGPU_UNLIKELY(t->slot == -2)) {
        t->slot = -1;
        t->blind = 1;
    }
}

void vgpu_limiter_after_launch(struct vgpu_launch_ticket *t, CUstream s, int per_thread_stream, CUresult rc)
{
    struct vgpu_limiter *lim = t->lim;
    if (!lim)
        return;
    if (rc != CUDA_SUCCESS) {
        vgpu_limiter_charge(lim, -t->charged_ns); /* nothing ran */
        if (t->slot >= 0)
            __atomic_store_n(&lim->slots[t->slot].state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
        return;
    }
    if (VGPU_UNLIKELY(t->device_error != CUDA_SUCCESS))
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_LAUNCH_DEVICE, t->device_error);
    if (t->slot >= 0) {
        struct vgpu_timing_slot *slot = &lim->slots[t->slot];
        CUresult erc = vgpu_helper.cuEventRecord(slot->end, timing_stream(s, per_thread_stream));
        if (VGPU_LIKELY(erc == CUDA_SUCCESS)) {
            slot->kind = t->kind;
            slot->charged_ns = t->charged_ns;
            __atomic_store_n(&slot->state, VGPU_SLOT_PENDING, __ATOMIC_RELEASE);
            return;
        }
        __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_EVENT_RECORD, erc);
        t->blind = 1;
    }
    if (VGPU_UNLIKELY(t->blind)) {
        /* The monitor charges these from NVML device utilization (limiter_monitor.c). */
        __atomic_add_fetch(&lim->blind_launches, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&lim->blind_charged_ns, t->charged_ns, __ATOMIC_RELAXED);
        return;
    }
    /* Unmeasured (every timing slot busy: launches faster than they complete): the estimate
     * stands for its device time, in the charge and in the claim's busy time. */
    if (t->estimate_ns)
        __atomic_add_fetch(&lim->gpu->limiter_state[VGPU_LIM_BUSY_NS], t->estimate_ns, __ATOMIC_RELAXED);
}
