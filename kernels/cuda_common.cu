/* cuda_common.cu: device discovery and the error record shared by the CUDA
 * kernels. */
#include <stdarg.h>
#include <stdio.h>

#include "cuda_util.cuh"

static thread_local char last_error[512];

void kern_cuda_fail(const char *file, int line, const char *fmt, ...)
{
    int n = snprintf(last_error, sizeof last_error, "%s:%d: ", file, line);
    if (n < 0 || (size_t)n >= sizeof last_error)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
}

extern "C" const char *kern_cuda_error(void) { return last_error; }

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
    return n > 0;
}
