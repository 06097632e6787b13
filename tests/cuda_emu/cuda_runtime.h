/* cuda_runtime.h: the CUDA header, as tests/cuda_emu emulates it (cuda_emu.hpp). */
#include "cuda_emu.hpp"
