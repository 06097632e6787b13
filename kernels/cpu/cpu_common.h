/* cpu_common.h: small helpers shared by the plain-C kernels (internal). */
#ifndef FH_KERN_CPU_COMMON_H
#define FH_KERN_CPU_COMMON_H

#include <math.h>
#include <stddef.h>

#include "../err.h"
#include "vexp.h"

/* The attention kernels' dot products sum in DOT_LANES lanes: lane i takes
 * the products of elements i, i + DOT_LANES, ... in order, then the lanes
 * are added pairwise (8, 4, 2, 1 apart). A fixed order that is not the
 * sequential one, so the compiler may vectorize it (one sequential fp32 sum
 * cannot be reordered: a head_dim-long chain of dependent adds, which made
 * decode attention 10% of a bf16-matmul run at a context of 64). */
#define DOT_LANES 16

static inline float dot_lanes_sum(float *acc)
{
    for (int w = DOT_LANES / 2; w > 0; w >>= 1)
        for (int i = 0; i < w; i++)
            acc[i] += acc[i + w];
    return acc[0];
}

/* acc[DOT_LANES] (zeroed) += the lanes of a . b over n elements, b's
 * element e read as LD(&b[e]) (a row of a cache of any element type). */
#define DOT_LANES_OF(acc_, a, b, n, LD)                                        \
    do {                                                                      \
        int e_ = 0;                                                           \
        for (; e_ + DOT_LANES <= (n); e_ += DOT_LANES)                        \
            for (int i_ = 0; i_ < DOT_LANES; i_++)                            \
                acc_[i_] += (a)[e_ + i_] * LD(&(b)[e_ + i_]);                 \
        for (int i_ = 0; e_ + i_ < (n); i_++)                                 \
            acc_[i_] += (a)[e_ + i_] * LD(&(b)[e_ + i_]);                     \
    } while (0)

/* An fp32 element read and written (the LD / ST of fp32 rows). */
static inline float f32_ld(const float *p) { return *p; }
static inline void f32_st(float *p, float x) { *p = x; }

static inline float dot(const float *a, const float *b, int n)
{
    float acc[DOT_LANES] = {0};
    DOT_LANES_OF(acc, a, b, n, f32_ld);
    return dot_lanes_sum(acc);
}

/* stmt over [0, n) in chunks of 64 Ki values spread over the OpenMP threads,
 * at and len naming each chunk's start and length: big enough that a
 * thread's chunk is worth it, small enough that a layer's matrices spread
 * over every thread. */
#define PAR_CHUNKS(n, at, len, stmt)                                            \
    do {                                                                        \
        const size_t blk_ = (size_t)1 << 16, n_ = (n);                          \
        long nb_ = (long)((n_ + blk_ - 1) / blk_);                              \
        _Pragma("omp parallel for schedule(static) if (nb_ > 1)")               \
        for (long b_ = 0; b_ < nb_; b_++) {                                     \
            size_t at = (size_t)b_ * blk_, len = n_ - at < blk_ ? n_ - at : blk_; \
            stmt;                                                               \
        }                                                                       \
    } while (0)

/* The largest of p[0..n) that is not NaN (-inf if none), as the loop
 * mx = p[t] > mx ? p[t] : mx finds it, 16 lanes at a time where the build
 * has the vectors (maxps(p, m) keeps m for a NaN p, as the loop does); only
 * the sign of a zero maximum can differ from the loop's, and softmax's
 * p - max and its exp do not tell +0 from -0 apart. The loop's chain of
 * dependent maxss was an eighth of a GQA decode step's attention. */
static inline float max_of(const float *p, int n)
{
    float mx = -INFINITY;
    int t = 0;
#if defined(VEXP_AVX512)
    if (n >= 16) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        for (; t + 16 <= n; t += 16)
            m = _mm512_max_ps(_mm512_loadu_ps(p + t), m);
        mx = _mm512_reduce_max_ps(m);
    }
#elif defined(VEXP_AVX2)
    if (n >= 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (; t + 8 <= n; t += 8)
            m = _mm256_max_ps(_mm256_loadu_ps(p + t), m);
        float l[8];
        _mm256_storeu_ps(l, m);
        for (int i = 0; i < 8; i++)
            mx = l[i] > mx ? l[i] : mx;
    }
#endif
    for (; t < n; t++)
        mx = p[t] > mx ? p[t] : mx;
    return mx;
}

/* Softmax of p[0..n) in place: p sums to 1 (the exps summed in order). */
static inline void softmax(float *p, int n)
{
    float mx = max_of(p, n), sum = 0.0f;
    kern_expf_sub(p, p, mx, (size_t)n);
    for (int t = 0; t < n; t++)
        sum += p[t];
    float inv = 1.0f / sum;
    for (int t = 0; t < n; t++)
        p[t] *= inv;
}

/* An op's scratch check: 0 when the have bytes it was handed cover the
 * need bytes of this call on nt threads, else -EINVAL with a message (its
 * caller sized the scratch for a smaller shape or fewer threads). */
static inline int scratch_check(const char *op, size_t have, size_t need, int nt)
{
    RETURN_IF(have < need, -EINVAL, "internal: %s was handed %zu bytes of scratch, this call "
              "needs %zu (%d threads); size it with the op's kern_*_scratch_bytes()", op, have,
              need, nt);
    return 0;
}

/* An attention op's head counts: n_kv_head >= 1 KV heads, each shared by
 * n_head / n_kv_head query heads; else -EINVAL with a message. */
static inline int heads_check(const char *op, int n_head, int n_kv_head)
{
    RETURN_IF(n_kv_head < 1 || n_head < n_kv_head || n_head % n_kv_head, -EINVAL,
              "internal: %s was handed %d query heads over %d KV heads (a positive multiple "
              "is needed)", op, n_head, n_kv_head);
    return 0;
}

#endif
