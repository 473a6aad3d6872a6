/*
 * CUDA device ordinal -> the claim account its bytes are charged to, matched by UUID
 * (cuDeviceGetUuid), never by ordinal: CUDA_VISIBLE_DEVICES may reorder or hide devices.
 * Ordinals below VGPU_MAX_DEVICES are cached after the first lookup.
 */
#include <stdio.h>
#include <string.h>

#include "vgpu_internal.h"

#define DEV_UNRESOLVED 0
#define DEV_ACCOUNT 1
#define DEV_UNKNOWN 2

/* Owned by this file: a resolved entry never changes (a device's UUID is fixed for the process). */
static struct {
    int state;
    struct vgpu_account *acct;
} g_devices[VGPU_MAX_DEVICES];

static struct vgpu_account *resolve(CUdevice dev, CUresult *err)
{
    CUuuid uuid;
    static int logged_unknown;
    CUresult rc;
    if (!vgpu_helper.cuDeviceGetUuid) {
        *err = CUDA_ERROR_NOT_INITIALIZED;
        return NULL;
    }
    rc = vgpu_helper.cuDeviceGetUuid(&uuid, dev);
    if (rc != CUDA_SUCCESS) {
        *err = rc;
        return NULL;
    }
    for (int i = 0; i < vgpu_account_count; i++) {
        if (memcmp(vgpu_account_uuid[i], uuid.bytes, 16) == 0) {
            if (dev >= 0 && dev < VGPU_MAX_DEVICES) {
                g_devices[dev].acct = &vgpu_accounts[i];
                __atomic_store_n(&g_devices[dev].state, DEV_ACCOUNT, __ATOMIC_RELEASE);
            }
            return &vgpu_accounts[i];
        }
    }
    if (dev >= 0 && dev < VGPU_MAX_DEVICES)
        __atomic_store_n(&g_devices[dev].state, DEV_UNKNOWN, __ATOMIC_RELEASE);
    {
        const unsigned char *b = (const unsigned char *)uuid.bytes;
        vgpu_log_once(&logged_unknown,
                      "device %d (%02x%02x%02x%02x-...) is in no claim of this container; its allocations "
                      "are refused",
                      dev, b[0], b[1], b[2], b[3]);
    }
    *err = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
}

struct vgpu_account *vgpu_account_for_device(CUdevice dev, CUresult *err)
{
    if (VGPU_LIKELY(dev >= 0 && dev < VGPU_MAX_DEVICES)) {
        int st = __atomic_load_n(&g_devices[dev].state, __ATOMIC_ACQUIRE);
        if (VGPU_LIKELY(st == DEV_ACCOUNT))
            return g_devices[dev].acct;
        if (st == DEV_UNKNOWN) {
            *err = CUDA_ERROR_OUT_OF_MEMORY;
            return NULL;
        }
    }
    return resolve(dev, err);
}

struct vgpu_account *vgpu_account_current(CUdevice *dev_out, CUresult *err)
{
    CUdevice dev;
    CUresult rc;
    if (VGPU_UNLIKELY(!vgpu_helper.cuCtxGetDevice)) {
        *err = CUDA_ERROR_NOT_INITIALIZED;
        return NULL;
    }
    rc = vgpu_helper.cuCtxGetDevice(&dev);
    if (rc != CUDA_SUCCESS) {
        *err = rc; /* no current context: the driver would refuse the allocation too */
        return NULL;
    }
    if (dev_out)
        *dev_out = dev;
    return vgpu_account_for_device(dev, err);
}
