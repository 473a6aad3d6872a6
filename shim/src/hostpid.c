/*
 * This process's PID as NVML reports it (the host's PID, in a container), learned once and kept
 * in its slots of the claims' regions, so that NVML process lists inside the pod can show the
 * pod's own processes (nvml.c) although NVML speaks of host PIDs the container cannot see.
 *
 * The only party that knows both PIDs is nobody: the kernel hides the host PID from the container,
 * and NVML does not know the container. So the process recognises itself by what it does: at one
 * of its own device allocations of at least LEARN_MIN_BYTES, it reads NVML's process list of the
 * GPU before and after the driver call. The PID whose usage grew by that allocation (allowing for
 * the driver's page rounding), and nobody else's, is this process. An ambiguous or failed round
 * (another process allocating the same amount at that instant, a driver that serves the allocation
 * from memory it already held) records nothing and a later allocation tries again, at most
 * LEARN_TRIES times. A wrong guess is never recorded: a PID another slot of the claim already
 * holds, or two candidates, are no answer. The cost (two NVML list calls) falls on that one
 * allocation per process, never on cuInit or context creation; nothing here decides a limit.
 * The claim's first process on a GPU learns it already at its first context (hooks_ctx.c: the one
 * PID that appeared across the creation).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu_internal.h"

#define LEARN_MIN_BYTES (2LL << 20) /* the driver's large page: smaller allocations may not show */
#define PAGE_BYTES (2LL << 20)
#define LEARN_TRIES 8
#define MAX_LISTED 1024
#define PROBE_TRIES 4
#define PROBE_PAGES_MIN 2 /* a context probe is 2, 3 or 4 large pages (4, 6 or 8 MiB) */
#define PROBE_PAGES_SPREAD 3

/* Process-local: 0 still learning, 1 learned, -1 gave up. Reset in a fork child. */
int vgpu_hostpid_state;
static int g_tries;
static int g_probing; /* one probe at a time (CAS) */

struct vgpu_nvml_snapshot {
    unsigned int count;
    struct vgpu_nvml_process entries[MAX_LISTED];
};

static int take(void *device, struct vgpu_nvml_snapshot *s)
{
    const struct vgpu_nvml_api *nvml = vgpu_nvml();
    s->count = MAX_LISTED;
    return nvml && nvml->processes && nvml->processes(device, &s->count, s->entries) == 0 ? 0 : -1;
}

static const struct vgpu_nvml_process *listed(const struct vgpu_nvml_snapshot *s, unsigned int pid)
{
    for (unsigned int i = 0; i < s->count; i++)
        if (s->entries[i].pid == pid)
            return &s->entries[i];
    return NULL; /* not listed: no context there */
}

static long long used_by(const struct vgpu_nvml_snapshot *s, unsigned int pid)
{
    const struct vgpu_nvml_process *p = listed(s, pid);
    return p ? (long long)p->used_gpu_memory : 0;
}

struct vgpu_nvml_snapshot *vgpu_nvml_snapshot(const char *uuid)
{
    void *device = vgpu_nvml_device(uuid);
    struct vgpu_nvml_snapshot *s = device ? malloc(sizeof(*s)) : NULL;
    if (s && take(device, s) != 0) {
        free(s);
        s = NULL;
    }
    return s;
}

int vgpu_nvml_newcomers(const struct vgpu_nvml_snapshot *before, const struct vgpu_nvml_snapshot *after,
                        unsigned int *pid, int64_t *used)
{
    int found = 0;
    *used = 0;
    for (unsigned int i = 0; i < after->count; i++)
        if (!listed(before, after->entries[i].pid)) {
            int64_t bytes = (int64_t)(after->entries[i].used_gpu_memory > (unsigned long long)INT64_MAX
                                          ? INT64_MAX
                                          : after->entries[i].used_gpu_memory);
            *pid = after->entries[i].pid;
            if (bytes > *used)
                *used = bytes;
            found++;
        }
    return found;
}

/* Records pid as this process's host PID in its slot of every claim it holds. */
static void record(unsigned int pid)
{
    uint64_t ns = vgpu_pid_namespace();
    for (int i = 0; i < vgpu_account_count; i++) {
        struct vgpu_attached_region *r = vgpu_accounts[i].region;
        if (r->slot < 0)
            continue;
        __atomic_store_n(&r->map->procs[r->slot].pid_ns, ns, __ATOMIC_RELAXED);
        __atomic_store_n(&r->map->procs[r->slot].host_pid, (int32_t)pid, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&vgpu_hostpid_state, 1, __ATOMIC_RELAXED);
}

void vgpu_hostpid_record(unsigned int pid)
{
    if (pid > 0 && pid <= 0x7fffffffu && __atomic_load_n(&vgpu_hostpid_state, __ATOMIC_RELAXED) != 1)
        record(pid);
}

/* Is pid already the learned host PID of another live slot of one of our claims on the GPU? */
static int claimed_by_another(const struct vgpu_account *head, unsigned int pid)
{
    for (const struct vgpu_account *a = head; a; a = a->next) {
        const struct vgpu_region *r = a->region->map;
        uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i < hw && i < VGPU_MAX_PROCS; i++)
            if ((int)i != a->region->slot &&
                __atomic_load_n(&r->procs[i].state, __ATOMIC_ACQUIRE) == VGPU_PROC_LIVE &&
                (unsigned int)__atomic_load_n(&r->procs[i].host_pid, __ATOMIC_RELAXED) == pid)
                return 1;
    }
    return 0;
}

uint64_t vgpu_pid_namespace(void)
{
    char link[64];
    ssize_t n = readlink("/proc/self/ns/pid", link, sizeof(link) - 1);
    const char *p;
    uint64_t ino = 0;
    if (n <= 0)
        return 0;
    link[n] = '\0';
    p = strchr(link, '[');
    for (p = p ? p + 1 : link + n; *p >= '0' && *p <= '9'; p++)
        ino = ino * 10 + (uint64_t)(*p - '0');
    return ino;
}

int vgpu_hostpid_begin(struct vgpu_pid_probe *probe, struct vgpu_account *acct, int64_t bytes)
{
    int expected = 0;
    if (bytes < LEARN_MIN_BYTES || __atomic_load_n(&vgpu_hostpid_state, __ATOMIC_RELAXED) != 0 ||
        !__atomic_compare_exchange_n(&g_probing, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 0;
    char uuid[VGPU_UUID_LEN];
    memcpy(uuid, acct->gpu->uuid, sizeof(uuid));
    uuid[sizeof(uuid) - 1] = '\0';
    probe->head = acct->head;
    probe->bytes = bytes;
    probe->device = vgpu_nvml_device(uuid);
    probe->before = probe->device ? malloc(sizeof(struct vgpu_nvml_snapshot)) : NULL;
    if (!probe->before || take(probe->device, probe->before) != 0) {
        free(probe->before);
        if (!probe->device || ++g_tries >= LEARN_TRIES)
            __atomic_store_n(&vgpu_hostpid_state, -1, __ATOMIC_RELAXED); /* no NVML: nothing to learn from */
        __atomic_store_n(&g_probing, 0, __ATOMIC_RELEASE);
        return 0;
    }
    return 1;
}

/* The one PID whose NVML usage grew by [low, high] from before to after and that no other live
 * slot of head's claims holds: 1 with it in *pid, else 0 (none, or two at once). The largest
 * usage before of all such PIDs goes to *largest (-1 when there is none). */
static int grown_by(const struct vgpu_nvml_snapshot *before, const struct vgpu_nvml_snapshot *after, long long low,
                    long long high, const struct vgpu_account *head, unsigned int *pid, long long *largest)
{
    unsigned int found = 0, candidates = 0;
    *largest = -1;
    for (unsigned int i = 0; i < after->count; i++) {
        unsigned int p = after->entries[i].pid;
        long long had = used_by(before, p), grew = (long long)after->entries[i].used_gpu_memory - had;
        if (grew >= low && grew <= high && !claimed_by_another(head, p)) {
            found = p;
            candidates++;
            if (had > *largest)
                *largest = had;
        }
    }
    *pid = found;
    return candidates == 1 && found > 0 && found <= 0x7fffffffu;
}

/* What NVML may show for an allocation of bytes: the bytes up to the driver's page rounding. */
static long long upper_of(int64_t bytes)
{
    return (bytes + PAGE_BYTES - 1) / PAGE_BYTES * PAGE_BYTES + PAGE_BYTES;
}

void vgpu_hostpid_end(struct vgpu_pid_probe *probe, CUresult rc)
{
    struct vgpu_nvml_snapshot *after = rc == CUDA_SUCCESS ? malloc(sizeof(*after)) : NULL;
    unsigned int found = 0;
    long long largest;
    if (after && take(probe->device, after) == 0 &&
        grown_by(probe->before, after, probe->bytes, upper_of(probe->bytes), probe->head, &found, &largest)) {
        record(found);
    } else if (rc == CUDA_SUCCESS && ++g_tries >= LEARN_TRIES) {
        __atomic_store_n(&vgpu_hostpid_state, -1, __ATOMIC_RELAXED);
    }
    free(after);
    free(probe->before);
    __atomic_store_n(&g_probing, 0, __ATOMIC_RELEASE);
}

/*
 * The claim's first process on a GPU measures its context after the creating call returned
 * (hooks_ctx.c, ctx_deferred.c): with the context current, NVML's process list is read around a
 * small allocation of the shim's own. The one PID that grew by it is this process (its host PID is
 * recorded on the way), and its usage before the probe is the context. The probe's size differs
 * between tries and processes (4, 6 or 8 MiB), so two first processes probing at the same moment
 * tell themselves apart on a retry. The probe's bytes (at most VGPU_CONTEXT_PROBE_MAX_BYTES) are
 * covered by the caller's reservation; a probe the driver would not free again is added to *stuck
 * (it stays charged). The footprint, or -1 when it could not be told. Then *bound is an upper bound
 * of it when a try had several candidates (this process among them: the largest of their usages
 * before the probe, over all tries), else -1.
 */
int64_t vgpu_hostpid_probe_context(struct vgpu_account *acct, CUcontext ctx, int64_t *stuck, int64_t *bound)
{
    char uuid[VGPU_UUID_LEN];
    int64_t footprint = -1;
    CUcontext popped;
    *stuck = 0;
    *bound = -1;
    memcpy(uuid, acct->gpu->uuid, sizeof(uuid));
    uuid[sizeof(uuid) - 1] = '\0';
    void *device = vgpu_nvml_device(uuid);
    struct vgpu_nvml_snapshot *before = device ? malloc(2 * sizeof(*before)) : NULL;
    if (!before || !vgpu_real.cuMemAlloc_v2 || !vgpu_real.cuMemFree_v2 || !vgpu_helper.cuCtxPushCurrent_v2 ||
        vgpu_helper.cuCtxPushCurrent_v2(ctx) != CUDA_SUCCESS) {
        free(before);
        return -1;
    }
    struct vgpu_nvml_snapshot *after = before + 1;
    int slot = acct->region->slot < 0 ? 0 : acct->region->slot;
    for (int attempt = 0; attempt < PROBE_TRIES && footprint < 0; attempt++) {
        int64_t bytes = (int64_t)(PROBE_PAGES_MIN + (slot + attempt) % PROBE_PAGES_SPREAD) * PAGE_BYTES;
        CUdeviceptr p = 0;
        unsigned int pid = 0;
        if (take(device, before) != 0)
            break;
        CUresult rc = vgpu_real.cuMemAlloc_v2(&p, (size_t)bytes);
        int seen = rc == CUDA_SUCCESS && take(device, after) == 0;
        CUresult freed = rc == CUDA_SUCCESS ? vgpu_real.cuMemFree_v2(p) : CUDA_SUCCESS;
        if (freed != CUDA_SUCCESS) {
            *stuck += bytes;
            vgpu_limit_error(acct->gpu, VGPU_ERRCALL_UNDO, freed);
        }
        if (!seen || freed != CUDA_SUCCESS)
            break;
        long long largest;
        if (grown_by(before, after, bytes, upper_of(bytes), acct->head, &pid, &largest)) {
            footprint = used_by(before, pid);
            record(pid);
            break;
        }
        if (largest > *bound)
            *bound = largest; /* this process is one of the candidates (in some try, at least) */
        if (attempt + 1 < PROBE_TRIES) {
            /* First processes of different claims have the same slot, so the same probe sizes:
             * started together (one workload's pods), they can stay in step through every try.
             * A pause that differs between processes (1-8 ms) takes them out of step. */
            usleep((useconds_t)(1 + getpid() % 8) * 1000);
        }
    }
    vgpu_helper.cuCtxPopCurrent_v2(&popped);
    free(before);
    return footprint;
}

void vgpu_hostpid_forget(void)
{
    __atomic_store_n(&vgpu_hostpid_state, 0, __ATOMIC_RELAXED);
    g_tries = 0;
    g_probing = 0;
}
