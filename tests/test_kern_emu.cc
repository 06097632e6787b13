/* test_kern_emu.cc: the CUDA kernels of kernels/, their own text run on the
 * CPU through tests/cuda_emu, against the plain-C references: decode
 * attention over fp16 and 4-bit caches (scores, self_p, chunk edges, GQA),
 * the H2O insert and the KV prefill into both formats (the same victims,
 * slots and bytes), the flash prefill kernel (tile and block edges, head
 * widths, sliding windows, y-loops), the one-warp prefill attention and
 * the GEMM route's softmax and column sums, 4-bit expansion, and the
 * element-wise ops (fp16 conversion, bias + ReLU, add, gather, embed,
 * LayerNorm, RMSNorm, RoPE, SwiGLU, GELU); and what the emulated device
 * itself must catch (a barrier not all threads reach, a copy read before
 * its stream is synchronized, a bad launch; under ASan, a resumed thread's
 * stack overflow). Sampling (sample.cu) is
 * test_kern_cuda's, over the emulated backend. Each kernel is called through
 * its extern "C" launcher, as the CUDA backend calls it, with host memory
 * standing for device memory. Tolerances are test_kern_cuda's (gpu suite),
 * which runs the same comparisons through the backends on a GPU; this
 * runs them in CI, where no GPU is. */
#include <alloca.h>
#include <atomic>
#include <criterion/criterion.h>

#include <vector>

#include "cuda_emu.hpp"
#include "test_rng.h"

extern "C" {
#include "err.h"
}


#define EPS16 (1.0f / 1024)

typedef std::vector<float> fvec;
typedef std::vector<__half> hvec;

/* n random values of scale s rounded to fp16: the fp32 values (for the
 * reference) and the fp16 ones (for the kernel). */
static void rand16(size_t n, float s, fvec &f, hvec &h)
{
    f.resize(n);
    h.resize(n);
    for (size_t i = 0; i < n; i++) {
        h[i] = __float2half_rn(s * frand());
        f[i] = __half2float(h[i]);
    }
}

static void expect_close(const char *what, const float *got, const float *want, size_t n,
                         float atol, float rtol)
{
    for (size_t i = 0; i < n; i++)
        cr_assert(fabsf(got[i] - want[i]) <= atol + rtol * fabsf(want[i]) ||
                      (isnan(got[i]) && isnan(want[i])),
                  "%s [%zu]: %.9g, reference %.9g", what, i, got[i], want[i]);
}

static void expect_close16(const char *what, const hvec &got, const fvec &want, float atol,
                           float rtol)
{
    cr_assert_eq(got.size(), want.size());
    fvec g(got.size());
    for (size_t i = 0; i < got.size(); i++)
        g[i] = __half2float(got[i]);
    expect_close(what, g.data(), want.data(), g.size(), atol, rtol);
}

static uint16_t *bits(hvec &h) { return (uint16_t *)h.data(); }

/* Packed q/k/v rows of H query heads over KVH KV heads: q at column 0, k
 * at H hd, v at (H + KVH) hd. */
static int qkv_ld(int H, int KVH, int hd) { return (H + 2 * KVH) * hd; }

/* --------------------------------------------------------- decode + insert */

/* Positions 0 .. used - 1 shuffled per (sequence, KV head), scores with
 * exact ties (multiples of 1/8). */
static void cache_state(const std::vector<int> &used, int KVH, int cap, std::vector<int32_t> &pos,
                        fvec &scores)
{
    size_t n_pairs = used.size() * KVH;
    pos.assign(n_pairs * cap, 0);
    scores.resize(n_pairs * cap);
    for (size_t i = 0; i < scores.size(); i++)
        scores[i] = (float)((i * 2654435761u) % 13) / 8.0f;
    for (size_t pr = 0; pr < n_pairs; pr++) {
        int n = used[pr / KVH];
        int32_t *p = pos.data() + pr * cap;
        for (int t = 0; t < n; t++)
            p[t] = t;
        for (int t = n - 1; t > 0; t--) {
            int j = (int)((frand() + 1.0f) * 0.5f * (t + 1)) % (t + 1);
            int32_t tmp = p[t];
            p[t] = p[j];
            p[j] = tmp;
        }
    }
}

/* One decode step and the insert after it, both formats: slots in use per
 * sequence empty, small and across the 256-slot chunk edges, an idle
 * sequence, positions shuffled, scores with ties. */
static void decode_case(int H, int KVH, int hd, kern_kv_fmt fmt)
{
    std::vector<int> used = {0, 5, 255, 256, 300, 3};
    int n_seq = (int)used.size(), cap = 301, ld = qkv_ld(H, KVH, hd), d = H * hd;
    std::vector<kern_seq> seqs(n_seq);
    int max_slots = 0;
    for (int s = 0; s < n_seq; s++) {
        kern_seq sq = {};
        sq.row = s, sq.n_new = s == 5 ? 0 : 1, sq.n_past = used[s] + 7, sq.n_slots = used[s];
        sq.budget = used[s] ? used[s] : 1, sq.sinks = used[s] > 8 ? 2 : 0;
        sq.recent = used[s] > 8 ? 4 : 1;
        seqs[s] = sq;
        if (sq.n_new && sq.n_slots > max_slots)
            max_slots = sq.n_slots;
    }
    size_t slots = (size_t)n_seq * KVH * cap, rb = kern_q4_row_bytes(hd);
    fvec qf, kvf;
    hvec qh, kvh;
    rand16((size_t)n_seq * ld, 1.5f, qf, qh);
    rand16(slots * hd * 2, 1.5f, kvf, kvh);
    std::vector<int32_t> pos_r, pos_k;
    fvec sc_r, sc_k;
    cache_state(used, KVH, cap, pos_r, sc_r);
    pos_k = pos_r, sc_k = sc_r;
    /* the caches: fp16 (the same bits both sides) or 4-bit blocks of them */
    std::vector<uint8_t> kq, vq;
    if (fmt == KERN_KV_FMT_Q4) {
        kq.resize(slots * rb), vq.resize(slots * rb);
        kern_q4_quantize_ref(kq.data(), kvf.data(), slots, hd);
        kern_q4_quantize_ref(vq.data(), kvf.data() + slots * hd, slots, hd);
    }
    hvec kc_k(kvh.begin(), kvh.begin() + slots * hd), vc_k(kvh.begin() + slots * hd, kvh.end());
    hvec kc_r = kc_k, vc_r = vc_k;
    std::vector<uint8_t> kq_r = kq, vq_r = vq;
    float scale = 1.0f / sqrtf((float)hd);
    const float *q = qf.data(), *k = q + (size_t)H * hd, *v = k + (size_t)KVH * hd;
    fvec out_r((size_t)n_seq * d), self_r((size_t)n_seq * KVH);
    size_t sb = kern_attn_decode_scratch_bytes(cap, kern_cpu_threads());
    std::vector<char> scratch(sb);
    char tag[96];
    snprintf(tag, sizeof tag, "%s decode H %d KVH %d hd %d", kern_kv_fmt_name(fmt), H, KVH, hd);
    if (fmt == KERN_KV_FMT_Q4)
        cr_assert_eq(kern_attn_decode_q4(out_r.data(), d, q, k, v, ld, kq_r.data(), vq_r.data(),
                                         seqs.data(), n_seq, H, KVH, hd, cap, scale, sc_r.data(),
                                         self_r.data(), scratch.data(), sb), 0);
    else
        cr_assert_eq(kern_attn_decode_h16(out_r.data(), d, q, k, v, ld, bits(kc_r), bits(vc_r),
                                          seqs.data(), n_seq, H, KVH, hd, cap, scale,
                                          sc_r.data(), self_r.data(), scratch.data(), sb), 0);
    hvec out_k((size_t)n_seq * d, __ushort_as_half(0x7e00));
    fvec self_k((size_t)n_seq * KVH, NAN);
    std::vector<char> work(kern_attn_decode_work(n_seq, H, hd, cap));
    const __half *qk = qh.data(), *kk = qk + (size_t)H * hd, *vk = kk + (size_t)KVH * hd;
    const void *kcache = fmt == KERN_KV_FMT_Q4 ? (const void *)kq.data() : kc_k.data();
    const void *vcache = fmt == KERN_KV_FMT_Q4 ? (const void *)vq.data() : vc_k.data();
    cr_assert_eq(kern_attn_decode_cuda(out_k.data(), d, qk, kk, vk, ld, fmt, kcache, vcache,
                                       seqs.data(), n_seq, H, KVH, hd, cap, scale, sc_k.data(),
                                       self_k.data(), work.data(), max_slots, NULL),
                 0, "%s: %s", tag, err_msg());
    /* the idle sequence's row is not written by either: compare the rest */
    for (int s = 0; s < n_seq; s++)
        if (!seqs[s].n_new)
            for (int e = 0; e < d; e++)
                out_k[(size_t)s * d + e] = __float2half_rn(out_r[(size_t)s * d + e]);
    expect_close16(tag, out_k, out_r, 2e-3f, 4 * EPS16);
    expect_close(tag, sc_k.data(), sc_r.data(), slots, 1e-5f, 1e-5f);
    for (int s = 0; s < n_seq; s++)
        if (seqs[s].n_new)
            expect_close(tag, self_k.data() + (size_t)s * KVH, self_r.data() + (size_t)s * KVH,
                         KVH, 1e-5f, 1e-3f);

    /* the insert from the reference's scores and self_p on both sides */
    sc_k = sc_r;
    self_k = self_r;
    std::vector<int32_t> ev_r((size_t)n_seq * KVH, -7), ev_k((size_t)n_seq * KVH, -7);
    if (fmt == KERN_KV_FMT_Q4)
        kern_kv_insert_q4(kq_r.data(), vq_r.data(), sc_r.data(), pos_r.data(), k, v, ld,
                          self_r.data(), seqs.data(), n_seq, H, KVH, hd, cap, ev_r.data());
    else
        kern_kv_insert_h16(bits(kc_r), bits(vc_r), sc_r.data(), pos_r.data(), k, v, ld,
                           self_r.data(), seqs.data(), n_seq, H, KVH, hd, cap, ev_r.data());
    void *kw = fmt == KERN_KV_FMT_Q4 ? (void *)kq.data() : kc_k.data();
    void *vw = fmt == KERN_KV_FMT_Q4 ? (void *)vq.data() : vc_k.data();
    cr_assert_eq(kern_kv_insert_cuda(fmt, kw, vw, sc_k.data(), pos_k.data(), kk, vk, ld,
                                     self_k.data(), seqs.data(), n_seq, H, KVH, hd, cap,
                                     ev_k.data(), NULL),
                 0, "%s: %s", tag, err_msg());
    cr_assert(ev_k == ev_r, "%s: evicted positions differ", tag);
    cr_assert(pos_k == pos_r, "%s: positions after the insert differ", tag);
    cr_assert(sc_k == sc_r, "%s: scores after the insert differ", tag);
    if (fmt == KERN_KV_FMT_Q4)
        cr_assert(kq == kq_r && vq == vq_r, "%s: 4-bit caches after the insert differ", tag);
    else
        cr_assert(!memcmp(kc_k.data(), kc_r.data(), slots * hd * 2) &&
                      !memcmp(vc_k.data(), vc_r.data(), slots * hd * 2),
                  "%s: fp16 caches after the insert differ", tag);
}

Test(kern_emu, decode_attention_and_insert_fp16_and_4_bit, .timeout = 300)
{
    int heads[][2] = {{2, 2}, {8, 2}, {6, 3}};
    for (auto &hk : heads)
        for (int hd : {16, 64, 128})
            for (kern_kv_fmt fmt : {KERN_KV_FMT_PLAIN, KERN_KV_FMT_Q4})
                decode_case(hk[0], hk[1], hd, fmt);
}

/* ------------------------------------------- prefill attention + KV fill */

/* Prompts that fit and prompts the H2O selection cuts (budget 40 < 70 and
 * 130), through the one-warp prefill kernel (the GEMM route's short
 * prompts), then the KV fill into both formats from the reference's column
 * sums and from tied ones: the same kept tokens, slots, scores and bytes. */
static void kv_fill_case(const char *tag, int H, int KVH, int hd, int cap,
                         const std::vector<kern_seq> &seqs, const std::vector<int> &len,
                         const float *k, const float *v, const __half *kk, const __half *vk,
                         int ld, const fvec &cs_r);

/* A prefill attention launcher: kern_attn_prefill_cuda (the one-warp
 * kernel) or kern_attn_prefill_flash_cuda. */
typedef int (*prefill_fn)(void *out, int ldo, const void *q, const void *k, const void *v, int ld,
                          const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                          int head_dim, float scale, float *colsum, float *work, int max_new,
                          void *stream);

/* Packed sequences of the given prompt lengths (and sliding windows, 0:
 * none), budget 40, sinks 2, recent 12; returns the rows. */
static int pack(std::vector<kern_seq> &seqs, const std::vector<int> &len,
                const std::vector<int> &win)
{
    int rows = 0;
    seqs.assign(len.size(), kern_seq{});
    for (size_t s = 0; s < len.size(); s++) {
        seqs[s].row = rows, seqs[s].n_new = len[s], seqs[s].window = win[s];
        seqs[s].budget = 40, seqs[s].sinks = 2, seqs[s].recent = 12;
        rows += len[s];
    }
    return rows;
}

/* Prefill attention of the packed rows (qf the fp32 values of qh) through
 * run against kern_attn_prefill_ref: out (poisoned first, so a row never
 * written fails) and the column sums; cs_r gets the reference's sums. */
static void prefill_compare(const char *tag, prefill_fn run, int H, int KVH, int hd,
                            const std::vector<kern_seq> &seqs, int rows, const fvec &qf,
                            const hvec &qh, fvec &cs_r)
{
    int n_seq = (int)seqs.size(), ld = qkv_ld(H, KVH, hd), d = H * hd, max_new = 0;
    for (const kern_seq &sq : seqs)
        max_new = sq.n_new > max_new ? sq.n_new : max_new;
    float scale = 1.0f / sqrtf((float)hd);
    const float *q = qf.data(), *k = q + (size_t)H * hd, *v = k + (size_t)KVH * hd;
    const __half *qk = qh.data(), *kk = qk + (size_t)H * hd, *vk = kk + (size_t)KVH * hd;
    fvec out_r((size_t)rows * d);
    cs_r.assign((size_t)rows * KVH, 0.0f);
    size_t sb = kern_attn_prefill_scratch_bytes(max_new, kern_cpu_threads());
    std::vector<char> scratch(sb);
    cr_assert_eq(kern_attn_prefill_ref(out_r.data(), d, q, k, v, ld, seqs.data(), n_seq, H, KVH,
                                       hd, scale, cs_r.data(), scratch.data(), sb), 0);
    hvec out_k((size_t)rows * d, __ushort_as_half(0x7e00));
    fvec cs_k((size_t)rows * KVH, NAN), stats((size_t)rows * H * 2, NAN);
    cr_assert_eq(run(out_k.data(), d, qk, kk, vk, ld, seqs.data(), n_seq, H, KVH, hd, scale,
                     cs_k.data(), stats.data(), max_new, NULL),
                 0, "%s: %s", tag, err_msg());
    expect_close16(tag, out_k, out_r, 2e-3f, 4 * EPS16);
    expect_close(tag, cs_k.data(), cs_r.data(), cs_r.size(), 1e-4f, 1e-3f);
}

static void prefill_case(int H, int KVH, int hd)
{
    std::vector<int> len = {1, 17, 0, 130, 70};
    std::vector<kern_seq> seqs;
    int cap = 140, ld = qkv_ld(H, KVH, hd), rows = pack(seqs, len, std::vector<int>(5, 0));
    fvec qf, cs_r;
    hvec qh;
    rand16((size_t)rows * ld, 1.5f, qf, qh);
    char tag[96];
    snprintf(tag, sizeof tag, "prefill H %d KVH %d hd %d", H, KVH, hd);
    prefill_compare(tag, kern_attn_prefill_cuda, H, KVH, hd, seqs, rows, qf, qh, cs_r);

    /* the fill from the reference's column sums, then from sums with exact
     * ties (the newer token must win them) */
    const float *k = qf.data() + (size_t)H * hd, *v = k + (size_t)KVH * hd;
    const __half *kk = qh.data() + (size_t)H * hd, *vk = kk + (size_t)KVH * hd;
    fvec tied(cs_r.size());
    for (size_t i = 0; i < tied.size(); i++)
        tied[i] = (float)((i * 2654435761u) % 5) / 4.0f;
    for (const fvec *cs : {&cs_r, &tied})
        kv_fill_case(tag, H, KVH, hd, cap, seqs, len, k, v, kk, vk, ld, *cs);
}

static void kv_fill_case(const char *tag, int H, int KVH, int hd, int cap,
                         const std::vector<kern_seq> &seqs, const std::vector<int> &len,
                         const float *k, const float *v, const __half *kk, const __half *vk,
                         int ld, const fvec &cs_r)
{
    int n_seq = (int)seqs.size();
    size_t slots = (size_t)n_seq * KVH * cap, rb = kern_q4_row_bytes(hd);
    size_t kb = kern_kv_prefill_scratch_bytes(130, kern_cpu_threads());
    std::vector<char> kscratch(kb);
    for (kern_kv_fmt fmt : {KERN_KV_FMT_PLAIN, KERN_KV_FMT_Q4}) {
        std::vector<int32_t> pos_r(slots, -3), pos_k(slots, -3);
        fvec sc_r(slots, -1.0f), sc_k(slots, -1.0f);
        hvec kc_r(slots * hd, __half(0.0f)), vc_r = kc_r, kc_k = kc_r, vc_k = kc_r;
        std::vector<uint8_t> kq_r(slots * rb), vq_r(slots * rb), kq_k(slots * rb),
            vq_k(slots * rb);
        if (fmt == KERN_KV_FMT_Q4)
            cr_assert_eq(kern_kv_prefill_q4(kq_r.data(), vq_r.data(), sc_r.data(), pos_r.data(),
                                            k, v, ld, cs_r.data(), seqs.data(), n_seq, H, KVH,
                                            hd, cap, kscratch.data(), kb), 0);
        else
            cr_assert_eq(kern_kv_prefill_h16(bits(kc_r), bits(vc_r), sc_r.data(), pos_r.data(),
                                             k, v, ld, cs_r.data(), seqs.data(), n_seq, H, KVH,
                                             hd, cap, kscratch.data(), kb), 0);
        void *kw = fmt == KERN_KV_FMT_Q4 ? (void *)kq_k.data() : kc_k.data();
        void *vw = fmt == KERN_KV_FMT_Q4 ? (void *)vq_k.data() : vc_k.data();
        cr_assert_eq(kern_kv_prefill_cuda(fmt, kw, vw, sc_k.data(), pos_k.data(), kk, vk, ld,
                                          cs_r.data(), seqs.data(), n_seq, H, KVH, hd, cap, 130,
                                          NULL),
                     0, "%s: %s", tag, err_msg());
        /* the slots past a sequence's kept tokens are the caller's: compare
         * the kept ones (pos, scores, rows) */
        for (int s = 0; s < n_seq; s++)
            for (int g = 0; g < KVH; g++) {
                int kept = len[s] < seqs[s].budget ? len[s] : seqs[s].budget;
                for (int t = 0; t < kept; t++) {
                    size_t sl = ((size_t)s * KVH + g) * cap + t;
                    cr_assert_eq(pos_k[sl], pos_r[sl], "%s %s seq %d KV head %d slot %d: pos",
                                 tag, kern_kv_fmt_name(fmt), s, g, t);
                    cr_assert_eq(sc_k[sl], sc_r[sl], "%s %s seq %d KV head %d slot %d: score",
                                 tag, kern_kv_fmt_name(fmt), s, g, t);
                    if (fmt == KERN_KV_FMT_Q4)
                        cr_assert(!memcmp(&kq_k[sl * rb], &kq_r[sl * rb], rb) &&
                                      !memcmp(&vq_k[sl * rb], &vq_r[sl * rb], rb),
                                  "%s q4 seq %d KV head %d slot %d: blocks differ", tag, s, g,
                                  t);
                    else
                        cr_assert(!memcmp(&kc_k[sl * hd], &kc_r[sl * hd], 2 * (size_t)hd) &&
                                      !memcmp(&vc_k[sl * hd], &vc_r[sl * hd], 2 * (size_t)hd),
                                  "%s fp16 seq %d KV head %d slot %d: rows differ", tag, s, g,
                                  t);
                }
            }
    }
}

/* multi-head at two widths, GQA at two, one more grouping (the widths:
 * 2, 8 and 16 lanes per key row, and 80's partly idle group) */
Test(kern_emu, prefill_attention_and_kv_fill, .timeout = 300)
{
    prefill_case(3, 3, 16);
    prefill_case(3, 3, 80);
    prefill_case(8, 2, 64);
    prefill_case(8, 2, 128);
    prefill_case(6, 3, 16);
}

/* The flash kernel (kernels/flash_prefill.cu) through its launcher, gy
 * blocks on y (kern_cuda_set_grid_y_max; 0 the default). */
static void flash_case(int H, int KVH, int hd, const std::vector<int> &len,
                       const std::vector<int> &win, unsigned gy)
{
    std::vector<kern_seq> seqs;
    int rows = pack(seqs, len, win);
    fvec qf, cs_r;
    hvec qh;
    rand16((size_t)rows * qkv_ld(H, KVH, hd), 1.5f, qf, qh);
    char tag[96];
    snprintf(tag, sizeof tag, "flash H %d KVH %d hd %d y %u", H, KVH, hd, gy);
    kern_cuda_set_grid_y_max(gy);
    prefill_compare(tag, kern_attn_prefill_flash_cuda, H, KVH, hd, seqs, rows, qf, qh, cs_r);
    kern_cuda_set_grid_y_max(0);
}

/* every head width class (8 .. 128: padded to 32, 64, 128), multi-head and
 * GQA, prompts at the tile and block edges (0, 1, 15, 16, 63, 64, 65, 129,
 * 200 tokens) */
Test(kern_emu, flash_prefill_tile_edges_and_head_widths, .timeout = 300)
{
    std::vector<int> len = {1, 15, 0, 16, 63, 64, 65, 129, 200};
    int heads[][2] = {{2, 2}, {4, 1}, {6, 3}};
    for (int hd : {8, 24, 40, 64, 72, 128})
        for (int g = 0; g < 3; g++) {
            if (g == 2 && hd != 64)
                continue; /* 6 over 3: one width is enough */
            flash_case(heads[g][0], heads[g][1], hd, len, std::vector<int>(len.size(), 0), 0);
        }
}

/* sliding windows: 1 key, narrower than a tile, a tile, across tiles,
 * wider than the prompt; beside a sequence without one */
Test(kern_emu, flash_prefill_sliding_windows, .timeout = 300)
{
    std::vector<int> len = {200, 70, 129, 40};
    for (int w : {1, 5, 24, 32, 64, 100, 1000})
        for (int hd : {64, 128})
            flash_case(hd == 64 ? 8 : 3, hd == 64 ? 2 : 3, hd, len, {w, w, w, 0}, 0);
}

/* fewer blocks on y than query (key) blocks: each block loops over several */
Test(kern_emu, flash_prefill_y_loops)
{
    std::vector<int> len = {200, 129, 5};
    for (unsigned gy : {1u, 2u})
        for (int hd : {32, 128})
            flash_case(4, 2, hd, len, {0, 24, 0}, gy);
}

/* The GEMM route's pieces: the causal softmax of given scores S, in blocks
 * of query rows, and the column sums added up over blocks and over the
 * query heads of a KV head, against the same sums done here in double. */
Test(kern_emu, gemm_route_softmax_and_column_sums)
{
    int n = 70, H = 4, KVH = 2, group = H / KVH, qb = 32;
    fvec S((size_t)H * n * n);
    for (float &x : S)
        x = 3.0f * frand();
    std::vector<double> want((size_t)n * KVH, 0.0);
    fvec colsum((size_t)n * KVH, NAN);
    for (int i0 = 0; i0 < n; i0 += qb) {
        int r = n - i0 < qb ? n - i0 : qb, L = i0 + r;
        /* the block's S: (H, r, L), rows i0 .. i0 + r - 1 */
        fvec Sb((size_t)H * r * L), stats((size_t)H * r * 2);
        for (int h = 0; h < H; h++)
            for (int rr = 0; rr < r; rr++)
                for (int j = 0; j < L; j++)
                    Sb[((size_t)h * r + rr) * L + j] = S[((size_t)h * n + i0 + rr) * n + j];
        hvec P((size_t)H * r * L);
        cr_assert_eq(kern_prefill_softmax_cuda(Sb.data(), P.data(), stats.data(), r, L, i0, H,
                                               NULL), 0, "%s", err_msg());
        for (int h = 0; h < H; h++)
            for (int rr = 0; rr < r; rr++) {
                int i = i0 + rr;
                const float *s = &S[((size_t)h * n + i) * n];
                double m = -INFINITY, l = 0;
                for (int j = 0; j <= i; j++)
                    m = s[j] > m ? s[j] : m;
                for (int j = 0; j <= i; j++)
                    l += exp(s[j] - m);
                for (int j = 0; j < L; j++) {
                    double p = j <= i ? exp(s[j] - m) / l : 0.0;
                    float got = __half2float(P[((size_t)h * r + rr) * L + j]);
                    cr_assert(fabs(got - p) <= 1e-6 + 1e-3 * p, "P[%d][%d][%d] = %g, want %g",
                              h, i, j, got, p);
                    want[(size_t)j * KVH + h / group] += p;
                }
            }
        cr_assert_eq(kern_prefill_colsum_cuda(Sb.data(), stats.data(), colsum.data(), r, L, i0,
                                              H, 0, H, KVH, 0, NULL), 0, "%s", err_msg());
    }
    for (size_t i = 0; i < colsum.size(); i++)
        cr_assert(fabs(colsum[i] - want[i]) <= 1e-5 + 1e-4 * want[i], "colsum[%zu] = %g, want %g",
                  i, colsum[i], want[i]);
}

/* ------------------------------------------------------------ 4-bit weights */

/* Expansion of 4-bit rows to fp16: the fp32 value of the reference, bit for
 * bit, rounded to fp16; row lengths a multiple of 8 (the vector kernel,
 * aligned or not) and not (the any-shape kernel), short last groups. */
Test(kern_emu, q4_expansion_equals_the_reference)
{
    for (int n : {64, 200, 13, 72}) {
        size_t rows = 5, rb = kern_q4_row_bytes(n);
        fvec x(rows * n);
        for (float &e : x)
            e = 2.0f * frand();
        std::vector<uint8_t> blocks(rows * rb);
        kern_q4_quantize_ref(blocks.data(), x.data(), rows, n);
        fvec want(rows * n);
        kern_q4_dequant_ref(want.data(), blocks.data(), rows, n);
        for (int shift : {0, 1}) { /* dst at an odd half: not 16-byte aligned */
            hvec dst(rows * n + 1, __ushort_as_half(0x7e00));
            cr_assert_eq(kern_q4_dequant_cuda(dst.data() + shift, blocks.data(), rows, n, NULL),
                         0, "%s", err_msg());
            for (size_t i = 0; i < rows * n; i++)
                cr_assert_eq(bits(dst)[i + shift], emu_f32_to_f16(want[i]),
                             "n %d shift %d [%zu]: %g, reference %g", n, shift, i,
                             __half2float(dst[i + shift]), want[i]);
        }
    }
}

/* ------------------------------------------------------ element-wise ops */

Test(kern_emu, fp16_conversions_bias_relu_add_gather)
{
    size_t n = 1000;
    fvec x(n), back(n);
    for (float &e : x)
        e = 100.0f * frand();
    hvec h(n);
    cr_assert_eq(kern_f32_to_f16_cuda(h.data(), x.data(), n, NULL), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(bits(h)[i], emu_f32_to_f16(x[i]), "f32 -> f16 [%zu]", i);
    cr_assert_eq(kern_f16_to_f32_cuda(back.data(), h.data(), n, NULL), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back[i], __half2float(h[i]), "f16 -> f32 [%zu]", i);

    int rows = 7, d = 40;
    fvec xf, bf, yf;
    hvec xh, bh, yh;
    rand16((size_t)rows * d, 2.0f, xf, xh);
    rand16((size_t)d, 1.0f, bf, bh);
    for (int relu = 0; relu < 2; relu++)
        for (int with_b = 0; with_b < 2; with_b++) {
            fvec r = xf;
            hvec k = xh;
            kern_bias_act_ref(r.data(), with_b ? bf.data() : NULL, rows, d, relu);
            cr_assert_eq(kern_bias_act_cuda(k.data(), with_b ? bh.data() : NULL, rows, d, relu,
                                            NULL), 0);
            expect_close16("bias_act", k, r, 1e-3f, 2 * EPS16);
        }
    rand16((size_t)rows * d, 2.0f, yf, yh);
    fvec r = yf;
    kern_add_ref(r.data(), xf.data(), r.size());
    cr_assert_eq(kern_add_cuda(yh.data(), xh.data(), yh.size(), NULL), 0);
    expect_close16("add", yh, r, 1e-3f, 2 * EPS16);

    std::vector<int32_t> pick = {6, 0, 3, 3};
    hvec g(pick.size() * d);
    cr_assert_eq(kern_gather_rows_cuda(g.data(), xh.data(), pick.data(), (int)pick.size(), d,
                                       NULL), 0);
    for (size_t i = 0; i < pick.size(); i++)
        cr_assert(!memcmp(&g[i * d], &xh[(size_t)pick[i] * d], 2 * (size_t)d), "gather row %zu",
                  i);
}

Test(kern_emu, embed_layernorm_rmsnorm)
{
    int V = 50, P = 40, d = 96, n = 9;
    fvec tf, pf;
    hvec th, ph;
    rand16((size_t)V * d, 1.0f, tf, th);
    rand16((size_t)P * d, 1.0f, pf, ph);
    std::vector<int32_t> ids(n), pos(n);
    for (int i = 0; i < n; i++)
        ids[i] = (i * 7) % V, pos[i] = (i * 5) % P;
    for (int learned = 0; learned < 2; learned++) {
        fvec r((size_t)n * d);
        hvec k((size_t)n * d);
        kern_embed_ref(r.data(), tf.data(), learned ? pf.data() : NULL, ids.data(), pos.data(), n,
                       d);
        cr_assert_eq(kern_embed_cuda(k.data(), th.data(), learned ? ph.data() : NULL, ids.data(),
                                     pos.data(), n, d, NULL), 0, "%s", err_msg());
        expect_close16(learned ? "embed + positions" : "embed", k, r, 1e-3f, 2 * EPS16);
    }
    fvec xf, wf, bf;
    hvec xh, wh, bh;
    rand16((size_t)n * d, 3.0f, xf, xh);
    rand16((size_t)d, 1.0f, wf, wh);
    rand16((size_t)d, 0.5f, bf, bh);
    fvec r((size_t)n * d);
    hvec k((size_t)n * d);
    kern_layernorm_ref(r.data(), xf.data(), wf.data(), bf.data(), n, d, 1e-5f);
    cr_assert_eq(kern_layernorm_cuda(k.data(), xh.data(), wh.data(), bh.data(), n, d, 1e-5f,
                                     NULL), 0);
    expect_close16("layernorm", k, r, 2e-3f, 4 * EPS16);
    kern_rmsnorm_ref(r.data(), xf.data(), wf.data(), n, d, 1e-6f);
    cr_assert_eq(kern_rmsnorm_cuda(k.data(), xh.data(), wh.data(), n, d, 1e-6f, NULL), 0);
    expect_close16("rmsnorm", k, r, 2e-3f, 4 * EPS16);
}

/* RoPE over every dimension and over a part (GPT-NeoX's rotary_pct), query
 * heads over fewer KV heads; SwiGLU from a fused gate_up row; GELU. */
Test(kern_emu, rope_swiglu_gelu)
{
    int n = 6, H = 4, KVH = 2, hd = 32, ld = qkv_ld(H, KVH, hd);
    for (int rot : {32, 8}) {
        fvec qf;
        hvec qh;
        rand16((size_t)n * ld, 2.0f, qf, qh);
        std::vector<int32_t> pos(n);
        for (int i = 0; i < n; i++)
            pos[i] = 3 * i + 1000;
        fvec inv(rot / 2);
        for (int i = 0; i < rot / 2; i++)
            inv[i] = powf(10000.0f, -2.0f * i / rot);
        cr_assert_eq(kern_rope_ref(qf.data(), qf.data() + (size_t)H * hd, ld, pos.data(), n, H,
                                   KVH, hd, rot, inv.data()), 0);
        cr_assert_eq(kern_rope_cuda(qh.data(), qh.data() + (size_t)H * hd, ld, pos.data(), n, H,
                                    KVH, hd, rot, inv.data(), NULL), 0, "%s", err_msg());
        char what[32];
        snprintf(what, sizeof what, "rope rot %d", rot);
        expect_close16(what, qh, qf, 2e-3f, 4 * EPS16);
    }
    int d = 48;
    fvec gu;
    hvec guh;
    rand16((size_t)n * 2 * d, 4.0f, gu, guh);
    fvec r((size_t)n * d);
    hvec k((size_t)n * d);
    kern_swiglu_ref(r.data(), d, gu.data(), gu.data() + d, 2 * d, n, d);
    cr_assert_eq(kern_swiglu_cuda(k.data(), d, guh.data(), guh.data() + d, 2 * d, n, d, NULL), 0);
    expect_close16("swiglu", k, r, 2e-3f, 4 * EPS16);
    kern_gelu_ref(r.data(), gu.data(), r.size());
    cr_assert_eq(kern_gelu_cuda(k.data(), guh.data(), k.size(), NULL), 0);
    expect_close16("gelu", k, r, 2e-3f, 4 * EPS16);
}

/* ------------------------------------------------- the emulation itself */

/* What the emulated device must catch, or the tests above could not fail
 * for it: a block whose threads do not all reach a barrier cannot finish;
 * a queued copy has not happened before its stream is synchronized (nor
 * an operation ordered after it by an event), and has after; a bad launch
 * configuration is the sticky error. */
Test(kern_emu, the_emulated_device_catches_what_a_gpu_would)
{
    /* barrier divergence: thread 0 skips the barrier the others wait at */
    int rc = emu_launch(dim3(1), 64, [] {
        if (threadIdx.x != 0)
            __syncthreads();
    });
    cr_assert_eq(rc, -1, "a barrier not every thread reaches must not complete");
    /* a warp's shuffle sees the other lanes' values */
    std::vector<int> got(32);
    cr_assert_eq(emu_launch(dim3(1), 32, [&] {
                     got[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x * 3, 1);
                 }),
                 0);
    for (int l = 0; l < 32; l++)
        cr_assert_eq(got[l], (l ^ 1) * 3);

    /* streams: a queued copy waits for a synchronize */
    cudaStream_t a, b;
    cudaEvent_t ev;
    cr_assert_eq(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    void *dev, *host, *dev2;
    cr_assert_eq(cudaMalloc(&dev, 64), cudaSuccess);
    cr_assert_eq(cudaMalloc(&dev2, 64), cudaSuccess);
    cr_assert_eq(cudaHostAlloc(&host, 64, cudaHostAllocDefault), cudaSuccess);
    memset(host, 7, 64);
    cr_assert_eq(cudaMemcpyAsync(dev, host, 64, cudaMemcpyHostToDevice, a), cudaSuccess);
    cr_assert_eq(((unsigned char *)dev)[0], 0xff, "device memory starts as 0xff bytes and "
                 "a queued copy has not run yet");
    memset(host, 9, 64); /* rewriting the pinned source before the copy ran... */
    cr_assert_eq(cudaEventRecord(ev, a), cudaSuccess);
    /* b copies dev to dev2 after the event: running b runs a's copy first */
    cr_assert_eq(cudaStreamWaitEvent(b, ev, 0), cudaSuccess);
    cr_assert_eq(cudaMemcpyAsync(dev2, dev, 64, cudaMemcpyDeviceToDevice, b), cudaSuccess);
    cr_assert_eq(((unsigned char *)dev2)[0], 0xff);
    cr_assert_eq(cudaStreamSynchronize(b), cudaSuccess);
    cr_assert_eq(((unsigned char *)dev)[0], 9, "... is what the copy takes, as on a GPU");
    cr_assert_eq(((unsigned char *)dev2)[63], 9);
    cudaFreeHost(host), cudaFree(dev), cudaFree(dev2);
    cudaEventDestroy(ev), cudaStreamDestroy(a), cudaStreamDestroy(b);

    /* a launch of more than 1024 threads is refused, and reported once */
    emu_launch_cfg(dim3(1), dim3(2048), 0, NULL, 0, [] {});
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    cr_assert_eq(cudaGetLastError(), cudaSuccess);

    /* past 256 threads a block needs the kernel's __launch_bounds__ to cover
     * it (what the GPU's register file makes of a kernel that has none is
     * not known here): without one, or with a smaller one, the launch fails
     * as on the GPU and nothing runs; within it, or at 256, it runs */
    std::atomic<int> ran{0};
    struct { unsigned threads, bound; bool runs; } cases[] = {
        {512, 0, false}, {1024, 512, false}, {512, 512, true}, {1024, 1024, true},
        {256, 0, true}};
    for (const auto &c : cases) {
        ran = 0;
        emu_launch_cfg(dim3(2), dim3(c.threads), 0, NULL, c.bound, [&ran] { ran++; });
        cr_assert_eq(cudaGetLastError(), c.runs ? cudaSuccess : cudaErrorLaunchOutOfResources,
                     "%u threads, bound %u", c.threads, c.bound);
        cr_assert_eq(ran.load(), c.runs ? 2 * (int)c.threads : 0, "%u threads, bound %u",
                     c.threads, c.bound);
    }
}

#ifdef EMU_ASAN
/* Under AddressSanitizer: an emulated thread that reads past a local array
 * after waiting at a barrier is reported (ASan exits 1). While the contexts
 * named their stacks, ASan's swapcontext cleared the waiting thread's stack
 * shadow, the array's redzone with it, and the read went unseen. */
Test(kern_emu, asan_sees_a_resumed_threads_stack_overflow, .exit_code = 1)
{
    /* alloca: a fixed array would live on ASan's fake stack (stack-use-
     * after-return detection), not on the coroutine's */
    volatile int n = 8;
    emu_launch(dim3(1), 2, [&n] {
        volatile int *a = (volatile int *)alloca(n * sizeof(int));
        for (int i = 0; i < n; i++)
            a[i] = i;
        __syncthreads();
        /* thread 0 reached the barrier first and waited (the last one
         * through does not switch) */
        int x = a[threadIdx.x == 0 ? n : 0];
        (void)x;
    });
}
#endif
