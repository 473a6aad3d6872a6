/*
 * Kernel launches, streams, events and graph launches of the fake driver: a simulated device that
 * takes time. A kernel occupies its stream for (threads in the launch) x FAKE_CUDA_NS_PER_THREAD;
 * work on one stream runs in order, streams run side by side (as kernels of different streams and
 * processes share a big GPU's SMs). Launches are asynchronous like the real thing: they return at
 * once and the work "completes" on the CLOCK_MONOTONIC timeline, which every process shares; a
 * stream holding more than FAKE_CUDA_QUEUE_NS of queued work blocks the next launch (a real GPU's
 * launch queue is finite too). Every submitted kernel adds its duration to the device's busy
 * counter in the shared state file; the fake NVML turns that into utilization.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_cuda.h"

#define LEGACY_STREAM ((CUstream)0x1)     /* CU_STREAM_LEGACY */
#define PER_THREAD_STREAM ((CUstream)0x2) /* CU_STREAM_PER_THREAD */
#define MAX_STREAMS 4096
#define GRAPH_MAGIC 0x4850415247454b46ULL /* "FKEGRAPH" */

struct CUstream_st {
    int dev;
    int64_t last_end; /* when the last work queued on this stream completes (ns, monotonic) */
};

struct CUevent_st {
    int recorded;
    int64_t at; /* completion time of the work queued before the record */
};

struct CUgraphExec_st {
    uint64_t magic;
    int64_t ns; /* device time of one replay */
};

/* Set once by the constructor below, read-only afterwards. */
static int64_t g_ns_per_thread = 1;
static int64_t g_queue_ns = 20000000;

/* Every stream this process ever used, so the completed busy time can be computed. Entries are
 * appended under g_streams_lock and never removed (a destroyed stream's work still counted). */
static pthread_mutex_t g_streams_lock = PTHREAD_MUTEX_INITIALIZER;
static struct CUstream_st *g_streams[MAX_STREAMS];
static int g_stream_count;
static struct CUstream_st g_legacy[FAKE_MAX_DEVICES];
static int g_legacy_registered[FAKE_MAX_DEVICES];
static __thread struct CUstream_st *t_per_thread[FAKE_MAX_DEVICES];
/* Device time this process submitted, per device (atomics). */
static int64_t g_submitted[FAKE_MAX_DEVICES];
static __thread unsigned long long t_launches;

__attribute__((constructor)) static void launch_load(void)
{
    const char *per = getenv("FAKE_CUDA_NS_PER_THREAD");
    const char *queue = getenv("FAKE_CUDA_QUEUE_NS");
    if (per && *per)
        g_ns_per_thread = atoll(per);
    if (queue && *queue)
        g_queue_ns = atoll(queue);
}

int64_t fake_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    if (ns > 0)
        nanosleep(&ts, NULL);
}

static void register_stream(struct CUstream_st *s)
{
    pthread_mutex_lock(&g_streams_lock);
    if (g_stream_count < MAX_STREAMS)
        g_streams[g_stream_count++] = s;
    pthread_mutex_unlock(&g_streams_lock);
}

/* The stream a launch or record on handle s uses; NULL when there is no context to use. */
static struct CUstream_st *resolve_stream(CUstream s, int per_thread_default)
{
    int dev;
    if (s && s != LEGACY_STREAM && s != PER_THREAD_STREAM)
        return s;
    dev = fake_current_device();
    if (dev < 0)
        return NULL;
    if (s == PER_THREAD_STREAM || (!s && per_thread_default)) {
        if (!t_per_thread[dev]) {
            t_per_thread[dev] = calloc(1, sizeof(struct CUstream_st));
            t_per_thread[dev]->dev = dev;
            register_stream(t_per_thread[dev]);
        }
        return t_per_thread[dev];
    }
    pthread_mutex_lock(&g_streams_lock);
    if (!g_legacy_registered[dev]) {
        g_legacy[dev].dev = dev;
        g_legacy_registered[dev] = 1;
        if (g_stream_count < MAX_STREAMS)
            g_streams[g_stream_count++] = &g_legacy[dev];
    }
    pthread_mutex_unlock(&g_streams_lock);
    return &g_legacy[dev];
}

/* Queue ns of device time on stream s (blocking while the stream's queue is full). */
static CUresult occupy(CUstream handle, int per_thread_default, int64_t ns)
{
    struct CUstream_st *s;
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    s = resolve_stream(handle, per_thread_default);
    if (!s)
        return CUDA_ERROR_INVALID_CONTEXT;
    for (;;) {
        int64_t now = fake_now_ns();
        int64_t end0 = __atomic_load_n(&s->last_end, __ATOMIC_ACQUIRE);
        if (end0 - now > g_queue_ns) {
            sleep_ns(end0 - now - g_queue_ns);
            continue;
        }
        int64_t start = end0 > now ? end0 : now;
        if (__atomic_compare_exchange_n(&s->last_end, &end0, start + ns, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            break;
    }
    __atomic_add_fetch(&g_submitted[s->dev], ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_fake_state->busy_ns[s->dev], ns, __ATOMIC_RELAXED);
    t_launches++;
    return CUDA_SUCCESS;
}

static int64_t kernel_ns(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz)
{
    return (int64_t)gx * gy * gz * bx * by * bz * g_ns_per_thread;
}

#define KERNEL(stream, ptsz)                                                                          \
    do {                                                                                              \
        (void)f, (void)shmem, (void)params;                                                           \
        if (fake_should_fail(__func__))                                                               \
            return (CUresult)fake_should_fail(__func__);                                                                \
        if (!gx || !gy || !gz || !bx || !by || !bz)                                                   \
            return CUDA_ERROR_INVALID_VALUE;                                                          \
        return occupy(stream, ptsz, kernel_ns(gx, gy, gz, bx, by, bz));                               \
    } while (0)

FAKE_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                    void **extra)
{
    (void)extra;
    KERNEL(s, 0);
}

FAKE_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                         unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                         CUstream s, void **params, void **extra)
{
    (void)extra;
    KERNEL(s, 1);
}

static CUresult launch_ex(const CUlaunchConfig *c, int ptsz)
{
    if (!c)
        return CUDA_ERROR_INVALID_VALUE;
    if (!c->gridDimX || !c->gridDimY || !c->gridDimZ || !c->blockDimX || !c->blockDimY || !c->blockDimZ)
        return CUDA_ERROR_INVALID_VALUE;
    return occupy(c->hStream, ptsz,
                  kernel_ns(c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ));
}

FAKE_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)f, (void)params, (void)extra;
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    return launch_ex(c, 0);
}

FAKE_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)f, (void)params, (void)extra;
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    return launch_ex(c, 1);
}

FAKE_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                               CUstream s, void **params)
{
    KERNEL(s, 0);
}

FAKE_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                    unsigned int bx, unsigned int by, unsigned int bz,
                                                    unsigned int shmem, CUstream s, void **params)
{
    KERNEL(s, 1);
}

static CUresult graph_launch(CUgraphExec g, CUstream s, int ptsz)
{
    if (!g || g->magic != GRAPH_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    return occupy(s, ptsz, g->ns);
}

FAKE_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    return graph_launch(g, s, 0);
}

FAKE_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    return graph_launch(g, s, 1);
}

FAKE_EXPORT CUresult cuGraphExecDestroy(CUgraphExec g)
{
    if (!g || g->magic != GRAPH_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    g->magic = 0;
    free(g);
    return CUDA_SUCCESS;
}

/* ---- streams -------------------------------------------------------------------------------- */

FAKE_EXPORT CUresult cuStreamCreate(CUstream *out, unsigned int flags)
{
    (void)flags;
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    int dev = fake_current_device();
    if (dev < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUstream_st *s = calloc(1, sizeof(*s));
    s->dev = dev;
    register_stream(s);
    *out = s;
    return CUDA_SUCCESS;
}

/* The stream stays registered (its submitted work still counts); the handle must not be reused. */
FAKE_EXPORT CUresult cuStreamDestroy_v2(CUstream s)
{
    if (!s || s == LEGACY_STREAM || s == PER_THREAD_STREAM)
        return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_SUCCESS;
}

static CUresult wait_stream(struct CUstream_st *s)
{
    if (!s)
        return CUDA_ERROR_INVALID_CONTEXT;
    sleep_ns(__atomic_load_n(&s->last_end, __ATOMIC_ACQUIRE) - fake_now_ns());
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamSynchronize(CUstream s)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    return wait_stream(resolve_stream(s, 0));
}

FAKE_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s)
{
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    return wait_stream(resolve_stream(s, 1));
}

FAKE_EXPORT CUresult cuCtxSynchronize(void)
{
    int64_t last = 0;
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_lock(&g_streams_lock);
    for (int i = 0; i < g_stream_count; i++) {
        int64_t e = __atomic_load_n(&g_streams[i]->last_end, __ATOMIC_ACQUIRE);
        if (e > last)
            last = e;
    }
    pthread_mutex_unlock(&g_streams_lock);
    sleep_ns(last - fake_now_ns());
    return CUDA_SUCCESS;
}

/* Stream capture is not simulated: no stream is ever capturing (unless FAKE_CUDA_FAIL makes the
 * query fail, as some drivers answer CUDA_ERROR_NOT_SUPPORTED, 801). */
FAKE_EXPORT CUresult cuStreamIsCapturing(CUstream s, int *status)
{
    (void)s;
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    *status = 0; /* CU_STREAM_CAPTURE_STATUS_NONE */
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuThreadExchangeStreamCaptureMode(int *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    *mode = 0; /* the previous mode: CU_STREAM_CAPTURE_MODE_GLOBAL */
    return CUDA_SUCCESS;
}

/* ---- events: the time the stream's queued work completes ------------------------------------ */
/* The "no-events" variant (Makefile) lacks the whole event API, like a minimal driver. */
#ifndef FAKE_OMIT_EVENTS

FAKE_EXPORT CUresult cuEventCreate(CUevent *out, unsigned int flags)
{
    (void)flags;
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_current_device() < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = calloc(1, sizeof(struct CUevent_st));
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventDestroy_v2(CUevent e)
{
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}

static CUresult record(CUevent e, CUstream handle, int ptsz)
{
    struct CUstream_st *s;
    if (!g_fake_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    s = resolve_stream(handle, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_CONTEXT;
    int64_t now = fake_now_ns(), end = __atomic_load_n(&s->last_end, __ATOMIC_ACQUIRE);
    __atomic_store_n(&e->at, end > now ? end : now, __ATOMIC_RELAXED);
    __atomic_store_n(&e->recorded, 1, __ATOMIC_RELEASE);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventRecord(CUevent e, CUstream s)
{
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    return record(e, s, 0);
}

FAKE_EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s)
{
    return record(e, s, 1);
}

FAKE_EXPORT CUresult cuEventQuery(CUevent e)
{
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!__atomic_load_n(&e->recorded, __ATOMIC_ACQUIRE))
        return CUDA_SUCCESS; /* as CUDA: an event never recorded has nothing to wait for */
    return fake_now_ns() >= __atomic_load_n(&e->at, __ATOMIC_RELAXED) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

FAKE_EXPORT CUresult cuEventSynchronize(CUevent e)
{
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    if (__atomic_load_n(&e->recorded, __ATOMIC_ACQUIRE))
        sleep_ns(__atomic_load_n(&e->at, __ATOMIC_RELAXED) - fake_now_ns());
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end)
{
    if (fake_should_fail(__func__))
        return (CUresult)fake_should_fail(__func__);
    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    if (!start || !end || !__atomic_load_n(&start->recorded, __ATOMIC_ACQUIRE) ||
        !__atomic_load_n(&end->recorded, __ATOMIC_ACQUIRE))
        return CUDA_ERROR_INVALID_HANDLE;
    int64_t now = fake_now_ns();
    if (now < start->at || now < end->at)
        return CUDA_ERROR_NOT_READY;
    *ms = (float)((double)(end->at - start->at) / 1e6);
    return CUDA_SUCCESS;
}

#endif /* FAKE_OMIT_EVENTS */

/* ---- test hooks (not CUDA APIs) ------------------------------------------------------------- */

/* Launches this thread made. */
FAKE_EXPORT unsigned long long fakeCudaLaunchCount(void)
{
    return t_launches;
}

/* Device time of this process's kernels on dev that has completed by now (ground truth). */
FAKE_EXPORT long long fakeCudaBusyNs(int dev)
{
    int64_t now = fake_now_ns(), pending = 0;
    if (dev < 0 || dev >= FAKE_MAX_DEVICES)
        return -1;
    int64_t submitted = __atomic_load_n(&g_submitted[dev], __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&g_streams_lock);
    for (int i = 0; i < g_stream_count; i++) {
        if (g_streams[i]->dev != dev)
            continue;
        int64_t left = __atomic_load_n(&g_streams[i]->last_end, __ATOMIC_ACQUIRE) - now;
        if (left > 0)
            pending += left;
    }
    pthread_mutex_unlock(&g_streams_lock);
    return submitted - pending;
}

/* Stands in for cuGraphInstantiate: an executable graph whose replay takes ns of device time. */
FAKE_EXPORT CUresult fakeCudaGraphExecCreate(CUgraphExec *out, long long ns)
{
    if (!out || ns <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *g = calloc(1, sizeof(*g));
    g->magic = GRAPH_MAGIC;
    g->ns = ns;
    *out = g;
    return CUDA_SUCCESS;
}
