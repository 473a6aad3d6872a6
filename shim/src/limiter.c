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
 * No lock is taken anywhere: the shared words change by CAS and atomic adds, so a process killed
 * at any point leaves nothing held; a clock pushed absurdly far ahead (a corrupted or tampered
 * region) is pulled back to now, so no wait can become unbounded.
 */
#include <stdlib.h>
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

int64_t vgpu_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Launches cannot be told apart by claim, so on a GPU in several claims one claim's limiter
 * governs them all: the claim with the highest cap, an uncapped claim (0 or 100) above every cap,
 * the first in claim-uid order on a tie. Its clock is shared with that claim's other processes,
 * so the claim as a whole stays under its own cap (docs/shim.md, "One GPU in several claims"). */
static struct vgpu_account *governing_account(struct vgpu_account *head)
{
    struct vgpu_account *best = head;
    for (struct vgpu_account *a = head->next; a; a = a->next) {
        int best_cap = best->cores <= 0 || best->cores >= 100 ? 100 : best->cores;
        int cap = a->cores <= 0 || a->cores >= 100 ? 100 : a->cores;
        if (cap > best_cap)
            best = a;
    }
    return best;
}

void vgpu_limiter_setup(int fork_child)
{
    int any = 0;
    if (fork_child)
        vgpu_limiter_monitor_forget();
    unsigned char in_chain[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS] = {0};
    for (int i = 0; i < vgpu_account_count; i++)
        if (vgpu_accounts[i].next)
            in_chain[vgpu_accounts[i].next - vgpu_accounts] = 1;
    for (int i = 0; i < vgpu_account_count; i++) {
        struct vgpu_account *a = governing_account(&vgpu_accounts[i]);
        struct vgpu_limiter *lim = vgpu_limiters[i];
        if (in_chain[i])
            continue; /* not a chain's head: launches never look it up (devices.c finds the head) */
        if (a->cores <= 0 || a->cores >= 100)
            continue; /* no cap (0) or the whole GPU (100): launches are never looked at */
        if (!lim) {
            lim = calloc(1, sizeof(*lim));
            if (!lim)
                continue;
            vgpu_limiters[i] = lim;
        } else if (fork_child) {
            /* The parent's events belong to its contexts; the child starts with fresh slots. */
            memset(lim->slots, 0, sizeof(lim->slots));
            lim->nvml_device = NULL;
            lim->nvml_state = 0;
        }
        lim->gpu = a->gpu;
        lim->cap = a->cores;
        lim->policy = a->policy;
        any = 1;
    }
    __atomic_store_n(&vgpu_limiter_active, any, __ATOMIC_RELEASE);
}

static int cap_enforced(const struct vgpu_limiter *lim)
{
    return lim->policy == VGPU_POLICY_HARD ||
           __atomic_load_n(&lim->gpu->limiter_state[VGPU_LIM_GATE], __ATOMIC_RELAXED) != 0;
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

/* Waits until the claim's clock allows a launch, then charges it the estimate. */
static void wait_and_charge(struct vgpu_limiter *lim, int64_t estimate)
{
    int64_t *vclock = &lim->gpu->limiter_state[VGPU_LIM_VCLOCK];
    int64_t now = vgpu_mono_ns(), waited = 0, v;
    for (;;) {
        v = __atomic_load_n(vclock, __ATOMIC_RELAXED);
        if (VGPU_UNLIKELY(v > now + MAX_AHEAD_NS)) {
            __atomic_compare_exchange_n(vclock, &v, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
            continue;
        }
        if (v <= now + DEBT_NS || !cap_enforced(lim))
            break;
        int64_t nap = v - now - DEBT_NS;
        sleep_ns(nap < QUANTUM_NS ? nap : QUANTUM_NS);
        int64_t later = vgpu_mono_ns();
        waited += later - now;
        now = later;
    }
    if (waited) {
        __atomic_add_fetch(&lim->gpu->throttled_ns, waited, __ATOMIC_RELAXED);
        __atomic_add_fetch(&lim->gpu->launches_delayed, 1, __ATOMIC_RELAXED);
    }
    int64_t cost = estimate * 100 / lim->cap;
    /* Unused entitlement is kept for at most CREDIT_NS: an idle claim cannot bank a long burst. */
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

/* A free timing slot with events of the current context, its start event recorded on s; or -1. */
static int start_timing(struct vgpu_limiter *lim, CUstream s)
{
    CUcontext ctx = NULL;
    if (!vgpu_helper.cuEventRecord || !vgpu_helper.cuEventCreate || !vgpu_helper.cuCtxGetCurrent ||
        vgpu_helper.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS)
        return -1;
    for (int k = 0; k < SLOT_TRIES; k++) {
        unsigned i = __atomic_fetch_add(&lim->next_slot, 1, __ATOMIC_RELAXED) % VGPU_TIMING_SLOTS;
        struct vgpu_timing_slot *slot = &lim->slots[i];
        int expected = VGPU_SLOT_FREE;
        if (!__atomic_compare_exchange_n(&slot->state, &expected, VGPU_SLOT_LAUNCHING, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        if (slot->ctx != ctx || !slot->start || !slot->end) {
            if (slot->start && vgpu_helper.cuEventDestroy_v2)
                vgpu_helper.cuEventDestroy_v2(slot->start);
            if (slot->end && vgpu_helper.cuEventDestroy_v2)
                vgpu_helper.cuEventDestroy_v2(slot->end);
            slot->start = slot->end = NULL;
            if (vgpu_helper.cuEventCreate(&slot->start, CU_EVENT_DEFAULT) != CUDA_SUCCESS ||
                vgpu_helper.cuEventCreate(&slot->end, CU_EVENT_DEFAULT) != CUDA_SUCCESS) {
                __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
                return -1;
            }
            slot->ctx = ctx;
        }
        if (vgpu_helper.cuEventRecord(slot->start, s) != CUDA_SUCCESS) {
            /* Events of a destroyed context (whose address a new context may reuse) fail for
             * good: forget them, the next use of the slot creates fresh ones. */
            slot->start = slot->end = NULL;
            slot->ctx = NULL;
            __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
            return -1;
        }
        return (int)i;
    }
    return -1; /* every slot tried is busy: this launch is charged its estimate only */
}

void vgpu_limiter_before_launch(struct vgpu_launch_ticket *t, CUstream s, int per_thread_stream, int kind)
{
    CUresult err;
    struct vgpu_account *acct = vgpu_account_current(NULL, &err);
    t->lim = NULL;
    t->slot = -1;
    t->kind = kind;
    t->estimate_ns = 0;
    t->charged_ns = 0;
    if (!acct)
        return; /* no context or a device in no claim: the driver answers the launch itself */
    struct vgpu_limiter *lim = vgpu_limiters[acct - vgpu_accounts];
    if (!lim)
        return;
    /* A launch into a stream being captured only records a graph node: nothing runs now (the
     * graph's launch is what gets limited), and an event recorded here would join the graph. */
    int capturing = 0;
    if (vgpu_helper.cuStreamIsCapturing &&
        (vgpu_helper.cuStreamIsCapturing(timing_stream(s, per_thread_stream), &capturing) != CUDA_SUCCESS ||
         capturing != 0))
        return;
    t->lim = lim;
    vgpu_limiter_monitor_start();
    t->estimate_ns = __atomic_load_n(&lim->estimate_ns[kind], __ATOMIC_RELAXED);
    if (cap_enforced(lim)) {
        wait_and_charge(lim, t->estimate_ns);
        t->charged_ns = t->estimate_ns;
    }
    /* Well under its cap the claim's time needs no per-launch precision: time one launch in
     * SAMPLE_EVERY (the others count their estimate) and spare the driver the event records. */
    int64_t share = __atomic_load_n(&lim->gpu->measured_share_ppm, __ATOMIC_RELAXED);
    if (share * 2 < (int64_t)lim->cap * 10000 && t->estimate_ns &&
        __atomic_fetch_add(&lim->launch_seq, 1, __ATOMIC_RELAXED) % SAMPLE_EVERY != 0)
        return;
    t->slot = start_timing(lim, timing_stream(s, per_thread_stream));
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
    if (t->slot >= 0) {
        struct vgpu_timing_slot *slot = &lim->slots[t->slot];
        if (vgpu_helper.cuEventRecord(slot->end, timing_stream(s, per_thread_stream)) == CUDA_SUCCESS) {
            slot->kind = t->kind;
            slot->charged_ns = t->charged_ns;
            __atomic_store_n(&slot->state, VGPU_SLOT_PENDING, __ATOMIC_RELEASE);
            return;
        }
        __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
    }
    /* Unmeasured (every timing slot busy: launches faster than they complete): the estimate
     * stands for its device time, in the charge and in the claim's busy time. */
    if (t->estimate_ns)
        __atomic_add_fetch(&lim->gpu->limiter_state[VGPU_LIM_BUSY_NS], t->estimate_ns, __ATOMIC_RELAXED);
}
