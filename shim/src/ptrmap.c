/*
 * Device pointer / array / VMM handle -> (charged bytes, account), so every free refunds exactly
 * what its allocation was charged. O(1): 64 shards, each an open-addressing table with linear
 * probing and backward-shift deletion, guarded by a spinlock held for a few instructions only
 * (no syscalls inside except malloc on growth).
 */
#include <stdlib.h>
#include <string.h>

#include "vgpu_internal.h"

#define SHARD_BITS 6
#define SHARDS (1u << SHARD_BITS)
#define INITIAL_CAPACITY 64u

struct entry {
    uint64_t key; /* 0 = empty; the kind is folded into the top bits */
    int64_t bytes;
    struct vgpu_account *acct;
};

struct shard {
    int lock;
    uint32_t capacity; /* power of two */
    uint32_t count;
    struct entry *slots;
} __attribute__((aligned(64)));

/* Owned by this file; each shard is guarded by its own lock. */
static struct shard g_shards[SHARDS];

static uint64_t make_key(int kind, uint64_t value)
{
    /* Real pointers and handles never use the top 4 bits; value 0 is never stored (not allocated). */
    return value ^ ((uint64_t)kind << 60);
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void lock(struct shard *s)
{
    while (__atomic_exchange_n(&s->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&s->lock, __ATOMIC_RELAXED))
            cpu_relax();
}

static void unlock(struct shard *s)
{
    __atomic_store_n(&s->lock, 0, __ATOMIC_RELEASE);
}

static void insert_slot(struct entry *slots, uint32_t cap, struct entry e)
{
    uint32_t i = (uint32_t)(mix(e.key) >> SHARD_BITS) & (cap - 1);
    while (slots[i].key != 0 && slots[i].key != e.key)
        i = (i + 1) & (cap - 1);
    slots[i] = e;
}

static int grow(struct shard *s)
{
    uint32_t cap = s->capacity ? s->capacity * 2 : INITIAL_CAPACITY;
    struct entry *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -1;
    for (uint32_t i = 0; i < s->capacity; i++)
        if (s->slots[i].key != 0)
            insert_slot(slots, cap, s->slots[i]);
    free(s->slots);
    s->slots = slots;
    s->capacity = cap;
    return 0;
}

void vgpu_ptrmap_put(int kind, uint64_t value, int64_t bytes, struct vgpu_account *acct)
{
    uint64_t key = make_key(kind, value);
    struct shard *s = &g_shards[mix(key) & (SHARDS - 1)];
    struct entry e = {key, bytes, acct};
    struct entry replaced = {0, 0, NULL};
    lock(s);
    /* Keep load <= 1/2. If growth fails the entry is still stored while room remains; a full
     * table drops it, which only means that free will not refund (fails safe: never over). */
    if ((s->count + 1) * 2 > s->capacity)
        grow(s);
    if (s->count + 1 < s->capacity) {
        uint32_t i = (uint32_t)(mix(key) >> SHARD_BITS) & (s->capacity - 1);
        while (s->slots[i].key != 0 && s->slots[i].key != key)
            i = (i + 1) & (s->capacity - 1);
        if (s->slots[i].key == 0)
            s->count++;
        else
            replaced = s->slots[i];
        s->slots[i] = e;
    }
    unlock(s);
    /* The driver handed out an address we still listed: that allocation is gone, refund it. */
    if (replaced.key != 0 && replaced.acct && kind != VGPU_PTR_POOL)
        vgpu_refund(replaced.acct, replaced.bytes);
}

int vgpu_ptrmap_get(int kind, uint64_t value, int64_t *bytes, struct vgpu_account **acct)
{
    uint64_t key = make_key(kind, value);
    struct shard *s = &g_shards[mix(key) & (SHARDS - 1)];
    int found = 0;
    lock(s);
    if (s->capacity) {
        uint32_t mask = s->capacity - 1;
        for (uint32_t i = (uint32_t)(mix(key) >> SHARD_BITS) & mask; s->slots[i].key != 0; i = (i + 1) & mask)
            if (s->slots[i].key == key) {
                *bytes = s->slots[i].bytes;
                *acct = s->slots[i].acct;
                found = 1;
                break;
            }
    }
    unlock(s);
    return found;
}

int vgpu_ptrmap_take(int kind, uint64_t value, int64_t *bytes, struct vgpu_account **acct)
{
    uint64_t key = make_key(kind, value);
    struct shard *s = &g_shards[mix(key) & (SHARDS - 1)];
    int found = 0;
    lock(s);
    if (s->capacity) {
        uint32_t mask = s->capacity - 1;
        uint32_t i = (uint32_t)(mix(key) >> SHARD_BITS) & mask;
        while (s->slots[i].key != 0) {
            if (s->slots[i].key == key) {
                *bytes = s->slots[i].bytes;
                *acct = s->slots[i].acct;
                found = 1;
                break;
            }
            i = (i + 1) & mask;
        }
        if (found) {
            /* Backward-shift deletion keeps probe chains intact without tombstones. */
            uint32_t hole = i, j = i;
            for (;;) {
                j = (j + 1) & mask;
                if (s->slots[j].key == 0)
                    break;
                uint32_t home = (uint32_t)(mix(s->slots[j].key) >> SHARD_BITS) & mask;
                if (((j - home) & mask) >= ((j - hole) & mask)) {
                    s->slots[hole] = s->slots[j];
                    hole = j;
                }
            }
            s->slots[hole].key = 0;
            s->count--;
        }
    }
    unlock(s);
    return found;
}

void vgpu_ptrmap_clear(void)
{
    for (unsigned i = 0; i < SHARDS; i++) {
        struct shard *s = &g_shards[i];
        s->lock = 0; /* fork child: no other thread exists, a lock held at fork time is void */
        if (s->slots)
            memset(s->slots, 0, s->capacity * sizeof(*s->slots));
        s->count = 0;
    }
}
