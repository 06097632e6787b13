/* bench_vexp.c: the CPU kernels' exp (kernels/cpu/vexp.h) against libm's.
 *
 *   flexh2o-bench-vexp [--all]
 *
 * Times, on one thread, libm's expf one value at a time against
 * kern_expf_sub (16 values per vector where the build has them) over 16 Mi
 * values in [-30, 0) (softmax's range) and [-20, 20) (SiLU's), best of 5,
 * in ns per value. --all also checks every one of the 2^32 fp32 inputs on
 * every thread: the vectors against kern_expf bit for bit, and kern_expf
 * against expf (how many differ, by at most how many ulps); it exits 1 if
 * the vectors and kern_expf ever differ. On an x86-64 glibc with FMA, expf
 * and kern_expf should not differ either (vexp.h says why).
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/vexp.h"
#include "kern.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* libm's expf over x, one call a value (not vectorised by the compiler:
 * expf is an external call without -ffast-math). */
static void libm_exps(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = expf(x[i]);
}

static void vexp_exps(float *y, const float *x, size_t n) { kern_expf_sub(y, x, 0.0f, n); }

/* ns per value of f over x (best of reps), checksummed so the work stays. */
static double time_ns(void (*f)(float *, const float *, size_t), float *y, const float *x,
                      size_t n, int reps, double *sum)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        f(y, x, n);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += y[i];
    *sum = s;
    return best * 1e9 / (double)n;
}

static float ulps_apart(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia, lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return (float)llabs(la - lb);
}

/* Every fp32 input: returns the count of vector/scalar differences. */
static uint64_t check_all(void)
{
    enum { BLK = 1 << 16 };
    uint64_t vec_diff = 0, libm_diff = 0;
    float worst = 0, worst_x = 0;
    #pragma omp parallel reduction(+ : vec_diff, libm_diff)
    {
        float *x = malloc(sizeof(float) * 2 * BLK), *y = x + BLK, wl = 0, wx = 0;
        if (!x) {
            fprintf(stderr, "flexh2o-bench-vexp: out of memory\n");
            exit(1);
        }
        #pragma omp for schedule(dynamic, 64)
        for (int64_t b = 0; b < ((int64_t)1 << 32) / BLK; b++) {
            for (int i = 0; i < BLK; i++) {
                uint32_t bits = (uint32_t)(b * BLK + i);
                memcpy(&x[i], &bits, 4);
            }
            kern_expf_sub(y, x, 0.0f, BLK);
            for (int i = 0; i < BLK; i++) {
                float s = kern_expf(x[i]), l = expf(x[i]);
                if (isnan(x[i]))
                    continue;
                vec_diff += memcmp(&s, &y[i], 4) != 0;
                if (memcmp(&s, &l, 4)) {
                    libm_diff++;
                    float u = isfinite(s) && isfinite(l) ? ulps_apart(s, l) : INFINITY;
                    if (u > wl)
                        wl = u, wx = x[i];
                }
            }
        }
        free(x);
        #pragma omp critical
        if (wl > worst)
            worst = wl, worst_x = wx;
    }
    printf("all 2^32 inputs (NaNs left out): vectors against kern_expf: %" PRIu64
           " differ; kern_expf against libm's expf: %" PRIu64 " differ", vec_diff, libm_diff);
    if (libm_diff)
        printf(", by up to %g ulp (x = %a)", (double)worst, (double)worst_x);
    printf("\n");
    return vec_diff;
}

int main(int argc, char **argv)
{
    int all = argc > 1 && !strcmp(argv[1], "--all");
    if (argc > 2 || (argc == 2 && !all)) {
        fprintf(stderr, "usage: flexh2o-bench-vexp [--all]\n");
        return 2;
    }
    enum { N = 1 << 24 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    if (!x || !y) {
        fprintf(stderr, "flexh2o-bench-vexp: out of memory (%zu bytes)\n",
                2 * sizeof(float) * (size_t)N);
        return 1;
    }
#if defined(VEXP_AVX512)
    const char *vec = "AVX-512, 16 lanes";
#elif defined(VEXP_AVX2)
    const char *vec = "AVX2 + FMA, 8 lanes";
#else
    const char *vec = "no vectors in this build: kern_expf a value at a time";
#endif
    printf("kern_expf_sub: %s\n\n| range | libm expf ns/value | kern_expf_sub ns/value | "
           "speed-up |\n|---|---|---|---|\n", vec);
    const float lo[2] = {-30, -20}, hi[2] = {0, 20};
    uint64_t st = 12345;
    for (int c = 0; c < 2; c++) {
        for (size_t i = 0; i < N; i++) {
            st = st * 6364136223846793005ULL + 1442695040888963407ULL;
            x[i] = lo[c] + (hi[c] - lo[c]) * (float)((st >> 40) * 0x1.0p-24);
        }
        double s1, s2;
        double a = time_ns(libm_exps, y, x, N, 5, &s1), b = time_ns(vexp_exps, y, x, N, 5, &s2);
        printf("| [%g, %g) | %.2f | %.2f | %.1fx |\n", (double)lo[c], (double)hi[c], a, b, a / b);
        if (s1 != s2)
            printf("(the sums differ: %.17g against %.17g)\n", s1, s2);
    }
    free(x);
    free(y);
    return all && check_all() ? 1 : 0;
}
