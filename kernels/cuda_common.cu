/* cuda_common.cu: device discovery and the error record shared by the CUDA
 * kernels. */
#include <stdio.h>

#include "cuda_util.cuh"

static thread_local char last_error[512];

void kern_cuda_set_error(const char *file, int line, const char *call, cudaError_t e)
{
    snprintf(last_error, sizeof last_error, "%s:%d: %s: %s", file, line, call,
             cudaGetErrorString(e));
}

extern "C" const char *kern_cuda_error(void) { return last_error; }

extern "C" int kern_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n > 0;
}
