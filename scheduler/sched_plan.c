/* sched_plan.c: where every byte of a policy lives, before anything is
 * allocated: the geometry of the tiers (cut points of a layer blob, KV
 * records per tier, staging sizes) and the per-tier totals that the caps
 * are checked against.
 *
 * The weight cut follows FlexGen's rule: a tensor goes to the tier in
 * whose percentage band its midpoint (by bytes, in blob order) falls, so
 * each tier holds a contiguous range of the blob.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"

#define A256(x) (((x) + 255) & ~(size_t)255)

int sched_prefill_rows(int prefill_rows, int max_prompt, int gbs)
{
    long long rows = prefill_rows > max_prompt ? prefill_rows : max_prompt;
    if (rows > (long long)gbs * max_prompt)
        rows = (long long)gbs * max_prompt;
    if (rows < gbs)
        rows = gbs;
    return (int)rows;
}

/* The cut of a share of `pct` percent of a blob of the given tensors
 * (off, mid: sched_weight_mids) over L layers: FlexGen's midpoint rule
 * (every layer alike), or with weight_layers the tensor boundary lo at or
 * below pct of the blob and the next one hi, n_up layers at hi so that
 * the layers' sum stays at most pct of theirs. */
static void cut_share(const sched_model *m, const size_t *off, const double *mid, size_t blob,
                      int L, double pct, int weight_layers, size_t *lo, size_t *hi, int *n_up)
{
    *lo = *hi = 0;
    *n_up = 0;
    if (!weight_layers) {
        for (int t = 0; t < m->n_tensors; t++)
            if (mid[t] < pct)
                *lo = *hi = t + 1 < m->n_tensors ? off[t + 1] : blob;
        return;
    }
    double want = pct >= 100 ? (double)blob : pct <= 0 ? 0 : pct / 100.0 * (double)blob;
    for (int t = 0; t <= m->n_tensors; t++) {
        size_t end = t < m->n_tensors ? off[t] : blob; /* the boundary before tensor t */
        if ((double)end <= want) {
            *lo = *hi = end;
            continue;
        }
        *hi = end;
        double n = floor((double)L * (want - (double)*lo) / (double)(end - *lo));
        *n_up = n < 0 ? 0 : n > L - 1 ? L - 1 : (int)n;
        if (*n_up == 0)
            *hi = *lo;
        return;
    }
}

/* The layers' weight cuts of policy p for blobs of g->wes bytes per
 * element, and their sums over the layers (sched_geom's w_gpu ...
 * w_stage_from, w_disk_span): the weight slot holds the CPU share and the
 * disk share, or on a backend reading the CPU home in place (host_visible)
 * the disk share only. */
static void weight_cuts(const sched_model *m, const sched_policy *p, int host_visible,
                        sched_geom *g)
{
    size_t off[SCHED_MAX_TENSORS];
    double mid[SCHED_MAX_TENSORS];
    g->blob = sched_weight_mids(m, g->wes, g->wq, off, mid);
    /* van der Corput order: layer indices bit-reversed over the next power
     * of two, those past the last layer left out (L 6: 0 4 2 1 5 3) */
    int bits = 0, at = 0;
    while ((1 << bits) < g->L)
        bits++;
    for (int i = 0; i < 1 << bits; i++) {
        int r = 0;
        for (int b = 0; b < bits; b++)
            r |= (i >> b & 1) << (bits - 1 - b);
        if (r < g->L)
            g->w_rank[r] = (uint16_t)at++;
    }
    cut_share(m, off, mid, g->blob, g->L, p->wg, p->weight_layers, &g->w_gpu, &g->w_gpu_up,
              &g->n_gpu_up);
    cut_share(m, off, mid, g->blob, g->L, p->wg + p->wc, p->weight_layers, &g->w_cpu,
              &g->w_cpu_up, &g->n_cpu_up);
    g->w_gpu_all = g->w_cpu_all = g->w_disk_all = g->w_disk_span = 0;
    g->w_gpu_min = g->w_cpu_min = g->blob;
    g->w_stage_from = SIZE_MAX;
    for (int l = 0; l < g->L; l++) {
        size_t wg = sched_w_gpu(g, l), wc = sched_w_cpu(g, l), span = sched_w_span(g, l);
        size_t from = (host_visible && wc > wg ? wc : wg) & ~(size_t)(OFF_ALIGN - 1);
        g->w_gpu_all += wg;
        g->w_cpu_all += wc - wg;
        g->w_disk_all += span;
        g->w_gpu_min = wg < g->w_gpu_min ? wg : g->w_gpu_min;
        g->w_cpu_min = wc < g->w_cpu_min ? wc : g->w_cpu_min;
        g->w_stage_from = from < g->w_stage_from ? from : g->w_stage_from;
        g->w_disk_span = span > g->w_disk_span ? span : g->w_disk_span;
    }
}

/* The scratch sched_scratch.w of a 16-bit layer that the model does not
 * widen whole (model_forward.c widen_layer): with one GPU batch per block,
 * or matrices that bf16 matmuls read as they lie (sched_geom.wdirect), it
 * widens only the vectors, each 256-byte aligned, and passes the rest to
 * backend linear_h16 (backend.h), which takes for an n x k matrix n * k
 * storage elements, or under bf16 matmuls the smaller of that and rows * k
 * halves (x rounded to bf16). Against the whole layer widened (w_wide):
 * Llama-3.2-1B at 2048 rows 34 MB (bf16 matmuls) or 67 MB instead of
 * 243 MB, OPT-6.7B 64 MB or 268 MB instead of 805 MB. */
static size_t fused_scratch(const sched_model *m, size_t es, size_t rows, int direct)
{
    size_t vectors = 0, x = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const sched_tensor *T = &m->tensors[t];
        if (!T->cols) {
            vectors += A256(T->rows * es);
            continue;
        }
        size_t k = (size_t)T->cols, whole = T->rows * k * es, rounded = rows * k * 2;
        size_t need = direct && rounded < whole ? rounded : whole;
        if (need > x)
            x = need;
    }
    return vectors + x;
}

size_t sched_weight_mids(const sched_model *m, size_t es, int wq,
                         size_t off[SCHED_MAX_TENSORS], double mid[SCHED_MAX_TENSORS])
{
    size_t bytes[SCHED_MAX_TENSORS], blob = sched_blob_layout(m, es, wq, off, bytes);
    for (int t = 0; t < m->n_tensors; t++)
        mid[t] = 100.0 * ((double)off[t] + 0.5 * (double)bytes[t]) / (double)blob;
    return blob;
}

kv_layout sched_kv_layout(const sched_geom *g, int n, int cap, int scores)
{
    kv_layout k;
    size_t slots = (size_t)n * g->KVH * cap;
    size_t row = g->kv_row;
    k.kc = 0;
    k.vc = A256(slots * row);
    k.pos = k.vc + A256(slots * row);
    k.scores = scores ? k.pos + A256(slots * 4) : SIZE_MAX;
    k.bytes = k.pos + A256(slots * 4) + (scores ? A256(slots * 4) : 0);
    if (n == 0)
        k.bytes = 0;
    return k;
}

void sched_geom_init(sched_geom *g, const sched_model *m, size_t es, const sched_policy *p,
                     const sched_shape *sh)
{
    memset(g, 0, sizeof *g);
    g->es = es;
    g->L = m->n_layer;
    g->H = m->n_head;
    g->KVH = m->n_kv_head;
    g->hd = m->head_dim;
    g->d = m->hidden;
    g->V = m->vocab;
    g->qkv = sched_qkv_dim(m);
    g->att = sched_att_dim(m);
    g->gbs = p->gpu_batch_size;
    g->K = p->num_gpu_batches;
    g->block = g->gbs * g->K;

    g->wq = p->compress_weight;
    g->kvq = p->compress_cache;
    g->kv_fmt = g->kvq                               ? KERN_KV_FMT_Q4
              : sh->weight_direct && es > 2          ? KERN_KV_FMT_BF16
                                                     : KERN_KV_FMT_PLAIN;
    g->kv_row = g->kv_fmt == KERN_KV_FMT_Q4     ? kern_q4_row_bytes(g->hd)
              : g->kv_fmt == KERN_KV_FMT_BF16   ? (size_t)g->hd * 2
                                                : (size_t)g->hd * g->es;
    /* 16-bit blobs on a wider backend: the tiers and links carry half the
     * bytes; a layer widens into w_wide once per block before its compute */
    g->wh = !g->wq && es > 2 && (sh->weight_fmt == KERN_H16_F16 ||
                                 sh->weight_fmt == KERN_H16_BF16) ? sh->weight_fmt : 0;
    for (int pass = 0; pass < 2; pass++) {
        g->wes = g->wh ? 2 : es;
        weight_cuts(m, p, sh->host_visible, g);
        /* every layer wholly on the GPU tier: nothing moves, so 16 bits
         * would save only memory, and widening each layer every block
         * costs more than it reads (measured: decode 2.8 -> 1.8 tok/s on
         * opt-1.3b): the layers stay in the storage type, unless the
         * backend computes from the 16 bits themselves */
        if (!g->wh || g->w_gpu_min < g->blob || sh->weight_direct)
            break;
        g->wh = 0;
    }
    g->wdirect = g->wh && sh->weight_direct;
    g->w_wide = g->wh ? sched_blob_layout(m, es, 0, NULL, NULL) : 0;
    g->w_scr = !g->wh                 ? 0
             : g->wdirect || g->K == 1 ? fused_scratch(m, es, (size_t)sh->max_rows, g->wdirect)
                                       : g->w_wide;
    /* the expansion of 4-bit matrices: with several GPU batches a layer's
     * matrices are expanded once and reused by each batch, with one
     * batch only the matrix of the GEMM at hand is */
    size_t largest, all = sched_blob_matrix_elems(m, &largest);
    g->w_exp = !g->wq ? 0 : g->K > 1 ? all : largest;
    size_t d = (size_t)m->hidden;
    g->head_es = sh->weight_direct ? 2 : es;
    g->globals = (m->globals - m->globals_mat) * es + m->globals_mat * g->head_es;

    int nt[SCHED_TIERS];
    sched_split(g->gbs, p->cg, p->cc, &nt[SCHED_GPU], &nt[SCHED_CPU], &nt[SCHED_DISK]);
    for (int t = 0, at = 0; t < SCHED_TIERS; t++) {
        g->kv_n[t] = nt[t];
        g->kv_seq0[t] = at;
        at += nt[t];
        g->kv[t] = sched_kv_layout(g, nt[t], sh->cap, sh->scores);
    }
    g->kv_disk_stride = off_align_up(g->kv[SCHED_DISK].bytes);
    sched_kv_log_geom(g);
    g->kv_log_at = (uint64_t)g->L * g->K * g->kv_disk_stride;
    g->act_tier = p->hg >= 100 ? SCHED_GPU : p->hc >= 100 ? SCHED_CPU : SCHED_DISK;
    g->x_bytes = A256((size_t)sh->max_rows * d * es);
    g->x_disk_stride = off_align_up(g->x_bytes);
    size_t st = g->w_disk_span;
    if (g->kv_disk_stride > st)
        st = g->kv_disk_stride;
    if (g->act_tier == SCHED_DISK && g->x_disk_stride > st)
        st = g->x_disk_stride;
    /* a backend computing on host memory reads and writes its staging
     * buffers directly (lanes.c): no host stages for the lanes */
    g->host_stage = sh->host_visible ? 0 : st;
}

int sched_plan_compute(const sched_model *m, size_t es, const sched_policy *p,
                       const sched_shape *sh, sched_plan *out)
{
    sched_geom g;
    return sched_plan_geom(m, es, p, sh, &g, out);
}

int sched_plan_geom(const sched_model *m, size_t es, const sched_policy *p,
                    const sched_shape *sh, sched_geom *gp, sched_plan *out)
{
    FORWARD_IF(sched_policy_check(p));
    RETURN_IF(sh->max_rows < 1 || sh->cap < 1, -EINVAL,
              "internal: plan for %d rows and %d KV slots", sh->max_rows, sh->cap);
    RETURN_IF(m->n_layer < 1 || m->n_layer > SCHED_MAX_LAYERS, -EINVAL, "internal: a model "
              "of %d layers (at most %d)", m->n_layer, SCHED_MAX_LAYERS);
    RETURN_IF(m->n_tensors < 1 || m->n_tensors > SCHED_MAX_TENSORS || m->n_kv_head < 1 ||
              m->n_head % m->n_kv_head, -EINVAL, "internal: a model of %d layer tensors and "
              "%d heads over %d KV heads", m->n_tensors, m->n_head, m->n_kv_head);
    sched_geom_init(gp, m, es, p, sh);
    const sched_geom g = *gp;
    memset(out, 0, sizeof *out);
    out->block = g.block;
    out->L = g.L;
    out->weight_fmt = g.wh;
    out->weight_direct = g.wdirect;
    out->tables16 = g.head_es == 2 && es > 2 ? KERN_H16_BF16 : 0;
    out->kv_fmt = g.kv_fmt;
    out->widen = g.w_scr ? A256(g.w_scr) : 0;
    const size_t cuts[2][2] = {{g.w_gpu, g.w_gpu_up}, {g.w_cpu, g.w_cpu_up}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            out->w_cut[i][j] = 100.0 * (double)cuts[i][j] / (double)g.blob;
    out->w_up[0] = g.n_gpu_up;
    out->w_up[1] = g.n_cpu_up;
    uint64_t L = (uint64_t)g.L, K = (uint64_t)g.K;
    uint64_t(*b)[SCHED_PARTS] = out->bytes;
    int cpu_attn = p->cpu_attention;

    b[SCHED_GPU][SCHED_WEIGHTS] = g.w_gpu_all + g.globals;
    b[SCHED_CPU][SCHED_WEIGHTS] = g.w_cpu_all;
    b[SCHED_DISK][SCHED_WEIGHTS] = !sh->weights_on_disk_already ? g.w_disk_all : 0;
    out->w_store = sh->weights_on_disk_already ? g.w_disk_all : 0;

    for (int t = 0; t < SCHED_TIERS; t++)
        b[t][SCHED_KV] = t == SCHED_DISK ? L * K * (g.kv_disk_stride + sched_kv_log_bytes(&g))
                                         : L * K * g.kv[t].bytes;
    out->kv_log = L * K * sched_kv_log_bytes(&g);
    b[g.act_tier][SCHED_ACT] = K * (g.act_tier == SCHED_DISK ? g.x_disk_stride : g.x_bytes);

    uint64_t stage = 0;
    if (g.w_gpu_min < g.blob)
        stage += 2 * (off_align_up(g.blob) - g.w_stage_from);
    if (!cpu_attn)
        stage += 2 * (uint64_t)(g.kv[SCHED_CPU].bytes + off_align_up(g.kv[SCHED_DISK].bytes));
    if (g.act_tier != SCHED_GPU)
        stage += 2 * off_align_up(g.x_bytes);
    b[SCHED_GPU][SCHED_STAGE] = stage;
    b[SCHED_CPU][SCHED_STAGE] = 2 * (uint64_t)(g.host_stage + sched_kv_log_bytes(&g)) +
                                (cpu_attn ? 2 * off_align_up(g.kv[SCHED_DISK].bytes) : 0);

    size_t R = (size_t)sh->max_rows, d = (size_t)m->hidden, H = (size_t)m->n_head;
    size_t KVH = (size_t)m->n_kv_head, B = (size_t)g.block;
    uint64_t work = A256(R * d * es) + A256(R * g.att * es) + A256(R * g.qkv * es) + A256(R * (size_t)m->ffn * es) +
                    A256(B * d * es) + A256(B * (size_t)m->vocab * es);
    if (sh->scores)
        work += A256(R * H * 4) + A256(B * H * 4);
    if (sh->evicted)
        work += A256(L * B * KVH * 4);
    work += A256(g.w_exp * es); /* matrices expanded from 4 bits */
    work += A256(g.w_scr);      /* the layer widened from 16 bits, or (bf16 matmuls) its
                                 * vectors and the rounded x */
    b[SCHED_GPU][SCHED_WORK] = work;
    if (cpu_attn && es != sizeof(float)) /* host scratch of CPU attention (CUDA) */
        b[SCHED_CPU][SCHED_WORK] = R * 4 * (g.qkv + g.att + H) + (size_t)g.gbs * (H * 4 + KVH * 4 + 28);
    if (g.wq) /* the layer being quantized while the model loads */
        b[SCHED_CPU][SCHED_WORK] += off_align_up(g.blob);

    for (int t = 0; t < SCHED_TIERS; t++)
        for (int q = 0; q < SCHED_PARTS; q++)
            out->total[t] += b[t][q];
    return 0;
}

static double gib(uint64_t x) { return (double)x / (double)(1ull << 30); }

/* The largest binary unit x reaches, for a need or a cap in a message (a
 * small cap in GiB would read "--gpu-mem is 0.00 GiB"). */
static double unit_of(uint64_t x, const char **name)
{
    static const char *const names[] = {"bytes", "KiB", "MiB", "GiB"};
    int k = 3;
    while (k > 0 && x < 1ull << (10 * k))
        k--;
    *name = names[k];
    return (double)(1ull << (10 * k));
}

int sched_plan_check(const sched_plan *pl, const sched_policy *p, uint64_t gpu_cap,
                     uint64_t cpu_cap, uint64_t disk_free)
{
    const uint64_t(*b)[SCHED_PARTS] = pl->bytes;
    char blk[64];
    snprintf(blk, sizeof blk, "%dx%d", p->gpu_batch_size, p->num_gpu_batches);
    const char *un, *cn;
    double u = unit_of(pl->total[SCHED_GPU], &un), cu = unit_of(gpu_cap, &cn);
    RETURN_IF(gpu_cap && pl->total[SCHED_GPU] > gpu_cap, -ENOSPC,
              "cannot fit block %s: the GPU tier needs %.2f %s (weights %.2f, KV %.2f, "
              "activations %.2f, staging %.2f, work %.2f), --gpu-mem is %.2f %s; lower "
              "--percent wg or cg, or --gpu-batch-size", blk, pl->total[SCHED_GPU] / u, un,
              b[0][SCHED_WEIGHTS] / u, b[0][SCHED_KV] / u, b[0][SCHED_ACT] / u,
              b[0][SCHED_STAGE] / u, b[0][SCHED_WORK] / u, gpu_cap / cu, cn);
    u = unit_of(pl->total[SCHED_CPU], &un);
    cu = unit_of(cpu_cap, &cn);
    RETURN_IF(cpu_cap && pl->total[SCHED_CPU] > cpu_cap, -ENOSPC,
              "cannot fit block %s: the CPU tier needs %.2f %s (weights %.2f, KV %.2f, "
              "activations %.2f, staging %.2f), --cpu-mem is %.2f %s; move weights or KV "
              "to disk (--percent) or lower --gpu-batch-size / --num-gpu-batches", blk,
              pl->total[SCHED_CPU] / u, un, b[1][SCHED_WEIGHTS] / u, b[1][SCHED_KV] / u,
              b[1][SCHED_ACT] / u, b[1][SCHED_STAGE] / u, cpu_cap / cu, cn);
    RETURN_IF(pl->total[SCHED_DISK] && disk_free && pl->total[SCHED_DISK] > disk_free,
              -ENOSPC, "cannot fit block %s: the disk tier needs %.2f GiB in %s (weights "
              "%.2f, KV %.2f, activations %.2f), %.2f GiB free; free space, choose another "
              "--offload-dir or put less on disk", blk, gib(pl->total[SCHED_DISK]),
              p->offload_dir, gib(b[2][SCHED_WEIGHTS]), gib(b[2][SCHED_KV]),
              gib(b[2][SCHED_ACT]), gib(disk_free));
    return 0;
}

void sched_plan_print(FILE *f, const sched_plan *pl)
{
    static const char *tier[SCHED_TIERS] = {"gpu", "cpu", "disk"};
    fprintf(f, "[flexh2o] plan (GiB)  %-6s %8s %8s %8s %8s %8s %8s\n", "tier", "weights",
            "KV", "act", "staging", "work", "total");
    for (int t = 0; t < SCHED_TIERS; t++)
        fprintf(f, "[flexh2o] plan        %-6s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f\n", tier[t],
                gib(pl->bytes[t][SCHED_WEIGHTS]), gib(pl->bytes[t][SCHED_KV]),
                gib(pl->bytes[t][SCHED_ACT]), gib(pl->bytes[t][SCHED_STAGE]),
                gib(pl->bytes[t][SCHED_WORK]), gib(pl->total[t]));
    if (pl->weight_direct)
        fprintf(f, "[flexh2o] plan        weights bf16 on the tiers, read by bf16 matmuls; "
                "embedding, head%s bf16 (--cpu-matmul bf16)\n",
                pl->kv_fmt == KERN_KV_FMT_BF16 ? " and KV cache" : "");
    else if (pl->tables16)
        fprintf(f, "[flexh2o] plan        4-bit weights expanded into bf16 for bf16 matmuls; "
                "embedding, head%s bf16 (--cpu-matmul bf16)\n",
                pl->kv_fmt == KERN_KV_FMT_BF16 ? " and KV cache" : "");
    else if (pl->weight_fmt)
        fprintf(f, "[flexh2o] plan        weights %s on the tiers, widened per block into "
                "%.3f GiB of the gpu tier's work\n",
                pl->weight_fmt == KERN_H16_BF16 ? "bf16" : "fp16", gib(pl->widen));
    if (pl->w_up[0] || pl->w_up[1]) {
        const char *tier[2] = {"gpu", "gpu + cpu"};
        for (int i = 0; i < 2; i++)
            if (pl->w_up[i])
                fprintf(f, "[flexh2o] plan        weights on the %s tier: %.2f%% of a layer in "
                        "%d layers, %.2f%% in %d (--weight-layers)\n", tier[i],
                        pl->w_cut[i][0], pl->L - pl->w_up[i], pl->w_cut[i][1], pl->w_up[i]);
    }
    if (pl->kv_log)
        fprintf(f, "[flexh2o] plan        disk KV: %.3f GiB of it the records' row logs\n",
                gib(pl->kv_log));
    if (pl->w_store)
        fprintf(f, "[flexh2o] plan        weights' disk share read from the weight store: "
                "%.3f GiB (not in the disk tier's total)\n", gib(pl->w_store));
}
