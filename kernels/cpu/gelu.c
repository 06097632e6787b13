/* gelu.c: exact GELU, the MLP activation of GPT-NeoX (hidden_act "gelu"),
 * plain-C reference, fp32; chunks spread over the OpenMP threads (each
 * value is its own). */
#include "../kern.h"

#include <math.h>

#include "cpu_common.h"

void kern_gelu_ref(float *out, const float *x, size_t count)
{
    /* PyTorch's GELU with approximate="none", in its order:
     * x * 0.5 * (1 + erf(x / sqrt 2)) */
    PAR_CHUNKS(count, at, len, {
        for (size_t i = at; i < at + len; i++)
            out[i] = x[i] * 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
    });
}
