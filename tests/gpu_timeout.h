/* gpu_timeout.h: the gpu suite's Criterion timeouts. FH_CUDA_EMU (1 in the
 * test_*_emu builds of tests/meson.build): the program runs on the
 * emulated device of tests/cuda_emu, 5-50x slower than a GPU, and its
 * limits are 8x a GPU run's. */
#ifndef FH_GPU_TIMEOUT_H
#define FH_GPU_TIMEOUT_H

#ifndef FH_CUDA_EMU
#define FH_CUDA_EMU 0
#endif
#define GPU_TIMEOUT(s) (FH_CUDA_EMU ? 8 * (s) : (s))

#endif
