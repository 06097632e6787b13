/* vexp.h: e^x of fp32 values, one at a time and 16 at a time, with the same
 * bits (internal; the CPU kernels' softmax and SiLU).
 *
 * The algorithm is glibc's expf (2.27 and later; written by Szabolcs Nagy
 * for Arm's optimized-routines) as its x86-64 FMA build computes it: in
 * double, x N / ln 2 = k + r (N = 32, k an integer, |r| <= 1/2), and
 *
 *   e^x = 2^(k / N) 2^(r / N) ~= s (C0 r^3 + C1 r^2 + C2 r + 1)
 *
 * with s = 2^(k / N) from a 32-entry table whose entry k mod N gets k / N
 * added to its exponent bits, then one rounding to fp32 (the polynomial's
 * relative error, about 2^-29, is far below fp32's half ulp, so the
 * result is the correctly rounded e^x nearly always). The reductions are
 * fused multiply-adds, as that build's `vfmadd` / `vfmsub` compute them, so
 * on an x86-64 glibc that picks its FMA variant (any CPU with FMA: Haswell,
 * Zen and later) kern_expf(x) is expf(x) bit for bit, over all 2^32 inputs
 * (`flexh2o-bench-vexp --all` checks it; test_kern_host checks a sample and
 * the vector form against the scalar one). Elsewhere kern_expf is still
 * this function, and within an ulp of expf. A build without FMA (and so
 * without these vectors) calls expf itself.
 *
 * Why not libm's expf: it is one call per value; this form runs 16 values
 * per vector, which the softmax of decode attention (an exp per cached
 * slot and query head) and SiLU (one per MLP value) spend much of their
 * time in. Why not glibc's libmvec (`_ZGVeN16v_expf`): its results differ
 * from expf's in the last bit for some inputs, so the CPU paths' outputs
 * would change; these do not.
 */
#ifndef FH_KERN_CPU_VEXP_H
#define FH_KERN_CPU_VEXP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define VEXP_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VEXP_AVX2 1
#endif

/* tab[i] = the bits of 2^(i / 32) as a double, less i << 47 (so that adding
 * k << 47 for k = i + 32 j puts 2^(k / 32) together: j lands in the
 * exponent). */
static const uint64_t vexp_tab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};
#define VEXP_INVLN2N (0x1.71547652b82fep+0 * 32)    /* N / ln 2 */
#define VEXP_SHIFT 0x1.8p+52                        /* rounds k to an integer */
#define VEXP_C0 (0x1.c6af84b912394p-5 / 32 / 32 / 32) /* the polynomial in r / N */
#define VEXP_C1 (0x1.ebfce50fac4f3p-3 / 32 / 32)
#define VEXP_C2 (0x1.62e42ff0c52d6p-1 / 32)
#define VEXP_OFLOW 0x1.62e42ep6f   /* above: e^x is above FLT_MAX, +inf */
#define VEXP_UFLOW -0x1.9fe368p6f  /* below: e^x rounds to +0 */

#if defined(__FMA__)
static inline float kern_expf(float x)
{
    if (!(x <= VEXP_OFLOW))
        return x > 0.0f ? INFINITY : x + x; /* overflow, +inf; NaN stays NaN */
    if (x < VEXP_UFLOW)
        return 0.0f; /* -inf too */
    double xd = x, kd = fma(VEXP_INVLN2N, xd, VEXP_SHIFT);
    uint64_t ki;
    memcpy(&ki, &kd, sizeof ki);
    kd -= VEXP_SHIFT;
    double r = fma(VEXP_INVLN2N, xd, -kd);
    uint64_t t = vexp_tab[ki % 32] + (ki << 47);
    double s;
    memcpy(&s, &t, sizeof s);
    double z = fma(VEXP_C0, r, VEXP_C1), r2 = r * r, y = fma(VEXP_C2, r, 1.0);
    y = fma(z, r2, y);
    return (float)(y * s);
}
#else
/* Without FMA instructions in the build, fma() is a call into libm's exact
 * software path (4x slower than expf on the Xeon VM) and there are no
 * vectors either, so kern_expf is libm's expf, which picks its FMA variant
 * at run time on a CPU that has FMA: the same bits as above there. */
static inline float kern_expf(float x) { return expf(x); }
#endif

#if defined(VEXP_AVX512)
/* kern_expf of 8 values widened to double (the normal range's path). */
static inline __m256 vexp_pd8(__m256 x)
{
    __m512d xd = _mm512_cvtps_pd(x);
    __m512d kd = _mm512_fmadd_pd(_mm512_set1_pd(VEXP_INVLN2N), xd, _mm512_set1_pd(VEXP_SHIFT));
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, _mm512_set1_pd(VEXP_SHIFT));
    __m512d r = _mm512_fmsub_pd(_mm512_set1_pd(VEXP_INVLN2N), xd, kd);
    /* tab[ki % 32]: entries 0-15 and 16-31 by index bits 0-3, bit 4 picks */
    const __m512i *tv = (const __m512i *)vexp_tab;
    __m512i lo = _mm512_permutex2var_epi64(_mm512_loadu_si512(tv), ki,
                                           _mm512_loadu_si512(tv + 1));
    __m512i hi = _mm512_permutex2var_epi64(_mm512_loadu_si512(tv + 2), ki,
                                           _mm512_loadu_si512(tv + 3));
    __mmask8 upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
    __m512i t = _mm512_add_epi64(_mm512_mask_blend_epi64(upper, lo, hi),
                                 _mm512_slli_epi64(ki, 47));
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(VEXP_C0), r, _mm512_set1_pd(VEXP_C1));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(VEXP_C2), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, _mm512_castsi512_pd(t)));
}

/* kern_expf of 16 values. */
static inline __m512 vexp16(__m512 x)
{
    __m256 lo = _mm512_castps512_ps256(x);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    __m512 y = _mm512_insertf32x8(_mm512_castps256_ps512(vexp_pd8(lo)), vexp_pd8(hi), 1);
    __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(VEXP_OFLOW), _CMP_GT_OQ);
    __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(VEXP_UFLOW), _CMP_LT_OQ);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    y = _mm512_mask_mov_ps(y, over, _mm512_set1_ps(INFINITY));
    y = _mm512_mask_mov_ps(y, under, _mm512_setzero_ps());
    return _mm512_mask_add_ps(y, nan, x, x);
}
#elif defined(VEXP_AVX2)
/* kern_expf of 4 values widened to double (the normal range's path). */
static inline __m128 vexp_pd4(__m128 x)
{
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(_mm256_set1_pd(VEXP_INVLN2N), xd, _mm256_set1_pd(VEXP_SHIFT));
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, _mm256_set1_pd(VEXP_SHIFT));
    __m256d r = _mm256_fmsub_pd(_mm256_set1_pd(VEXP_INVLN2N), xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)vexp_tab,
                                       _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));
    __m256d z = _mm256_fmadd_pd(_mm256_set1_pd(VEXP_C0), r, _mm256_set1_pd(VEXP_C1));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(VEXP_C2), r, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, _mm256_castsi256_pd(t)));
}

/* kern_expf of 8 values. */
static inline __m256 vexp8(__m256 x)
{
    __m256 y = _mm256_set_m128(vexp_pd4(_mm256_extractf128_ps(x, 1)),
                               vexp_pd4(_mm256_castps256_ps128(x)));
    __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(VEXP_OFLOW), _CMP_GT_OQ);
    __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(VEXP_UFLOW), _CMP_LT_OQ);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, _mm256_add_ps(x, x), nan);
}
#endif

/* y[i] = kern_expf(x[i] - sub) for i in [0, n); y may be x. The
 * subtraction is one fp32 operation, as in expf(x[i] - sub). */
static inline void kern_expf_sub(float *y, const float *x, float sub, size_t n)
{
    size_t i = 0;
#if defined(VEXP_AVX512)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, vexp16(_mm512_sub_ps(_mm512_loadu_ps(x + i),
                                                     _mm512_set1_ps(sub))));
#elif defined(VEXP_AVX2)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, vexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i),
                                                    _mm256_set1_ps(sub))));
#endif
    for (size_t rest = n - i; rest > 0; rest--, i++)
        y[i] = kern_expf(x[i] - sub);
}

#endif
