/* sample_slow.h: an independent, slow reference of kern.h's sampling text
 * for the tests (test_kern_host against kern_sample_ref, test_kern_cuda to
 * tell which rows the CUDA op must decide as the CPU op does), and the
 * random rows both draw.
 *
 * Written from kern.h's text alone: the edits in fp32 as the text writes
 * them, then everything in double, the order by qsort of (prob, id) pairs.
 * Beside the token it reports how close the row's decisions came to going
 * the other way: an implementation that rounds differently (fp32 sums, the
 * GPU's __expf) may decide such a row otherwise, and only such a row.
 *   margin_mass: the smallest distance, in probability mass, between a
 *                running sum and what it was compared with (the top_p cut,
 *                the draw's target)
 *   margin_rel:  the smallest relative distance of a token's p / max(p) from
 *                min_p, and of two neighbours in the order (where the order
 *                decides: the top_k cut, the top_p cut, the drawn token)
 *                that are not exactly tied
 * Greedy rows and ties of equal logits are exact: margins INFINITY. */
#ifndef FH_TEST_SAMPLE_SLOW_H
#define FH_TEST_SAMPLE_SLOW_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"

typedef struct slow_pick {
    int32_t tok;
    double logprob;                          /* raw log softmax at tok */
    int32_t top_ids[KERN_TOP_LOGPROBS_MAX];  /* (n_top) */
    double top_lps[KERN_TOP_LOGPROBS_MAX];   /* (n_top) */
    double margin_mass, margin_rel;
} slow_pick;

typedef struct slow_pair {
    double p;
    int32_t id;
} slow_pair;

static int slow_pair_cmp(const void *a, const void *b)
{
    const slow_pair *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The relative gap of neighbours j, j + 1 of the order (INFINITY for an
 * exact tie or past the end). */
static double slow_gap(const slow_pair *s, int n, int j)
{
    if (j < 0 || j + 1 >= n || s[j].p == s[j + 1].p || s[j].p <= 0.0)
        return INFINITY;
    return (s[j].p - s[j + 1].p) / s[j].p;
}

/* Pick from logits (V) with the controls *r and the caller's edits. */
static void slow_sample(const float *logits, int V, const kern_sample_row *r,
                        const kern_logit_edit *edits, slow_pick *out)
{
    float *e = malloc(sizeof(float) * (size_t)V);
    slow_pair *s = malloc(sizeof(slow_pair) * (size_t)V);
    memcpy(e, logits, sizeof(float) * (size_t)V);
    for (int j = 0; j < r->n_edit; j++) {
        const kern_logit_edit *d = &edits[r->edit0 + j];
        float x = e[d->tok];
        float scaled = x > 0.0f ? x * d->pos : x * d->neg; /* fp32, as kern.h writes it */
        e[d->tok] = scaled + d->add;
    }
    out->margin_mass = out->margin_rel = INFINITY;
    int32_t tok = 0;
    if (r->temperature <= 0.0f) {
        for (int i = 1; i < V; i++)
            if (e[i] > e[tok])
                tok = i;
    } else {
        double T = r->temperature, zmax = -INFINITY;
        for (int i = 0; i < V; i++)
            zmax = fmax(zmax, e[i] / T);
        if (zmax > -INFINITY) {
            double S = 0.0;
            for (int i = 0; i < V; i++)
                S += exp(e[i] / T - zmax);
            int n_pos0 = 0, n = 0; /* positive before min_p; kept by it (sorted in s) */
            for (int i = 0; i < V; i++) {
                double w = exp(e[i] / T - zmax); /* p / max(p) */
                n_pos0 += w > 0.0;
                if (w > 0.0 && w < 1.0 && r->min_p > 0.0f) /* 1: the max, kept exactly */
                    out->margin_rel = fmin(out->margin_rel, fabs(w / r->min_p - 1.0));
                if (w > 0.0 && !(w < r->min_p)) /* p < min_p * max(p) drops */
                    s[n++] = (slow_pair){w / S, i};
            }
            qsort(s, (size_t)n, sizeof *s, slow_pair_cmp);
            int keep = n;
            if (r->top_k > 0 && r->top_k < keep) {
                keep = r->top_k;
                out->margin_rel = fmin(out->margin_rel, slow_gap(s, n, keep - 1));
            }
            if (r->top_p < 1.0f) {
                double want = r->top_p;
                if (keep < n_pos0) {
                    double kept = 0.0;
                    for (int j = 0; j < keep; j++)
                        kept += s[j].p;
                    want *= kept;
                }
                double c = 0.0;
                for (int j = 0; j < keep; j++) {
                    double before = c;
                    c += s[j].p;
                    if (c >= want) {
                        /* the cut could move down (j > 0) or up (j < keep - 1) */
                        if (j > 0)
                            out->margin_mass = fmin(out->margin_mass, want - before);
                        if (j < keep - 1)
                            out->margin_mass = fmin(out->margin_mass, c - want);
                        out->margin_rel = fmin(out->margin_rel, slow_gap(s, keep, j));
                        out->margin_rel = fmin(out->margin_rel, slow_gap(s, keep, j - 1));
                        keep = j + 1;
                        break;
                    }
                }
            }
            double mass = 0.0;
            for (int j = 0; j < keep; j++)
                mass += s[j].p;
            /* the first token whose running mass exceeds the target; past
             * the end (rounding) the last one */
            double target = r->u * mass, c = 0.0, before = 0.0;
            int at = keep - 1;
            for (int j = 0; j < keep; j++) {
                before = c;
                c += s[j].p;
                if (target < c) {
                    at = j;
                    break;
                }
            }
            /* the draw could move down (at > 0) or up (at < keep - 1); at
             * either end every implementation agrees (u = 0: the first; a
             * target rounded up to the mass: the last) */
            if (at > 0)
                out->margin_mass = fmin(out->margin_mass, target - before);
            if (at < keep - 1)
                out->margin_mass = fmin(out->margin_mass, c - target);
            out->margin_rel = fmin(out->margin_rel, slow_gap(s, keep, at));
            out->margin_rel = fmin(out->margin_rel, slow_gap(s, keep, at - 1));
            tok = s[at].id;
        }
    }
    /* the raw log softmax, and its top entries by (logit desc, id asc) */
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < V; i++)
        mx = fmax(mx, logits[i]);
    for (int i = 0; i < V; i++)
        sum += exp(logits[i] - mx);
    double lse = mx + log(sum);
    out->tok = tok;
    out->logprob = logits[tok] - lse;
    for (int i = 0; i < V; i++)
        s[i] = (slow_pair){logits[i], i};
    qsort(s, (size_t)V, sizeof *s, slow_pair_cmp);
    for (int k = 0; k < r->n_top; k++) {
        out->top_ids[k] = s[k].id;
        out->top_lps[k] = s[k].p - lse;
    }
    free(e);
    free(s);
}

/* ------------------------------------------------------------ random rows */

static uint64_t slow_next(uint64_t *s)
{
    return kern_splitmix64(s);
}

static double slow_unit(uint64_t *s) /* [0, 1) */
{
    return (double)(slow_next(s) >> 11) * 0x1.0p-53;
}

/* V logits on a grid of 1/64 in [-scale, scale]: exact in fp16 (scale <=
 * 16) and full of exact ties; with `ties` the highest value is given to a
 * few more tokens. */
static void slow_logits(uint64_t *s, float *x, int V, float scale, int ties)
{
    int steps = (int)(scale * 64.0f);
    for (int i = 0; i < V; i++)
        x[i] = (float)((int)(slow_next(s) % (uint64_t)(2 * steps + 1)) - steps) / 64.0f;
    if (ties) {
        int top = 0;
        for (int i = 1; i < V; i++)
            top = x[i] > x[top] ? i : top;
        for (int k = 0; k < 3; k++)
            x[slow_next(s) % (uint64_t)V] = x[top];
    }
}

/* The kinds of random row: each control alone and together. */
enum {
    SLOW_GREEDY,       /* plain argmax */
    SLOW_GREEDY_EDITS, /* argmax after edits (the argmax banned or penalised) */
    SLOW_TEMP,         /* temperature alone */
    SLOW_TOP_P,
    SLOW_TOP_K,        /* k = 1, small, >= V */
    SLOW_MIN_P,
    SLOW_EDITS,        /* temperature with penalties and bans */
    SLOW_ALL,          /* everything at once */
    SLOW_KINDS
};

/* Row r of `kind` over logits x (V) with temperatures in [t_lo, t_hi),
 * its edits appended at edits[*n_edits] (room for V + 8 more), n_top
 * random when `top`. */
static void slow_row(uint64_t *s, int kind, const float *x, int V, float t_lo, float t_hi,
                     int top, kern_sample_row *r, kern_logit_edit *edits, int *n_edits)
{
    *r = (kern_sample_row){.top_p = 1.0f, .u = slow_unit(s), .edit0 = *n_edits};
    if (slow_next(s) % 8 == 0)
        r->u = slow_next(s) % 2 ? 0.0 : 1.0 - 0x1.0p-40; /* the ends of [0, 1) */
    float T = t_lo + (t_hi - t_lo) * (float)slow_unit(s);
    int edit = kind == SLOW_GREEDY_EDITS || kind == SLOW_EDITS ||
               (kind == SLOW_ALL && slow_next(s) % 4);
    if (kind != SLOW_GREEDY && kind != SLOW_GREEDY_EDITS)
        r->temperature = T;
    if (kind == SLOW_TOP_P || (kind == SLOW_ALL && slow_next(s) % 2))
        r->top_p = 0.05f + 0.9f * (float)slow_unit(s);
    if (kind == SLOW_TOP_K || (kind == SLOW_ALL && slow_next(s) % 2)) {
        int ks[] = {1, 2, 5, 40, V, V + 3};
        r->top_k = ks[slow_next(s) % 6];
    }
    if (kind == SLOW_MIN_P || (kind == SLOW_ALL && slow_next(s) % 2)) {
        float ps[] = {0.001f, 0.05f, 0.3f, 0.8f, 1.0f};
        r->min_p = ps[slow_next(s) % 5];
    }
    if (edit) {
        /* distinct tokens: a stride through the vocabulary, the argmax
         * among them half the time */
        int n = 1 + (int)(slow_next(s) % (uint64_t)(V < 12 ? V : 12));
        int32_t first = (int32_t)(slow_next(s) % (uint64_t)V), step = 1 + 2 * (V > 2);
        if (slow_next(s) % 2) {
            first = 0;
            for (int i = 1; i < V; i++)
                first = x[i] > x[first] ? i : first;
        }
        for (int j = 0; j < n && j < V / step; j++) {
            kern_logit_edit d = {.tok = (first + j * step) % V, .pos = 1, .neg = 1};
            switch (slow_next(s) % 4) {
            case 0: { /* repetition penalty */
                float pen = 1.05f + (float)slow_unit(s);
                d.pos = 1.0f / pen;
                d.neg = pen;
                break;
            }
            case 1: /* presence / frequency */
                d.add = -(float)(slow_next(s) % 5) * 0.375f;
                break;
            case 2: /* a ban */
                d.add = -INFINITY;
                break;
            default: /* both, as a caller folds them */
                d.pos = 0.8f, d.neg = 1.25f, d.add = -0.5f;
            }
            edits[(*n_edits)++] = d;
        }
        r->n_edit = *n_edits - r->edit0;
    }
    if (top) {
        int most = V < KERN_TOP_LOGPROBS_MAX ? V : KERN_TOP_LOGPROBS_MAX;
        r->n_top = (int)(slow_next(s) % (uint64_t)(most + 1));
    }
}

/* A row with every token banned (V edits appended). */
static void slow_row_all_banned(int V, float T, kern_sample_row *r, kern_logit_edit *edits,
                                int *n_edits)
{
    *r = (kern_sample_row){.temperature = T, .top_p = 1.0f, .u = 0.5, .edit0 = *n_edits,
                           .n_edit = V};
    for (int i = 0; i < V; i++)
        edits[(*n_edits)++] = (kern_logit_edit){.tok = V - 1 - i, .pos = 1, .neg = 1,
                                                .add = -INFINITY};
}

#endif
