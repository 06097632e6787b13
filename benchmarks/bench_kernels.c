/* bench_kernels.c: CUDA kernels against the device's own ceilings.
 *
 *   flexh2o-bench-kernels [--seqs 64] [--tokens 2048] [--heads 32] [--head-dim 128]
 *
 * 1. device-to-device copy bandwidth (bytes read + written), the ceiling;
 * 2. decode attention over 64 sequences x 2048 cached tokens: K and V bytes
 *    read per call over its time, against that ceiling (target >= 70%),
 *    with and without H2O score accumulation;
 * 3. the backend's linear layer (cublasGemmEx + bias/ReLU kernel) against
 *    cublasGemmEx alone on the same shape: cuBLAS's own rate for the shape;
 * 4. 4-bit compression (kernels/q4.cu, attention.cu): the expansion of an OPT-30B fc1
 *    matrix (4-bit bytes read + fp16 bytes written) against the copy
 *    ceiling, and decode attention of case 2 over a 4-bit cache (its bytes
 *    read) against the ceiling and against the fp16 cache's time;
 * 5. prefill attention of 16 and 64 prompts of 512 tokens (OPT-6.7B's 32
 *    heads of 128; Llama-3-8B's 32 over 8 KV heads): the flash kernel
 *    against the GEMM route (FLEXH2O_CUDA_PREFILL=gemm) in the same run,
 *    without and with the H2O column sums; the rate counts the causal
 *    half of Q K^T and P V (4 n(n+1)/2 hd flops per head) against cuBLAS's
 *    rate on the prefill linear shape (m 8192, n 12288, k 4096) measured
 *    in case 3.
 * Each case is checked for finite output first, then timed as the median
 * over repeats of 20 back-to-back runs closed by a device sync. Prints a Markdown table.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "err.h"
#include "kern.h"

#define CHECK(x)                                                                       \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,                 \
                    cudaGetErrorString(e_));                                           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)
#define OK(x)                                                                          \
    do {                                                                               \
        if ((x) < 0) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, err_msg());     \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Fill n halves with random values in [-s, s) by tiling a 1 Mi-element block. */
static void fill16(void *dst, size_t n, float s, unsigned seed)
{
    size_t blk = (size_t)1 << 20;
    uint16_t *h = malloc(2 * blk);
    srand(seed);
    for (size_t i = 0; i < blk; i++)
        h[i] = kern_f32_to_f16(s * (2.0f * rand() / (float)RAND_MAX - 1.0f));
    for (size_t at = 0; at < n; at += blk)
        CHECK(cudaMemcpy((char *)dst + 2 * at, h, 2 * (n - at < blk ? n - at : blk),
                         cudaMemcpyHostToDevice));
    free(h);
}

typedef void (*bench_fn)(void *arg);

/* Median milliseconds per run: `reps` batches of `inner` back-to-back runs,
 * each batch timed on the host clock and closed by a device-wide sync, so
 * work on any stream (the backend's own included) is counted. */
static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static float time_ms(bench_fn fn, void *arg, int warm, int reps)
{
    const int inner = 20;
    for (int i = 0; i < warm; i++)
        fn(arg);
    CHECK(cudaDeviceSynchronize());
    float *t = malloc(sizeof(float) * reps);
    for (int i = 0; i < reps; i++) {
        double t0 = now_ms();
        for (int j = 0; j < inner; j++)
            fn(arg);
        CHECK(cudaDeviceSynchronize());
        t[i] = (float)((now_ms() - t0) / inner);
    }
    qsort(t, reps, sizeof *t, cmp_f);
    float med = t[reps / 2];
    free(t);
    return med;
}

typedef struct copy_arg {
    void *dst, *src;
    size_t bytes;
} copy_arg;

static void run_copy(void *p)
{
    copy_arg *c = p;
    CHECK(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, 0));
}

typedef struct attn_arg {
    void *out, *qkv, *kc, *vc, *work;
    float *scores, *self_p;
    kern_seq *seqs_d;
    kern_kv_fmt fmt; /* of kc, vc */
    int n_seq, H, hd, cap, slots, with_scores;
} attn_arg;

static void run_attn(void *p)
{
    attn_arg *a = p;
    int d = a->H * a->hd;
    if (kern_attn_decode_cuda(a->out, d, a->qkv, (char *)a->qkv + 2 * (size_t)d,
                              (char *)a->qkv + 4 * (size_t)d, 3 * d, a->fmt, a->kc, a->vc,
                              a->seqs_d, a->n_seq, a->H, a->H, a->hd, a->cap, 0.088f,
                              a->with_scores ? a->scores : NULL,
                              a->with_scores ? a->self_p : NULL, a->work, a->slots, 0) < 0) {
        fprintf(stderr, "%s decode attention: %s\n", kern_kv_fmt_name(a->fmt), err_msg());
        exit(1);
    }
}

typedef struct lin_arg {
    backend *be;
    cublasHandle_t h;
    void *y, *x, *w, *b;
    int m, n, k, ours;
} lin_arg;

static void run_lin(void *p)
{
    lin_arg *l = p;
    if (l->ours) {
        OK(l->be->ops->linear(l->be->ctx, l->y, l->x, l->w, l->b, l->m, l->n, l->k, 1));
    } else {
        const float one = 1.0f, zero = 0.0f;
        cublasStatus_t s = cublasGemmEx(l->h, CUBLAS_OP_T, CUBLAS_OP_N, l->n, l->m, l->k, &one,
                                        l->w, CUDA_R_16F, l->k, l->x, CUDA_R_16F, l->k, &zero,
                                        l->y, CUDA_R_16F, l->n, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx: %s\n", cublasGetStatusString(s));
            exit(1);
        }
    }
}

/* rows x n values of valid 4-bit blocks (scale 1/64, min -0.125, random
 * codes) on the device. */
static void *fill_q4(size_t rows, int n, unsigned seed)
{
    size_t bytes = rows * kern_q4_row_bytes(n);
    uint8_t *h = malloc(bytes);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < bytes; i += KERN_Q4_BLOCK) {
        h[i] = 0x00, h[i + 1] = 0x24; /* fp16 1/64 */
        h[i + 2] = 0x00, h[i + 3] = 0xb0; /* fp16 -0.125 */
        for (int j = 4; j < KERN_Q4_BLOCK; j++) {
            x = x * 1664525u + 1013904223u;
            h[i + j] = (uint8_t)(x >> 24);
        }
    }
    void *d;
    CHECK(cudaMalloc(&d, bytes));
    CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

typedef struct deq_arg {
    void *dst, *src;
    size_t rows;
    int n;
} deq_arg;

static void run_deq(void *p)
{
    deq_arg *q = p;
    if (kern_q4_dequant_cuda(q->dst, q->src, q->rows, q->n, 0) < 0) {
        fprintf(stderr, "q4 dequant: %s\n", err_msg());
        exit(1);
    }
}

typedef struct pre_arg {
    backend *be;
    void *out, *qkv;
    float *colsum; /* NULL: no H2O column sums */
    kern_seq *seqs;
    int n_seq, H, KVH, hd;
} pre_arg;

static void run_prefill(void *p)
{
    pre_arg *a = p;
    int d = a->H * a->hd, ld = (a->H + 2 * a->KVH) * a->hd;
    char *q = a->qkv;
    OK(a->be->ops->attn_prefill(a->be->ctx, a->out, d, q, q + 2 * (size_t)d,
                                q + 2 * (size_t)(a->H + a->KVH) * a->hd, ld, a->seqs, a->n_seq,
                                a->H, a->KVH, a->hd, 1.0f / sqrtf((float)a->hd), a->colsum));
}

static int all_finite16(const void *p, size_t n)
{
    uint16_t *h = malloc(2 * n);
    CHECK(cudaMemcpy(h, p, 2 * n, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++)
        ok = isfinite(kern_f16_to_f32(h[i]));
    free(h);
    return ok;
}

int main(int argc, char **argv)
{
    int n_seq = 64, tokens = 2048, H = 32, hd = 128;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seqs")) n_seq = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens")) tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--heads")) H = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--head-dim")) hd = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--seqs N] [--tokens N] [--heads N] [--head-dim N]\n",
                    argv[0]);
            return 2;
        }
    }
    backend be;
    OK(backend_cuda_create(0, &be));
    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("## flexh2o kernels on %s\n\n", prop.name);

    /* 1. the ceiling: a 1 GiB device-to-device copy */
    copy_arg c = {NULL, NULL, (size_t)1 << 30};
    CHECK(cudaMalloc(&c.dst, c.bytes));
    CHECK(cudaMalloc(&c.src, c.bytes));
    fill16(c.src, c.bytes / 2, 1.0f, 1);
    float ms = time_ms(run_copy, &c, 3, 20);
    double copy_bw = 2.0 * c.bytes / (ms * 1e-3) / 1e9;
    printf("| measurement | shape | time (ms) | achieved | ceiling | efficiency |\n");
    printf("|---|---|---|---|---|---|\n");
    printf("| D2D copy (read + write) | 1 GiB | %.3f | %.0f GB/s | - | - |\n", ms, copy_bw);
    CHECK(cudaFree(c.dst));
    CHECK(cudaFree(c.src));

    /* 2. decode attention */
    int d = H * hd, cap = tokens + 1;
    size_t slots = (size_t)n_seq * H * cap;
    attn_arg a = {.fmt = KERN_KV_FMT_PLAIN, .n_seq = n_seq, .H = H, .hd = hd, .cap = cap,
                  .slots = tokens};
    CHECK(cudaMalloc(&a.kc, 2 * slots * hd));
    CHECK(cudaMalloc(&a.vc, 2 * slots * hd));
    CHECK(cudaMalloc(&a.qkv, 2 * (size_t)n_seq * 3 * d));
    CHECK(cudaMalloc(&a.out, 2 * (size_t)n_seq * d));
    CHECK(cudaMalloc((void **)&a.scores, 4 * slots));
    CHECK(cudaMalloc((void **)&a.self_p, 4 * (size_t)n_seq * H));
    CHECK(cudaMalloc(&a.work, kern_attn_decode_work(n_seq, H, hd, cap)));
    CHECK(cudaMemset(a.scores, 0, 4 * slots));
    fill16(a.kc, slots * hd, 1.0f, 2);
    fill16(a.vc, slots * hd, 1.0f, 3);
    fill16(a.qkv, (size_t)n_seq * 3 * d, 1.0f, 4);
    kern_seq *seqs = malloc(sizeof(kern_seq) * n_seq);
    for (int s = 0; s < n_seq; s++)
        seqs[s] = (kern_seq){.row = s, .n_new = 1, .n_past = tokens, .n_slots = tokens,
                             .budget = cap, .sinks = 0, .recent = 1};
    CHECK(cudaMalloc((void **)&a.seqs_d, sizeof(kern_seq) * n_seq));
    CHECK(cudaMemcpy(a.seqs_d, seqs, sizeof(kern_seq) * n_seq, cudaMemcpyHostToDevice));
    double kv_bytes = 2.0 * n_seq * H * (double)tokens * hd * 2;
    float ms_fp16[2] = {0, 0};
    for (int ws = 0; ws < 2; ws++) {
        a.with_scores = ws;
        CHECK(cudaMemset(a.out, 0xff, 2 * (size_t)n_seq * d)); /* poison: NaN halves */
        run_attn(&a);
        CHECK(cudaDeviceSynchronize());
        if (!all_finite16(a.out, (size_t)n_seq * d)) {
            fprintf(stderr, "decode attention left non-finite output\n");
            return 1;
        }
        ms = ms_fp16[ws] = time_ms(run_attn, &a, 3, 30);
        double bytes = kv_bytes + (ws ? 8.0 * n_seq * H * tokens : 0);
        double bw = bytes / (ms * 1e-3) / 1e9;
        printf("| decode attention%s | %d seqs x %d tokens, %d heads x %d | %.3f | %.0f GB/s "
               "| %.0f GB/s | %.0f%% |\n", ws ? " + H2O scores" : "", n_seq, tokens, H, hd, ms,
               bw, copy_bw, 100.0 * bw / copy_bw);
    }
    cudaFree(a.kc), cudaFree(a.vc);

    /* 4b. the same attention over a 4-bit cache (the same work space) */
    a.fmt = KERN_KV_FMT_Q4;
    a.kc = fill_q4(slots, hd, 8);
    a.vc = fill_q4(slots, hd, 9);
    double kv_q4 = 2.0 * n_seq * H * (double)tokens * kern_q4_row_bytes(hd);
    for (int ws = 0; ws < 2; ws++) {
        a.with_scores = ws;
        CHECK(cudaMemset(a.out, 0xff, 2 * (size_t)n_seq * d));
        run_attn(&a);
        CHECK(cudaDeviceSynchronize());
        if (!all_finite16(a.out, (size_t)n_seq * d)) {
            fprintf(stderr, "4-bit decode attention left non-finite output\n");
            return 1;
        }
        ms = time_ms(run_attn, &a, 3, 30);
        double bw = (kv_q4 + (ws ? 8.0 * n_seq * H * tokens : 0)) / (ms * 1e-3) / 1e9;
        printf("| decode attention, 4-bit KV%s (fp16: %.3f ms) | %d seqs x %d tokens, %d heads "
               "x %d | %.3f | %.0f GB/s | %.0f GB/s | %.0f%% |\n", ws ? " + H2O scores" : "",
               ms_fp16[ws], n_seq, tokens, H, hd, ms, bw, copy_bw, 100.0 * bw / copy_bw);
    }
    cudaFree(a.kc), cudaFree(a.vc), cudaFree(a.qkv), cudaFree(a.out), cudaFree(a.scores);
    cudaFree(a.self_p), cudaFree(a.work), cudaFree(a.seqs_d);
    free(seqs);

    /* 4a. expanding a 4-bit OPT-30B fc1 (28672 x 7168) into fp16 */
    deq_arg q = {.rows = 28672, .n = 7168};
    q.src = fill_q4(q.rows, q.n, 10);
    CHECK(cudaMalloc(&q.dst, 2 * q.rows * (size_t)q.n));
    run_deq(&q);
    CHECK(cudaDeviceSynchronize());
    if (!all_finite16(q.dst, q.rows * (size_t)q.n)) {
        fprintf(stderr, "q4 dequant left non-finite output\n");
        return 1;
    }
    ms = time_ms(run_deq, &q, 3, 20);
    double qb = (double)q.rows * kern_q4_row_bytes(q.n) + 2.0 * q.rows * q.n;
    printf("| 4-bit expansion (read 4-bit + write fp16) | %zu x %d | %.3f | %.0f GB/s | %.0f GB/s "
           "| %.0f%% |\n", q.rows, q.n, ms, qb / (ms * 1e-3) / 1e9, copy_bw,
           100.0 * qb / (ms * 1e-3) / 1e9 / copy_bw);
    cudaFree(q.src), cudaFree(q.dst);

    /* 3. linear layers of OPT-6.7B (d 4096, ffn 16384): decode (m 64) and
     * prefill (m 8192) */
    int shapes[][3] = {{64, 12288, 4096}, {64, 4096, 4096}, {64, 16384, 4096},
                       {64, 4096, 16384}, {8192, 12288, 4096}, {8192, 4096, 16384}};
    lin_arg l = {.be = &be};
    double gemm_rate = 0; /* cuBLAS's TFLOP/s on the prefill shape (m 8192, n 12288) */
    if (cublasCreate(&l.h) != CUBLAS_STATUS_SUCCESS)
        return 1;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        l.m = shapes[i][0], l.n = shapes[i][1], l.k = shapes[i][2];
        CHECK(cudaMalloc(&l.x, 2 * (size_t)l.m * l.k));
        CHECK(cudaMalloc(&l.w, 2 * (size_t)l.n * l.k));
        CHECK(cudaMalloc(&l.b, 2 * (size_t)l.n));
        CHECK(cudaMalloc(&l.y, 2 * (size_t)l.m * l.n));
        fill16(l.x, (size_t)l.m * l.k, 1.0f, 5);
        fill16(l.w, (size_t)l.n * l.k, 0.02f, 6);
        fill16(l.b, l.n, 0.1f, 7);
        double flop = 2.0 * l.m * l.n * l.k;
        l.ours = 0;
        float t_cublas = time_ms(run_lin, &l, 5, 30);
        l.ours = 1;
        run_lin(&l);
        CHECK(cudaDeviceSynchronize());
        if (!all_finite16(l.y, (size_t)l.m * l.n)) {
            fprintf(stderr, "linear left non-finite output\n");
            return 1;
        }
        float t_ours = time_ms(run_lin, &l, 5, 30);
        double wbw = 2.0 * l.n * l.k / (t_ours * 1e-3) / 1e9;
        if (l.m == 8192 && l.n == 12288)
            gemm_rate = flop / (t_cublas * 1e-3) / 1e12;
        printf("| linear + bias + ReLU vs cublasGemmEx | m %d, n %d, k %d | %.3f (cuBLAS %.3f) "
               "| %.1f TFLOP/s, weights %.0f GB/s | cuBLAS %.1f TFLOP/s | %.0f%% |\n", l.m, l.n,
               l.k, t_ours, t_cublas, flop / (t_ours * 1e-3) / 1e12, wbw,
               flop / (t_cublas * 1e-3) / 1e12, 100.0 * t_cublas / t_ours);
        cudaFree(l.x), cudaFree(l.w), cudaFree(l.b), cudaFree(l.y);
    }
    cublasDestroy(l.h);

    /* 5. prefill attention: flash kernel against the GEMM route */
    backend be_gemm;
    setenv("FLEXH2O_CUDA_PREFILL", "gemm", 1);
    OK(backend_cuda_create(0, &be_gemm));
    unsetenv("FLEXH2O_CUDA_PREFILL");
    int pre_cases[][4] = {{16, 512, 32, 32}, {64, 512, 32, 32}, {16, 512, 32, 8}};
    for (size_t ci = 0; ci < sizeof pre_cases / sizeof *pre_cases; ci++) {
        pre_arg pa = {.n_seq = pre_cases[ci][0], .H = pre_cases[ci][2],
                      .KVH = pre_cases[ci][3], .hd = 128};
        int n = pre_cases[ci][1], rows = pa.n_seq * n, ld = (pa.H + 2 * pa.KVH) * pa.hd;
        CHECK(cudaMalloc(&pa.qkv, 2 * (size_t)rows * ld));
        CHECK(cudaMalloc(&pa.out, 2 * (size_t)rows * pa.H * pa.hd));
        float *cs;
        CHECK(cudaMalloc((void **)&cs, 4 * (size_t)rows * pa.KVH));
        fill16(pa.qkv, (size_t)rows * ld, 1.0f, 10);
        pa.seqs = malloc(sizeof(kern_seq) * pa.n_seq);
        for (int s = 0; s < pa.n_seq; s++)
            pa.seqs[s] = (kern_seq){.row = s * n, .n_new = n, .budget = n / 5, .sinks = 0,
                                    .recent = n / 10};
        double flop = 4.0 * n * (n + 1) / 2.0 * pa.hd * pa.H * pa.n_seq;
        for (int h2o = 0; h2o < 2; h2o++) {
            pa.colsum = h2o ? cs : NULL;
            float t[2];
            for (int route = 0; route < 2; route++) {
                pa.be = route ? &be_gemm : &be;
                CHECK(cudaMemset(pa.out, 0xff, 2 * (size_t)rows * pa.H * pa.hd));
                run_prefill(&pa);
                CHECK(cudaDeviceSynchronize());
                if (!all_finite16(pa.out, (size_t)rows * pa.H * pa.hd)) {
                    fprintf(stderr, "prefill attention (%s) left non-finite output\n",
                            route ? "gemm" : "flash");
                    return 1;
                }
                t[route] = time_ms(run_prefill, &pa, 2, 10);
            }
            double rate = flop / (t[0] * 1e-3) / 1e12;
            printf("| prefill attention%s, flash (GEMM route: %.3f ms, %.2fx) | %d seqs x %d "
                   "tokens, %d heads over %d x %d | %.3f | %.1f TFLOP/s | %.1f TFLOP/s | %.0f%% "
                   "|\n", h2o ? " + H2O column sums" : "", t[1], t[1] / t[0], pa.n_seq, n,
                   pa.H, pa.KVH, pa.hd, t[0], rate, gemm_rate, 100.0 * rate / gemm_rate);
        }
        cudaFree(pa.qkv), cudaFree(pa.out), cudaFree(cs);
        free(pa.seqs);
    }
    backend_destroy(&be_gemm);
    backend_destroy(&be);
    return 0;
}
