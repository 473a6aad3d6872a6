/*
 * Processes a test sets while NVML stays initialised: FAKE_NVML_PROCESSES names a file that is
 * read again at every process query, so a test can add, change or remove a process (its host PID
 * and the bytes it uses) or make the process queries fail, without an nvmlShutdown/nvmlInit.
 * The kubelet plugin keeps NVML initialised for its whole life; this is how its tests speak to it.
 *
 * File format (one record per line, '#' starts a comment line, blank lines ignored):
 *   <gpu uuid> <pid|self> <used bytes> [compute|graphics]     default compute
 *   error <nvml function> <code>                              that function fails on every GPU
 * A line that cannot be parsed is reported once on stderr and ignored; a file that does not exist
 * is the same as an empty one (a test that removes it removes its processes). The file is parsed
 * again when it changes (its inode, size or mtime: write a new file and rename it over the old).
 *
 * Compute entries join nvmlDeviceGetComputeRunningProcesses* (after the inventory's and the fake
 * CUDA driver's processes); graphics entries are what nvmlDeviceGetGraphicsRunningProcesses*
 * answer. Both count in the GPU's used memory.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_nvml.h"

#define LINE_MAX_LEN 512

/* The file parsed once per version of it (device, inode, size, mtime): a poll of hundreds of
 * processes must not pay for parsing them at every call of the two-call protocol. */
struct live_entry {
    char uuid[FAKE_UUID_LEN];
    struct fake_process process;
    int graphics;
};

struct live_error {
    char function[64];
    nvmlReturn_t code;
};

static pthread_mutex_t g_live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stat g_live_stat;
static char g_live_path[4096];
static struct live_entry *g_entries;
static size_t g_entry_count;
static struct live_error g_errors[FAKE_MAX_ERRORS];
static size_t g_error_count;

static void complain_once(const char *line)
{
    static int complained;
    if (!complained) {
        complained = 1;
        fprintf(stderr, "fake NVML: ignoring a line of FAKE_NVML_PROCESSES it cannot parse: %s\n", line);
    }
}

static void parse_line(const char *start)
{
    char uuid[FAKE_UUID_LEN], pid_text[32], kind[16] = "compute", code_text[48];
    unsigned long long used;
    if (strncmp(start, "error ", 6) == 0) {
        struct live_error e;
        if (g_error_count >= FAKE_MAX_ERRORS || sscanf(start + 6, "%63s %47s", e.function, code_text) != 2 ||
            fake_error_code_from_text(code_text, &e.code) != 0) {
            complain_once(start);
            return;
        }
        g_errors[g_error_count++] = e;
        return;
    }
    int fields = sscanf(start, "%95s %31s %llu %15s", uuid, pid_text, &used, kind);
    int graphics = strcmp(kind, "graphics") == 0;
    if (fields < 3 || (!graphics && strcmp(kind, "compute") != 0)) {
        complain_once(start);
        return;
    }
    struct live_entry entry = {.graphics = graphics};
    snprintf(entry.uuid, sizeof(entry.uuid), "%s", uuid);
    entry.process.used_bytes = used;
    entry.process.is_self = strcmp(pid_text, "self") == 0;
    if (!entry.process.is_self) {
        char *end = NULL;
        unsigned long pid = strtoul(pid_text, &end, 10);
        if (*end != '\0' || pid == 0 || pid > 0xffffffffUL) {
            complain_once(start);
            return;
        }
        entry.process.pid = (unsigned int)pid;
    }
    struct live_entry *grown = realloc(g_entries, (g_entry_count + 1) * sizeof(*grown));
    if (!grown)
        return;
    g_entries = grown;
    g_entries[g_entry_count++] = entry;
}

/* Under g_live_lock: the cache matches the file now (emptied when there is none). */
static void refresh_locked(void)
{
    const char *path = getenv("FAKE_NVML_PROCESSES");
    struct stat st;
    char line[LINE_MAX_LEN];
    if (!path || !*path || stat(path, &st) != 0) {
        g_entry_count = g_error_count = 0;
        g_live_path[0] = '\0';
        return;
    }
    if (strcmp(path, g_live_path) == 0 && st.st_dev == g_live_stat.st_dev && st.st_ino == g_live_stat.st_ino &&
        st.st_size == g_live_stat.st_size && st.st_mtim.tv_sec == g_live_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == g_live_stat.st_mtim.tv_nsec)
        return;
    g_entry_count = g_error_count = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        const char *start = line + strspn(line, " \t");
        if (*start != '\0' && *start != '#')
            parse_line(start);
    }
    fclose(f);
    g_live_stat = st;
    snprintf(g_live_path, sizeof(g_live_path), "%s", path);
}

size_t fake_live_processes(const struct fake_gpu *gpu, int graphics, struct fake_listed *out, size_t cap, size_t n)
{
    pthread_mutex_lock(&g_live_lock);
    refresh_locked();
    for (size_t i = 0; i < g_entry_count; i++) {
        const struct live_entry *e = &g_entries[i];
        if (e->graphics != graphics || strcmp(e->uuid, gpu->uuid) != 0)
            continue;
        if (out && n < cap)
            out[n] = (struct fake_listed){fake_activity_pid(&e->process), e->process.used_bytes};
        n++;
    }
    pthread_mutex_unlock(&g_live_lock);
    return n;
}

nvmlReturn_t fake_live_error(const char *function)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&g_live_lock);
    refresh_locked();
    for (size_t i = 0; i < g_error_count && rc == NVML_SUCCESS; i++)
        if (strcmp(g_errors[i].function, function) == 0)
            rc = g_errors[i].code;
    pthread_mutex_unlock(&g_live_lock);
    return rc;
}

unsigned long long fake_live_graphics_bytes(const struct fake_gpu *gpu)
{
    size_t n = fake_live_processes(gpu, 1, NULL, 0, 0);
    struct fake_listed *all = calloc(n ? n : 1, sizeof(*all));
    unsigned long long used = 0;
    if (!all)
        return 0;
    n = fake_live_processes(gpu, 1, all, n, 0);
    for (size_t i = 0; i < n; i++)
        used += all[i].used;
    free(all);
    return used;
}

nvmlReturn_t fake_process_query(nvmlDevice_t device, const char *function, unsigned int *count, void *infos, int v1,
                                fake_process_lister list)
{
    nvmlReturn_t rc = fake_check_device(device, function);
    if (rc == NVML_SUCCESS)
        rc = fake_live_error(function);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* Processes starting meanwhile can outgrow the list between counting and listing: list again
     * rather than drop one (NVML never leaves a running process out of its answer). */
    struct fake_listed *all = NULL;
    size_t n = list(device, NULL, 0), cap = 0;
    do {
        free(all);
        cap = n + 8;
        all = calloc(cap, sizeof(*all));
        if (!all)
            return NVML_ERROR_MEMORY;
        n = list(device, all, cap);
    } while (n > cap);
    if (n > 0 && (infos == NULL || *count < n)) {
        *count = (unsigned int)n;
        free(all);
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (size_t i = 0; i < n; i++) {
        if (v1) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + i;
            memset(out, 0, sizeof(*out));
            out->pid = all[i].pid;
            out->usedGpuMemory = all[i].used;
        } else {
            nvmlProcessInfo_t *out = (nvmlProcessInfo_t *)infos + i;
            memset(out, 0, sizeof(*out));
            out->pid = all[i].pid;
            out->usedGpuMemory = all[i].used;
            /* Not a MIG device: NVML reports both instance ids as "not available". */
            out->gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            out->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        }
    }
    *count = (unsigned int)n;
    free(all);
    return NVML_SUCCESS;
}

/* The graphics queries list only the live file's graphics entries. */
static size_t graphics_processes(const struct fake_gpu *gpu, struct fake_listed *out, size_t cap)
{
    return fake_live_processes(gpu, 1, out, cap, 0);
}

static nvmlReturn_t graphics(nvmlDevice_t device, const char *function, unsigned int *count, void *infos, int v1)
{
    return fake_process_query(device, function, count, infos, v1, graphics_processes);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                       nvmlProcessInfo_t *infos)
{
    return graphics(device, __func__, infoCount, infos, 0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                       nvmlProcessInfo_t *infos)
{
    return graphics(device, __func__, infoCount, infos, 0);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                                    nvmlProcessInfo_v1_t *infos)
{
    return graphics(device, __func__, infoCount, infos, 1);
}
