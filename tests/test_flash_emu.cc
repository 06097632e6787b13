/* test_flash_emu.cc: the flash prefill kernels (kernels/flash_prefill.cu),
 * their own text run on the CPU through tests/cuda_emu, against the plain-C
 * reference kern_attn_prefill_ref: out and the H2O column sums, over the
 * tile and block edges (prompts of 0, 1, 15, 16, 63, 64, 65, 129, 200
 * tokens), every head width class (8 .. 128: padded to 32, 64, 128),
 * multi-head and grouped-query attention (2/2, 4/1, 6/3), sliding windows
 * narrower than a tile, across tiles and wider than the prompt, and the
 * y-loops (one and two blocks on y, each taking several query blocks).
 * The GPU runs the same kernels in test_kern_cuda (gpu suite); this runs
 * them in CI, where no GPU is. Tolerances are the gpu suite's. */
#include <criterion/criterion.h>

#include <vector>

extern "C" {
#include "err.h"
}

#include "cuda_emu.hpp"
#include "test_rng.h"


#define EPS16 (1.0f / 1024)

struct flash_case {
    int H, KVH, hd;
    std::vector<int> len, win; /* win: per sequence, 0 none */
    unsigned gy;               /* the y extent; 0: the default */
};

/* The flash kernels through their launcher, as the backend calls them;
 * gy: the y extent (kern_cuda_set_grid_y_max), 0 the default. */
static void run_kernels(const flash_case &c, const std::vector<__half> &qkv, int ld,
                        const std::vector<kern_seq> &seqs, std::vector<__half> &out,
                        std::vector<float> &colsum, int rows)
{
    int n_seq = (int)seqs.size(), max_new = 0;
    for (const kern_seq &s : seqs)
        max_new = s.n_new > max_new ? s.n_new : max_new;
    std::vector<float> stats((size_t)rows * c.H * 2, NAN);
    const __half *q = qkv.data(), *k = q + (size_t)c.H * c.hd, *v = k + (size_t)c.KVH * c.hd;
    kern_cuda_set_grid_y_max(c.gy);
    int rc = kern_attn_prefill_flash_cuda(out.data(), c.H * c.hd, q, k, v, ld, seqs.data(), n_seq,
                                          c.H, c.KVH, c.hd, 1.0f / sqrtf((float)c.hd),
                                          colsum.data(), stats.data(), max_new, NULL);
    kern_cuda_set_grid_y_max(0);
    cr_assert_eq(rc, 0, "%s", err_msg());
}

static void check_case(const flash_case &c)
{
    int n_seq = (int)c.len.size(), rows = 0, ld = (c.H + 2 * c.KVH) * c.hd, d = c.H * c.hd;
    std::vector<kern_seq> seqs(n_seq);
    for (int s = 0; s < n_seq; s++) {
        seqs[s] = kern_seq{};
        seqs[s].row = rows, seqs[s].n_new = c.len[s], seqs[s].window = c.win[s];
        rows += c.len[s];
    }
    std::vector<float> qf((size_t)rows * ld);
    std::vector<__half> qh(qf.size());
    for (size_t i = 0; i < qf.size(); i++) {
        qh[i] = __float2half_rn(1.5f * frand());
        qf[i] = __half2float(qh[i]);
    }
    /* the reference */
    std::vector<float> out_ref((size_t)rows * d), cs_ref((size_t)rows * c.KVH);
    int max_new = 0;
    for (int l : c.len)
        max_new = l > max_new ? l : max_new;
    size_t sb = kern_attn_prefill_scratch_bytes(max_new, kern_cpu_threads());
    std::vector<float> scratch(sb / 4 + 1);
    const float *q = qf.data(), *k = q + (size_t)c.H * c.hd, *v = k + (size_t)c.KVH * c.hd;
    cr_assert_eq(kern_attn_prefill_ref(out_ref.data(), d, q, k, v, ld, seqs.data(), n_seq, c.H,
                                       c.KVH, c.hd, 1.0f / sqrtf((float)c.hd), cs_ref.data(),
                                       scratch.data(), sb),
                 0);
    /* the kernels; out poisoned (NaN halves) to catch rows never written */
    std::vector<__half> out((size_t)rows * d, __ushort_as_half(0x7e00));
    std::vector<float> cs((size_t)rows * c.KVH, NAN);
    run_kernels(c, qh, ld, seqs, out, cs, rows);
    for (size_t i = 0; i < out.size(); i++) {
        float got = __half2float(out[i]), want = out_ref[i];
        cr_assert(fabsf(got - want) <= 2e-3f + 4 * EPS16 * fabsf(want),
                  "H %d KVH %d hd %d: out[%zu] (row %zu, col %zu) = %g, reference %g", c.H,
                  c.KVH, c.hd, i, i / d, i % d, got, want);
    }
    for (size_t i = 0; i < cs.size(); i++)
        cr_assert(fabsf(cs[i] - cs_ref[i]) <= 1e-4f + 1e-3f * fabsf(cs_ref[i]),
                  "H %d KVH %d hd %d: colsum[%zu] (row %zu, KV head %zu) = %g, reference %g",
                  c.H, c.KVH, c.hd, i, i / c.KVH, i % c.KVH, cs[i], cs_ref[i]);
}

/* every head width class, multi-head and GQA, prompts at the tile edges */
Test(flash_emu, tile_edges_and_head_widths, .timeout = 300)
{
    int hds[] = {8, 24, 40, 64, 72, 128};
    std::vector<int> len = {1, 15, 0, 16, 63, 64, 65, 129, 200};
    int heads[][2] = {{2, 2}, {4, 1}, {6, 3}};
    for (int hd : hds)
        for (int g = 0; g < 3; g++) {
            if (g == 2 && hd != 64)
                continue; /* 6 over 3: one width is enough */
            check_case({heads[g][0], heads[g][1], hd, len, std::vector<int>(len.size(), 0), 0});
        }
}

/* sliding windows: 1 key, narrower than a tile, a tile, across tiles,
 * wider than the prompt; beside a sequence without one */
Test(flash_emu, sliding_windows, .timeout = 300)
{
    std::vector<int> len = {200, 70, 129, 40};
    for (int w : {1, 5, 24, 32, 64, 100, 1000})
        for (int hd : {64, 128})
            check_case({hd == 64 ? 8 : 3, hd == 64 ? 2 : 3, hd, len, {w, w, w, 0}, 0});
}

/* fewer blocks on y than query (key) blocks: each block loops over several */
Test(flash_emu, y_loops)
{
    std::vector<int> len = {200, 129, 5};
    for (unsigned gy : {1u, 2u})
        for (int hd : {32, 128})
            check_case({4, 2, hd, len, {0, 24, 0}, gy});
}
