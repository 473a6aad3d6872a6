/*
 * The SM-core limiter's feedback side: one thread per process that uses a capped GPU.
 *
 * Every POLL_NS it reads the timing events of this process's finished launches (device time =
 * elapsed time between the start and end events around the launch on its stream), adds it to the
 * claim's busy counter in the region, corrects the estimate that was charged, and updates the
 * running estimate of a launch's device time. Every CONTROL_NS one process of the claim (elected
 * by a CAS on VGPU_LIM_CTL_AT, so a dead process never blocks it) turns the busy counter into the
 * measured share and, for the `soft` policy, decides whether the cap is enforced:
 *
 *   others = device utilization (NVML) - the claim's own share over the last period.
 *   Enforced while others >= OTHERS_MIN, and HOLD_NS after they were last seen. Released
 *   otherwise; a released claim cannot see other tenants while it fills the GPU itself (NVML
 *   then reads 100 % and so does its own share), so every PROBE_EVERY_NS it enforces the cap for
 *   HOLD_NS and looks again. Without a usable NVML, soft behaves like hard.
 *
 * Launches that could not be timed because a driver call failed ("blind" launches, counted by
 * failsafe.c) are settled every CONTROL_NS from NVML device utilization: the device's busy time
 * over the period, an upper bound of the claim's own, minus what those launches were charged.
 * Without NVML either they are charged VGPU_BLIND_LAUNCH_NS each. A soft cap whose claim had
 * such errors in the period holds like a hard one (its own share cannot be told from others').
 *
 * The thread holds no lock, calls the driver only for event queries, blocks every signal (the
 * application's handlers run on its own threads) and stops once the process is exiting.
 */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

#define POLL_NS 2000000LL              /* event polling period while launches are in flight */
#define IDLE_POLL_NS 20000000LL        /* ... and while none is */
#define MAX_NOT_READY 32               /* event queries answered "not ready" per poll, at most */
#define CONTROL_NS 100000000LL         /* controller period, shared by the claim's processes */
#define STALE_NS 2000000000LL          /* no update for this long: restart the share window */
#define OTHERS_MIN_PPM 50000           /* 5 % of the device used by someone else = contention */
#define HOLD_NS 500000000LL            /* soft: enforce at least this long once contention is seen */
#define PROBE_EVERY_NS 3000000000LL    /* soft, released: enforce briefly this often to look again */
#define SHARE_SMOOTHING 2              /* measured share: new = old + (window - old) / this */
#define ESTIMATE_SMOOTHING 4           /* launch estimate: new = old + (measured - old) / this */
#define NVML_ERROR_UNAVAILABLE 999     /* what failsafe.c records when NVML gave no utilization */

/* 0 until this process (or fork child: reset by vgpu_limiter_setup's caller) started the thread. */
static int g_started;
/* 1 when pthread_create failed: launches are charged a fixed cost and soft caps hold (limiter.c). */
static int g_failed;

/* ---- NVML device utilization (monitor thread only) ------------------------------------------ */

/* Device utilization in ppm, or -1 when NVML cannot tell. */
static int64_t device_utilization_ppm(struct vgpu_limiter *lim)
{
    const struct vgpu_nvml_api *nvml = vgpu_nvml();
    struct vgpu_nvml_utilization u;
    if (!nvml || !nvml->utilization || lim->nvml_state < 0)
        return -1;
    if (!lim->nvml_device) {
        char uuid[VGPU_UUID_LEN];
        memcpy(uuid, lim->gpu->uuid, sizeof(uuid));
        uuid[sizeof(uuid) - 1] = '\0';
        if (!(lim->nvml_device = vgpu_nvml_device(uuid))) {
            lim->nvml_state = -1;
            return -1;
        }
        lim->nvml_state = 1;
    }
    if (nvml->utilization(lim->nvml_device, &u) != 0)
        return -1;
    return (int64_t)(u.gpu > 100 ? 100 : u.gpu) * 10000;
}

/* ---- measurement ---------------------------------------------------------------------------- */

/* The context current on the monitor thread (it follows the events it reads). Monitor only. */
static CUcontext g_monitor_ctx;

/* Reads the finished launches' timings; returns how many launches are still in flight. */
static int poll_events(struct vgpu_limiter *lim)
{
    int in_flight = 0;
    /* Slots are handed out round robin, so starting at the next one to be handed out visits the
     * oldest launches first; once MAX_NOT_READY launches are still running the rest (younger)
     * most likely are too, and a deep queue costs a bounded number of queries per period. */
    unsigned first = __atomic_load_n(&lim->next_slot, __ATOMIC_RELAXED);
    for (int k = 0; k < VGPU_TIMING_SLOTS && in_flight < MAX_NOT_READY; k++) {
        struct vgpu_timing_slot *slot = &lim->slots[(first + (unsigned)k) % VGPU_TIMING_SLOTS];
        if (__atomic_load_n(&slot->state, __ATOMIC_ACQUIRE) != VGPU_SLOT_PENDING)
            continue;
        if (slot->ctx != g_monitor_ctx && vgpu_helper.cuCtxSetCurrent &&
            vgpu_helper.cuCtxSetCurrent(slot->ctx) == CUDA_SUCCESS)
            g_monitor_ctx = slot->ctx;
        CUresult rc = vgpu_helper.cuEventQuery(slot->end);
        if (rc == CUDA_ERROR_NOT_READY) {
            in_flight++;
            continue;
        }
        float ms = 0;
        int64_t device_ns = -1;
        if (rc == CUDA_SUCCESS && vgpu_helper.cuEventElapsedTime &&
            (rc = vgpu_helper.cuEventElapsedTime(&ms, slot->start, slot->end)) == CUDA_SUCCESS && ms >= 0)
            device_ns = (int64_t)((double)ms * 1e6);
        if (device_ns < 0) {
            /* The launch ran but its time cannot be read: settled with the blind launches. */
            vgpu_limit_error(lim->gpu, VGPU_ERRCALL_EVENT_READ, rc != CUDA_SUCCESS ? rc : CUDA_ERROR_NOT_FOUND);
            __atomic_add_fetch(&lim->blind_launches, 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&lim->blind_charged_ns, slot->charged_ns, __ATOMIC_RELAXED);
        } else {
            int64_t *estimate = &lim->head->estimate_ns[slot->kind];
            int64_t old = __atomic_load_n(estimate, __ATOMIC_RELAXED);
            __atomic_store_n(estimate, old ? old + (device_ns - old) / ESTIMATE_SMOOTHING : device_ns,
                             __ATOMIC_RELAXED);
            __atomic_add_fetch(&lim->gpu->limiter_state[VGPU_LIM_BUSY_NS], device_ns, __ATOMIC_RELAXED);
            if (slot->charged_ns)
                vgpu_limiter_charge(lim, device_ns - slot->charged_ns);
        }
        __atomic_store_n(&slot->state, VGPU_SLOT_FREE, __ATOMIC_RELEASE);
    }
    return in_flight;
}

/* ---- launches that could not be timed ------------------------------------------------------ */

/* Every CONTROL_NS: charge this process's blind launches of the period their device time as NVML
 * sees it (the whole device's: never less than the claim's own), or a fixed cost without NVML. */
static void settle_blind(struct vgpu_limiter *lim, int64_t now)
{
    if (lim->blind_at == 0) {
        lim->blind_at = now;
        return;
    }
    if (now - lim->blind_at < CONTROL_NS)
        return;
    int64_t period = now - lim->blind_at;
    lim->blind_at = now;
    int64_t launches = __atomic_exchange_n(&lim->blind_launches, 0, __ATOMIC_RELAXED);
    int64_t charged = __atomic_exchange_n(&lim->blind_charged_ns, 0, __ATOMIC_RELAXED);
    if (launches == 0)
        return;
    int64_t device_ppm = device_utilization_ppm(lim), device_ns;
    if (device_ppm >= 0) {
        device_ns = device_ppm * period / 1000000;
    } else {
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_NVML_UTIL, NVML_ERROR_UNAVAILABLE);
        device_ns = launches * VGPU_BLIND_LAUNCH_NS;
    }
    __atomic_add_fetch(&lim->gpu->limiter_state[VGPU_LIM_BUSY_NS], device_ns, __ATOMIC_RELAXED);
    if (device_ns > charged)
        vgpu_limiter_charge(lim, device_ns - charged);
}

/* ---- control -------------------------------------------------------------------------------- */

static void enforce(struct vgpu_limiter *lim, int64_t now)
{
    int64_t *st = lim->gpu->limiter_state;
    __atomic_store_n(&st[VGPU_LIM_HOLD_UNTIL], now + HOLD_NS, __ATOMIC_RELAXED);
    if (__atomic_exchange_n(&st[VGPU_LIM_GATE], 1, __ATOMIC_RELAXED) == 0)
        __atomic_store_n(&st[VGPU_LIM_VCLOCK], now, __ATOMIC_RELAXED); /* start from a clean balance */
}

static void soft_decision(struct vgpu_limiter *lim, int64_t now, int64_t own_ppm)
{
    int64_t *st = lim->gpu->limiter_state;
    int64_t device = device_utilization_ppm(lim);
    if (device < 0) {
        __atomic_store_n(&st[VGPU_LIM_OTHERS_PPM], -1, __ATOMIC_RELAXED);
        vgpu_limit_error(lim->gpu, VGPU_ERRCALL_NVML_UTIL, NVML_ERROR_UNAVAILABLE);
        enforce(lim, now); /* cannot see the others: keep the cap */
        return;
    }
    /* A driver call failed on a limit path this period: the claim's own share is not known
     * exactly (blind launches count the whole device), so the others cannot be told apart. */
    int64_t errors = __atomic_load_n(&lim->gpu->limit_errors, __ATOMIC_RELAXED);
    if (errors != lim->errors_seen) {
        lim->errors_seen = errors;
        enforce(lim, now);
        return;
    }
    int64_t others = device - own_ppm;
    if (others < 0)
        others = 0;
    __atomic_store_n(&st[VGPU_LIM_OTHERS_PPM], others, __ATOMIC_RELAXED);
    if (others >= OTHERS_MIN_PPM) {
        enforce(lim, now);
    } else if (__atomic_load_n(&st[VGPU_LIM_GATE], __ATOMIC_RELAXED)) {
        if (now > __atomic_load_n(&st[VGPU_LIM_HOLD_UNTIL], __ATOMIC_RELAXED)) {
            __atomic_store_n(&st[VGPU_LIM_PROBE_AT], now + PROBE_EVERY_NS, __ATOMIC_RELAXED);
            __atomic_store_n(&st[VGPU_LIM_GATE], 0, __ATOMIC_RELAXED);
        }
    } else if (now >= __atomic_load_n(&st[VGPU_LIM_PROBE_AT], __ATOMIC_RELAXED)) {
        enforce(lim, now);
    }
}

static void control(struct vgpu_limiter *lim, int64_t now)
{
    int64_t *st = lim->gpu->limiter_state;
    int64_t last = __atomic_load_n(&st[VGPU_LIM_CTL_AT], __ATOMIC_RELAXED);
    if (now - last < CONTROL_NS && now >= last)
        return;
    if (!__atomic_compare_exchange_n(&st[VGPU_LIM_CTL_AT], &last, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return; /* another process of the claim runs this period */
    int64_t busy = __atomic_load_n(&st[VGPU_LIM_BUSY_NS], __ATOMIC_RELAXED);
    int64_t prev = __atomic_exchange_n(&st[VGPU_LIM_CTL_BUSY], busy, __ATOMIC_RELAXED);
    if (last == 0 || now - last > STALE_NS || now < last || busy < prev)
        return; /* first period (or after a pause): only the baseline is taken */
    int64_t window = (busy - prev) * 1000000 / (now - last);
    if (window > 1000000)
        window = 1000000; /* several streams side by side: the share is of the whole device */
    int64_t shown = __atomic_load_n(&lim->gpu->measured_share_ppm, __ATOMIC_RELAXED);
    __atomic_store_n(&lim->gpu->measured_share_ppm, shown + (window - shown) / SHARE_SMOOTHING, __ATOMIC_RELAXED);
    if (lim->policy == VGPU_POLICY_HARD)
        __atomic_store_n(&st[VGPU_LIM_GATE], 1, __ATOMIC_RELAXED);
    else
        soft_decision(lim, now, window);
}

#define CU_STREAM_CAPTURE_MODE_RELAXED 2

static void *monitor(void *arg)
{
    int mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    (void)arg;
    /* Event queries from this thread must never invalidate a graph capture another thread of the
     * application runs in global mode (PyTorch and vLLM capture CUDA graphs). */
    if (vgpu_helper.cuThreadExchangeStreamCaptureMode)
        vgpu_helper.cuThreadExchangeStreamCaptureMode(&mode);
    while (__atomic_load_n(&vgpu_mode, __ATOMIC_RELAXED) == VGPU_MODE_ENFORCE) {
        int64_t now = vgpu_mono_ns();
        int in_flight = 0;
        for (int i = 0; i < vgpu_account_count; i++) {
            struct vgpu_limiter *lim = vgpu_limiters[i];
            if (!lim)
                continue;
            if (vgpu_helper.cuEventQuery)
                in_flight += poll_events(lim);
            settle_blind(lim, now);
            control(lim, now);
        }
        struct timespec nap = {0, in_flight ? POLL_NS : IDLE_POLL_NS};
        nanosleep(&nap, NULL);
    }
    return NULL;
}

void vgpu_limiter_monitor_start(void)
{
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    int expected = 0;
    if (VGPU_LIKELY(__atomic_load_n(&g_started, __ATOMIC_RELAXED)))
        return;
    if (!__atomic_compare_exchange_n(&g_started, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int rc = pthread_create(&thread, &attr, monitor, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        /* No thread, no timing: limiter.c charges every launch a fixed cost and holds soft caps. */
        __atomic_store_n(&g_failed, 1, __ATOMIC_RELEASE);
        for (int i = 0; i < vgpu_account_count; i++)
            if (vgpu_limiters[i])
                vgpu_limit_error(vgpu_limiters[i]->gpu, VGPU_ERRCALL_MONITOR, rc);
    }
}

int vgpu_limiter_monitor_failed(void)
{
    return __atomic_load_n(&g_failed, __ATOMIC_RELAXED);
}

void vgpu_limiter_monitor_forget(void)
{
    __atomic_store_n(&g_started, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&g_failed, 0, __ATOMIC_RELAXED);
}
