/* slots.c: the slot caches, plain-C reference of attention.cu's decode
 * attention and of kv_slots.cu: attention of each decode step over the kept
 * slots, the prompt's kept tokens after prefill, and each decode step's new
 * token into a free slot or over the H2O victim (kern_h2o_pick_ref). The
 * bodies are slot_ops.h, instantiated for fp32 caches (the _ref functions),
 * fp16 caches in host memory (the _h16 functions of CPU attention), bf16
 * caches (the _bf16 functions of the CPU backend under bf16 matmuls) and
 * 4-bit caches (the _q4 functions of compress_cache).
 */
#include "../kern.h"

#include <assert.h>
#include <errno.h>
#include <omp.h>
#include <string.h>

#include "cpu_common.h"

size_t kern_kv_prefill_scratch_bytes(int max_new, int n_threads)
{
    return ((size_t)max_new + 1) * (size_t)n_threads; /* a keep flag per prompt token */
}

size_t kern_attn_decode_scratch_bytes(int cap, int n_threads)
{
    /* a probability per slot and the new token */
    return sizeof(float) * ((size_t)cap + 1) * (size_t)n_threads;
}

/* Which prompt tokens a (sequence, head) keeps when the prompt exceeds the
 * budget: keep[j] = 1 for the first sinks, the last recent and the heavy
 * highest colsum of the rest; ties keep the newer token (the older one is
 * what H2O evicts). cs: colsum of the sequence's rows for this head,
 * stride n_kv_head, or NULL (all scores equal: the newest are kept). */
static void prefill_keep(unsigned char *keep, const float *cs, int stride,
                         int n, const kern_seq *sq)
{
    int heavy = sq->budget - sq->sinks - sq->recent;
    for (int j = 0; j < n; j++)
        keep[j] = j < sq->sinks || j >= n - sq->recent;
    for (int taken = 0; taken < heavy; taken++) {
        int best = -1;
        for (int j = sq->sinks; j < n - sq->recent; j++)
            if (!keep[j] && (best < 0 || (cs ? cs[(size_t)j * stride] >= cs[(size_t)best * stride]
                                               : 1)))
                best = j;
        if (best < 0)
            break;
        keep[best] = 1;
    }
}

/* Row helpers of a cache of plain elements read with LD and written with
 * ST (the fp32, fp16 and bf16 instances). dot_cache is DOT_LANES_OF's lane
 * sums and axpy_row o[e] += p * row[e]. Where the build has the vectors,
 * V16(row) loads 16 elements widened to fp32, dot_cache runs 16 at a time
 * (its 16 lanes are DOT_LANES_OF's lanes, each a product then a sum rounded
 * separately, in the same order; the tail in plain C) and the slot loops
 * below take axpy_row's place: the same bits as the plain-C loops, which
 * GCC compiled one element at a time (vcvtsh2ss, vmulss, vaddss: the fp16
 * instance read its cache at 2 GB/s on the AMX Xeon VM). */
#define SLOT_ROW_PUT(FN, T, ST)                                               \
    static void FN(put_row)(T *dst, const float *src, int n)                  \
    {                                                                         \
        for (int e = 0; e < n; e++)                                           \
            ST(&dst[e], src[e]);                                              \
    }
#define SLOT_ELEMENT_HELPERS_PLAIN(FN, T, LD, ST)                            \
    static float FN(dot_cache)(const float *q, const T *c, int n)             \
    {                                                                         \
        float acc[DOT_LANES] = {0};                                           \
        DOT_LANES_OF(acc, q, c, n, LD);                                       \
        return dot_lanes_sum(acc);                                            \
    }                                                                         \
    static void FN(axpy_row)(float *o, float p, const T *c, int n)            \
    {                                                                         \
        for (int e = 0; e < n; e++)                                           \
            o[e] += p * LD(&c[e]);                                            \
    }                                                                         \
    SLOT_ROW_PUT(FN, T, ST)

#if defined(__AVX512F__)
#include <immintrin.h>
#define SLOT_VEC 1
typedef __m512 v16;
#define v16_zero() _mm512_setzero_ps()
#define v16_load(p) _mm512_loadu_ps(p)
#define v16_store(p, a) _mm512_storeu_ps(p, a)
#define v16_mul(a, b) _mm512_mul_ps(a, b)
#define v16_add(a, b) _mm512_add_ps(a, b)
#define v16_set1(x) _mm512_set1_ps(x)
static inline v16 v16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline v16 v16_h16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline v16 v16_bf16(const uint16_t *p)
{
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline __m256 v16_fold8(v16 a) /* lanes i + lanes i + 8 */
{
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return _mm256_add_ps(_mm512_castps512_ps256(a), hi);
}
#define OBLK 128 /* values of o in registers: 8 of the 32 zmm */
#elif defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define SLOT_VEC 1
#define OBLK 64 /* 8 of the 16 ymm */
/* 16 lanes as two halves: lanes 0-7 and 8-15 */
typedef struct {
    __m256 lo, hi;
} v16;
static inline v16 v16_mk(__m256 lo, __m256 hi) { return (v16){lo, hi}; }
#define v16_zero() v16_mk(_mm256_setzero_ps(), _mm256_setzero_ps())
#define v16_load(p) v16_mk(_mm256_loadu_ps(p), _mm256_loadu_ps((p) + 8))
#define v16_store(p, a) (_mm256_storeu_ps(p, (a).lo), _mm256_storeu_ps((p) + 8, (a).hi))
#define v16_mul(a, b) v16_mk(_mm256_mul_ps((a).lo, (b).lo), _mm256_mul_ps((a).hi, (b).hi))
#define v16_add(a, b) v16_mk(_mm256_add_ps((a).lo, (b).lo), _mm256_add_ps((a).hi, (b).hi))
#define v16_set1(x) v16_mk(_mm256_set1_ps(x), _mm256_set1_ps(x))
static inline v16 v16_f32(const float *p) { return v16_load(p); }
static inline v16 v16_h16(const uint16_t *p)
{
    return v16_mk(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                  _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8))));
}
static inline __m256 bf16x8(const uint16_t *p)
{
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline v16 v16_bf16(const uint16_t *p) { return v16_mk(bf16x8(p), bf16x8(p + 8)); }
static inline __m256 v16_fold8(v16 a) { return _mm256_add_ps(a.lo, a.hi); }
#endif

#ifdef SLOT_VEC
/* dot_lanes_sum of the 16 lanes of a, in registers: lanes i and i + 8,
 * then i and i + 4, i and i + 2, 0 and 1, as the plain loop adds them. */
static inline float v16_lanes_sum(v16 a)
{
    __m256 s8 = v16_fold8(a);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

#define SLOT_ELEMENT_HELPERS(FN, T, LD, ST, V16)                             \
    static float FN(dot_cache)(const float *q, const T *c, int n)             \
    {                                                                         \
        v16 a = v16_zero();                                                   \
        int e = 0;                                                            \
        for (; e + DOT_LANES <= n; e += DOT_LANES)                            \
            a = v16_add(a, v16_mul(v16_load(q + e), V16(c + e)));             \
        if (e == n)                                                           \
            return v16_lanes_sum(a);                                          \
        float acc[DOT_LANES];                                                 \
        v16_store(acc, a);                                                    \
        for (int i = 0; e + i < n; i++)                                       \
            acc[i] += q[e + i] * LD(&c[e + i]);                               \
        return dot_lanes_sum(acc);                                            \
    }                                                                         \
    SLOT_ROW_PUT(FN, T, ST)                                                   \
    SLOT_VEC_SLOT_LOOPS(FN, T, LD, V16)

/* The slot loops of a head (slot_ops.h), vectorised across slots too: four
 * rows of K meet q at a time (four independent lane sums: one sum's chain
 * of dependent adds bound the loop), and o is held in registers, OBLK
 * values at a time, while every row of V is added to it. Each value is
 * still the plain loops' sum in the plain loops' order. first (the group's
 * first query head): the rows eight ahead are prefetched; the other heads
 * find them in cache (prefetching for them cost 18% of a GQA step). */
#define SLOT_VEC_SLOT_LOOPS(FN, T, LD, V16)                                   \
    static void FN(dot_slots)(float *p, const float *q, const T *kc, size_t base, int n, \
                              int hd, float scale, int first)                 \
    {                                                                         \
        const T *r = kc + base * (size_t)hd;                                  \
        int t = 0;                                                            \
        for (; t + 4 <= n; t += 4, r += 4 * (size_t)hd) {                     \
            if (first && t + 12 <= n)                                         \
                for (size_t b_ = 0; b_ < 4 * (size_t)hd * sizeof(T); b_ += 64)  \
                    _mm_prefetch((const char *)(r + 8 * (size_t)hd) + b_, _MM_HINT_T0); \
            v16 a0 = v16_zero(), a1 = v16_zero(), a2 = v16_zero(), a3 = v16_zero(); \
            int e = 0;                                                        \
            for (; e + DOT_LANES <= hd; e += DOT_LANES) {                     \
                v16 qv = v16_load(q + e);                                     \
                a0 = v16_add(a0, v16_mul(qv, V16(r + e)));                    \
                a1 = v16_add(a1, v16_mul(qv, V16(r + hd + e)));               \
                a2 = v16_add(a2, v16_mul(qv, V16(r + 2 * (size_t)hd + e)));   \
                a3 = v16_add(a3, v16_mul(qv, V16(r + 3 * (size_t)hd + e)));   \
            }                                                                 \
            if (e == hd) { /* no tail: the lanes are the sums */              \
                p[t] = v16_lanes_sum(a0) * scale;                             \
                p[t + 1] = v16_lanes_sum(a1) * scale;                         \
                p[t + 2] = v16_lanes_sum(a2) * scale;                         \
                p[t + 3] = v16_lanes_sum(a3) * scale;                         \
                continue;                                                     \
            }                                                                 \
            float acc[4][DOT_LANES];                                          \
            v16_store(acc[0], a0), v16_store(acc[1], a1);                     \
            v16_store(acc[2], a2), v16_store(acc[3], a3);                     \
            for (int j = 0; j < 4; j++) {                                     \
                const T *rj = r + (size_t)j * hd;                             \
                for (int i = 0; e + i < hd; i++)                              \
                    acc[j][i] += q[e + i] * LD(&rj[e + i]);                   \
                p[t + j] = dot_lanes_sum(acc[j]) * scale;                     \
            }                                                                 \
        }                                                                     \
        for (; t < n; t++, r += hd)                                           \
            p[t] = FN(dot_cache)(q, r, hd) * scale;                           \
    }                                                                         \
    /* o = (into ? o : 0) + the rows' p[t] V[t] in order */                   \
    static void FN(sum_slots_into)(float *o, const float *p, const T *vc, size_t base, \
                                   int n, int hd, int first, int into)        \
    {                                                                         \
        const T *v0 = vc + base * (size_t)hd;                                 \
        int e = 0;                                                            \
        for (; e + OBLK <= hd; e += OBLK) {                                   \
            v16 a[OBLK / 16];                                                 \
            _Pragma("GCC unroll 8") for (int i = 0; i < OBLK / 16; i++)       \
                a[i] = into ? v16_load(o + e + 16 * i) : v16_zero();          \
            const T *r = v0 + e;                                              \
            for (int t = 0; t < n; t++, r += hd) {                            \
                if (first && t + 8 < n)                                       \
                    for (int b_ = 0; b_ < OBLK * (int)sizeof(T); b_ += 64)    \
                        _mm_prefetch((const char *)(r + 8 * (size_t)hd) + b_, _MM_HINT_T0); \
                v16 pv = v16_set1(p[t]);                                      \
                _Pragma("GCC unroll 8") for (int i = 0; i < OBLK / 16; i++)   \
                    a[i] = v16_add(a[i], v16_mul(pv, V16(r + 16 * i)));       \
            }                                                                 \
            _Pragma("GCC unroll 8") for (int i = 0; i < OBLK / 16; i++)       \
                v16_store(o + e + 16 * i, a[i]);                              \
        }                                                                     \
        for (; e + 16 <= hd; e += 16) {                                       \
            v16 a = into ? v16_load(o + e) : v16_zero();                      \
            const T *r = v0 + e;                                              \
            for (int t = 0; t < n; t++, r += hd)                              \
                a = v16_add(a, v16_mul(v16_set1(p[t]), V16(r)));              \
            v16_store(o + e, a);                                              \
        }                                                                     \
        for (; e < hd; e++) {                                                 \
            float a = into ? o[e] : 0.0f;                                     \
            for (int t = 0; t < n; t++)                                       \
                a += p[t] * LD(&v0[(size_t)t * hd + e]);                      \
            o[e] = a;                                                         \
        }                                                                     \
    }                                                                         \
    static void FN(sum_slots)(float *o, const float *p, const T *vc, size_t base, int n, \
                              int hd, int first)                              \
    {                                                                         \
        FN(sum_slots_into)(o, p, vc, base, n, hd, first, 0);                  \
    }
#define SLOT_HAS_SLOT_LOOPS /* the element instances bring their own */
#else
#define SLOT_ELEMENT_HELPERS(FN, T, LD, ST, V16) SLOT_ELEMENT_HELPERS_PLAIN(FN, T, LD, ST)
#endif

/* fp32 caches: the reference and the CPU backend */
#define SLOT_T float
#define SLOT_FN(n) n##_ref
#define SLOT_ROW(c, i, n) ((c) + (size_t)(i) * (size_t)(n))
SLOT_ELEMENT_HELPERS(SLOT_FN, float, f32_ld, f32_st, v16_f32)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN

/* fp16 caches (the CUDA backend's storage type) in host memory */
static inline float h16_ld(const uint16_t *p) { return kern_f16_to_f32(*p); }
static inline void h16_st(uint16_t *p, float x) { *p = kern_f32_to_f16(x); }

#define SLOT_T uint16_t
#define SLOT_FN(n) n##_h16
SLOT_ELEMENT_HELPERS(SLOT_FN, uint16_t, h16_ld, h16_st, v16_h16)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN

/* bf16 caches (the CPU backend under bf16 matmuls): read exactly, written
 * rounded to nearest even as kern_round_bf16_ref */
static inline float bf16_ld(const uint16_t *p)
{
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline void bf16_st(uint16_t *p, float x) { kern_round_bf16_ref(p, &x, 1); }

#define SLOT_T uint16_t
#define SLOT_FN(n) n##_bf16
SLOT_ELEMENT_HELPERS(SLOT_FN, uint16_t, bf16_ld, bf16_st, v16_bf16)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN
#undef SLOT_ROW

/* 4-bit caches (compress_cache): a row is dequantized into fp32 and then
 * used exactly as the fp32 instance uses a row, so the result is the fp32
 * op's over the dequantized cache; a written row is quantized. */
#define Q4_MAX_HD 1024

static void put_row_q4(uint8_t *dst, const float *src, int n)
{
    kern_q4_quantize_row(dst, src, n);
}

#ifndef SLOT_VEC
static float dot_cache_q4(const float *q, const uint8_t *c, int n)
{
    assert(n <= Q4_MAX_HD);
    float row[Q4_MAX_HD];
    kern_q4_dequant_row(row, c, n);
    return dot_cache_ref(q, row, n);
}

static void axpy_row_q4(float *o, float p, const uint8_t *c, int n)
{
    assert(n <= Q4_MAX_HD);
    float row[Q4_MAX_HD];
    kern_q4_dequant_row(row, c, n);
    axpy_row_ref(o, p, row, n);
}
#else
/* The slot loops over 4-bit rows: Q4_ROWS_FLOATS of rows at a time
 * dequantized into the stack, then the fp32 instance's loops over them (o
 * carried from block to block): the fp32 op over the dequantized cache,
 * each row dequantized once per query head. */
#define Q4_ROWS_FLOATS 4096

/* Rows first .. first + m - 1 of a 4-bit cache of hd columns, into buf. */
static void q4_rows(float *buf, const uint8_t *c, size_t first, int m, int hd)
{
    size_t rb = kern_q4_row_bytes(hd);
    for (int j = 0; j < m; j++)
        kern_q4_dequant_row(buf + (size_t)j * hd, c + (first + j) * rb, hd);
}

static void dot_slots_q4(float *p, const float *q, const uint8_t *kc, size_t base, int n,
                         int hd, float scale, int first)
{
    (void)first;
    assert(hd <= Q4_MAX_HD);
    float buf[Q4_ROWS_FLOATS];
    int per = Q4_ROWS_FLOATS / hd;
    for (int t0 = 0; t0 < n; t0 += per) {
        int m = n - t0 < per ? n - t0 : per;
        q4_rows(buf, kc, base + t0, m, hd);
        dot_slots_ref(p + t0, q, buf, 0, m, hd, scale, 0);
    }
}

static void sum_slots_q4(float *o, const float *p, const uint8_t *vc, size_t base, int n,
                         int hd, int first)
{
    (void)first;
    assert(hd <= Q4_MAX_HD);
    float buf[Q4_ROWS_FLOATS];
    int per = Q4_ROWS_FLOATS / hd;
    memset(o, 0, sizeof(float) * hd);
    for (int t0 = 0; t0 < n; t0 += per) {
        int m = n - t0 < per ? n - t0 : per;
        q4_rows(buf, vc, base + t0, m, hd);
        sum_slots_into_ref(o, p + t0, buf, 0, m, hd, 0, 1);
    }
}
#endif
#define SLOT_T uint8_t
#define SLOT_FN(n) n##_q4
#define SLOT_ROW(c, i, n) ((c) + (size_t)(i) * kern_q4_row_bytes(n))
#include "slot_ops.h"
