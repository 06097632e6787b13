/* cuda_common.cu: device discovery and the launch-geometry limit shared by
 * the CUDA kernels. Their errors go to err.h's one record (err_set). */
#include "cuda_util.cuh"

static unsigned grid_y_max = KERN_GRID_Y_MAX;

unsigned kern_grid_y_max(void) { return grid_y_max; }

extern "C" void kern_cuda_set_grid_y_max(unsigned mx)
{
    grid_y_max = mx == 0 || mx > KERN_GRID_Y_MAX ? KERN_GRID_Y_MAX : mx;
}

extern "C" int kern_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n > 0 ? n : 0;
}
