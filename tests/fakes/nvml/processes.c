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
 * is the same as an empty one (a test that removes it removes its processes).
 *
 * Compute entries join nvmlDeviceGetComputeRunningProcesses* (after the inventory's and the fake
 * CUDA driver's processes); graphics entries are what nvmlDeviceGetGraphicsRunningProcesses*
 * answer. Both count in the GPU's used memory.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_nvml.h"

#define LINE_MAX_LEN 512

static FILE *open_live(void)
{
    const char *path = getenv("FAKE_NVML_PROCESSES");
    if (!path || !*path)
        return NULL;
    return fopen(path, "re");
}

static void complain_once(const char *line)
{
    static int complained;
    if (!complained) {
        complained = 1;
        fprintf(stderr, "fake NVML: ignoring a line of FAKE_NVML_PROCESSES it cannot parse: %s\n", line);
    }
}

size_t fake_live_processes(const struct fake_gpu *gpu, int graphics, struct fake_listed *out, size_t cap, size_t n)
{
    char line[LINE_MAX_LEN];
    FILE *f = open_live();
    if (!f)
        return n;
    while (fgets(line, sizeof(line), f)) {
        char uuid[FAKE_UUID_LEN], pid_text[32], kind[16] = "compute";
        unsigned long long used;
        line[strcspn(line, "\n")] = '\0';
        const char *start = line + strspn(line, " \t");
        if (*start == '\0' || *start == '#' || strncmp(start, "error ", 6) == 0)
            continue;
        int fields = sscanf(start, "%95s %31s %llu %15s", uuid, pid_text, &used, kind);
        int is_graphics = strcmp(kind, "graphics") == 0;
        if (fields < 3 || (!is_graphics && strcmp(kind, "compute") != 0)) {
            complain_once(start);
            continue;
        }
        if (is_graphics != graphics || strcmp(uuid, gpu->uuid) != 0)
            continue;
        struct fake_process p = {0, strcmp(pid_text, "self") == 0, used};
        if (!p.is_self) {
            char *end = NULL;
            unsigned long pid = strtoul(pid_text, &end, 10);
            if (*pid_text == '\0' || *end != '\0' || pid == 0 || pid > 0xffffffffUL) {
                complain_once(start);
                continue;
            }
            p.pid = (unsigned int)pid;
        }
        if (out && n < cap)
            out[n] = (struct fake_listed){fake_activity_pid(&p), used};
        n++;
    }
    fclose(f);
    return n;
}

nvmlReturn_t fake_live_error(const char *function)
{
    char line[LINE_MAX_LEN];
    nvmlReturn_t rc = NVML_SUCCESS;
    FILE *f = open_live();
    if (!f)
        return NVML_SUCCESS;
    while (rc == NVML_SUCCESS && fgets(line, sizeof(line), f)) {
        char name[64], code[48];
        line[strcspn(line, "\n")] = '\0';
        const char *start = line + strspn(line, " \t");
        if (strncmp(start, "error ", 6) != 0)
            continue;
        if (sscanf(start + 6, "%63s %47s", name, code) != 2 || fake_error_code_from_text(code, &rc) != 0) {
            complain_once(start);
            rc = NVML_SUCCESS;
            continue;
        }
        if (strcmp(name, function) != 0)
            rc = NVML_SUCCESS;
    }
    fclose(f);
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

/* The two-call protocol of the graphics process queries (same as the compute ones, activity.c). */
static nvmlReturn_t graphics(nvmlDevice_t device, const char *function, unsigned int *count, void *infos, int v1)
{
    nvmlReturn_t rc = fake_check_device(device, function);
    if (rc == NVML_SUCCESS)
        rc = fake_live_error(function);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = fake_live_processes(device, 1, NULL, 0, 0), cap = n + 8;
    struct fake_listed *all = calloc(cap, sizeof(*all));
    if (!all)
        return NVML_ERROR_MEMORY;
    n = fake_live_processes(device, 1, all, cap, 0);
    if (n > cap)
        n = cap;
    if (n > 0 && (infos == NULL || *count < n)) {
        *count = (unsigned int)n;
        free(all);
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (size_t i = 0; i < n; i++) {
        if (v1) {
            nvmlProcessInfo_v1_t *o = (nvmlProcessInfo_v1_t *)infos + i;
            memset(o, 0, sizeof(*o));
            o->pid = all[i].pid;
            o->usedGpuMemory = all[i].used;
        } else {
            nvmlProcessInfo_t *o = (nvmlProcessInfo_t *)infos + i;
            memset(o, 0, sizeof(*o));
            o->pid = all[i].pid;
            o->usedGpuMemory = all[i].used;
            o->gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            o->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        }
    }
    *count = (unsigned int)n;
    free(all);
    return NVML_SUCCESS;
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
