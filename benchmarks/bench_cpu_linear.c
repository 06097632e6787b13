/* bench_cpu_linear.c: the CPU backend's decode linear over each weight
 * format it streams, on one OPT layer's matrices.
 *
 *   flexh2o-bench-cpu-linear [--rows 24] [--hidden 4096] [--reps 5]
 *
 * A decode step of a block of `rows` sequences runs, per layer, the four
 * attention projections (hidden x hidden) and the two MLP matrices
 * (4 hidden x hidden, hidden x 4 hidden). Timed per layer, the median of
 * --reps runs, for:
 *   copy      memcpy of the layer's fp32 bytes: the memory ceiling
 *             (bytes read + written per second);
 *   fp32      kern_linear_rows over fp32 weights (what the layer costs
 *             when it is kept in the compute type);
 *   fp16      kern_widen_par of the layer, then kern_linear_rows (the
 *             CPU backend's 16-bit path with several GPU batches: widened
 *             once per block);
 *   fp16 fused  the backend's linear_h16 (one GPU batch: rows widened in
 *             cache just before use);
 *   q4 ref    kern_q4_dequant_ref row by row over the threads, then
 *             kern_linear_rows (the one-value-at-a-time expansion the
 *             backend ran before 0c6f278);
 *   q4 simd   kern_q4_dequant_par per matrix, then kern_linear_rows;
 *   q4 fused  the backend's linear_q4 (kern_linear_rows_q4: four rows
 *             expanded in cache just before use);
 *   bf16      where oneDNN has a bf16 matmul (--cpu-matmul bf16): the
 *             matrices as bf16, kern_linear_bf16 (oneDNN copies plain
 *             weights into its blocked layout on every call);
 *   bf16 packed  the same matrices packed once (kern_bf16_pack, what the
 *             CPU backend does to resident weights), kern_linear_bf16_packed;
 *   q4 bf16 expanded  under bf16 matmuls, each 4-bit matrix expanded to
 *             bf16 in memory (kern_q4_dequant_bf16), then kern_linear_bf16
 *             (the backend's path until kern_linear_q4_bf16);
 *   q4 bf16 tiles  kern_linear_q4_bf16 (the backend's linear_q4 under bf16
 *             matmuls: tiles expanded in each thread's cache, packed).
 * Every q4 path is checked to give the bits of the first before timing,
 * bf16 packed the bits of bf16, q4 bf16 tiles those of q4 bf16 expanded.
 * Prints a Markdown table: ms per layer, weight bytes streamed per second,
 * and each against fp32.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "err.h"
#include "kern.h"

enum { N_MAT = 6 };

typedef struct {
    int rows, n[N_MAT], k[N_MAT];
    float *x, *y, *w32[N_MAT], *wide, *ws, *copy_dst;
    uint16_t *w16[N_MAT], *wb[N_MAT], *wp[N_MAT]; /* fp16, bf16, bf16 packed */
    uint8_t *wq[N_MAT];
    size_t layer_vals, max_vals;
    backend be;
} bench;

typedef void (*bench_fn)(bench *b);

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double time_ms(bench_fn fn, bench *b, int reps)
{
    double t[64];
    fn(b); /* warm: pages touched, threads started */
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        fn(b);
        t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_d);
    return t[reps / 2];
}

static void run_copy(bench *b)
{
    size_t off = 0;
    for (int i = 0; i < N_MAT; i++) {
        size_t v = (size_t)b->n[i] * b->k[i];
        memcpy(b->copy_dst + off, b->w32[i], sizeof(float) * v);
        off += v;
    }
}

static void run_fp32(bench *b)
{
    for (int i = 0; i < N_MAT; i++)
        kern_linear_rows(b->y, b->x, b->w32[i], b->rows, b->n[i], b->k[i]);
}

static void run_fp16(bench *b)
{
    size_t off = 0;
    for (int i = 0; i < N_MAT; i++) {
        size_t v = (size_t)b->n[i] * b->k[i];
        kern_widen_par(b->wide + off, b->w16[i], v, KERN_H16_F16);
        off += v;
    }
    off = 0;
    for (int i = 0; i < N_MAT; i++) {
        kern_linear_rows(b->y, b->x, b->wide + off, b->rows, b->n[i], b->k[i]);
        off += (size_t)b->n[i] * b->k[i];
    }
}

static void run_fp16_fused(bench *b)
{
    for (int i = 0; i < N_MAT; i++)
        if (b->be.ops->linear_h16(b->be.ctx, b->y, b->x, b->w16[i], KERN_H16_F16, NULL, b->rows,
                                  b->n[i], b->k[i], 0, b->ws) < 0) {
            fprintf(stderr, "linear_h16: %s\n", err_msg());
            exit(1);
        }
}

/* The reference row by row, rows spread over the threads: what the
 * backend's expansion was before the SIMD one. */
static void run_q4_ref(bench *b)
{
    for (int i = 0; i < N_MAT; i++) {
        int n = b->n[i], k = b->k[i];
        size_t rb = kern_q4_row_bytes(k);
        #pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++)
            kern_q4_dequant_ref(b->ws + (size_t)r * k, b->wq[i] + r * rb, 1, k);
        kern_linear_rows(b->y, b->x, b->ws, b->rows, n, k);
    }
}

static void run_q4_simd(bench *b)
{
    for (int i = 0; i < N_MAT; i++) {
        kern_q4_dequant_par(b->ws, b->wq[i], (size_t)b->n[i], b->k[i]);
        kern_linear_rows(b->y, b->x, b->ws, b->rows, b->n[i], b->k[i]);
    }
}

static void run_q4_fused(bench *b)
{
    for (int i = 0; i < N_MAT; i++)
        if (b->be.ops->linear_q4(b->be.ctx, b->y, b->x, b->wq[i], NULL, b->rows, b->n[i],
                                 b->k[i], 0, b->ws) < 0) {
            fprintf(stderr, "linear_q4: %s\n", err_msg());
            exit(1);
        }
}

static void run_bf16_with(bench *b, int packed)
{
    for (int i = 0; i < N_MAT; i++) {
        size_t ws = sizeof(float) * b->max_vals;
        int rc = packed ? kern_linear_bf16_packed(b->y, b->x, b->wp[i], b->rows, b->n[i],
                                                  b->k[i], b->ws, ws)
                        : kern_linear_bf16(b->y, b->x, b->wb[i], b->rows, b->n[i], b->k[i],
                                           b->ws, ws);
        if (rc < 0) {
            fprintf(stderr, "bf16 linear: %s\n", err_msg());
            exit(1);
        }
    }
}

static void run_bf16(bench *b) { run_bf16_with(b, 0); }
static void run_bf16_packed(bench *b) { run_bf16_with(b, 1); }

/* 4-bit under bf16 matmuls: each matrix expanded to bf16 (into b->wide),
 * then the matmul over those plain weights (the backend's path before
 * kern_linear_q4_bf16) */
static void run_q4_bf16_expand(bench *b)
{
    for (int i = 0; i < N_MAT; i++) {
        int n = b->n[i], k = b->k[i];
        kern_q4_dequant_bf16((uint16_t *)b->wide, b->wq[i], (size_t)n, k, b->ws);
        if (kern_linear_bf16(b->y, b->x, (uint16_t *)b->wide, b->rows, n, k, b->ws,
                             sizeof(float) * b->max_vals) < 0) {
            fprintf(stderr, "bf16 linear: %s\n", err_msg());
            exit(1);
        }
    }
}

static void run_q4_bf16_tiles(bench *b)
{
    for (int i = 0; i < N_MAT; i++)
        if (kern_linear_q4_bf16(b->y, b->x, b->wq[i], b->rows, b->n[i], b->k[i], b->ws,
                                sizeof(float) * b->max_vals) < 0) {
            fprintf(stderr, "q4 bf16 linear: %s\n", err_msg());
            exit(1);
        }
}

static void *must(void *p)
{
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* bytes on a 64-byte boundary, as the backends allocate activations and
 * scratch: a vector load of a row then never straddles two cache lines
 * (malloc's 16-byte alignment made the AVX-512 decode linear up to 1.4x
 * slower here than in the engine). */
static void *alloc64(size_t bytes)
{
    return must(aligned_alloc(64, (bytes + 63) / 64 * 64));
}

/* The last matrix's output of each q4 path, bit for bit that of q4 ref.
 * (Called through the table: GCC 12 at -O1 and above dropped a direct
 * call of run_q4_ref here, inlined into main, as if it had no effect.) */
static void check_same(bench *b, bench_fn const *fns, int n_fns, const char *what)
{
    size_t ny = (size_t)b->rows * b->n[N_MAT - 1];
    float *want = must(malloc(sizeof(float) * ny));
    for (int f = 0; f < n_fns; f++) {
        memset(b->y, 0, sizeof(float) * ny);
        fns[f](b);
        if (f == 0) {
            memcpy(want, b->y, sizeof(float) * ny);
        } else if (memcmp(want, b->y, sizeof(float) * ny) != 0) {
            fprintf(stderr, "%s path %d differs from the first\n", what, f);
            exit(1);
        }
    }
    free(want);
}

int main(int argc, char **argv)
{
    int rows = 24, h = 4096, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hidden")) h = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--rows 24] [--hidden 4096] [--reps 5]\n", argv[0]);
            return 2;
        }
    }
    if (rows < 1 || rows > KERN_LINEAR_ROWS_MAX || h < 64 || h % 64 || reps < 1 || reps > 64) {
        fprintf(stderr, "--rows 1..%d, --hidden a multiple of 64, --reps 1..64\n",
                KERN_LINEAR_ROWS_MAX);
        return 2;
    }
    bench b = {.rows = rows};
    int shapes[N_MAT][2] = {{h, h}, {h, h}, {h, h}, {h, h}, {4 * h, h}, {h, 4 * h}};
    for (int i = 0; i < N_MAT; i++) {
        b.n[i] = shapes[i][0];
        b.k[i] = shapes[i][1];
        size_t v = (size_t)b.n[i] * b.k[i];
        b.layer_vals += v;
        b.max_vals = v > b.max_vals ? v : b.max_vals;
    }
    if (backend_cpu_create(0, &b.be) < 0) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    b.x = alloc64(sizeof(float) * (size_t)rows * 4 * h);
    b.y = alloc64(sizeof(float) * (size_t)rows * 4 * h);
    b.wide = alloc64(sizeof(float) * b.layer_vals);
    b.copy_dst = alloc64(sizeof(float) * b.layer_vals);
    b.ws = alloc64(sizeof(float) * b.max_vals);
    unsigned s = 1;
    for (size_t i = 0; i < (size_t)rows * 4 * h; i++)
        b.x[i] = (float)((s = s * 1103515245u + 12345u) >> 8) * 0x1p-24f - 0.5f;
    for (int i = 0; i < N_MAT; i++) {
        size_t v = (size_t)b.n[i] * b.k[i];
        b.w32[i] = alloc64(sizeof(float) * v);
        b.w16[i] = alloc64(sizeof(uint16_t) * v);
        b.wq[i] = alloc64(kern_q4_row_bytes(b.k[i]) * (size_t)b.n[i]);
        for (size_t j = 0; j < v; j++) {
            b.w32[i][j] = ((float)((s = s * 1103515245u + 12345u) >> 8) * 0x1p-24f - 0.5f) *
                          0.05f;
            b.w16[i][j] = kern_f32_to_f16(b.w32[i][j]);
        }
        kern_q4_quantize_ref(b.wq[i], b.w32[i], (size_t)b.n[i], b.k[i]);
        b.wb[i] = alloc64(sizeof(uint16_t) * v);
        b.wp[i] = alloc64(sizeof(uint16_t) * v);
        kern_round_bf16_ref(b.wb[i], b.w32[i], v);
        memcpy(b.wp[i], b.wb[i], sizeof(uint16_t) * v);
    }
    int bf16 = kern_bf16_matmul_available(NULL);
    for (int i = 0; bf16 && i < N_MAT; i++) {
        int r = kern_bf16_pack(b.wp[i], b.n[i], b.k[i]);
        if (r < 0) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        bf16 = r; /* 0: oneDNN keeps this shape plain: no packed row */
    }
    struct {
        const char *name;
        bench_fn fn;
        double bytes_per_val; /* weight bytes the path streams */
    } cases[] = {{"copy (ceiling, read + write)", run_copy, 8.0},
                 {"fp32 linear", run_fp32, 4.0},
                 {"fp16: widen, then linear", run_fp16, 2.0},
                 {"fp16: fused (linear_h16)", run_fp16_fused, 2.0},
                 {"q4: reference expansion, then linear", run_q4_ref, 36.0 / 64},
                 {"q4: SIMD expansion, then linear", run_q4_simd, 36.0 / 64},
                 {"q4: fused (linear_q4)", run_q4_fused, 36.0 / 64},
                 {"bf16 (oneDNN matmul, plain weights)", run_bf16, 2.0},
                 {"bf16 (oneDNN matmul, packed weights)", run_bf16_packed, 2.0},
                 {"q4 bf16: expanded, then matmul (plain)", run_q4_bf16_expand, 36.0 / 64},
                 {"q4 bf16: tiles expanded in cache, packed", run_q4_bf16_tiles, 36.0 / 64}};
    printf("CPU decode linear, one OPT layer of hidden %d (%.0f M weights), %d rows, %d "
           "threads, median of %d\n\n", h, b.layer_vals / 1e6, rows, kern_cpu_threads(), reps);
    printf("| path | ms / layer | weight GB/s | vs fp32 |\n|---|---:|---:|---:|\n");
    /* the bf16 rows only where oneDNN runs them and packs every shape */
    size_t n_cases = sizeof cases / sizeof *cases - (bf16 ? 0 : 4);
    bench_fn q4[3] = {run_q4_ref, run_q4_simd, run_q4_fused};
    check_same(&b, q4, 3, "q4");
    bench_fn b16[2] = {run_bf16, run_bf16_packed};
    bench_fn q4b[2] = {run_q4_bf16_expand, run_q4_bf16_tiles};
    /* with AMX oneDNN sums plain and packed weights, and tiles of a matrix,
     * in another order (tests/test_bf16.c packed_and_plain_over_long_rows):
     * there the bf16 paths are timed without the check */
    if (bf16 && kern_bf16_matmul_amx())
        printf("(AMX: the bf16 paths' outputs are not compared bit for bit)\n\n");
    else if (bf16) {
        check_same(&b, b16, 2, "bf16");
        check_same(&b, q4b, 2, "q4 bf16");
    }
    double t[sizeof cases / sizeof *cases];
    for (size_t c = 0; c < n_cases; c++)
        t[c] = time_ms(cases[c].fn, &b, reps);
    for (size_t c = 0; c < n_cases; c++)
        printf("| %s | %.1f | %.2f | %.2fx |\n", cases[c].name, t[c],
               b.layer_vals * cases[c].bytes_per_val / (t[c] * 1e6), t[1] / t[c]);
    backend_destroy(&b.be);
    return 0;
}
