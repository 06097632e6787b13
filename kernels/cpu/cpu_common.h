/* cpu_common.h: small helpers shared by the plain-C kernels (internal). */
#ifndef FH_KERN_CPU_COMMON_H
#define FH_KERN_CPU_COMMON_H

#include <math.h>

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

#endif
