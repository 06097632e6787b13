/* cpu_common.h: small helpers shared by the plain-C kernels (internal). */
#ifndef FH_KERN_CPU_COMMON_H
#define FH_KERN_CPU_COMMON_H

#include <math.h>
#include <stddef.h>

#include "../err.h"

static inline float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int e = 0; e < n; e++)
        s += a[e] * b[e];
    return s;
}

/* Softmax of p[0..n) in place: p sums to 1. */
static inline void softmax(float *p, int n)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int t = 0; t < n; t++)
        mx = p[t] > mx ? p[t] : mx;
    for (int t = 0; t < n; t++) {
        p[t] = expf(p[t] - mx);
        sum += p[t];
    }
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
