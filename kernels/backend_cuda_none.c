/* backend_cuda_none.c: backend_cuda_create() of a build without nvcc. */
#include "backend.h"
#include "err.h"

int backend_cuda_create(int device, backend *out)
{
    (void)device;
    (void)out;
    RETURN_IF(1, -ENOSYS, "this flexh2o was built without CUDA; rebuild with nvcc on "
              "PATH or use --device cpu");
}
