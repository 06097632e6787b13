/* swiglu.c: SwiGLU, the MLP activation of Llama, Mistral and Qwen2
 * (act_fn SiLU: down(silu(gate(x)) * up(x))), plain-C reference, fp32 as
 * PyTorch writes it: g / (1 + exp(-g)) * u, e^x being kern_expf
 * (vexp.h), 16 values at a time where the build has the vectors. Rows
 * spread over the OpenMP threads: each value is its own. */
#include "../kern.h"

#include <math.h>

#include "cpu_common.h"

/* o[j] = silu(g[j]) * u[j], j in [0, d) */
static void swiglu_row(float *o, const float *g, const float *u, int d)
{
    int j = 0;
#if defined(VEXP_AVX512)
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
    for (; j + 16 <= d; j += 16) {
        __m512 gv = _mm512_loadu_ps(g + j);
        __m512 e = vexp16(_mm512_xor_ps(gv, sign));
        _mm512_storeu_ps(o + j, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)),
                                              _mm512_loadu_ps(u + j)));
    }
#elif defined(VEXP_AVX2)
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= d; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 e = vexp8(_mm256_xor_ps(gv, sign));
        _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + j)));
    }
#endif
    /* silu(g) = g / (1 + exp(-g)): below g of about -88, exp(-g) is inf
     * and the quotient -0, its limit. */
    for (; j < d; j++)
        o[j] = g[j] / (1.0f + kern_expf(-g[j])) * u[j];
}

void kern_swiglu_ref(float *out, int ldo, const float *gate, const float *up, int ld, int n,
                     int d)
{
    /* out == gate with another row stride: a row's output overwrites rows
     * of gate still to be read, so the rows go in order */
    #pragma omp parallel for schedule(static) if (n > 1 && !(out == gate && ldo != ld))
    for (int i = 0; i < n; i++)
        swiglu_row(out + (size_t)i * ldo, gate + (size_t)i * ld, up + (size_t)i * ld, d);
}
