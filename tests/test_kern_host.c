/* test_kern_host.c: the fp16-cache instances of the slot ops (CPU attention
 * over the CUDA backend's host-resident KV) against the fp32 reference.
 * The reference runs on caches holding the fp16-rounded values, so both
 * read the same numbers in the same order: outputs, scores, positions and
 * evictions must be identical, and the fp16 caches must hold the rounding
 * of what the reference wrote. Also the CPU backend's linear layer (the
 * reference of the CUDA one) worked by hand, with and without bias and
 * ReLU, and its KV ops' format argument; the CPU kernels refuse too little
 * scratch, and the CPU backend's ops grow their scratch outside a
 * reservation and refuse a call beyond one. And the RoPE families'
 * element-wise ops (RMSNorm, RoPE and its inverse frequencies, SwiGLU,
 * GELU) against hand-worked values and the same formulas in double, and
 * backend_ops_check's refusal of a backend without them; their vector and
 * parallel forms (the exp of vexp.h, SwiGLU, RoPE's angles once a row)
 * against plain restatements, bit for bit. And sampling with
 * its per-row controls (kern.h: logit edits, greedy, temperature, min_p,
 * top_k, top_p, top logprobs): hand-worked rows, a double reference of
 * kern.h's text over random rows (sample_slow.h), the sampler it replaced
 * for the old controls, and the CPU backend's op and reservation. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"
#include "kern.h"
#include "kern_scratch.h"
#include "sample_slow.h"
#include "cpu/cpu_common.h"
#include "cpu/vexp.h"

/* y = x w^T (+ b), ReLU, through the CPU backend's vtable, as backend.h
 * promises it: x (2, 2) = [1 2; -1 0.5], w (3, 2) = [1 0; 0 1; -1 -1], so
 * x w^T = [1 2 -3; -1 0.5 0.5]; b = [0.5 -3 1]. Every value is exact in
 * fp32. */
Test(kern_host, cpu_linear_bias_and_relu_as_promised)
{
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    const float x[4] = {1, 2, -1, 0.5f}, w[6] = {1, 0, 0, 1, -1, -1}, b[3] = {0.5f, -3, 1};
    const float want[4][6] = {
        {1, 2, -3, -1, 0.5f, 0.5f},          /* no bias, no ReLU */
        {1, 2, 0, 0, 0.5f, 0.5f},            /* no bias, ReLU: the case that lost its ReLU */
        {1.5f, -1, -2, -0.5f, -2.5f, 1.5f},  /* bias */
        {1.5f, 0, 0, 0, 0, 1.5f},            /* bias, ReLU */
    };
    for (int c = 0; c < 4; c++) {
        int with_bias = c >= 2, relu = c % 2;
        float y[6];
        memset(y, 0x7f, sizeof y);
        cr_assert_eq(be.ops->linear(be.ctx, y, x, w, with_bias ? b : NULL, 2, 3, 2, relu), 0);
        for (int i = 0; i < 6; i++)
            cr_assert_eq(y[i], want[c][i], "bias %d relu %d: y[%d][%d] = %g, want %g", with_bias,
                         relu, i / 3, i % 3, y[i], want[c][i]);
    }
    backend_destroy(&be);
}

static float rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int64_t)(*s >> 11) * 0x1.0p-52 - 1.0);
}

/* the same generator's next 32 high bits */
static uint32_t rnd_u32(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 32);
}

/* kern_linear_rows (the CPU backend's linear for a decode pass's few rows)
 * against a double-precision product, over shapes with tails in n (not a
 * multiple of 4 or 8) and k (not of 16), every block of rows of x (3, 2, 1),
 * k longer than one pass (1100 and 530: the SIMD paths' passes are 512
 * values) and more rows than one group (33: groups of 32); a row's outputs
 * are bit for bit the same alone as among m rows, and the same through the
 * backend's linear for m up to KERN_LINEAR_ROWS_MAX (beyond it the backend
 * runs sgemm). */
Test(kern_host, linear_rows_against_double_and_independent_of_m)
{
    static const int shapes[][3] = {{1, 1, 1},     {3, 7, 33},    {9, 130, 100},
                                    {17, 64, 256}, {13, 9, 1100}, {KERN_LINEAR_ROWS_MAX, 5, 48},
                                    {KERN_LINEAR_ROWS_MAX + 1, 6, 530}};
    uint64_t seed = 11;
    backend be;
    cr_assert_eq(backend_cpu_create(2, &be), 0, "%s", err_msg());
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int m = shapes[c][0], n = shapes[c][1], k = shapes[c][2];
        float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
        float *y = malloc(sizeof(float) * m * n), *y1 = malloc(sizeof(float) * n);
        float *yb = malloc(sizeof(float) * m * n);
        for (int i = 0; i < m * k; i++)
            x[i] = rnd(&seed);
        for (int i = 0; i < n * k; i++)
            w[i] = rnd(&seed);
        kern_linear_rows(y, x, w, m, n, k);
        cr_assert_eq(be.ops->linear(be.ctx, yb, x, w, NULL, m, n, k, 0), 0);
        for (int r = 0; r < m; r++) {
            kern_linear_rows(y1, x + (size_t)r * k, w, 1, n, k);
            for (int j = 0; j < n; j++) {
                double ref = 0, mag = 0;
                for (int i = 0; i < k; i++) {
                    ref += (double)x[(size_t)r * k + i] * w[(size_t)j * k + i];
                    mag += fabs((double)x[(size_t)r * k + i] * w[(size_t)j * k + i]);
                }
                float got = y[(size_t)r * n + j];
                cr_assert_leq(fabs(got - ref), 1e-6 * mag + 1e-30, "m %d n %d k %d: y[%d][%d] "
                              "%.9g vs %.9g", m, n, k, r, j, got, ref);
                cr_assert(got == y1[j], "m %d: row %d col %d differs alone", m, r, j);
                cr_assert(m > KERN_LINEAR_ROWS_MAX || got == yb[(size_t)r * n + j],
                          "m %d: backend linear differs", m);
            }
        }
        free(x), free(w), free(y), free(y1), free(yb);
    }
    backend_destroy(&be);
}

/* Where the rows kernel has fused multiply-adds (the AVX-512 and the
 * AVX2 + FMA paths), each output is one fixed sum: 16 lane chains of fmaf
 * over k in order (lane l takes i = l, l + 16, ...), the lanes added 0 to
 * 15, then the tail past the last multiple of 16 as products and adds. So
 * a machine with AVX-512 and one with only AVX2 give the same bits. The
 * plain-C path (neither) adds rounded products and is held to the bound of
 * the test above only. */
Test(kern_host, linear_rows_is_the_same_fused_sum_on_every_simd_path)
{
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    static const int shapes[][3] = {{1, 1, 16},     {3, 7, 33},    {4, 9, 100},
                                    {7, 13, 1100},  {33, 5, 530},  {KERN_LINEAR_ROWS_MAX, 12, 48},
                                    {16, 9, 1100},  {4, 6, 40},    {5, 12, 1280}};
    uint64_t seed = 23;
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int m = shapes[c][0], n = shapes[c][1], k = shapes[c][2], k16 = k / 16 * 16;
        float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
        float *y = malloc(sizeof(float) * m * n);
        for (int i = 0; i < m * k; i++)
            x[i] = rnd(&seed);
        for (int i = 0; i < n * k; i++)
            w[i] = rnd(&seed);
        kern_linear_rows(y, x, w, m, n, k);
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++) {
                const float *xr = x + (size_t)r * k, *wr = w + (size_t)j * k;
                float lane[16] = {0}, ref = 0.0f;
                for (int i = 0; i < k16; i++)
                    lane[i % 16] = fmaf(wr[i], xr[i], lane[i % 16]);
                for (int l = 0; l < 16; l++)
                    ref += lane[l];
                for (int i = k16; i < k; i++) {
                    float p = wr[i] * xr[i];
                    ref += p;
                }
                cr_assert(y[(size_t)r * n + j] == ref, "m %d n %d k %d: y[%d][%d] %a, the fused "
                          "sum %a", m, n, k, r, j, y[(size_t)r * n + j], ref);
            }
        free(x), free(w), free(y);
    }
#else
    cr_skip_test("no AVX-512 or AVX2 + FMA: the rows kernel adds rounded products");
#endif
}

/* The CPU backend's KV ops take the cache format as an argument: plain
 * caches run the fp32 references, 4-bit and bf16 ones the _q4 and _bf16
 * instances, each bit for bit; all three formats are in kv_formats; a
 * format it does not have is refused (-ENOTSUP) by each op, with a message
 * that names it. */
Test(kern_host, cpu_kv_ops_dispatch_on_the_format_and_refuse_unknown_ones)
{
    enum { HD = 64, CAP = 4, LEN = 6, LD = 3 * HD };
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    const backend_ops *o = be.ops;
    cr_assert(backend_kv_fmt_has(o, KERN_KV_FMT_PLAIN) && backend_kv_fmt_has(o, KERN_KV_FMT_Q4) &&
              backend_kv_fmt_has(o, KERN_KV_FMT_BF16));
    cr_assert(!backend_kv_fmt_has(o, KERN_KV_FMTS) && !backend_kv_fmt_has(o, -1));
    uint64_t seed = 5;
    float qkv[LEN * LD], cs[LEN];
    for (int i = 0; i < LEN * LD; i++)
        qkv[i] = rnd(&seed);
    for (int i = 0; i < LEN; i++)
        cs[i] = (float)(i * 5 % 7);
    kern_seq pre = {.row = 0, .n_new = LEN, .budget = CAP, .sinks = 1, .recent = 1};
    kern_seq dec = {.row = 0, .n_new = 1, .n_past = LEN, .n_slots = CAP, .budget = CAP,
                    .sinks = 1, .recent = 1};
    const float *k = qkv + HD, *v = qkv + 2 * HD;
    for (int fmt = KERN_KV_FMT_PLAIN; fmt < KERN_KV_FMTS; fmt++) {
        size_t bytes = fmt == KERN_KV_FMT_Q4     ? CAP * kern_q4_row_bytes(HD)
                     : fmt == KERN_KV_FMT_BF16 ? CAP * HD * 2
                                               : CAP * HD * 4;
        /* fp32 rows, or 4-bit / bf16 rows in their bytes */
        float kc[2][CAP * HD], vc[2][CAP * HD];
        float sc[2][CAP], out[2][HD], self[2];
        int32_t pos[2][CAP], ev[2];
        memset(kc, 0, sizeof kc), memset(vc, 0, sizeof vc);
        /* [0] through the vtable, [1] the kernels called directly */
        cr_assert_eq(o->kv_prefill(be.ctx, fmt, kc[0], vc[0], sc[0], pos[0], k, v, LD, cs, &pre,
                                   1, 1, 1, HD, CAP), 0, "%s", err_msg());
        cr_assert_eq(o->attn_decode(be.ctx, out[0], HD, qkv, k, v, LD, fmt, kc[0], vc[0], &dec,
                                    1, 1, 1, HD, CAP, 0.125f, sc[0], &self[0]), 0, "%s", err_msg());
        cr_assert_eq(o->kv_insert(be.ctx, fmt, kc[0], vc[0], sc[0], pos[0], k, v, LD, &self[0],
                                  &dec, 1, 1, 1, HD, CAP, &ev[0]), 0, "%s", err_msg());
        if (fmt == KERN_KV_FMT_Q4) {
            uint8_t *kq = (uint8_t *)kc[1], *vq = (uint8_t *)vc[1];
            kern_kv_prefill_q4(kq, vq, sc[1], pos[1], k, v, LD, cs, &pre, 1, 1, 1, HD, CAP,
                               KERN_WS(CAP));
            kern_attn_decode_q4(out[1], HD, qkv, k, v, LD, kq, vq, &dec, 1, 1, 1, HD, CAP, 0.125f,
                                sc[1], &self[1], KERN_WS(CAP));
            kern_kv_insert_q4(kq, vq, sc[1], pos[1], k, v, LD, &self[1], &dec, 1, 1, 1, HD, CAP,
                              &ev[1]);
        } else if (fmt == KERN_KV_FMT_BF16) {
            uint16_t *kb = (uint16_t *)kc[1], *vb = (uint16_t *)vc[1];
            kern_kv_prefill_bf16(kb, vb, sc[1], pos[1], k, v, LD, cs, &pre, 1, 1, 1, HD, CAP,
                                 KERN_WS(CAP));
            kern_attn_decode_bf16(out[1], HD, qkv, k, v, LD, kb, vb, &dec, 1, 1, 1, HD, CAP,
                                  0.125f, sc[1], &self[1], KERN_WS(CAP));
            kern_kv_insert_bf16(kb, vb, sc[1], pos[1], k, v, LD, &self[1], &dec, 1, 1, 1, HD, CAP,
                                &ev[1]);
        } else {
            kern_kv_prefill_ref(kc[1], vc[1], sc[1], pos[1], k, v, LD, cs, &pre, 1, 1, 1, HD, CAP,
                                KERN_WS(CAP));
            kern_attn_decode_ref(out[1], HD, qkv, k, v, LD, kc[1], vc[1], &dec, 1, 1, 1, HD, CAP,
                                 0.125f, sc[1], &self[1], KERN_WS(CAP));
            kern_kv_insert_ref(kc[1], vc[1], sc[1], pos[1], k, v, LD, &self[1], &dec, 1, 1, 1, HD,
                               CAP, &ev[1]);
        }
        cr_assert_eq(memcmp(kc[0], kc[1], bytes), 0, "%s K", kern_kv_fmt_name(fmt));
        cr_assert_eq(memcmp(vc[0], vc[1], bytes), 0, "%s V", kern_kv_fmt_name(fmt));
        cr_assert_eq(memcmp(out[0], out[1], sizeof out[0]), 0, "%s out", kern_kv_fmt_name(fmt));
        cr_assert_eq(memcmp(sc[0], sc[1], sizeof sc[0]), 0, "%s scores", kern_kv_fmt_name(fmt));
        cr_assert_eq(memcmp(pos[0], pos[1], sizeof pos[0]), 0, "%s pos", kern_kv_fmt_name(fmt));
        cr_assert(self[0] == self[1] && ev[0] == ev[1] && ev[0] >= 0, "%s: self_p %g %g, evicted "
                  "%d %d", kern_kv_fmt_name(fmt), self[0], self[1], ev[0], ev[1]);
    }
    /* an unknown format: refused by each op, before it touches anything */
    kern_kv_fmt bad = KERN_KV_FMTS;
    float scratch[CAP * HD] = {0}, s1[CAP] = {0}, out[HD], self;
    int32_t pos[CAP] = {0};
    err_clear();
    cr_assert_eq(o->kv_prefill(be.ctx, bad, scratch, scratch, s1, pos, k, v, LD, cs, &pre, 1, 1, 1,
                               HD, CAP), -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 3"), "%s", err_msg());
    err_clear();
    cr_assert_eq(o->attn_decode(be.ctx, out, HD, qkv, k, v, LD, bad, scratch, scratch, &dec, 1,
                                1, 1, HD, CAP, 0.125f, s1, &self), -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 3"), "%s", err_msg());
    err_clear();
    cr_assert_eq(o->kv_insert(be.ctx, bad, scratch, scratch, s1, pos, k, v, LD, &self, &dec, 1,
                              1, 1, HD, CAP, NULL), -ENOTSUP);
    cr_assert(strstr(err_msg(), "no KV cache format 3"), "%s", err_msg());
    err_clear();
    backend_destroy(&be);
}

/* Each CPU kernel that takes scratch refuses one byte less than its
 * kern_*_scratch_bytes() says (-EINVAL, a message naming it), before it
 * writes anything, and runs with exactly that much; a greedy sample row
 * needs none. */
Test(kern_host, cpu_kernels_refuse_too_little_scratch)
{
    enum { HD = 8, CAP = 5, LEN = 4, LD = 3 * HD, V = 16 };
    int nt = kern_cpu_threads();
    uint64_t seed = 11;
    float qkv[LEN * LD], cs[LEN], out[LEN * HD], kc[CAP * HD], vc[CAP * HD], sc[CAP], self;
    uint16_t kh[CAP * HD], vh[CAP * HD];
    uint8_t kq[CAP * 36], vq[CAP * 36]; /* kern_q4_row_bytes(8) = 36 */
    int32_t pos[CAP];
    for (int i = 0; i < LEN * LD; i++)
        qkv[i] = rnd(&seed);
    const float *k = qkv + HD, *v = qkv + 2 * HD;
    kern_seq pre = {.row = 0, .n_new = LEN, .budget = CAP, .recent = 1};
    kern_seq dec = {.row = 0, .n_new = 1, .n_past = LEN, .n_slots = LEN, .budget = CAP,
                    .recent = 1};
    size_t np = kern_attn_prefill_scratch_bytes(LEN, nt), nk = kern_kv_prefill_scratch_bytes(LEN, nt);
    size_t nd = kern_attn_decode_scratch_bytes(CAP, nt);
    cr_assert(np > 0 && nk > 0 && nd > 0);
    char *ws = malloc(np > nd ? (np > nk ? np : nk) : (nd > nk ? nd : nk));
    for (int i = 0; i < LEN * HD; i++)
        out[i] = -7.0f;
#define SHORT(call, name)                                                                   \
    do {                                                                                    \
        err_clear();                                                                        \
        cr_assert_eq(call, -EINVAL, "%s ran with too little scratch", name);                \
        cr_assert(strstr(err_msg(), name) && strstr(err_msg(), "scratch"), "%s", err_msg());  \
    } while (0)
    SHORT(kern_attn_prefill_ref(out, HD, qkv, k, v, LD, &pre, 1, 1, 1, HD, 0.3f, cs, ws, np - 1),
          "kern_attn_prefill_ref");
    for (int i = 0; i < LEN * HD; i++)
        cr_assert_eq(out[i], -7.0f, "a refused call wrote its output");
    SHORT(kern_kv_prefill_ref(kc, vc, sc, pos, k, v, LD, cs, &pre, 1, 1, 1, HD, CAP, ws, nk - 1),
          "kern_kv_prefill_ref");
    SHORT(kern_kv_prefill_h16(kh, vh, sc, pos, k, v, LD, cs, &pre, 1, 1, 1, HD, CAP, ws, nk - 1),
          "kern_kv_prefill_h16");
    SHORT(kern_kv_prefill_q4(kq, vq, sc, pos, k, v, LD, cs, &pre, 1, 1, 1, HD, CAP, ws, nk - 1),
          "kern_kv_prefill_q4");
    SHORT(kern_attn_decode_ref(out, HD, qkv, k, v, LD, kc, vc, &dec, 1, 1, 1, HD, CAP, 0.3f, sc,
                               &self, ws, nd - 1), "kern_attn_decode_ref");
    SHORT(kern_attn_decode_h16(out, HD, qkv, k, v, LD, kh, vh, &dec, 1, 1, 1, HD, CAP, 0.3f, sc,
                               &self, ws, nd - 1), "kern_attn_decode_h16");
    SHORT(kern_attn_decode_q4(out, HD, qkv, k, v, LD, kq, vq, &dec, 1, 1, 1, HD, CAP, 0.3f, sc,
                              &self, ws, nd - 1), "kern_attn_decode_q4");
    /* exactly enough runs */
    cr_assert_eq(kern_attn_prefill_ref(out, HD, qkv, k, v, LD, &pre, 1, 1, 1, HD, 0.3f, cs, ws, np),
                 0, "%s", err_msg());
    cr_assert_eq(kern_kv_prefill_ref(kc, vc, sc, pos, k, v, LD, cs, &pre, 1, 1, 1, HD, CAP, ws, nk),
                 0, "%s", err_msg());
    cr_assert_eq(kern_attn_decode_ref(out, HD, qkv, k, v, LD, kc, vc, &dec, 1, 1, 1, HD, CAP, 0.3f,
                                      sc, &self, ws, nd), 0, "%s", err_msg());
    float logits[V], lp;
    for (int i = 0; i < V; i++)
        logits[i] = (float)(i % 5);
    size_t ns = kern_sample_scratch_bytes(V);
    cr_assert_eq(ns, (size_t)V * 8);
    kern_sample_row draw = {.temperature = 0.7f, .top_p = 0.9f, .u = 0.5};
    kern_sample_row greedy = {.temperature = 0.0f, .top_p = 1.0f, .u = 0.5};
    kern_logit_edit ban = {.tok = 4, .pos = 1, .neg = 1, .add = -INFINITY};
    kern_sample_row greedy_edit = {.top_p = 1.0f, .n_edit = 1};
    SHORT(kern_sample_ref(logits, V, &draw, NULL, &lp, NULL, NULL, ws, ns - 1),
          "kern_sample_ref");
    SHORT(kern_sample_ref(logits, V, &greedy_edit, &ban, &lp, NULL, NULL, ws, ns - 1),
          "kern_sample_ref"); /* a greedy row with edits copies its logits */
    char *big = malloc(ns);
    cr_assert_geq(kern_sample_ref(logits, V, &draw, NULL, &lp, NULL, NULL, big, ns), 0, "%s",
                  err_msg());
    cr_assert_eq(kern_sample_ref(logits, V, &greedy_edit, &ban, &lp, NULL, NULL, big, ns), 9,
                 "greedy after banning token 4: the next highest logit");
    cr_assert_eq(kern_sample_ref(logits, V, &greedy, NULL, &lp, NULL, NULL, NULL, 0), 4,
                 "greedy: the first highest logit, without scratch");
#undef SHORT
    free(big);
    free(ws);
    err_clear();
}

/* The CPU backend's scratch (backend.h reserve, allocs): outside a
 * reservation an op grows it on first need (one allocation, none for a
 * call that fits); reserve sizes it for its limits at once; within the
 * reservation a call beyond the limits is refused with "exceeds the
 * reserved" and allocates nothing; once the reservation ends it grows
 * again. Host and buffer allocations are counted too. */
Test(kern_host, cpu_backend_reserves_its_scratch_and_refuses_beyond_it)
{
    enum { HD = 8, BIG = 40, LD = 3 * HD };
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    const backend_ops *o = be.ops;
    uint64_t seed = 3;
    float qkv[LD], out[HD], kc[BIG * HD] = {0}, vc[BIG * HD] = {0}, sc[BIG] = {0}, self;
    for (int i = 0; i < LD; i++)
        qkv[i] = rnd(&seed);
    const float *k = qkv + HD, *v = qkv + 2 * HD;
    kern_seq dec = {.row = 0, .n_new = 1, .n_past = 3, .n_slots = 3, .budget = 4, .recent = 1};
#define DECODE(cap) o->attn_decode(be.ctx, out, HD, qkv, k, v, LD, KERN_KV_FMT_PLAIN, kc, vc, \
                                   &dec, 1, 1, 1, HD, cap, 0.3f, sc, &self)
    uint64_t a0 = o->allocs(be.ctx);
    cr_assert_eq(DECODE(4), 0, "%s", err_msg());
    cr_assert_eq(o->allocs(be.ctx), a0 + 1, "the first call grew the scratch");
    cr_assert_eq(DECODE(4), 0, "%s", err_msg());
    cr_assert_eq(o->allocs(be.ctx), a0 + 1, "a call that fits allocates nothing");
    backend_limits lim = {.rows = 1, .seqs = 1, .heads = 1, .kv_heads = 1, .head_dim = HD,
                          .cap = 8, .prompt = 4};
    cr_assert_eq(o->reserve(be.ctx, &lim), 0, "%s", err_msg());
    uint64_t a1 = o->allocs(be.ctx);
    cr_assert_eq(a1, a0 + 2, "reserve sized the scratch for cap 8 at once");
    cr_assert_eq(DECODE(8), 0, "%s", err_msg());
    err_clear();
    cr_assert_eq(DECODE(BIG), -EINVAL, "a call beyond the reservation ran");
    cr_assert(strstr(err_msg(), "exceeds the reserved"), "%s", err_msg());
    err_clear();
    float logits[4] = {0, 1, 2, 3}, lp;
    kern_sample_row row = {.temperature = 0.5f, .top_p = 1.0f, .u = 0.25};
    int32_t tok;
    cr_assert_eq(o->sample(be.ctx, logits, 1, 4, &row, NULL, &tok, &lp, NULL, NULL), 0, "%s",
                 err_msg()); /* 32 bytes: within the scratch reserved for decode */
    cr_assert_eq(o->allocs(be.ctx), a1, "nothing allocated within the reservation");
    void *buf = NULL;
    cr_assert_eq(o->alloc_words(be.ctx, 4, &buf), 0);
    cr_assert_eq(o->allocs(be.ctx), a1 + 1, "buffers are counted");
    o->free(be.ctx, buf);
    cr_assert_eq(o->reserve(be.ctx, NULL), 0);
    cr_assert_eq(DECODE(BIG), 0, "%s", err_msg());
    cr_assert_eq(o->allocs(be.ctx), a1 + 2, "outside the reservation the scratch grew again");
#undef DECODE
    backend_destroy(&be);
}

/* kern.h's fp16 converter: round to nearest even (ties, subnormals, the
 * overflow edge), exact the other way, and every fp16 value round-trips. */
Test(kern_host, f16_conversion_rounds_to_nearest_even)
{
    static const struct {
        float x;
        uint16_t h;
    } want[] = {
        {1.0f, 0x3c00},
        {1.0f + 0x1p-11f, 0x3c00},          /* tie: stays even */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* above the tie */
        {1.0f + 0x3p-11f, 0x3c02},          /* tie: up to even */
        {-2.5f, 0xc100},
        {65504.0f, 0x7bff},                 /* largest finite */
        {65519.99f, 0x7bff},
        {65520.0f, 0x7c00},                 /* tie with 2^16: overflows to inf */
        {0x1p-24f, 0x0001},                 /* smallest subnormal */
        {0x1p-25f, 0x0000},                 /* tie: to even, zero */
        {0x1p-25f + 0x1p-40f, 0x0001},
        {0x3p-25f, 0x0002},                 /* subnormal tie: up to even */
        {0x1p-14f, 0x0400},                 /* smallest normal */
        {-0.0f, 0x8000},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_eq(kern_f32_to_f16(want[i].x), want[i].h, "%a: 0x%04x, want 0x%04x",
                     (double)want[i].x, kern_f32_to_f16(want[i].x), want[i].h);
    uint16_t nan = kern_f32_to_f16(NAN);
    cr_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x03ff) != 0, "NaN became 0x%04x", nan);
    cr_assert_eq(kern_f16_to_f32(0x0001), 0x1p-24f);
    cr_assert_eq(kern_f16_to_f32(0x7bff), 65504.0f);
    cr_assert_eq(kern_f16_to_f32(0x3555), 0x1.554p-2f);
    cr_assert(isnan(kern_f16_to_f32(0x7e00)));
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff))
            continue; /* NaN */
        cr_assert_eq(kern_f32_to_f16(kern_f16_to_f32((uint16_t)h)), h, "0x%04x", h);
    }
}

/* The host-memory read of calibrate (kernels/cpu/stream.c): the threaded
 * XOR equals the reference over lengths that split unevenly across
 * threads, and a hand-worked value (the XOR of 1..n is n, 1, n + 1 or 0
 * by n mod 4). */
Test(kern_host, xor64_par_equals_ref)
{
    size_t lens[] = {0, 1, 2, 3, 7, 1000, 65537, 1000003};
    size_t most = lens[sizeof lens / sizeof *lens - 1];
    uint64_t *p = malloc(sizeof *p * most);
    cr_assert(p);
    uint64_t s = 99;
    for (size_t i = 0; i < most; i++)
        p[i] = kern_splitmix64(&s);
    for (size_t j = 0; j < sizeof lens / sizeof *lens; j++)
        cr_assert_eq(kern_xor64_par(p, lens[j]), kern_xor64_ref(p, lens[j]), "n %zu",
                     lens[j]);
    for (uint64_t n = 0; n < 64; n++) {
        for (uint64_t i = 0; i < n; i++)
            p[i] = i + 1;
        uint64_t want[] = {n, 1, n + 1, 0};
        cr_assert_eq(kern_xor64_par(p, n), want[n % 4], "1..%llu", (unsigned long long)n);
    }
    free(p);
}

/* The widening of 16-bit weights (kernels/cpu/widen.c): hand-worked
 * values of both formats, exactness over every fp16 value (it is the
 * inverse of kern_f32_to_f16), and the CPU backend's op (threaded, over
 * several chunks and a ragged tail) equal to the reference bit for bit. */
Test(kern_host, widen_h16_and_bf16_exactly)
{
    static const struct {
        uint16_t h;
        kern_h16 fmt;
        float x;
    } want[] = {
        {0x3c00, KERN_H16_F16, 1.0f},  {0xc100, KERN_H16_F16, -2.5f},
        {0x0001, KERN_H16_F16, 0x1p-24f}, {0x7bff, KERN_H16_F16, 65504.0f},
        {0x8000, KERN_H16_F16, -0.0f}, {0x3f80, KERN_H16_BF16, 1.0f},
        {0xc020, KERN_H16_BF16, -2.5f}, {0x7f7f, KERN_H16_BF16, 0x1.fep127f},
        {0x0001, KERN_H16_BF16, 0x1p-133f}, {0x7f80, KERN_H16_BF16, INFINITY},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        float x;
        kern_widen_ref(&x, &want[i].h, 1, want[i].fmt);
        cr_assert(memcmp(&x, &want[i].x, 4) == 0, "0x%04x (fmt %d): %a, want %a", want[i].h,
                  want[i].fmt, (double)x, (double)want[i].x);
    }
    size_t n = 0x10000 * 3 + 77; /* several of the threaded chunks and a tail */
    uint16_t *h = malloc(n * 2);
    float *a = malloc(n * 4), *b = malloc(n * 4);
    cr_assert(h && a && b);
    for (size_t i = 0; i < n; i++)
        h[i] = (uint16_t)(i * 40503u);
    kern_widen_ref(a, h, n, KERN_H16_F16);
    for (size_t i = 0; i < n; i++) {
        if ((h[i] & 0x7c00) == 0x7c00 && (h[i] & 0x03ff))
            continue; /* NaN */
        cr_assert_eq(kern_f32_to_f16(a[i]), h[i], "0x%04x widened to %a", h[i], (double)a[i]);
    }
    backend be = {0};
    cr_assert_eq(backend_cpu_create(0, &be), 0, "%s", err_msg());
    for (int fmt = KERN_H16_F16; fmt <= KERN_H16_BF16; fmt++) {
        kern_widen_ref(a, h, n, (kern_h16)fmt);
        memset(b, 0xff, n * 4);
        cr_assert_eq(be.ops->widen(be.ctx, b, h, n, (kern_h16)fmt), 0, "%s", err_msg());
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&a[i], &b[i], 4) != 0 && bad++ < 4)
                cr_log_info("fmt %d [%zu]: %a, want %a", fmt, i, (double)b[i], (double)a[i]);
        cr_assert_eq(bad, 0, "fmt %d: %zu values differ from the reference", fmt, bad);
    }
    err_clear();
    cr_assert_eq(be.ops->widen(be.ctx, b, h, 1, (kern_h16)3), -EINVAL);
    backend_destroy(&be);
    free(h);
    free(a);
    free(b);
}

/* Decode attention as kern.h and cpu_common.h state it, one element at a
 * time: a dot product is DOT_LANES (16) lane sums (lane i: the products of
 * elements i, i + 16, ... in order, each product then sum rounded), added
 * 8, 4, 2, 1 apart; scale after; softmax over the slots and the new token;
 * o = 0, then p[t] V[t] added in slot order, the new token's last. The
 * slot loops the CPU backend runs are vectorised across elements, slots and
 * rows of V (kernels/cpu/slots.c); this is what they must equal bit for
 * bit. One query head over one KV head; kc and vc widened to fp32 by the
 * caller. */
static float lanes_dot(const float *a, const float *b, int n)
{
    float acc[16] = {0};
    for (int e = 0; e < n; e++) {
        float prod = a[e] * b[e];
        acc[e % 16] = acc[e % 16] + prod;
    }
    for (int w = 8; w > 0; w >>= 1)
        for (int i = 0; i < w; i++)
            acc[i] += acc[i + w];
    return acc[0];
}

static void plain_decode(float *o, float *p, const float *q, const float *knew,
                         const float *vnew, const float *kc, const float *vc, int n, int hd,
                         float scale)
{
    for (int t = 0; t < n; t++)
        p[t] = lanes_dot(q, kc + (size_t)t * hd, hd) * scale;
    p[n] = lanes_dot(q, knew, hd) * scale;
    float mx = -INFINITY, sum = 0.0f;
    for (int t = 0; t <= n; t++)
        mx = p[t] > mx ? p[t] : mx;
    for (int t = 0; t <= n; t++) {
        p[t] = expf(p[t] - mx);
        sum += p[t];
    }
    float inv = 1.0f / sum;
    for (int t = 0; t <= n; t++)
        p[t] *= inv;
    for (int e = 0; e < hd; e++) {
        float a = 0.0f;
        for (int t = 0; t < n; t++) {
            float prod = p[t] * vc[(size_t)t * hd + e];
            a = a + prod;
        }
        o[e] = a + p[n] * vnew[e];
    }
}

Test(kern_host, decode_slot_loops_are_the_plain_lane_sums_in_every_format, .timeout = 60)
{
    /* head dims around the 16 lanes and the 64 / 128 values held in
     * registers; slot counts around the groups of four rows and the
     * prefetch distance (eight rows); three query heads share the KV head
     * (the first prefetches) */
    static const int hds[] = {1, 15, 16, 17, 48, 64, 80, 128, 136, 200, 256};
    static const int ns[] = {0, 1, 3, 4, 5, 8, 11, 12, 13, 40, 50};
    enum { CAP = 50, G = 3 }; /* 4-bit rows are dequantized 4096 values at a time: 16 at 256 */
    uint64_t seed = 91;
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof ns / sizeof *ns; b++) {
            int hd = hds[a], n = ns[b], ld = (G + 2) * hd;
            float *row = malloc(sizeof(float) * ld), *kc = malloc(sizeof(float) * CAP * hd);
            float *vc = malloc(sizeof(float) * CAP * hd);
            uint16_t *kh = malloc(2 * (size_t)CAP * hd), *vh = malloc(2 * (size_t)CAP * hd);
            uint16_t *kb = malloc(2 * (size_t)CAP * hd), *vb = malloc(2 * (size_t)CAP * hd);
            float *kw = malloc(sizeof(float) * CAP * hd), *vw = malloc(sizeof(float) * CAP * hd);
            size_t rb = kern_q4_row_bytes(hd);
            uint8_t *kq = malloc(rb * CAP), *vq = malloc(rb * CAP);
            for (int i = 0; i < ld; i++)
                row[i] = rnd(&seed);
            for (int i = 0; i < CAP * hd; i++) {
                kc[i] = rnd(&seed);
                vc[i] = rnd(&seed);
                kh[i] = kern_f32_to_f16(kc[i]), vh[i] = kern_f32_to_f16(vc[i]);
                kern_round_bf16_ref(&kb[i], &kc[i], 1), kern_round_bf16_ref(&vb[i], &vc[i], 1);
            }
            for (int t = 0; t < CAP; t++) {
                kern_q4_quantize_row(kq + t * rb, kc + (size_t)t * hd, hd);
                kern_q4_quantize_row(vq + t * rb, vc + (size_t)t * hd, hd);
            }
            kern_seq sq = {.row = 0, .n_new = 1, .n_past = n, .n_slots = n, .budget = CAP,
                           .sinks = 0, .recent = 1};
            const float *q = row, *k = row + G * hd, *v = k + hd;
            for (int f = 0; f < 4; f++) { /* fp32, fp16, bf16, 4-bit */
                /* the cache as the op reads it, widened for the plain restatement */
                for (int i = 0; i < CAP * hd; i++) {
                    kw[i] = f == 0 ? kc[i] : f == 1 ? kern_f16_to_f32(kh[i]) : 0.0f;
                    vw[i] = f == 0 ? vc[i] : f == 1 ? kern_f16_to_f32(vh[i]) : 0.0f;
                }
                if (f == 2)
                    kern_widen_ref(kw, kb, (size_t)CAP * hd, KERN_H16_BF16),
                        kern_widen_ref(vw, vb, (size_t)CAP * hd, KERN_H16_BF16);
                if (f == 3) /* the 4-bit op is the fp32 one over the dequantized rows */
                    for (int t = 0; t < CAP; t++) {
                        kern_q4_dequant_row(kw + (size_t)t * hd, kq + t * rb, hd);
                        kern_q4_dequant_row(vw + (size_t)t * hd, vq + t * rb, hd);
                    }
                float *out = malloc(sizeof(float) * G * hd), *want = malloc(sizeof(float) * hd);
                float *sc = calloc(CAP, sizeof(float)), self = 0.0f;
                float p[CAP + 1], want_sc[CAP] = {0}, want_self = 0.0f;
                int rc = f == 0 ? kern_attn_decode_ref(out, G * hd, q, k, v, ld, kc, vc, &sq, 1,
                                                       G, 1, hd, CAP, 0.37f, sc, &self,
                                                       KERN_WS(CAP))
                         : f == 1 ? kern_attn_decode_h16(out, G * hd, q, k, v, ld, kh, vh, &sq,
                                                         1, G, 1, hd, CAP, 0.37f, sc, &self,
                                                         KERN_WS(CAP))
                         : f == 2 ? kern_attn_decode_bf16(out, G * hd, q, k, v, ld, kb, vb, &sq,
                                                          1, G, 1, hd, CAP, 0.37f, sc, &self,
                                                          KERN_WS(CAP))
                                  : kern_attn_decode_q4(out, G * hd, q, k, v, ld, kq, vq, &sq, 1,
                                                        G, 1, hd, CAP, 0.37f, sc, &self,
                                                        KERN_WS(CAP));
                cr_assert_eq(rc, 0, "format %d", f);
                for (int h = 0; h < G; h++) {
                    plain_decode(want, p, q + (size_t)h * hd, k, v, kw, vw, n, hd, 0.37f);
                    for (int e = 0; e < hd; e++)
                        cr_assert(out[h * hd + e] == want[e], "format %d, head dim %d, %d "
                                  "slots, head %d: o[%d] %a, the plain sums %a", f, hd, n, h, e,
                                  out[h * hd + e], want[e]);
                    for (int t = 0; t < n; t++) /* the group's sum, heads in order */
                        want_sc[t] += p[t];
                    want_self = h == 0 ? p[n] : want_self + p[n];
                }
                for (int t = 0; t < n; t++)
                    cr_assert(sc[t] == want_sc[t], "format %d, head dim %d, %d slots: score %d",
                              f, hd, n, t);
                cr_assert(self == want_self, "format %d, head dim %d, %d slots: self", f, hd, n);
                free(out), free(want), free(sc);
            }
            free(row), free(kc), free(vc), free(kh), free(vh), free(kb), free(vb), free(kw),
                free(vw), free(kq), free(vq);
        }
}

Test(kern_host, h16_slot_ops_equal_the_reference)
{
    enum { NS = 3, H = 4, HD = 16, CAP = 9 };
    const int ld = 3 * H * HD, d = H * HD;
    uint64_t seed = 7;
    /* prefill rows of three prompts of different lengths, budgets 9, 5, 12 > len */
    int lens[NS] = {12, 7, 3}, budget[NS] = {9, 5, 9};
    int rows = lens[0] + lens[1] + lens[2];
    float *qkv = malloc(sizeof(float) * (size_t)rows * ld);
    for (int i = 0; i < rows * ld; i++)
        qkv[i] = kern_f16_to_f32(kern_f32_to_f16(rnd(&seed))); /* k, v exact in fp16 */
    float *colsum = malloc(sizeof(float) * (size_t)rows * H);
    for (int i = 0; i < rows * H; i++)
        colsum[i] = (float)((i * 37) % 11) * 0.25f; /* ties included */
    kern_seq sq[NS];
    for (int s = 0, r = 0; s < NS; r += lens[s], s++)
        sq[s] = (kern_seq){.row = r, .n_new = lens[s], .n_past = 0, .n_slots = 0,
                           .budget = budget[s], .sinks = 1, .recent = 2};
    size_t slots = (size_t)NS * H * CAP;
    float *kc = calloc(slots * HD, 4), *vc = calloc(slots * HD, 4), *sc = calloc(slots, 4);
    uint16_t *kh = calloc(slots * HD, 2), *vh = calloc(slots * HD, 2);
    float *sh = calloc(slots, 4);
    int32_t *pos = calloc(slots, 4), *posh = calloc(slots, 4);
    kern_kv_prefill_ref(kc, vc, sc, pos, qkv + d, qkv + 2 * d, ld, colsum, sq, NS, H, H, HD, CAP,
                        KERN_WS(rows));
    kern_kv_prefill_h16(kh, vh, sh, posh, qkv + d, qkv + 2 * d, ld, colsum, sq, NS, H, H, HD, CAP,
                        KERN_WS(rows));
    cr_assert_eq(memcmp(pos, posh, slots * 4), 0, "prefill kept different tokens");
    cr_assert_eq(memcmp(sc, sh, slots * 4), 0, "prefill scores differ");
    for (size_t i = 0; i < slots * HD; i++)
        cr_assert(kh[i] == kern_f32_to_f16(kc[i]) && vh[i] == kern_f32_to_f16(vc[i]), "cache element %zu", i);

    /* decode steps: one new row per sequence, evicting once full */
    float *out = malloc(sizeof(float) * NS * d), *outh = malloc(sizeof(float) * NS * d);
    float self[NS * H], selfh[NS * H];
    int32_t ev[NS * H], evh[NS * H];
    float *row = malloc(sizeof(float) * NS * ld);
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < NS * ld; i++)
            row[i] = kern_f16_to_f32(kern_f32_to_f16(rnd(&seed)));
        for (int s = 0; s < NS; s++) {
            sq[s].row = s;
            sq[s].n_new = 1;
            sq[s].n_past = lens[s] + step;
            sq[s].n_slots = sq[s].n_past < budget[s] ? sq[s].n_past : budget[s];
        }
        kern_attn_decode_ref(out, d, row, row + d, row + 2 * d, ld, kc, vc, sq, NS, H, H, HD, CAP,
                             0.25f, sc, self, KERN_WS(CAP));
        kern_attn_decode_h16(outh, d, row, row + d, row + 2 * d, ld, kh, vh, sq, NS, H, H, HD,
                             CAP, 0.25f, sh, selfh, KERN_WS(CAP));
        cr_assert_eq(memcmp(out, outh, sizeof(float) * NS * d), 0, "step %d: output", step);
        cr_assert_eq(memcmp(sc, sh, slots * 4), 0, "step %d: scores", step);
        cr_assert_eq(memcmp(self, selfh, sizeof self), 0, "step %d: self", step);
        kern_kv_insert_ref(kc, vc, sc, pos, row + d, row + 2 * d, ld, self, sq, NS, H, H, HD, CAP,
                           ev);
        kern_kv_insert_h16(kh, vh, sh, posh, row + d, row + 2 * d, ld, selfh, sq, NS, H, H, HD,
                           CAP, evh);
        cr_assert_eq(memcmp(ev, evh, sizeof ev), 0, "step %d: evictions", step);
        cr_assert_eq(memcmp(pos, posh, slots * 4), 0, "step %d: positions", step);
        for (size_t i = 0; i < slots * HD; i++)
            cr_assert(kh[i] == kern_f32_to_f16(kc[i]) && vh[i] == kern_f32_to_f16(vc[i]), "step %d: element %zu",
                      step, i);
    }
    int evicted = 0;
    for (int i = 0; i < NS * H; i++)
        evicted += ev[i] >= 0;
    cr_assert_gt(evicted, 0, "the test must reach evictions");
    free(qkv); free(colsum); free(kc); free(vc); free(sc); free(kh); free(vh); free(sh);
    free(pos); free(posh); free(out); free(outh); free(row);
}

/* ==========================================================================
 * 4-bit group quantization (kern.h "4-bit group quantization"): the block
 * format worked by hand, the error bound and the per-group fields on random
 * rows, the fp16 / row-at-a-time entry points against kern_q4_quantize_ref,
 * and the slot ops over 4-bit caches against the fp32 reference run on the
 * dequantized caches (kern.h: "each equals the fp32 op run on the
 * dequantized cache, with the rows it writes quantized").
 * ========================================================================== */

/* fp16 bits of a block field (bytes off, off + 1; the host is little-endian) */
static uint16_t q4_u16(const uint8_t *blk, int off)
{
    return (uint16_t)(blk[off] | blk[off + 1] << 8);
}

/* code of value i of a block: low nibble = even value */
static int q4_code(const uint8_t *blk, int i)
{
    return (blk[4 + i / 2] >> (4 * (i & 1))) & 15;
}

Test(kern_host, q4_hand_worked_blocks)
{
    /* a row of 3 groups (64 + 64 + 6 values) = 3 blocks of 36 bytes */
    enum { N = 134 };
    cr_assert_eq(kern_q4_row_bytes(64), 36);
    cr_assert_eq(kern_q4_row_bytes(65), 72);
    cr_assert_eq(kern_q4_row_bytes(N), 108);
    float x[N], y[N];
    int code[N];
    /* group 0: x = -2 + 0.5 c with c = 7 i mod 16 (all of 0..15 occur): min -2
     * (fp16 0xc000), max 5.5, scale 7.5 / 15 = 0.5 (fp16 0x3800), codes c */
    for (int i = 0; i < 64; i++) {
        code[i] = (7 * i) % 16;
        x[i] = -2.0f + 0.5f * (float)code[i];
    }
    /* group 1: min 1, max 16, scale 1 (fp16 0x3c00 both); rounding to nearest,
     * ties to even: 3.4 -> 2, 3.6 -> 3, 3.5 -> 2.5 -> 2, 4.5 -> 3.5 -> 4 */
    const float g1[6] = {1.0f, 16.0f, 3.4f, 3.6f, 3.5f, 4.5f};
    const int c1[6] = {0, 15, 2, 3, 2, 4};
    const float y1[6] = {1.0f, 16.0f, 3.0f, 4.0f, 3.0f, 5.0f};
    for (int i = 0; i < 64; i++) {
        x[64 + i] = i < 6 ? g1[i] : 8.0f; /* 8 -> code 7 */
        code[64 + i] = i < 6 ? c1[i] : 7;
    }
    /* group 2 (short, 6 values): min 10 (fp16 0x4900), max 13.75, scale
     * 3.75 / 15 = 0.25 (fp16 0x3400); codes 0 1 2 15 4 8 */
    const float g2[6] = {10.0f, 10.25f, 10.5f, 13.75f, 11.0f, 12.0f};
    const int c2[6] = {0, 1, 2, 15, 4, 8};
    for (int i = 0; i < 6; i++) {
        x[128 + i] = g2[i];
        code[128 + i] = c2[i];
    }

    uint8_t b[108];
    memset(b, 0xff, sizeof b); /* the padding codes must be written, not left */
    kern_q4_quantize_row(b, x, N);
    cr_assert(b[0] == 0x00 && b[1] == 0x38, "group 0 scale %02x%02x", b[1], b[0]);
    cr_assert(b[2] == 0x00 && b[3] == 0xc0, "group 0 min %02x%02x", b[3], b[2]);
    cr_assert_eq(b[4], 0x70, "codes 0, 7 -> byte 0x70, got %02x", b[4]);
    cr_assert_eq(b[5], 0x5e, "codes 14, 5 -> byte 0x5e, got %02x", b[5]);
    for (int i = 0; i < 32; i++)
        cr_assert_eq(b[4 + i], code[2 * i] | code[2 * i + 1] << 4, "group 0 byte %d", 4 + i);
    const uint8_t *b1 = b + 36, *b2 = b + 72;
    cr_assert(q4_u16(b1, 0) == 0x3c00 && q4_u16(b1, 2) == 0x3c00, "group 1 scale %04x min %04x",
              q4_u16(b1, 0), q4_u16(b1, 2));
    for (int i = 0; i < 64; i++)
        cr_assert_eq(q4_code(b1, i), code[64 + i], "group 1 value %d: code %d", i,
                     q4_code(b1, i));
    cr_assert(q4_u16(b2, 0) == 0x3400 && q4_u16(b2, 2) == 0x4900, "group 2 scale %04x min %04x",
              q4_u16(b2, 0), q4_u16(b2, 2));
    cr_assert(b2[4] == 0x10 && b2[5] == 0xf2 && b2[6] == 0x84, "group 2 codes %02x %02x %02x",
              b2[4], b2[5], b2[6]);
    for (int i = 7; i < 36; i++)
        cr_assert_eq(b2[i], 0, "group 2 padding byte %d = %02x", i, b2[i]);

    for (int i = 0; i < N; i++)
        y[i] = -99.0f;
    kern_q4_dequant_row(y, b, N);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(y[i], x[i], "group 0 value %d: %g != %g", i, y[i], x[i]);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(y[64 + i], i < 6 ? y1[i] : 8.0f, "group 1 value %d: %g", i, y[64 + i]);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(y[128 + i], g2[i], "group 2 value %d: %g", i, y[128 + i]);
}

/* lengths: one full group, a short last group (even and odd), many groups */
static const int q4_lens[] = {64, 100, 71, 1024};

/* row r of a random matrix: values off + amp * U(-1, 1) of various ranges */
static void q4_random_rows(float *x, int rows, int n, uint64_t *seed)
{
    static const float off[] = {0.0f, 0.5f, -1.0f, 0.0f, 2.0f, 0.0f};
    static const float amp[] = {1.0f, 0.25f, 3.0f, 0.01f, 1.0f, 100.0f};
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            x[(size_t)r * n + i] = off[r % 6] + amp[r % 6] * rnd(seed);
}

Test(kern_host, q4_error_bound_on_random_rows)
{
    enum { R = 6 };
    uint64_t seed = 2024;
    for (size_t li = 0; li < sizeof q4_lens / sizeof q4_lens[0]; li++) {
        int n = q4_lens[li];
        size_t rb = kern_q4_row_bytes(n);
        float *x = malloc(sizeof(float) * R * n), *y = malloc(sizeof(float) * R * n);
        uint8_t *q = malloc(R * rb);
        q4_random_rows(x, R, n, &seed);
        memset(q, 0xff, R * rb);
        kern_q4_quantize_ref(q, x, R, n);
        kern_q4_dequant_ref(y, q, R, n);
        for (int r = 0; r < R; r++)
            for (int g0 = 0; g0 < n; g0 += 64) {
                int m = n - g0 < 64 ? n - g0 : 64;
                const float *xg = x + (size_t)r * n + g0, *yg = y + (size_t)r * n + g0;
                const uint8_t *blk = q + r * rb + (size_t)(g0 / 64) * 36;
                float mn = xg[0], mx = xg[0];
                for (int i = 1; i < m; i++) {
                    mn = fminf(mn, xg[i]);
                    mx = fmaxf(mx, xg[i]);
                }
                /* the fields: scale = fp16((mx - mn) / 15), min = fp16(mn) */
                cr_assert_eq(q4_u16(blk, 0), kern_f32_to_f16((mx - mn) / 15.0f),
                             "n %d row %d group %d: scale", n, r, g0 / 64);
                cr_assert_eq(q4_u16(blk, 2), kern_f32_to_f16(mn), "n %d row %d group %d: min", n, r, g0 / 64);
                float sr = kern_f16_to_f32(q4_u16(blk, 0)), mr = kern_f16_to_f32(q4_u16(blk, 2));
                cr_assert_gt(sr, 0.0f, "random groups are not constant");
                float bound = sr / 2 + 1e-6f * (fabsf(mr) + 15.0f * sr);
                float ymn = yg[0], ymx = yg[0];
                for (int i = 0; i < m; i++) {
                    float c = rintf((xg[i] - mr) / sr);
                    int want = c < 0.0f ? 0 : c > 15.0f ? 15 : (int)c;
                    cr_assert_eq(q4_code(blk, i), want, "n %d row %d value %d: code", n, r,
                                 g0 + i);
                    cr_assert_leq(fabsf(yg[i] - xg[i]), bound,
                                  "n %d row %d value %d: %g -> %g (scale %g)", n, r, g0 + i,
                                  xg[i], yg[i], sr);
                    ymn = fminf(ymn, yg[i]);
                    ymx = fmaxf(ymx, yg[i]);
                }
                cr_assert_leq(fabsf(ymn - mn), bound, "n %d row %d group %d: min %g -> %g", n,
                              r, g0 / 64, mn, ymn);
                cr_assert_leq(fabsf(ymx - mx), bound, "n %d row %d group %d: max %g -> %g", n,
                              r, g0 / 64, mx, ymx);
                for (int i = m; i < 64; i++)
                    cr_assert_eq(q4_code(blk, i), 0, "n %d row %d: padding code %d", n, r, i);
            }
        free(x); free(y); free(q);
    }
}

/* kern.h's text for one row, one value at a time in index order (min and
 * max by strict comparison: a NaN after the first value is passed over,
 * the first of -0 and +0 kept): what kern_q4_quantize_row must write
 * whatever SIMD it uses. */
static void q4_text_row(uint8_t *dst, const float *x, int n)
{
    memset(dst, 0, kern_q4_row_bytes(n));
    for (int g0 = 0; g0 < n; g0 += 64, dst += 36) {
        int m = n - g0 < 64 ? n - g0 : 64;
        const float *g = x + g0;
        float mn = g[0], mx = g[0];
        for (int i = 1; i < m; i++) {
            if (g[i] < mn)
                mn = g[i];
            if (g[i] > mx)
                mx = g[i];
        }
        uint16_t hs = kern_f32_to_f16((mx - mn) / 15.0f), hm = kern_f32_to_f16(mn);
        memcpy(dst, &hs, 2);
        memcpy(dst + 2, &hm, 2);
        float sc = kern_f16_to_f32(hs), mr = kern_f16_to_f32(hm);
        for (int i = 0; sc > 0.0f && i < m; i++) {
            float c = rintf((g[i] - mr) / sc);
            int q = c > 0.0f ? (c < 15.0f ? (int)c : 15) : 0;
            dst[4 + i / 2] |= (uint8_t)(q << (4 * (i & 1)));
        }
    }
}

/* Groups where the order of a scan shows: -0 and +0 both present as the
 * min or the max at lanes that a strided scan meets in another order, NaN
 * first or later, an infinity, constant groups, ties at .5 codes, short
 * groups; then random rows. The bytes must be the text's. */
Test(kern_host, q4_quantize_follows_the_text_in_every_group)
{
    enum { N = 64 * 12 + 36 };
    float x[N];
    uint64_t seed = 77;
    for (int i = 0; i < N; i++)
        x[i] = rnd(&seed);
    float *g = x;
    /* 0: min 0, +0 at 10 (lane 2) before -0 at 13 (lane 5), the rest positive */
    for (int i = 0; i < 64; i++)
        g[i] = 0.5f + 0.25f * (float)(i % 7);
    g[10] = 0.0f;
    g[13] = -0.0f;
    /* 1: the same with -0 first, at 9 (lane 1), +0 at 8 + 16 (lane 0, later) */
    g += 64;
    for (int i = 0; i < 64; i++)
        g[i] = 1.0f + (float)(i % 5);
    g[9] = -0.0f;
    g[24] = 0.0f;
    /* 2: max 0: every value negative but -0 at 3 and +0 at 2 + 32 */
    g += 64;
    for (int i = 0; i < 64; i++)
        g[i] = -1.0f - (float)(i % 3);
    g[3] = -0.0f;
    g[34] = 0.0f;
    /* 3: NaN first: every field and code follows from it */
    g += 64;
    g[0] = NAN;
    /* 4: NaN at 9 and 40: passed over */
    g += 64;
    g[9] = NAN;
    g[40] = -NAN;
    /* 5: +inf at 3: scale inf */
    g += 64;
    g[3] = INFINITY;
    /* 6: constant */
    g += 64;
    for (int i = 0; i < 64; i++)
        g[i] = 3.25f;
    /* 7: codes at exact halves (scale 1 from min 0 and max 15): ties to even */
    g += 64;
    for (int i = 0; i < 64; i++)
        g[i] = (float)(i % 16) + (i % 3 == 0 ? 0.5f : 0.0f);
    g[0] = 0.0f;
    g[1] = 15.0f;
    /* 8: all zeros of both signs, -0 first */
    g += 64;
    for (int i = 0; i < 64; i++)
        g[i] = i % 3 ? 0.0f : -0.0f;
    /* 9-11: random; the last, short group (36 values) random too */
    uint8_t got[kern_q4_row_bytes(N)], want[kern_q4_row_bytes(N)];
    memset(got, 0xff, sizeof got);
    kern_q4_quantize_row(got, x, N);
    q4_text_row(want, x, N);
    for (size_t b = 0; b < sizeof got; b++)
        cr_assert_eq(got[b], want[b], "group %zu byte %zu: %02x, the text gives %02x", b / 36,
                     b % 36, got[b], want[b]);
    /* the zeros' signs: group 0's min is +0 (first), group 1's and 8's -0 */
    cr_assert_eq(q4_u16(got, 2), 0x0000);
    cr_assert_eq(q4_u16(got + 36, 2), 0x8000);
    cr_assert_eq(q4_u16(got + 8 * 36, 2), 0x8000);
    /* kern_q4_quantize_ref over rows: the same bytes */
    uint8_t *rows = malloc(sizeof got);
    kern_q4_quantize_ref(rows, x, 1, N);
    cr_assert_eq(memcmp(rows, want, sizeof got), 0);
    free(rows);
}

Test(kern_host, q4_constant_groups_dequantize_to_their_min)
{
    /* row of 100: a random group, then 36 values 0.3 (fp16 0x34cd =
     * 0.300048828125); row of 64 values -1.5 (fp16 0xbe00); row of 64
     * alternating 1 and the next float (scale 2^-23 / 15 rounds to fp16 0:
     * all codes 0, value 1) */
    float a[100], b[64], c[64], y[100];
    uint64_t seed = 5;
    for (int i = 0; i < 64; i++) {
        a[i] = rnd(&seed);
        b[i] = -1.5f;
        c[i] = i & 1 ? nextafterf(1.0f, 2.0f) : 1.0f;
    }
    for (int i = 64; i < 100; i++)
        a[i] = 0.3f;
    uint8_t qa[72], qb[36], qc[36];
    memset(qa, 0xff, sizeof qa);
    memset(qb, 0xff, sizeof qb);
    memset(qc, 0xff, sizeof qc);
    kern_q4_quantize_row(qa, a, 100);
    kern_q4_quantize_row(qb, b, 64);
    kern_q4_quantize_row(qc, c, 64);
    const uint8_t *blk[3] = {qa + 36, qb, qc};
    const uint16_t min_bits[3] = {0x34cd, 0xbe00, 0x3c00};
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(q4_u16(blk[k], 0), 0, "case %d: scale %04x", k, q4_u16(blk[k], 0));
        cr_assert_eq(q4_u16(blk[k], 2), min_bits[k], "case %d: min %04x", k, q4_u16(blk[k], 2));
        for (int i = 4; i < 36; i++)
            cr_assert_eq(blk[k][i], 0, "case %d: code byte %d = %02x", k, i, blk[k][i]);
    }
    kern_q4_dequant_row(y, qa, 100);
    for (int i = 64; i < 100; i++)
        cr_assert_eq(y[i], 0.300048828125f, "value %d: %.9g", i, y[i]);
    kern_q4_dequant_row(y, qb, 64);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(y[i], -1.5f, "value %d: %g", i, y[i]);
    kern_q4_dequant_row(y, qc, 64);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(y[i], 1.0f, "value %d: %.9g", i, y[i]);
}

Test(kern_host, q4_h16_quantizes_like_ref_on_the_same_values)
{
    enum { R = 7 };
    uint64_t seed = 99;
    for (size_t li = 0; li < sizeof q4_lens / sizeof q4_lens[0]; li++) {
        int n = q4_lens[li];
        size_t rb = kern_q4_row_bytes(n);
        float *x = malloc(sizeof(float) * R * n);
        uint16_t *h = malloc(sizeof(uint16_t) * R * n);
        uint8_t *qh = malloc(R * rb), *qf = malloc(R * rb);
        q4_random_rows(x, R, n, &seed);
        for (int i = 0; i < n; i++)
            x[(size_t)6 * n + i] = 0.3f; /* a constant row too */
        for (size_t i = 0; i < (size_t)R * n; i++) {
            h[i] = kern_f32_to_f16(x[i]);
            x[i] = kern_f16_to_f32(h[i]);
        }
        memset(qh, 0xff, R * rb);
        memset(qf, 0xff, R * rb);
        kern_q4_quantize_h16(qh, h, R, n);
        kern_q4_quantize_ref(qf, x, R, n);
        for (size_t i = 0; i < R * rb; i++)
            cr_assert_eq(qh[i], qf[i], "n %d: byte %zu (row %zu): %02x != %02x", n, i, i / rb,
                         qh[i], qf[i]);
        free(x); free(h); free(qh); free(qf);
    }
}

Test(kern_host, q4_rows_equal_row_by_row)
{
    enum { R = 9 };
    uint64_t seed = 4;
    for (size_t li = 0; li < sizeof q4_lens / sizeof q4_lens[0]; li++) {
        int n = q4_lens[li];
        size_t rb = kern_q4_row_bytes(n);
        float *x = malloc(sizeof(float) * R * n), *ya = malloc(sizeof(float) * R * n),
              *yb = malloc(sizeof(float) * R * n);
        uint8_t *qa = malloc(R * rb), *qb = malloc(R * rb);
        q4_random_rows(x, R, n, &seed);
        memset(qa, 0xff, R * rb);
        memset(qb, 0x00, R * rb);
        kern_q4_quantize_ref(qa, x, R, n);
        for (int r = 0; r < R; r++)
            kern_q4_quantize_row(qb + r * rb, x + (size_t)r * n, n);
        cr_assert_eq(memcmp(qa, qb, R * rb), 0, "n %d: quantize_ref != quantize_row", n);
        for (size_t i = 0; i < (size_t)R * n; i++) {
            ya[i] = -7.0f;
            yb[i] = 7.0f;
        }
        kern_q4_dequant_ref(ya, qa, R, n);
        for (int r = 0; r < R; r++)
            kern_q4_dequant_row(yb + (size_t)r * n, qa + r * rb, n);
        cr_assert_eq(memcmp(ya, yb, sizeof(float) * R * n), 0,
                     "n %d: dequant_ref != dequant_row", n);
        for (size_t i = 0; i < (size_t)R * n; i++)
            yb[i] = 7.0f;
        kern_q4_dequant_par(yb, qa, R, n);
        cr_assert_eq(memcmp(ya, yb, sizeof(float) * R * n), 0,
                     "n %d: dequant_ref != dequant_par", n);
        free(x); free(ya); free(yb); free(qa); free(qb);
    }
}

/* Any bytes, not only what the quantizer writes: every fp16 scale and min
 * (negative, subnormal, infinite, NaN) and every code. The production
 * expansion (SIMD where built with AVX2) gives the reference's bits, or NaN
 * where the reference gives NaN (which NaN is the hardware's choice). Rows
 * of 2 048 values and enough of them that _par runs on several threads. */
Test(kern_host, q4_dequant_par_equals_ref_on_any_bytes)
{
    static const int lens[] = {64, 2048, 2048 + 37, 1};
    enum { R = 48 };
    uint64_t seed = 77;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        size_t rb = kern_q4_row_bytes(n);
        uint8_t *q = malloc(R * rb);
        float *ya = malloc(sizeof(float) * R * n), *yb = malloc(sizeof(float) * R * n);
        for (size_t i = 0; i < R * rb; i++)
            q[i] = (uint8_t)(rnd_u32(&seed) >> 24);
        /* some groups with the special fields themselves */
        static const uint16_t special[] = {0x7c00, 0xfc00, 0x7e01, 0x0001, 0x8001, 0x0000,
                                           0x8000, 0x7bff, 0xfbff};
        for (size_t g = 0; g < R * rb / 36; g += 3) {
            uint16_t a = special[rnd_u32(&seed) % 9], b = special[rnd_u32(&seed) % 9];
            memcpy(q + g * 36, &a, 2);
            memcpy(q + g * 36 + 2, &b, 2);
        }
        kern_q4_dequant_ref(ya, q, R, n);
        kern_q4_dequant_par(yb, q, R, n);
        long nan = 0;
        for (size_t i = 0; i < (size_t)R * n; i++) {
            nan += isnan(ya[i]);
            cr_assert(isnan(ya[i]) ? isnan(yb[i]) : memcmp(&ya[i], &yb[i], 4) == 0,
                      "n %d value %zu: reference %a, production %a", n, i, ya[i], yb[i]);
        }
        cr_assert(n == 1 || nan > 0, "n %d: the cases hold NaN fields", n);
        free(q); free(ya); free(yb);
    }
}

/* The fused 4-bit linear (kern_linear_rows_q4, the backend's linear_q4)
 * against its definition: the matrix expanded by the reference
 * (kern_q4_dequant_ref), then kern_linear_rows / the backend's linear, bit
 * for bit. Shapes: n with a tail of 1-3 rows, n too small for a chunk per
 * thread, k with a short 4-bit group and a tail past the 16 lanes, k of
 * several of the SIMD kernel's 512-value passes ending on a short group,
 * m of 1 up to past KERN_LINEAR_ROWS_MAX (sgemm's side), m of a decode
 * block of 16 (five blocks of three rows and one of one); bias and ReLU. */
Test(kern_host, linear_q4_equals_expand_then_linear)
{
    static const int shapes[][3] = {{1, 64, 64},    {3, 7, 100},   {2, 130, 71},
                                    {24, 96, 1024}, {KERN_LINEAR_ROWS_MAX, 9, 192},
                                    {KERN_LINEAR_ROWS_MAX + 5, 40, 130},
                                    {16, 40, 1100}, {7, 33, 2100}};
    uint64_t seed = 13;
    backend be;
    cr_assert_eq(backend_cpu_create(2, &be), 0, "%s", err_msg());
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int m = shapes[c][0], n = shapes[c][1], k = shapes[c][2];
        size_t rb = kern_q4_row_bytes(k);
        float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
        float *ws = malloc(sizeof(float) * n * k), *b = malloc(sizeof(float) * n);
        float *ya = malloc(sizeof(float) * m * n), *yb = malloc(sizeof(float) * m * n);
        uint8_t *wq = malloc(n * rb);
        for (int i = 0; i < m * k; i++)
            x[i] = rnd(&seed);
        q4_random_rows(w, n, k, &seed);
        for (int j = 0; j < n; j++)
            b[j] = rnd(&seed);
        kern_q4_quantize_ref(wq, w, (size_t)n, k);
        kern_q4_dequant_ref(w, wq, (size_t)n, k); /* w: the expanded matrix */
        if (m <= KERN_LINEAR_ROWS_MAX) {
            kern_linear_rows(ya, x, w, m, n, k);
            for (int i = 0; i < n * k; i++)
                ws[i] = NAN; /* the scratch carries nothing in */
            kern_linear_rows_q4(yb, x, wq, m, n, k, ws);
            cr_assert_eq(memcmp(ya, yb, sizeof(float) * m * n), 0,
                         "m %d n %d k %d: kern_linear_rows_q4 differs", m, n, k);
        }
        for (int relu = 0; relu < 2; relu++) {
            cr_assert_eq(be.ops->linear(be.ctx, ya, x, w, relu ? b : NULL, m, n, k, relu), 0);
            cr_assert_eq(be.ops->linear_q4(be.ctx, yb, x, wq, relu ? b : NULL, m, n, k, relu,
                                           ws), 0, "%s", err_msg());
            cr_assert_eq(memcmp(ya, yb, sizeof(float) * m * n), 0,
                         "m %d n %d k %d relu %d: linear_q4 differs from linear", m, n, k, relu);
        }
        free(x), free(w), free(ws), free(b), free(ya), free(yb), free(wq);
    }
    backend_destroy(&be);
}

/* The fused 16-bit linear (kern_linear_rows_h16, the backend's
 * linear_h16) against widen (kern_widen_ref) then linear, bit for bit,
 * fp16 and bf16, over the shapes of the 4-bit test. */
Test(kern_host, linear_h16_equals_widen_then_linear)
{
    static const int shapes[][3] = {{1, 64, 64},    {3, 7, 100},   {2, 130, 71},
                                    {24, 96, 1024}, {KERN_LINEAR_ROWS_MAX, 9, 192},
                                    {KERN_LINEAR_ROWS_MAX + 5, 40, 130},
                                    {16, 40, 1100}, {7, 33, 2100}};
    uint64_t seed = 17;
    backend be;
    cr_assert_eq(backend_cpu_create(2, &be), 0, "%s", err_msg());
    for (int fmt = KERN_H16_F16; fmt <= KERN_H16_BF16; fmt++)
        for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
            int m = shapes[c][0], n = shapes[c][1], k = shapes[c][2];
            float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
            float *ws = malloc(sizeof(float) * n * k), *b = malloc(sizeof(float) * n);
            float *ya = malloc(sizeof(float) * m * n), *yb = malloc(sizeof(float) * m * n);
            uint16_t *wh = malloc(sizeof(uint16_t) * n * k);
            for (int i = 0; i < m * k; i++)
                x[i] = rnd(&seed);
            for (int i = 0; i < n * k; i++)
                wh[i] = (uint16_t)(rnd_u32(&seed) & 0x3fff); /* finite, both formats */
            for (int j = 0; j < n; j++)
                b[j] = rnd(&seed);
            kern_widen_ref(w, wh, (size_t)n * k, (kern_h16)fmt);
            if (m <= KERN_LINEAR_ROWS_MAX) {
                kern_linear_rows(ya, x, w, m, n, k);
                for (int i = 0; i < n * k; i++)
                    ws[i] = NAN;
                kern_linear_rows_h16(yb, x, wh, (kern_h16)fmt, m, n, k, ws);
                cr_assert_eq(memcmp(ya, yb, sizeof(float) * m * n), 0,
                             "fmt %d m %d n %d k %d: kern_linear_rows_h16 differs", fmt, m, n, k);
            }
            for (int relu = 0; relu < 2; relu++) {
                cr_assert_eq(be.ops->linear(be.ctx, ya, x, w, relu ? b : NULL, m, n, k, relu), 0);
                cr_assert_eq(be.ops->linear_h16(be.ctx, yb, x, wh, (kern_h16)fmt,
                                                relu ? b : NULL, m, n, k, relu, ws), 0, "%s",
                             err_msg());
                cr_assert_eq(memcmp(ya, yb, sizeof(float) * m * n), 0,
                             "fmt %d m %d n %d k %d relu %d: linear_h16 differs from linear", fmt,
                             m, n, k, relu);
            }
            free(x), free(w), free(ws), free(b), free(ya), free(yb), free(wh);
        }
    cr_assert_eq(be.ops->linear_h16(be.ctx, NULL, NULL, NULL, (kern_h16)3, NULL, 1, 1, 1, 0,
                                    NULL), -EINVAL, "an unknown format is refused");
    backend_destroy(&be);
}

/* Every slot of a 4-bit cache of `slots` rows of hd values: a quantized
 * random row. */
static void q4_fill_cache(uint8_t *c, size_t slots, int hd, uint64_t *seed)
{
    float row[1024];
    size_t rb = kern_q4_row_bytes(hd);
    for (size_t i = 0; i < slots; i++) {
        for (int e = 0; e < hd; e++)
            row[e] = rnd(seed);
        kern_q4_quantize_row(c + i * rb, row, hd);
    }
}

/* Decode steps over random 4-bit caches: sequence 0 full (budget = cap,
 * evicting every step), sequence 1 with free slots that fills up and then
 * evicts, sequence 2 idle (n_new 0). Each step compares kern_attn_decode_q4
 * and kern_kv_insert_q4 with the fp32 ops on the dequantized caches; every
 * third step runs without scores / self_p (window eviction). */
static void q4_decode_insert_case(int HD)
{
    enum { NS = 3, H = 2, CAP = 10, STEPS = 6 };
    const int d = H * HD, ld = 3 * d;
    const size_t slots = (size_t)NS * H * CAP, rb = kern_q4_row_bytes(HD);
    const float scale = 1.0f / sqrtf((float)HD);
    uint64_t seed = 1000 + (uint64_t)HD;
    const int n_past[NS] = {25, 4, 6}, budget[NS] = {CAP, 7, 6};
    const int sinks[NS] = {2, 1, 1}, recent[NS] = {3, 2, 2};
    kern_seq sq[NS];
    for (int s = 0; s < NS; s++)
        sq[s] = (kern_seq){.row = s, .n_new = s == 2 ? 0 : 1, .n_past = n_past[s],
                           .n_slots = n_past[s] < budget[s] ? n_past[s] : budget[s],
                           .budget = budget[s], .sinks = sinks[s], .recent = recent[s]};

    uint8_t *kq = malloc(slots * rb), *vq = malloc(slots * rb);
    uint8_t *kx = malloc(slots * rb), *vx = malloc(slots * rb); /* expected */
    float *kf = malloc(sizeof(float) * slots * HD), *vf = malloc(sizeof(float) * slots * HD);
    float *sf = malloc(sizeof(float) * slots), *sqs = malloc(sizeof(float) * slots);
    int32_t *pf = malloc(sizeof(int32_t) * slots), *pq = malloc(sizeof(int32_t) * slots);
    q4_fill_cache(kq, slots, HD, &seed);
    q4_fill_cache(vq, slots, HD, &seed);
    for (size_t i = 0; i < slots; i++) {
        sf[i] = (float)((i * 5) % 7) * 0.125f; /* ties included */
        pf[i] = -1;
    }
    /* the slots in use hold distinct earlier positions, in shuffled order */
    for (int s = 0; s < NS; s++)
        for (int h = 0; h < H; h++) {
            int perm[64];
            for (int j = 0; j < n_past[s]; j++)
                perm[j] = j;
            for (int j = n_past[s] - 1; j > 0; j--) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                int o = (int)((seed >> 33) % (uint64_t)(j + 1)), t = perm[j];
                perm[j] = perm[o];
                perm[o] = t;
            }
            for (int t = 0; t < sq[s].n_slots; t++)
                pf[((size_t)s * H + h) * CAP + t] = perm[t];
        }
    memcpy(sqs, sf, sizeof(float) * slots);
    memcpy(pq, pf, sizeof(int32_t) * slots);

    float *row = malloc(sizeof(float) * NS * ld);
    float *of = malloc(sizeof(float) * NS * d), *oq = malloc(sizeof(float) * NS * d);
    float self_f[NS * H], self_q[NS * H];
    int32_t ev_f[NS * H], ev_q[NS * H];
    int evictions = 0, appends = 0;
    for (int step = 0; step < STEPS; step++) {
        int with_scores = step % 3 != 2;
        for (int i = 0; i < NS * ld; i++)
            row[i] = rnd(&seed);
        kern_q4_dequant_ref(kf, kq, slots, HD);
        kern_q4_dequant_ref(vf, vq, slots, HD);
        for (int i = 0; i < NS * d; i++)
            of[i] = oq[i] = 12345.0f;
        for (int i = 0; i < NS * H; i++) {
            self_f[i] = self_q[i] = -1.0f;
            ev_f[i] = ev_q[i] = -9;
        }
        kern_attn_decode_ref(of, d, row, row + d, row + 2 * d, ld, kf, vf, sq, NS, H, H, HD, CAP,
                             scale, with_scores ? sf : NULL, with_scores ? self_f : NULL,
                             KERN_WS(CAP));
        kern_attn_decode_q4(oq, d, row, row + d, row + 2 * d, ld, kq, vq, sq, NS, H, H, HD, CAP,
                            scale, with_scores ? sqs : NULL, with_scores ? self_q : NULL,
                            KERN_WS(CAP));
        cr_assert_eq(memcmp(of, oq, sizeof(float) * NS * d), 0, "hd %d step %d: output", HD,
                     step);
        cr_assert_eq(memcmp(sf, sqs, sizeof(float) * slots), 0, "hd %d step %d: scores", HD,
                     step);
        cr_assert_eq(memcmp(self_f, self_q, sizeof self_f), 0, "hd %d step %d: self_p", HD,
                     step);

        memcpy(kx, kq, slots * rb);
        memcpy(vx, vq, slots * rb);
        kern_kv_insert_ref(kf, vf, with_scores ? sf : NULL, pf, row + d, row + 2 * d, ld,
                           with_scores ? self_f : NULL, sq, NS, H, H, HD, CAP, ev_f);
        kern_kv_insert_q4(kq, vq, with_scores ? sqs : NULL, pq, row + d, row + 2 * d, ld,
                          with_scores ? self_q : NULL, sq, NS, H, H, HD, CAP, ev_q);
        cr_assert_eq(memcmp(pf, pq, sizeof(int32_t) * slots), 0, "hd %d step %d: positions", HD,
                     step);
        cr_assert_eq(memcmp(sf, sqs, sizeof(float) * slots), 0, "hd %d step %d: scores", HD,
                     step);
        cr_assert_eq(memcmp(ev_f, ev_q, sizeof ev_f), 0, "hd %d step %d: evictions", HD, step);
        /* expected caches: the old bytes, with the slot the reference wrote
         * (the one now holding position n_past) = the quantized new row */
        for (int s = 0; s < NS; s++) {
            if (sq[s].n_new == 0)
                continue;
            for (int h = 0; h < H; h++) {
                size_t base = ((size_t)s * H + h) * CAP;
                int slot = -1;
                for (int t = 0; t < CAP; t++)
                    if (pf[base + t] == sq[s].n_past) {
                        cr_assert_eq(slot, -1, "hd %d step %d: position twice", HD, step);
                        slot = t;
                    }
                cr_assert_geq(slot, 0, "hd %d step %d: new token not stored", HD, step);
                size_t src = (size_t)sq[s].row * ld + (size_t)h * HD;
                kern_q4_quantize_row(kx + (base + slot) * rb, row + d + src, HD);
                kern_q4_quantize_row(vx + (base + slot) * rb, row + 2 * d + src, HD);
                evictions += ev_f[s * H + h] >= 0;
                appends += ev_f[s * H + h] < 0;
            }
        }
        for (size_t i = 0; i < slots * rb; i++) {
            cr_assert_eq(kq[i], kx[i], "hd %d step %d: K byte %zu (slot %zu)", HD, step, i,
                         i / rb);
            cr_assert_eq(vq[i], vx[i], "hd %d step %d: V byte %zu (slot %zu)", HD, step, i,
                         i / rb);
        }
        for (int s = 0; s < NS; s++)
            if (sq[s].n_new) {
                sq[s].n_slots = sq[s].n_slots + 1 < sq[s].budget ? sq[s].n_slots + 1
                                                                 : sq[s].budget;
                sq[s].n_past++;
            }
    }
    cr_assert_gt(evictions, 0, "hd %d: the test must reach evictions", HD);
    cr_assert_gt(appends, 0, "hd %d: the test must fill free slots", HD);
    free(kq); free(vq); free(kx); free(vx); free(kf); free(vf); free(sf); free(sqs);
    free(pf); free(pq); free(row); free(of); free(oq);
}

Test(kern_host, q4_decode_and_insert_equal_the_reference_on_dequantized_caches)
{
    q4_decode_insert_case(64);  /* one full group per row */
    q4_decode_insert_case(48);  /* one short group */
    q4_decode_insert_case(100); /* a full and a short group */
}

/* Prefill of three prompts: 14 tokens over budget 8 (H2O keep-selection),
 * 5 tokens within budget 7, and an idle sequence; with colsum, and without
 * (all scores equal: the newest are kept). */
static void q4_prefill_case(int HD, int with_colsum)
{
    enum { NS = 3, H = 2, CAP = 10 };
    const int d = H * HD, ld = 3 * d;
    const size_t slots = (size_t)NS * H * CAP, rb = kern_q4_row_bytes(HD);
    uint64_t seed = 77 + (uint64_t)HD;
    const int lens[NS] = {14, 5, 0}, budget[NS] = {8, 7, 6};
    const int sinks[NS] = {2, 1, 1}, recent[NS] = {3, 2, 2};
    kern_seq sq[NS];
    int rows = 0;
    for (int s = 0; s < NS; rows += lens[s], s++)
        sq[s] = (kern_seq){.row = rows, .n_new = lens[s], .n_past = 0, .n_slots = 0,
                           .budget = budget[s], .sinks = sinks[s], .recent = recent[s]};
    float *qkv = malloc(sizeof(float) * (size_t)rows * ld);
    for (int i = 0; i < rows * ld; i++)
        qkv[i] = rnd(&seed);
    float *colsum = malloc(sizeof(float) * (size_t)rows * H);
    for (int i = 0; i < rows * H; i++)
        colsum[i] = (float)((i * 37) % 11) * 0.25f; /* ties included */
    const float *cs = with_colsum ? colsum : NULL;

    uint8_t *kq = malloc(slots * rb), *vq = malloc(slots * rb);
    uint8_t *kx = malloc(slots * rb), *vx = malloc(slots * rb);
    float *kf = calloc(slots * HD, sizeof(float)), *vf = calloc(slots * HD, sizeof(float));
    float *sf = malloc(sizeof(float) * slots), *sqs = malloc(sizeof(float) * slots);
    int32_t *pf = malloc(sizeof(int32_t) * slots), *pq = malloc(sizeof(int32_t) * slots);
    memset(kq, 0xa5, slots * rb);
    memset(vq, 0x5a, slots * rb);
    memcpy(kx, kq, slots * rb);
    memcpy(vx, vq, slots * rb);
    for (size_t i = 0; i < slots; i++) {
        sf[i] = sqs[i] = -3.0f;
        pf[i] = pq[i] = -5;
    }
    kern_kv_prefill_ref(kf, vf, sf, pf, qkv + d, qkv + 2 * d, ld, cs, sq, NS, H, H, HD, CAP,
                        KERN_WS(rows));
    kern_kv_prefill_q4(kq, vq, sqs, pq, qkv + d, qkv + 2 * d, ld, cs, sq, NS, H, H, HD, CAP,
                       KERN_WS(rows));
    cr_assert_eq(memcmp(pf, pq, sizeof(int32_t) * slots), 0, "hd %d colsum %d: positions", HD,
                 with_colsum);
    cr_assert_eq(memcmp(sf, sqs, sizeof(float) * slots), 0, "hd %d colsum %d: scores", HD,
                 with_colsum);
    int selected = 0;
    for (int s = 0; s < NS; s++)
        for (int h = 0; h < H; h++) {
            size_t base = ((size_t)s * H + h) * CAP;
            int kept = lens[s] < budget[s] ? lens[s] : budget[s];
            for (int t = 0; t < kept; t++) {
                int j = pf[base + t];
                cr_assert(j >= 0 && j < lens[s], "hd %d: seq %d slot %d position %d", HD, s, t, j);
                selected += j != t; /* a token dropped before this one */
                size_t src = (size_t)(sq[s].row + j) * ld + (size_t)h * HD;
                kern_q4_quantize_row(kx + (base + t) * rb, qkv + d + src, HD);
                kern_q4_quantize_row(vx + (base + t) * rb, qkv + 2 * d + src, HD);
            }
        }
    cr_assert_gt(selected, 0, "hd %d: the test must use the keep-selection", HD);
    for (size_t i = 0; i < slots * rb; i++) {
        cr_assert_eq(kq[i], kx[i], "hd %d colsum %d: K byte %zu (slot %zu)", HD, with_colsum, i,
                     i / rb);
        cr_assert_eq(vq[i], vx[i], "hd %d colsum %d: V byte %zu (slot %zu)", HD, with_colsum, i,
                     i / rb);
    }
    free(qkv); free(colsum); free(kq); free(vq); free(kx); free(vx); free(kf); free(vf);
    free(sf); free(sqs); free(pf); free(pq);
}

Test(kern_host, q4_prefill_equals_the_reference_and_stores_the_kept_rows)
{
    for (int c = 0; c <= 1; c++) {
        q4_prefill_case(64, c);
        q4_prefill_case(48, c);
        q4_prefill_case(100, c);
    }
}

/* ------------------------------------------- grouped-query attention + H2O
 * DESIGN.md "H2O with grouped-query attention", re-implemented here in
 * double precision from the text alone: per (sequence, KV head) a set of
 * present token positions, each with one score = the sum, over the query
 * heads of the KV head's group, of the probability each gave it (each
 * query head's softmax over the present tokens normalised on its own).
 * Prefill keeps the first sinks, the last recent and the heavy highest of
 * the rest (ties keep the newer); each decode step attends over the
 * present set plus the new token and, at B + 1 tokens, evicts the lowest
 * score that is neither a sink nor among the recent newest, ties evicting
 * the older. The CPU backend's ops (8 query heads over 2 KV heads,
 * head_dim 16, two sequences of budgets below their prompts) must keep the
 * same positions, hold the same scores, evict the same positions and give
 * the same attention outputs. */
enum { GQ_H = 8, GQ_KVH = 2, GQ_HD = 16, GQ_NS = 2, GQ_CAP = 8, GQ_STEPS = 7,
       GQ_LD = (GQ_H + 2 * GQ_KVH) * GQ_HD, GQ_MAXT = 32 };

typedef struct gq_ref {
    double k[GQ_MAXT][GQ_KVH][GQ_HD], v[GQ_MAXT][GQ_KVH][GQ_HD];
    int present[GQ_KVH][GQ_MAXT];
    double score[GQ_KVH][GQ_MAXT];
} gq_ref;

/* Attention of query row qr (all heads) at position t over the present
 * tokens of each KV head (t itself included), scores accumulated; out
 * (GQ_H * GQ_HD). */
static void gq_attend(gq_ref *r, const float *qr, int t, double scale, double *out)
{
    const int group = GQ_H / GQ_KVH;
    for (int h = 0; h < GQ_H; h++) {
        int g = h / group;
        double p[GQ_MAXT], mx = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++) {
            if (!r->present[g][j])
                continue;
            double s = 0;
            for (int e = 0; e < GQ_HD; e++)
                s += (double)qr[h * GQ_HD + e] * r->k[j][g][e];
            p[j] = s * scale;
            mx = p[j] > mx ? p[j] : mx;
        }
        for (int j = 0; j <= t; j++)
            if (r->present[g][j])
                sum += p[j] = exp(p[j] - mx);
        for (int e = 0; e < GQ_HD; e++)
            out[h * GQ_HD + e] = 0;
        for (int j = 0; j <= t; j++) {
            if (!r->present[g][j])
                continue;
            p[j] /= sum;
            r->score[g][j] += p[j];
            for (int e = 0; e < GQ_HD; e++)
                out[h * GQ_HD + e] += p[j] * r->v[j][g][e];
        }
    }
}

static void gq_store(gq_ref *r, const float *row, int t)
{
    for (int g = 0; g < GQ_KVH; g++)
        for (int e = 0; e < GQ_HD; e++) {
            r->k[t][g][e] = row[GQ_H * GQ_HD + g * GQ_HD + e];
            r->v[t][g][e] = row[(GQ_H + GQ_KVH) * GQ_HD + g * GQ_HD + e];
        }
}

/* The kernel's cache of (sequence s, KV head g) against the reference:
 * the same positions present, each slot's score within tolerance. */
static void gq_check_cache(const gq_ref *r, const int32_t *pos, const float *sc, int s, int g,
                           int n_slots, int newest, const char *when)
{
    int seen[GQ_MAXT] = {0}, n_present = 0;
    for (int j = 0; j <= newest; j++)
        n_present += r->present[g][j];
    cr_assert_eq(n_slots, n_present, "%s: seq %d KV head %d holds %d slots, the reference %d",
                 when, s, g, n_slots, n_present);
    for (int i = 0; i < n_slots; i++) {
        int32_t p = pos[((size_t)s * GQ_KVH + g) * GQ_CAP + i];
        cr_assert(p >= 0 && p <= newest && r->present[g][p] && !seen[p],
                  "%s: seq %d KV head %d slot %d holds position %d, which the reference does "
                  "not keep", when, s, g, i, p);
        seen[p] = 1;
        double want = r->score[g][p], got = sc[((size_t)s * GQ_KVH + g) * GQ_CAP + i];
        cr_assert(fabs(got - want) <= 1e-5 * (1 + fabs(want)),
                  "%s: seq %d KV head %d position %d: score %.9g, reference %.9g", when, s, g, p,
                  got, want);
    }
}

static void gq_check_out(const float *o, const double *want, int s, const char *when)
{
    for (int i = 0; i < GQ_H * GQ_HD; i++)
        cr_assert(fabs(o[i] - want[i]) <= 1e-5 * (1 + fabs(want[i])),
                  "%s: seq %d head %d element %d: %.9g, reference %.9g", when, s, i / GQ_HD,
                  i % GQ_HD, o[i], want[i]);
}

Test(kern_host, gqa_h2o_matches_a_double_reference_of_the_design_text)
{
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    const backend_ops *o = be.ops;
    const int len[GQ_NS] = {12, 9}, budget[GQ_NS] = {6, 5}, sinks[GQ_NS] = {1, 0};
    const int d = GQ_H * GQ_HD;
    const float scale = 0.25f;
    static gq_ref ref[GQ_NS];
    memset(ref, 0, sizeof ref);
    kern_seq sq[GQ_NS];
    int rows = 0;
    for (int s = 0; s < GQ_NS; s++) {
        int heavy = (int)((budget[s] - sinks[s]) * 0.5); /* hh_share 0.5 */
        sq[s] = (kern_seq){.row = rows, .n_new = len[s], .budget = budget[s],
                           .sinks = sinks[s], .recent = budget[s] - sinks[s] - heavy};
        rows += len[s];
    }
    uint64_t seed = 12;
    float *qkv = malloc(sizeof(float) * rows * GQ_LD), *out = malloc(sizeof(float) * rows * d);
    float *colsum = malloc(sizeof(float) * rows * GQ_KVH);
    float kc[GQ_NS * GQ_KVH * GQ_CAP * GQ_HD], vc[GQ_NS * GQ_KVH * GQ_CAP * GQ_HD];
    float sc[GQ_NS * GQ_KVH * GQ_CAP], self[GQ_NS * GQ_KVH];
    int32_t pos[GQ_NS * GQ_KVH * GQ_CAP], ev[GQ_NS * GQ_KVH];
    cr_assert(qkv && out && colsum);
    for (int i = 0; i < rows * GQ_LD; i++)
        qkv[i] = 2 * rnd(&seed);
    const float *k = qkv + d, *v = k + GQ_KVH * GQ_HD;

    /* a group that does not divide the heads is refused */
    cr_assert_eq(o->attn_prefill(be.ctx, out, d, qkv, k, v, GQ_LD, sq, GQ_NS, GQ_H, 3, GQ_HD,
                                 scale, colsum), -EINVAL);

    /* prefill */
    cr_assert_eq(o->attn_prefill(be.ctx, out, d, qkv, k, v, GQ_LD, sq, GQ_NS, GQ_H, GQ_KVH,
                                 GQ_HD, scale, colsum), 0, "%s", err_msg());
    cr_assert_eq(o->kv_prefill(be.ctx, KERN_KV_FMT_PLAIN, kc, vc, sc, pos, k, v, GQ_LD, colsum,
                               sq, GQ_NS, GQ_H, GQ_KVH, GQ_HD, GQ_CAP), 0, "%s", err_msg());
    int dropped = 0, heads_differ = 0;
    for (int s = 0; s < GQ_NS; s++) {
        gq_ref *r = &ref[s];
        int n = len[s];
        for (int t = 0; t < n; t++) {
            const float *row = qkv + (size_t)(sq[s].row + t) * GQ_LD;
            gq_store(r, row, t);
            for (int g = 0; g < GQ_KVH; g++)
                r->present[g][t] = 1; /* exact causal attention over the whole prompt */
            double want[GQ_H * GQ_HD];
            gq_attend(r, row, t, scale, want);
            gq_check_out(out + (size_t)(sq[s].row + t) * d, want, s, "prefill");
        }
        for (int g = 0; g < GQ_KVH; g++) {
            /* the column sums, per KV head */
            for (int t = 0; t < n; t++) {
                double want = r->score[g][t], got = colsum[(size_t)(sq[s].row + t) * GQ_KVH + g];
                cr_assert(fabs(got - want) <= 1e-5 * (1 + want), "prefill colsum seq %d KV "
                          "head %d token %d: %.9g, reference %.9g", s, g, t, got, want);
            }
            /* keep the first sinks, the last recent, the heavy highest of the rest */
            int B = budget[s], rec = sq[s].recent, heavy = B - sinks[s] - rec;
            int keep[GQ_MAXT];
            for (int t = 0; t < n; t++)
                keep[t] = t < sinks[s] || t >= n - rec;
            for (int taken = 0; taken < heavy; taken++) {
                int best = -1;
                for (int t = sinks[s]; t < n - rec; t++)
                    if (!keep[t] && (best < 0 || r->score[g][t] >= r->score[g][best]))
                        best = t; /* ties keep the newer token */
                keep[best] = 1;
            }
            for (int t = 0; t < n; t++) {
                r->present[g][t] = keep[t];
                dropped += !keep[t];
            }
            gq_check_cache(r, pos, sc, s, g, B, n - 1, "prefill");
        }
        heads_differ += memcmp(r->present[0], r->present[1], sizeof r->present[0]) != 0;
        sq[s].n_past = n;
        sq[s].n_slots = budget[s];
    }
    cr_assert_gt(dropped, 0);

    /* decode steps: one new row per sequence */
    float step_qkv[GQ_NS * GQ_LD], step_out[GQ_NS * d];
    int evictions = 0;
    const float *sk = step_qkv + d, *sv = sk + GQ_KVH * GQ_HD;
    for (int step = 0; step < GQ_STEPS; step++) {
        char when[32];
        snprintf(when, sizeof when, "decode step %d", step + 1);
        for (int i = 0; i < GQ_NS * GQ_LD; i++)
            step_qkv[i] = 2 * rnd(&seed);
        for (int s = 0; s < GQ_NS; s++) {
            sq[s].row = s;
            sq[s].n_new = 1;
        }
        cr_assert_eq(o->attn_decode(be.ctx, step_out, d, step_qkv, sk, sv, GQ_LD,
                                    KERN_KV_FMT_PLAIN, kc, vc, sq, GQ_NS, GQ_H, GQ_KVH, GQ_HD,
                                    GQ_CAP, scale, sc, self), 0, "%s", err_msg());
        cr_assert_eq(o->kv_insert(be.ctx, KERN_KV_FMT_PLAIN, kc, vc, sc, pos, sk, sv, GQ_LD, self,
                                  sq, GQ_NS, GQ_H, GQ_KVH, GQ_HD, GQ_CAP, ev), 0, "%s",
                     err_msg());
        for (int s = 0; s < GQ_NS; s++) {
            gq_ref *r = &ref[s];
            int t = sq[s].n_past;
            const float *row = step_qkv + (size_t)s * GQ_LD;
            gq_store(r, row, t);
            for (int g = 0; g < GQ_KVH; g++)
                r->present[g][t] = 1;
            double want[GQ_H * GQ_HD];
            gq_attend(r, row, t, scale, want);
            gq_check_out(step_out + (size_t)s * d, want, s, when);
            for (int g = 0; g < GQ_KVH; g++) {
                double self_want = r->score[g][t];
                cr_assert(fabs(self[s * GQ_KVH + g] - self_want) <= 1e-5,
                          "%s: seq %d KV head %d self_p %.9g, reference %.9g", when, s, g,
                          self[s * GQ_KVH + g], self_want);
                int n_present = 0, victim = -1;
                for (int j = 0; j <= t; j++)
                    n_present += r->present[g][j];
                if (n_present == budget[s] + 1) {
                    for (int j = 0; j <= t; j++) {
                        if (!r->present[g][j] || j < sinks[s] || j > t - sq[s].recent)
                            continue;
                        if (victim < 0 || r->score[g][j] < r->score[g][victim])
                            victim = j; /* ascending j: ties evict the older */
                    }
                    cr_assert_geq(victim, 0);
                    r->present[g][victim] = 0;
                    evictions++;
                }
                cr_assert_eq(ev[s * GQ_KVH + g], victim, "%s: seq %d KV head %d evicted %d, "
                             "the reference %d", when, s, g, ev[s * GQ_KVH + g], victim);
                gq_check_cache(r, pos, sc, s, g, budget[s], t, when);
            }
            heads_differ += memcmp(r->present[0], r->present[1], sizeof r->present[0]) != 0;
            sq[s].n_past++;
        }
    }
    cr_assert_eq(evictions, GQ_NS * GQ_KVH * GQ_STEPS);
    cr_assert_gt(heads_differ, 0, "the KV heads never kept different tokens: a weak test");
    free(qkv);
    free(out);
    free(colsum);
    backend_destroy(&be);
}

/* ------------------------- the fp16 and 4-bit slot ops under grouped-query
 * attention: 8 query heads over 2 KV heads, head_dim 16, two sequences of
 * budgets below their prompts and below cap (prefill selection, then an
 * eviction per KV head every decode step), through kern_*_h16 on fp16
 * caches and kern_*_q4 on 4-bit caches, each step against the fp32 _ref
 * ops on fp32 caches holding the same values (the fp16 rounding, or the
 * dequantized 4-bit rows). Tolerance 0: the three are one template
 * (kernels/cpu/slot_ops.h) whose cache readers convert a stored value to
 * the fp32 the reference holds and then run the same fp32 arithmetic in
 * the same order, so positions, evictions, kept slots, scores, self_p and
 * outputs must be bit-identical (as the per-head tests above demand); the
 * caches must hold the rounding (the quantization) of what the reference
 * wrote. Because _ref is the same template, a group-mapping slip in it
 * would pass such a comparison, so each step also checks the reference's
 * decode against double precision over the cache it read. */

/* One decode step against double precision over the fp32 cache kc, vc it
 * read: query head h of sequence s attends over the n_slots rows of KV
 * head h / group plus the new k, v row; out within 1e-5 (fp32 softmax and
 * sums of <= 9 terms of magnitude <= 2 over 16 products: a few ulp of
 * values below ~10); the scores added (sc1 - sc0) and self_p are the
 * group's sums of the probabilities, within 1e-5 likewise. */
static void gx_check_decode(const float *qkv, const float *kc, const float *vc,
                            const kern_seq *sq, float scale, const float *out,
                            const float *sc0, const float *sc1, const float *self,
                            const char *fmt, int step)
{
    const int group = GQ_H / GQ_KVH, d = GQ_H * GQ_HD;
    for (int s = 0; s < GQ_NS; s++) {
        const float *row = qkv + (size_t)sq[s].row * GQ_LD;
        int n = sq[s].n_slots;
        double add[GQ_KVH][GQ_CAP + 1];
        memset(add, 0, sizeof add);
        for (int h = 0; h < GQ_H; h++) {
            int g = h / group;
            size_t base = ((size_t)s * GQ_KVH + g) * GQ_CAP;
            const float *qh = row + h * GQ_HD, *kn = row + d + g * GQ_HD;
            const float *vn = row + d + GQ_KVH * GQ_HD + g * GQ_HD;
            double p[GQ_CAP + 1], mx = -INFINITY, sum = 0;
            for (int t = 0; t <= n; t++) {
                const float *kr = t < n ? kc + (base + t) * GQ_HD : kn;
                double x = 0;
                for (int e = 0; e < GQ_HD; e++)
                    x += (double)qh[e] * kr[e];
                p[t] = x * scale;
                mx = p[t] > mx ? p[t] : mx;
            }
            for (int t = 0; t <= n; t++)
                sum += p[t] = exp(p[t] - mx);
            for (int e = 0; e < GQ_HD; e++) {
                double want = 0;
                for (int t = 0; t <= n; t++)
                    want += p[t] / sum * (t < n ? vc[(base + t) * GQ_HD + e] : vn[e]);
                double got = out[(size_t)sq[s].row * d + h * GQ_HD + e];
                cr_assert(fabs(got - want) <= 1e-5 * (1 + fabs(want)),
                          "%s step %d: seq %d query head %d element %d: %.9g, double %.9g", fmt,
                          step, s, h, e, got, want);
            }
            for (int t = 0; t <= n; t++)
                add[g][t] += p[t] / sum;
        }
        for (int g = 0; g < GQ_KVH; g++) {
            size_t base = ((size_t)s * GQ_KVH + g) * GQ_CAP;
            for (int t = 0; t < n; t++)
                cr_assert(fabs((double)sc1[base + t] - sc0[base + t] - add[g][t]) <= 1e-5,
                          "%s step %d: seq %d KV head %d slot %d: score += %.9g, double %.9g",
                          fmt, step, s, g, t, sc1[base + t] - sc0[base + t], add[g][t]);
            cr_assert(fabs(self[s * GQ_KVH + g] - add[g][n]) <= 1e-5,
                      "%s step %d: seq %d KV head %d: self_p %.9g, double %.9g", fmt, step, s, g,
                      self[s * GQ_KVH + g], add[g][n]);
        }
    }
}

/* The 16-bit element of a cache of format bf16 (1) or fp16 (0), and the
 * fp32 value it holds. */
static uint16_t gq_enc(int bf16, float x)
{
    uint16_t b;
    kern_round_bf16_ref(&b, &x, 1);
    return bf16 ? b : kern_f32_to_f16(x);
}

static float gq_round(int bf16, float x)
{
    float y;
    if (!bf16)
        return kern_f16_to_f32(kern_f32_to_f16(x));
    uint16_t b = gq_enc(1, x);
    kern_widen_ref(&y, &b, 1, KERN_H16_BF16);
    return y;
}

/* mode GQ_H16: the _h16 ops on fp16 caches against _ref on caches of the
 * same fp16-rounded values (every k, v rounded to fp16 first, so the
 * reference stores exactly what the fp16 cache holds); GQ_BF16: the _bf16
 * ops the same way over bf16-rounded values. GQ_Q4: the _q4 ops against
 * _ref on the dequantized caches, re-dequantized before every step. */
enum { GQ_H16, GQ_Q4, GQ_BF16 };

static void gqa_fmt_case(int mode)
{
    enum { SLOTS = GQ_NS * GQ_KVH * GQ_CAP };
    int q4 = mode == GQ_Q4, bf = mode == GQ_BF16;
    const char *fmt = q4 ? "q4" : bf ? "bf16" : "h16";
    const int len[GQ_NS] = {12, 9}, budget[GQ_NS] = {6, 5}, sinks[GQ_NS] = {1, 0},
              recent[GQ_NS] = {3, 2};
    const int d = GQ_H * GQ_HD;
    const size_t rb = kern_q4_row_bytes(GQ_HD);
    const float scale = 0.25f;
    kern_seq sq[GQ_NS];
    int rows = 0;
    for (int s = 0; s < GQ_NS; rows += len[s], s++)
        sq[s] = (kern_seq){.row = rows, .n_new = len[s], .n_past = 0, .n_slots = 0,
                           .budget = budget[s], .sinks = sinks[s], .recent = recent[s]};
    uint64_t seed = 77; /* the same rows for both (a seed whose KV heads diverge) */
    float *qkv = malloc(sizeof(float) * (size_t)rows * GQ_LD);
    float *pout = malloc(sizeof(float) * (size_t)rows * d);
    float *colsum = malloc(sizeof(float) * (size_t)rows * GQ_KVH);
    cr_assert(qkv && pout && colsum);
    for (int i = 0; i < rows * GQ_LD; i++)
        qkv[i] = gq_round(bf, 2 * rnd(&seed));
    const float *k = qkv + d, *v = k + GQ_KVH * GQ_HD;
    /* the column sums the prefill selection runs on: per KV head, summed
     * over its group (kern_attn_prefill_ref, tested above) */
    cr_assert_eq(kern_attn_prefill_ref(pout, d, qkv, k, v, GQ_LD, sq, GQ_NS, GQ_H, GQ_KVH, GQ_HD,
                                       scale, colsum, KERN_WS(rows)), 0, "%s", err_msg());

    static float kf[SLOTS * GQ_HD], vf[SLOTS * GQ_HD];
    static uint16_t kh[SLOTS * GQ_HD], vh[SLOTS * GQ_HD];
    static uint8_t kq[SLOTS * KERN_Q4_BLOCK], vq[SLOTS * KERN_Q4_BLOCK];
    static uint8_t kx[SLOTS * KERN_Q4_BLOCK], vx[SLOTS * KERN_Q4_BLOCK]; /* expected */
    float sf[SLOTS], sx[SLOTS], s0[SLOTS];
    int32_t pf[SLOTS], px[SLOTS];
    memset(kf, 0, sizeof kf);
    memset(vf, 0, sizeof vf);
    memset(kh, 0, sizeof kh);
    memset(vh, 0, sizeof vh);
    memset(kq, 0xa5, sizeof kq);
    memset(vq, 0x5a, sizeof vq);
    memcpy(kx, kq, sizeof kq);
    memcpy(vx, vq, sizeof vq);
    for (int i = 0; i < SLOTS; i++) {
        sf[i] = sx[i] = -3.0f;
        pf[i] = px[i] = -5;
    }

    /* prefill */
    cr_assert_eq(kern_kv_prefill_ref(kf, vf, sf, pf, k, v, GQ_LD, colsum, sq, GQ_NS, GQ_H,
                                     GQ_KVH, GQ_HD, GQ_CAP, KERN_WS(rows)), 0, "%s", err_msg());
    if (q4)
        cr_assert_eq(kern_kv_prefill_q4(kq, vq, sx, px, k, v, GQ_LD, colsum, sq, GQ_NS, GQ_H,
                                        GQ_KVH, GQ_HD, GQ_CAP, KERN_WS(rows)), 0, "%s",
                     err_msg());
    else if (bf)
        cr_assert_eq(kern_kv_prefill_bf16(kh, vh, sx, px, k, v, GQ_LD, colsum, sq, GQ_NS, GQ_H,
                                          GQ_KVH, GQ_HD, GQ_CAP, KERN_WS(rows)), 0, "%s",
                     err_msg());
    else
        cr_assert_eq(kern_kv_prefill_h16(kh, vh, sx, px, k, v, GQ_LD, colsum, sq, GQ_NS, GQ_H,
                                         GQ_KVH, GQ_HD, GQ_CAP, KERN_WS(rows)), 0, "%s",
                     err_msg());
    cr_assert_eq(memcmp(pf, px, sizeof pf), 0, "%s prefill: kept positions differ", fmt);
    cr_assert_eq(memcmp(sf, sx, sizeof sf), 0, "%s prefill: scores differ", fmt);
    int selected = 0, heads_differ = 0;
    for (int s = 0; s < GQ_NS; s++)
        for (int g = 0; g < GQ_KVH; g++) {
            size_t base = ((size_t)s * GQ_KVH + g) * GQ_CAP;
            for (int t = 0; t < budget[s]; t++) {
                int j = pf[base + t];
                cr_assert(j >= 0 && j < len[s], "%s prefill: seq %d KV head %d slot %d holds %d",
                          fmt, s, g, t, j);
                selected += j != t;
                if (g)
                    heads_differ += j != pf[base - GQ_CAP + t];
                if (q4) {
                    size_t src = (size_t)(sq[s].row + j) * GQ_LD + (size_t)g * GQ_HD;
                    kern_q4_quantize_row(kx + (base + t) * rb, k + src, GQ_HD);
                    kern_q4_quantize_row(vx + (base + t) * rb, v + src, GQ_HD);
                }
            }
        }
    cr_assert_gt(selected, 0, "%s: the test must use the prefill selection", fmt);
    if (q4) {
        cr_assert_eq(memcmp(kq, kx, sizeof kq), 0, "q4 prefill: K cache bytes");
        cr_assert_eq(memcmp(vq, vx, sizeof vq), 0, "q4 prefill: V cache bytes");
    } else {
        for (int i = 0; i < SLOTS * GQ_HD; i++)
            cr_assert(kh[i] == gq_enc(bf, kf[i]) && vh[i] == gq_enc(bf, vf[i]),
                      "%s prefill: cache element %d", fmt, i);
    }
    for (int s = 0; s < GQ_NS; s++) {
        sq[s].n_past = len[s];
        sq[s].n_slots = budget[s];
    }

    /* decode steps: one new row per sequence, every step evicting */
    float row[GQ_NS * GQ_LD], of[GQ_NS * GQ_H * GQ_HD], ox[GQ_NS * GQ_H * GQ_HD];
    float self_f[GQ_NS * GQ_KVH], self_x[GQ_NS * GQ_KVH];
    int32_t ev_f[GQ_NS * GQ_KVH], ev_x[GQ_NS * GQ_KVH];
    int evictions = 0;
    const float *rk = row + d, *rv = rk + GQ_KVH * GQ_HD;
    for (int step = 0; step < GQ_STEPS; step++) {
        for (int i = 0; i < GQ_NS * GQ_LD; i++)
            row[i] = gq_round(bf, 2 * rnd(&seed));
        for (int s = 0; s < GQ_NS; s++) {
            sq[s].row = s;
            sq[s].n_new = 1;
        }
        if (q4) {
            kern_q4_dequant_ref(kf, kq, SLOTS, GQ_HD);
            kern_q4_dequant_ref(vf, vq, SLOTS, GQ_HD);
        }
        for (int i = 0; i < GQ_NS * d; i++)
            of[i] = ox[i] = 12345.0f;
        for (int i = 0; i < GQ_NS * GQ_KVH; i++) {
            self_f[i] = self_x[i] = -1.0f;
            ev_f[i] = ev_x[i] = -9;
        }
        memcpy(s0, sf, sizeof sf);
        cr_assert_eq(kern_attn_decode_ref(of, d, row, rk, rv, GQ_LD, kf, vf, sq, GQ_NS, GQ_H,
                                          GQ_KVH, GQ_HD, GQ_CAP, scale, sf, self_f,
                                          KERN_WS(GQ_CAP)), 0, "%s", err_msg());
        if (q4)
            cr_assert_eq(kern_attn_decode_q4(ox, d, row, rk, rv, GQ_LD, kq, vq, sq, GQ_NS, GQ_H,
                                             GQ_KVH, GQ_HD, GQ_CAP, scale, sx, self_x,
                                             KERN_WS(GQ_CAP)), 0, "%s", err_msg());
        else if (bf)
            cr_assert_eq(kern_attn_decode_bf16(ox, d, row, rk, rv, GQ_LD, kh, vh, sq, GQ_NS,
                                               GQ_H, GQ_KVH, GQ_HD, GQ_CAP, scale, sx, self_x,
                                               KERN_WS(GQ_CAP)), 0, "%s", err_msg());
        else
            cr_assert_eq(kern_attn_decode_h16(ox, d, row, rk, rv, GQ_LD, kh, vh, sq, GQ_NS, GQ_H,
                                              GQ_KVH, GQ_HD, GQ_CAP, scale, sx, self_x,
                                              KERN_WS(GQ_CAP)), 0, "%s", err_msg());
        gx_check_decode(row, kf, vf, sq, scale, of, s0, sf, self_f, fmt, step);
        cr_assert_eq(memcmp(of, ox, sizeof of), 0, "%s step %d: outputs", fmt, step);
        cr_assert_eq(memcmp(sf, sx, sizeof sf), 0, "%s step %d: scores", fmt, step);
        cr_assert_eq(memcmp(self_f, self_x, sizeof self_f), 0, "%s step %d: self_p", fmt, step);

        kern_kv_insert_ref(kf, vf, sf, pf, rk, rv, GQ_LD, self_f, sq, GQ_NS, GQ_H, GQ_KVH, GQ_HD,
                           GQ_CAP, ev_f);
        if (q4)
            kern_kv_insert_q4(kq, vq, sx, px, rk, rv, GQ_LD, self_x, sq, GQ_NS, GQ_H, GQ_KVH,
                              GQ_HD, GQ_CAP, ev_x);
        else if (bf)
            kern_kv_insert_bf16(kh, vh, sx, px, rk, rv, GQ_LD, self_x, sq, GQ_NS, GQ_H, GQ_KVH,
                                GQ_HD, GQ_CAP, ev_x);
        else
            kern_kv_insert_h16(kh, vh, sx, px, rk, rv, GQ_LD, self_x, sq, GQ_NS, GQ_H, GQ_KVH,
                               GQ_HD, GQ_CAP, ev_x);
        cr_assert_eq(memcmp(ev_f, ev_x, sizeof ev_f), 0, "%s step %d: evictions", fmt, step);
        cr_assert_eq(memcmp(pf, px, sizeof pf), 0, "%s step %d: positions", fmt, step);
        cr_assert_eq(memcmp(sf, sx, sizeof sf), 0, "%s step %d: scores after insert", fmt,
                     step);
        for (int s = 0; s < GQ_NS; s++)
            for (int g = 0; g < GQ_KVH; g++) {
                size_t base = ((size_t)s * GQ_KVH + g) * GQ_CAP;
                cr_assert_geq(ev_f[s * GQ_KVH + g], 0, "%s step %d: a full cache must evict",
                              fmt, step);
                evictions++;
                if (g)
                    heads_differ += ev_f[s * GQ_KVH + g] != ev_f[s * GQ_KVH + g - 1];
                int slot = -1;
                for (int t = 0; t < budget[s]; t++)
                    if (pf[base + t] == sq[s].n_past) {
                        cr_assert_eq(slot, -1, "%s step %d: position twice", fmt, step);
                        slot = t;
                    }
                cr_assert_geq(slot, 0, "%s step %d: new token not stored", fmt, step);
                if (q4) {
                    /* the old bytes, with the slot the reference wrote = the quantized row */
                    size_t src = (size_t)sq[s].row * GQ_LD + (size_t)g * GQ_HD;
                    kern_q4_quantize_row(kx + (base + slot) * rb, rk + src, GQ_HD);
                    kern_q4_quantize_row(vx + (base + slot) * rb, rv + src, GQ_HD);
                }
            }
        if (q4) {
            cr_assert_eq(memcmp(kq, kx, sizeof kq), 0, "q4 step %d: K cache bytes", step);
            cr_assert_eq(memcmp(vq, vx, sizeof vq), 0, "q4 step %d: V cache bytes", step);
        } else {
            for (int i = 0; i < SLOTS * GQ_HD; i++)
                cr_assert(kh[i] == gq_enc(bf, kf[i]) && vh[i] == gq_enc(bf, vf[i]),
                          "%s step %d: cache element %d", fmt, step, i);
        }
        for (int s = 0; s < GQ_NS; s++)
            sq[s].n_past++;
    }
    cr_assert_eq(evictions, GQ_NS * GQ_KVH * GQ_STEPS);
    cr_assert_gt(heads_differ, 0, "%s: the KV heads never kept or evicted differently", fmt);
    free(qkv);
    free(pout);
    free(colsum);
}

Test(kern_host, gqa_h16_slot_ops_equal_the_reference_on_rounded_caches)
{
    gqa_fmt_case(GQ_H16);
}

Test(kern_host, gqa_q4_slot_ops_equal_the_reference_on_dequantized_caches)
{
    gqa_fmt_case(GQ_Q4);
}

Test(kern_host, gqa_bf16_slot_ops_equal_the_reference_on_rounded_caches)
{
    gqa_fmt_case(GQ_BF16);
}

/* ------------------------------------- the RoPE families' element-wise ops */

/* |got - want| <= atol + |want| * rel, else fail naming op and index. */
static void near(const char *op, int i, double got, double want, double atol, double rel)
{
    cr_assert(fabs(got - want) <= atol + fabs(want) * rel, "%s[%d] = %.9g, want %.9g", op, i,
              got, want);
}

/* RMSNorm worked by hand (exact in fp32): rows whose mean square is 4 and
 * 1/4 with eps 0 (rstd 1/2 and 2), and mean square 1 with eps 3 (rstd
 * 1/2); then random rows against mean-square, rsqrt and weight in double,
 * in place (out = x) through the CPU backend. */
Test(kern_host, rmsnorm_hand_worked_and_against_double)
{
    const float w[4] = {1, 0.5f, -2, 3};
    const float x[8] = {2, -2, 2, -2, 0.5f, 0.5f, -0.5f, 0.5f};
    const float want[8] = {1, -0.5f, -2, -3, 1, 0.5f, 2, 3};
    float out[8];
    kern_rmsnorm_ref(out, x, w, 2, 4, 0.0f);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(out[i], want[i], "eps 0: out[%d] = %g, want %g", i, out[i], want[i]);
    const float ones[4] = {1, 1, 1, 1};
    kern_rmsnorm_ref(out, ones, w, 1, 4, 3.0f);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(out[i], 0.5f * w[i], "eps 3: out[%d] = %g", i, out[i]);

    enum { N = 5, D = 96 };
    uint64_t seed = 12;
    float xs[N * D], ws[D], y[N * D];
    for (int i = 0; i < N * D; i++)
        xs[i] = y[i] = rnd(&seed) * (float)(1 + i / D * 10);
    for (int j = 0; j < D; j++)
        ws[j] = rnd(&seed) * 2;
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    cr_assert_eq(be.ops->rmsnorm(be.ctx, y, y, ws, N, D, 1e-5f), 0);
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int j = 0; j < D; j++)
            ss += (double)xs[i * D + j] * xs[i * D + j];
        double rstd = 1.0 / sqrt(ss / D + 1e-5);
        for (int j = 0; j < D; j++)
            near("rmsnorm", i * D + j, y[i * D + j], xs[i * D + j] * rstd * ws[j], 1e-7,
                 4 * FLT_EPSILON);
    }
    backend_destroy(&be);
}

/* inv_freq of transformers' formulas in double: default 1 / theta^(2i/r),
 * linear / factor, llama3 by wavelength. */
static double inv_freq_double(int i, int r, const kern_rope *p)
{
    double f = 1.0 / pow(p->theta, 2.0 * i / r);
    if (p->type == KERN_ROPE_LINEAR)
        return f / p->factor;
    if (p->type != KERN_ROPE_LLAMA3)
        return f;
    double lo_wl = p->orig_max_pos / (double)p->low_freq_factor;
    double hi_wl = p->orig_max_pos / (double)p->high_freq_factor;
    double wl = 2 * M_PI / f;
    if (wl < hi_wl)
        return f;
    if (wl > lo_wl)
        return f / p->factor;
    double s = (p->orig_max_pos / wl - p->low_freq_factor) /
               ((double)p->high_freq_factor - p->low_freq_factor);
    return (1 - s) * f / p->factor + s * f;
}

/* The inverse frequencies by hand (theta 10^4 over 4 dimensions: 1 and
 * 1/100; linear factor 4 divides both), llama3 on a small case with one
 * frequency in each band (theta 100 over 6 dimensions, original length 64,
 * low 1, high 4, factor 8: wavelengths 2 pi (kept), 29.2 (interpolated)
 * and 135 (divided by 8)), and against the double formulas on Llama 3.1
 * 8B's config (theta 5e5, head_dim 128, llama3 8 / 1 / 4 / 8192), a linear
 * and a GPT-NeoX one (rotary_pct 0.25 of 128: 32 dims, base 10^4); bad
 * parameters are refused. */
Test(kern_host, rope_inv_freq_hand_worked_and_against_double)
{
    float f[64];
    kern_rope def = {.theta = 10000, .type = KERN_ROPE_DEFAULT};
    cr_assert_eq(kern_rope_inv_freq(f, 4, &def), 0, "%s", err_msg());
    cr_assert(f[0] == 1.0f && fabsf(f[1] - 0.01f) <= 0.01f * FLT_EPSILON, "%g %g", f[0], f[1]);
    kern_rope lin = {.theta = 10000, .type = KERN_ROPE_LINEAR, .factor = 4};
    cr_assert_eq(kern_rope_inv_freq(f, 4, &lin), 0, "%s", err_msg());
    cr_assert(f[0] == 0.25f && fabsf(f[1] - 0.0025f) <= 0.0025f * FLT_EPSILON, "%g %g", f[0],
              f[1]);
    kern_rope l3 = {.theta = 100, .type = KERN_ROPE_LLAMA3, .factor = 8, .low_freq_factor = 1,
                    .high_freq_factor = 4, .orig_max_pos = 64};
    cr_assert_eq(kern_rope_inv_freq(f, 6, &l3), 0, "%s", err_msg());
    double f1 = pow(100, -1.0 / 3), s = (64 / (2 * M_PI / f1) - 1) / 3;
    cr_assert(s > 0 && s < 1); /* the middle one really is in the interpolated band */
    cr_assert_eq(f[0], 1.0f, "high frequency kept: %g", f[0]);
    near("llama3", 1, f[1], (1 - s) * f1 / 8 + s * f1, 0, 4 * FLT_EPSILON);
    near("llama3", 2, f[2], pow(100, -2.0 / 3) / 8, 0, 4 * FLT_EPSILON);

    const struct {
        kern_rope p;
        int r;
    } cases[] = {
        {{.theta = 500000, .type = KERN_ROPE_LLAMA3, .factor = 8, .low_freq_factor = 1,
          .high_freq_factor = 4, .orig_max_pos = 8192}, 128},
        {{.theta = 10000, .type = KERN_ROPE_LINEAR, .factor = 2.5f}, 64},
        {{.theta = 10000, .type = KERN_ROPE_DEFAULT}, 32},
        {{.theta = 1000000, .type = KERN_ROPE_DEFAULT}, 128},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        cr_assert_eq(kern_rope_inv_freq(f, cases[c].r, &cases[c].p), 0, "%s", err_msg());
        int bands[3] = {0};
        for (int i = 0; i < cases[c].r / 2; i++) {
            double want = inv_freq_double(i, cases[c].r, &cases[c].p);
            near("inv_freq", (int)c * 1000 + i, f[i], want, 0, 8 * FLT_EPSILON);
            double wl = 2 * M_PI * pow(cases[c].p.theta, 2.0 * i / cases[c].r);
            bands[wl < 2048 ? 0 : wl > 8192 ? 2 : 1]++;
        }
        if (c == 0) /* Llama 3.1: every band is exercised */
            cr_assert(bands[0] && bands[1] && bands[2], "%d %d %d", bands[0], bands[1],
                      bands[2]);
    }

    err_clear();
    cr_assert_eq(kern_rope_inv_freq(f, 5, &def), -EINVAL);
    cr_assert(strstr(err_msg(), "even"), "%s", err_msg());
    kern_rope bad = l3;
    bad.high_freq_factor = 1;
    err_clear();
    cr_assert_eq(kern_rope_inv_freq(f, 6, &bad), -EINVAL);
    cr_assert(strstr(err_msg(), "llama3"), "%s", err_msg());
    bad = lin;
    bad.factor = 0;
    err_clear();
    cr_assert_eq(kern_rope_inv_freq(f, 4, &bad), -EINVAL);
    bad = def;
    bad.type = (kern_rope_type)7;
    err_clear();
    cr_assert_eq(kern_rope_inv_freq(f, 4, &bad), -EINVAL);
    cr_assert(strstr(err_msg(), "type 7"), "%s", err_msg());
}

/* RoPE by hand: head_dim 6 with 4 rotary dimensions (GPT-NeoX partial),
 * inv_freq {pi/2, pi} at position 1: the halves [1 2 | 3 4] turn to
 * [-3 -2 | 1 -4] (rotate_half: dimension i pairs with i + 2, not i + 1)
 * and 5, 6 stay as they are; position 0 changes nothing. */
Test(kern_host, rope_hand_worked_rotate_half)
{
    const float inv[2] = {(float)(M_PI / 2), (float)M_PI};
    float q[12] = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6};
    const int32_t pos[2] = {1, 0};
    cr_assert_eq(kern_rope_ref(q, NULL, 6, pos, 2, 1, 0, 6, 4, inv), 0, "%s", err_msg());
    const float want[6] = {-3, -2, 1, -4, 5, 6};
    for (int i = 0; i < 6; i++) {
        near("rope pos 1", i, q[i], want[i], 1e-6, 0);
        cr_assert_eq(q[6 + i], (float)(i + 1), "pos 0: q[%d] = %g", i, q[6 + i]);
    }
    cr_assert(q[4] == 5 && q[5] == 6, "the pass-through dimensions changed");

    err_clear();
    cr_assert_eq(kern_rope_ref(q, NULL, 6, pos, 2, 1, 0, 6, 8, inv), -EINVAL);
    cr_assert(strstr(err_msg(), "at most head_dim"), "%s", err_msg());
    cr_assert_eq(kern_rope_ref(q, NULL, 6, pos, 2, 1, 0, 6, 3, inv), -EINVAL);
}

/* RoPE on packed GQA rows (4 query heads, 2 KV heads, q | k | v in rows
 * of stride ld) at positions up to 40000, through the CPU backend, against
 * the rotation in double (the angle rounded to fp32 first, as transformers
 * forms it: pos * inv_freq in fp32); v and the rest of the row stay bit for
 * bit, and the query-only call (k NULL) leaves k alone. */
Test(kern_host, rope_gqa_rows_against_double)
{
    enum { N = 4, H = 4, KVH = 2, HD = 16, R = 12, LD = (H + 2 * KVH) * HD + 3 };
    kern_rope p = {.theta = 10000, .type = KERN_ROPE_DEFAULT};
    float inv[R / 2];
    cr_assert_eq(kern_rope_inv_freq(inv, R, &p), 0, "%s", err_msg());
    const int32_t pos[N] = {0, 7, 1000, 40000};
    uint64_t seed = 99;
    float x[N * LD], y[N * LD];
    for (int i = 0; i < N * LD; i++)
        x[i] = y[i] = rnd(&seed);
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    cr_assert_eq(be.ops->rope(be.ctx, y, y + H * HD, LD, pos, N, H, KVH, HD, R, inv), 0, "%s",
                 err_msg());
    for (int r = 0; r < N; r++) {
        for (int c = 0; c < LD; c++) {
            int head = c / HD, d = c % HD;
            double want = x[r * LD + c];
            if (head < H + KVH && d < R) {
                int i = d % (R / 2);
                double a = (float)((float)pos[r] * inv[i]);
                double x1 = x[r * LD + head * HD + i], x2 = x[r * LD + head * HD + i + R / 2];
                want = d < R / 2 ? x1 * cos(a) - x2 * sin(a) : x2 * cos(a) + x1 * sin(a);
                near("rope", r * LD + c, y[r * LD + c], want, 1e-6, 4 * FLT_EPSILON);
            } else {
                cr_assert_eq(y[r * LD + c], x[r * LD + c], "untouched [%d][%d] changed", r, c);
            }
        }
    }
    memcpy(y, x, sizeof y);
    cr_assert_eq(be.ops->rope(be.ctx, y, NULL, LD, pos, N, H, 0, HD, R, inv), 0);
    for (int r = 0; r < N; r++)
        for (int c = H * HD; c < LD; c++)
            cr_assert_eq(y[r * LD + c], x[r * LD + c], "q only: [%d][%d] changed", r, c);
    err_clear();
    cr_assert_eq(be.ops->rope(be.ctx, y, NULL, LD, pos, N, H, 0, HD, HD + 2, inv), -EINVAL);
    cr_assert(strstr(err_msg(), "RoPE"), "%s", err_msg());
    backend_destroy(&be);
}

/* SwiGLU by hand: silu(0) = 0, silu(100) = 100 (exp(-100) vanishes
 * against 1), silu(-200) = -0 (exp(200) is inf), silu(1) = 1 / (1 + 1/e);
 * then random fused gate_up rows (gate | up in one row of stride 2d, out
 * of stride d) through the CPU backend against double. */
Test(kern_host, swiglu_hand_worked_and_against_double)
{
    const float g[4] = {0, 100, -200, 1}, u[4] = {5, 0.5f, 3, 2};
    float out[4];
    kern_swiglu_ref(out, 4, g, u, 4, 1, 4);
    cr_assert(out[0] == 0 && out[1] == 50 && out[2] == 0 && signbit(out[2]), "%g %g %g",
              out[0], out[1], out[2]);
    near("swiglu", 3, out[3], 2 / (1 + exp(-1.0)), 0, 2 * FLT_EPSILON);

    enum { N = 3, D = 40 };
    uint64_t seed = 7;
    float gu[N * 2 * D], o[N * D];
    for (int i = 0; i < N * 2 * D; i++)
        gu[i] = rnd(&seed) * 12;
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    cr_assert_eq(be.ops->swiglu(be.ctx, o, D, gu, gu + D, 2 * D, N, D), 0);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++) {
            double gg = gu[r * 2 * D + j], uu = gu[r * 2 * D + D + j];
            near("swiglu", r * D + j, o[r * D + j], gg / (1 + exp(-gg)) * uu, 1e-7,
                 4 * FLT_EPSILON);
        }
    backend_destroy(&be);
}

/* Exact GELU by hand (gelu(0) = 0, gelu(+-1) and gelu(2) to 16 digits,
 * gelu(10) = 10 in fp32), not the tanh approximation (which gives
 * 0.841192 at 1); then random values in [-8, 8) in place through the CPU
 * backend against 0.5 x (1 + erf(x / sqrt 2)) in double. */
Test(kern_host, gelu_hand_worked_and_against_double)
{
    const float x[5] = {0, 1, -1, 2, 10};
    const double want[5] = {0, 0.8413447460685429, -0.15865525393145707, 1.9544997361036416,
                            10};
    float out[5];
    kern_gelu_ref(out, x, 5);
    for (int i = 0; i < 5; i++)
        near("gelu", i, out[i], want[i], 0, 2 * FLT_EPSILON);
    cr_assert(fabs(out[1] - 0.841192) > 1e-4, "the tanh approximation");

    enum { C = 1000 };
    uint64_t seed = 3;
    float xs[C], y[C];
    for (int i = 0; i < C; i++)
        xs[i] = y[i] = rnd(&seed) * 8;
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    cr_assert_eq(be.ops->gelu(be.ctx, y, y, C), 0);
    for (int i = 0; i < C; i++)
        near("gelu", i, y[i], 0.5 * xs[i] * (1 + erf(xs[i] / sqrt(2.0))), 1e-6,
             4 * FLT_EPSILON);
    backend_destroy(&be);
}

/* The CPU backend has every RoPE-family op; a backend without them (the
 * CUDA one for now: these ops NULL) is refused by backend_ops_check with a
 * message naming the backend, the op and --device cpu. */
Test(kern_host, backend_ops_check_refuses_missing_ops)
{
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    unsigned all = BACKEND_OP_RMSNORM | BACKEND_OP_ROPE | BACKEND_OP_SWIGLU | BACKEND_OP_GELU;
    cr_assert_eq(backend_ops_check(be.ops, all, "llama"), 0, "%s", err_msg());
    backend_ops o = *be.ops;
    o.name = "cuda";
    o.rope = NULL;
    o.gelu = NULL;
    cr_assert_eq(backend_ops_check(&o, BACKEND_OP_RMSNORM | BACKEND_OP_SWIGLU, "llama"), 0);
    err_clear();
    cr_assert_eq(backend_ops_check(&o, all, "llama"), -ENOTSUP);
    cr_assert(strstr(err_msg(), "llama needs the rope op") && strstr(err_msg(), "cuda backend")
              && strstr(err_msg(), "--device cpu"), "%s", err_msg());
    err_clear();
    cr_assert_eq(backend_ops_check(&o, BACKEND_OP_GELU, "gpt_neox"), -ENOTSUP);
    cr_assert(strstr(err_msg(), "gelu"), "%s", err_msg());
    err_clear();
    cr_assert_eq(backend_ops_check(be.ops, 1u << 9, "x"), -EINVAL);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ sampling
 * kern_sample_ref against hand-worked rows, against sample_slow.h's
 * double reference of kern.h's text over random rows, against the sampler
 * it replaced (old controls: the same tokens, bit for bit), and the CPU
 * backend's op against the reference row by row. */

/* One row through kern_sample_ref with scratch; asserts it ran. */
static int32_t sample1(const float *x, int V, const kern_sample_row *r,
                       const kern_logit_edit *ed, float *lp, int32_t *ti, float *tl)
{
    static char ws[(sizeof(float) + sizeof(int32_t)) * 64];
    cr_assert_leq(kern_sample_scratch_bytes(V), sizeof ws);
    int32_t t = kern_sample_ref(x, V, r, ed, lp, ti, tl, ws, sizeof ws);
    cr_assert_geq(t, 0, "%s", err_msg());
    return t;
}

/* logits [0 1 2 3], T 1: p = e^x / 31.193 = .0321 .0871 .2369 .6439.
 * min_p .2 drops p < .1288: tokens 0, 1; kept mass .8808.
 * top_p .7 alone: .6439 < .7 <= .8808 keeps {3, 2}; after min_p .2 the
 * renormalised .6439 / .8808 = .7311 >= .7 keeps {3} alone.
 * top_k 2 keeps {3, 2}; u .99 -> target .8720 > .6439: token 2. */
Test(kern_host, sample_hand_worked_controls)
{
    float x[4] = {0, 1, 2, 3}, lp, tl[4];
    int32_t ti[4];
    double S = 1 + exp(1.0) + exp(2.0) + exp(3.0);
    kern_sample_row r = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.2f, .u = 0.9};
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 2, "min_p .2, u .9: .7927 > .6439");
    cr_assert_float_eq(lp, 2 - log(S), 1e-6, "the raw logprob of token 2");
    r.u = 0.7;
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 3, "min_p .2, u .7: .6166 < .6439");
    r = (kern_sample_row){.temperature = 1.0f, .top_p = 0.7f, .u = 0.95};
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 2, "top_p .7 keeps {3, 2}");
    r.min_p = 0.2f;
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 3, "top_p .7 after min_p .2: "
                 "renormalised, {3} alone");
    r = (kern_sample_row){.temperature = 1.0f, .top_p = 1.0f, .top_k = 2, .u = 0.99};
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 2, "top_k 2");
    r.top_k = 1;
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 3, "top_k 1: the argmax");
    r = (kern_sample_row){.temperature = 1.0f, .top_p = 1.0f, .u = 0.99};
    cr_assert_eq(sample1(x, 4, &r, NULL, &lp, NULL, NULL), 0, "no cut, u .99: .9679 < .99");
    /* edits: repetition penalty 2 on token 3 (3 / 2 = 1.5 < 2), a ban, and
     * a negative logit scaled by neg; the logprob stays the raw one */
    kern_logit_edit ed[] = {
        {.tok = 3, .pos = 0.5f, .neg = 2.0f, .add = 0},
        {.tok = 2, .pos = 1, .neg = 1, .add = -INFINITY},
        {.tok = 1, .pos = 1, .neg = 1, .add = -0.75f},
    };
    r = (kern_sample_row){.top_p = 1.0f, .edit0 = 0, .n_edit = 1};
    cr_assert_eq(sample1(x, 4, &r, ed, &lp, NULL, NULL), 2, "greedy: 3 penalised to 1.5");
    cr_assert_float_eq(lp, 2 - log(S), 1e-6, "the raw logprob of token 2");
    r.n_edit = 2;
    cr_assert_eq(sample1(x, 4, &r, ed, &lp, NULL, NULL), 3, "2 banned: 3 at 1.5 wins");
    r.n_edit = 3;
    r.temperature = 1.0f, r.top_k = 1, r.u = 0.5;
    cr_assert_eq(sample1(x, 4, &r, ed, &lp, NULL, NULL), 3, "top_k 1 over 0, 0.25, -inf, 1.5");
    r.edit0 = 1, r.n_edit = 1, r.top_k = 0, r.u = 0.999;
    for (int i = 0; i < 50; i++, r.u = i / 50.0)
        cr_assert_neq(sample1(x, 4, &r, ed, &lp, NULL, NULL), 2, "a banned token drawn");
    float y[4] = {-1, -0.5f, -2, -3};
    kern_logit_edit neg = {.tok = 1, .pos = 0.25f, .neg = 4.0f, .add = 0};
    r = (kern_sample_row){.top_p = 1.0f, .n_edit = 1};
    cr_assert_eq(sample1(y, 4, &r, &neg, &lp, NULL, NULL), 0, "-0.5 x neg 4 = -2 < -1");
    r.n_edit = 0;
    cr_assert_eq(sample1(y, 4, &r, NULL, &lp, NULL, NULL), 1, "unedited: -0.5");
    /* every token banned: token 0, greedy or sampled */
    kern_logit_edit all[4];
    for (int i = 0; i < 4; i++)
        all[i] = (kern_logit_edit){.tok = 3 - i, .pos = 1, .neg = 1, .add = -INFINITY};
    r = (kern_sample_row){.top_p = 1.0f, .n_edit = 4};
    cr_assert_eq(sample1(x, 4, &r, all, &lp, NULL, NULL), 0);
    cr_assert_float_eq(lp, 0 - log(S), 1e-6, "the raw logprob of token 0");
    r.temperature = 0.8f, r.top_p = 0.5f, r.min_p = 0.1f, r.top_k = 2, r.u = 0.7;
    cr_assert_eq(sample1(x, 4, &r, all, &lp, NULL, NULL), 0);
    /* top logprobs: descending, lower id first on ties, raw */
    r = (kern_sample_row){.top_p = 1.0f, .n_top = 3, .n_edit = 1};
    cr_assert_eq(sample1(x, 4, &r, ed, &lp, ti, tl), 2);
    cr_assert(ti[0] == 3 && ti[1] == 2 && ti[2] == 1, "%d %d %d", ti[0], ti[1], ti[2]);
    for (int k = 0; k < 3; k++)
        cr_assert_float_eq(tl[k], x[ti[k]] - log(S), 1e-6, "top %d", k);
    float z[4] = {1, 3, 3, 2};
    r = (kern_sample_row){.top_p = 1.0f, .n_top = 4};
    cr_assert_eq(sample1(z, 4, &r, NULL, &lp, ti, tl), 1, "greedy: the lower of a tie");
    cr_assert(ti[0] == 1 && ti[1] == 2 && ti[2] == 3 && ti[3] == 0, "%d %d %d %d", ti[0], ti[1],
              ti[2], ti[3]);
    cr_assert_eq(tl[0], tl[1]);
    cr_assert_eq(tl[0], lp, "the same formula for the token and its top entry");
    /* controls out of range are refused, with a message */
    kern_sample_row bad[] = {
        {.top_p = 1.0f, .n_top = KERN_TOP_LOGPROBS_MAX + 1},
        {.top_p = 1.0f, .n_top = 5},
        {.top_p = 1.0f, .min_p = 1.5f},
        {.top_p = 1.0f, .top_k = -1},
        {.top_p = 1.0f, .n_edit = 1},
        {.top_p = 1.0f, .n_edit = -1},
    };
    kern_logit_edit out_of_v = {.tok = 4, .pos = 1, .neg = 1};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err_clear();
        int32_t big_ti[32];
        float big_tl[32];
        static char ws[64];
        cr_assert_eq(kern_sample_ref(x, 4, &bad[i], &out_of_v, &lp, big_ti, big_tl, ws,
                                     sizeof ws), -EINVAL, "bad row %zu ran", i);
        cr_assert(err_msg()[0], "bad row %zu: no message", i);
    }
    err_clear();
}

/* kern_sample_ref against sample_slow.h over random rows of every kind
 * (each control alone and together, penalties, bans, the argmax banned,
 * top_k 1 and >= V, ties of the top logit), grid logits full of exact ties
 * and plain floats, vocabularies from 1 to 3000. A row decided within
 * rounding of a boundary (margins below 1e-6 of mass, 2e-6 relative) may
 * go either way; every other row gives the reference's token, and they
 * are nearly all of them. Logprobs and top logprobs: always. */
Test(kern_host, sample_ref_against_a_double_reference_over_random_rows)
{
    int Vs[] = {1, 2, 7, 64, 512, 3000};
    uint64_t seed = 2024;
    int sampled = 0, decided = 0, cut_min_p = 0;
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        int V = Vs[vi], reps = V >= 3000 ? 12 : 60;
        float *x = malloc(sizeof(float) * (size_t)V);
        kern_logit_edit *ed = malloc(sizeof *ed * (size_t)(V + 16));
        size_t wb = kern_sample_scratch_bytes(V);
        void *ws = malloc(wb);
        for (int rep = 0; rep < reps; rep++)
            for (int kind = 0; kind <= SLOW_KINDS; kind++) {
                if ((rep + kind) % 3)
                    slow_logits(&seed, x, V, 6.0f, rep % 2);
                else
                    for (int i = 0; i < V; i++)
                        x[i] = (float)(slow_unit(&seed) * 12.0 - 6.0);
                kern_sample_row r;
                int n_ed = 0;
                if (kind == SLOW_KINDS) /* every token banned */
                    slow_row_all_banned(V, rep % 2 ? 0.9f : 0.0f, &r, ed, &n_ed);
                else
                    slow_row(&seed, kind, x, V, 0.3f, 2.0f, 1, &r, ed, &n_ed);
                float lp, tl[KERN_TOP_LOGPROBS_MAX];
                int32_t ti[KERN_TOP_LOGPROBS_MAX];
                int32_t tok = kern_sample_ref(x, V, &r, ed, &lp, ti, tl, ws, wb);
                cr_assert_geq(tok, 0, "%s", err_msg());
                slow_pick sp;
                slow_sample(x, V, &r, ed, &sp);
                int exact = sp.margin_mass > 1e-6 && sp.margin_rel > 2e-6;
                if (r.temperature > 0.0f) {
                    sampled++;
                    decided += exact;
                }
                cr_assert(exact || r.temperature > 0.0f, "a greedy row is exact");
                if (exact)
                    cr_assert_eq(tok, sp.tok, "V %d rep %d kind %d (T %g top_p %g min_p %g "
                                 "top_k %d u %g, %d edits): token %d, the double reference %d",
                                 V, rep, kind, r.temperature, r.top_p, r.min_p, r.top_k, r.u,
                                 r.n_edit, tok, sp.tok);
                if (kind == SLOW_KINDS)
                    cr_assert_eq(tok, 0, "every token banned: token 0");
                if (tok == sp.tok)
                    cr_assert_float_eq(lp, sp.logprob, 1e-5 + 1e-6 * fabs(sp.logprob),
                                       "V %d rep %d kind %d: logprob %g, reference %g", V, rep,
                                       kind, lp, sp.logprob);
                for (int k = 0; k < r.n_top; k++) {
                    cr_assert_eq(ti[k], sp.top_ids[k], "V %d rep %d kind %d: top %d is %d, "
                                 "reference %d", V, rep, kind, k, ti[k], sp.top_ids[k]);
                    cr_assert_float_eq(tl[k], sp.top_lps[k], 1e-5 + 1e-6 * fabs(sp.top_lps[k]));
                }
                if (r.min_p > 0.0f && r.temperature > 0.0f && V > 1) {
                    /* did min_p drop anything? (so the test covers it) */
                    float mx = -INFINITY;
                    for (int i = 0; i < V; i++)
                        mx = fmaxf(mx, x[i]);
                    cut_min_p += r.n_edit == 0 && exp((x[0] - mx) / r.temperature) < r.min_p;
                }
            }
        free(x), free(ed), free(ws);
    }
    cr_assert_geq(decided, sampled * 95 / 100, "only %d of %d sampled rows were clear of "
                  "rounding", decided, sampled);
    cr_assert_gt(cut_min_p, 10, "min_p dropped tokens in %d rows only", cut_min_p);
}

/* The sampler before the per-row controls, verbatim: greedy or
 * temperature / top-p. Its tokens and logprobs are what the goldens hold. */
static int old_cmp_desc(const void *a, const void *b, void *prob)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    const float *p = prob;
    float x = p[i], y = p[j];
    if (x != y)
        return x < y ? 1 : -1;
    return (i > j) - (i < j);
}

static int32_t old_sample(const float *logits, int V, float temperature, float top_p,
                          double u, float *logprob, float *prob, int32_t *order)
{
    int32_t tok = 0;
    if (temperature <= 0.0f) {
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[tok])
                tok = i;
    } else {
        float mx = -INFINITY;
        for (int i = 0; i < V; i++)
            if (logits[i] / temperature > mx)
                mx = logits[i] / temperature;
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            prob[i] = expf(logits[i] / temperature - mx);
            sum += prob[i];
        }
        for (int i = 0; i < V; i++) {
            prob[i] = (float)(prob[i] / sum);
            order[i] = i;
        }
        qsort_r(order, (size_t)V, sizeof *order, old_cmp_desc, prob);
        int keep = V;
        if (top_p < 1.0f) {
            double c = 0.0;
            for (int i = 0; i < V; i++) {
                c += prob[order[i]];
                if (c >= top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        double mass = 0.0;
        for (int i = 0; i < keep; i++)
            mass += prob[order[i]];
        double target = u * mass, c = 0.0;
        tok = order[keep - 1];
        for (int i = 0; i < keep; i++) {
            c += prob[order[i]];
            if (target < c) {
                tok = order[i];
                break;
            }
        }
    }
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    *logprob = (float)((double)logits[tok] - mx - log(sum));
    return tok;
}

/* Old controls (greedy, temperature, top_p; no edits, min_p, top_k): the
 * same token and logprob, bit for bit, as the sampler they replace. And
 * top_k >= V or a min_p that drops nothing is the control off, bit for
 * bit; top_k 1 is greedy over the edited logits. */
Test(kern_host, sample_old_controls_unchanged_and_off_means_off)
{
    int Vs[] = {50, 1000, 50272};
    uint64_t seed = 99;
    for (size_t vi = 0; vi < 3; vi++) {
        int V = Vs[vi], reps = V > 10000 ? 12 : 150;
        float *x = malloc(sizeof(float) * (size_t)V), *prob = malloc(sizeof(float) * (size_t)V);
        int32_t *order = malloc(sizeof(int32_t) * (size_t)V);
        size_t wb = kern_sample_scratch_bytes(V);
        void *ws = malloc(wb);
        kern_logit_edit ed[16];
        for (int rep = 0; rep < reps; rep++) {
            if (rep % 2)
                slow_logits(&seed, x, V, 8.0f, rep % 4 == 1);
            else
                for (int i = 0; i < V; i++)
                    x[i] = (float)(slow_unit(&seed) * 16.0 - 8.0);
            kern_sample_row r = {.temperature = rep % 5 ? 0.2f + 1.6f * (float)slow_unit(&seed)
                                                        : 0.0f,
                                 .top_p = rep % 3 ? 0.05f + 0.95f * (float)slow_unit(&seed) : 1.0f,
                                 .u = rep % 11 ? slow_unit(&seed) : 1.0 - 0x1.0p-40};
            float lo, ln;
            int32_t to = old_sample(x, V, r.temperature, r.top_p, r.u, &lo, prob, order);
            int32_t tn = kern_sample_ref(x, V, &r, NULL, &ln, NULL, NULL, ws, wb);
            cr_assert_eq(tn, to, "V %d rep %d (T %g top_p %g u %g): token %d, before %d", V, rep,
                         r.temperature, r.top_p, r.u, tn, to);
            cr_assert_eq(memcmp(&ln, &lo, sizeof ln), 0, "V %d rep %d: logprob %a, before %a", V,
                         rep, ln, lo);
            /* top_k >= V, min_p 1e-30 (nothing is that unlikely here): off */
            kern_sample_row k = r;
            k.top_k = rep % 2 ? V : V + 7;
            cr_assert_eq(kern_sample_ref(x, V, &k, NULL, &ln, NULL, NULL, ws, wb), to);
            k = r;
            k.min_p = 1e-30f;
            cr_assert_eq(kern_sample_ref(x, V, &k, NULL, &ln, NULL, NULL, ws, wb), to);
            /* top_k 1 = greedy, both over edited logits */
            int n_ed = 0;
            kern_sample_row g;
            slow_row(&seed, SLOW_GREEDY_EDITS, x, V, 1, 1, 0, &g, ed, &n_ed);
            int32_t greedy = kern_sample_ref(x, V, &g, ed, &ln, NULL, NULL, ws, wb);
            g.temperature = 0.5f + (float)slow_unit(&seed), g.top_k = 1, g.u = slow_unit(&seed);
            g.top_p = r.top_p;
            cr_assert_eq(kern_sample_ref(x, V, &g, ed, &ln, NULL, NULL, ws, wb), greedy,
                         "V %d rep %d: top_k 1 is not greedy", V, rep);
        }
        free(x), free(prob), free(order), free(ws);
    }
}

/* cmp_desc of sample.c, restated: prob descending, id ascending. */
static int full_cmp(const void *a, const void *b, void *prob)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    const float *p = prob;
    if (p[i] != p[j])
        return p[i] < p[j] ? 1 : -1;
    return (i > j) - (i < j);
}

/* kern.h's sampled choice (no edits) as sample.c wrote it before it sorted
 * only the prefix it reads: the whole vocabulary through qsort_r. */
static int32_t full_sort_draw(const float *logits, int V, const kern_sample_row *r,
                              float *prob, int32_t *order)
{
    float T = r->temperature, mx = -INFINITY;
    for (int i = 0; i < V; i++)
        mx = logits[i] / T > mx ? logits[i] / T : mx;
    if (mx == -INFINITY)
        return 0;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        prob[i] = kern_expf(logits[i] / T - mx);
        sum += prob[i];
    }
    int n_pos0 = 0, n_pos = 0;
    float pmax = 0.0f;
    for (int i = 0; i < V; i++) {
        prob[i] = (float)(prob[i] / sum);
        order[i] = i;
        pmax = prob[i] > pmax ? prob[i] : pmax;
        n_pos0 += prob[i] > 0.0f;
    }
    if (r->min_p > 0.0f)
        for (int i = 0; i < V; i++)
            if (prob[i] < r->min_p * pmax)
                prob[i] = 0.0f;
    for (int i = 0; i < V; i++)
        n_pos += prob[i] > 0.0f;
    if (n_pos == 0)
        return 0; /* NaN probabilities */
    qsort_r(order, (size_t)V, sizeof *order, full_cmp, prob);
    int keep = r->top_k > 0 && r->top_k < n_pos ? r->top_k : n_pos;
    if (r->top_p < 1.0f) {
        double want = r->top_p, c = 0.0;
        if (keep < n_pos0) {
            double kept = 0.0;
            for (int i = 0; i < keep; i++)
                kept += prob[order[i]];
            want *= kept;
        }
        for (int i = 0; i < keep; i++) {
            c += prob[order[i]];
            if (c >= want) {
                keep = i + 1;
                break;
            }
        }
    }
    double mass = 0.0, c = 0.0;
    for (int i = 0; i < keep; i++)
        mass += prob[order[i]];
    for (int i = 0; i < keep; i++) {
        c += prob[order[i]];
        if (r->u * mass < c)
            return order[i];
    }
    return order[keep - 1];
}

/* The sampler sorts only the prefix of the order it reads (a quickselect,
 * then a sort of the prefix, longer while top_p's cut lies beyond it): the
 * same token as a sort of the whole vocabulary, over rows whose nucleus is
 * a few tokens, hundreds (one and two lengthenings), a quarter of the
 * vocabulary and more (the whole sort), logits in few distinct values (ties
 * ordered by id), with top_k and min_p; a NaN logit (every probability
 * NaN) gives token 0, as every token banned does, where the whole sort read
 * before the order's start. */
Test(kern_host, sample_prefix_sort_is_the_full_sort)
{
    enum { V = 20000 };
    static float x[V], prob[V];
    static int32_t order[V];
    size_t wb = kern_sample_scratch_bytes(V);
    void *ws = malloc(wb);
    uint64_t seed = 123;
    int n = 0;
    for (int rep = 0; rep < 240; rep++) {
        int kind = rep % 6;
        for (int i = 0; i < V; i++) {
            double u = slow_unit(&seed);
            x[i] = kind == 0 ? (float)(u * 40.0 - 20.0)          /* peaked at T <= 1 */
                 : kind == 1 ? (float)(u * 6.0)                  /* hundreds to thousands */
                 : kind == 2 ? (float)floor(u * 4.0)             /* four values: ties */
                 : kind == 3 ? (float)(u * 0.5)                  /* nearly flat: the whole sort */
                 : (float)(u * 12.0 - 6.0);
        }
        if (kind == 5 && rep % 12 == 5)
            x[rep % V] = NAN;
        kern_sample_row r = {.temperature = 0.3f + 1.5f * (float)slow_unit(&seed),
                             .top_p = 0.02f + 0.97f * (float)slow_unit(&seed),
                             .u = slow_unit(&seed)};
        if (rep % 4 == 1)
            r.top_k = 1 + (int)(slow_unit(&seed) * 3000);
        if (rep % 5 == 2)
            r.min_p = (float)(slow_unit(&seed) * 0.2);
        if (rep % 7 == 3)
            r.top_p = 1.0f;
        float lp;
        int32_t want = full_sort_draw(x, V, &r, prob, order);
        int32_t got = kern_sample_ref(x, V, &r, NULL, &lp, NULL, NULL, ws, wb);
        if (kind == 5 && rep % 12 == 5)
            cr_assert_eq(got, 0, "rep %d: a NaN logit gave token %d", rep, got);
        cr_assert_eq(got, want, "rep %d kind %d (T %g top_p %g top_k %d min_p %g u %g): %d, "
                     "the whole sort %d", rep, kind, r.temperature, r.top_p, r.top_k, r.min_p,
                     r.u, got, want);
        n++;
    }
    cr_assert_eq(n, 240);
    free(ws);
}

/* The CPU backend's op runs kern_sample_ref row by row: a batch of random
 * rows (every kind, edits at their edit0 in one array, top logprobs)
 * gives each row's result, bit for bit; top_ids / top_lps untouched past
 * each row's n_top. */
Test(kern_host, cpu_backend_sample_op_equals_the_reference_per_row)
{
    enum { V = 700, N = 40 };
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    uint64_t seed = 5;
    float *x = malloc(sizeof(float) * (size_t)N * V), lp[N], tl[N * KERN_TOP_LOGPROBS_MAX];
    kern_logit_edit *ed = malloc(sizeof *ed * (size_t)(N * 16 + V));
    kern_sample_row rows[N];
    int32_t tok[N], ti[N * KERN_TOP_LOGPROBS_MAX];
    int n_ed = 0;
    for (int i = 0; i < N; i++) {
        slow_logits(&seed, x + (size_t)i * V, V, 6.0f, i % 2);
        if (i == N - 1)
            slow_row_all_banned(V, 0.7f, &rows[i], ed, &n_ed);
        else
            slow_row(&seed, i % SLOW_KINDS, x + (size_t)i * V, V, 0.3f, 1.5f, 1, &rows[i], ed,
                     &n_ed);
    }
    for (int i = 0; i < N * KERN_TOP_LOGPROBS_MAX; i++)
        ti[i] = -7, tl[i] = -7.0f;
    cr_assert_eq(be.ops->sample(be.ctx, x, N, V, rows, ed, tok, lp, ti, tl), 0, "%s",
                 err_msg());
    void *ws = malloc(kern_sample_scratch_bytes(V));
    for (int i = 0; i < N; i++) {
        float l1, t1[KERN_TOP_LOGPROBS_MAX];
        int32_t id1[KERN_TOP_LOGPROBS_MAX];
        int32_t t = kern_sample_ref(x + (size_t)i * V, V, &rows[i], ed, &l1, id1, t1, ws,
                                    kern_sample_scratch_bytes(V));
        cr_assert_eq(tok[i], t, "row %d: op %d, reference %d", i, tok[i], t);
        cr_assert_eq(memcmp(&lp[i], &l1, sizeof l1), 0, "row %d logprob", i);
        const int32_t *oi = ti + (size_t)i * KERN_TOP_LOGPROBS_MAX;
        const float *ol = tl + (size_t)i * KERN_TOP_LOGPROBS_MAX;
        for (int k = 0; k < KERN_TOP_LOGPROBS_MAX; k++)
            if (k < rows[i].n_top)
                cr_assert(oi[k] == id1[k] && ol[k] == t1[k], "row %d top %d", i, k);
            else
                cr_assert(oi[k] == -7 && ol[k] == -7.0f, "row %d: top %d written past n_top",
                          i, k);
    }
    /* no row with n_top: the arrays may be NULL */
    for (int i = 0; i < N; i++)
        rows[i].n_top = 0;
    cr_assert_eq(be.ops->sample(be.ctx, x, N, V, rows, ed, tok, lp, NULL, NULL), 0, "%s",
                 err_msg());
    free(x), free(ed), free(ws);
    backend_destroy(&be);
}

/* The CPU backend's op spreads rows over the threads: a bad row among good
 * ones (min_p 2, then a banned-everything row's neighbour with top_k -1)
 * fails the call with that row's message on the calling thread, and the
 * lowest bad row is the one told. */
Test(kern_host, cpu_backend_sample_op_tells_a_bad_row_from_any_thread)
{
    enum { V = 300, N = 16 };
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
    static float x[N * V];
    uint64_t seed = 9;
    for (int i = 0; i < N * V; i++)
        x[i] = rnd(&seed) * 4;
    kern_sample_row rows[N];
    for (int i = 0; i < N; i++)
        rows[i] = (kern_sample_row){.temperature = 0.7f, .top_p = 1.0f, .u = 0.5};
    rows[11].min_p = 2.0f;
    rows[13].top_k = -1;
    int32_t tok[N];
    float lp[N];
    err_clear();
    cr_assert_eq(be.ops->sample(be.ctx, x, N, V, rows, NULL, tok, lp, NULL, NULL), -EINVAL);
    cr_assert(strstr(err_msg(), "min_p 2"), "%s", err_msg());
    rows[11].min_p = 0.0f;
    err_clear();
    cr_assert_eq(be.ops->sample(be.ctx, x, N, V, rows, NULL, tok, lp, NULL, NULL), -EINVAL);
    cr_assert(strstr(err_msg(), "top_k -1"), "%s", err_msg());
    rows[13].top_k = 0;
    cr_assert_eq(be.ops->sample(be.ctx, x, N, V, rows, NULL, tok, lp, NULL, NULL), 0, "%s",
                 err_msg());
    backend_destroy(&be);
}

/* The CPU backend's reservation covers sampling's scratch when a call may
 * sample or edit: a greedy call with edits within it allocates nothing;
 * reserved for greedy rows without edits only, the same call (it copies
 * its logits) is refused as beyond the reservation. */
Test(kern_host, cpu_backend_reserves_sampling_scratch_for_edits)
{
    enum { V = 4096 };
    static float x[V];
    for (int i = 0; i < V; i++)
        x[i] = (float)(i % 97) / 8.0f;
    kern_logit_edit ban = {.tok = 96, .pos = 1, .neg = 1, .add = -INFINITY};
    kern_sample_row r = {.top_p = 1.0f, .n_edit = 1, .n_top = 2};
    int32_t tok, ti[KERN_TOP_LOGPROBS_MAX];
    float lp, tl[KERN_TOP_LOGPROBS_MAX];
    for (int edits = 1; edits >= 0; edits--) {
        backend be;
        cr_assert_eq(backend_cpu_create(1, &be), 0, "%s", err_msg());
        backend_limits lim = {.sample_rows = 1, .vocab = V, .sample_edits = edits,
                              .sample_top = 1};
        cr_assert_eq(be.ops->reserve(be.ctx, &lim), 0, "%s", err_msg());
        uint64_t a0 = be.ops->allocs(be.ctx);
        err_clear();
        int rc = be.ops->sample(be.ctx, x, 1, V, &r, &ban, &tok, &lp, ti, tl);
        if (edits) {
            cr_assert_eq(rc, 0, "%s", err_msg());
            cr_assert_eq(tok, 193, "96 banned: the next of the tied highest, 193");
            cr_assert(ti[0] == 96 && ti[1] == 193, "raw top: %d %d", ti[0], ti[1]);
        } else {
            cr_assert_eq(rc, -EINVAL, "a call beyond the reservation ran");
            cr_assert(strstr(err_msg(), "exceeds the reserved"), "%s", err_msg());
        }
        cr_assert_eq(be.ops->allocs(be.ctx), a0, "allocated within the reservation");
        backend_destroy(&be);
    }
    err_clear();
}

/* The bits of an fp32 value (NaNs compared as NaNs). */
static int same_float(float a, float b)
{
    return (isnan(a) && isnan(b)) || !memcmp(&a, &b, sizeof a);
}

/* Steps of one ulp between two finite fp32 values of the same sign class
 * (ordered as integers). */
static long long ulps(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
    long long la = ia < 0 ? (long long)INT32_MIN - ia : ia;
    long long lb = ib < 0 ? (long long)INT32_MIN - ib : ib;
    return llabs(la - lb);
}

/* vexp.h: kern_expf_sub's vectors give kern_expf's bits (the tails and the
 * special lanes too: overflow to inf, underflow to 0, subnormal results,
 * NaN, +-inf, +-0), and kern_expf is within an ulp of libm's expf (on an
 * x86-64 glibc with FMA it is expf bit for bit; the share of equal values
 * is logged). Over the special values and every 4093rd bit pattern, with
 * lengths that leave every tail length. */
Test(kern_host, expf_vectors_are_the_scalar_and_within_an_ulp_of_libm)
{
    const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 88.0f, 0x1.62e42ep6f,
                             0x1.62e430p6f, -87.3f, -88.0f, -103.27f, -0x1.9fe368p6f,
                             -0x1.9fe36ap6f, -150.0f, 1e-30f, -1e-30f, FLT_MIN, 1e-45f,
                             FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN, -NAN};
    enum { NS = sizeof special / sizeof special[0], STEP = 4093 };
    size_t n = NS + ((size_t)1 << 32) / STEP;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    cr_assert(x && y);
    memcpy(x, special, sizeof special);
    for (size_t i = NS; i < n; i++) {
        uint32_t bits = (uint32_t)((i - NS) * STEP);
        memcpy(&x[i], &bits, 4);
    }
    size_t equal = 0, finite = 0, nans = 0;
    for (size_t len = n - 15; len <= n; len++) { /* every tail length, n last */
        kern_expf_sub(y, x, 0.0f, len);
        for (size_t i = 0; i < len; i++)
            cr_assert(same_float(y[i], kern_expf(x[i])), "x %a: vector %a, scalar %a", x[i],
                      y[i], kern_expf(x[i]));
    }
    for (size_t i = 0; i < n; i++) {
        float want = expf(x[i]);
        if (isnan(x[i])) {
            cr_assert(isnan(y[i]), "exp(NaN) = %a", y[i]);
            nans++;
            continue;
        }
        cr_assert(isinf(want) == isinf(y[i]) && (want == 0) == (y[i] == 0),
                  "x %a: kern_expf %a, expf %a", x[i], y[i], want);
        if (isfinite(want)) {
            cr_assert(ulps(y[i], want) <= 1, "x %a: kern_expf %a, expf %a", x[i], y[i], want);
            finite++;
        }
        equal += same_float(y[i], want);
    }
    cr_log_info("kern_expf equals libm's expf at %zu of %zu values that are not NaN (%zu "
                "finite results)", equal, n - nans, finite);
    /* the subtraction is one fp32 operation before the exp */
    kern_expf_sub(y, x, 3.5f, n);
    for (size_t i = 0; i < n; i++)
        cr_assert(same_float(y[i], kern_expf(x[i] - 3.5f)), "x %a - 3.5", x[i]);
    free(x);
    free(y);
}

/* SwiGLU's vector rows against the plain restatement g / (1 + exp(-g)) * u
 * bit for bit: widths 1-40 and 100 (every tail), gates over the whole
 * range and the special values, rows over the threads; out in place
 * (out == gate, the same stride) and the in-order case (out == gate at
 * half gate's stride: fused gate_up rows compacted). */
Test(kern_host, swiglu_vector_rows_are_the_plain_formula)
{
    enum { N = 5, DMAX = 100 };
    const float special[] = {0.0f, -0.0f, 100.0f, -200.0f, 88.0f, -88.8f, INFINITY, -INFINITY,
                             NAN, 1e-40f};
    uint64_t seed = 31;
    static float g[N * 2 * DMAX], u[N * 2 * DMAX], o[N * 2 * DMAX], want[N * 2 * DMAX];
    for (int d = 1; d <= DMAX; d += d < 40 ? 1 : 60) {
        for (int i = 0; i < N * 2 * DMAX; i++) {
            g[i] = rnd(&seed) * 30;
            u[i] = rnd(&seed) * 4;
        }
        for (int i = 0; i < (int)(sizeof special / sizeof special[0]); i++)
            g[(i * 13) % (N * d)] = special[i];
        for (int i = 0; i < N * d; i++)
            want[i] = g[i] / (1.0f + kern_expf(-g[i])) * u[i];
        kern_swiglu_ref(o, d, g, u, d, N, d);
        for (int i = 0; i < N * d; i++)
            cr_assert(same_float(o[i], want[i]), "d %d [%d]: g %a: %a, want %a", d, i, g[i],
                      o[i], want[i]);
        memcpy(o, g, sizeof g); /* in place, the same stride */
        kern_swiglu_ref(o, d, o, u, d, N, d);
        for (int i = 0; i < N * d; i++)
            cr_assert(same_float(o[i], want[i]), "in place, d %d [%d]", d, i);
        /* fused rows gate | up of stride 2d into out = gate at stride d */
        for (int r = 0; r < N; r++)
            for (int j = 0; j < d; j++) {
                o[r * 2 * d + j] = g[r * d + j];
                o[r * 2 * d + d + j] = u[r * d + j];
            }
        kern_swiglu_ref(o, d, o, o + d, 2 * d, N, d);
        for (int i = 0; i < N * d; i++)
            cr_assert(same_float(o[i], want[i]), "compacted, d %d [%d]", d, i);
    }
}

/* RoPE with the angles' cos and sin taken once a row (ROPE_ANGLES at a
 * time) against the per-head plain rotation, bit for bit: 150 rotated
 * dimensions of 160 (three blocks of angles, the last short) and 256 of
 * 256, 3 query and 3 KV heads over rows at several positions. */
Test(kern_host, rope_angles_once_a_row_are_the_per_head_rotation)
{
    enum { N = 4, H = 3, KVH = 3, HDMAX = 256 };
    const int dims[2][2] = {{160, 150}, {256, 256}};
    const int32_t pos[N] = {0, 1, 517, 131071};
    static float x[N * (H + KVH) * HDMAX], want[N * (H + KVH) * HDMAX];
    uint64_t seed = 5;
    for (int c = 0; c < 2; c++) {
        int hd = dims[c][0], rot = dims[c][1], half = rot / 2, ld = (H + KVH) * hd;
        kern_rope p = {.theta = 500000, .type = KERN_ROPE_DEFAULT};
        float inv[HDMAX / 2];
        cr_assert_eq(kern_rope_inv_freq(inv, rot, &p), 0, "%s", err_msg());
        for (int i = 0; i < N * ld; i++)
            x[i] = want[i] = rnd(&seed) * 3;
        for (int r = 0; r < N; r++)
            for (int h = 0; h < H + KVH; h++) {
                float *w = want + (size_t)r * ld + (size_t)h * hd;
                for (int i = 0; i < half; i++) {
                    float a = (float)pos[r] * inv[i], cs = cosf(a), sn = sinf(a);
                    float x1 = w[i], x2 = w[i + half];
                    w[i] = x1 * cs - x2 * sn;
                    w[i + half] = x2 * cs + x1 * sn;
                }
            }
        cr_assert_eq(kern_rope_ref(x, x + H * hd, ld, pos, N, H, KVH, hd, rot, inv), 0, "%s",
                     err_msg());
        for (int i = 0; i < N * ld; i++)
            cr_assert(same_float(x[i], want[i]), "head_dim %d rot %d: [%d] %a, want %a", hd, rot,
                      i, x[i], want[i]);
    }
}

/* Softmax's maximum in vectors (cpu_common.h max_of) is the scalar loop's
 * mx = p > mx ? p : mx: NaNs passed over wherever they stand (first, in a
 * vector, in the tail, all of them: -inf), -inf and +inf taken as values;
 * the same value, up to the sign of a zero maximum. Lengths 0-70. */
Test(kern_host, softmax_max_in_vectors_is_the_scalar_loop)
{
    uint64_t seed = 17;
    float p[70];
    for (int trial = 0; trial < 400; trial++) {
        int n = trial % 71;
        for (int t = 0; t < n; t++)
            p[t] = trial % 5 == 0 ? -rnd(&seed) * 0.0f : rnd(&seed) * 50 - 60;
        for (int k = 0; n && k < trial % 4; k++)
            p[kern_splitmix64(&seed) % (uint64_t)n] = k == 0 ? NAN : k == 1 ? -INFINITY : -0.0f;
        if (trial % 37 == 0)
            for (int t = 0; t < n; t++)
                p[t] = NAN;
        if (trial % 53 == 0 && n)
            p[n - 1] = INFINITY;
        float want = -INFINITY;
        for (int t = 0; t < n; t++)
            want = p[t] > want ? p[t] : want;
        float got = max_of(p, n);
        cr_assert(got == want || (isnan(got) && isnan(want)), "n %d trial %d: %a, want %a", n,
                  trial, got, want);
        cr_assert(!isnan(got), "a NaN maximum");
    }
}
