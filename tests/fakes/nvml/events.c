/*
 * Device health a test can change while the library is in use: NVML events (XID, ECC, page
 * retirement), a GPU that falls off the bus, pending page retirement and row remapping.
 *
 * The test appends lines to the control file named by FAKE_NVML_CONTROL (format in README.md);
 * every event wait and health query first reads the lines added since the last read, so a test
 * in one process drives a plugin in another. Only complete lines (ending in '\n') are taken.
 *
 * Events go to every event set that registered the GPU for that event type before the line was
 * read, as NVML delivers only events that happen after registration. Health state is kept by
 * UUID, not by handle, so it survives the inventory being reloaded between init cycles.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fake_nvml.h"

/* NVML's event types (nvml.h nvmlEventType*), the ones the fake can raise. */
#define EVENT_SINGLE_BIT_ECC 0x1ULL
#define EVENT_DOUBLE_BIT_ECC 0x2ULL
#define EVENT_XID 0x8ULL
#define EVENT_DRAM_RETIREMENT 0x400ULL
#define SUPPORTED_EVENTS (EVENT_SINGLE_BIT_ECC | EVENT_DOUBLE_BIT_ECC | EVENT_XID | EVENT_DRAM_RETIREMENT)

#define MAX_HEALTH 64
#define MAX_REGISTRATIONS 64
#define LINE_MAX_LEN 256

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

struct fake_event {
    char uuid[FAKE_UUID_LEN];
    unsigned long long type;
    unsigned long long data;
};

struct fake_health {
    char uuid[FAKE_UUID_LEN];
    int lost;
    int pages_pending;
    int remap_pending;
    int remap_failed;
    unsigned long long sbe_volatile;
    unsigned long long dbe_volatile;
};

struct fake_event_set {
    size_t cursor; /* index of the next g_events entry this set has not looked at */
    struct {
        char uuid[FAKE_UUID_LEN];
        unsigned long long types;
    } registered[MAX_REGISTRATIONS];
    size_t registered_count;
};

typedef struct fake_event_set *nvmlEventSet_t;

/* Guarded by g_lock: the control file's read offset, the events read so far, health by UUID. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static long g_offset;
static char g_path[4096];
static ino_t g_inode;
static struct fake_event *g_events;
static size_t g_event_count, g_event_capacity;
static struct fake_health g_health[MAX_HEALTH];
static size_t g_health_count;

static struct fake_health *health_locked(const char *uuid)
{
    size_t i;
    for (i = 0; i < g_health_count; i++) {
        if (strcmp(g_health[i].uuid, uuid) == 0)
            return &g_health[i];
    }
    if (g_health_count == MAX_HEALTH)
        return NULL;
    memset(&g_health[g_health_count], 0, sizeof(g_health[0]));
    snprintf(g_health[g_health_count].uuid, FAKE_UUID_LEN, "%s", uuid);
    return &g_health[g_health_count++];
}

static void push_event_locked(const char *uuid, unsigned long long type, unsigned long long data)
{
    if (g_event_count == g_event_capacity) {
        size_t capacity = g_event_capacity ? g_event_capacity * 2 : 32;
        struct fake_event *grown = realloc(g_events, capacity * sizeof(*grown));
        if (grown == NULL)
            return;
        g_events = grown;
        g_event_capacity = capacity;
    }
    snprintf(g_events[g_event_count].uuid, FAKE_UUID_LEN, "%s", uuid);
    g_events[g_event_count].type = type;
    g_events[g_event_count].data = data;
    g_event_count++;
}

static void apply_line_locked(const char *path, char *line)
{
    char verb[32], uuid[FAKE_UUID_LEN];
    unsigned long long value = 0;
    struct fake_health *h;
    int fields;

    if (line[0] == '#' || line[0] == '\0')
        return;
    fields = sscanf(line, "%31s %95s %llu", verb, uuid, &value);
    if (fields < 2 || (h = health_locked(uuid)) == NULL) {
        fprintf(stderr, "fake-nvml: %s: cannot read control line \"%s\"\n", path, line);
        return;
    }
    if (strcmp(verb, "xid") == 0 && fields == 3) {
        push_event_locked(uuid, EVENT_XID, value);
    } else if (strcmp(verb, "ecc-double-bit") == 0) {
        h->dbe_volatile++;
        push_event_locked(uuid, EVENT_DOUBLE_BIT_ECC, 0);
    } else if (strcmp(verb, "ecc-single-bit") == 0) {
        h->sbe_volatile++;
        push_event_locked(uuid, EVENT_SINGLE_BIT_ECC, 0);
    } else if (strcmp(verb, "page-retired") == 0) {
        h->pages_pending = 1;
        push_event_locked(uuid, EVENT_DRAM_RETIREMENT, 0);
    } else if (strcmp(verb, "remap-pending") == 0) {
        h->remap_pending = 1;
    } else if (strcmp(verb, "remap-failed") == 0) {
        h->remap_failed = 1;
    } else if (strcmp(verb, "lost") == 0) {
        h->lost = 1;
    } else if (strcmp(verb, "reset") == 0) {
        /* A GPU reset: back on the bus, pending retirement and remapping done, volatile counts 0. */
        h->lost = h->pages_pending = h->remap_pending = h->remap_failed = 0;
        h->sbe_volatile = h->dbe_volatile = 0;
    } else {
        fprintf(stderr, "fake-nvml: %s: unknown control line \"%s\"\n", path, line);
    }
}

/* Reads the lines appended to the control file since the last call. */
static void read_control_locked(void)
{
    const char *path = getenv("FAKE_NVML_CONTROL");
    char line[LINE_MAX_LEN];
    FILE *file;

    struct stat st;

    if (path == NULL || *path == '\0' || (file = fopen(path, "r")) == NULL)
        return;
    /* Another control file (the next test in the same process): start over with its health. */
    if (fstat(fileno(file), &st) == 0 && (strcmp(path, g_path) != 0 || st.st_ino != g_inode)) {
        snprintf(g_path, sizeof(g_path), "%s", path);
        g_inode = st.st_ino;
        g_offset = 0;
        g_health_count = 0;
    }
    if (fseek(file, g_offset, SEEK_SET) == 0) {
        while (fgets(line, sizeof(line), file) != NULL) {
            size_t length = strlen(line);
            if (length == 0 || line[length - 1] != '\n')
                break; /* a line still being written: read it next time */
            g_offset += (long)length;
            line[length - 1] = '\0';
            apply_line_locked(path, line);
        }
    }
    fclose(file);
}

int fake_gpu_lost(const struct fake_gpu *gpu)
{
    size_t i;
    int lost = 0;
    pthread_mutex_lock(&g_lock);
    read_control_locked();
    for (i = 0; i < g_health_count; i++) {
        if (strcmp(g_health[i].uuid, gpu->uuid) == 0)
            lost = g_health[i].lost;
    }
    pthread_mutex_unlock(&g_lock);
    return lost;
}

/* A copy of the GPU's health (all zero when the control file never named it). */
static struct fake_health health_of(const struct fake_gpu *gpu)
{
    struct fake_health copy;
    size_t i;
    memset(&copy, 0, sizeof(copy));
    pthread_mutex_lock(&g_lock);
    read_control_locked();
    for (i = 0; i < g_health_count; i++) {
        if (strcmp(g_health[i].uuid, gpu->uuid) == 0)
            copy = g_health[i];
    }
    pthread_mutex_unlock(&g_lock);
    return copy;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    struct fake_event_set *created;
    if (fake_current() == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    created = calloc(1, sizeof(*created));
    if (created == NULL)
        return NVML_ERROR_MEMORY;
    pthread_mutex_lock(&g_lock);
    read_control_locked();
    created->cursor = g_event_count; /* only what happens from now on */
    pthread_mutex_unlock(&g_lock);
    *set = created;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    if (fake_current() == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    free(set);
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    if (rc != NVML_SUCCESS)
        return rc;
    if (eventTypes == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                                       nvmlEventSet_t set)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    size_t i;
    if (rc != NVML_SUCCESS)
        return rc;
    if (set == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((eventTypes & ~SUPPORTED_EVENTS) != 0)
        return NVML_ERROR_NOT_SUPPORTED; /* as NVML answers for a type the board cannot raise */
    pthread_mutex_lock(&g_lock);
    read_control_locked();
    for (i = 0; i < set->registered_count; i++) {
        if (strcmp(set->registered[i].uuid, device->uuid) == 0)
            break;
    }
    if (i == set->registered_count) {
        if (i == MAX_REGISTRATIONS) {
            pthread_mutex_unlock(&g_lock);
            return NVML_ERROR_INSUFFICIENT_SIZE;
        }
        snprintf(set->registered[i].uuid, FAKE_UUID_LEN, "%s", device->uuid);
        set->registered[i].types = 0;
        set->registered_count++;
    }
    set->registered[i].types |= eventTypes;
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

static nvmlDevice_t device_by_uuid(const char *uuid)
{
    const struct fake_inventory *inv = fake_current();
    size_t i;
    for (i = 0; inv != NULL && i < inv->gpu_count; i++) {
        if (strcmp(inv->gpus[i].uuid, uuid) == 0)
            return &inv->gpus[i];
    }
    return NULL;
}

/* The next event for `set`, if one was read; 1 when `data` was filled. */
static int next_event(nvmlEventSet_t set, nvmlEventData_t *data)
{
    size_t i;
    int found = 0;
    pthread_mutex_lock(&g_lock);
    read_control_locked();
    while (!found && set->cursor < g_event_count) {
        const struct fake_event *event = &g_events[set->cursor++];
        for (i = 0; i < set->registered_count; i++) {
            nvmlDevice_t device;
            if (strcmp(set->registered[i].uuid, event->uuid) != 0 || !(set->registered[i].types & event->type))
                continue;
            if ((device = device_by_uuid(event->uuid)) == NULL)
                continue;
            memset(data, 0, sizeof(*data));
            data->device = device;
            data->eventType = event->type;
            data->eventData = event->data;
            data->gpuInstanceId = data->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

static nvmlReturn_t event_wait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    struct timespec step = {0, 10 * 1000 * 1000};
    unsigned int waited = 0;
    if (fake_current() == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL || data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (;;) {
        if (next_event(set, data))
            return NVML_SUCCESS;
        if (waited >= timeoutms)
            return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL); /* the control file has no notification; 10 ms polling is plenty */
        waited += 10;
    }
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return event_wait(set, data, timeoutms);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return event_wait(set, data, timeoutms);
}

/* nvmlEnableState_t: NVML_FEATURE_DISABLED = 0, NVML_FEATURE_ENABLED = 1. */
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, unsigned int *isPending)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    if (rc != NVML_SUCCESS)
        return rc;
    if (isPending == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *isPending = health_of(device).pages_pending ? 1u : 0u;
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                                        unsigned int *uncRows, unsigned int *isPending,
                                                        unsigned int *failureOccurred)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    struct fake_health h;
    if (rc != NVML_SUCCESS)
        return rc;
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    h = health_of(device);
    *corrRows = 0;
    *uncRows = h.remap_pending || h.remap_failed ? 1u : 0u;
    *isPending = h.remap_pending ? 1u : 0u;
    *failureOccurred = h.remap_failed ? 1u : 0u;
    return NVML_SUCCESS;
}

/* errorType: NVML_MEMORY_ERROR_TYPE_CORRECTED 0, _UNCORRECTED 1; counterType: VOLATILE 0,
 * AGGREGATE 1 (the fake keeps one count for both). */
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, unsigned int errorType,
                                                          unsigned int counterType, unsigned long long *eccCounts)
{
    nvmlReturn_t rc = fake_check_device(device, __func__);
    struct fake_health h;
    if (rc != NVML_SUCCESS)
        return rc;
    if (eccCounts == NULL || errorType > 1 || counterType > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    h = health_of(device);
    *eccCounts = errorType == 1 ? h.dbe_volatile : h.sbe_volatile;
    return NVML_SUCCESS;
}
