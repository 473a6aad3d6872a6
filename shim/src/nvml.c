/*
 * NVML's view of a claimed GPU, consistent with cuMemGetInfo: memory info reports the claim's
 * limit and usage, process lists show only the claim's processes, and on a GPU with a core cap
 * utilization reports the claim's own measured share (what its cap is compared with). Devices in no claim, and every
 * other NVML call, go to the real library untouched. Real functions are resolved by exact name
 * from dlopen("libnvidia-ml.so.1") the first time one of these hooks runs.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_MEMORY 20

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

#define VGPU_NVML_HOOKS(X)                                                                            \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t d, nvmlMemory_t * m), (d, m))                            \
    X(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t d, nvmlMemory_v2_t * m), (d, m))                      \
    X(nvmlDeviceGetComputeRunningProcesses, (nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_v1_t *p),     \
      (d, n, p))                                                                                      \
    X(nvmlDeviceGetComputeRunningProcesses_v2, (nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_t *p),     \
      (d, n, p))                                                                                      \
    X(nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_t *p),     \
      (d, n, p))                                                                                      \
    X(nvmlDeviceGetUtilizationRates, (nvmlDevice_t d, nvmlUtilization_t * u), (d, u))

#define NVML_PFN(name, params, args) nvmlReturn_t(*name) params;
/* Written once under g_nvml_once, read-only afterwards. */
static struct {
    VGPU_NVML_HOOKS(NVML_PFN)
    nvmlReturn_t (*nvmlDeviceGetUUID)(nvmlDevice_t, char *, unsigned int);
} g_nvml;
#undef NVML_PFN
static pthread_once_t g_nvml_once = PTHREAD_ONCE_INIT;

static void nvml_resolve(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NODELETE);
    if (!h)
        return;
#define NVML_RESOLVE(name, params, args) *(void **)&g_nvml.name = vgpu_real_dlsym(h, #name);
    VGPU_NVML_HOOKS(NVML_RESOLVE)
#undef NVML_RESOLVE
    *(void **)&g_nvml.nvmlDeviceGetUUID = vgpu_real_dlsym(h, "nvmlDeviceGetUUID");
}

static void nvml_ensure(void)
{
    vgpu_ensure_init();
    pthread_once(&g_nvml_once, nvml_resolve);
}

#define NVML_DECLARE(name, params, args) nvmlReturn_t name params;
VGPU_NVML_HOOKS(NVML_DECLARE)
#undef NVML_DECLARE

void *vgpu_nvml_hook_for_real(void *real)
{
    nvml_ensure();
#define NVML_MATCH(name, params, args)                                                                \
    if (g_nvml.name && (void *)g_nvml.name == real)                                                   \
        return (void *)name;
    VGPU_NVML_HOOKS(NVML_MATCH)
#undef NVML_MATCH
    return NULL;
}

/* The claim account of an NVML device, or NULL when it is in no claim (or not enforcing). */
static struct vgpu_account *account_of(nvmlDevice_t d)
{
    char uuid[VGPU_UUID_LEN];
    if (vgpu_mode != VGPU_MODE_ENFORCE || !g_nvml.nvmlDeviceGetUUID ||
        g_nvml.nvmlDeviceGetUUID(d, uuid, sizeof(uuid)) != NVML_SUCCESS)
        return NULL;
    for (int i = 0; i < vgpu_account_count; i++)
        if (strncmp(vgpu_accounts[i].gpu->uuid, uuid, VGPU_UUID_LEN) == 0)
            return &vgpu_accounts[i];
    return NULL;
}

/* The same view as cuMemGetInfo: total = min(limit, card), free = what the claim may still get
 * (never more than the card has left), used = the claim's usage. */
static void memory_view(const struct vgpu_account *a, unsigned long long phys_total, unsigned long long phys_free,
                        unsigned long long *total, unsigned long long *used, unsigned long long *free_out)
{
    int64_t u, limit;
    vgpu_chain_totals(a, &limit, &u); /* a GPU in several claims: their sums */
    unsigned long long t = (unsigned long long)limit < phys_total ? (unsigned long long)limit : phys_total;
    unsigned long long uu = u <= 0 ? 0 : ((unsigned long long)u > t ? t : (unsigned long long)u);
    *total = t;
    *used = uu;
    *free_out = t - uu < phys_free ? t - uu : phys_free;
}

#define NVML_GATE(name, args)                                                                         \
    do {                                                                                              \
        nvml_ensure();                                                                                \
        if (!g_nvml.name)                                                                             \
            return NVML_ERROR_UNINITIALIZED;                                                          \
        if (vgpu_mode == VGPU_MODE_FAIL_CLOSED)                                                       \
            return NVML_ERROR_NO_PERMISSION;                                                          \
    } while (0)

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    NVML_GATE(nvmlDeviceGetMemoryInfo, (d, m));
    nvmlMemory_t real;
    nvmlReturn_t rc = g_nvml.nvmlDeviceGetMemoryInfo(d, m ? &real : NULL);
    if (rc != NVML_SUCCESS || !m)
        return rc;
    struct vgpu_account *a = account_of(d);
    if (a)
        memory_view(a, real.total, real.free, &real.total, &real.used, &real.free);
    *m = real;
    return NVML_SUCCESS;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    NVML_GATE(nvmlDeviceGetMemoryInfo_v2, (d, m));
    nvmlMemory_v2_t real;
    if (!m)
        return g_nvml.nvmlDeviceGetMemoryInfo_v2(d, m);
    real.version = m->version;
    nvmlReturn_t rc = g_nvml.nvmlDeviceGetMemoryInfo_v2(d, &real);
    if (rc != NVML_SUCCESS)
        return rc;
    struct vgpu_account *a = account_of(d);
    if (a) {
        /* Reserved memory is the driver's, outside any claim: report none inside the claim view. */
        memory_view(a, real.total, real.free, &real.total, &real.used, &real.free);
        real.reserved = 0;
    }
    *m = real;
    return NVML_SUCCESS;
}

/* Do NVML's PIDs differ from what the claim's processes call themselves (a container: NVML
 * reports host PIDs)? Known as soon as one live process of the claims learned its host PID. */
static int nvml_pids_foreign(const struct vgpu_account *head)
{
    for (const struct vgpu_account *a = head; a; a = a->next) {
        const struct vgpu_region *r = a->region->map;
        uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i < hw && i < VGPU_MAX_PROCS; i++) {
            int32_t host = __atomic_load_n(&r->procs[i].host_pid, __ATOMIC_ACQUIRE);
            if (host > 0 && host != __atomic_load_n(&r->procs[i].pid, __ATOMIC_RELAXED) &&
                __atomic_load_n(&r->procs[i].state, __ATOMIC_ACQUIRE) == VGPU_PROC_LIVE)
                return 1;
        }
    }
    return 0;
}

/* Is NVML's pid one of the live processes of a claim this process holds on the GPU? Matched by
 * the host PID the process learned (hostpid.c), else by its own PID while NVML's PIDs are not
 * known to be foreign. *shown: the PID to report, the process's own when it lives in our PID
 * namespace (so nvidia-smi in the pod shows the PIDs `ps` shows), else NVML's. */
static int claim_process(const struct vgpu_account *head, unsigned int pid, int foreign, uint64_t my_ns,
                         unsigned int *shown)
{
    for (const struct vgpu_account *a = head; a; a = a->next) {
        const struct vgpu_region *r = a->region->map;
        uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i < hw && i < VGPU_MAX_PROCS; i++) {
            const struct vgpu_proc *p = &r->procs[i];
            if (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != VGPU_PROC_LIVE)
                continue;
            int32_t host = __atomic_load_n(&p->host_pid, __ATOMIC_ACQUIRE);
            unsigned int own = (unsigned int)__atomic_load_n(&p->pid, __ATOMIC_RELAXED);
            if (host > 0 ? (unsigned int)host != pid : (foreign || own != pid))
                continue;
            *shown = host > 0 && my_ns != 0 && __atomic_load_n(&p->pid_ns, __ATOMIC_RELAXED) == my_ns ? own : pid;
            return 1;
        }
    }
    return 0;
}

/* NVML's two-call protocol over a filtered list: fetch everything, keep the claim's entries, then
 * answer the caller's buffer size like NVML would. `size` is the caller's element size; both
 * layouts start with the PID. */
typedef nvmlReturn_t (*list_fn)(nvmlDevice_t, unsigned int *, void *);
static nvmlReturn_t filtered_processes(list_fn real, nvmlDevice_t d, unsigned int *count, void *infos, size_t size)
{
    static uint64_t my_ns; /* this process's PID namespace, read once (any thread may race: same value) */
    struct vgpu_account *a = account_of(d);
    unsigned int n = 0, kept = 0;
    nvmlReturn_t rc;
    unsigned char *all;
    if (!a || !count)
        return real(d, count, infos);
    rc = real(d, &n, NULL);
    if (rc != NVML_SUCCESS && rc != NVML_ERROR_INSUFFICIENT_SIZE)
        return rc;
    n += 8; /* processes may start between the two calls */
    all = calloc(n, size);
    if (!all)
        return NVML_ERROR_MEMORY;
    rc = real(d, &n, all);
    if (rc != NVML_SUCCESS) {
        free(all);
        return rc;
    }
    if (!__atomic_load_n(&my_ns, __ATOMIC_RELAXED))
        __atomic_store_n(&my_ns, vgpu_pid_namespace(), __ATOMIC_RELAXED);
    int foreign = nvml_pids_foreign(a);
    for (unsigned int i = 0; i < n; i++) {
        unsigned int pid, shown;
        memcpy(&pid, all + i * size, sizeof(pid));
        if (claim_process(a, pid, foreign, __atomic_load_n(&my_ns, __ATOMIC_RELAXED), &shown)) {
            if (kept != i)
                memmove(all + kept * size, all + i * size, size);
            memcpy(all + kept * size, &shown, sizeof(shown));
            kept++;
        }
    }
    if (*count < kept || (!infos && kept > 0)) {
        *count = kept;
        free(all);
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (kept)
        memcpy(infos, all, kept * size);
    *count = kept;
    free(all);
    return NVML_SUCCESS;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *n,
                                                              nvmlProcessInfo_v1_t *p)
{
    NVML_GATE(nvmlDeviceGetComputeRunningProcesses, (d, n, p));
    return filtered_processes((list_fn)g_nvml.nvmlDeviceGetComputeRunningProcesses, d, n, p, sizeof(*p));
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *n,
                                                                 nvmlProcessInfo_t *p)
{
    NVML_GATE(nvmlDeviceGetComputeRunningProcesses_v2, (d, n, p));
    return filtered_processes((list_fn)g_nvml.nvmlDeviceGetComputeRunningProcesses_v2, d, n, p, sizeof(*p));
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *n,
                                                                 nvmlProcessInfo_t *p)
{
    NVML_GATE(nvmlDeviceGetComputeRunningProcesses_v3, (d, n, p));
    return filtered_processes((list_fn)g_nvml.nvmlDeviceGetComputeRunningProcesses_v3, d, n, p, sizeof(*p));
}

/* GPU utilization as the claim sees it: with a core cap, the claim's measured share of the GPU's
 * time (the limiter measures it only where a cap exists); memory utilization stays physical. */
VGPU_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u)
{
    NVML_GATE(nvmlDeviceGetUtilizationRates, (d, u));
    nvmlUtilization_t real;
    nvmlReturn_t rc = g_nvml.nvmlDeviceGetUtilizationRates(d, u ? &real : NULL);
    if (rc != NVML_SUCCESS || !u)
        return rc;
    struct vgpu_account *a = account_of(d);
    /* The GPU's lanes (one per capped claim of this process, limiter.c): their shares added up,
     * as their caps are. */
    struct vgpu_limiter *lim = a ? vgpu_limiters[a - vgpu_accounts] : NULL;
    if (lim) {
        int64_t ppm = 0;
        for (; lim; lim = lim->next_lane)
            ppm += __atomic_load_n(&lim->gpu->measured_share_ppm, __ATOMIC_RELAXED);
        real.gpu = ppm <= 0 ? 0 : ppm >= 1000000 ? 100 : (unsigned int)((ppm + 5000) / 10000);
    }
    *u = real;
    return NVML_SUCCESS;
}
