/*
 * The claim's shared region: mapping, initialisation under the init lock, process slots and the
 * refund of dead processes. A slot belongs to whoever holds its open-file-description lock
 * (F_OFD_SETLK on byte VGPU_LOCK_SLOT_BASE + i): the kernel drops the lock when the owner dies,
 * also by kill -9 and in any PID namespace, so taking the lock proves the previous owner is gone
 * and its charge can be refunded. No wait is unbounded; no error ever exits the application.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

#ifndef F_OFD_GETLK
#define F_OFD_GETLK 36
#define F_OFD_SETLK 37
#endif

#define INIT_LOCK_TRIES 5000 /* x 1 ms */

static int fail(char *err, unsigned len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, unsigned len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* fcntl through syscall(): the libc wrapper is fcntl64@GLIBC_2.28 on new glibc. */
static int ofd_lock(int fd, short type, long long offset)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = offset;
    fl.l_len = 1;
    return (int)syscall(SYS_fcntl, fd, F_OFD_SETLK, &fl);
}

static int lock_init_bounded(int fd)
{
    struct timespec ms = {0, 1000000};
    for (int i = 0; i < INIT_LOCK_TRIES; i++) {
        if (ofd_lock(fd, F_WRLCK, VGPU_LOCK_INIT) == 0)
            return 0;
        if (errno != EAGAIN && errno != EACCES && errno != EINTR)
            return -1;
        nanosleep(&ms, NULL);
    }
    errno = ETIMEDOUT;
    return -1;
}

/* Caller holds the slot's lock, so the previous owner is dead (or is the caller, at exit) and
 * nobody else touches the slot. A dead owner's bytes are also added to dead_refunded_bytes: the
 * driver freed them when it died, so a measurement across this refund must not see them as new. */
static void refund_slot(struct vgpu_region *r, int slot, int owner_dead)
{
    struct vgpu_proc *p = &r->procs[slot];
    unsigned gpus = __atomic_load_n(&r->gpu_count, __ATOMIC_ACQUIRE);
    if (gpus > VGPU_MAX_GPUS)
        gpus = VGPU_MAX_GPUS;
    for (unsigned g = 0; g < gpus; g++) {
        int64_t held = __atomic_exchange_n(&p->used[g], 0, __ATOMIC_ACQ_REL);
        if (held > 0) {
            vgpu_sub_clamped(&r->gpus[g].used_bytes, held);
            if (owner_dead)
                __atomic_add_fetch(&r->dead_refunded_bytes, held, __ATOMIC_RELAXED);
        }
    }
    __atomic_store_n(&p->state, VGPU_PROC_FREE, __ATOMIC_RELEASE);
}

/* 0 with a->slot set; -1 with errno (EBUSY: every slot is owned by a live process). */
static int claim_slot(struct vgpu_attached_region *a)
{
    struct vgpu_region *r = a->map;
    for (int i = 0; i < VGPU_MAX_PROCS; i++) {
        if (ofd_lock(a->fd, F_WRLCK, VGPU_LOCK_SLOT_BASE + i) != 0) {
            if (errno == EAGAIN || errno == EACCES)
                continue; /* a live process owns it */
            return -1;    /* no OFD locks here (e.g. an old kernel or a FUSE mount): cannot be safe */
        }
        struct vgpu_proc *p = &r->procs[i];
        if (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != VGPU_PROC_FREE)
            refund_slot(r, i, 1); /* its owner died without anyone noticing yet */
        for (int g = 0; g < VGPU_MAX_GPUS; g++)
            __atomic_store_n(&p->used[g], 0, __ATOMIC_RELAXED);
        /* What the previous owner learned or promised is not this process's: a stale host PID
         * would hide this process from NVML lists in the pod and show it to the watchdog as a
         * process without the shim; a stale pending bit would make others wait for nothing. */
        __atomic_store_n(&p->host_pid, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&p->pid_ns, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&p->context_pending, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&p->pid, (int32_t)getpid(), __ATOMIC_RELAXED);
        __atomic_add_fetch(&p->generation, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&p->state, VGPU_PROC_LIVE, __ATOMIC_RELEASE);
        uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_RELAXED);
        while (hw < (uint32_t)i + 1 &&
               !__atomic_compare_exchange_n(&r->proc_high_water, &hw, (uint32_t)i + 1, 1, __ATOMIC_ACQ_REL,
                                            __ATOMIC_RELAXED))
            ;
        __atomic_add_fetch(&r->attach_count, 1, __ATOMIC_RELAXED);
        a->slot = i;
        return 0;
    }
    errno = EBUSY;
    return -1;
}

static int find_or_add_gpu(struct vgpu_region *r, const struct vgpu_gpu_limit *g)
{
    unsigned n = r->gpu_count;
    if (n > VGPU_MAX_GPUS)
        return -1;
    for (unsigned i = 0; i < n; i++)
        if (strncmp(r->gpus[i].uuid, g->uuid, VGPU_UUID_LEN) == 0)
            return (int)i;
    if (n == VGPU_MAX_GPUS)
        return -1;
    memcpy(r->gpus[n].uuid, g->uuid, VGPU_UUID_LEN);
    __atomic_store_n(&r->gpu_count, n + 1, __ATOMIC_RELEASE);
    return (int)n;
}

/* Under the init lock: header, claim UID and the GPU table with the config's limits. */
static int init_locked(struct vgpu_region *r, const char *path, const struct vgpu_claim_config *cfg, char *err,
                       unsigned err_len)
{
    if (__atomic_load_n(&r->magic, __ATOMIC_ACQUIRE) == 0) {
        r->layout_version = VGPU_REGION_LAYOUT_VERSION;
        r->size_bytes = (uint32_t)sizeof(struct vgpu_region);
        __atomic_store_n(&r->magic, (uint64_t)VGPU_REGION_MAGIC, __ATOMIC_RELEASE);
    }
    if (r->magic != (uint64_t)VGPU_REGION_MAGIC || r->layout_version != VGPU_REGION_LAYOUT_VERSION ||
        r->size_bytes != sizeof(struct vgpu_region))
        return fail(err, err_len, "region %s has an unknown layout (magic %#llx, version %u)", path,
                    (unsigned long long)r->magic, r->layout_version);
    if (r->claim_uid[0] == '\0')
        memcpy(r->claim_uid, cfg->claim_uid, VGPU_CLAIM_LEN);
    else if (strncmp(r->claim_uid, cfg->claim_uid, VGPU_CLAIM_LEN) != 0)
        return fail(err, err_len, "region %s belongs to claim %.*s, not %s", path, VGPU_CLAIM_LEN - 1, r->claim_uid,
                    cfg->claim_uid);
    for (int i = 0; i < cfg->gpu_count; i++) {
        int idx = find_or_add_gpu(r, &cfg->gpus[i]);
        if (idx < 0)
            return fail(err, err_len, "region %s has no room for gpu %s", path, cfg->gpus[i].uuid);
        __atomic_store_n(&r->gpus[idx].limit_bytes, cfg->gpus[i].memory_bytes, __ATOMIC_RELAXED);
        __atomic_store_n(&r->gpus[idx].core_cap, cfg->gpus[i].cores, __ATOMIC_RELAXED);
        __atomic_store_n(&r->gpus[idx].core_policy, cfg->gpus[i].policy, __ATOMIC_RELAXED);
    }
    return 0;
}

/* Whether the region already holds what init_locked would write for cfg: then no process needs
 * the init lock (this is the first CUDA call's path of every process but a claim's first). Read
 * without the lock: magic is published last, gpu_count after each GPU entry's UUID. */
static int initialised_for(const struct vgpu_region *r, const struct vgpu_claim_config *cfg)
{
    if (__atomic_load_n(&r->magic, __ATOMIC_ACQUIRE) != (uint64_t)VGPU_REGION_MAGIC ||
        r->layout_version != VGPU_REGION_LAYOUT_VERSION || r->size_bytes != sizeof(struct vgpu_region) ||
        strncmp(r->claim_uid, cfg->claim_uid, VGPU_CLAIM_LEN) != 0)
        return 0;
    unsigned n = __atomic_load_n(&r->gpu_count, __ATOMIC_ACQUIRE);
    for (int i = 0; i < cfg->gpu_count; i++) {
        const struct vgpu_gpu_limit *g = &cfg->gpus[i];
        unsigned k = 0;
        while (k < n && k < VGPU_MAX_GPUS && strncmp(r->gpus[k].uuid, g->uuid, VGPU_UUID_LEN) != 0)
            k++;
        if (k >= n || k >= VGPU_MAX_GPUS ||
            __atomic_load_n(&r->gpus[k].limit_bytes, __ATOMIC_RELAXED) != g->memory_bytes ||
            __atomic_load_n(&r->gpus[k].core_cap, __ATOMIC_RELAXED) != g->cores ||
            __atomic_load_n(&r->gpus[k].core_policy, __ATOMIC_RELAXED) != g->policy)
            return 0;
    }
    return 1;
}

int vgpu_region_attach(const char *path, const struct vgpu_claim_config *cfg, struct vgpu_attached_region *out,
                       char *err, unsigned err_len)
{
    const size_t size = sizeof(struct vgpu_region);
    int rc = 0, fd = open(path, O_RDWR | O_CLOEXEC);
    out->map = NULL;
    out->fd = -1;
    out->slot = -1;
    if (fd < 0 && errno == ENOENT) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0)
            fchmod(fd, 0666); /* every process of the claim, whatever its user, must be able to write */
    }
    if (fd < 0)
        return fail(err, err_len, "cannot open region %s: %s", path, strerror(errno));
    off_t file_size = lseek(fd, 0, SEEK_END); /* not fstat: that is fstat@GLIBC_2.33 on new glibc */
    if (file_size < 0) {
        int saved = errno;
        close(fd);
        return fail(err, err_len, "cannot size region %s: %s", path, strerror(saved));
    }
    void *map = MAP_FAILED;
    if ((size_t)file_size >= size)
        map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED || !initialised_for(map, cfg)) {
        /* Created, short, of another claim or with other limits: (re)initialise under the lock. */
        if (lock_init_bounded(fd) != 0) {
            int saved = errno;
            if (map != MAP_FAILED)
                munmap(map, size);
            close(fd);
            return fail(err, err_len, "cannot lock region %s: %s", path, strerror(saved));
        }
        if (map == MAP_FAILED) {
            if ((size_t)file_size < size && ftruncate(fd, (off_t)size) != 0) {
                int saved = errno;
                close(fd);
                return fail(err, err_len, "cannot size region %s: %s", path, strerror(saved));
            }
            map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map == MAP_FAILED) {
                int saved = errno;
                close(fd);
                return fail(err, err_len, "cannot map region %s: %s", path, strerror(saved));
            }
        }
        rc = init_locked(map, path, cfg, err, err_len);
        ofd_lock(fd, F_UNLCK, VGPU_LOCK_INIT);
    }
    out->map = map;
    out->fd = fd;
    if (rc == 0 && claim_slot(out) != 0)
        rc = errno == EBUSY ? fail(err, err_len, "region %s: all %d process slots are in use", path, VGPU_MAX_PROCS)
                            : fail(err, err_len, "cannot lock a process slot in region %s: %s", path, strerror(errno));
    if (rc != 0) {
        munmap(map, size);
        close(fd);
        out->map = NULL;
        out->fd = -1;
    }
    return rc;
}

int vgpu_region_reattach_child(const char *path, struct vgpu_attached_region *a)
{
    /* The inherited descriptor shares the parent's lock; ours must be a new open file description. */
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (a->fd >= 0)
        close(a->fd);
    a->fd = fd;
    a->slot = -1;
    if (fd < 0)
        return -1;
    return claim_slot(a);
}

void vgpu_region_detach(struct vgpu_attached_region *a)
{
    if (a->slot < 0 || a->fd < 0)
        return;
    refund_slot(a->map, a->slot, 0); /* we still hold the slot lock: nobody else touches it */
    ofd_lock(a->fd, F_UNLCK, VGPU_LOCK_SLOT_BASE + a->slot);
    a->slot = -1;
}

int vgpu_region_reclaim_dead(struct vgpu_attached_region *a)
{
    struct vgpu_region *r = a->map;
    int reclaimed = 0;
    uint32_t hw = __atomic_load_n(&r->proc_high_water, __ATOMIC_ACQUIRE);
    if (hw > VGPU_MAX_PROCS)
        hw = VGPU_MAX_PROCS;
    for (uint32_t i = 0; i < hw; i++) {
        if ((int)i == a->slot || __atomic_load_n(&r->procs[i].state, __ATOMIC_ACQUIRE) != VGPU_PROC_LIVE)
            continue;
        if (ofd_lock(a->fd, F_WRLCK, VGPU_LOCK_SLOT_BASE + i) != 0)
            continue; /* alive */
        if (__atomic_load_n(&r->procs[i].state, __ATOMIC_ACQUIRE) == VGPU_PROC_LIVE) {
            refund_slot(r, (int)i, 1);
            reclaimed++;
        }
        ofd_lock(a->fd, F_UNLCK, VGPU_LOCK_SLOT_BASE + i);
    }
    return reclaimed;
}
