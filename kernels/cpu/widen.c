/* widen.c: 16-bit weights (fp16 or bf16 bits) to fp32, the plain-C op the
 * CPU backend runs when its tiers keep a layer in 16 bits
 * (sched_shape.weight_fmt): a layer is widened once per block into a
 * scratch, just before its compute, as 4-bit layers are expanded. Both
 * conversions are exact (every fp16 and bf16 value is an fp32 value).
 */
#include <string.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu_common.h"
#include "kern.h"

void kern_widen_ref(float *dst, const uint16_t *src, size_t n, kern_h16 fmt)
{
    if (fmt == KERN_H16_BF16) {
        /* bf16 is the top half of an fp32 */
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)src[i] << 16;
            memcpy(&dst[i], &u, sizeof u);
        }
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = kern_f16_to_f32(src[i]);
}

/* The production loop: kern_widen_ref, eight fp16 values per F16C
 * instruction where the build has it (the scalar conversion does not
 * vectorize; widening is on the decode path, once per layer per block).
 * vcvtph2ps is the scalar conversion's instruction, so the bits are
 * equal, NaNs included. */
void kern_widen_row(float *dst, const uint16_t *src, size_t n, kern_h16 fmt)
{
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    if (fmt == KERN_H16_F16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    kern_widen_ref(dst + i, src + i, n - i, fmt);
}

void kern_widen_par(float *dst, const uint16_t *src, size_t n, kern_h16 fmt)
{
    PAR_CHUNKS(n, at, len, kern_widen_row(dst + at, src + at, len, fmt));
}
