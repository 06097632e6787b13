/* cost.c: the cost model: DESIGN.md "Throughput bound" evaluated for a
 * policy on a measured hardware profile, term by term (scheduler.h
 * "cost model"), from the exact plan of that policy. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"

const char *sched_cost_term_name(int t)
{
    static const char *names[COST_TERMS] = {"h2d",         "d2h",
                                            "disk read",   "disk write",
                                            "disk reads + writes",
                                            "host memory (CPU attention)",
                                            "compute",     "device memory"};
    return t >= 0 && t < COST_TERMS ? names[t] : "?";
}

/* bytes over a rate in GB/s; an unmeasured rate with bytes to move is
 * infinitely slow */
static double secs(double bytes, double gbps)
{
    if (bytes <= 0)
        return 0;
    return gbps > 0 ? bytes / (gbps * 1e9) : INFINITY;
}

/* Prefill passes over a block: generate packs whole prompts, up to
 * max_rows rows per GPU batch and pass (gen_plan.c gen_shape). */
int sched_prefill_passes(const sched_shape *sh, int gbs, int prompt_len)
{
    int per = sh->max_rows / prompt_len;
    if (per < 1)
        per = 1;
    return (gbs + per - 1) / per;
}

/* The GEMM rate (FLOP/s) of a product with `rows` rows: the profile's
 * shapes interpolated in log(rows); below the first, the rate falls with
 * the rows (the weights are read whatever m is); above the last, the last. */
static double gemm_rate(const sched_calib *hw, double rows)
{
    int n = hw->n_gemm;
    if (n < 1)
        return hw->gemm * 1e12;
    const int *r = hw->gemm_rows;
    const double *v = hw->gemm_at;
    if (rows <= r[0])
        return v[0] * 1e12 * rows / r[0];
    for (int i = 1; i < n; i++)
        if (rows <= r[i]) {
            double t = log(rows / r[i - 1]) / log((double)r[i] / r[i - 1]);
            return (v[i - 1] + t * (v[i] - v[i - 1])) * 1e12;
        }
    return v[n - 1] * 1e12;
}

act_io sched_act_moves(const sched_geom *g, int prompt_len)
{
    act_io a = {0};
    if (g->act_tier == SCHED_GPU)
        return a;
    double n = (double)(g->L - 1) * g->K, row = (double)g->d * g->es;
    a.step = n * g->gbs * row;
    a.pre = n * g->gbs * prompt_len * row;
    if (g->act_tier == SCHED_DISK) {
        a.step_disk = n * off_align_up((size_t)g->gbs * g->d * g->es);
        a.pre_disk = n * off_align_up((size_t)g->gbs * prompt_len * g->d * g->es);
    }
    return a;
}

static void take_max(const double *t, double *out, int *which)
{
    *out = 0;
    *which = 0;
    for (int i = 0; i < COST_TERMS; i++)
        if (t[i] > *out) {
            *out = t[i];
            *which = i;
        }
}

int sched_cost_eval(const sched_model *c, size_t es, const sched_policy *p,
                    const sched_shape *sh, int prompt_len, int gen_len, const sched_calib *hw,
                    sched_cost *out)
{
    RETURN_IF(prompt_len < 1 || gen_len < 1, -EINVAL,
              "cost model: prompt length %d and generation length %d must be >= 1",
              prompt_len, gen_len);
    sched_geom g;
    sched_plan pl;
    FORWARD_IF(sched_plan_geom(c, es, p, sh, &g, &pl));
    memset(out, 0, sizeof *out);
    double L = g.L, K = g.K, N = g.block, gbs = g.gbs, s = prompt_len;
    /* crosses h2d each load; nothing on the CPU backend, whose compute reads
     * the CPU tier's weights where they lie (sched.c) and whose disk share
     * is read straight into the weight slot (lanes.c) */
    int host = sh->host_visible;
    double w_off = host ? 0 : L * (double)g.blob - (double)g.w_gpu_all;
    double w_disk = (double)g.w_disk_all;                  /* read from disk each load */
    double W_all = L * (double)g.blob + (double)c->vocab * c->hidden * g.head_es;
    /* 4-bit matrices are expanded before their GEMMs: written once, read
     * once more in the storage type; where bf16 matmuls take a GPU batch's
     * rows (kern.h KERN_Q4_BF16_ROWS_MIN) the bf16 expansion stays in each
     * thread's cache (kern_linear_q4_bf16), and its arithmetic is charged
     * as writing and reading the bf16 matrix once: about what it costs (a
     * decode block of 64 on the Zen 4 VM, 2 threads: 0.12 ns a weight, a
     * bf16 write and read at its 20 GB/s 0.2 ns) */
    double q_es = strcmp(hw->matmul, "bf16") == 0 && g.gbs >= KERN_Q4_BF16_ROWS_MIN ? 2 : es;
    if (g.wq)
        W_all += 2.0 * L * (double)sched_blob_matrix_elems(c, NULL) * q_es;
    /* 16-bit layers are widened once per block: the blob read and the
     * widened copy written once, which each batch then reads instead
     * (bf16 matmuls read the 16 bits themselves) */
    int widens = g.wh && !g.wdirect;
    double W_widen = widens ? L * (double)(g.blob + g.w_wide) : 0;
    if (widens)
        W_all += L * ((double)g.w_wide - (double)g.blob);
    double kv_g = L * K * g.kv[SCHED_GPU].bytes, kv_c = L * K * g.kv[SCHED_CPU].bytes;
    double kv_d = L * K * g.kv[SCHED_DISK].bytes, kv_d_io = L * K * g.kv_disk_stride;
    int attn = p->cpu_attention;
    double host_seqs = K * (g.kv_n[SCHED_CPU] + g.kv_n[SCHED_DISK]);
    double row = (double)g.d * es;
    act_io x = sched_act_moves(&g, prompt_len);
    /* a decode step's attention reads the slots in use, and it moves those
     * of the records off the GPU */
    double live = sched_kv_live_frac(sh->cap, prompt_len, gen_len);
    double kv_link = attn ? 0 : (kv_c + kv_d) * live;
    double params = sched_matmul_params(c), head = sched_head_params(c);
    int np = sched_prefill_passes(sh, g.gbs, prompt_len);
    double f_step = gemm_rate(hw, gbs);
    double f_pre = gemm_rate(hw, sh->max_rows < gbs * s ? sh->max_rows : gbs * s);

    double *t = out->step;
    t[COST_H2D] = secs(w_off + kv_link + (attn ? L * host_seqs * row : 0) + x.step, hw->h2d);
    t[COST_D2H] = secs(kv_link + (attn ? 3 * L * host_seqs * row : 0) + x.step, hw->d2h);
    /* a step reads the slots in use of a disk record */
    double kv_d_step = L * K * sched_kv_step_load_bytes(&g, sh->cap, prompt_len, gen_len);
    t[COST_DISK_READ] = secs(w_disk + kv_d_step + x.step_disk, hw->disk_read);
    /* a step appends to a disk record's row log, and writes back its slots in
     * use where the log is full */
    t[COST_DISK_WRITE] = secs(L * K * sched_kv_step_store_bytes(&g, sh->cap, prompt_len, gen_len) +
                                  x.step_disk,
                              hw->disk_write);
    t[COST_DRAM] = attn ? secs((kv_c + kv_d) * live, hw->dram) : 0;
    t[COST_FLOPS] = f_step > 0 ? 2 * params * N / f_step : INFINITY;
    t[COST_DEV_MEM] = secs(K * W_all + W_widen + kv_g * live + kv_link, hw->dev_mem);

    double *q = out->prefill;
    q[COST_H2D] = secs(np * w_off + x.pre, hw->h2d);
    /* the prompt's KV goes home once: whole records, or with CPU attention
     * the k and v rows of the host sequences */
    q[COST_D2H] = secs((attn ? 2 * L * host_seqs * s * row : kv_c + kv_d) + x.pre, hw->d2h);
    q[COST_DISK_READ] = secs(np * w_disk + x.pre_disk, hw->disk_read);
    q[COST_DISK_WRITE] = secs((g.kv_n[SCHED_DISK] ? kv_d_io : 0) + x.pre_disk, hw->disk_write);
    /* DESIGN.md's 2 params N s, less what a prefill skips: the LM head
     * multiplies each sequence's last row only (zigzag.c), a GPU batch's
     * rows at a time */
    q[COST_FLOPS] = f_pre > 0 && f_step > 0
                        ? 2 * (params - head) * N * s / f_pre + 2 * head * N / f_step
                        : INFINITY;
    q[COST_DEV_MEM] = secs(np * (K * W_all + W_widen) + kv_g + kv_c + kv_d, hw->dev_mem);

    /* (after its parts: a disk that only reads is limited by "disk read") */
    t[COST_DISK] = t[COST_DISK_READ] + t[COST_DISK_WRITE];
    q[COST_DISK] = q[COST_DISK_READ] + q[COST_DISK_WRITE];
    take_max(out->step, &out->step_s, &out->step_limit);
    take_max(out->prefill, &out->prefill_s, &out->prefill_limit);
    double total = out->prefill_s + (gen_len - 1) * out->step_s, busy = 0;
    out->tok_s = total > 0 && isfinite(total) ? N * gen_len / total : 0;
    for (int i = 0; i < COST_TERMS; i++)
        if (i != COST_DISK) /* (the sum of two others) */
            busy += out->prefill[i] + (gen_len - 1) * out->step[i];
    out->busy_tok = busy / (N * gen_len);
    return 0;
}
