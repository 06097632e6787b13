/* swiglu.c: SwiGLU, the MLP activation of Llama, Mistral and Qwen2
 * (act_fn SiLU: down(silu(gate(x)) * up(x))), plain-C reference, serial
 * fp32 as PyTorch writes it. */
#include "../kern.h"

#include <math.h>

void kern_swiglu_ref(float *out, int ldo, const float *gate, const float *up, int ld, int n,
                     int d)
{
    for (int i = 0; i < n; i++) {
        const float *g = gate + (size_t)i * ld, *u = up + (size_t)i * ld;
        float *o = out + (size_t)i * ldo;
        /* silu(g) = g / (1 + exp(-g)): below g of about -88, exp(-g) is
         * inf and the quotient -0, its limit. */
        for (int j = 0; j < d; j++)
            o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}
