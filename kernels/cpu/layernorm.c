/* layernorm.c: LayerNorm over the last dimension, plain-C reference.
 * Two passes (mean, then centred variance) in fp32 like PyTorch's CPU
 * kernel, so the golden logits match to 1e-4. */
#include "../kern.h"

#include <math.h>

void kern_layernorm_ref(float *out, const float *x, const float *w,
                        const float *b, int n, int d, float eps)
{
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        double mean = 0, var = 0;
        for (int j = 0; j < d; j++)
            mean += xi[j];
        mean /= d;
        for (int j = 0; j < d; j++) {
            double c = xi[j] - mean;
            var += c * c;
        }
        var /= d;
        float rstd = (float)(1.0 / sqrt(var + eps));
        float m = (float)mean;
        for (int j = 0; j < d; j++)
            oi[j] = (xi[j] - m) * rstd * w[j] + b[j];
    }
}
