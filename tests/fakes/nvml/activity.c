/*
 * Live activity of a GPU: utilization and the compute processes using it.
 *
 * Utilization follows the fake CUDA driver when both share a node: with FAKE_CUDA_STATE naming
 * the fake driver's state file and the GPU's UUID among its devices, `gpu` is the percentage of
 * the last sample period (100 ms, like NVML's own sampling) the device spent running kernels of
 * any process (the sum of their device time, capped at 100). Otherwise both numbers come from
 * the inventory file.
 *
 * Processes and memory in use: the inventory's processes, plus (same condition) every live process
 * of the fake driver that holds a context or memory on the GPU, with the bytes it holds there.
 * NVML reports PIDs as the host sees them: FAKE_NVML_PID_OFFSET (default 0) is added to the
 * fake driver's PIDs and to `self`, as if every caller ran in a container whose PIDs differ from
 * the host's by that much. An inventory entry wins over a fake-driver process of the same PID.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "fake_nvml.h"

#define SAMPLE_PERIOD_NS 100000000LL

/* The fake driver's state, mapped read-only at the first utilization query; samples per device
 * slot of that state. Guarded by g_occ_lock. */
static pthread_mutex_t g_occ_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct fake_state *g_occ;
static char g_occ_path[4096]; /* FAKE_CUDA_STATE when g_occ was mapped: a test may switch it */
static struct {
    long long at_ns, busy_ns;
    unsigned int percent;
} g_sample[FAKE_MAX_DEVICES];

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const struct fake_state *occupancy(void)
{
    const char *path = getenv("FAKE_CUDA_STATE");
    struct stat st;
    int fd;
    if (!path)
        path = "";
    if (g_occ && strcmp(path, g_occ_path) == 0)
        return g_occ;
    /* Not mapped yet (the state file may appear later), or a test switched FAKE_CUDA_STATE. An
     * earlier mapping stays mapped: another thread may still read it. */
    g_occ = NULL;
    if (!*path || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return NULL;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(struct fake_state)) {
        void *map = mmap(NULL, sizeof(struct fake_state), PROT_READ, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED) {
            g_occ = map;
            snprintf(g_occ_path, sizeof(g_occ_path), "%s", path);
            memset(g_sample, 0, sizeof(g_sample));
        }
    }
    close(fd);
    return g_occ;
}

/* Utilization from the fake driver's occupancy; 0 when this GPU is not one of its devices. */
static int utilization_from_occupancy(const struct fake_gpu *gpu, unsigned int *percent)
{
    const struct fake_state *st;
    int found = 0;
    pthread_mutex_lock(&g_occ_lock);
    st = occupancy();
    for (int d = 0; st && d < FAKE_MAX_DEVICES && !found; d++) {
        if (strncmp(st->uuid[d], gpu->uuid, sizeof(st->uuid[d])) != 0)
            continue;
        found = 1;
        long long now = mono_ns(), busy = __atomic_load_n(&st->busy_ns[d], __ATOMIC_ACQUIRE);
        if (g_sample[d].at_ns == 0) {
            g_sample[d].at_ns = now;
            g_sample[d].busy_ns = busy;
        } else if (now - g_sample[d].at_ns >= SAMPLE_PERIOD_NS) {
            long long pct = (busy - g_sample[d].busy_ns) * 100 / (now - g_sample[d].at_ns);
            g_sample[d].percent = (unsigned int)(pct < 0 ? 0 : pct > 100 ? 100 : pct);
            g_sample[d].at_ns = now;
            g_sample[d].busy_ns = busy;
        }
        *percent = g_sample[d].percent;
    }
    pthread_mutex_unlock(&g_occ_lock);
    return found;
}

nvmlReturn_t fake_activity_utilization(const struct fake_gpu *gpu, nvmlUtilization_t *out)
{
    unsigned int live;
    if (utilization_from_occupancy(gpu, &live)) {
        out->gpu = live;
        out->memory = gpu->util_memory;
        return NVML_SUCCESS;
    }
    out->gpu = gpu->util_gpu;
    out->memory = gpu->util_memory;
    return NVML_SUCCESS;
}

static unsigned int pid_offset(void)
{
    const char *env = getenv("FAKE_NVML_PID_OFFSET");
    return env && *env ? (unsigned int)strtoul(env, NULL, 10) : 0;
}

unsigned int fake_activity_pid(const struct fake_process *process)
{
    return process->is_self ? (unsigned int)getpid() + pid_offset() : process->pid;
}

/* The GPU's processes: the inventory's, then the fake driver's live ones on it. Returns how
 * many there are (processes come and go: possibly more than cap); fills at most cap entries of
 * out (out may be NULL to count). */
static size_t list_processes(const struct fake_gpu *gpu, struct fake_listed *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < gpu->process_count; i++, n++)
        if (out && n < cap)
            out[n] = (struct fake_listed){fake_activity_pid(&gpu->processes[i]), gpu->processes[i].used_bytes};
    n = fake_live_processes(gpu, 0, out, cap, n);
    pthread_mutex_lock(&g_occ_lock);
    const struct fake_state *st = occupancy();
    pthread_mutex_unlock(&g_occ_lock);
    int dev = -1;
    for (int d = 0; st && d < FAKE_MAX_DEVICES && dev < 0; d++)
        if (strncmp(st->uuid[d], gpu->uuid, sizeof(st->uuid[d])) == 0)
            dev = d;
    if (dev < 0)
        return n;
    int high = __atomic_load_n(&st->proc_high_water, __ATOMIC_ACQUIRE);
    for (int i = 0; i < high && i < FAKE_MAX_PROCS; i++) {
        const struct fake_proc *p = &st->procs[i];
        int pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
        long long used = __atomic_load_n(&p->used[dev], __ATOMIC_RELAXED);
        int on_gpu = (__atomic_load_n(&p->ctx_mask, __ATOMIC_RELAXED) >> dev) & 1;
        if (pid <= 0 || (!on_gpu && used <= 0) || (kill(pid, 0) != 0 && errno == ESRCH))
            continue; /* a free entry, not on this GPU, or a killed process the driver reaped */
        unsigned int shown = (unsigned int)pid + pid_offset();
        int listed_already = 0;
        for (size_t k = 0; k < gpu->process_count; k++)
            listed_already |= fake_activity_pid(&gpu->processes[k]) == shown;
        if (listed_already)
            continue;
        if (out && n < cap)
            out[n] = (struct fake_listed){shown, used > 0 ? (unsigned long long)used : 0};
        n++;
    }
    return n;
}

unsigned long long fake_activity_used_bytes(const struct fake_gpu *gpu)
{
    size_t n = list_processes(gpu, NULL, 0);
    struct fake_listed *all = calloc(n ? n : 1, sizeof(*all));
    unsigned long long used = 0;
    if (!all)
        return 0;
    size_t cap = n;
    n = list_processes(gpu, all, cap);
    for (size_t i = 0; i < n && i < cap; i++)
        used += all[i].used;
    free(all);
    return used + fake_live_graphics_bytes(gpu);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    if (rc != NVML_SUCCESS)
        return rc;
    if (utilization == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fake_activity_utilization(device, utilization);
}

static nvmlReturn_t processes(nvmlDevice_t device, const char *function, unsigned int *count, void *infos, int v1)
{
    return fake_process_query(device, function, count, infos, v1, list_processes);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                      nvmlProcessInfo_t *infos)
{
    return processes(device, __func__, infoCount, infos, 0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                      nvmlProcessInfo_t *infos)
{
    return processes(device, __func__, infoCount, infos, 0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                                   nvmlProcessInfo_v1_t *infos)
{
    return processes(device, __func__, infoCount, infos, 1);
}
