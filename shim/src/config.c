/*
 * The claim config format (docs/shim.md; driver/claimconfig.py is the writer and accepts exactly
 * the same language) and the scan of the claims root. No libc number parsing: plain digits only,
 * so "010", "2Gi" or "-1" can never be misread as a limit.
 */
#include <dirent.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

#define CONFIG_MAX_BYTES 65536

static int fail(char *err, unsigned len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, unsigned len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A token is [start, start+len); helpers compare without copying. */
struct token {
    const char *p;
    unsigned len;
};

static int token_is(struct token t, const char *s)
{
    return strlen(s) == t.len && memcmp(t.p, s, t.len) == 0;
}

/* Decimal digits only, value <= max. */
static int parse_uint(struct token t, int64_t max, int64_t *out)
{
    int64_t v = 0;
    if (t.len == 0)
        return -1;
    for (unsigned i = 0; i < t.len; i++) {
        char c = t.p[i];
        if (c < '0' || c > '9')
            return -1;
        if (v > (max - (c - '0')) / 10)
            return -1;
        v = v * 10 + (c - '0');
    }
    *out = v;
    return 0;
}

static int valid_uuid(struct token t)
{
    if (t.len < 5 || t.len > VGPU_UUID_LEN - 1)
        return 0;
    if (memcmp(t.p, "GPU-", 4) != 0 && memcmp(t.p, "MIG-", 4) != 0)
        return 0;
    for (unsigned i = 4; i < t.len; i++)
        if (!is_alnum(t.p[i]) && t.p[i] != '-')
            return 0;
    return 1;
}

static int valid_claim(struct token t)
{
    if (t.len < 1 || t.len > VGPU_CLAIM_LEN - 1 || !is_alnum(t.p[0]))
        return 0;
    for (unsigned i = 1; i < t.len; i++)
        if (!is_alnum(t.p[i]) && t.p[i] != '.' && t.p[i] != '_' && t.p[i] != '-')
            return 0;
    return 1;
}

/* The 32 hex digits after the prefix, as cuDeviceGetUuid reports them; zero if not exactly 32. */
static void uuid_to_bytes(const char *uuid, unsigned char out[16])
{
    int nibbles = 0;
    unsigned char tmp[16] = {0};
    for (const char *p = uuid + 4; *p; p++) {
        int v = hex_value(*p);
        if (*p == '-')
            continue;
        if (v < 0 || nibbles >= 32) {
            memset(out, 0, 16);
            return;
        }
        tmp[nibbles / 2] = (unsigned char)(tmp[nibbles / 2] | (v << ((nibbles % 2) ? 0 : 4)));
        nibbles++;
    }
    if (nibbles == 32)
        memcpy(out, tmp, 16);
    else
        memset(out, 0, 16);
}

static int split_tokens(const char *line, unsigned len, struct token *toks, int max)
{
    int n = 0;
    unsigned i = 0;
    while (i < len) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i >= len)
            break;
        unsigned start = i;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            i++;
        if (n == max)
            return max + 1;
        toks[n].p = line + start;
        toks[n].len = i - start;
        n++;
    }
    return n;
}

static int split_kv(struct token t, struct token *key, struct token *value)
{
    const char *eq = memchr(t.p, '=', t.len);
    if (!eq)
        return -1;
    key->p = t.p;
    key->len = (unsigned)(eq - t.p);
    value->p = eq + 1;
    value->len = t.len - key->len - 1;
    return 0;
}

static int parse_gpu(struct token *toks, int n, unsigned lineno, struct vgpu_gpu_limit *g, char *err,
                     unsigned err_len)
{
    static const char *const keys[4] = {"uuid", "memory", "cores", "policy"};
    struct token values[4];
    int seen[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        struct token k, v;
        int which = -1;
        if (split_kv(toks[i], &k, &v) != 0)
            return fail(err, err_len, "line %u: gpu field '%.*s' is not key=value", lineno, (int)toks[i].len,
                        toks[i].p);
        for (int j = 0; j < 4; j++)
            if (token_is(k, keys[j]))
                which = j;
        if (which < 0)
            return fail(err, err_len, "line %u: unknown gpu field '%.*s'", lineno, (int)k.len, k.p);
        if (seen[which])
            return fail(err, err_len, "line %u: gpu field '%s' repeated", lineno, keys[which]);
        seen[which] = 1;
        values[which] = v;
    }
    for (int j = 0; j < 4; j++)
        if (!seen[j])
            return fail(err, err_len, "line %u: gpu record lacks %s=", lineno, keys[j]);
    if (!valid_uuid(values[0]))
        return fail(err, err_len, "line %u: gpu uuid '%.*s' is not a GPU-/MIG- UUID", lineno, (int)values[0].len,
                    values[0].p);
    int64_t memory, cores;
    if (parse_uint(values[1], INT64_MAX, &memory) != 0 || memory < 1)
        return fail(err, err_len, "line %u: memory='%.*s' must be 1..%lld bytes in decimal", lineno,
                    (int)values[1].len, values[1].p, (long long)INT64_MAX);
    if (parse_uint(values[2], 100, &cores) != 0)
        return fail(err, err_len, "line %u: cores=%.*s must be an integer 0..100", lineno, (int)values[2].len,
                    values[2].p);
    if (token_is(values[3], "soft"))
        g->policy = VGPU_POLICY_SOFT;
    else if (token_is(values[3], "hard"))
        g->policy = VGPU_POLICY_HARD;
    else
        return fail(err, err_len, "line %u: policy='%.*s' must be soft or hard", lineno, (int)values[3].len,
                    values[3].p);
    memcpy(g->uuid, values[0].p, values[0].len);
    g->uuid[values[0].len] = '\0';
    uuid_to_bytes(g->uuid, g->uuid_bytes);
    g->memory_bytes = memory;
    g->cores = (int)cores;
    return 0;
}

int vgpu_config_parse(const char *text, struct vgpu_claim_config *out, char *err, unsigned err_len)
{
    int have_version = 0, have_claim = 0;
    unsigned lineno = 0;
    const char *line = text;
    memset(out, 0, sizeof(*out));
    while (*line) {
        const char *nl = strchr(line, '\n');
        unsigned len = nl ? (unsigned)(nl - line) : (unsigned)strlen(line);
        struct token toks[8];
        lineno++;
        for (unsigned i = 0; i < len; i++) {
            unsigned char c = (unsigned char)line[i];
            if (!(c == '\t' || c == '\r' || (c >= 0x20 && c < 0x7f)))
                return fail(err, err_len, "line %u: invalid character 0x%02x", lineno, c);
        }
        while (len > 0 && (line[0] == ' ' || line[0] == '\t' || line[0] == '\r')) {
            line++;
            len--;
        }
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
            len--;
        if (len > 0 && line[0] != '#') {
            int n = split_tokens(line, len, toks, 8);
            struct token key, value;
            if (token_is(toks[0], "gpu")) {
                if (out->gpu_count == VGPU_MAX_GPUS)
                    return fail(err, err_len, "line %u: more than %d gpu records", lineno, VGPU_MAX_GPUS);
                if (n > 5)
                    return fail(err, err_len, "line %u: too many gpu fields", lineno);
                struct vgpu_gpu_limit *g = &out->gpus[out->gpu_count];
                if (parse_gpu(toks + 1, n - 1, lineno, g, err, err_len) != 0)
                    return -1;
                for (int i = 0; i < out->gpu_count; i++)
                    if (strcmp(out->gpus[i].uuid, g->uuid) == 0)
                        return fail(err, err_len, "line %u: gpu %s appears twice", lineno, g->uuid);
                out->gpu_count++;
            } else if (n != 1) {
                return fail(err, err_len, "line %u: unexpected text after '%.*s'", lineno, (int)toks[0].len,
                            toks[0].p);
            } else if (split_kv(toks[0], &key, &value) != 0) {
                return fail(err, err_len, "line %u: record '%.*s' is not key=value or a gpu record", lineno,
                            (int)toks[0].len, toks[0].p);
            } else if (token_is(key, "version")) {
                int64_t v;
                if (have_version)
                    return fail(err, err_len, "line %u: version repeated", lineno);
                if (parse_uint(value, INT32_MAX, &v) != 0 || v != 1)
                    return fail(err, err_len, "line %u: version=%.*s is not supported (expected 1)", lineno,
                                (int)value.len, value.p);
                have_version = 1;
            } else if (token_is(key, "claim")) {
                if (have_claim)
                    return fail(err, err_len, "line %u: claim repeated", lineno);
                if (!valid_claim(value))
                    return fail(err, err_len, "line %u: claim uid '%.*s' is invalid", lineno, (int)value.len,
                                value.p);
                memcpy(out->claim_uid, value.p, value.len);
                out->claim_uid[value.len] = '\0';
                have_claim = 1;
            } else {
                return fail(err, err_len, "line %u: unknown record '%.*s'", lineno, (int)key.len, key.p);
            }
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    if (!have_version)
        return fail(err, err_len, "missing version= record");
    if (!have_claim)
        return fail(err, err_len, "missing claim= record");
    if (out->gpu_count == 0)
        return fail(err, err_len, "no gpu records");
    return 0;
}

/*
 * Reading a claim's fresh config (or listing a fresh directory) makes the kernel write the file's
 * access time once (relatime: atime not newer than mtime): on a journalling filesystem that is a
 * metadata transaction of ~100 us in the first CUDA call of a claim's first process. O_NOATIME
 * skips it; the kernel grants it to the file's owner or a holder of CAP_FOWNER (root in a default
 * container) and refuses it with EPERM otherwise, when the plain open is used.
 */
static int open_noatime(const char *path, int flags)
{
    int fd = open(path, flags | O_NOATIME);
    if (fd < 0 && errno == EPERM)
        fd = open(path, flags);
    return fd;
}

static int read_small_file(const char *path, char *buf, unsigned cap, int *errno_out)
{
    int fd = open_noatime(path, O_RDONLY | O_CLOEXEC);
    unsigned total = 0;
    if (fd < 0) {
        *errno_out = errno;
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, buf + total, cap - 1 - total);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *errno_out = errno;
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        total += (unsigned)n;
        if (total == cap - 1) {
            *errno_out = EFBIG;
            close(fd);
            return -1;
        }
    }
    close(fd);
    buf[total] = '\0';
    if (strlen(buf) != total) {
        *errno_out = EINVAL;
        return -1;
    }
    return 0;
}

/* readdir order is arbitrary; a GPU shared by several claims is charged to them in claim-uid order
 * (docs/shim.md, "One GPU in several claims"), so the order must not depend on the directory. */
static void sort_by_claim_uid(struct vgpu_claim_set *set)
{
    static struct vgpu_claim_config claim; /* only used under vgpu_init's once-guard */
    static char dir[sizeof(set->dirs[0])];
    for (int i = 1; i < set->count; i++) {
        int j = i;
        claim = set->claims[i];
        memcpy(dir, set->dirs[i], sizeof(dir));
        while (j > 0 && (strcmp(set->claims[j - 1].claim_uid, claim.claim_uid) > 0 ||
                         (strcmp(set->claims[j - 1].claim_uid, claim.claim_uid) == 0 &&
                          strcmp(set->dirs[j - 1], dir) > 0))) {
            set->claims[j] = set->claims[j - 1];
            memcpy(set->dirs[j], set->dirs[j - 1], sizeof(dir));
            j--;
        }
        set->claims[j] = claim;
        memcpy(set->dirs[j], dir, sizeof(dir));
    }
}

/* Is root/name a directory (following a symbolic link)? d_type answers without a syscall on
 * the usual file systems; DT_LNK and DT_UNKNOWN ask the kernel. */
static int is_directory(const char *root, const char *name, unsigned char type)
{
    char path[600];
    int fd;
    if (type == DT_DIR)
        return 1;
    if (type != DT_LNK && type != DT_UNKNOWN)
        return 0;
    snprintf(path, sizeof(path), "%s/%s", root, name);
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/*
 * Reads the claims root with getdents64 into a stack buffer rather than opendir: this runs in the
 * first CUDA call of every process, and opendir's 32 KiB allocation costs page faults there.
 * `out` is zero-filled by the caller (it is only ever the loader's static set, read once).
 */
enum vgpu_claims_status vgpu_claims_load(const char *root, struct vgpu_claim_set *out, char *err, unsigned err_len)
{
    static char text[CONFIG_MAX_BYTES]; /* only used under vgpu_init's once-guard */
    char buf[4096] __attribute__((aligned(8)));
    int dir = open_noatime(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    out->count = 0;
    if (dir < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return VGPU_CLAIMS_NONE;
        fail(err, err_len, "cannot read claims directory %s: %s", root, strerror(errno));
        return VGPU_CLAIMS_INVALID;
    }
    for (;;) {
        long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            close(dir);
            fail(err, err_len, "cannot read claims directory %s: %s", root, strerror(saved));
            return VGPU_CLAIMS_INVALID;
        }
        if (n == 0)
            break;
        for (long at = 0; at < n;) {
            const struct linux_dirent64 *entry = (const struct linux_dirent64 *)(buf + at);
            char path[600];
            int saved;
            at += entry->d_reclen;
            if (entry->d_name[0] == '.' || !is_directory(root, entry->d_name, entry->d_type))
                continue; /* not a claim directory */
            if (out->count == VGPU_MAX_CLAIMS) {
                close(dir);
                fail(err, err_len, "more than %d claim directories in %s", VGPU_MAX_CLAIMS, root);
                return VGPU_CLAIMS_INVALID;
            }
            snprintf(out->dirs[out->count], sizeof(out->dirs[0]), "%s/%s", root, entry->d_name);
            snprintf(path, sizeof(path), "%s/%s/config", root, entry->d_name);
            if (read_small_file(path, text, sizeof(text), &saved) != 0) {
                close(dir);
                fail(err, err_len, "cannot read claim config %s: %s", path, strerror(saved));
                return VGPU_CLAIMS_INVALID;
            }
            char why[256];
            if (vgpu_config_parse(text, &out->claims[out->count], why, sizeof(why)) != 0) {
                close(dir);
                fail(err, err_len, "invalid claim config %s: %s", path, why);
                return VGPU_CLAIMS_INVALID;
            }
            out->count++;
        }
    }
    close(dir);
    if (out->count == 0)
        return VGPU_CLAIMS_NONE;
    sort_by_claim_uid(out);
    return VGPU_CLAIMS_OK;
}
