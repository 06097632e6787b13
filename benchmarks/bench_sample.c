/* bench_sample.c: the CPU sampler (kern_sample_ref) per row.
 *
 *   flexh2o-bench-sample [--vocab 50272] [--rows 200]
 *
 * Logits drawn from normal distributions of standard deviation 1, 2, 2.5,
 * 3 and 5 (flat to peaked; a trained model's next-token logits are of the
 * peaked kind, a dummy checkpoint's of the flat), sampled at temperature
 * 0.8 with top_p 0.9 and with top_p off, at u spread over [0, 1). Prints a
 * Markdown table of ms per row, single-threaded, best of 3. The sampled
 * choice reads only the order's prefix up to top_p's cut, so a peaked row
 * is cheap; top_p off reads (and sorts) the whole vocabulary.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "kern.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A standard normal value (Box-Muller over SplitMix64). */
static double normal(uint64_t *s)
{
    double u1 = (double)(kern_splitmix64(s) >> 11) * 0x1.0p-53 + 0x1.0p-60;
    double u2 = (double)(kern_splitmix64(s) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* ms per row over rows draws of x (best of 3); *sum gets the tokens' sum. */
static double ms_per_row(const float *x, int V, float top_p, int rows, void *ws, size_t wb,
                         long *sum)
{
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        long s = 0;
        double t0 = now();
        for (int k = 0; k < rows; k++) {
            kern_sample_row r = {.temperature = 0.8f, .top_p = top_p,
                                 .u = (k + 0.5) / rows};
            float lp;
            int32_t tok = kern_sample_ref(x, V, &r, NULL, &lp, NULL, NULL, ws, wb);
            if (tok < 0) {
                fprintf(stderr, "flexh2o-bench-sample: %s\n", err_msg());
                exit(1);
            }
            s += tok;
        }
        double t = (now() - t0) * 1e3 / rows;
        best = t < best ? t : best;
        *sum = s;
    }
    return best;
}

int main(int argc, char **argv)
{
    int V = 50272, rows = 200;
    for (int i = 1; i < argc; i++) {
        int *dst = !strcmp(argv[i], "--vocab") ? &V : !strcmp(argv[i], "--rows") ? &rows : NULL;
        if (!dst || i + 1 >= argc || (*dst = atoi(argv[i + 1])) <= 0) {
            fprintf(stderr, "usage: flexh2o-bench-sample [--vocab N] [--rows N]\n");
            return 2;
        }
        i++;
    }
    float *x = malloc(sizeof(float) * (size_t)V);
    size_t wb = kern_sample_scratch_bytes(V);
    void *ws = malloc(wb);
    if (!x || !ws) {
        fprintf(stderr, "flexh2o-bench-sample: out of memory (%zu bytes)\n",
                wb + sizeof(float) * (size_t)V);
        return 1;
    }
    printf("vocabulary %d, %d rows, temperature 0.8, one thread\n\n"
           "| logits' sd | top_p 0.9 ms/row | top_p off ms/row | tokens' sum |\n"
           "|---|---|---|---|\n", V, rows);
    const double sds[] = {1, 2, 2.5, 3, 5};
    for (size_t c = 0; c < sizeof sds / sizeof sds[0]; c++) {
        uint64_t seed = 42;
        for (int i = 0; i < V; i++)
            x[i] = (float)(sds[c] * normal(&seed));
        long s9, s1;
        double a = ms_per_row(x, V, 0.9f, rows, ws, wb, &s9);
        double b = ms_per_row(x, V, 1.0f, rows, ws, wb, &s1);
        printf("| %g | %.3f | %.3f | %ld, %ld |\n", sds[c], a, b, s9, s1);
    }
    free(x);
    free(ws);
    return 0;
}
