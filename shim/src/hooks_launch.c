/*
 * Kernel launches (all variants, including cooperative and graph launches and their _ptsz twins)
 * pass straight to the driver. The SM-core limiter (issue 4) plugs in behind one relaxed load of
 * vgpu_limiter_active; with no core cap that load and a branch are the whole cost.
 */
#include "vgpu_internal.h"

#define LAUNCH_GATE(name, args)                                                                       \
    do {                                                                                              \
        vgpu_ensure_init();                                                                           \
        if (VGPU_UNLIKELY(vgpu_mode == VGPU_MODE_FAIL_CLOSED))                                        \
            return CUDA_ERROR_NOT_PERMITTED;                                                          \
        if (VGPU_UNLIKELY(__atomic_load_n(&vgpu_limiter_active, __ATOMIC_RELAXED)))                   \
            vgpu_limiter_before_launch();                                                             \
        return VGPU_CALL_REAL(name, args);                                                            \
    } while (0)

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                    void **extra)
{
    LAUNCH_GATE(cuLaunchKernel, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                         unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                         CUstream s, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernel_ptsz, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernelEx, (config, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernelEx_ptsz, (config, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                               CUstream s, void **params)
{
    LAUNCH_GATE(cuLaunchCooperativeKernel, (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                    unsigned int bx, unsigned int by, unsigned int bz,
                                                    unsigned int shmem, CUstream s, void **params)
{
    LAUNCH_GATE(cuLaunchCooperativeKernel_ptsz, (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    LAUNCH_GATE(cuGraphLaunch, (g, s));
}

VGPU_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    LAUNCH_GATE(cuGraphLaunch_ptsz, (g, s));
}
