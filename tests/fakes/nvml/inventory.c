/* Parser of the fake's flat inventory file: one `key value` per line, `gpu` opens a device. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_nvml.h"

#define FORMAT_HEADER "fake-nvml-inventory"
#define FORMAT_VERSION 1

struct parser {
    const char *path;
    unsigned long line;
    struct fake_inventory *inv;
};

static int fail(const struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(const struct parser *p, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fake-nvml: %s:%lu: ", p->path, p->line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return -1;
}

static int parse_ull(const struct parser *p, const char *key, const char *text, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    if (text == NULL || *text == '\0' || *text == '-')
        return fail(p, "%s needs a non-negative integer", key);
    *out = strtoull(text, &end, 0);
    if (errno != 0 || *end != '\0')
        return fail(p, "%s: '%s' is not a non-negative integer", key, text);
    return 0;
}

static int parse_uint(const struct parser *p, const char *key, const char *text, unsigned int *out)
{
    unsigned long long value;
    if (parse_ull(p, key, text, &value) != 0)
        return -1;
    if (value > 0xFFFFFFFFull)
        return fail(p, "%s: %llu does not fit 32 bits", key, value);
    *out = (unsigned int)value;
    return 0;
}

static int parse_int(const struct parser *p, const char *key, const char *text, int *out)
{
    char *end = NULL;
    long value;
    errno = 0;
    if (text == NULL || *text == '\0')
        return fail(p, "%s needs an integer", key);
    value = strtol(text, &end, 0);
    if (errno != 0 || *end != '\0' || value < -2147483647L - 1 || value > 2147483647L)
        return fail(p, "%s: '%s' is not a 32-bit integer", key, text);
    *out = (int)value;
    return 0;
}

static int copy_text(const struct parser *p, const char *key, const char *text, char *dst, size_t size)
{
    if (text == NULL || *text == '\0')
        return fail(p, "%s needs a value", key);
    if (strlen(text) >= size)
        return fail(p, "%s: value longer than %zu characters", key, size - 1);
    strcpy(dst, text);
    return 0;
}

static int add_error(const struct parser *p, struct fake_error *errors, size_t *count, char *rest)
{
    char *function = strtok(rest, " \t");
    char *code = strtok(NULL, " \t");
    if (function == NULL || code == NULL)
        return fail(p, "error needs '<nvmlFunction> <code or name>'");
    if (*count == FAKE_MAX_ERRORS)
        return fail(p, "more than %d injected errors in one scope", FAKE_MAX_ERRORS);
    if (strlen(function) >= sizeof(errors[0].function))
        return fail(p, "error: function name '%s' too long", function);
    if (fake_error_code_from_text(code, &errors[*count].code) != 0)
        return fail(p, "error: '%s' is neither an NVML return code nor a known name", code);
    strcpy(errors[*count].function, function);
    (*count)++;
    return 0;
}

static int add_gpu(const struct parser *p)
{
    struct fake_inventory *inv = p->inv;
    struct fake_gpu *grown = realloc(inv->gpus, (inv->gpu_count + 1) * sizeof(*grown));
    struct fake_gpu *gpu;
    if (grown == NULL)
        return fail(p, "out of memory");
    inv->gpus = grown;
    gpu = &inv->gpus[inv->gpu_count];
    memset(gpu, 0, sizeof(*gpu));
    gpu->index = (unsigned int)inv->gpu_count;
    gpu->minor_number = gpu->index;
    gpu->numa_node = -1;
    inv->gpu_count++;
    return 0;
}

static int add_process(const struct parser *p, struct fake_gpu *gpu, char *rest)
{
    char *pid_text = strtok(rest, " \t");
    char *used_text = strtok(NULL, " \t");
    struct fake_process *grown;
    unsigned int pid = 0;
    int is_self = pid_text != NULL && strcmp(pid_text, "self") == 0;
    unsigned long long used = 0;
    if ((!is_self && parse_uint(p, "process pid", pid_text, &pid) != 0) ||
        parse_ull(p, "process usedGpuMemory", used_text, &used) != 0)
        return -1;
    grown = realloc(gpu->processes, (gpu->process_count + 1) * sizeof(*grown));
    if (grown == NULL)
        return fail(p, "out of memory");
    gpu->processes = grown;
    gpu->processes[gpu->process_count].pid = pid;
    gpu->processes[gpu->process_count].is_self = is_self;
    gpu->processes[gpu->process_count].used_bytes = used;
    gpu->process_count++;
    return 0;
}

static int two_values(const struct parser *p, const char *key, char *rest, char **first, char **second)
{
    *first = strtok(rest, " \t");
    *second = strtok(NULL, " \t");
    if (*first == NULL || *second == NULL || strtok(NULL, " \t") != NULL)
        return fail(p, "%s needs exactly two values", key);
    return 0;
}

static int gpu_key(const struct parser *p, struct fake_gpu *gpu, const char *key, char *rest)
{
    char *a, *b;
    if (strcmp(key, "uuid") == 0)
        return copy_text(p, key, rest, gpu->uuid, sizeof(gpu->uuid));
    if (strcmp(key, "name") == 0)
        return copy_text(p, key, rest, gpu->name, sizeof(gpu->name));
    if (strcmp(key, "brand") == 0)
        return parse_uint(p, key, rest, &gpu->brand);
    if (strcmp(key, "architecture") == 0)
        return parse_uint(p, key, rest, &gpu->architecture);
    if (strcmp(key, "compute_capability") == 0) {
        if (two_values(p, key, rest, &a, &b) != 0)
            return -1;
        return parse_int(p, key, a, &gpu->cc_major) || parse_int(p, key, b, &gpu->cc_minor) ? -1 : 0;
    }
    if (strcmp(key, "pci_bus_id") == 0)
        return copy_text(p, key, rest, gpu->pci_bus_id, sizeof(gpu->pci_bus_id));
    if (strcmp(key, "pci_device_id") == 0)
        return parse_uint(p, key, rest, &gpu->pci_device_id);
    if (strcmp(key, "pci_subsystem_id") == 0)
        return parse_uint(p, key, rest, &gpu->pci_subsystem_id);
    if (strcmp(key, "minor_number") == 0)
        return parse_uint(p, key, rest, &gpu->minor_number);
    if (strcmp(key, "numa_node") == 0)
        return parse_int(p, key, rest, &gpu->numa_node);
    if (strcmp(key, "memory_total") == 0)
        return parse_ull(p, key, rest, &gpu->memory_total);
    if (strcmp(key, "memory_reserved") == 0)
        return parse_ull(p, key, rest, &gpu->memory_reserved);
    if (strcmp(key, "mig_mode") == 0) {
        if (two_values(p, key, rest, &a, &b) != 0)
            return -1;
        return parse_uint(p, key, a, &gpu->mig_current) || parse_uint(p, key, b, &gpu->mig_pending) ? -1 : 0;
    }
    if (strcmp(key, "utilization") == 0) {
        if (two_values(p, key, rest, &a, &b) != 0)
            return -1;
        if (parse_uint(p, key, a, &gpu->util_gpu) || parse_uint(p, key, b, &gpu->util_memory))
            return -1;
        if (gpu->util_gpu > 100 || gpu->util_memory > 100)
            return fail(p, "utilization values are percentages (0-100)");
        return 0;
    }
    if (strcmp(key, "process") == 0)
        return add_process(p, gpu, rest);
    if (strcmp(key, "error") == 0)
        return add_error(p, gpu->errors, &gpu->error_count, rest);
    return fail(p, "unknown GPU key '%s'", key);
}

static int system_key(const struct parser *p, const char *key, char *rest)
{
    struct fake_inventory *inv = p->inv;
    if (strcmp(key, "driver_version") == 0)
        return copy_text(p, key, rest, inv->driver_version, sizeof(inv->driver_version));
    if (strcmp(key, "nvml_version") == 0)
        return copy_text(p, key, rest, inv->nvml_version, sizeof(inv->nvml_version));
    if (strcmp(key, "cuda_driver_version") == 0)
        return parse_int(p, key, rest, &inv->cuda_driver_version);
    if (strcmp(key, "error") == 0)
        return add_error(p, inv->errors, &inv->error_count, rest);
    return fail(p, "unknown key '%s' before the first 'gpu' line", key);
}

static int check_complete(const struct parser *p)
{
    const struct fake_inventory *inv = p->inv;
    size_t i;
    if (inv->driver_version[0] == '\0')
        return fail(p, "missing driver_version");
    if (inv->cuda_driver_version <= 0)
        return fail(p, "missing cuda_driver_version");
    for (i = 0; i < inv->gpu_count; i++) {
        const struct fake_gpu *gpu = &inv->gpus[i];
        if (gpu->uuid[0] == '\0' || gpu->name[0] == '\0' || gpu->pci_bus_id[0] == '\0' ||
            gpu->memory_total == 0)
            return fail(p, "gpu %zu needs at least uuid, name, pci_bus_id and memory_total", i);
        unsigned int pci[4];
        if (fake_parse_pci_bus_id(gpu->pci_bus_id, &pci[0], &pci[1], &pci[2], &pci[3]) != 0)
            return fail(p, "gpu %zu: pci_bus_id '%s' is not domain:bus:device.function", i, gpu->pci_bus_id);
        if (gpu->memory_reserved > gpu->memory_total)
            return fail(p, "gpu %zu: memory_reserved exceeds memory_total", i);
    }
    return 0;
}

static char *trim(char *text)
{
    char *end;
    while (*text == ' ' || *text == '\t')
        text++;
    end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    return text;
}

int fake_inventory_load(const char *path, struct fake_inventory *out)
{
    struct parser p = {path, 0, out};
    FILE *file = fopen(path, "r");
    char *buffer = NULL;
    size_t capacity = 0;
    int seen_header = 0;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if (file == NULL) {
        fprintf(stderr, "fake-nvml: cannot open inventory %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (rc == 0 && getline(&buffer, &capacity, file) >= 0) {
        char *line = trim(buffer);
        char *key, *rest;
        p.line++;
        if (*line == '\0' || *line == '#')
            continue;
        key = line;
        rest = line + strcspn(line, " \t");
        if (*rest != '\0')
            *rest++ = '\0';
        rest = trim(rest);
        if (!seen_header) {
            if (strcmp(key, FORMAT_HEADER) != 0 || atoi(rest) != FORMAT_VERSION)
                rc = fail(&p, "first line must be '%s %d'", FORMAT_HEADER, FORMAT_VERSION);
            seen_header = 1;
        } else if (strcmp(key, "gpu") == 0) {
            rc = add_gpu(&p);
        } else if (out->gpu_count > 0) {
            rc = gpu_key(&p, &out->gpus[out->gpu_count - 1], key, rest);
        } else {
            rc = system_key(&p, key, rest);
        }
    }
    free(buffer);
    fclose(file);
    if (rc == 0 && !seen_header)
        rc = fail(&p, "empty inventory file");
    if (rc == 0)
        rc = check_complete(&p);
    if (rc == 0 && out->nvml_version[0] == '\0')
        snprintf(out->nvml_version, sizeof(out->nvml_version), "%d.%s",
                 out->cuda_driver_version / 1000, out->driver_version);
    if (rc != 0)
        fake_inventory_free(out);
    return rc;
}

void fake_inventory_free(struct fake_inventory *inv)
{
    size_t i;
    for (i = 0; i < inv->gpu_count; i++)
        free(inv->gpus[i].processes);
    free(inv->gpus);
    memset(inv, 0, sizeof(*inv));
}
