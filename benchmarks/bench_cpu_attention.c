/* bench_cpu_attention.c: CPU decode attention (kern.h's kern_attn_decode
 * ops) over each cache format, against the machine's memory read ceiling.
 *
 *   flexh2o-bench-cpu-attention [--seqs 64] [--heads 32] [--kv-heads 32]
 *                               [--head-dim 128] [--slots 544] [--reps 7]
 *
 * One decode step of one layer: every sequence's new row against its
 * `slots` cached tokens (an OPT-6.7B-shaped 512+32 cache by default), with
 * H2O scores accumulated, for the caches the host runs attention over:
 *   fp32  the CPU backend's plain cache (kern_attn_decode_ref);
 *   fp16  the CUDA backend's KV in host memory under --cpu-attention
 *         (kern_attn_decode_h16, reading the cache in place);
 *   bf16  the CPU backend's cache under --cpu-matmul bf16;
 *   q4    compress_cache's 4-bit groups (kern_attn_decode_q4).
 * The ceiling is a streaming read of the same number of bytes on the same
 * threads (a sum over them; the ops only read the cache), measured in the
 * same run. Each case is timed as the best of --reps runs (a cold cache
 * each time: the buffers are larger than the last-level cache at the
 * default shape, and the ceiling's buffer is a different one). Prints a
 * Markdown table: ms per layer, cache bytes read per second, and that
 * against the ceiling for the same bytes. Decode attention over the cache
 * is a stream of its bytes, so the target is the ceiling.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "kern.h"

typedef struct shape {
    int seqs, heads, kv_heads, head_dim, slots, reps;
} shape;

static int arg_int(int argc, char **argv, int *i, const char *name, int *out)
{
    if (strcmp(argv[*i], name))
        return 0;
    if (*i + 1 >= argc || (*out = atoi(argv[*i + 1])) <= 0) {
        fprintf(stderr, "flexh2o-bench-cpu-attention: %s needs a positive integer\n", name);
        exit(2);
    }
    ++*i;
    return 1;
}

/* A value in [-1, 1) from a 64-bit state (SplitMix64). */
static float rnd(uint64_t *s)
{
    return (float)((double)(kern_splitmix64(s) >> 11) * 0x1.0p-52 - 1.0);
}

/* The read ceiling: the best of reps sums of the n 64-bit words at a, on
 * every thread (integer sums: the compiler vectorizes them, so the loop is
 * bound by memory, not by a chain of dependent float adds). */
static double read_s(const uint64_t *a, size_t n, int reps, uint64_t *sink)
{
    double best = INFINITY;
    for (int r = 0; r < reps; r++) {
        double t0 = kern_now_s();
        uint64_t total = 0;
        #pragma omp parallel for reduction(+ : total) schedule(static)
        for (size_t i = 0; i < n; i++)
            total += a[i];
        double t = kern_now_s() - t0;
        *sink += total;
        best = t < best ? t : best;
    }
    return best;
}

enum { F32, H16, BF16, Q4, N_FMT };
static const char *const fmt_name[N_FMT] = {"fp32", "fp16", "bf16", "q4"};

int main(int argc, char **argv)
{
    shape sh = {64, 32, 32, 128, 544, 7};
    for (int i = 1; i < argc; i++) {
        if (arg_int(argc, argv, &i, "--seqs", &sh.seqs) ||
            arg_int(argc, argv, &i, "--heads", &sh.heads) ||
            arg_int(argc, argv, &i, "--kv-heads", &sh.kv_heads) ||
            arg_int(argc, argv, &i, "--head-dim", &sh.head_dim) ||
            arg_int(argc, argv, &i, "--slots", &sh.slots) ||
            arg_int(argc, argv, &i, "--reps", &sh.reps))
            continue;
        fprintf(stderr, "flexh2o-bench-cpu-attention: unknown argument %s (see the file's "
                        "header for the options)\n", argv[i]);
        return 2;
    }
    if (sh.heads % sh.kv_heads) {
        fprintf(stderr, "flexh2o-bench-cpu-attention: --heads must be a multiple of "
                        "--kv-heads\n");
        return 2;
    }
    int S = sh.seqs, H = sh.heads, G = sh.kv_heads, hd = sh.head_dim, cap = sh.slots;
    int ld = (H + 2 * G) * hd, nt = kern_cpu_threads();
    size_t vals = (size_t)S * G * cap * hd, rowq4 = kern_q4_row_bytes(hd);
    size_t rows = (size_t)S * G * cap;
    float *qkv = malloc(sizeof(float) * S * ld), *out = malloc(sizeof(float) * S * H * hd);
    float *kf = malloc(sizeof(float) * vals), *vf = malloc(sizeof(float) * vals);
    uint16_t *kh = malloc(2 * vals), *vh = malloc(2 * vals);
    uint16_t *kb = malloc(2 * vals), *vb = malloc(2 * vals);
    uint8_t *kq = malloc(rows * rowq4), *vq = malloc(rows * rowq4);
    float *scores = calloc(rows, sizeof(float)), *self = calloc((size_t)S * G, sizeof(float));
    uint64_t *ceil_buf = malloc(sizeof(float) * vals * 2);
    kern_seq *seqs = calloc((size_t)S, sizeof *seqs);
    size_t ws_bytes = kern_attn_decode_scratch_bytes(cap, nt);
    void *ws = malloc(ws_bytes);
    if (!qkv || !out || !kf || !vf || !kh || !vh || !kb || !vb || !kq || !vq || !scores ||
        !self || !ceil_buf || !seqs || !ws) {
        /* K and V as fp32, fp16, bf16 and 4-bit, and the ceiling's 8 bytes a value */
        double gb = ((8.0 + 4 + 4 + 8) * (double)vals + 2.0 * (double)(rows * rowq4)) / 1e9;
        fprintf(stderr, "flexh2o-bench-cpu-attention: out of memory for the shape (%.2f GB of "
                        "caches); ask for fewer --seqs or --slots\n", gb);
        return 1;
    }
    uint64_t seed = 1;
    for (size_t i = 0; i < (size_t)S * ld; i++)
        qkv[i] = rnd(&seed);
    for (size_t i = 0; i < vals; i++)
        kf[i] = rnd(&seed), vf[i] = rnd(&seed);
    for (size_t i = 0; i < vals; i++)
        kh[i] = kern_f32_to_f16(kf[i]), vh[i] = kern_f32_to_f16(vf[i]);
    kern_round_bf16_ref(kb, kf, vals);
    kern_round_bf16_ref(vb, vf, vals);
    for (size_t r = 0; r < rows; r++) {
        kern_q4_quantize_row(kq + r * rowq4, kf + r * hd, hd);
        kern_q4_quantize_row(vq + r * rowq4, vf + r * hd, hd);
    }
    for (size_t i = 0; i < vals; i++) /* 8 bytes of fp32 K and V per value */
        ceil_buf[i] = i;
    for (int s = 0; s < S; s++)
        seqs[s] = (kern_seq){.row = s, .n_new = 1, .n_past = cap, .n_slots = cap,
                             .budget = cap, .sinks = 0, .recent = 1};

    printf("CPU decode attention, %d sequences x %d heads (%d KV heads) x head dim %d over "
           "%d slots, %d threads, best of %d\n\n",
           S, H, G, hd, cap, nt, sh.reps);
    printf("| cache | bytes read | ms per layer | GB/s | ceiling for the bytes (ms) | of the "
           "ceiling |\n|---|---|---|---|---|---|\n");
    uint64_t sink = 0;
    for (int f = 0; f < N_FMT; f++) {
        size_t bytes = f == F32 ? 8 * vals : f == Q4 ? 2 * rows * rowq4 : 4 * vals;
        double best = INFINITY;
        for (int r = 0; r < sh.reps; r++) {
            double t0 = kern_now_s();
            int rc = 0;
            const float *q = qkv, *k = qkv + (size_t)H * hd, *v = k + (size_t)G * hd;
            switch (f) {
            case F32:
                rc = kern_attn_decode_ref(out, H * hd, q, k, v, ld, kf, vf, seqs, S, H, G, hd,
                                          cap, 0.088f, scores, self, ws, ws_bytes);
                break;
            case H16:
                rc = kern_attn_decode_h16(out, H * hd, q, k, v, ld, kh, vh, seqs, S, H, G, hd,
                                          cap, 0.088f, scores, self, ws, ws_bytes);
                break;
            case BF16:
                rc = kern_attn_decode_bf16(out, H * hd, q, k, v, ld, kb, vb, seqs, S, H, G, hd,
                                           cap, 0.088f, scores, self, ws, ws_bytes);
                break;
            default:
                rc = kern_attn_decode_q4(out, H * hd, q, k, v, ld, kq, vq, seqs, S, H, G, hd,
                                         cap, 0.088f, scores, self, ws, ws_bytes);
            }
            double t = kern_now_s() - t0;
            if (rc) {
                fprintf(stderr, "flexh2o-bench-cpu-attention: %s: %s\n", fmt_name[f], err_msg());
                return 1;
            }
            for (int e = 0; e < H * hd; e++)
                if (!isfinite(out[e])) {
                    fprintf(stderr, "flexh2o-bench-cpu-attention: %s gave a non-finite output\n",
                            fmt_name[f]);
                    return 1;
                }
            best = t < best ? t : best;
        }
        double ceil_s = read_s(ceil_buf, bytes / sizeof(uint64_t), sh.reps, &sink);
        printf("| %s | %.0f MB | %.2f | %.2f | %.2f | %.0f%% |\n", fmt_name[f], bytes / 1e6,
               best * 1e3, bytes / best / 1e9, ceil_s * 1e3, 100.0 * ceil_s / best);
    }
    if (sink == 12345) /* keep the ceiling's sums */
        printf("\n");
    return 0;
}
