/* rmsnorm.c: RMSNorm over the last dimension (Llama, Mistral, Qwen2),
 * plain-C reference.
 *
 * Hugging Face's LlamaRMSNorm, in fp32: variance = mean(x^2), then
 * x * rsqrt(variance + eps), then weight * that. The sum of squares is
 * accumulated in double (PyTorch's reduction is pairwise in fp32, closer to
 * the exact sum than a serial fp32 loop); everything after it is fp32 in
 * Hugging Face's order, so a row matches theirs to an ulp or two. Rows
 * spread over the OpenMP threads. */
#include "../kern.h"

#include <math.h>

void kern_rmsnorm_ref(float *out, const float *x, const float *w, int n, int d, float eps)
{
    #pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        double ss = 0;
        for (int j = 0; j < d; j++)
            ss += (double)xi[j] * xi[j];
        float var = (float)(ss / d);
        float rstd = 1.0f / sqrtf(var + eps);
        for (int j = 0; j < d; j++)
            oi[j] = w[j] * (xi[j] * rstd);
    }
}
