/* Kernel launches of the fake driver: counted, never executed. */
#include "fake_cuda.h"

static __thread unsigned long long t_launches;

#define LAUNCH()                                                                                      \
    do {                                                                                              \
        if (!g_fake_initialized)                                                                      \
            return CUDA_ERROR_NOT_INITIALIZED;                                                        \
        t_launches++;                                                                                 \
        return CUDA_SUCCESS;                                                                          \
    } while (0)

FAKE_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                    void **extra)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    (void)extra;
    LAUNCH();
}

FAKE_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                         unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                         CUstream s, void **params, void **extra)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    (void)extra;
    LAUNCH();
}

FAKE_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)c, (void)f, (void)params, (void)extra;
    LAUNCH();
}

FAKE_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)c, (void)f, (void)params, (void)extra;
    LAUNCH();
}

FAKE_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                               CUstream s, void **params)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    LAUNCH();
}

FAKE_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                    unsigned int bx, unsigned int by, unsigned int bz,
                                                    unsigned int shmem, CUstream s, void **params)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    LAUNCH();
}

FAKE_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    (void)g, (void)s;
    LAUNCH();
}

FAKE_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    (void)g, (void)s;
    LAUNCH();
}

/* Test hook (not a CUDA API): launches this thread made. */
FAKE_EXPORT unsigned long long fakeCudaLaunchCount(void)
{
    return t_launches;
}
