/*
 * Every other way to reach the driver API: cuGetProcAddress / cuGetProcAddress_v2 and dlsym.
 * The real driver decides which ABI variant a (name, cudaVersion, flags) request gets; we then map
 * the function it returned back to our wrapper of exactly that variant, by address. So a caller
 * asking for "cuMemAlloc" with cudaVersion 3000 gets our cuMemAlloc (v1), with 12000 our
 * cuMemAlloc_v2, with the per-thread flag our _ptsz twin — and a variant we do not wrap is handed
 * back untouched rather than mapped to a wrapper of another signature.
 */
#include <dlfcn.h>
#include <string.h>

#include "glibc_compat.h"
#include "vgpu_internal.h"

#define VGPU_DECLARE_HOOK(name, params, args) CUresult name params;
VGPU_CUDA_HOOKS(VGPU_DECLARE_HOOK)
#undef VGPU_DECLARE_HOOK

struct hook_entry {
    const char *name;
    void *hook;
    void **real;
};

static const struct hook_entry g_hooks[] = {
#define VGPU_HOOK_ENTRY(name, params, args) {#name, (void *)name, (void **)&vgpu_real.name},
    VGPU_CUDA_HOOKS(VGPU_HOOK_ENTRY)
#undef VGPU_HOOK_ENTRY
};

void *vgpu_hook_for_real(void *real)
{
    if (!real)
        return NULL;
    for (unsigned i = 0; i < sizeof(g_hooks) / sizeof(g_hooks[0]); i++)
        if (*g_hooks[i].real == real)
            return g_hooks[i].hook;
    return NULL;
}

static void wrap(void **pfn)
{
    void *hook;
    if (pfn && *pfn && (hook = vgpu_hook_for_real(*pfn)) != NULL)
        *pfn = hook;
}

VGPU_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    VGPU_GATE(cuGetProcAddress, (symbol, pfn, cudaVersion, flags));
    CUresult rc = vgpu_real.cuGetProcAddress(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS)
        wrap(pfn);
    return rc;
}

VGPU_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *symbolStatus)
{
    VGPU_GATE(cuGetProcAddress_v2, (symbol, pfn, cudaVersion, flags, symbolStatus));
    CUresult rc = vgpu_real.cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (rc == CUDA_SUCCESS)
        wrap(pfn);
    return rc;
}

/* Only driver-API names: "cu" or "nvml" followed by an upper-case letter (not curl_*, cublas*, ...). */
static int driver_api_name(const char *name)
{
    if (name[0] == 'c' && name[1] == 'u')
        return name[2] >= 'A' && name[2] <= 'Z';
    if (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l')
        return name[4] >= 'A' && name[4] <= 'Z';
    return 0;
}

static __attribute__((noinline)) void *dlsym_driver_api(void *handle, const char *name)
{
    void *found = vgpu_real_dlsym(handle, name);
    void *hook;
    if (!found || vgpu_in_init())
        return found;
    vgpu_ensure_init();
    if (vgpu_mode == VGPU_MODE_PASS)
        return found;
    /* RTLD_NEXT resolves relative to this library, i.e. to the real driver: route it through the
     * hooks too, so dlsym(RTLD_NEXT, "cuMemAlloc_v2") is no bypass. */
    hook = name[0] == 'n' ? vgpu_nvml_hook_for_real(found) : vgpu_hook_for_real(found);
    return hook ? hook : found;
}

/*
 * Exported dlsym. Any other name goes to the real dlsym as a sibling call (a jump at -O2), so the
 * real dlsym sees the original caller's return address and RTLD_NEXT keeps its meaning for every
 * library that is not the CUDA driver.
 */
VGPU_EXPORT VGPU_TAIL_CALLS void *dlsym(void *handle, const char *name)
{
    if (VGPU_UNLIKELY(driver_api_name(name)))
        return dlsym_driver_api(handle, name);
    return vgpu_real_dlsym(handle, name);
}
