/* cuda_runtime.h: the CUDA runtime as tests/cuda_emu emulates it: the API
 * (cuda_emu_api.h) and, in C++, the device side (cuda_emu.hpp). */
#include "cuda_emu_api.h"
#ifdef __cplusplus
#include "cuda_emu.hpp"
#endif
