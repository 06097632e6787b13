/* cublas_v2.h: cuBLAS as tests/cuda_emu emulates it (cuda_emu_api.h). */
#include "cuda_emu_api.h"
