/*
 * Kernel launches: every variant, including cooperative and graph launches and their _ptsz twins
 * (reached the same way as the memory hooks: exported symbols, dlsym, cuGetProcAddress). Without
 * a core cap in the process, one relaxed load of vgpu_limiter_active and a predictable branch are
 * the whole cost; with one, the limiter (limiter.c) may hold the launch back before the driver
 * call and times it on its stream.
 */
#include "vgpu_internal.h"

#define LAUNCH_GATE(name, stream, per_thread_stream, kind, args)                                      \
    do {                                                                                              \
        vgpu_ensure_init();                                                                           \
        if (VGPU_UNLIKELY(vgpu_mode == VGPU_MODE_FAIL_CLOSED))                                        \
            return CUDA_ERROR_NOT_PERMITTED;                                                          \
        if (VGPU_UNLIKELY(__atomic_load_n(&vgpu_limiter_active, __ATOMIC_RELAXED)) &&                 \
            vgpu_mode == VGPU_MODE_ENFORCE) {                                                         \
            struct vgpu_launch_ticket ticket;                                                         \
            vgpu_limiter_before_launch(&ticket, stream, per_thread_stream, kind);                     \
            CUresult rc_ = VGPU_CALL_REAL(name, args);                                                \
            vgpu_limiter_after_launch(&ticket, stream, per_thread_stream, rc_);                       \
            return rc_;                                                                               \
        }                                                                                             \
        return VGPU_CALL_REAL(name, args);                                                            \
    } while (0)

#define EX_STREAM(config) ((config) ? (config)->hStream : NULL)

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                    void **extra)
{
    LAUNCH_GATE(cuLaunchKernel, s, 0, VGPU_LAUNCH_KERNEL, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                         unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                         CUstream s, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernel_ptsz, s, 1, VGPU_LAUNCH_KERNEL, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernelEx, EX_STREAM(config), 0, VGPU_LAUNCH_KERNEL, (config, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH_GATE(cuLaunchKernelEx_ptsz, EX_STREAM(config), 1, VGPU_LAUNCH_KERNEL, (config, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                               CUstream s, void **params)
{
    LAUNCH_GATE(cuLaunchCooperativeKernel, s, 0, VGPU_LAUNCH_KERNEL, (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                    unsigned int bx, unsigned int by, unsigned int bz,
                                                    unsigned int shmem, CUstream s, void **params)
{
    LAUNCH_GATE(cuLaunchCooperativeKernel_ptsz, s, 1, VGPU_LAUNCH_KERNEL,
                (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    LAUNCH_GATE(cuGraphLaunch, s, 0, VGPU_LAUNCH_GRAPH, (g, s));
}

VGPU_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    LAUNCH_GATE(cuGraphLaunch_ptsz, s, 1, VGPU_LAUNCH_GRAPH, (g, s));
}
