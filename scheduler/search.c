/* search.c: the policy search over the cost model (cost.c; FlexGen
 * section 4.2: a linear program per block shape, solved here with GLPK).
 *
 * Linear model, fractions f in [0, 1] (w: weights, c: KV; g: GPU, c: CPU;
 * the rest on disk), for one block of N = gbs x K sequences, L layers,
 * W = L x blob bytes of layer weights, KV = L x K x kvrec bytes of cache:
 *
 *   GPU  fwg W + globals + fcg KV + 2 (1 - fwg) blob [weight slots]
 *        + 2 (1 - fcg) kvrec [KV slots, without CPU attention] + act + work
 *   CPU  fwc W + fcc KV + 2 hs [I/O lanes' stages, none on a host-visible
 *        backend] + 2 (1-fcg-fcc) kvrec [disk KV stages, with CPU attention]
 *        + act
 *        hs >= (1-fwg-fwc) blob, (1-fcg-fcc) kvrec, activations on disk
 *   disk (1 - fwg - fwc) W + (1 - fcg - fcc) KV + act
 *   T_step >= every per-step term of sched_cost_eval (each linear in f),
 *   T_prefill likewise; minimise T_prefill + (gen - 1) T_step.
 *
 * Per (block shape, activation tier, CPU attention): the LP over every
 * variable bounds what the shape can do and drops it when it cannot beat
 * the candidates kept. Weights move as whole tensors (the midpoint rule),
 * so each of the few tensor-boundary cuts is then fixed in turn and the LP
 * places the KV; its split is rounded to whole sequences and the exact
 * plan (alignment, staging) decides: a tier that overflows shrinks its cap
 * in the LP by the overflow and the LP runs again. Candidates are scored
 * by sched_cost_eval on their exact plan.
 * FLEXH2O_SEARCH_DEBUG=1 logs every LP solution (err_log).
 */
#include <glpk.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"

/* ------------------------------------------------------------ the LP */

enum { V_WG = 1, V_WC, V_CG, V_CC, V_HS, V_TP, V_TS, N_VARS = V_TS };

typedef struct lp_in {
    /* bytes: layer weights (W, W_al aligned), one blob, the block's KV and
     * one GPU batch's record, embeddings + head, GPU / CPU work buffers,
     * resident and staged activations, activations moved per step and per
     * prefill (link, disk), one d-row per (layer, sequence) */
    double W, W_al, blob_al, kv_all, kvrec, globals, work_gpu, work_cpu, x_res, x_stage;
    double W_file;             /* W_al, or 0 when the disk share is a weight store's */
    double kv_lfrac;           /* what a decode step reads (and copies, off the GPU) of a
                                * record: its slots in use */
    double kv_rfrac;           /* what a decode step reads of a disk record, a fraction */
    double kv_wfrac;           /* what a decode step writes of a disk record, a fraction */
    double x_step, x_pre, x_step_disk, x_pre_disk, cross_row;
    int act, attn, disk, np, gen, s;
    int host;          /* sched_shape.host_visible: the slot holds the disk share only */
    double gpu_cap, cpu_cap, disk_cap;
    double ts_min, tp_min;     /* the terms that do not depend on placement */
    int fix_w;                 /* weights placed already: fwg, fwc */
    double fwg, fwc;
    const sched_calib *hw;
} lp_in;

typedef struct lp_out {
    double f[N_VARS + 1];
} lp_out;

/* Add row a . x (type, lb, ub); a is dense over the variables. */
static void add_row(glp_prob *lp, int type, double lb, double ub, const double *a)
{
    int ind[N_VARS + 1], n = 0;
    double val[N_VARS + 1];
    for (int j = 1; j <= N_VARS; j++)
        if (a[j] != 0) {
            n++;
            ind[n] = j;
            val[n] = a[j];
        }
    int r = glp_add_rows(lp, 1);
    glp_set_row_bnds(lp, r, type, lb, ub);
    glp_set_mat_row(lp, r, n, ind, val);
}

/* A time row: const + a . f <= t (t = V_TS or V_TP), in seconds. The rate
 * is GB/s; without a rate the bytes must be zero. */
static void time_row(glp_prob *lp, int tvar, double rate, double cst, const double *coef)
{
    if (!(rate > 0))
        return; /* only reachable with no bytes on that link (no disk tier) */
    double a[N_VARS + 1] = {0};
    double k = 1.0 / (rate * 1e9);
    for (int j = 1; j <= N_VARS; j++)
        a[j] = coef[j] * k;
    a[tvar] = -1;
    add_row(lp, GLP_UP, 0, -cst * k, a);
}

/* The disk's row: its reads (const cr + cr_f . f at rate r) and writes (cw
 * + cw_f . f at rate w) in turn, at most t (cost.c COST_DISK). Each time is
 * never negative where the shares are, so the row also bounds reads and
 * writes alone (COST_DISK_READ, COST_DISK_WRITE). Without a rate, as in
 * time_row, that direction's bytes must be zero and it adds nothing. */
static void disk_row(glp_prob *lp, int tvar, double r, double cr, const double *cr_f, double w,
                     double cw, const double *cw_f)
{
    if (!(r > 0) && !(w > 0))
        return;
    double a[N_VARS + 1] = {0};
    double kr = r > 0 ? 1.0 / (r * 1e9) : 0, kw = w > 0 ? 1.0 / (w * 1e9) : 0;
    for (int j = 1; j <= N_VARS; j++)
        a[j] = cr_f[j] * kr + cw_f[j] * kw;
    a[tvar] = -1;
    add_row(lp, GLP_UP, 0, -(cr * kr + cw * kw), a);
}

static int lp_solve(const lp_in *in, lp_out *o)
{
    const sched_calib *hw = in->hw;
    glp_prob *lp = glp_create_prob();
    glp_set_obj_dir(lp, GLP_MIN);
    glp_add_cols(lp, N_VARS);
    for (int j = V_WG; j <= V_CC; j++)
        glp_set_col_bnds(lp, j, GLP_DB, 0, 1);
    if (in->fix_w) {
        glp_set_col_bnds(lp, V_WG, GLP_FX, in->fwg, in->fwg);
        glp_set_col_bnds(lp, V_WC, GLP_FX, in->fwc, in->fwc);
    }
    glp_set_col_bnds(lp, V_HS, GLP_LO, 0, 0);
    glp_set_col_bnds(lp, V_TP, GLP_LO, in->tp_min, 0);
    glp_set_col_bnds(lp, V_TS, GLP_LO, in->ts_min, 0);
    glp_set_obj_coef(lp, V_TP, 1);
    glp_set_obj_coef(lp, V_TS, in->gen - 1);
    /* where the bound is flat (compute-bound), keep things close: GPU over
     * CPU over disk, by a weight far below any term that matters */
    double eps = 1e-4 * (in->tp_min + (in->gen - 1) * in->ts_min + 1e-9);
    glp_set_obj_coef(lp, V_WG, -2 * eps);
    glp_set_obj_coef(lp, V_WC, -eps);
    glp_set_obj_coef(lp, V_CG, -2 * eps);
    glp_set_obj_coef(lp, V_CC, -eps);

    /* shares: at most 100 %, exactly 100 % without a disk tier */
    double a[N_VARS + 1] = {0};
    int share = in->disk ? GLP_UP : GLP_FX;
    a[V_WG] = a[V_WC] = 1;
    add_row(lp, share, 1, 1, a);
    memset(a, 0, sizeof a);
    a[V_CG] = a[V_CC] = 1;
    add_row(lp, share, 1, 1, a);

    /* GPU tier */
    memset(a, 0, sizeof a);
    a[V_WG] = in->W - 2 * in->blob_al;
    if (in->host) /* the CPU share is read where it lies, not staged */
        a[V_WC] = -2 * in->blob_al;
    a[V_CG] = in->kv_all - (in->attn ? 0 : 2 * in->kvrec);
    double cst = in->globals + 2 * in->blob_al + (in->attn ? 0 : 2 * in->kvrec) +
                 (in->act == SCHED_GPU ? in->x_res : 2 * in->x_stage) + in->work_gpu;
    add_row(lp, GLP_UP, 0, in->gpu_cap - cst, a);

    /* CPU tier */
    memset(a, 0, sizeof a);
    a[V_WC] = in->W;
    a[V_CC] = in->kv_all;
    a[V_HS] = in->host ? 0 : 2; /* (a host-visible backend's lanes have no stages) */
    cst = (in->act == SCHED_CPU ? in->x_res : 0) + in->work_cpu;
    if (in->attn) { /* + 2 (1 - fcg - fcc) kvrec */
        a[V_CG] -= 2 * in->kvrec;
        a[V_CC] -= 2 * in->kvrec;
        cst += 2 * in->kvrec;
    }
    add_row(lp, GLP_UP, 0, in->cpu_cap - cst, a);
    /* hs >= each disk transfer's span */
    memset(a, 0, sizeof a);
    a[V_HS] = 1;
    a[V_WG] = a[V_WC] = in->blob_al;
    add_row(lp, GLP_LO, in->blob_al, 0, a);
    memset(a, 0, sizeof a);
    a[V_HS] = 1;
    a[V_CG] = a[V_CC] = in->kvrec;
    add_row(lp, GLP_LO, in->kvrec, 0, a);
    if (in->act == SCHED_DISK) {
        memset(a, 0, sizeof a);
        a[V_HS] = 1;
        add_row(lp, GLP_LO, in->x_stage, 0, a);
    }

    /* disk tier */
    if (in->disk) {
        memset(a, 0, sizeof a);
        a[V_WG] = a[V_WC] = -in->W_file;
        a[V_CG] = a[V_CC] = -in->kv_all;
        cst = in->W_file + in->kv_all + (in->act == SCHED_DISK ? in->x_res : 0);
        add_row(lp, GLP_UP, 0, in->disk_cap - cst, a);
    }

    /* decode step terms (bytes as const + coef . f) */
    /* (1 - fcg) KV crosses, the slots in use of it */
    double kv_link_c = in->attn ? 0 : in->kv_lfrac * in->kv_all;
    double up = in->attn ? in->cross_row : 0, down = in->attn ? 3 * in->cross_row : 0;
    double c_h2d[N_VARS + 1] = {0}, c_d2h[N_VARS + 1] = {0}, c_dr[N_VARS + 1] = {0},
           c_dw[N_VARS + 1] = {0}, c_dram[N_VARS + 1] = {0};
    c_h2d[V_WG] = -in->W;
    c_h2d[V_CG] = -(kv_link_c + up);
    time_row(lp, V_TS, hw->h2d, in->W + kv_link_c + up + in->x_step, c_h2d);
    c_d2h[V_CG] = -(kv_link_c + down);
    time_row(lp, V_TS, hw->d2h, kv_link_c + down + in->x_step, c_d2h);
    if (in->disk) {
        c_dr[V_WG] = c_dr[V_WC] = -in->W_al;
        /* a step reads the slots in use of its records and writes back
         * the pages it changed */
        c_dr[V_CG] = c_dr[V_CC] = -in->kv_rfrac * in->kv_all;
        c_dw[V_CG] = c_dw[V_CC] = -in->kv_wfrac * in->kv_all;
        disk_row(lp, V_TS, hw->disk_read,
                 in->W_al + in->kv_rfrac * in->kv_all + in->x_step_disk, c_dr,
                 hw->disk_write, in->kv_wfrac * in->kv_all + in->x_step_disk, c_dw);
    }
    if (in->attn) { /* the slots in use */
        c_dram[V_CG] = -in->kv_lfrac * in->kv_all;
        time_row(lp, V_TS, hw->dram, in->kv_lfrac * in->kv_all, c_dram);
    }

    /* prefill terms */
    double np = in->np;
    double p_h2d[N_VARS + 1] = {0}, p_d2h[N_VARS + 1] = {0}, p_dr[N_VARS + 1] = {0},
           p_dw[N_VARS + 1] = {0};
    p_h2d[V_WG] = -np * in->W;
    time_row(lp, V_TP, hw->h2d, np * in->W + in->x_pre, p_h2d);
    /* the prompt's KV of the host sequences: whole records, or with CPU
     * attention their k and v rows */
    double kv_pre = in->attn ? 2 * in->cross_row * in->s : in->kv_all;
    p_d2h[V_CG] = -kv_pre;
    time_row(lp, V_TP, hw->d2h, kv_pre + in->x_pre, p_d2h);
    if (in->disk) {
        p_dr[V_WG] = p_dr[V_WC] = -np * in->W_al;
        p_dw[V_CG] = p_dw[V_CC] = -in->kv_all;
        disk_row(lp, V_TP, hw->disk_read, np * in->W_al + in->x_pre_disk, p_dr,
                 hw->disk_write, in->kv_all + in->x_pre_disk, p_dw);
    }

    glp_smcp parm;
    glp_init_smcp(&parm);
    parm.msg_lev = GLP_MSG_OFF;
    parm.presolve = GLP_ON;
    int rc = glp_simplex(lp, &parm);
    int ok = rc == 0 && glp_get_status(lp) == GLP_OPT;
    if (ok)
        for (int j = 1; j <= N_VARS; j++)
            o->f[j] = glp_get_col_prim(lp, j);
    glp_delete_prob(lp);
    return ok ? 0 : -ENOSPC;
}

/* ------------------------------------------------------------ search */

static const int default_gbs[] = {1,   2,   4,   8,   12,  16,  20,  24,  28,  32,
                                  40,  48,  56,  64,  80,  96,  112, 128, 160, 192,
                                  224, 256, 320, 384, 448, 512, 640, 768, 896, 1024};

/* The shape generate plans for a GPU batch of gbs taking up to rows prompt
 * tokens a prefill pass (gen_plan.c gen_shape). */
static sched_shape search_shape(const sched_search_opts *o, int gbs, int rows)
{
    sched_shape sh = {0};
    sh.max_rows = sched_prefill_rows(rows, o->prompt_len, gbs);
    sh.cap = o->kv_cap;
    sh.scores = o->scores;
    sh.weight_fmt = o->weight_fmt;
    sh.weight_direct = o->weight_direct;
    sh.host_visible = o->host_visible;
    sh.weights_on_disk_already = o->weights_on_disk_already;
    return sh;
}

/* a ranks before b: the higher bound, or among near-equal bounds the one
 * that moves less (the safer bet), then the higher bound */
static int better(const sched_candidate *a, const sched_candidate *b)
{
    double ta = a->cost.tok_s, tb = b->cost.tok_s;
    if (fabs(ta - tb) > SCHED_SEARCH_NEAR * (ta > tb ? ta : tb))
        return ta > tb;
    double ba = a->cost.busy_tok, bb = b->cost.busy_tok;
    if (fabs(ba - bb) > 1e-9 * (ba > bb ? ba : bb))
        return ba < bb;
    return ta > tb;
}

/* Insert cand into the best-first list out (n of cap). */
static void keep_best(sched_candidate *out, int cap, int *n, const sched_candidate *cand)
{
    int at = *n;
    while (at > 0 && better(cand, &out[at - 1]))
        at--;
    if (at >= cap)
        return;
    int last = *n < cap ? *n : cap - 1;
    memmove(&out[at + 1], &out[at], (size_t)(last - at) * sizeof *out);
    out[at] = *cand;
    if (*n < cap)
        (*n)++;
}

static int same_policy(const sched_policy *a, const sched_policy *b)
{
    return a->gpu_batch_size == b->gpu_batch_size && a->num_gpu_batches == b->num_gpu_batches &&
           a->wg == b->wg && a->wc == b->wc && a->cg == b->cg && a->cc == b->cc &&
           a->hg == b->hg && a->hc == b->hc && a->cpu_attention == b->cpu_attention &&
           a->weight_layers == b->weight_layers && a->prefill_rows == b->prefill_rows;
}

/* ---- discrete placements ----
 * Weights move as whole tensors (the midpoint rule of sched_geom_init), so
 * a layer can be cut at a handful of tensor boundaries only; the search
 * enumerates those cuts and lets the LP place the KV for each. */

#define MAX_LEVELS (SCHED_MAX_TENSORS + 1)

typedef struct wlevels {
    int n;
    double f[MAX_LEVELS];  /* cut as a fraction of the blob */
    double pct[MAX_LEVELS]; /* a percentage that makes the midpoint rule cut there */
} wlevels;

/* The roundest number in (lo, hi]: whole, then one or two decimals. */
static double roundest(double lo, double hi)
{
    for (double scale = 1; scale <= 100; scale *= 10) {
        double v = ceil(lo * scale + 1e-9) / scale;
        if (v > lo && v <= hi)
            return v;
    }
    return hi;
}

static void weight_levels(const sched_model *c, size_t es, int wq, wlevels *w)
{
    size_t off[SCHED_MAX_TENSORS], bytes[SCHED_MAX_TENSORS];
    double mid[SCHED_MAX_TENSORS];
    double blob = (double)sched_weight_mids(c, es, wq, off, mid);
    sched_blob_layout(c, es, wq, NULL, bytes);
    /* a family's absent tensors (no bytes) go wherever; they cut nothing */
    int next[SCHED_MAX_TENSORS + 1], last = -1;
    next[c->n_tensors] = -1;
    for (int t = c->n_tensors - 1; t >= 0; t--)
        next[t] = bytes[t] ? t : next[t + 1];
    for (int t = 0; t < c->n_tensors; t++)
        if (bytes[t])
            last = t;
    w->n = 0;
    w->f[w->n] = 0;
    w->pct[w->n++] = 0;
    for (int t = 0; t <= last; t++) {
        if (!bytes[t])
            continue;
        double end = t < last ? (double)off[t + 1] / blob : 1.0;
        /* tiny tensors (LayerNorm, biases) are not worth a level of their own */
        if (t < last && end - w->f[w->n - 1] < 0.005)
            continue;
        w->f[w->n] = end;
        /* share s puts tensors 0..t there when mid[t] < s <= mid[u], u the next
         * tensor with bytes */
        w->pct[w->n++] = t < last ? roundest(mid[t], mid[next[t + 1]]) : 100;
    }
}

typedef struct search_ctx {
    const sched_model *c;
    size_t es;
    const sched_policy *base;
    const sched_search_opts *o;
    const sched_calib *hw;
    wlevels wl;
    sched_candidate *out;
    int n_out, n;
} search_ctx;

/* Plan p exactly; when it fits, score it and keep the better of it and
 * *best (has_best says whether *best holds one). @return 1 when it fits;
 * over[] has each tier's overflow (bytes, <= 0 where it fits). */
static int try_exact(const search_ctx *x, const sched_policy *p, const sched_shape *sh,
                      sched_candidate *best, int *has_best, double over[SCHED_TIERS])
{
    const sched_search_opts *o = x->o;
    sched_candidate cand;
    over[0] = over[1] = over[2] = 0;
    if (sched_plan_compute(x->c, x->es, p, sh, &cand.plan) < 0)
        return 0;
    over[0] = (double)cand.plan.total[SCHED_GPU] - (double)o->gpu_cap;
    over[1] = (double)cand.plan.total[SCHED_CPU] - (double)o->cpu_cap;
    over[2] = o->disk_cap ? (double)cand.plan.total[SCHED_DISK] - (double)o->disk_cap : 0;
    if (over[0] > 0 || over[1] > 0 || over[2] > 0)
        return 0;
    cand.pol = *p;
    if (sched_cost_eval(x->c, x->es, p, sh, o->prompt_len, o->gen_len, x->hw, &cand.cost) < 0)
        return 0;
    if (o->max_prefill_s > 0 && cand.cost.prefill_s > o->max_prefill_s)
        return 1; /* it fits, but its block takes too long to prefill: not kept */
    if (!*has_best || better(&cand, best)) {
        *best = cand;
        *has_best = 1;
    }
    return 1;
}

/* The KV split of the LP (fractions of a GPU batch) as whole sequences:
 * the four roundings around it. */
static int kv_roundings(double fg, double fc, int gbs, int disk, double cg[4], double cc[4])
{
    double a = fg * gbs, b = (fg + fc) * gbs;
    int ga[2] = {(int)floor(a + 1e-9), (int)ceil(a - 1e-9)};
    int gb[2] = {(int)floor(b + 1e-9), (int)ceil(b - 1e-9)};
    int n = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            int ng = ga[i] < 0 ? 0 : ga[i] > gbs ? gbs : ga[i];
            int ngc = disk ? gb[j] : gbs;
            ngc = ngc < ng ? ng : ngc > gbs ? gbs : ngc;
            double g = 100.0 * ng / gbs, cpu = 100.0 * (ngc - ng) / gbs;
            int dup = 0;
            for (int k = 0; k < n; k++)
                dup |= cg[k] == g && cc[k] == cpu;
            if (!dup) {
                cg[n] = g;
                cc[n++] = cpu;
            }
        }
    return n;
}

static void solve_shape(search_ctx *x, int gbs, int K, int act, int attn, int rows);

/* After a search under max_prefill_s found nothing: whether one sequence
 * fits without the limit (then the limit is what refused every block). */
static int search_fits_unlimited(const search_ctx *x)
{
    sched_search_opts o = *x->o;
    o.max_prefill_s = 0;
    sched_candidate one;
    search_ctx y = *x;
    y.o = &o;
    y.out = &one;
    y.n_out = 1;
    y.n = 0;
    for (int act = SCHED_GPU; act <= (o.disk_cap ? SCHED_DISK : SCHED_CPU) && !y.n; act++)
        for (int attn = 0; attn <= 1 && !y.n; attn++)
            if (o.cpu_attention < 0 || attn == o.cpu_attention)
                solve_shape(&y, 1, 1, act, attn, o.prefill_rows);
    return y.n > 0;
}

/* Plan p with each whole-sequence rounding of the LP's KV split lo (try_
 * exact keeps the best that fits); when none fits, tighten fin's caps by
 * what overflowed (and a little more, growing with iter) for the next
 * solve. @return 1 when one fitted. */
static int try_roundings(search_ctx *x, sched_policy *p, const sched_shape *sh,
                         const lp_out *lo, lp_in *fin, int iter, sched_candidate *best,
                         int *has_best)
{
    double cg[4], cc[4], over[SCHED_TIERS], worst[SCHED_TIERS] = {0};
    int nk = kv_roundings(lo->f[V_CG], lo->f[V_CC], p->gpu_batch_size, fin->disk, cg, cc);
    int fitted = 0;
    for (int k = 0; k < nk; k++) {
        p->cg = cg[k];
        p->cc = cc[k];
        if (p->cpu_attention && p->cg >= 100)
            continue; /* no host KV: the policy without CPU attention */
        fitted |= try_exact(x, p, sh, best, has_best, over);
        for (int t = 0; t < SCHED_TIERS; t++)
            if (over[t] > worst[t])
                worst[t] = over[t];
    }
    if (fitted)
        return 1;
    double *caps[SCHED_TIERS] = {&fin->gpu_cap, &fin->cpu_cap, &fin->disk_cap};
    for (int t = 0; t < SCHED_TIERS; t++)
        if (worst[t] > 0)
            *caps[t] -= worst[t] + (double)(1 << 20) * (iter + 1);
    return 0;
}

/* The placement of weight_layers (sched_policy): the weights' shares as
 * the LP wants them, not held to the levels every layer can take alike,
 * each layer then cut at a tensor boundary near the share (sched_plan.c).
 * Solved with the weights free, planned exactly, and re-solved with the
 * caps tightened by what overflowed (alignment, staging), as for the
 * levels. */
static void mixed_cuts(search_ctx *x, const lp_in *in, const sched_policy *base,
                       const sched_shape *sh, sched_candidate *best, int *has_best)
{
    lp_in fin = *in;
    sched_policy p = *base;
    p.weight_layers = 1;
    for (int iter = 0; iter < 6; iter++) {
        lp_out lo;
        if (lp_solve(&fin, &lo) < 0)
            return;
        /* whole hundredths of a percent, rounded down: a share the file
         * holds as written and that fits what the LP fitted */
        p.wg = floor(lo.f[V_WG] * 1e4) / 100;
        p.wc = floor((lo.f[V_WG] + lo.f[V_WC]) * 1e4) / 100 - p.wg;
        if (p.wc < 0)
            p.wc = 0;
        if (try_roundings(x, &p, sh, &lo, &fin, iter, best, has_best))
            return;
    }
}

/* A weight_layers candidate whose layers all took the same cuts is a
 * FlexGen policy: written as one (a percentage of each level, the
 * midpoint rule's) where those cuts are levels and the plan is the same,
 * so that a policy file says weight_layers only where it matters. */
static void as_levels(const search_ctx *x, const sched_shape *sh, sched_candidate *c)
{
    const sched_plan *pl = &c->plan;
    if (pl->w_up[0] || pl->w_up[1])
        return;
    double pct[2] = {-1, -1};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < x->wl.n; j++)
            if (fabs(100.0 * x->wl.f[j] - pl->w_cut[i][0]) < 1e-9)
                pct[i] = x->wl.pct[j];
    if (pct[0] < 0 || pct[1] < 0 || pct[1] < pct[0])
        return;
    sched_policy p = c->pol;
    p.weight_layers = 0;
    p.wg = pct[0];
    p.wc = pct[1] - pct[0];
    sched_plan again;
    if (sched_plan_compute(x->c, x->es, &p, sh, &again) < 0 ||
        memcmp(again.bytes, pl->bytes, sizeof again.bytes) != 0)
        return;
    c->pol = p;
}

/* One block shape, activation tier and CPU-attention choice: the LP over
 * all placements first (a bound: a shape that cannot beat the candidates
 * kept is dropped), then every weight cut with the KV placed by the LP and
 * rounded to whole sequences, each planned exactly. */
static void solve_shape(search_ctx *x, int gbs, int K, int act, int attn, int rows)
{
    const sched_model *c = x->c;
    const sched_search_opts *o = x->o;
    size_t es = x->es;
    sched_shape sh = search_shape(o, gbs, rows);
    sched_policy p = *x->base;
    p.gpu_batch_size = gbs;
    p.num_gpu_batches = K;
    p.prefill_rows = rows == SCHED_PREFILL_ROWS && !o->pick_prefill_rows ? 0 : rows;
    p.cpu_attention = attn;
    p.hg = act == SCHED_GPU ? 100 : 0;
    p.hc = act == SCHED_CPU ? 100 : 0;
    p.wg = p.cg = 100;
    p.wc = p.cc = 0;
    if (!o->disk_cap)
        p.offload_dir[0] = '\0';
    else if (!p.offload_dir[0])
        snprintf(p.offload_dir, sizeof p.offload_dir, "."); /* the checks want one */

    sched_geom g;
    sched_plan pl;
    /* the LP's geometry: with 16-bit sources that of a layer that moves
     * (one wholly on the GPU tier stays in the storage type, so with
     * p.wg = 100 the blob would be the wide one; the exact plans of
     * try_exact tell the two apart) */
    sched_policy pg = p;
    if (o->weight_fmt)
        pg.wg = 0, pg.wc = 100;
    if (sched_plan_geom(c, es, &pg, &sh, &g, &pl) < 0)
        return;
    sched_plan pl_attn; /* the CPU work of CPU attention (fp16 backends) */
    sched_policy p_attn = p;
    p_attn.wg = 0;
    p_attn.wc = 100;
    p_attn.cg = 0;
    p_attn.cc = 100;
    if (attn && sched_plan_compute(c, es, &p_attn, &sh, &pl_attn) < 0)
        return;
    double L = g.L, row = (double)g.d * es;
    act_io xm = sched_act_moves(&g, o->prompt_len);
    kv_layout rec = sched_kv_layout(&g, g.gbs, sh.cap, sh.scores);
    sched_geom gd = g; /* a GPU batch's record wholly on disk */
    gd.kv_n[SCHED_DISK] = g.gbs;
    gd.kv[SCHED_DISK] = rec;
    gd.kv_disk_stride = off_align_up(rec.bytes);
    sched_kv_log_geom(&gd);
    lp_in in = {
        .W = L * g.blob,
        .W_al = L * off_align_up(g.blob),
        .blob_al = (double)off_align_up(g.blob),
        .kv_all = L * K * (double)rec.bytes,
        .kvrec = (double)off_align_up(rec.bytes),
        .kv_lfrac = sched_kv_live_frac(sh.cap, o->prompt_len, o->gen_len),
        .kv_rfrac = sched_kv_step_load_bytes(&gd, sh.cap, o->prompt_len, o->gen_len) /
                    (double)gd.kv_disk_stride,
        .kv_wfrac = sched_kv_step_store_bytes(&gd, sh.cap, o->prompt_len, o->gen_len) /
                    (double)gd.kv_disk_stride,
        .globals = (double)g.globals,
        .work_gpu = (double)pl.bytes[SCHED_GPU][SCHED_WORK],
        .work_cpu = attn ? (double)pl_attn.bytes[SCHED_CPU][SCHED_WORK] : 0,
        .x_res = K * (double)(act == SCHED_DISK ? g.x_disk_stride : g.x_bytes),
        .x_stage = (double)off_align_up(g.x_bytes),
        .x_step = xm.step,
        .x_pre = xm.pre,
        .x_step_disk = xm.step_disk,
        .x_pre_disk = xm.pre_disk,
        .cross_row = L * K * gbs * row,
        .act = act,
        .attn = attn,
        .disk = o->disk_cap > 0,
        .host = o->host_visible,
        .np = sched_prefill_passes(&sh, gbs, o->prompt_len),
        .gen = o->gen_len,
        .s = o->prompt_len,
        .gpu_cap = (double)o->gpu_cap,
        .cpu_cap = (double)o->cpu_cap,
        .disk_cap = (double)o->disk_cap,
        .hw = x->hw,
    };
    in.W_file = sh.weights_on_disk_already ? 0 : in.W_al;
    /* the terms no placement changes: compute and device memory */
    sched_cost c0;
    if (sched_cost_eval(c, es, &p, &sh, o->prompt_len, o->gen_len, x->hw, &c0) < 0)
        return;
    in.ts_min = c0.step[COST_FLOPS] > c0.step[COST_DEV_MEM] ? c0.step[COST_FLOPS]
                                                             : c0.step[COST_DEV_MEM];
    in.tp_min = c0.prefill[COST_FLOPS];

    /* the relaxation: no placement of this shape does better than this */
    lp_out lo;
    if (lp_solve(&in, &lo) < 0)
        return;
    double bound = (double)g.block * o->gen_len / (lo.f[V_TP] + (o->gen_len - 1) * lo.f[V_TS]);
    /* (0.98 of the last kept: a candidate within SCHED_SEARCH_NEAR of it could
     * still rank before it) */
    if (x->n == x->n_out && bound < 0.98 * x->out[x->n - 1].cost.tok_s)
        return;

    const wlevels *wl = &x->wl;
    sched_candidate best;
    int has_best = 0;
    for (int a = 0; o->weight_layers != 1 && a < wl->n; a++)
        for (int b = a; b < wl->n; b++) {
            if (!in.disk && b != wl->n - 1)
                continue; /* no disk: every weight on the GPU or the CPU */
            /* quick refusals before any LP */
            if (L * wl->f[a] * g.blob + g.globals > o->gpu_cap ||
                L * (wl->f[b] - wl->f[a]) * g.blob > o->cpu_cap)
                continue;
            lp_in fin = in;
            fin.fix_w = 1;
            fin.fwg = wl->f[a];
            fin.fwc = wl->f[b] - wl->f[a];
            p.wg = wl->pct[a];
            p.wc = wl->pct[b] - wl->pct[a];
            for (int iter = 0; iter < 4; iter++) {
                if (lp_solve(&fin, &lo) < 0)
                    break;
                if (getenv("FLEXH2O_SEARCH_DEBUG"))
                    err_log("search: gbs %d K %d act %d attn %d rows %d w %g/%g iter %d: "
                            "cg %.4f cc %.4f tp %.4g ts %.4g", gbs, K, act, attn,
                            sh.max_rows, p.wg, p.wc, iter,
                            lo.f[V_CG], lo.f[V_CC], lo.f[V_TP], lo.f[V_TS]);
                if (try_roundings(x, &p, &sh, &lo, &fin, iter, &best, &has_best))
                    break;
            }
        }
    /* after the levels: where it scores the same (better() ties), the
     * FlexGen policy found first stays */
    if (o->weight_layers != 0)
        mixed_cuts(x, &in, &p, &sh, &best, &has_best);
    if (!has_best)
        return;
    if (best.pol.weight_layers)
        as_levels(x, &sh, &best);
    if (!o->disk_cap)
        best.pol.offload_dir[0] = '\0';
    else
        memcpy(best.pol.offload_dir, x->base->offload_dir, sizeof best.pol.offload_dir);
    for (int j = 0; j < x->n; j++)
        if (same_policy(&x->out[j].pol, &best.pol))
            return;
    keep_best(x->out, x->n_out, &x->n, &best);
}

int sched_search(const sched_model *c, size_t es, const sched_policy *base,
                 const sched_search_opts *o, const sched_calib *hw, sched_candidate *out,
                 int n_out, int *n_found)
{
    *n_found = 0;
    RETURN_IF(o->prompt_len < 1 || o->gen_len < 1, -EINVAL,
              "search: give --prompt-len and --gen-len (at least 1 each)");
    RETURN_IF(!o->gpu_cap || !o->cpu_cap, -EINVAL,
              "search: give --gpu-mem and --cpu-mem (the caps the policy must fit)");
    RETURN_IF(o->kv_cap < 1, -EINVAL, "internal: search with %d KV slots", o->kv_cap);
    RETURN_IF(!(hw->h2d > 0 && hw->d2h > 0 && hw->dram > 0 && hw->dev_mem > 0 && hw->gemm > 0),
              -EINVAL, "search: the hardware profile lacks a rate; measure it with "
              "`flexh2o calibrate --out FILE`");
    RETURN_IF(o->disk_cap && !(hw->disk_read > 0 && hw->disk_write > 0), -EINVAL,
              "search: the hardware profile has no disk rates; calibrate with --offload-dir "
              "on the disk the search may use, or search without --offload-dir");
    RETURN_IF(n_out < 1, -EINVAL, "internal: search for %d candidates", n_out);
    const int *gl = o->gbs_list ? o->gbs_list : default_gbs;
    int ng = o->gbs_list ? o->n_gbs : (int)(sizeof default_gbs / sizeof *default_gbs);
    int maxk = o->max_gpu_batches > 0 ? o->max_gpu_batches : 16;
    int max_block = o->max_block > 0 ? o->max_block : 1024;
    search_ctx x = {.c = c, .es = es, .base = base, .o = o, .hw = hw, .out = out,
                    .n_out = n_out};
    /* the cuts of the blob the tiers hold: 16-bit on a wider backend when
     * the source is (as sched_plan_geom decides) */
    size_t wes = o->weight_fmt && es > 2 && !base->compress_weight ? 2 : es;
    weight_levels(c, wes, base->compress_weight, &x.wl);
    int quiet = !err_msg()[0];
    /* large blocks first: they usually win, and a good early candidate lets
     * the bound drop the shapes that cannot beat it */
    /* the job's own size is a GPU batch size worth trying too */
    int with_max = o->max_block > 0 && o->max_block <= 65536;
    for (int i = 0; i < ng && with_max; i++)
        with_max = gl[i] != max_block;
    for (int i = ng - 1 + with_max; i >= 0; i--) {
        int gbs = i == ng ? max_block : gl[i];
        for (int K = maxk; K >= 1; K--) {
            if ((long long)gbs * K > max_block)
                continue;
            /* the prefill pass: the rows given, or (pick_prefill_rows) those
             * and their halves down to a prompt, each pass shape once (a
             * GPU batch of fewer rows than given takes them in one) */
            for (int rows = o->prefill_rows, last = 0;; rows /= 2) {
                int mr = sched_prefill_rows(rows, o->prompt_len, gbs), fresh = mr != last;
                for (int act = SCHED_GPU; fresh && act <= (o->disk_cap ? SCHED_DISK : SCHED_CPU);
                     act++)
                    for (int attn = 0; attn <= 1; attn++)
                        if (o->cpu_attention < 0 || attn == o->cpu_attention)
                            solve_shape(&x, gbs, K, act, attn, rows);
                last = mr;
                if (!o->pick_prefill_rows || rows <= o->prompt_len || rows < 2)
                    break;
            }
        }
    }
    if (quiet)
        err_clear(); /* candidates refused on the way are not errors */
    RETURN_IF(x.n == 0 && o->max_prefill_s > 0 && search_fits_unlimited(&x), -ENOSPC,
              "no block that fits prefills within %g s by the estimate; raise "
              "--max-prefill-seconds (0: no limit)", o->max_prefill_s);
    if (x.n == 0) {
        /* say what the smallest block needs with everything offloaded */
        sched_policy p = *base;
        p.gpu_batch_size = p.num_gpu_batches = 1;
        p.wg = p.cg = p.hg = 0;
        p.wc = p.cc = p.hc = o->disk_cap ? 0 : 100;
        if (!p.offload_dir[0])
            snprintf(p.offload_dir, sizeof p.offload_dir, ".");
        sched_shape sh = search_shape(o, 1, o->prefill_rows);
        sched_plan pl;
        FORWARD_IF(sched_plan_compute(c, es, &p, &sh, &pl));
        RETURN_IF(1, -ENOSPC, "no policy fits: even one sequence with %s offloaded needs "
                  "%.2f GiB on the GPU tier (--gpu-mem %.2f GiB) and %.2f GiB on the CPU tier "
                  "(--cpu-mem %.2f GiB); raise the caps%s", o->disk_cap ? "everything" :
                  "weights and KV", pl.total[SCHED_GPU] / 1073741824.0,
                  o->gpu_cap / 1073741824.0, pl.total[SCHED_CPU] / 1073741824.0,
                  o->cpu_cap / 1073741824.0, o->disk_cap ? "" : " or give --offload-dir");
    }
    *n_found = x.n;
    return 0;
}

/* ------------------------------------------------------------ report */

void sched_search_print(FILE *f, const sched_candidate *c, int n)
{
    fprintf(f, " rank  gbs x K    block     wg     wc     cg     cc   hg   hc  cpu-attn  "
            "bound tok/s   step s  prefill s  step limited by\n");
    for (int i = 0; i < n; i++) {
        const sched_policy *p = &c[i].pol;
        const sched_cost *q = &c[i].cost;
        char rows[48] = "";
        if (sched_policy_prefill_rows(p) != SCHED_PREFILL_ROWS)
            snprintf(rows, sizeof rows, "; prefill passes of %d rows", p->prefill_rows);
        fprintf(f, " %4d  %4d x %-3d %6d %6.4g %6.4g %6.4g %6.4g %4g %4g  %-8s  %11.2f  "
                "%7.3f  %9.2f  %s%s%s\n",
                i + 1, p->gpu_batch_size, p->num_gpu_batches, c[i].plan.block, p->wg, p->wc,
                p->cg, p->cc, p->hg, p->hc, p->cpu_attention ? "yes" : "no", q->tok_s,
                q->step_s, q->prefill_s, sched_cost_term_name(q->step_limit),
                p->weight_layers ? "; wg, wc of all layers (--weight-layers)" : "", rows);
    }
}
