/* Devices, the shared usage state and fault injection of the fake driver. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_cuda.h"

struct fake_device g_fake_devices[FAKE_MAX_DEVICES];
int g_fake_device_count;
int64_t g_fake_ctx_bytes;
struct fake_state *g_fake_state;
struct fake_proc *g_fake_me;
int g_fake_initialized;
static char g_fail[1024];

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void add_device(const char *uuid, long long bytes)
{
    struct fake_device *d = &g_fake_devices[g_fake_device_count];
    int n = 0;
    snprintf(d->uuid_text, sizeof(d->uuid_text), "%s", uuid);
    for (const char *p = uuid + 4; *p && n < 32; p++) {
        int v = hexval(*p);
        if (v < 0)
            continue;
        d->uuid.bytes[n / 2] = (char)(d->uuid.bytes[n / 2] | (v << ((n % 2) ? 0 : 4)));
        n++;
    }
    d->capacity = bytes;
    g_fake_device_count++;
}

static void parse_devices(void)
{
    const char *env = getenv("FAKE_CUDA_DEVICES");
    char buf[2048];
    if (!env || !*env) {
        add_device("GPU-00000000-0000-0000-0000-000000000000", 16LL << 30);
        return;
    }
    snprintf(buf, sizeof(buf), "%s", env);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && g_fake_device_count < FAKE_MAX_DEVICES;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            fprintf(stderr, "fake-cuda: FAKE_CUDA_DEVICES entry '%s' lacks =bytes\n", tok);
            continue;
        }
        *eq = '\0';
        add_device(tok, atoll(eq + 1));
    }
}

/* Frees the entry of pid (once: whoever takes it first) and the device memory it held. */
static void release(struct fake_proc *p, int pid)
{
    if (!__atomic_compare_exchange_n(&p->pid, &pid, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    for (int d = 0; d < FAKE_MAX_DEVICES; d++)
        __atomic_sub_fetch(&g_fake_state->used[d], __atomic_exchange_n(&p->used[d], 0, __ATOMIC_ACQ_REL),
                           __ATOMIC_ACQ_REL);
    __atomic_store_n(&p->pid, 0, __ATOMIC_RELEASE);
}

/* A process that died keeps its memory until someone notices, like a driver reaping a client. */
static void reap_dead(void)
{
    int hw = __atomic_load_n(&g_fake_state->proc_high_water, __ATOMIC_ACQUIRE);
    for (int i = 0; i < hw && i < FAKE_MAX_PROCS; i++) {
        struct fake_proc *p = &g_fake_state->procs[i];
        int pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
        if (pid <= 0 || p == g_fake_me || kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        release(p, pid);
    }
}

/* Entries of this PID found at load belong to an image that exec replaced (a fork child does not
 * load again): its contexts and memory went with it, as the real driver's do when exec closes its
 * device files. */
static void release_replaced_image(int me)
{
    int hw = __atomic_load_n(&g_fake_state->proc_high_water, __ATOMIC_ACQUIRE);
    for (int i = 0; i < hw && i < FAKE_MAX_PROCS; i++)
        release(&g_fake_state->procs[i], me);
}

static struct fake_proc *try_claim(int me)
{
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        int expected = 0;
        if (!__atomic_compare_exchange_n(&g_fake_state->procs[i].pid, &expected, me, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue;
        memset(g_fake_state->procs[i].used, 0, sizeof(g_fake_state->procs[i].used));
        __atomic_store_n(&g_fake_state->procs[i].ctx_mask, 0, __ATOMIC_RELEASE);
        int hw = __atomic_load_n(&g_fake_state->proc_high_water, __ATOMIC_RELAXED);
        while (hw < i + 1 && !__atomic_compare_exchange_n(&g_fake_state->proc_high_water, &hw, i + 1, 1,
                                                          __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            ;
        return &g_fake_state->procs[i];
    }
    return NULL;
}

static struct fake_proc *claim_proc(void)
{
    struct fake_proc *p = try_claim(getpid());
    if (!p) {
        reap_dead(); /* entries of killed processes become free */
        p = try_claim(getpid());
    }
    if (!p) {
        fprintf(stderr, "fake-cuda: more than %d processes\n", FAKE_MAX_PROCS);
        abort();
    }
    return p;
}

static void after_fork_child(void)
{
    g_fake_me = claim_proc();
    fake_contexts_forget();
}

__attribute__((constructor)) static void fake_load(void)
{
    const char *path = getenv("FAKE_CUDA_STATE");
    const char *ctx = getenv("FAKE_CUDA_CTX_BYTES");
    const char *fail = getenv("FAKE_CUDA_FAIL");
    parse_devices();
    g_fake_ctx_bytes = ctx ? atoll(ctx) : 0;
    if (fail)
        snprintf(g_fail, sizeof(g_fail), ",%s,", fail);
    if (path && *path) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || flock(fd, LOCK_EX) != 0) {
            perror("fake-cuda: state file");
            abort();
        }
        if (lseek(fd, 0, SEEK_END) < (off_t)sizeof(struct fake_state) && ftruncate(fd, sizeof(struct fake_state)))
            abort();
        g_fake_state = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (g_fake_state == MAP_FAILED)
            abort();
        if (g_fake_state->magic == 0)
            g_fake_state->magic = FAKE_STATE_MAGIC;
        flock(fd, LOCK_UN);
        close(fd);
    } else {
        g_fake_state = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                            -1, 0);
        g_fake_state->magic = FAKE_STATE_MAGIC;
    }
    /* Publish the device UUIDs next to their occupancy, so the fake NVML can find a device's
     * utilization by UUID (every process of one node sets the same FAKE_CUDA_DEVICES). */
    for (int d = 0; d < g_fake_device_count; d++)
        if (g_fake_state->uuid[d][0] == '\0')
            memcpy(g_fake_state->uuid[d], g_fake_devices[d].uuid_text, sizeof(g_fake_state->uuid[d]));
    release_replaced_image(getpid());
    g_fake_me = claim_proc();
    pthread_atfork(NULL, NULL, after_fork_child);
}

/* The process slot is given back at normal exit; kill -9 leaves it to reap_dead. */
__attribute__((destructor)) static void fake_unload(void)
{
    struct fake_proc *p = g_fake_me;
    if (!p || p->pid != getpid())
        return;
    for (int d = 0; d < FAKE_MAX_DEVICES; d++)
        __atomic_sub_fetch(&g_fake_state->used[d], __atomic_exchange_n(&p->used[d], 0, __ATOMIC_ACQ_REL),
                           __ATOMIC_ACQ_REL);
    __atomic_store_n(&p->pid, 0, __ATOMIC_RELEASE);
}

int fake_should_fail(const char *function)
{
    char key[128];
    const char *at;
    size_t n;
    if (!g_fail[0])
        return 0;
    n = (size_t)snprintf(key, sizeof(key), ",%s", function);
    for (at = strstr(g_fail, key); at; at = strstr(at + 1, key)) {
        if (at[n] == ',')
            return CUDA_ERROR_UNKNOWN;
        if (at[n] == ':')
            return atoi(at + n + 1) > 0 ? atoi(at + n + 1) : CUDA_ERROR_UNKNOWN;
    }
    return 0;
}

int fake_valid_device(CUdevice dev)
{
    return dev >= 0 && dev < g_fake_device_count;
}

CUresult fake_charge(int dev, int64_t bytes)
{
    int64_t *used = &g_fake_state->used[dev];
    /* A real driver frees a dead client's memory at once: drop killed processes first, so the
     * device-wide usage and peak only ever count live processes. */
    reap_dead();
    int64_t cur = __atomic_load_n(used, __ATOMIC_RELAXED);
    while (cur + bytes <= g_fake_devices[dev].capacity) {
        if (__atomic_compare_exchange_n(used, &cur, cur + bytes, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            int64_t now = cur + bytes, peak = __atomic_load_n(&g_fake_state->peak[dev], __ATOMIC_RELAXED);
            while (now > peak && !__atomic_compare_exchange_n(&g_fake_state->peak[dev], &peak, now, 1,
                                                              __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                ;
            __atomic_add_fetch(&g_fake_me->used[dev], bytes, __ATOMIC_RELAXED);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

void fake_uncharge(int dev, int64_t bytes)
{
    __atomic_sub_fetch(&g_fake_me->used[dev], bytes, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&g_fake_state->used[dev], bytes, __ATOMIC_ACQ_REL);
}
