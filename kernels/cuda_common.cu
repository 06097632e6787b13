/* cuda_common.cu: device discovery shared by the CUDA kernels. */
#include <cuda_runtime.h>

#include "kern.h"

extern "C" int kern_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n > 0;
}
