/* cuda_none.c: the CUDA entry points of a build without nvcc. */
#include "kern.h"

int kern_cuda_available(void) { return 0; }
void kern_cuda_set_grid_y_max(unsigned mx) { (void)mx; }
