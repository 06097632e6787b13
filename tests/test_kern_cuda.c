/* test_kern_cuda.c: every CUDA op against its plain-C reference, through
 * the two backends (the CPU backend runs the references of kernels/cpu/),
 * over a range of shapes, including the launch-geometry edges: more than
 * 65535 (sequence, head) pairs, prompts above 12288 tokens, the kernels'
 * y-loops, many GEMM row counts and shapes; prefill attention through
 * the flash kernel (tile edges, head widths, sliding windows) and the GEMM
 * route; the RoPE families' ops
 * (RMSNorm, RoPE with partial rotary dimensions, SwiGLU, GELU, embed
 * without learned positions) and grouped-query attention (8 query heads
 * over 2 KV heads, and others) in every attention and KV op, both cache
 * formats; sampling with every per-row control (logit edits, min_p, top_k,
 * top_p, top logprobs), within a reservation too. Inputs are rounded to
 * fp16 first, so both sides see the same numbers; outputs must agree
 * within atol + |ref| * rtol. The end-to-end GPU runs are test_gpu_e2e.c's.
 * Without a GPU (or a CUDA build) every test is skipped, saying why; with
 * one, a backend that fails to start fails the tests. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"
#include "fh_config.h"
#include "model.h"
#include "safetensors.h"
#include "sample_slow.h"
#include "test_rng.h"
#include "gpu_timeout.h"

static backend cpu, gpu;

static void setup(void)
{
    err_clear();
    cr_assert_eq(backend_cpu_create(0, &cpu), 0);
    if (!kern_cuda_available()) {
        backend_destroy(&cpu);
        const char *why = FH_HAVE_CUDA ? "no CUDA GPU found" : "built without CUDA";
        fprintf(stderr, "SKIP kern_cuda: %s; the CUDA kernels are compiled but not run\n", why);
        cr_skip_test("%s; the CUDA kernels are compiled but not run", why);
    }
    /* a GPU is there: failing to use it is a failure, not a skip */
    cr_assert_eq(backend_cuda_create(0, &gpu), 0, "a CUDA GPU is present but the backend "
                 "did not start: %s", err_msg());
}

static void teardown(void)
{
    backend_destroy(&gpu);
    backend_destroy(&cpu);
}

TestSuite(kern_cuda, .init = setup, .fini = teardown);


/* n random values of scale `s`, rounded to fp16. Caller frees. */
static float *rand16(size_t n, float s)
{
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        x[i] = kern_f16_to_f32(kern_f32_to_f16(frand() * s));
    return x;
}

/* The same host data in both backends. */
typedef struct pair {
    void *c, *g;
    size_t n;
    int words; /* 4-byte words (fp32 / int32) rather than storage elements */
} pair;

static pair put(const float *x, size_t n)
{
    pair p = {NULL, NULL, n, 0};
    cr_assert_eq(cpu.ops->alloc(cpu.ctx, n, &p.c), 0);
    cr_assert_eq(gpu.ops->alloc(gpu.ctx, n, &p.g), 0, "%s", err_msg());
    if (x) {
        cpu.ops->upload(cpu.ctx, p.c, x, n);
        cr_assert_eq(gpu.ops->upload(gpu.ctx, p.g, x, n), 0, "%s", err_msg());
    }
    return p;
}

static pair put_words(const void *x, size_t n)
{
    pair p = {NULL, NULL, n, 1};
    cr_assert_eq(cpu.ops->alloc_words(cpu.ctx, n, &p.c), 0);
    cr_assert_eq(gpu.ops->alloc_words(gpu.ctx, n, &p.g), 0, "%s", err_msg());
    if (x) {
        cpu.ops->upload_words(cpu.ctx, p.c, x, n);
        gpu.ops->upload_words(gpu.ctx, p.g, x, n);
    }
    return p;
}

static void drop(pair *p)
{
    cpu.ops->free(cpu.ctx, p->c);
    gpu.ops->free(gpu.ctx, p->g);
}

/* Compare the two sides; print the first mismatches with their index. */
static void expect_close(const char *what, pair p, double atol, double rtol)
{
    float *a = malloc(sizeof(float) * p.n), *b = malloc(sizeof(float) * p.n);
    if (p.words) {
        cpu.ops->download_words(cpu.ctx, a, p.c, p.n);
        gpu.ops->download_words(gpu.ctx, b, p.g, p.n);
    } else {
        cpu.ops->download(cpu.ctx, a, p.c, p.n);
        cr_assert_eq(gpu.ops->download(gpu.ctx, b, p.g, p.n), 0, "%s", err_msg());
    }
    size_t bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < p.n; i++) {
        double e = fabs((double)a[i] - b[i]), tol = atol + fabs(a[i]) * rtol;
        if (!(e <= tol)) {
            if (bad < 5)
                fprintf(stderr, "%s[%zu]: cuda %.6g ref %.6g\n", what, i, b[i], a[i]);
            if (!bad)
                first = i;
            bad++;
        }
        worst = fmax(worst, e);
    }
    cr_assert_eq(bad, 0, "%s: %zu of %zu values off (first at %zu), worst |diff| %.3g", what,
                 bad, p.n, first, worst);
    free(a);
    free(b);
}

static void expect_equal_words(const char *what, pair p)
{
    int32_t *a = malloc(4 * p.n), *b = malloc(4 * p.n);
    cpu.ops->download_words(cpu.ctx, a, p.c, p.n);
    gpu.ops->download_words(gpu.ctx, b, p.g, p.n);
    for (size_t i = 0; i < p.n; i++)
        cr_assert_eq(a[i], b[i], "%s[%zu]: cuda %d ref %d", what, i, b[i], a[i]);
    free(a);
    free(b);
}

#define EPS16 (1.0 / 1024)

Test(kern_cuda, embed_layernorm_bias_add_gather)
{
    int dims[] = {64, 768, 2560};
    for (int di = 0; di < 3; di++) {
        int d = dims[di], V = 300, P = 130, n = 37;
        float *te = rand16((size_t)V * d, 1), *pe = rand16((size_t)P * d, 1);
        int32_t ids[37], pos[37], rows[5] = {36, 0, 5, 5, 20};
        for (int i = 0; i < n; i++) {
            ids[i] = (i * 37 + 11) % V;
            pos[i] = (i * 7) % (P - 2);
        }
        pair T = put(te, (size_t)V * d), Pe = put(pe, (size_t)P * d), out = put(NULL, (size_t)n * d);
        cpu.ops->embed(cpu.ctx, out.c, T.c, Pe.c, ids, pos, n, d);
        cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, Pe.g, ids, pos, n, d), 0, "%s",
                     err_msg());
        expect_close("embed", out, 1e-6, EPS16);

        float *w = rand16((size_t)d, 1), *b = rand16((size_t)d, 0.5f);
        pair W = put(w, d), Bb = put(b, d), ln = put(NULL, (size_t)n * d);
        cpu.ops->layernorm(cpu.ctx, ln.c, out.c, W.c, Bb.c, n, d, 1e-5f);
        gpu.ops->layernorm(gpu.ctx, ln.g, out.g, W.g, Bb.g, n, d, 1e-5f);
        expect_close("layernorm", ln, 2e-3, 2 * EPS16);

        /* add, and the in-place form used by the model (out == x) */
        cpu.ops->add(cpu.ctx, ln.c, out.c, (size_t)n * d);
        gpu.ops->add(gpu.ctx, ln.g, out.g, (size_t)n * d);
        expect_close("add", ln, 2e-3, 2 * EPS16);
        cpu.ops->layernorm(cpu.ctx, ln.c, ln.c, W.c, Bb.c, n, d, 1e-5f);
        gpu.ops->layernorm(gpu.ctx, ln.g, ln.g, W.g, Bb.g, n, d, 1e-5f);
        expect_close("layernorm in place", ln, 4e-3, 4 * EPS16);

        pair g = put(NULL, (size_t)5 * d);
        cpu.ops->gather_rows(cpu.ctx, g.c, ln.c, rows, 5, d);
        gpu.ops->gather_rows(gpu.ctx, g.g, ln.g, rows, 5, d);
        expect_close("gather_rows", g, 4e-3, 4 * EPS16);
        drop(&T), drop(&Pe), drop(&out), drop(&W), drop(&Bb), drop(&ln), drop(&g);
        free(te), free(pe), free(w), free(b);
    }
}

/* Embedding without learned positions (pos_emb NULL: the RoPE families):
 * each row is the token's row exactly, with positions NULL or given (and
 * then ignored); an OPT embed after it still adds its positions (the ring
 * staged one array, then two). The expected rows are gathered here, on
 * the host, from the fp16 table. */
Test(kern_cuda, embed_without_learned_positions)
{
    int dims[] = {64, 777, 4096};
    for (int di = 0; di < 3; di++) {
        int d = dims[di], V = 300, P = 40, n = 37;
        float *te = rand16((size_t)V * d, 1), *pe = rand16((size_t)P * d, 1);
        int32_t ids[37], pos[37];
        for (int i = 0; i < n; i++) {
            ids[i] = (i * 53 + 7) % V;
            pos[i] = (i * 5) % (P - 2);
        }
        ids[3] = V - 1, ids[4] = 0;
        pair T = put(te, (size_t)V * d), Pe = put(pe, (size_t)P * d);
        pair out = put(NULL, (size_t)n * d);
        float *got = malloc(sizeof(float) * (size_t)n * d);
        for (int with_pos = 0; with_pos < 2; with_pos++) {
            cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, NULL, ids, with_pos ? pos : NULL,
                                        n, d), 0, "%s", err_msg());
            cr_assert_eq(gpu.ops->download(gpu.ctx, got, out.g, (size_t)n * d), 0, "%s",
                         err_msg());
            for (int r = 0; r < n; r++)
                for (int j = 0; j < d; j++)
                    cr_assert_eq(got[(size_t)r * d + j], te[(size_t)ids[r] * d + j],
                                 "d %d pos %s row %d [%d]: cuda %g, token row %d has %g", d,
                                 with_pos ? "given" : "NULL", r, j, got[(size_t)r * d + j],
                                 ids[r], te[(size_t)ids[r] * d + j]);
        }
        cpu.ops->embed(cpu.ctx, out.c, T.c, Pe.c, ids, pos, n, d);
        cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, Pe.g, ids, pos, n, d), 0, "%s",
                     err_msg());
        expect_close("embed with positions after one without", out, 1e-6, EPS16);
        drop(&T), drop(&Pe), drop(&out);
        free(te), free(pe), free(got);
    }
}

Test(kern_cuda, linear_bias_relu_cublas)
{
    /* (m, n, k): decode-like, prefill-like, odd sizes */
    int shapes[][3] = {{1, 768, 768}, {7, 3072, 768}, {64, 768, 3072}, {300, 96, 40}};
    for (int si = 0; si < 4; si++) {
        int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
        float s = 1.0f / sqrtf((float)k);
        float *x = rand16((size_t)m * k, 1), *w = rand16((size_t)n * k, s), *b = rand16(n, 0.5f);
        pair X = put(x, (size_t)m * k), W = put(w, (size_t)n * k), Bb = put(b, n);
        for (int relu = 0; relu < 2; relu++) {
            pair Y = put(NULL, (size_t)m * n);
            cpu.ops->linear(cpu.ctx, Y.c, X.c, W.c, Bb.c, m, n, k, relu);
            cr_assert_eq(gpu.ops->linear(gpu.ctx, Y.g, X.g, W.g, Bb.g, m, n, k, relu), 0, "%s",
                         err_msg());
            expect_close(relu ? "linear+relu" : "linear", Y, 2e-3, 2 * EPS16);
            drop(&Y);
        }
        drop(&X), drop(&W), drop(&Bb);
        free(x), free(w), free(b);
    }
}

/* A packed prefill batch: sequences of the given lengths. */
static int pack(kern_seq *seqs, const int *len, int n_seq, int budget, int sinks, int recent)
{
    int rows = 0;
    for (int s = 0; s < n_seq; s++) {
        seqs[s] = (kern_seq){.row = rows, .n_new = len[s], .budget = budget, .sinks = sinks,
                             .recent = recent};
        rows += len[s];
    }
    return rows;
}

static pair put_q4(const uint8_t *x, size_t bytes);
static void expect_equal_q4(const char *what, pair p, size_t rb);

/* Packed q/k/v rows of H query heads over KVH KV heads (grouped-query
 * attention; KVH == H: multi-head): q at column 0, k at H hd, v at (H +
 * KVH) hd, row stride qkv_ld. */
static int qkv_ld(int H, int KVH, int hd)
{
    return (H + 2 * KVH) * hd;
}

/* Prefill attention of the packed batch qkv ((rows, qkv_ld) host fp16
 * values, H query heads over KVH KV heads) on both sides (out and column
 * sums per KV head), then the KV fill from the same column sums on both
 * sides (the reference's), so the kept sets must agree exactly: fp16
 * caches, and 4-bit ones when with_q4. */
static void prefill_step(const char *tag, const float *qkv, const kern_seq *seqs, int n_seq,
                         int rows, int H, int KVH, int hd, int cap, int with_q4)
{
    int d = H * hd, ld = qkv_ld(H, KVH, hd);
    size_t ko = (size_t)H * hd, vo = (size_t)(H + KVH) * hd; /* k, v columns */
    char what[128];
    pair QKV = put(qkv, (size_t)rows * ld), out = put(NULL, (size_t)rows * d);
    pair cs = put_words(NULL, (size_t)rows * KVH);
    float scale = 1.0f / sqrtf((float)hd);
    char *qc = QKV.c, *qg = QKV.g;
    cr_assert_eq(cpu.ops->attn_prefill(cpu.ctx, out.c, d, qc, qc + 4 * ko, qc + 4 * vo, ld, seqs,
                                       n_seq, H, KVH, hd, scale, cs.c), 0, "%s", err_msg());
    cr_assert_eq(gpu.ops->attn_prefill(gpu.ctx, out.g, d, qg, qg + 2 * ko, qg + 2 * vo, ld, seqs,
                                       n_seq, H, KVH, hd, scale, cs.g), 0, "%s: %s", tag,
                 err_msg());
    snprintf(what, sizeof what, "%s prefill out", tag);
    expect_close(what, out, 2e-3, 4 * EPS16);
    snprintf(what, sizeof what, "%s prefill colsum", tag);
    expect_close(what, cs, 1e-4, 1e-3);

    float *csv = malloc(sizeof(float) * (size_t)rows * KVH);
    cpu.ops->download_words(cpu.ctx, csv, cs.c, (size_t)rows * KVH);
    gpu.ops->upload_words(gpu.ctx, cs.g, csv, (size_t)rows * KVH);
    size_t slots = (size_t)n_seq * KVH * cap;
    pair kc = put(NULL, slots * hd), vc = put(NULL, slots * hd);
    pair sc = put_words(NULL, slots), ps = put_words(NULL, slots);
    cr_assert_eq(cpu.ops->kv_prefill(cpu.ctx, KERN_KV_FMT_PLAIN, kc.c, vc.c, sc.c, ps.c,
                                     qc + 4 * ko, qc + 4 * vo, ld, cs.c, seqs, n_seq, H, KVH, hd,
                                     cap),
                 0, "%s", err_msg());
    cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, KERN_KV_FMT_PLAIN, kc.g, vc.g, sc.g, ps.g,
                                     qg + 2 * ko, qg + 2 * vo, ld, cs.g, seqs, n_seq, H, KVH, hd,
                                     cap),
                 0, "%s: %s", tag, err_msg());
    snprintf(what, sizeof what, "%s kv_prefill K", tag);
    expect_close(what, kc, 0, 0);
    snprintf(what, sizeof what, "%s kv_prefill V", tag);
    expect_close(what, vc, 0, 0);
    snprintf(what, sizeof what, "%s kv_prefill pos", tag);
    expect_equal_words(what, ps);
    snprintf(what, sizeof what, "%s kv_prefill scores", tag);
    expect_close(what, sc, 0, 0);
    drop(&kc), drop(&vc), drop(&sc), drop(&ps);
    if (with_q4) {
        size_t rb = kern_q4_row_bytes(hd);
        pair kq = put_q4(NULL, slots * rb), vq = put_q4(NULL, slots * rb);
        pair sq = put_words(NULL, slots), pq = put_words(NULL, slots);
        cr_assert_eq(cpu.ops->kv_prefill(cpu.ctx, KERN_KV_FMT_Q4, kq.c, vq.c, sq.c, pq.c,
                                         qc + 4 * ko, qc + 4 * vo, ld, cs.c, seqs, n_seq, H, KVH,
                                         hd, cap),
                     0, "%s", err_msg());
        cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, KERN_KV_FMT_Q4, kq.g, vq.g, sq.g, pq.g,
                                         qg + 2 * ko, qg + 2 * vo, ld, cs.g, seqs, n_seq, H, KVH,
                                         hd, cap),
                     0, "%s: %s", tag, err_msg());
        snprintf(what, sizeof what, "%s q4 kv_prefill K", tag);
        expect_equal_q4(what, kq, rb);
        snprintf(what, sizeof what, "%s q4 kv_prefill V", tag);
        expect_equal_q4(what, vq, rb);
        snprintf(what, sizeof what, "%s q4 kv_prefill pos", tag);
        expect_equal_words(what, pq);
        snprintf(what, sizeof what, "%s q4 kv_prefill scores", tag);
        expect_close(what, sq, 0, 0);
        drop(&kq), drop(&vq), drop(&sq), drop(&pq);
    }
    drop(&QKV), drop(&out), drop(&cs);
    free(csv);
}

/* Prompts that fit and prompts the H2O selection cuts (budget 40 < 70 and
 * 300), through both prefill paths (the one-warp kernel below 64 tokens,
 * the tensor-core GEMMs from 64), H query heads over KVH KV heads. */
static void prefill_cases(int H, int KVH)
{
    int hds[] = {16, 64, 80, 128};
    int len[] = {1, 17, 0, 300, 70};
    for (int hi = 0; hi < 4; hi++) {
        int hd = hds[hi], n_seq = 5, cap = 320;
        kern_seq seqs[5];
        /* budget 40 < 70 and 300: the H2O selection runs; 1 and 17 fit */
        int rows = pack(seqs, len, n_seq, 40, 2, 12);
        float *qkv = rand16((size_t)rows * qkv_ld(H, KVH, hd), 1.5f);
        char tag[48];
        snprintf(tag, sizeof tag, "H %d KVH %d hd %d", H, KVH, hd);
        prefill_step(tag, qkv, seqs, n_seq, rows, H, KVH, hd, cap, KVH < H);
        free(qkv);
    }
}

Test(kern_cuda, prefill_attention_colsum_and_kv_fill) { prefill_cases(3, 3); }

/* Grouped-query attention: 8 query heads over 2 KV heads (Llama's
 * grouping), over 1 (multi-query) and 6 over 3; the column sums, caches,
 * positions and scores are per KV head, a KV head's column sum that of its
 * group's query heads (the reference's, kern.h). */
Test(kern_cuda, gqa_prefill_attention_colsum_and_kv_fill)
{
    prefill_cases(8, 2);
    prefill_cases(8, 1);
    prefill_cases(6, 3);
}

/* One decode step over fp16 caches K, V ((n_seq, KVH, cap, hd)) on both
 * sides: attention (out, scores and self_p per KV head), then the insert
 * from the reference's scores and self_p, which must pick the same victims
 * and write the same rows. qkv: host (n_seq, qkv_ld), fp16 values, H query
 * heads over KVH KV heads. */
static void decode_step(const char *tag, pair K, pair Vv, pair sc, pair ps, const float *qkv,
                        const kern_seq *seqs, int n_seq, int H, int KVH, int hd, int cap)
{
    int d = H * hd, ld = qkv_ld(H, KVH, hd);
    size_t ko = (size_t)H * hd, vo = (size_t)(H + KVH) * hd, nkv = (size_t)n_seq * KVH;
    size_t slots = nkv * cap;
    char what[128];
    pair QKV = put(qkv, (size_t)n_seq * ld), out = put(NULL, (size_t)n_seq * d);
    pair self = put_words(NULL, nkv), ev = put_words(NULL, nkv);
    float scale = 1.0f / sqrtf((float)hd);
    char *qc = QKV.c, *qg = QKV.g;
    cr_assert_eq(cpu.ops->attn_decode(cpu.ctx, out.c, d, qc, qc + 4 * ko, qc + 4 * vo, ld,
                                      KERN_KV_FMT_PLAIN, K.c, Vv.c, seqs, n_seq, H, KVH, hd, cap,
                                      scale, sc.c, self.c),
                 0, "%s", err_msg());
    cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, d, qg, qg + 2 * ko, qg + 2 * vo, ld,
                                      KERN_KV_FMT_PLAIN, K.g, Vv.g, seqs, n_seq, H, KVH, hd, cap,
                                      scale, sc.g, self.g),
                 0, "%s: %s", tag, err_msg());
    snprintf(what, sizeof what, "%s decode out", tag);
    expect_close(what, out, 2e-3, 4 * EPS16);
    snprintf(what, sizeof what, "%s decode scores", tag);
    expect_close(what, sc, 1e-5, 1e-5);
    snprintf(what, sizeof what, "%s decode self_p", tag);
    expect_close(what, self, 1e-5, 1e-3);
    /* insert from identical scores on both sides: the same victims */
    float *sv = malloc(sizeof(float) * slots), *spv = malloc(sizeof(float) * nkv);
    cpu.ops->download_words(cpu.ctx, sv, sc.c, slots);
    gpu.ops->upload_words(gpu.ctx, sc.g, sv, slots);
    cpu.ops->download_words(cpu.ctx, spv, self.c, nkv);
    gpu.ops->upload_words(gpu.ctx, self.g, spv, nkv);
    cpu.ops->kv_insert(cpu.ctx, KERN_KV_FMT_PLAIN, K.c, Vv.c, sc.c, ps.c, qc + 4 * ko,
                       qc + 4 * vo, ld, self.c, seqs, n_seq, H, KVH, hd, cap, ev.c);
    cr_assert_eq(gpu.ops->kv_insert(gpu.ctx, KERN_KV_FMT_PLAIN, K.g, Vv.g, sc.g, ps.g,
                                    qg + 2 * ko, qg + 2 * vo, ld, self.g, seqs, n_seq, H, KVH,
                                    hd, cap, ev.g),
                 0, "%s: %s", tag, err_msg());
    snprintf(what, sizeof what, "%s evicted", tag);
    expect_equal_words(what, ev);
    snprintf(what, sizeof what, "%s pos after insert", tag);
    expect_equal_words(what, ps);
    snprintf(what, sizeof what, "%s K after insert", tag);
    expect_close(what, K, 0, 0);
    snprintf(what, sizeof what, "%s V after insert", tag);
    expect_close(what, Vv, 0, 0);
    snprintf(what, sizeof what, "%s scores after insert", tag);
    expect_close(what, sc, 0, 0);
    drop(&QKV), drop(&out), drop(&self), drop(&ev);
    free(sv), free(spv);
}

/* Positions 0 .. used[pr / H] - 1 in a random order for each (sequence,
 * KV head) pr of an (n_pairs, cap) array (H: KV heads per sequence); the
 * rest 0. Caller frees. */
static int32_t *shuffled_positions(const int *used, int n_pairs, int H, int cap)
{
    int32_t *p0 = calloc((size_t)n_pairs * cap, sizeof(int32_t));
    for (int pr = 0; pr < n_pairs; pr++) {
        int n = used[pr / H];
        int32_t *p = p0 + (size_t)pr * cap;
        for (int t = 0; t < n; t++)
            p[t] = t; /* start from identity */
        for (int t = n - 1; t > 0; t--) { /* Fisher-Yates with the test rng */
            int j = (int)((frand() + 1.0f) * 0.5f * (t + 1)) % (t + 1);
            int32_t tmp = p[t];
            p[t] = p[j];
            p[j] = tmp;
        }
    }
    return p0;
}

/* Scores with exact ties (multiples of 1/8). Caller frees. */
static float *tied_scores(size_t n)
{
    float *s0 = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        s0[i] = (float)((i * 2654435761u) % 13) / 8.0f;
    return s0;
}

/* Decode over fp16 caches of H query heads over KVH KV heads: slots in use
 * per sequence empty, small and across the chunk edges (255, 256, 600),
 * an idle sequence, positions shuffled, scores with ties, then the H2O
 * insert. */
static void decode_cases(int H, int KVH)
{
    int hds[] = {16, 64, 128};
    /* slots in use per sequence: empty, small, across chunk edges (256) */
    int used[] = {0, 5, 255, 256, 600, 3};
    for (int hi = 0; hi < 3; hi++) {
        int hd = hds[hi], n_seq = 6, cap = 601;
        kern_seq seqs[6];
        for (int s = 0; s < n_seq; s++)
            seqs[s] = (kern_seq){.row = s, .n_new = s == 5 ? 0 : 1, .n_past = used[s] + 7,
                                 .n_slots = used[s], .budget = used[s] ? used[s] : 1,
                                 .sinks = used[s] > 8 ? 2 : 0, .recent = used[s] > 8 ? 4 : 1};
        size_t slots = (size_t)n_seq * KVH * cap;
        float *kv = rand16(slots * hd * 2, 1.5f);
        float *qkv = rand16((size_t)n_seq * qkv_ld(H, KVH, hd), 1.5f);
        float *s0 = tied_scores(slots);
        int32_t *p0 = shuffled_positions(used, n_seq * KVH, KVH, cap);
        pair K = put(kv, slots * hd), Vv = put(kv + slots * hd, slots * hd);
        pair sc = put_words(s0, slots), ps = put_words(p0, slots);
        char tag[48];
        snprintf(tag, sizeof tag, "H %d KVH %d hd %d", H, KVH, hd);
        decode_step(tag, K, Vv, sc, ps, qkv, seqs, n_seq, H, KVH, hd, cap);
        drop(&K), drop(&Vv), drop(&sc), drop(&ps);
        free(kv), free(qkv), free(s0), free(p0);
    }
}

Test(kern_cuda, decode_attention_scores_and_h2o_insert) { decode_cases(2, 2); }

/* Grouped-query decode: 8 query heads over 2 KV heads and over 1, 6 over
 * 3: a KV head's scores gain, and its self_p is, the sum of its group's
 * probabilities; eviction per KV head. */
Test(kern_cuda, gqa_decode_attention_scores_and_h2o_insert)
{
    decode_cases(8, 2);
    decode_cases(8, 1);
    decode_cases(6, 3);
}

/* ------------------------------------------------ 4-bit compression
 * The CUDA q4 ops against the CPU backend's (kern_q4_dequant_ref and the
 * _q4 slot ops): dequantized values and written blocks must be identical,
 * attention within the fp16 decode test's tolerance. */

/* A 4-bit buffer of `bytes` bytes (a multiple of 4) on both sides, raw. */
static pair put_q4(const uint8_t *x, size_t bytes)
{
    cr_assert_eq(bytes % 4, 0);
    return put_words(x, bytes / 4);
}

/* Two 4-bit buffers of rows of rb bytes must hold the same bytes; print
 * the first differences as (row, block, byte in block). */
static void expect_equal_q4(const char *what, pair p, size_t rb)
{
    size_t bytes = p.n * 4;
    uint8_t *a = malloc(bytes), *b = malloc(bytes);
    cpu.ops->download_words(cpu.ctx, a, p.c, p.n);
    cr_assert_eq(gpu.ops->download_words(gpu.ctx, b, p.g, p.n), 0, "%s", err_msg());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < bytes; i++) {
        if (a[i] == b[i])
            continue;
        if (bad < 5)
            fprintf(stderr, "%s: row %zu block %zu byte %zu: cuda 0x%02x ref 0x%02x\n", what,
                    i / rb, i % rb / KERN_Q4_BLOCK, i % rb % KERN_Q4_BLOCK, b[i], a[i]);
        if (!bad)
            first = i;
        bad++;
    }
    cr_assert_eq(bad, 0, "%s: %zu of %zu bytes differ (first at row %zu, byte %zu)", what, bad,
                 bytes, first / rb, first % rb);
    free(a);
    free(b);
}

/* Give some groups of a row of n values the shapes where quantization has
 * edges: kind 1 a constant group (scale 0), 2 and 3 a zero minimum met as
 * +0 then -0 and as -0 then +0 (the first one is the min, sign included),
 * 4 a zero maximum likewise, 5 a group of signed zeros only. Kind 0 and
 * others: unchanged. The last group (short when n % 64) gets the shape. */
static void q4_edge_row(float *x, int n, int kind)
{
    int g0 = (n - 1) / KERN_Q4_GROUP * KERN_Q4_GROUP, m = n - g0;
    float *g = x + g0;
    switch (kind) {
    case 1:
        for (int i = 1; i < m; i++)
            g[i] = g[0];
        break;
    case 2:
    case 3:
        for (int i = 0; i < m; i++)
            g[i] = fabsf(g[i]) + 0.25f;
        g[1] = kind == 2 ? 0.0f : -0.0f;
        g[m - 1] = kind == 2 ? -0.0f : 0.0f;
        break;
    case 4:
        for (int i = 0; i < m; i++)
            g[i] = -fabsf(g[i]) - 0.25f;
        g[0] = -0.0f;
        g[m - 1] = 0.0f;
        break;
    case 5:
        for (int i = 0; i < m; i++)
            g[i] = i % 3 ? 0.0f : -0.0f;
        break;
    default:
        break;
    }
}

Test(kern_cuda, q4_dequant_bits_equal_reference)
{
    /* (rows, n, dst offset in elements): whole groups (the flat path),
     * short last groups, n < 64, n % 8 != 0 and a misaligned destination
     * (the byte-wise path), a big matrix */
    int cases[][3] = {{37, 64, 0},  {29, 200, 0}, {16, 4096, 0}, {5, 16, 0}, {1, 8, 0},
                      {9, 100, 0},  {11, 200, 1}, {7, 72, 0},    {96, 7168, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int rows = cases[ci][0], n = cases[ci][1], off = cases[ci][2];
        size_t rb = kern_q4_row_bytes(n), count = (size_t)rows * n, tail = 8;
        for (int pass = 0; pass < 2; pass++) {
            uint8_t *q = malloc(rows * rb);
            if (pass == 0) {
                /* quantized data: row scales from 1e-3 to 1e3, edge groups */
                float *x = malloc(sizeof(float) * count);
                for (int r = 0; r < rows; r++) {
                    float s = powf(10.0f, (float)(r % 7) - 3.0f);
                    for (int i = 0; i < n; i++)
                        x[(size_t)r * n + i] = frand() * s + (r % 3 == 1 ? s : 0.0f);
                    q4_edge_row(x + (size_t)r * n, n, r % 6);
                }
                kern_q4_quantize_ref(q, x, (size_t)rows, n);
                free(x);
            } else {
                /* arbitrary blocks: random codes, random finite fp16 scale
                 * and min of any sign and size (subnormals included) */
                for (size_t i = 0; i < rows * rb; i++)
                    q[i] = (uint8_t)(frand() * 128.0f + 128.0f);
                for (size_t b = 0; b < rows * rb; b += KERN_Q4_BLOCK)
                    for (int h = 0; h < 2; h++)
                        if ((q[b + 2 * h + 1] & 0x7c) == 0x7c)
                            q[b + 2 * h + 1] &= 0xbf; /* exponent 31 (inf, NaN) -> 15 */
            }
            pair Q = put_q4(q, rows * rb), out = put(NULL, count + off + tail);
            cpu.ops->dequant_q4(cpu.ctx, (float *)out.c + off, Q.c, (size_t)rows, n);
            cr_assert_eq(gpu.ops->dequant_q4(gpu.ctx, (char *)out.g + 2 * (size_t)off, Q.g,
                                             (size_t)rows, n), 0, "%s", err_msg());
            float *a = malloc(sizeof(float) * out.n), *b = malloc(sizeof(float) * out.n);
            cpu.ops->download(cpu.ctx, a, out.c, out.n);
            cr_assert_eq(gpu.ops->download(gpu.ctx, b, out.g, out.n), 0, "%s", err_msg());
            /* fp16 bits: the GPU's value is an fp16, the reference's fp32
             * rounded to nearest even; the guard elements stay zero */
            size_t bad = 0;
            for (size_t i = 0; i < out.n; i++) {
                uint16_t want = i < (size_t)off || i >= off + count ? 0 : kern_f32_to_f16(a[i]);
                uint16_t got = kern_f32_to_f16(b[i]);
                if (want != got && bad++ < 5)
                    fprintf(stderr, "q4 dequant rows %d n %d pass %d: [%zu] (row %zu col %zu): "
                            "cuda 0x%04x ref 0x%04x\n", rows, n, pass, i,
                            (i - off) / n, (i - off) % n, got, want);
            }
            cr_assert_eq(bad, 0, "q4 dequant rows %d n %d offset %d pass %d: %zu of %zu values "
                         "differ", rows, n, off, pass, bad, count);
            drop(&Q), drop(&out);
            free(q), free(a), free(b);
        }
    }
}

/* One decode step over 4-bit caches on both sides: attention (out, scores,
 * self_p within the fp16 decode test's tolerance), then the insert from the
 * reference's scores and self_p, which must write the same blocks,
 * positions, scores and victims. qkv: host (n_seq, qkv_ld), fp16 values, H
 * query heads over KVH KV heads. @return the number of evictions. */
static int q4_decode_step(const char *tag, pair K, pair V, pair sc, pair ps, const float *qkv,
                          const kern_seq *seqs, int n_seq, int H, int KVH, int hd, int cap)
{
    int d = H * hd, ld = qkv_ld(H, KVH, hd);
    size_t ko = (size_t)H * hd, vo = (size_t)(H + KVH) * hd, nkv = (size_t)n_seq * KVH;
    size_t slots = nkv * cap, rb = kern_q4_row_bytes(hd);
    pair QKV = put(qkv, (size_t)n_seq * ld), out = put(NULL, (size_t)n_seq * d);
    pair self = put_words(NULL, nkv), ev = put_words(NULL, nkv);
    float scale = 1.0f / sqrtf((float)hd);
    char *qc = QKV.c, *qg = QKV.g, what[96];
    cpu.ops->attn_decode(cpu.ctx, out.c, d, qc, qc + 4 * ko, qc + 4 * vo, ld, KERN_KV_FMT_Q4,
                         K.c, V.c, seqs, n_seq, H, KVH, hd, cap, scale, sc.c, self.c);
    cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, d, qg, qg + 2 * ko, qg + 2 * vo, ld,
                                      KERN_KV_FMT_Q4, K.g, V.g, seqs, n_seq, H, KVH, hd, cap,
                                      scale, sc.g, self.g),
                 0, "%s", err_msg());
    snprintf(what, sizeof what, "%s q4 decode out", tag);
    expect_close(what, out, 2e-3, 4 * EPS16);
    snprintf(what, sizeof what, "%s q4 decode scores", tag);
    expect_close(what, sc, 1e-5, 1e-5);
    snprintf(what, sizeof what, "%s q4 decode self_p", tag);
    expect_close(what, self, 1e-5, 1e-3);
    /* insert from identical scores on both sides: the same victims */
    float *sv = malloc(sizeof(float) * slots), *spv = malloc(sizeof(float) * nkv);
    cpu.ops->download_words(cpu.ctx, sv, sc.c, slots);
    gpu.ops->upload_words(gpu.ctx, sc.g, sv, slots);
    cpu.ops->download_words(cpu.ctx, spv, self.c, nkv);
    gpu.ops->upload_words(gpu.ctx, self.g, spv, nkv);
    cpu.ops->kv_insert(cpu.ctx, KERN_KV_FMT_Q4, K.c, V.c, sc.c, ps.c, qc + 4 * ko, qc + 4 * vo,
                       ld, self.c, seqs, n_seq, H, KVH, hd, cap, ev.c);
    cr_assert_eq(gpu.ops->kv_insert(gpu.ctx, KERN_KV_FMT_Q4, K.g, V.g, sc.g, ps.g, qg + 2 * ko,
                                    qg + 2 * vo, ld, self.g, seqs, n_seq, H, KVH, hd, cap,
                                    ev.g),
                 0, "%s", err_msg());
    snprintf(what, sizeof what, "%s q4 evicted", tag);
    expect_equal_words(what, ev);
    snprintf(what, sizeof what, "%s q4 pos after insert", tag);
    expect_equal_words(what, ps);
    snprintf(what, sizeof what, "%s q4 K after insert", tag);
    expect_equal_q4(what, K, rb);
    snprintf(what, sizeof what, "%s q4 V after insert", tag);
    expect_equal_q4(what, V, rb);
    snprintf(what, sizeof what, "%s q4 scores after insert", tag);
    expect_close(what, sc, 0, 0);
    int32_t *e = malloc(sizeof(int32_t) * nkv);
    cpu.ops->download_words(cpu.ctx, e, ev.c, nkv);
    int evictions = 0;
    for (size_t i = 0; i < nkv; i++)
        evictions += seqs[i / KVH].n_new && e[i] >= 0;
    drop(&QKV), drop(&out), drop(&self), drop(&ev);
    free(sv), free(spv), free(e);
    return evictions;
}

/* The k and v parts of packed qkv rows (n_rows, qkv_ld) get q4_edge_row's
 * shapes, per (row, KV head), so the writers meet them; rounded to fp16
 * again so that both sides still see the same values. */
static void q4_edge_kv(float *qkv, int n_rows, int H, int KVH, int hd)
{
    int ld = qkv_ld(H, KVH, hd);
    for (int r = 0; r < n_rows; r++)
        for (int h = 0; h < KVH; h++)
            for (int part = 1; part < 3; part++) {
                float *x = qkv + (size_t)r * ld + (size_t)(H + (part - 1) * KVH + h) * hd;
                q4_edge_row(x, hd, (r + h + part) % 7);
                for (int e = 0; e < hd; e++)
                    x[e] = kern_f16_to_f32(kern_f32_to_f16(x[e]));
            }
}

/* Prefill fill of 4-bit caches (the H2O selection engaged: budget 40 <
 * prompts of 70 and 150), then decode steps with eviction, over mixed
 * sequences (an idle one, prompts that fit), for head_dim with whole and
 * short last groups; H query heads over KVH KV heads. */
static void q4_prefill_decode_cases(int H, int KVH)
{
    int hds[] = {16, 64, 80, 128, 200};
    int len[] = {1, 17, 0, 150, 70};
    for (int hi = 0; hi < 5; hi++) {
        int hd = hds[hi], ld = qkv_ld(H, KVH, hd), n_seq = 5, cap = 48, budget = 40, steps = 6;
        size_t ko = (size_t)H * hd, vo = (size_t)(H + KVH) * hd;
        kern_seq seqs[5];
        int rows = pack(seqs, len, n_seq, budget, 2, 12);
        float *qkv = rand16((size_t)rows * ld, 1.5f);
        q4_edge_kv(qkv, rows, H, KVH, hd);
        /* column sums with exact ties (multiples of 1/8), the same on both
         * sides, so the kept sets must agree */
        float *cs = malloc(sizeof(float) * (size_t)rows * KVH);
        for (size_t i = 0; i < (size_t)rows * KVH; i++)
            cs[i] = (float)((i * 2654435761u) % 13) / 8.0f;
        pair QKV = put(qkv, (size_t)rows * ld), CS = put_words(cs, (size_t)rows * KVH);
        size_t slots = (size_t)n_seq * KVH * cap, rb = kern_q4_row_bytes(hd);
        pair kc = put_q4(NULL, slots * rb), vc = put_q4(NULL, slots * rb);
        pair sc = put_words(NULL, slots), ps = put_words(NULL, slots);
        char *qc = QKV.c, *qg = QKV.g, tag[64], what[96];
        cpu.ops->kv_prefill(cpu.ctx, KERN_KV_FMT_Q4, kc.c, vc.c, sc.c, ps.c, qc + 4 * ko,
                            qc + 4 * vo, ld, CS.c, seqs, n_seq, H, KVH, hd, cap);
        cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, KERN_KV_FMT_Q4, kc.g, vc.g, sc.g, ps.g,
                                         qg + 2 * ko, qg + 2 * vo, ld, CS.g, seqs, n_seq, H, KVH,
                                         hd, cap),
                     0, "%s", err_msg());
        snprintf(tag, sizeof tag, "H %d KVH %d hd %d prefill", H, KVH, hd);
        snprintf(what, sizeof what, "%s K", tag);
        expect_equal_q4(what, kc, rb);
        snprintf(what, sizeof what, "%s V", tag);
        expect_equal_q4(what, vc, rb);
        snprintf(what, sizeof what, "%s pos", tag);
        expect_equal_words(what, ps);
        snprintf(what, sizeof what, "%s scores", tag);
        expect_close(what, sc, 0, 0);

        int evictions = 0;
        for (int t = 0; t < steps; t++) {
            kern_seq dec[5];
            for (int s = 0; s < n_seq; s++) {
                int past = len[s] + t;
                dec[s] = (kern_seq){.row = s, .n_new = len[s] ? 1 : 0, .n_past = past,
                                    .n_slots = past < budget ? past : budget, .budget = budget,
                                    .sinks = 2, .recent = 12};
            }
            float *step_qkv = rand16((size_t)n_seq * ld, 1.5f);
            q4_edge_kv(step_qkv, n_seq, H, KVH, hd);
            snprintf(tag, sizeof tag, "H %d KVH %d hd %d step %d", H, KVH, hd, t);
            evictions += q4_decode_step(tag, kc, vc, sc, ps, step_qkv, dec, n_seq, H, KVH, hd,
                                        cap);
            free(step_qkv);
        }
        /* prompts 150 and 70 over budget 40: every step evicts, per KV head */
        cr_assert_eq(evictions, steps * 2 * KVH, "hd %d: %d evictions", hd, evictions);
        drop(&QKV), drop(&CS), drop(&kc), drop(&vc), drop(&sc), drop(&ps);
        free(qkv), free(cs);
    }
}

Test(kern_cuda, q4_kv_prefill_then_decode_steps_with_h2o) { q4_prefill_decode_cases(3, 3); }

/* The same under grouped-query attention: 8 query heads over 2 KV heads,
 * 6 over 3. */
Test(kern_cuda, gqa_q4_kv_prefill_then_decode_steps_with_h2o)
{
    q4_prefill_decode_cases(8, 2);
    q4_prefill_decode_cases(6, 3);
}

/* Decode over 4-bit caches across the chunk edges (255, 256, 600 slots),
 * positions shuffled, scores with ties, then the H2O insert; H query heads
 * over KVH KV heads. */
static void q4_decode_cases(int H, int KVH)
{
    int hds[] = {16, 64, 128, 200};
    int used[] = {0, 5, 255, 256, 600, 3};
    for (int hi = 0; hi < 4; hi++) {
        int hd = hds[hi], n_seq = 6, cap = 601;
        kern_seq seqs[6];
        for (int s = 0; s < n_seq; s++)
            seqs[s] = (kern_seq){.row = s, .n_new = s == 5 ? 0 : 1, .n_past = used[s] + 7,
                                 .n_slots = used[s], .budget = used[s] ? used[s] : 1,
                                 .sinks = used[s] > 8 ? 2 : 0, .recent = used[s] > 8 ? 4 : 1};
        size_t slots = (size_t)n_seq * KVH * cap, rb = kern_q4_row_bytes(hd);
        float *kv = rand16(slots * hd * 2, 1.5f);
        for (size_t r = 0; r < slots * 2; r++)
            q4_edge_row(kv + r * hd, hd, (int)(r % 9));
        uint8_t *kq = malloc(slots * rb * 2);
        kern_q4_quantize_ref(kq, kv, slots * 2, hd);
        float *s0 = tied_scores(slots);
        int32_t *p0 = shuffled_positions(used, n_seq * KVH, KVH, cap);
        pair K = put_q4(kq, slots * rb), V = put_q4(kq + slots * rb, slots * rb);
        pair sc = put_words(s0, slots), ps = put_words(p0, slots);
        float *qkv = rand16((size_t)n_seq * qkv_ld(H, KVH, hd), 1.5f);
        q4_edge_kv(qkv, n_seq, H, KVH, hd);
        char tag[64];
        snprintf(tag, sizeof tag, "H %d KVH %d hd %d", H, KVH, hd);
        /* the sequences of 5, 255, 256 and 600 slots are at their budget */
        int ev = q4_decode_step(tag, K, V, sc, ps, qkv, seqs, n_seq, H, KVH, hd, cap);
        cr_assert_eq(ev, 4 * KVH, "%s: %d evictions", tag, ev);
        drop(&K), drop(&V), drop(&sc), drop(&ps);
        free(kv), free(kq), free(s0), free(p0), free(qkv);
    }
}

Test(kern_cuda, q4_decode_attention_across_chunks_and_insert) { q4_decode_cases(2, 2); }

/* The same under grouped-query attention: 8 query heads over 2 KV heads
 * and over 1. */
Test(kern_cuda, gqa_q4_decode_attention_across_chunks_and_insert)
{
    q4_decode_cases(8, 2);
    q4_decode_cases(8, 1);
}

Test(kern_cuda, sampling_greedy_and_top_p)
{
    int Vs[] = {512, 50272};
    for (int vi = 0; vi < 2; vi++) {
        int V = Vs[vi], n = 6;
        float *lg = rand16((size_t)n * V, 6.0f);
        lg[3] = lg[7] = 40.0f; /* a tie in row 0: the lower id wins */
        pair L = put(lg, (size_t)n * V);
        float temp[6] = {0, 0.7f, 1.0f, 1.5f, 0.9f, 0}, topp[6] = {1, 0.9f, 1, 0.5f, 0.99f, 1};
        double u[6] = {0.5, 0.1, 0.99, 0.3, 0.75, 0.2};
        kern_sample_row rows[6];
        for (int i = 0; i < n; i++)
            rows[i] = (kern_sample_row){.temperature = temp[i], .top_p = topp[i], .u = u[i]};
        int32_t tc[6], tg[6];
        float lc[6], lgp[6];
        cpu.ops->sample(cpu.ctx, L.c, n, V, rows, NULL, tc, lc, NULL, NULL);
        cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, n, V, rows, NULL, tg, lgp, NULL, NULL), 0,
                     "%s", err_msg());
        cr_assert_eq(tc[0], 3);
        for (int i = 0; i < n; i++) {
            cr_assert_eq(tg[i], tc[i], "V %d row %d: cuda token %d, reference %d", V, i, tg[i],
                         tc[i]);
            cr_assert_float_eq(lgp[i], lc[i], 1e-3 + fabsf(lc[i]) * 1e-4, "row %d logprob", i);
        }
        drop(&L);
        free(lg);
    }
}

/* A sampled row with a NaN or +inf logit (every probability NaN; fp16
 * logits overflow to inf) gets token 0 on both backends, as a row with
 * every token banned does: not the token the device buffer held from the
 * call before (a first call on clean logits leaves rows' tokens there),
 * which the CUDA op returned (and the CPU op read before the order's
 * start). The clean rows beside them still draw. */
Test(kern_cuda, sampling_nan_and_inf_logits_give_token_0)
{
    enum { V = 512, N = 4 };
    float *lg = rand16((size_t)N * V, 6.0f);
    for (int i = 0; i < N; i++)
        lg[(size_t)i * V + 100 + i] = 60.0f; /* token 100 + i all but certain */
    kern_sample_row rows[N];
    for (int i = 0; i < N; i++)
        rows[i] = (kern_sample_row){.temperature = 0.8f, .top_p = i % 2 ? 0.9f : 1.0f,
                                    .u = 0.4};
    int32_t tc[N], tg[N];
    float lc[N], lgp[N];
    pair L = put(lg, (size_t)N * V);
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, N, V, rows, NULL, tg, lgp, NULL, NULL), 0, "%s",
                 err_msg());
    for (int i = 0; i < N; i++)
        cr_assert_eq(tg[i], 100 + i, "clean row %d: token %d", i, tg[i]);
    drop(&L);
    lg[17] = NAN;
    lg[2 * (size_t)V + 300] = INFINITY;
    L = put(lg, (size_t)N * V);
    cr_assert_eq(cpu.ops->sample(cpu.ctx, L.c, N, V, rows, NULL, tc, lc, NULL, NULL), 0, "%s",
                 err_msg());
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, N, V, rows, NULL, tg, lgp, NULL, NULL), 0, "%s",
                 err_msg());
    cr_assert(tc[0] == 0 && tc[2] == 0, "cpu: %d %d", tc[0], tc[2]);
    cr_assert(tg[0] == 0 && tg[2] == 0, "cuda: %d %d", tg[0], tg[2]);
    cr_assert(tc[1] == 101 && tg[1] == 101 && tc[3] == 103 && tg[3] == 103, "clean rows: %d %d "
              "%d %d", tc[1], tg[1], tc[3], tg[3]);
    drop(&L);
    free(lg);
}

/* ---- the per-row controls (kern.h): logit edits, greedy, temperature,
 * min_p, top_k, top_p, top logprobs. The CUDA op's probabilities (__expf,
 * fp32 sums) differ from the CPU op's within these tolerances, so a sampled
 * row that sample_slow.h's double reference finds decided closer than them
 * to a boundary may go either way; every other row, and every greedy row,
 * must give the CPU op's token. */
#define SAMPLE_MASS_TOL 2e-5
#define SAMPLE_REL_TOL 2e-5

typedef struct sample_tally {
    int sampled, decided; /* sampled rows; those clear of the tolerances */
} sample_tally;

/* The two ops' results for rows (n, on logits lg (n, V) already in L)
 * against each other: tokens (see above), logprobs within fp16's
 * tolerance, top logprobs (ids equal unless the reference's values tie
 * within it). */
static void sample_compare(const char *what, pair L, const float *lg, int n, int V,
                           const kern_sample_row *rows, const kern_logit_edit *ed,
                           sample_tally *t)
{
    size_t nt = (size_t)n * KERN_TOP_LOGPROBS_MAX;
    int32_t *tc = malloc(4 * (size_t)n), *tg = malloc(4 * (size_t)n);
    int32_t *ic = malloc(4 * nt), *ig = malloc(4 * nt);
    float *lc = malloc(4 * (size_t)n), *lgp = malloc(4 * (size_t)n);
    float *vc = malloc(4 * nt), *vg = malloc(4 * nt);
    cr_assert_eq(cpu.ops->sample(cpu.ctx, L.c, n, V, rows, ed, tc, lc, ic, vc), 0, "%s",
                 err_msg());
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, n, V, rows, ed, tg, lgp, ig, vg), 0, "%s",
                 err_msg());
    for (int i = 0; i < n; i++) {
        const kern_sample_row *r = &rows[i];
        slow_pick sp;
        slow_sample(lg + (size_t)i * V, V, r, ed, &sp);
        int exact = r->temperature <= 0.0f ||
                    (sp.margin_mass > SAMPLE_MASS_TOL && sp.margin_rel > SAMPLE_REL_TOL);
        if (r->temperature > 0.0f) {
            t->sampled++;
            t->decided += exact;
        }
        if (exact)
            cr_assert_eq(tg[i], tc[i], "%s V %d row %d (T %g top_p %g min_p %g top_k %d u %g, "
                         "%d edits): cuda token %d, reference %d", what, V, i, r->temperature,
                         r->top_p, r->min_p, r->top_k, r->u, r->n_edit, tg[i], tc[i]);
        if (tg[i] == tc[i])
            cr_assert_float_eq(lgp[i], lc[i], 1e-3 + fabsf(lc[i]) * 1e-4,
                               "%s V %d row %d logprob: cuda %g, reference %g", what, V, i,
                               lgp[i], lc[i]);
        for (int k = 0; k < r->n_top; k++) {
            size_t o = (size_t)i * KERN_TOP_LOGPROBS_MAX + k;
            double tol = 1e-3 + fabsf(vc[o]) * 1e-4;
            int tie = (k > 0 && fabs((double)vc[o] - vc[o - 1]) <= tol) ||
                      (k + 1 < r->n_top && fabs((double)vc[o] - vc[o + 1]) <= tol);
            cr_assert(ig[o] == ic[o] || tie, "%s V %d row %d top %d: cuda id %d, reference %d",
                      what, V, i, k, ig[o], ic[o]);
            cr_assert_float_eq(vg[o], vc[o], tol, "%s V %d row %d top %d: cuda %g, reference %g",
                               what, V, i, k, vg[o], vc[o]);
        }
    }
    free(tc), free(tg), free(ic), free(ig), free(lc), free(lgp), free(vc), free(vg);
}

/* n random rows over V of the kinds kinds[0..n_kinds) (cycled), with
 * temperatures in [t_lo, t_hi) and top logprobs, plus `banned` rows with
 * every token banned (a greedy one, then a sampled one), in one call. */
static void sample_rows_case(const char *what, uint64_t seed, int V, int n, const int *kinds,
                             int n_kinds, float t_lo, float t_hi, int banned, sample_tally *t)
{
    int n_all = n + banned;
    float *lg = malloc(sizeof(float) * (size_t)n_all * V);
    kern_logit_edit *ed = malloc(sizeof *ed * ((size_t)n * 16 + (size_t)banned * V + 1));
    kern_sample_row *rows = malloc(sizeof *rows * (size_t)n_all);
    int n_ed = 0;
    for (int i = 0; i < n_all; i++) {
        float *x = lg + (size_t)i * V;
        slow_logits(&seed, x, V, 6.0f, i % 3 == 0);
        if (i >= n)
            slow_row_all_banned(V, i == n ? 0.0f : 0.8f, &rows[i], ed, &n_ed);
        else
            slow_row(&seed, kinds[i % n_kinds], x, V, t_lo, t_hi, 1, &rows[i], ed, &n_ed);
    }
    pair L = put(lg, (size_t)n_all * V); /* grid values: exact in fp16 */
    sample_compare(what, L, lg, n_all, V, rows, ed, t);
    for (int i = n; i < n_all; i++) {
        int32_t tg;
        float lp;
        const char *row = (const char *)L.g + (size_t)i * V * gpu.ops->elem_size;
        cr_assert_eq(gpu.ops->sample(gpu.ctx, row, 1, V, &rows[i], ed, &tg, &lp, NULL, NULL), 0,
                     "%s", err_msg());
        cr_assert_eq(tg, 0, "%s: every token banned, token %d", what, tg);
    }
    drop(&L);
    free(lg), free(ed), free(rows);
}

/* Random rows of every kind (each control alone and together, penalties,
 * bans, the argmax banned, top_k 1 and >= V, ties of the top logit, every
 * token banned) in calls that sort (a row samples), that copy the logits
 * but sort nothing (greedy rows with edits) and that do neither (plain
 * greedy), all with top logprobs; OPT's vocabulary at low temperatures. */
Test(kern_cuda, sampling_controls_against_the_cpu_op, .timeout = GPU_TIMEOUT(240))
{
    int all[SLOW_KINDS], greedy[] = {SLOW_GREEDY, SLOW_GREEDY_EDITS}, plain[] = {SLOW_GREEDY};
    for (int i = 0; i < SLOW_KINDS; i++)
        all[i] = i;
    sample_tally t = {0, 0};
    for (int rep = 0; rep < 3; rep++)
        sample_rows_case("mixed", 100 + rep, 512, 64, all, SLOW_KINDS, 0.3f, 2.0f, 2, &t);
    sample_rows_case("mixed", 7, 50272, 24, all, SLOW_KINDS, 0.1f, 0.5f, 0, &t);
    sample_rows_case("greedy with edits", 9, 512, 16, greedy, 2, 1, 1, 1, &t);
    sample_rows_case("greedy with edits", 10, 50272, 8, greedy, 2, 1, 1, 0, &t);
    sample_rows_case("plain greedy", 11, 512, 16, plain, 1, 1, 1, 0, &t);
    cr_assert_gt(t.sampled, 150);
    cr_assert_geq(t.decided, t.sampled * 3 / 4, "only %d of %d sampled rows were clear of the "
                  "tolerances", t.decided, t.sampled);
}

/* Sampling with edits and top logprobs within a reservation: reserved for
 * greedy rows with edits, calls of such rows (1 .. NS of them, edits,
 * top logprobs or none) allocate nothing and give the CPU op's tokens; a
 * sampled row is beyond it and refused. Widened to sampled rows, calls of
 * every kind allocate nothing. More edits than reserved are refused,
 * nothing allocated; once the reservations end the same call runs. */
Test(kern_cuda, sampling_with_edits_and_top_logprobs_reserved)
{
    enum { V = 512, NS = 8, E = NS * 12, CALLS = 40 };
    uint64_t seed = 31;
    float *lg = malloc(sizeof(float) * NS * V);
    for (int i = 0; i < NS; i++)
        slow_logits(&seed, lg + (size_t)i * V, V, 6.0f, i % 2);
    pair L = put(lg, (size_t)NS * V);
    kern_logit_edit *ed = malloc(sizeof *ed * NS * V);
    kern_sample_row rows[NS];
    int32_t tg[NS];
    float lgp[NS];
    sample_tally t = {0, 0};
    backend_limits lim = {.sample_rows = NS, .vocab = V, .sample_edits = E, .sample_top = 1};
    cr_assert_eq(gpu.ops->reserve(gpu.ctx, &lim), 0, "%s", err_msg());
    uint64_t a0 = gpu.ops->allocs(gpu.ctx);
    for (int draw = 0; draw < 2; draw++) {
        if (draw) {
            lim.sample_draw = 1;
            cr_assert_eq(gpu.ops->reserve(gpu.ctx, &lim), 0, "%s", err_msg());
            a0 = gpu.ops->allocs(gpu.ctx);
        }
        for (int call = 0; call < CALLS; call++) {
            int n = 1 + call % NS, n_ed = 0;
            for (int i = 0; i < n; i++) {
                int kind = draw ? (call + i) % SLOW_KINDS : (call + i) % 2 ? SLOW_GREEDY_EDITS
                                                                           : SLOW_GREEDY;
                slow_row(&seed, kind, lg + (size_t)i * V, V, 0.3f, 2.0f, call % 3 != 0, &rows[i],
                         ed, &n_ed);
            }
            sample_compare(draw ? "reserved, sampled" : "reserved, greedy", L, lg, n, V, rows,
                           ed, &t);
        }
        cr_assert_eq(gpu.ops->allocs(gpu.ctx), a0, "sample calls within the reservation "
                     "allocated (%s)", draw ? "sampled rows" : "greedy rows");
        if (!draw) { /* a sampled row: beyond a greedy reservation */
            rows[0] = (kern_sample_row){.temperature = 1.0f, .top_p = 1.0f, .u = 0.5};
            err_clear();
            cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, NS, V, rows, ed, tg, lgp, NULL, NULL),
                         -EINVAL, "a sampled row ran in a greedy reservation");
            cr_assert(strstr(err_msg(), "the reserved"), "%s", err_msg());
            cr_assert_eq(gpu.ops->allocs(gpu.ctx), a0, "a refused call allocated");
        }
    }
    /* NS x V / 2 edits, far more than reserved: refused */
    int n_ed = 0;
    for (int i = 0; i < NS; i++) {
        rows[i] = (kern_sample_row){.top_p = 1.0f, .edit0 = n_ed, .n_edit = V / 2};
        for (int j = 0; j < V / 2; j++)
            ed[n_ed++] = (kern_logit_edit){.tok = 2 * j + i % 2, .pos = 1, .neg = 1, .add = -1};
    }
    err_clear();
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, NS, V, rows, ed, tg, lgp, NULL, NULL), -EINVAL,
                 "more edits than reserved ran");
    cr_assert(strstr(err_msg(), "the reserved"), "%s", err_msg());
    cr_assert_eq(gpu.ops->allocs(gpu.ctx), a0, "a refused call allocated");
    err_clear();
    cr_assert_eq(gpu.ops->reserve(gpu.ctx, NULL), 0);
    cr_assert_eq(gpu.ops->reserve(gpu.ctx, NULL), 0);
    sample_compare("unreserved", L, lg, NS, V, rows, ed, &t);
    cr_assert_gt(t.sampled, 20);
    cr_assert_geq(t.decided, t.sampled * 3 / 4, "only %d of %d sampled rows were clear of the "
                  "tolerances", t.decided, t.sampled);
    drop(&L);
    free(lg), free(ed);
}

/* The reservation (backend.h reserve): calls within the limits stage
 * their host arrays through the pinned ring (more calls than it has slots,
 * so slots are reused behind their events) and their work in what reserve
 * sized: nothing is allocated and the results are the reference's, with
 * the arrays changed between calls (RoPE's positions and frequencies,
 * embed's ids with and without positions among them). A call beyond the limits is refused
 * ("exceeds the reserved") and allocates nothing; once the reservation
 * ends, the op grows again. */
Test(kern_cuda, reserved_calls_allocate_nothing_and_beyond_is_refused)
{
    /* R rows of ids are 64 bytes, a whole staging alignment unit: one row more
     * needs more than the reservation holds */
    enum { V = 512, D = 64, P = 40, R = 16, NS = 4, CALLS = 80 };
    backend_limits lim = {.rows = R, .seqs = NS, .heads = 2, .kv_heads = 2, .head_dim = 32,
                          .cap = 16, .prompt = R, .sample_rows = NS, .vocab = V,
                          .sample_draw = 1};
    float *te = rand16((size_t)V * D, 1), *pe = rand16((size_t)P * D, 1);
    float *lg = rand16((size_t)(NS + 1) * V, 6.0f);
    pair T = put(te, (size_t)V * D), Pe = put(pe, (size_t)P * D), L = put(lg, (size_t)(NS + 1) * V);
    pair out = put(NULL, (size_t)(R + 1) * D), g = put(NULL, (size_t)NS * D);
    /* RoPE over rows of 2 query and 2 KV heads of 32 (the limits' shape) */
    enum { RLD = (2 + 2 * 2) * 32 };
    float *rq = rand16((size_t)R * RLD, 1), inv[16];
    kern_rope rp = {.theta = 10000.0f};
    cr_assert_eq(kern_rope_inv_freq(inv, 32, &rp), 0);
    pair RQ = put(rq, (size_t)R * RLD);
    cr_assert_eq(gpu.ops->reserve(gpu.ctx, &lim), 0, "%s", err_msg());
    uint64_t a0 = gpu.ops->allocs(gpu.ctx);
    int32_t ids[R + 1], pos[R + 1], rows[NS], tc[NS + 1], tg[NS + 1];
    float lc[NS + 1], lgp[NS + 1];
    kern_sample_row srow[NS + 1];
    for (int call = 0; call < CALLS; call++) {
        for (int i = 0; i < R; i++) {
            ids[i] = (i * 37 + call * 11) % V;
            pos[i] = (i + call) % (P - 2);
        }
        for (int i = 0; i < NS; i++) {
            rows[i] = (i * 3 + call) % R;
            srow[i] = (kern_sample_row){.temperature = (float)((i + call) % 3) * 0.5f,
                                        .top_p = 0.9f, .u = ((i * 7 + call) % 10) / 10.0};
        }
        if (call % 3 == 2) { /* no learned positions: the token rows */
            cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, NULL, ids, NULL, R, D), 0, "%s",
                         err_msg());
            for (int i = 0; i < R; i++) /* the same rows on the reference's side */
                cpu.ops->upload(cpu.ctx, (float *)out.c + (size_t)i * D, te + (size_t)ids[i] * D,
                                D);
        } else {
            cpu.ops->embed(cpu.ctx, out.c, T.c, Pe.c, ids, pos, R, D);
            cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, Pe.g, ids, pos, R, D), 0, "%s",
                         err_msg());
        }
        inv[call % 16] *= 1.0f + 0.001f * (float)(call % 5); /* frequencies change too */
        int rot = 32 - 8 * (call % 2); /* full and partial rotary dimensions */
        cpu.ops->rope(cpu.ctx, RQ.c, (float *)RQ.c + 2 * 32, RLD, pos, R, 2, 2, 32, rot, inv);
        cr_assert_eq(gpu.ops->rope(gpu.ctx, RQ.g, (char *)RQ.g + 2 * 2 * 32, RLD, pos, R, 2, 2,
                                   32, rot, inv), 0, "%s", err_msg());
        cpu.ops->gather_rows(cpu.ctx, g.c, out.c, rows, NS, D);
        cr_assert_eq(gpu.ops->gather_rows(gpu.ctx, g.g, out.g, rows, NS, D), 0, "%s",
                     err_msg());
        cpu.ops->sample(cpu.ctx, L.c, NS, V, srow, NULL, tc, lc, NULL, NULL);
        cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, NS, V, srow, NULL, tg, lgp, NULL, NULL), 0,
                     "%s", err_msg());
        for (int i = 0; i < NS; i++)
            cr_assert_eq(tg[i], tc[i], "call %d row %d: cuda token %d, reference %d", call, i,
                         tg[i], tc[i]);
        if (call % 16 == 15) {
            expect_close("embed through the ring", (pair){out.c, out.g, (size_t)R * D, 0}, 1e-6,
                         EPS16);
            expect_close("gather through the ring", g, 1e-6, EPS16);
        }
        /* the rotations compound over the calls, rounded to fp16 on the
         * GPU's side only: compare each, then give both sides its result */
        expect_close("rope through the ring", RQ, 1e-5, EPS16);
        cr_assert_eq(gpu.ops->download(gpu.ctx, rq, RQ.g, (size_t)R * RLD), 0, "%s", err_msg());
        cpu.ops->upload(cpu.ctx, RQ.c, rq, (size_t)R * RLD);
    }
    cr_assert_eq(gpu.ops->allocs(gpu.ctx), a0, "calls within the reservation allocated");
    /* one more row, sequence or slot than reserved: refused, nothing allocated */
    ids[R] = 1, pos[R] = 1;
    srow[NS] = (kern_sample_row){.temperature = 1.0f, .top_p = 1.0f, .u = 0.5};
    err_clear();
    cr_assert_eq(gpu.ops->embed(gpu.ctx, out.g, T.g, Pe.g, ids, pos, R + 1, D), -EINVAL);
    cr_assert(strstr(err_msg(), "exceeds the reserved"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, NS + 1, V, srow, NULL, tg, lgp, NULL, NULL),
                 -EINVAL);
    cr_assert(strstr(err_msg(), "exceeds the reserved"), "%s", err_msg());
    err_clear();
    kern_seq seqs[NS + 1];
    for (int i = 0; i <= NS; i++)
        seqs[i] = (kern_seq){.row = i, .n_new = 1, .n_past = 2, .n_slots = 2, .budget = 2,
                             .recent = 1};
    pair K = put(NULL, (size_t)(NS + 1) * 2 * 64 * 32), Vc = put(NULL, (size_t)(NS + 1) * 2 * 64 * 32);
    pair q = put(NULL, (size_t)(NS + 1) * 3 * 64), o = put(NULL, (size_t)(NS + 1) * 64);
    cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, o.g, 64, q.g, q.g, q.g, 3 * 64, KERN_KV_FMT_PLAIN,
                                      K.g, Vc.g, seqs, NS + 1, 2, 2, 32, 64, 0.2f, NULL, NULL),
                 -EINVAL);
    cr_assert(strstr(err_msg(), "exceeds the reserved"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->allocs(gpu.ctx), a0 + 4, "refused calls allocated (K, V, q, o are "
                 "the four buffers made)");
    /* the reservation ended: the op grows again */
    cr_assert_eq(gpu.ops->reserve(gpu.ctx, NULL), 0);
    cr_assert_eq(gpu.ops->sample(gpu.ctx, L.g, NS + 1, V, srow, NULL, tg, lgp, NULL, NULL), 0,
                 "%s", err_msg());
    cr_assert_gt(gpu.ops->allocs(gpu.ctx), a0 + 4, "sampling's work space grew");
    drop(&T), drop(&Pe), drop(&L), drop(&out), drop(&g), drop(&K), drop(&Vc), drop(&q), drop(&o);
    drop(&RQ);
    free(te), free(pe), free(lg), free(rq);
}

/* ------------------------------------------------ launch geometry
 * Shapes at the CUDA limits the kernels used to hit, each against the CPU
 * reference; small head_dim and caches keep the buffers small. */

/* More (sequence, head) pairs than a grid's y extent (65535) holds: OPT-175B's
 * 96 heads at 700 sequences (67200 pairs). Prefill of prompts of 1-3
 * tokens (the one-warp-per-query kernel) with the keep selection into
 * fp16 and 4-bit caches, then a decode step and the H2O insert over fp16
 * and 4-bit caches. */
Test(kern_cuda, more_than_65535_sequence_head_pairs)
{
    enum { NS = 700, H = 96, HD = 8, CAP = 4, D = H * HD };
    cr_assert_gt(NS * H, 65535);
    kern_seq *seqs = malloc(sizeof(kern_seq) * NS);
    int *len = malloc(sizeof(int) * NS), *used = malloc(sizeof(int) * NS);
    for (int s = 0; s < NS; s++)
        len[s] = 1 + s % 3;
    /* budget 2, recent 1: the 3-token prompts keep their best of the first two */
    int rows = pack(seqs, len, NS, 2, 0, 1);
    float *qkv = rand16((size_t)rows * 3 * D, 1.5f);
    prefill_step("67200 pairs", qkv, seqs, NS, rows, H, H, HD, CAP, 1);
    free(qkv);

    /* decode: 0 to 3 slots in use, every fifth sequence idle, full caches
     * evict */
    for (int s = 0; s < NS; s++) {
        used[s] = s % 4;
        seqs[s] = (kern_seq){.row = s, .n_new = s % 5 ? 1 : 0, .n_past = used[s] + 3,
                             .n_slots = used[s], .budget = used[s] ? used[s] : 1, .sinks = 0,
                             .recent = 1};
    }
    size_t slots = (size_t)NS * H * CAP, rb = kern_q4_row_bytes(HD);
    float *kv = rand16(slots * HD * 2, 1.5f);
    float *s0 = tied_scores(slots);
    int32_t *p0 = shuffled_positions(used, NS * H, H, CAP);
    float *dq = rand16((size_t)NS * 3 * D, 1.5f);
    pair K = put(kv, slots * HD), V = put(kv + slots * HD, slots * HD);
    pair sc = put_words(s0, slots), ps = put_words(p0, slots);
    decode_step("67200 pairs", K, V, sc, ps, dq, seqs, NS, H, H, HD, CAP);
    drop(&K), drop(&V), drop(&sc), drop(&ps);

    uint8_t *kq = malloc(slots * rb * 2);
    kern_q4_quantize_ref(kq, kv, slots * 2, HD);
    K = put_q4(kq, slots * rb), V = put_q4(kq + slots * rb, slots * rb);
    sc = put_words(s0, slots), ps = put_words(p0, slots);
    int ev = q4_decode_step("67200 pairs", K, V, sc, ps, dq, seqs, NS, H, H, HD, CAP);
    int full = 0;
    for (int s = 0; s < NS; s++)
        full += s % 5 && used[s] > 0;
    cr_assert_eq(ev, full * H, "%d evictions, want %d", ev, full * H);
    drop(&K), drop(&V), drop(&sc), drop(&ps);
    free(seqs), free(len), free(used), free(kv), free(s0), free(p0), free(dq), free(kq);
}

/* A prompt of 12300 tokens: above the 12288 the keep selection's dynamic
 * shared memory held, and its one head's S and P (12300^2 x 6 bytes = 908
 * MB) above the backend's 256 MiB of prefill work, so the GEMM prefill runs
 * in blocks of query rows and the column sums add up over them. Beside it
 * prompts of 40 (one-warp kernel, kept whole) and 100 tokens (one-block
 * GEMM path). The keep selection crosses the 2048-token tiles. */
Test(kern_cuda, prompt_above_12288_tokens_prefill_and_keep_selection, .timeout = GPU_TIMEOUT(240))
{
    int len[] = {12300, 40, 100}, H = 2, hd = 8, n_seq = 3, cap = 64;
    kern_seq seqs[3];
    int rows = pack(seqs, len, n_seq, 64, 4, 16);
    float *qkv = rand16((size_t)rows * 3 * H * hd, 1.5f);
    prefill_step("12300 tokens", qkv, seqs, n_seq, rows, H, H, hd, cap, 1);
    free(qkv);
}

/* The tensor-core prefill under grouped-query attention (8 query heads
 * over 2 KV heads) where the work space splits it: a prompt of 6700 tokens
 * (one head's S and P above the 256 MiB of prefill work: head by head, in
 * two blocks of query rows, so a KV head's column sums add up over blocks
 * and over the query heads of its group), one of 2400 (7 heads' S and P
 * fit: the run of heads 0-6 spans both KV heads, and head 7 comes alone,
 * adding to its KV head's sums), one of 100 (all heads at once) and one of
 * 40 (the one-warp kernel); then the keep selection into fp16 and 4-bit
 * caches. */
static void gqa_long_prompts(const char *tag)
{
    int len[] = {6700, 2400, 100, 40}, H = 8, KVH = 2, hd = 8, n_seq = 4, cap = 64;
    kern_seq seqs[4];
    int rows = pack(seqs, len, n_seq, 64, 4, 16);
    float *qkv = rand16((size_t)rows * qkv_ld(H, KVH, hd), 1.5f);
    prefill_step(tag, qkv, seqs, n_seq, rows, H, KVH, hd, cap, 1);
    free(qkv);
}

Test(kern_cuda, gqa_long_prompts_split_heads_and_row_blocks, .timeout = GPU_TIMEOUT(240))
{
    gqa_long_prompts("GQA 6700 tokens");
}

/* Restart the GPU backend with prefill attention routed as FLEXH2O_CUDA_PREFILL
 * says (route NULL: unset, the flash kernel); the teardown destroys it. */
static void use_prefill_route(const char *route)
{
    backend_destroy(&gpu);
    if (route)
        setenv("FLEXH2O_CUDA_PREFILL", route, 1);
    else
        unsetenv("FLEXH2O_CUDA_PREFILL");
    int rc = backend_cuda_create(0, &gpu);
    unsetenv("FLEXH2O_CUDA_PREFILL");
    cr_assert_eq(rc, 0, "route %s: %s", route ? route : "default", err_msg());
}

/* The GEMM route (FLEXH2O_CUDA_PREFILL=gemm, and every head wider than the
 * flash kernel's 128) stays the reference's too: the one-warp kernel below
 * 64 tokens, per-sequence GEMMs above, split over heads and blocks of query
 * rows where its work space asks (the 6700-token GQA prompt). */
Test(kern_cuda, gemm_prefill_route_matches_the_reference, .timeout = GPU_TIMEOUT(240))
{
    use_prefill_route("gemm");
    prefill_cases(3, 3);
    prefill_cases(8, 2);
    gqa_long_prompts("gemm route, GQA 6700 tokens");
}

/* The flash kernel at the edges of its tiles and head widths: head_dim 8
 * and 24 (padded to 32), 40 and 64 (64), 72 and 128 (128, tiles of 32
 * keys), 136 (wider: the GEMM route takes it); prompts of 1, 15, 16, 63, 64,
 * 65, 129 and 200 tokens (query blocks of 64 rows, warps of 16, partial
 * last tiles), H2O column sums on, multi-head and GQA. */
Test(kern_cuda, flash_prefill_tile_edges_and_head_widths)
{
    int hds[] = {8, 24, 40, 64, 72, 128, 136};
    int len[] = {1, 15, 16, 63, 64, 65, 129, 200};
    int heads[][2] = {{2, 2}, {4, 1}};
    for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
        for (int g = 0; g < 2; g++) {
            int hd = hds[hi], H = heads[g][0], KVH = heads[g][1], n_seq = 8, cap = 208;
            kern_seq seqs[8];
            int rows = pack(seqs, len, n_seq, 48, 4, 8);
            float *qkv = rand16((size_t)rows * qkv_ld(H, KVH, hd), 1.5f);
            char tag[64];
            snprintf(tag, sizeof tag, "flash H %d KVH %d hd %d", H, KVH, hd);
            prefill_step(tag, qkv, seqs, n_seq, rows, H, KVH, hd, cap, 0);
            free(qkv);
        }
}

/* Sliding windows (Mistral's sliding_window, kern_seq.window) in the flash
 * kernel: windows of 1, 5, 24, 64, 100 and 1000 keys (narrower than a
 * tile, one tile, across tiles, wider than the prompt) over prompts of 300,
 * 70, 129 and 40 tokens, out and column sums as the reference computes
 * them; then a wide head under a window, which only the flash kernel
 * takes, refused with what to do. */
Test(kern_cuda, flash_prefill_sliding_windows)
{
    int wins[] = {1, 5, 24, 64, 100, 1000};
    int len[] = {300, 70, 129, 40};
    int heads[][2] = {{3, 3}, {8, 2}};
    for (size_t wi = 0; wi < sizeof wins / sizeof *wins; wi++)
        for (int g = 0; g < 2; g++) {
            int H = heads[g][0], KVH = heads[g][1], hd = g ? 64 : 128, n_seq = 4, cap = 320;
            kern_seq seqs[4];
            int rows = pack(seqs, len, n_seq, 40, 2, 12);
            for (int s = 0; s < n_seq; s++)
                seqs[s].window = s == 3 ? 0 : wins[wi]; /* the last: no window beside them */
            float *qkv = rand16((size_t)rows * qkv_ld(H, KVH, hd), 1.5f);
            char tag[64];
            snprintf(tag, sizeof tag, "window %d H %d KVH %d", wins[wi], H, KVH);
            prefill_step(tag, qkv, seqs, n_seq, rows, H, KVH, hd, cap, 0);
            free(qkv);
        }
    int hd = 256, rows = 20;
    kern_seq sq = {.row = 0, .n_new = rows, .window = 8};
    pair QKV = put(NULL, (size_t)rows * 3 * hd), out = put(NULL, (size_t)rows * hd);
    char *qg = QKV.g;
    err_clear();
    cr_assert_eq(gpu.ops->attn_prefill(gpu.ctx, out.g, hd, qg, qg + 2 * hd, qg + 4 * hd, 3 * hd,
                                       &sq, 1, 1, 1, hd, 1.0f, NULL),
                 -ENOTSUP);
    cr_assert(strstr(err_msg(), "sliding_window 8") && strstr(err_msg(), "--device cpu"), "%s",
              err_msg());
    err_clear();
    drop(&QKV), drop(&out);
}

/* A bad FLEXH2O_CUDA_PREFILL is refused when the backend starts, naming the
 * values it takes. */
Test(kern_cuda, unknown_prefill_route_refused)
{
    backend_destroy(&gpu);
    setenv("FLEXH2O_CUDA_PREFILL", "fast", 1);
    err_clear();
    int rc = backend_cuda_create(0, &gpu);
    unsetenv("FLEXH2O_CUDA_PREFILL");
    cr_assert_eq(rc, -EINVAL);
    cr_assert(strstr(err_msg(), "FLEXH2O_CUDA_PREFILL=fast") && strstr(err_msg(), "gemm"), "%s",
              err_msg());
    err_clear();
    cr_assert_eq(backend_cuda_create(0, &gpu), 0, "%s", err_msg());
}

/* The kernels' loops over the y index (chunks of slots, blocks of query
 * rows, heads of the GEMM-prefill softmax) run only past 65535 y blocks;
 * with the y extent lowered to 1 (each block takes every index) and 2 (every
 * other one) they run on the usual shapes and must give the same results. */
Test(kern_cuda, attention_y_loops_give_the_same_results)
{
    for (unsigned y = 1; y <= 2; y++) {
        kern_cuda_set_grid_y_max(y);
        prefill_cases(3, 3);
        decode_cases(2, 2);
        q4_decode_cases(2, 2);
        prefill_cases(8, 2); /* the per-KV-head column sums and scores loop too */
        decode_cases(8, 2);
        q4_decode_cases(8, 2);
    }
    kern_cuda_set_grid_y_max(0);
}

/* More row counts than a cuBLASLt plan keeps algorithms for (64) and more
 * (n, k, epilogue) than the backend keeps plans (32): their entries are
 * replaced, and every product is still the reference's. */
Test(kern_cuda, linear_many_row_counts_and_shapes)
{
    int k = 64, m_max = 70, n_max = 40 * 8;
    float *x = rand16((size_t)m_max * k, 1), *w = rand16((size_t)n_max * k, 0.125f);
    float *b = rand16((size_t)n_max, 0.5f);
    pair X = put(x, (size_t)m_max * k), W = put(w, (size_t)n_max * k), Bb = put(b, n_max);
    char what[64];
    /* one (n, k, bias + ReLU), row counts 1 .. 70, then 1 again (replaced) */
    for (int m = 1; m <= m_max + 1; m++) {
        int mm = m > m_max ? 1 : m, n = 96;
        pair Y = put(NULL, (size_t)mm * n);
        cpu.ops->linear(cpu.ctx, Y.c, X.c, W.c, Bb.c, mm, n, k, 1);
        cr_assert_eq(gpu.ops->linear(gpu.ctx, Y.g, X.g, W.g, Bb.g, mm, n, k, 1), 0, "m %d: %s",
                     mm, err_msg());
        snprintf(what, sizeof what, "linear m %d", mm);
        expect_close(what, Y, 2e-3, 2 * EPS16);
        drop(&Y);
    }
    /* 40 output widths x the four epilogues, then the first again */
    for (int i = 0; i <= 40; i++) {
        int n = 8 * (i % 40 + 1), epi = i % 4, m = 5;
        const void *bc = epi & 1 ? Bb.c : NULL, *bg = epi & 1 ? Bb.g : NULL;
        pair Y = put(NULL, (size_t)m * n);
        cpu.ops->linear(cpu.ctx, Y.c, X.c, W.c, bc, m, n, k, epi >> 1);
        cr_assert_eq(gpu.ops->linear(gpu.ctx, Y.g, X.g, W.g, bg, m, n, k, epi >> 1), 0,
                     "n %d epilogue %d: %s", n, epi, err_msg());
        snprintf(what, sizeof what, "linear n %d epilogue %d", n, epi);
        expect_close(what, Y, 2e-3, 2 * EPS16);
        drop(&Y);
    }
    drop(&X), drop(&W), drop(&Bb);
    free(x), free(w), free(b);
}

/* A head_dim the kernels cannot take is refused with a message that names
 * it and the op (not a blanket message, not a launch failure). */
Test(kern_cuda, unsupported_head_dim_is_named)
{
    int hd = 12, cap = 4;
    kern_seq sq = {.row = 0, .n_new = 1, .n_past = 1, .n_slots = 1, .budget = 2, .sinks = 0,
                   .recent = 1};
    pair QKV = put(NULL, (size_t)3 * hd), out = put(NULL, (size_t)hd);
    pair K = put(NULL, (size_t)cap * hd), V = put(NULL, (size_t)cap * hd);
    pair ps = put_words(NULL, (size_t)cap);
    char *qg = QKV.g;
    err_clear();
    cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, hd, qg, qg + 2 * hd, qg + 4 * hd, 3 * hd,
                                      KERN_KV_FMT_PLAIN, K.g, V.g, &sq, 1, 1, 1, hd, cap, 1.0f, NULL,
                                      NULL),
                 -EINVAL);
    cr_assert(strstr(err_msg(), "head_dim 12 is not supported"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->kv_insert(gpu.ctx, KERN_KV_FMT_PLAIN, K.g, V.g, NULL, ps.g, qg + 2 * hd,
                                    qg + 4 * hd, 3 * hd, NULL, &sq, 1, 1, 1, hd, cap, NULL),
                 -EINVAL);
    cr_assert(strstr(err_msg(), "KV insert: head_dim 12 is not a multiple of 8"), "%s",
              err_msg());
    err_clear();
    drop(&QKV), drop(&out), drop(&K), drop(&V), drop(&ps);
}

/* Head counts that are not a grouping (query heads not a positive multiple
 * of the KV heads) are refused by every attention and KV op, naming both
 * counts. */
Test(kern_cuda, query_heads_not_a_multiple_of_kv_heads_refused)
{
    int hd = 16, cap = 4, H = 6, KVH = 4, ld = qkv_ld(H, KVH, hd);
    kern_seq sq = {.row = 0, .n_new = 1, .n_past = 1, .n_slots = 1, .budget = 2, .sinks = 0,
                   .recent = 1};
    pair QKV = put(NULL, (size_t)ld), out = put(NULL, (size_t)H * hd);
    pair K = put(NULL, (size_t)KVH * cap * hd), V = put(NULL, (size_t)KVH * cap * hd);
    pair ps = put_words(NULL, (size_t)KVH * cap), cs = put_words(NULL, (size_t)KVH);
    char *qg = QKV.g, *kg = qg + 2 * (size_t)H * hd, *vg = qg + 2 * (size_t)(H + KVH) * hd;
    int kvhs[] = {4, 0};
    for (int i = 0; i < 2; i++) {
        int kvh = kvhs[i];
        err_clear();
        cr_assert_eq(gpu.ops->attn_prefill(gpu.ctx, out.g, H * hd, qg, kg, vg, ld, &sq, 1, H,
                                           kvh, hd, 1.0f, cs.g), -EINVAL);
        cr_assert(strstr(err_msg(), "query heads over"), "%s", err_msg());
        err_clear();
        cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, KERN_KV_FMT_PLAIN, K.g, V.g, NULL, ps.g, kg,
                                         vg, ld, cs.g, &sq, 1, H, kvh, hd, cap), -EINVAL);
        cr_assert(strstr(err_msg(), "query heads over"), "%s", err_msg());
        err_clear();
        cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, H * hd, qg, kg, vg, ld,
                                          KERN_KV_FMT_PLAIN, K.g, V.g, &sq, 1, H, kvh, hd, cap,
                                          1.0f, NULL, NULL), -EINVAL);
        cr_assert(strstr(err_msg(), "query heads over"), "%s", err_msg());
        err_clear();
        cr_assert_eq(gpu.ops->kv_insert(gpu.ctx, KERN_KV_FMT_Q4, K.g, V.g, NULL, ps.g, kg, vg, ld,
                                        NULL, &sq, 1, H, kvh, hd, cap, NULL), -EINVAL);
        cr_assert(strstr(err_msg(), "query heads over"), "%s", err_msg());
    }
    err_clear();
    drop(&QKV), drop(&out), drop(&K), drop(&V), drop(&ps), drop(&cs);
}

/* Grouped-query decode with the H2O sums partly or wholly off (window and
 * StreamingLLM keep no scores; a caller may want neither): the output is
 * the reference's, self_p (when asked) the group's sum, and what was not
 * asked for is not written (the scores buffer keeps its values). */
Test(kern_cuda, gqa_decode_without_scores)
{
    int H = 8, KVH = 2, hd = 64, n_seq = 3, cap = 300, ld = qkv_ld(H, KVH, hd), d = H * hd;
    int used[] = {7, 299, 0};
    kern_seq seqs[3];
    for (int s = 0; s < n_seq; s++)
        seqs[s] = (kern_seq){.row = s, .n_new = 1, .n_past = used[s] + 3, .n_slots = used[s],
                             .budget = cap, .sinks = 0, .recent = 1};
    size_t slots = (size_t)n_seq * KVH * cap, nkv = (size_t)n_seq * KVH;
    float *kv = rand16(slots * hd * 2, 1.5f), *qkv = rand16((size_t)n_seq * ld, 1.5f);
    float *s0 = tied_scores(slots);
    pair K = put(kv, slots * hd), Vv = put(kv + slots * hd, slots * hd);
    pair QKV = put(qkv, (size_t)n_seq * ld), sc = put_words(s0, slots);
    float scale = 1.0f / sqrtf((float)hd);
    char *qc = QKV.c, *qg = QKV.g;
    size_t ko = (size_t)H * hd, vo = (size_t)(H + KVH) * hd;
    for (int with_self = 0; with_self < 2; with_self++) {
        pair out = put(NULL, (size_t)n_seq * d), self = put_words(NULL, nkv);
        cr_assert_eq(cpu.ops->attn_decode(cpu.ctx, out.c, d, qc, qc + 4 * ko, qc + 4 * vo, ld,
                                          KERN_KV_FMT_PLAIN, K.c, Vv.c, seqs, n_seq, H, KVH, hd,
                                          cap, scale, NULL, with_self ? self.c : NULL),
                     0, "%s", err_msg());
        cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, d, qg, qg + 2 * ko, qg + 2 * vo, ld,
                                          KERN_KV_FMT_PLAIN, K.g, Vv.g, seqs, n_seq, H, KVH, hd,
                                          cap, scale, NULL, with_self ? self.g : NULL),
                     0, "%s", err_msg());
        expect_close(with_self ? "GQA decode out, self_p only" : "GQA decode out, no sums", out,
                     2e-3, 4 * EPS16);
        expect_close(with_self ? "GQA self_p without scores" : "self_p not asked for", self,
                     1e-5, 1e-3);
        expect_close("scores not asked for", sc, 0, 0);
        drop(&out), drop(&self);
    }
    drop(&K), drop(&Vv), drop(&QKV), drop(&sc);
    free(kv), free(qkv), free(s0);
}

/* The CUDA backend has the plain and 4-bit KV cache formats, and its
 * kernels refuse one they do not have (-ENOTSUP), naming it, in each KV op:
 * bf16 (the CPU backend's) and one past the last. */
Test(kern_cuda, kv_formats_and_an_unknown_format_refused)
{
    int hd = 16, cap = 4;
    kern_seq sq = {.row = 0, .n_new = 1, .n_past = 1, .n_slots = 1, .budget = 2, .sinks = 0,
                   .recent = 1};
    cr_assert(backend_kv_fmt_has(gpu.ops, KERN_KV_FMT_PLAIN) &&
              backend_kv_fmt_has(gpu.ops, KERN_KV_FMT_Q4));
    cr_assert(!backend_kv_fmt_has(gpu.ops, KERN_KV_FMTS) &&
              !backend_kv_fmt_has(gpu.ops, KERN_KV_FMT_BF16));
    pair QKV = put(NULL, (size_t)3 * hd), out = put(NULL, (size_t)hd);
    pair K = put(NULL, (size_t)cap * hd), V = put(NULL, (size_t)cap * hd);
    pair ps = put_words(NULL, (size_t)cap), cs = put_words(NULL, 1);
    char *qg = QKV.g;
    kern_kv_fmt bad = KERN_KV_FMT_BF16;
    err_clear();
    cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, KERN_KV_FMTS, K.g, V.g, NULL, ps.g, qg + 2 * hd,
                                     qg + 4 * hd, 3 * hd, cs.g, &sq, 1, 1, 1, hd, cap),
                 -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 3"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->kv_prefill(gpu.ctx, bad, K.g, V.g, NULL, ps.g, qg + 2 * hd,
                                     qg + 4 * hd, 3 * hd, cs.g, &sq, 1, 1, 1, hd, cap),
                 -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 2"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->attn_decode(gpu.ctx, out.g, hd, qg, qg + 2 * hd, qg + 4 * hd, 3 * hd,
                                      bad, K.g, V.g, &sq, 1, 1, 1, hd, cap, 1.0f, NULL, NULL),
                 -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 2"), "%s", err_msg());
    err_clear();
    cr_assert_eq(gpu.ops->kv_insert(gpu.ctx, bad, K.g, V.g, NULL, ps.g, qg + 2 * hd, qg + 4 * hd,
                                    3 * hd, NULL, &sq, 1, 1, 1, hd, cap, NULL),
                 -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 2"), "%s", err_msg());
    err_clear();
    drop(&QKV), drop(&out), drop(&K), drop(&V), drop(&ps), drop(&cs);
}

/* ------------------------------------------------ the RoPE families' ops
 * RMSNorm, RoPE, SwiGLU and GELU against the CPU backend's references on
 * the same fp16 inputs: the GPU rounds its fp32 result once to fp16, so it
 * is within half an fp16 ulp (EPS16 / 2 relative) of the reference plus
 * the fp32 differences of its sums and libm (a few fp32 ulp); EPS16 and a
 * small atol leave room for those and nothing more. */

/* The CUDA backend has every optional op; backend_ops_check passes a family
 * that needs them all (the refusal of a missing one is test_kern_host's). */
Test(kern_cuda, rope_family_ops_present_and_checked)
{
    cr_assert(gpu.ops->rmsnorm && gpu.ops->rope && gpu.ops->swiglu && gpu.ops->gelu);
    unsigned all = BACKEND_OP_RMSNORM | BACKEND_OP_ROPE | BACKEND_OP_SWIGLU | BACKEND_OP_GELU;
    cr_assert_eq(backend_ops_check(gpu.ops, all, "llama"), 0, "%s", err_msg());
    cr_assert_eq(backend_ops_check(gpu.ops, 0, "opt"), 0, "%s", err_msg());
}

/* RMSNorm over rows of even, odd and Llama-sized widths, into another
 * buffer and in place; rows of very different scales (the norm must take
 * each row's own). */
Test(kern_cuda, rmsnorm_against_reference)
{
    int dims[] = {64, 777, 4096, 1};
    float epss[] = {1e-5f, 1e-6f, 1e-5f, 1e-6f};
    for (int di = 0; di < 4; di++) {
        int d = dims[di], n = 37;
        float *x = rand16((size_t)n * d, 1), *w = rand16((size_t)d, 1.5f);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < d; j++) { /* row scales 1/64 .. 64 */
                float *e = &x[(size_t)r * d + j];
                *e = kern_f16_to_f32(kern_f32_to_f16(*e * ldexpf(1.0f, r % 13 - 6)));
            }
        pair X = put(x, (size_t)n * d), W = put(w, d), out = put(NULL, (size_t)n * d);
        char what[64];
        cpu.ops->rmsnorm(cpu.ctx, out.c, X.c, W.c, n, d, epss[di]);
        cr_assert_eq(gpu.ops->rmsnorm(gpu.ctx, out.g, X.g, W.g, n, d, epss[di]), 0, "%s",
                     err_msg());
        snprintf(what, sizeof what, "rmsnorm d %d", d);
        expect_close(what, out, 1e-5, EPS16);
        cpu.ops->rmsnorm(cpu.ctx, X.c, X.c, W.c, n, d, epss[di]);
        cr_assert_eq(gpu.ops->rmsnorm(gpu.ctx, X.g, X.g, W.g, n, d, epss[di]), 0, "%s",
                     err_msg());
        snprintf(what, sizeof what, "rmsnorm in place d %d", d);
        expect_close(what, X, 1e-5, EPS16);
        drop(&X), drop(&W), drop(&out);
        free(x), free(w);
    }
}

/* RoPE on packed rows (q of H heads, k and v of KVH heads each, then a few
 * padding columns: the row stride is not the heads' width) at positions
 * from 0 to 200000 (large angles), for full and partial rotary dimensions
 * (GPT-NeoX's rotary_pct: 20 of 80, half of 7 odd), grouped-query and
 * multi-query head counts, the three inverse-frequency kinds, k NULL (q
 * only). The whole buffer is compared: v, padding, the unrotated
 * dimensions and (k NULL) the keys must stay as they were. */
Test(kern_cuda, rope_against_reference)
{
    struct {
        int H, KVH, hd, rot, k_null;
        kern_rope r;
    } cases[] = {
        {8, 2, 64, 64, 0, {.theta = 500000.0f, .type = KERN_ROPE_LLAMA3, .factor = 8.0f,
                           .low_freq_factor = 1.0f, .high_freq_factor = 4.0f,
                           .orig_max_pos = 8192}},
        {4, 4, 80, 20, 0, {.theta = 10000.0f}},
        {6, 3, 128, 32, 0, {.theta = 10000.0f, .type = KERN_ROPE_LINEAR, .factor = 4.0f}},
        {5, 1, 24, 14, 0, {.theta = 1000000.0f}},
        {8, 2, 16, 16, 1, {.theta = 10000.0f}},
        {3, 3, 8, 2, 0, {.theta = 10000.0f}},
    };
    int ns[] = {1, 37};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        for (int ni = 0; ni < 2; ni++) {
            int H = cases[ci].H, KVH = cases[ci].KVH, hd = cases[ci].hd, rot = cases[ci].rot;
            int n = ns[ni], ld = (H + 2 * KVH) * hd + 8;
            float *inv = malloc(sizeof(float) * (size_t)(rot / 2));
            cr_assert_eq(kern_rope_inv_freq(inv, rot, &cases[ci].r), 0, "%s", err_msg());
            int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
            for (int r = 0; r < n; r++)
                pos[r] = r == 0 ? (n == 1 ? 4097 : 0) : r % 5 == 0 ? 200000 - r : r * 131 % 9000;
            float *x = rand16((size_t)n * ld, 2.0f);
            pair X = put(x, (size_t)n * ld);
            char *kc = cases[ci].k_null ? NULL : (char *)X.c + 4 * (size_t)H * hd;
            char *kg = cases[ci].k_null ? NULL : (char *)X.g + 2 * (size_t)H * hd;
            cr_assert_eq(cpu.ops->rope(cpu.ctx, X.c, kc, ld, pos, n, H, KVH, hd, rot, inv), 0,
                         "%s", err_msg());
            cr_assert_eq(gpu.ops->rope(gpu.ctx, X.g, kg, ld, pos, n, H, KVH, hd, rot, inv), 0,
                         "%s", err_msg());
            char what[96];
            snprintf(what, sizeof what, "rope H %d KVH %d hd %d rot %d%s n %d", H, KVH, hd, rot,
                     cases[ci].k_null ? " (q only)" : "", n);
            expect_close(what, X, 1e-5, EPS16);
            drop(&X);
            free(inv), free(pos), free(x);
        }
    }
}

/* RoPE over rot_dims that are odd, zero or above head_dim is refused as
 * the reference refuses it, before anything is staged or launched. */
Test(kern_cuda, rope_refuses_bad_rotary_dims)
{
    int hd = 16, bad[] = {15, 0, 18, -2};
    float inv[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    int32_t pos[2] = {0, 1};
    pair X = put(NULL, (size_t)2 * 3 * hd);
    for (int i = 0; i < 4; i++) {
        err_clear();
        cr_assert_eq(gpu.ops->rope(gpu.ctx, X.g, (char *)X.g + 2 * hd, 3 * hd, pos, 2, 1, 1, hd,
                                   bad[i], inv), -EINVAL, "rot_dims %d", bad[i]);
        cr_assert(strstr(err_msg(), "rotary dimensions must be even"), "%s", err_msg());
    }
    err_clear();
    drop(&X);
}

/* SwiGLU over the two halves of fused gate_up rows (ld 2 d) into rows of
 * d, over two buffers of stride d in place (out == gate), for even, odd and
 * Llama-sized d, with gates out to the tails of silu (exp(-g) overflowing
 * to inf at g = -90: the quotient's limit -0). */
Test(kern_cuda, swiglu_against_reference)
{
    int dims[] = {64, 1001, 11008};
    for (int di = 0; di < 3; di++) {
        int d = dims[di], n = di == 2 ? 5 : 37;
        float *gu = rand16((size_t)n * 2 * d, 6.0f);
        float tails[] = {-90.0f, -20.0f, 20.0f, 0.0f, -0.0f, 11.5f, -11.5f};
        for (int t = 0; t < 7; t++)
            gu[(size_t)(t * 5 % n) * 2 * d + (size_t)(t * 13) % d] = tails[t];
        pair GU = put(gu, (size_t)n * 2 * d), out = put(NULL, (size_t)n * d);
        char what[64];
        cpu.ops->swiglu(cpu.ctx, out.c, d, GU.c, (float *)GU.c + d, 2 * d, n, d);
        cr_assert_eq(gpu.ops->swiglu(gpu.ctx, out.g, d, GU.g, (char *)GU.g + 2 * (size_t)d,
                                     2 * d, n, d), 0, "%s", err_msg());
        snprintf(what, sizeof what, "swiglu fused d %d", d);
        expect_close(what, out, 1e-5, EPS16);
        /* separate gate and up buffers of stride d, out == gate */
        pair G = put(gu, (size_t)n * d), U = put(gu + (size_t)n * d, (size_t)n * d);
        cpu.ops->swiglu(cpu.ctx, G.c, d, G.c, U.c, d, n, d);
        cr_assert_eq(gpu.ops->swiglu(gpu.ctx, G.g, d, G.g, U.g, d, n, d), 0, "%s", err_msg());
        snprintf(what, sizeof what, "swiglu in place d %d", d);
        expect_close(what, G, 1e-5, EPS16);
        drop(&GU), drop(&out), drop(&G), drop(&U);
        free(gu);
    }
    /* in place with another row stride would race across rows: refused */
    pair GU = put(NULL, (size_t)4 * 16);
    err_clear();
    cr_assert_eq(gpu.ops->swiglu(gpu.ctx, GU.g, 8, GU.g, (char *)GU.g + 16, 16, 4, 8), -EINVAL);
    cr_assert(strstr(err_msg(), "in place"), "%s", err_msg());
    err_clear();
    drop(&GU);
}

/* Exact GELU over an odd count, into another buffer and in place, with
 * values out to where erf saturates and the negative tail underflows. */
Test(kern_cuda, gelu_against_reference)
{
    size_t counts[] = {1, 37 * 1001, 5 * 16384 + 3};
    for (int ci = 0; ci < 3; ci++) {
        size_t count = counts[ci];
        float *x = rand16(count, 6.0f);
        float tails[] = {-12.0f, 12.0f, -0.0f, 0.0f, -5.5f, 65504.0f, -65504.0f};
        for (int t = 0; t < 7 && (size_t)t < count; t++)
            x[(size_t)t * 7919 % count] = tails[t];
        pair X = put(x, count), out = put(NULL, count);
        char what[64];
        cpu.ops->gelu(cpu.ctx, out.c, X.c, count);
        cr_assert_eq(gpu.ops->gelu(gpu.ctx, out.g, X.g, count), 0, "%s", err_msg());
        snprintf(what, sizeof what, "gelu count %zu", count);
        expect_close(what, out, 1e-5, EPS16);
        cpu.ops->gelu(cpu.ctx, X.c, X.c, count);
        cr_assert_eq(gpu.ops->gelu(gpu.ctx, X.g, X.g, count), 0, "%s", err_msg());
        snprintf(what, sizeof what, "gelu in place count %zu", count);
        expect_close(what, X, 1e-5, EPS16);
        drop(&X), drop(&out);
        free(x);
    }
}
