/*
 * cuGetProcAddress of the fake driver, modelled on the real one: a base name plus the caller's
 * cudaVersion selects the newest ABI variant introduced at or before that version; the
 * per-thread-default-stream flag selects the _ptsz twin where one exists.
 */
#include <string.h>

#include "fake_cuda.h"

#define F(name) extern CUresult name();
F(cuInit) F(cuDriverGetVersion) F(cuDeviceGet) F(cuDeviceGetCount) F(cuDeviceGetUuid) F(cuDeviceGetUuid_v2)
F(cuDeviceTotalMem) F(cuDeviceTotalMem_v2) F(cuMemGetInfo) F(cuMemGetInfo_v2) F(cuCtxCreate) F(cuCtxCreate_v2)
F(cuCtxCreate_v3) F(cuCtxCreate_v4) F(cuCtxDestroy_v2) F(cuCtxGetDevice) F(cuCtxSetCurrent) F(cuCtxGetCurrent)
F(cuCtxPushCurrent_v2) F(cuCtxPopCurrent_v2) F(cuDevicePrimaryCtxRetain) F(cuDevicePrimaryCtxRelease_v2)
F(cuMemAlloc) F(cuMemAlloc_v2) F(cuMemFree) F(cuMemFree_v2) F(cuMemAllocPitch) F(cuMemAllocPitch_v2)
F(cuMemAllocManaged) F(cuArrayCreate_v2) F(cuArray3DCreate_v2) F(cuArrayDestroy) F(cuArrayGetMemoryRequirements)
F(cuMipmappedArrayCreate) F(cuMipmappedArrayDestroy) F(cuMipmappedArrayGetMemoryRequirements) F(cuMemCreate)
F(cuMemRelease) F(cuMemAllocAsync) F(cuMemAllocAsync_ptsz) F(cuMemFreeAsync) F(cuMemFreeAsync_ptsz)
F(cuMemAllocFromPoolAsync) F(cuMemAllocFromPoolAsync_ptsz) F(cuDeviceGetDefaultMemPool) F(cuMemPoolCreate)
F(cuMemPoolDestroy) F(cuDeviceGetMemPool) F(cuLaunchKernel)
F(cuLaunchKernel_ptsz) F(cuLaunchKernelEx) F(cuLaunchKernelEx_ptsz) F(cuLaunchCooperativeKernel)
F(cuLaunchCooperativeKernel_ptsz) F(cuGraphLaunch) F(cuGraphLaunch_ptsz) F(cuGraphExecDestroy) F(cuStreamCreate)
F(cuStreamDestroy_v2) F(cuStreamSynchronize) F(cuStreamSynchronize_ptsz) F(cuCtxSynchronize) F(cuEventCreate)
F(cuEventDestroy_v2) F(cuStreamIsCapturing) F(cuThreadExchangeStreamCaptureMode) F(cuEventRecord) F(cuEventRecord_ptsz) F(cuEventQuery) F(cuEventSynchronize) F(cuEventElapsedTime)
#undef F

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status);

struct variant {
    const char *base;
    int since;   /* first cudaVersion (1000*major + 10*minor) that gets this variant */
    void *fn;
    void *ptsz;  /* per-thread default stream twin, if any */
};

static const struct variant g_table[] = {
    {"cuInit", 2000, (void *)cuInit, 0},
    {"cuDriverGetVersion", 2020, (void *)cuDriverGetVersion, 0},
    {"cuGetProcAddress", 11030, (void *)cuGetProcAddress, 0},
    {"cuGetProcAddress", 12000, (void *)cuGetProcAddress_v2, 0},
    {"cuDeviceGet", 2000, (void *)cuDeviceGet, 0},
    {"cuDeviceGetCount", 2000, (void *)cuDeviceGetCount, 0},
    {"cuDeviceGetUuid", 9020, (void *)cuDeviceGetUuid, 0},
    {"cuDeviceGetUuid", 11040, (void *)cuDeviceGetUuid_v2, 0},
    {"cuDeviceTotalMem", 2000, (void *)cuDeviceTotalMem, 0},
    {"cuDeviceTotalMem", 3020, (void *)cuDeviceTotalMem_v2, 0},
    {"cuMemGetInfo", 2000, (void *)cuMemGetInfo, 0},
    {"cuMemGetInfo", 3020, (void *)cuMemGetInfo_v2, 0},
    {"cuCtxCreate", 2000, (void *)cuCtxCreate, 0},
    {"cuCtxCreate", 3020, (void *)cuCtxCreate_v2, 0},
    {"cuCtxCreate", 11040, (void *)cuCtxCreate_v3, 0},
    {"cuCtxCreate", 12050, (void *)cuCtxCreate_v4, 0},
    {"cuCtxDestroy", 4000, (void *)cuCtxDestroy_v2, 0},
    {"cuCtxGetDevice", 2000, (void *)cuCtxGetDevice, 0},
    {"cuCtxSetCurrent", 4000, (void *)cuCtxSetCurrent, 0},
    {"cuCtxGetCurrent", 4000, (void *)cuCtxGetCurrent, 0},
    {"cuCtxPushCurrent", 4000, (void *)cuCtxPushCurrent_v2, 0},
    {"cuCtxPopCurrent", 4000, (void *)cuCtxPopCurrent_v2, 0},
    {"cuDevicePrimaryCtxRetain", 7000, (void *)cuDevicePrimaryCtxRetain, 0},
    {"cuDevicePrimaryCtxRelease", 11000, (void *)cuDevicePrimaryCtxRelease_v2, 0},
    {"cuMemAlloc", 2000, (void *)cuMemAlloc, 0},
    {"cuMemAlloc", 3020, (void *)cuMemAlloc_v2, 0},
    {"cuMemFree", 2000, (void *)cuMemFree, 0},
    {"cuMemFree", 3020, (void *)cuMemFree_v2, 0},
    {"cuMemAllocPitch", 2000, (void *)cuMemAllocPitch, 0},
    {"cuMemAllocPitch", 3020, (void *)cuMemAllocPitch_v2, 0},
    {"cuMemAllocManaged", 6000, (void *)cuMemAllocManaged, 0},
    {"cuArrayCreate", 3020, (void *)cuArrayCreate_v2, 0},
    {"cuArray3DCreate", 3020, (void *)cuArray3DCreate_v2, 0},
    {"cuArrayDestroy", 2000, (void *)cuArrayDestroy, 0},
#ifndef FAKE_OMIT_MEMORY_REQUIREMENTS
    {"cuArrayGetMemoryRequirements", 11060, (void *)cuArrayGetMemoryRequirements, 0},
#endif
    {"cuMipmappedArrayCreate", 5000, (void *)cuMipmappedArrayCreate, 0},
    {"cuMipmappedArrayDestroy", 5000, (void *)cuMipmappedArrayDestroy, 0},
#ifndef FAKE_OMIT_MEMORY_REQUIREMENTS
    {"cuMipmappedArrayGetMemoryRequirements", 11060, (void *)cuMipmappedArrayGetMemoryRequirements, 0},
#endif
    {"cuMemCreate", 10020, (void *)cuMemCreate, 0},
    {"cuMemRelease", 10020, (void *)cuMemRelease, 0},
    {"cuMemAllocAsync", 11020, (void *)cuMemAllocAsync, (void *)cuMemAllocAsync_ptsz},
    {"cuMemFreeAsync", 11020, (void *)cuMemFreeAsync, (void *)cuMemFreeAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, (void *)cuMemAllocFromPoolAsync, (void *)cuMemAllocFromPoolAsync_ptsz},
    {"cuDeviceGetDefaultMemPool", 11020, (void *)cuDeviceGetDefaultMemPool, 0},
    {"cuDeviceGetMemPool", 11020, (void *)cuDeviceGetMemPool, 0},
    {"cuMemPoolCreate", 11020, (void *)cuMemPoolCreate, 0},
    {"cuMemPoolDestroy", 11020, (void *)cuMemPoolDestroy, 0},
    {"cuLaunchKernel", 4000, (void *)cuLaunchKernel, (void *)cuLaunchKernel_ptsz},
    {"cuLaunchKernelEx", 11060, (void *)cuLaunchKernelEx, (void *)cuLaunchKernelEx_ptsz},
    {"cuLaunchCooperativeKernel", 9000, (void *)cuLaunchCooperativeKernel, (void *)cuLaunchCooperativeKernel_ptsz},
    {"cuGraphLaunch", 10000, (void *)cuGraphLaunch, (void *)cuGraphLaunch_ptsz},
    {"cuGraphExecDestroy", 10000, (void *)cuGraphExecDestroy, 0},
    {"cuStreamCreate", 2000, (void *)cuStreamCreate, 0},
    {"cuStreamDestroy", 4000, (void *)cuStreamDestroy_v2, 0},
    {"cuStreamSynchronize", 2000, (void *)cuStreamSynchronize, (void *)cuStreamSynchronize_ptsz},
    {"cuCtxSynchronize", 2000, (void *)cuCtxSynchronize, 0},
    {"cuStreamIsCapturing", 10000, (void *)cuStreamIsCapturing, 0},
    {"cuThreadExchangeStreamCaptureMode", 10010, (void *)cuThreadExchangeStreamCaptureMode, 0},
#ifndef FAKE_OMIT_EVENTS
    {"cuEventCreate", 2000, (void *)cuEventCreate, 0},
    {"cuEventDestroy", 4000, (void *)cuEventDestroy_v2, 0},
    {"cuEventRecord", 2000, (void *)cuEventRecord, (void *)cuEventRecord_ptsz},
    {"cuEventQuery", 2000, (void *)cuEventQuery, 0},
    {"cuEventSynchronize", 2000, (void *)cuEventSynchronize, 0},
    {"cuEventElapsedTime", 2000, (void *)cuEventElapsedTime, 0},
#endif
};

static CUresult lookup(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                       CUdriverProcAddressQueryResult *status)
{
    const struct variant *best = NULL;
    int known = 0;
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < sizeof(g_table) / sizeof(g_table[0]); i++) {
        if (strcmp(g_table[i].base, symbol) != 0)
            continue;
        known = 1;
        if (g_table[i].since <= cudaVersion && (!best || g_table[i].since > best->since))
            best = &g_table[i];
    }
    *pfn = NULL;
    if (!best) {
        if (status)
            *status = known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && best->ptsz ? best->ptsz : best->fn;
    if (status)
        *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return lookup(symbol, pfn, cudaVersion, flags, NULL);
}

FAKE_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *status)
{
    return lookup(symbol, pfn, cudaVersion, flags, status);
}
