/* q4.c: 4-bit group-wise quantization (kern.h), plain-C reference, also
 * what the CPU backend runs for compressed weights and KV.
 *
 * The arithmetic is written so that the CUDA kernels (kernels/q4.cuh) give
 * the same bits: the code is a division and a rint, the dequantized value
 * a product then a sum (this file is ISO C11, where GCC does not contract
 * a * b + c into an FMA; the CUDA side uses __fmul_rn / __fadd_rn).
 */
#include "../kern.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* The min and max of m values in index order (a NaN after the first value
 * is passed over; ties keep the first: -0 and +0 are told apart only by
 * their order). */
static void group_range(const float *x, int m, float *mn_out, float *mx_out)
{
    float mn = x[0], mx = x[0];
    int i = 1;
#if defined(__AVX2__)
    if (m == KERN_Q4_GROUP) {
        /* lane j scans x[j], x[j + 8], ... from x[0] with the step below
         * (minps(a, b) = a < b ? a : b: a NaN x[0] stays, a later NaN is
         * passed over), then the lanes merge. Only a zero result can depend
         * on the order (which of -0 and +0 came first): the scan in index
         * order decides it then. */
        __m256 vmn = _mm256_set1_ps(x[0]), vmx = vmn;
        for (int k = 0; k < KERN_Q4_GROUP; k += 8) {
            __m256 v = _mm256_loadu_ps(x + k);
            vmn = _mm256_min_ps(v, vmn);
            vmx = _mm256_max_ps(v, vmx);
        }
        float a[8], b[8];
        _mm256_storeu_ps(a, vmn);
        _mm256_storeu_ps(b, vmx);
        mn = a[0];
        mx = b[0];
        for (int j = 1; j < 8; j++) {
            mn = a[j] < mn ? a[j] : mn;
            mx = b[j] > mx ? b[j] : mx;
        }
        if (mn != 0.0f && mx != 0.0f) {
            *mn_out = mn;
            *mx_out = mx;
            return;
        }
        mn = mx = x[0];
    }
#endif
    for (; i < m; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *mn_out = mn;
    *mx_out = mx;
}

/* Quantize m <= 64 values into one block. */
static void quantize_group(uint8_t *blk, const float *x, int m)
{
    float mn, mx;
    group_range(x, m, &mn, &mx);
    uint16_t hs = kern_f32_to_f16((mx - mn) / 15.0f), hm = kern_f32_to_f16(mn);
    float sc = kern_f16_to_f32(hs), mnr = kern_f16_to_f32(hm);
    memcpy(blk, &hs, 2);
    memcpy(blk + 2, &hm, 2);
    uint8_t *codes = blk + 4;
    memset(codes, 0, KERN_Q4_GROUP / 2);
    if (!(sc > 0.0f))
        return; /* constant group (or a scale below fp16's range): all at min */
    int i = 0;
#if defined(__AVX2__)
    /* eight values at a time, the same operations: a subtraction and a
     * division rounded as subss and divss, rint as roundps to nearest
     * even, then maxps(c, 0) = c > 0 ? c : 0 (NaN: 0) and minps(., 15) */
    const __m256 vmn = _mm256_set1_ps(mnr), vsc = _mm256_set1_ps(sc);
    const __m256 zero = _mm256_setzero_ps(), fifteen = _mm256_set1_ps(15.0f);
    for (; i + 8 <= m; i += 8) {
        __m256 c = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmn), vsc),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c = _mm256_min_ps(_mm256_max_ps(c, zero), fifteen);
        int32_t q[8];
        _mm256_storeu_si256((__m256i *)q, _mm256_cvttps_epi32(c));
        for (int j = 0; j < 8; j += 2)
            codes[(i + j) / 2] = (uint8_t)(q[j] | q[j + 1] << 4);
    }
#endif
    for (; i < m; i++) {
        float c = rintf((x[i] - mnr) / sc);
        int q = c > 0.0f ? (c < 15.0f ? (int)c : 15) : 0; /* NaN: 0 */
        codes[i / 2] |= (uint8_t)(q << (4 * (i & 1)));
    }
}

/* The reference: value i of each group from its code alone. */
static void dequant_row_ref(float *dst, const uint8_t *src, int n)
{
    for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP, src += KERN_Q4_BLOCK) {
        uint16_t hs, hm;
        memcpy(&hs, src, 2);
        memcpy(&hm, src + 2, 2);
        float sc = kern_f16_to_f32(hs), mn = kern_f16_to_f32(hm);
        int m = n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP;
        for (int i = 0; i < m; i++) {
            int q = (src[4 + i / 2] >> (4 * (i & 1))) & 15;
            float p = (float)q * sc;
            dst[g0 + i] = mn + p;
        }
    }
}

/* A whole group of 64, a code byte (two values) at a time: the same
 * product then sum per value as the reference. With AVX2, 32 values per
 * half: the low and high nibbles interleaved back into value order, then
 * widened eight at a time (vmulps and vaddps round as mulss and addss). */
static void dequant_group64(float *dst, const uint8_t *blk, float sc, float mn)
{
    const uint8_t *codes = blk + 4;
#if defined(__AVX2__)
    const __m128i low4 = _mm_set1_epi8(15);
    const __m256 vs = _mm256_set1_ps(sc), vm = _mm256_set1_ps(mn);
    for (int h = 0; h < 2; h++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(codes + 16 * h));
        __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        __m128i c[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};
        for (int k = 0; k < 2; k++)
            for (int e = 0; e < 2; e++) {
                __m128i c8 = e ? _mm_srli_si128(c[k], 8) : c[k];
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
                _mm256_storeu_ps(dst + 32 * h + 16 * k + 8 * e,
                                 _mm256_add_ps(vm, _mm256_mul_ps(q, vs)));
            }
    }
#else
    for (int j = 0; j < KERN_Q4_GROUP / 2; j++) {
        float p0 = (float)(codes[j] & 15) * sc, p1 = (float)(codes[j] >> 4) * sc;
        dst[2 * j] = mn + p0;
        dst[2 * j + 1] = mn + p1;
    }
#endif
}

void kern_q4_dequant_row(float *dst, const uint8_t *src, int n)
{
    int g0 = 0;
    for (; g0 + KERN_Q4_GROUP <= n; g0 += KERN_Q4_GROUP, src += KERN_Q4_BLOCK) {
        uint16_t hs, hm;
        memcpy(&hs, src, 2);
        memcpy(&hm, src + 2, 2);
        dequant_group64(dst + g0, src, kern_f16_to_f32(hs), kern_f16_to_f32(hm));
    }
    if (g0 < n)
        dequant_row_ref(dst + g0, src, n - g0); /* the short last group */
}

void kern_q4_quantize_row(uint8_t *dst, const float *src, int n)
{
    for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP, dst += KERN_Q4_BLOCK)
        quantize_group(dst, src + g0, n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP);
}

void kern_q4_quantize_ref(uint8_t *dst, const float *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        kern_q4_quantize_row(dst + r * rb, src + r * (size_t)n, n);
}

void kern_q4_quantize_h16(uint8_t *dst, const uint16_t *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP) {
            int m = n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP;
            float x[KERN_Q4_GROUP];
            for (int i = 0; i < m; i++)
                x[i] = kern_f16_to_f32(src[r * (size_t)n + g0 + i]);
            quantize_group(dst + r * rb + (size_t)(g0 / KERN_Q4_GROUP) * KERN_Q4_BLOCK, x, m);
        }
}

void kern_q4_dequant_ref(float *dst, const uint8_t *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        dequant_row_ref(dst + r * (size_t)n, src + r * rb, n);
}

void kern_q4_dequant_par(float *dst, const uint8_t *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    /* a thread for every 64 Ki values at least (kern_widen_par's chunk) */
    #pragma omp parallel for schedule(static) if (rows * (size_t)n > ((size_t)1 << 16))
    for (size_t r = 0; r < rows; r++)
        kern_q4_dequant_row(dst + r * (size_t)n, src + r * rb, n);
}
