/*
 * Lazy start-up: nothing happens until the first intercepted CUDA call (or a dlsym of a cu.../nvml...
 * name). Then, once: read the claim configs, load the real driver by exact names, attach to each
 * claim's region, and pick the mode: PASS (no config), ENFORCE, or FAIL_CLOSED (config present
 * but unusable; every intercepted call returns CUDA_ERROR_NOT_PERMITTED after one stderr line).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

/* Written once by do_init under g_once, read-only afterwards (see vgpu_internal.h); vgpu_ready
 * also moves between DONE and WORK under ctx_deferred.c's lock. */
struct vgpu_real_cuda vgpu_real;
struct vgpu_real_helpers vgpu_helper;
int vgpu_mode;
int vgpu_ready;
void *vgpu_libcuda;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static __thread int t_in_init; /* dlsym calls made by the driver while we load it see raw results */

/* Claims and their regions: filled by do_init, rewired (slots only) by the fork child handler. */
static struct vgpu_claim_set g_claims;
static struct vgpu_attached_region g_regions[VGPU_MAX_CLAIMS];
static char g_region_paths[VGPU_MAX_CLAIMS][640];

/* One account per (claim, GPU); devices.c maps CUDA ordinals onto them. */
struct vgpu_account vgpu_accounts[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS];
unsigned char vgpu_account_uuid[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS][16];
int vgpu_account_count;

void vgpu_log_once(int *once_flag, const char *fmt, ...)
{
    char line[768];
    int n;
    va_list ap;
    if (__atomic_exchange_n(once_flag, 1, __ATOMIC_RELAXED))
        return;
    n = snprintf(line, sizeof(line), "vgpu: ");
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if (write(2, line, (size_t)n) < 0) {
        /* nowhere else to report */
    }
}

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn g_real_dlsym;

VGPU_TAIL_CALLS void *vgpu_real_dlsym(void *handle, const char *name)
{
    dlsym_fn fn = __atomic_load_n(&g_real_dlsym, __ATOMIC_ACQUIRE);
    if (!fn) {
        /* Never our own exported dlsym, never GLIBC_PRIVATE: only versioned public names. */
        static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.3",
                                               "GLIBC_2.4",  "GLIBC_2.10",  "GLIBC_2.18", "GLIBC_2.22"};
        for (unsigned i = 0; i < sizeof(versions) / sizeof(versions[0]) && !fn; i++)
            fn = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
        if (!fn)
            return NULL;
        __atomic_store_n(&g_real_dlsym, fn, __ATOMIC_RELEASE);
    }
    return fn(handle, name);
}

int vgpu_in_init(void)
{
    return t_in_init;
}

static void resolve_real(void)
{
    void *h = vgpu_libcuda;
#define VGPU_RESOLVE(name, params, args) vgpu_real.name = (vgpu_pfn_##name)vgpu_real_dlsym(h, #name);
    VGPU_CUDA_HOOKS(VGPU_RESOLVE)
#undef VGPU_RESOLVE
#define VGPU_RESOLVE_HELPER(name, params, args) *(void **)&vgpu_helper.name = vgpu_real_dlsym(h, #name);
    VGPU_CUDA_HELPERS(VGPU_RESOLVE_HELPER)
#undef VGPU_RESOLVE_HELPER
}

static int find_gpu_index(const struct vgpu_region *r, const char *uuid)
{
    for (unsigned i = 0; i < r->gpu_count && i < VGPU_MAX_GPUS; i++)
        if (strncmp(r->gpus[i].uuid, uuid, VGPU_UUID_LEN) == 0)
            return (int)i;
    return -1;
}

static void wire_accounts(void)
{
    const char *uuid_of[VGPU_MAX_CLAIMS * VGPU_MAX_GPUS]; /* from the root-owned config, not the region */
    int n = 0;
    for (int c = 0; c < g_claims.count; c++) {
        struct vgpu_attached_region *reg = &g_regions[c];
        for (int g = 0; g < g_claims.claims[c].gpu_count; g++) {
            const struct vgpu_gpu_limit *lim = &g_claims.claims[c].gpus[g];
            int idx = find_gpu_index(reg->map, lim->uuid);
            struct vgpu_account *a = &vgpu_accounts[n];
            a->gpu = &reg->map->gpus[idx];
            a->proc_used = &reg->map->procs[reg->slot].used[idx];
            a->limit = lim->memory_bytes;
            a->region = reg;
            a->cores = lim->cores;
            a->policy = lim->policy;
            a->next = NULL;
            a->head = a;
            uuid_of[n] = lim->uuid;
            memcpy(vgpu_account_uuid[n], lim->uuid_bytes, 16);
            n++;
        }
    }
    /* A GPU in several claims: chain its accounts in claim order (the claims are sorted by uid),
     * so the first one, which every lookup finds, heads the chain (docs/shim.md). */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(uuid_of[i], uuid_of[j]) == 0) {
                vgpu_accounts[i].next = &vgpu_accounts[j];
                vgpu_accounts[j].head = vgpu_accounts[i].head;
                break;
            }
    vgpu_account_count = n;
}

static void atfork_child(void)
{
    if (vgpu_mode != VGPU_MODE_ENFORCE)
        return;
    vgpu_ptrmap_clear();
    vgpu_contexts_forget();
    vgpu_deferred_forget();
    vgpu_hostpid_forget();
    for (int c = 0; c < g_claims.count; c++) {
        if (vgpu_region_reattach_child(g_region_paths[c], &g_regions[c]) != 0) {
            /* No slot of our own: refuse CUDA in this child rather than charge the parent's slot. */
            vgpu_mode = VGPU_MODE_FAIL_CLOSED;
            return;
        }
    }
    wire_accounts();
    vgpu_limiter_setup(1);
}

static const char *claims_root(void)
{
#ifdef VGPU_TEST_BUILD
    /* Test builds only: production libvgpu.so never reads the environment (a tenant could point
     * it at a directory with a bigger limit). */
    const char *env = getenv("VGPU_CLAIMS_ROOT");
    if (env && *env)
        return env;
#endif
    return VGPU_CLAIMS_ROOT_DEFAULT;
}

static void do_init(void)
{
    static int logged;
    char err[700];
    t_in_init = 1;
    enum vgpu_claims_status st = vgpu_claims_load(claims_root(), &g_claims, err, sizeof(err));
    vgpu_libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NODELETE);
    if (vgpu_libcuda)
        resolve_real();
    if (st == VGPU_CLAIMS_NONE) {
        vgpu_mode = VGPU_MODE_PASS;
    } else if (st == VGPU_CLAIMS_INVALID) {
        vgpu_mode = VGPU_MODE_FAIL_CLOSED;
    } else {
        vgpu_mode = VGPU_MODE_ENFORCE;
        for (int c = 0; c < g_claims.count && vgpu_mode == VGPU_MODE_ENFORCE; c++) {
            snprintf(g_region_paths[c], sizeof(g_region_paths[c]), "%s/region", g_claims.dirs[c]);
            if (vgpu_region_attach(g_region_paths[c], &g_claims.claims[c], &g_regions[c], err, sizeof(err)) != 0)
                vgpu_mode = VGPU_MODE_FAIL_CLOSED;
        }
        if (vgpu_mode == VGPU_MODE_ENFORCE) {
            wire_accounts();
            vgpu_limiter_setup(0);
        }
    }
    if (vgpu_mode == VGPU_MODE_FAIL_CLOSED)
        vgpu_log_once(&logged, "%s; CUDA is disabled in this process (fail closed)", err);
    pthread_atfork(NULL, NULL, atfork_child);
    t_in_init = 0;
    __atomic_store_n(&vgpu_ready, VGPU_READY_DONE, __ATOMIC_RELEASE);
}

/* At normal exit give the claim its bytes back at once (the driver frees them anyway); a kill -9
 * skips this and the slot is refunded by the next process that finds its lock released. Our
 * destructor runs after the application's and cudart's (we were loaded first). */
__attribute__((destructor)) static void vgpu_exit(void)
{
    if (!__atomic_load_n(&vgpu_ready, __ATOMIC_ACQUIRE) || vgpu_mode != VGPU_MODE_ENFORCE)
        return;
    vgpu_mode = VGPU_MODE_PASS;
    for (int c = 0; c < g_claims.count; c++)
        vgpu_region_detach(&g_regions[c]);
}

void vgpu_init_slow(void)
{
    if (t_in_init)
        return; /* re-entered from the driver while loading it: answer with what we have */
    pthread_once(&g_once, do_init);
    if (__atomic_load_n(&vgpu_ready, __ATOMIC_ACQUIRE) == VGPU_READY_WORK)
        vgpu_contexts_settle();
}

/* Called by ctx_deferred.c under its lock, so "needed" and its pending work change together. */
void vgpu_slow_path_needed(int needed)
{
    __atomic_store_n(&vgpu_ready, needed ? VGPU_READY_WORK : VGPU_READY_DONE, __ATOMIC_RELEASE);
}
