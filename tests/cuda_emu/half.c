/* half.c: kern.h's one fp16 converter, for the C++ of cuda_emu.hpp (kern.h
 * keeps it C only). */
#include <stdint.h>

#include "kern.h"

uint16_t emu_f32_to_f16(float x) { return kern_f32_to_f16(x); }
float emu_f16_to_f32(uint16_t h) { return kern_f16_to_f32(h); }
