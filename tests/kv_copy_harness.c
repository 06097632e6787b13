/* kv_copy_harness.c: see kv_copy_harness.h. */
#include "kv_copy_harness.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "model.h"
#include "scheduler.h"

#define KVC_MAXB 8   /* largest block */
#define KVC_STEPS 8  /* decode steps of a run */
#define KVC_CAP 20   /* slots per (sequence, layer, head) with the full policy; with
                      * H2O the cap is the budget, 6, and every copy is of a whole cap */
#define KVC_PLEN 9   /* the prompt */
#define KVC_QLEN 12  /* the longer prompts overwritten */

static const int32_t prompt[KVC_PLEN] = {2, 37, 101, 5, 300, 8, 41, 77, 9};
static const int32_t steps[KVC_STEPS] = {12, 250, 7, 499, 64, 3, 128, 31};

typedef struct kvc {
    backend *be;
    sched *s;
    model *m;
    const kvc_case *c;
    const char *name;
    int B, V, L, KVH, cap;
    size_t lkc;               /* L x KVH x cap: one sequence's positions (or scores) */
    int host[KVC_MAXB];       /* 1: attended by CPU threads over a host cache (CPU
                               * attention on a backend whose buffers are not host
                               * memory), which rounds otherwise than the backend */
    kern_seq q[KVC_MAXB];     /* each sequence between passes (row, n_new unused) */
    float *lg;                /* (B, V) the last pass's logits, by sequence */
} kvc;

const char *kvc_name(const kvc_case *c)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s %dx%d --percent %s%s%s%s %s", c->model ? c->model : "tiny-opt",
             c->gbs, c->K, c->percent, c->cpu_attention ? " --cpu-attention" : "",
             c->no_overlap ? " --no-overlap" : "", c->compress_cache ? " --compress-cache" : "",
             c->h2o ? "h2o" : "full");
    return buf;
}

static void kvc_open(backend *be, const kvc_case *c, kvc *e)
{
    memset(e, 0, sizeof *e);
    e->be = be;
    e->c = c;
    e->name = kvc_name(c);
    const char *dir = c->model ? c->model : FH_SOURCE_ROOT "/tests/fixtures/tiny-opt";
    model_config mc;
    cr_assert_eq(model_config_of(dir, &mc), 0, "%s", err_msg());
    sched_model shape, bound;
    model_sched_shape(&mc, &shape);
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = c->gbs;
    p.num_gpu_batches = c->K;
    cr_assert_eq(sched_policy_parse_percent(&c->percent, 1, &p), 0, "%s", err_msg());
    p.cpu_attention = c->cpu_attention;
    p.overlap = !c->no_overlap;
    p.compress_cache = c->compress_cache;
    snprintf(p.offload_dir, sizeof p.offload_dir, "%s/off", cli_dir);
    mkdir(p.offload_dir, 0755);
    e->cap = c->h2o ? 6 : KVC_CAP;
    sched_shape sh = {.max_rows = 64, .cap = e->cap, .scores = c->h2o,
                      .max_prompt = KVC_QLEN};
    e->B = c->gbs * c->K;
    cr_assert_leq(e->B, KVC_MAXB);
    cr_assert_eq(sched_create(be, &shape, &p, &sh, NULL, &e->s), 0, "%s: %s", e->name,
                 err_msg());
    cr_assert_eq(model_load_hf_sink(dir, be, sched_layer_sink, e->s, &e->m), 0, "%s",
                 err_msg());
    model_sched_bind(e->m, &bound);
    cr_assert_eq(sched_attach(e->s, &bound), 0, "%s", err_msg());
    e->V = shape.vocab;
    e->L = shape.n_layer;
    e->KVH = shape.n_kv_head;
    e->lkc = (size_t)e->L * e->KVH * e->cap;
    e->lg = malloc(sizeof(float) * (size_t)e->B * e->V);
    int ng, nc, nd;
    sched_split(c->gbs, p.cg, p.cc, &ng, &nc, &nd);
    for (int s = 0; s < e->B; s++)
        e->host[s] = s % c->gbs >= ng && c->cpu_attention && !be->ops->host_visible;
}

static void kvc_close(kvc *e)
{
    sched_destroy(e->s);
    model_destroy(e->m);
    free(e->lg);
}

/* Sequence s starts afresh (the case's KV policy). */
static void kvc_reset(kvc *e, int s)
{
    /* h2o: B 6 = 1 sink + floor(5 x 0.5) heavy + 3 recent */
    e->q[s] = e->c->h2o ? (kern_seq){.budget = 6, .sinks = 1, .recent = 3}
                        : (kern_seq){.budget = e->cap, .recent = 1};
}

/* One pass: n[s] > 0 prefills sequence s with ids[s] (n[s] tokens), a
 * decode pass feeds tok[s] >= 0 (n NULL); the others idle. Logits go to
 * e->lg by sequence. */
static void kvc_pass(kvc *e, const int32_t *const *ids, const int *n, const int32_t *tok,
                     int step)
{
    int32_t tk[KVC_MAXB * KVC_QLEN], pos[KVC_MAXB * KVC_QLEN], last[KVC_MAXB];
    int who[KVC_MAXB], rows = 0, n_out = 0;
    kern_seq q[KVC_MAXB];
    for (int s = 0; s < e->B; s++) {
        q[s] = e->q[s];
        q[s].row = 0;
        q[s].n_new = 0;
        int len = n ? n[s] : tok[s] >= 0;
        if (len == 0)
            continue;
        if (n) {
            kvc_reset(e, s);
            q[s] = e->q[s];
        }
        q[s].row = rows;
        q[s].n_new = len;
        for (int j = 0; j < len; j++) {
            tk[rows] = n ? ids[s][j] : tok[s];
            pos[rows++] = q[s].n_past + j;
        }
        last[n_out] = rows - 1;
        who[n_out++] = s;
    }
    cr_assert_eq(sched_forward(e->s, tk, pos, rows, q, e->B, last, n_out, step), 0, "%s: %s",
                 e->name, err_msg());
    float *lg = malloc(sizeof(float) * (size_t)n_out * e->V);
    cr_assert_eq(e->be->ops->download(e->be->ctx, lg, sched_logits(e->s),
                                      (size_t)n_out * e->V), 0);
    for (int i = 0; i < n_out; i++) {
        kern_seq *sq = &e->q[who[i]];
        memcpy(e->lg + (size_t)who[i] * e->V, lg + (size_t)i * e->V, sizeof(float) * e->V);
        sq->n_past += q[who[i]].n_new;
        sq->n_slots = sq->n_past < sq->budget ? sq->n_past : sq->budget;
    }
    free(lg);
}

/* Prefill sequence 0 alone with the prompt and copy it onto the others. */
static void kvc_shared_prefill(kvc *e)
{
    const int32_t *ids[KVC_MAXB] = {prompt};
    int n[KVC_MAXB] = {KVC_PLEN};
    kvc_pass(e, ids, n, NULL, 0);
    int dst[KVC_MAXB];
    for (int s = 1; s < e->B; s++)
        dst[s - 1] = s;
    cr_assert_eq(sched_kv_copy(e->s, 0, dst, e->B - 1, e->q[0].n_slots), 0, "%s: %s", e->name,
                 err_msg());
    for (int s = 1; s < e->B; s++)
        e->q[s] = e->q[0];
}

/* Every sequence prefills the prompt itself, in one pass. */
static void kvc_own_prefill(kvc *e)
{
    const int32_t *ids[KVC_MAXB];
    int n[KVC_MAXB];
    for (int s = 0; s < e->B; s++) {
        ids[s] = prompt;
        n[s] = KVC_PLEN;
    }
    kvc_pass(e, ids, n, NULL, 0);
}

/* Slot positions and (H2O) scores of sequence s, every layer: (L, KVH, cap). */
static void kvc_state(kvc *e, int s, int32_t *pos, float *sc)
{
    for (int l = 0; l < e->L; l++) {
        cr_assert_eq(sched_read_kv(e->s, l, s, 0, pos + (size_t)l * e->KVH * e->cap), 0, "%s",
                     err_msg());
        if (e->c->h2o)
            cr_assert_eq(sched_read_kv(e->s, l, s, 1, sc + (size_t)l * e->KVH * e->cap), 0,
                         "%s", err_msg());
    }
}

/* The slots in use (n) of two states are the same: positions, and scores
 * with H2O. */
static void kvc_same_state(kvc *e, const int32_t *pa, const float *sa, const int32_t *pb,
                           const float *sb, int n, const char *what)
{
    for (int l = 0; l < e->L; l++)
        for (int h = 0; h < e->KVH; h++) {
            size_t at = ((size_t)l * e->KVH + h) * e->cap;
            for (int i = 0; i < n; i++) {
                cr_assert_eq(pa[at + i], pb[at + i], "%s: %s, layer %d head %d slot %d: "
                             "position %d vs %d", e->name, what, l, h, i, pa[at + i],
                             pb[at + i]);
                if (e->c->h2o)
                    cr_assert(!memcmp(&sa[at + i], &sb[at + i], sizeof(float)),
                              "%s: %s, layer %d head %d slot %d: score %.9g vs %.9g", e->name,
                              what, l, h, i, sa[at + i], sb[at + i]);
            }
        }
}

/* Logits a and b (V) are the same bits (tol < 0) or within tol. */
static void kvc_same_logits(const kvc *e, const float *a, const float *b, double tol,
                            const char *what, int step, int s)
{
    if (tol < 0) {
        for (int v = 0; v < e->V; v++)
            cr_assert(!memcmp(&a[v], &b[v], sizeof(float)), "%s: %s, step %d sequence %d "
                      "logit %d: %.9g vs %.9g", e->name, what, step, s, v, a[v], b[v]);
        return;
    }
    for (int v = 0; v < e->V; v++)
        cr_assert_leq(fabs((double)a[v] - b[v]), tol, "%s: %s, step %d sequence %d logit %d: "
                      "%.9g vs %.9g", e->name, what, step, s, v, a[v], b[v]);
}

/* Decode KVC_STEPS steps with tokens hist[s][t] (all sequences active),
 * the logits into lg (KVC_STEPS, B, V); with state, the positions and
 * scores after each step into pos, sc (KVC_STEPS, B, lkc). */
static void kvc_decode(kvc *e, const int32_t hist[][KVC_STEPS], float *lg, int32_t *pos,
                       float *sc)
{
    for (int t = 0; t < KVC_STEPS; t++) {
        int32_t tok[KVC_MAXB];
        for (int s = 0; s < e->B; s++)
            tok[s] = hist[s][t];
        kvc_pass(e, NULL, NULL, tok, t + 1);
        memcpy(lg + (size_t)t * e->B * e->V, e->lg, sizeof(float) * (size_t)e->B * e->V);
        for (int s = 0; pos && s < e->B; s++)
            kvc_state(e, s, pos + ((size_t)t * e->B + s) * e->lkc,
                      sc + ((size_t)t * e->B + s) * e->lkc);
    }
}

/* Every sequence of a run with one token history behaves as sequence 0:
 * the same logits and states, bit for bit where it is computed alike,
 * within tol where CPU threads attend it and not sequence 0. */
static void kvc_all_as_first(kvc *e, const float *lg, const int32_t *pos, const float *sc,
                             const char *what)
{
    for (int t = 0; t < KVC_STEPS; t++)
        for (int s = 1; s < e->B; s++) {
            int r = 0; /* the first sequence computed as s is */
            while (e->host[r] != e->host[s])
                r++;
            const float *a = lg + ((size_t)t * e->B + s) * e->V;
            kvc_same_logits(e, lg + ((size_t)t * e->B + r) * e->V, a, -1, what, t + 1, s);
            if (r != 0 && e->c->tol >= 0)
                kvc_same_logits(e, lg + (size_t)t * e->B * e->V, a, e->c->tol, what, t + 1, s);
            size_t ia = ((size_t)t * e->B + r) * e->lkc, ib = ((size_t)t * e->B + s) * e->lkc;
            kvc_same_state(e, pos + ia, sc + ia, pos + ib, sc + ib, e->q[s].n_slots, what);
        }
}

void kvc_check(backend *be, const kvc_case *c)
{
    kvc e;
    kvc_open(be, c, &e);
    int B = e.B;
    size_t nl = (size_t)KVC_STEPS * B * e.V, ns = (size_t)KVC_STEPS * B * e.lkc;
    float *lg_a = malloc(sizeof(float) * nl), *lg_b = malloc(sizeof(float) * nl);
    int32_t *pos_a = malloc(sizeof(int32_t) * ns), *pos_b = malloc(sizeof(int32_t) * ns);
    float *sc_a = malloc(sizeof(float) * ns), *sc_b = malloc(sizeof(float) * ns);
    int32_t same[KVC_MAXB][KVC_STEPS], div[KVC_MAXB][KVC_STEPS], last[KVC_MAXB][KVC_STEPS];
    for (int s = 0; s < B; s++)
        for (int t = 0; t < KVC_STEPS; t++) {
            same[s][t] = steps[t];
            div[s][t] = t < 2 ? steps[t] : (steps[t] + 37 * s) % e.V;
        }
    for (int s = 0; s < B; s++)
        memcpy(last[s], div[B - 1], sizeof last[s]);
    uint64_t allocs = be->ops->allocs(be->ctx);

    /* shared: the prefill of sequence 0 copied, the same tokens for all */
    for (int s = 0; s < B; s++)
        kvc_reset(&e, s);
    kvc_shared_prefill(&e);
    kvc_decode(&e, same, lg_a, pos_a, sc_a);
    kvc_all_as_first(&e, lg_a, pos_a, sc_a, "shared prefill");
    /* ... as if each had prefilled the prompt itself */
    kvc_own_prefill(&e);
    kvc_decode(&e, same, lg_b, pos_b, sc_b);
    for (int t = 0; c->tol >= 0 && t < KVC_STEPS; t++)
        for (int s = 0; s < B; s++)
            kvc_same_logits(&e, lg_b + ((size_t)t * B + s) * e.V,
                            lg_a + ((size_t)t * B + s) * e.V, c->tol, "own vs shared prefill",
                            t + 1, s);

    /* diverged: two shared steps, then each sequence its own tokens */
    kvc_shared_prefill(&e);
    kvc_decode(&e, div, lg_a, pos_a, sc_a);
    for (int t = 2; t < KVC_STEPS; t++)
        cr_assert(memcmp(lg_a + ((size_t)t * B + B - 1) * e.V, lg_a + (size_t)t * B * e.V,
                         sizeof(float) * e.V) != 0, "%s: step %d: other tokens, same logits",
                  e.name, t + 1);
    kvc_own_prefill(&e);
    kvc_decode(&e, div, lg_b, NULL, NULL);
    for (int t = 0; c->tol >= 0 && t < KVC_STEPS; t++)
        for (int s = 0; s < B; s++)
            kvc_same_logits(&e, lg_b + ((size_t)t * B + s) * e.V,
                            lg_a + ((size_t)t * B + s) * e.V, c->tol,
                            "diverged: own vs shared prefill", t + 1, s);
    /* the last sequence (another GPU batch, another tier) is sequence 0
     * given its tokens */
    kvc_shared_prefill(&e);
    kvc_decode(&e, last, lg_b, pos_b, sc_b);
    for (int t = 0; t < KVC_STEPS; t++) {
        const float *a = lg_a + ((size_t)t * B + B - 1) * e.V, *b = lg_b + (size_t)t * B * e.V;
        size_t ia = ((size_t)t * B + B - 1) * e.lkc, ib = (size_t)t * B * e.lkc;
        if (e.host[B - 1] == e.host[0]) {
            kvc_same_logits(&e, b, a, -1, "diverged: last vs first with its tokens", t + 1,
                            B - 1);
            kvc_same_state(&e, pos_b + ib, sc_b + ib, pos_a + ia, sc_a + ia, e.q[0].n_slots,
                           "diverged: last vs first with its tokens");
        } else if (c->tol >= 0) {
            kvc_same_logits(&e, b, a, c->tol, "diverged: last vs first with its tokens", t + 1,
                            B - 1);
        }
    }

    /* overwrite: the others held longer prompts and two steps of their own */
    {
        int32_t qs[KVC_MAXB][KVC_QLEN];
        const int32_t *ids[KVC_MAXB] = {0};
        int n[KVC_MAXB] = {0};
        for (int s = 0; s < B; s++) {
            for (int j = 0; j < KVC_QLEN; j++)
                qs[s][j] = j == 0 ? 2 : (11 + 29 * s + 53 * j) % e.V;
            ids[s] = s == 0 ? prompt : qs[s];
            n[s] = s == 0 ? KVC_PLEN : KVC_QLEN;
        }
        kvc_pass(&e, ids, n, NULL, 0);
        for (int t = 0; t < 2; t++) {
            int32_t tok[KVC_MAXB] = {0};
            for (int s = 0; s < B; s++)
                tok[s] = (5 + 71 * s + 13 * t) % e.V;
            kvc_pass(&e, NULL, NULL, tok, t + 1);
        }
        for (int s = 1; s < B && !c->h2o; s++)
            cr_assert_gt(e.q[s].n_slots, e.q[0].n_slots); /* slots past the copy's */
        int dst[KVC_MAXB];
        for (int s = 1; s < B; s++)
            dst[s - 1] = s;
        cr_assert_eq(sched_kv_copy(e.s, 0, dst, B - 1, e.q[0].n_slots), 0, "%s", err_msg());
        for (int s = 1; s < B; s++)
            e.q[s] = e.q[0];
        kvc_decode(&e, same, lg_a, pos_a, sc_a);
        kvc_all_as_first(&e, lg_a, pos_a, sc_a, "copied over other content");
    }

    /* refill: a prefill of the last sequence alone after the copy keeps the
     * copies of its GPU batch (their records are stored whole) */
    for (int s = 0; s < B; s++)
        kvc_reset(&e, s);
    kvc_shared_prefill(&e);
    {
        const int32_t *ids[KVC_MAXB] = {0};
        int n[KVC_MAXB] = {0};
        ids[B - 1] = prompt;
        n[B - 1] = KVC_PLEN;
        kvc_pass(&e, ids, n, NULL, 0);
    }
    kvc_decode(&e, same, lg_a, pos_a, sc_a);
    kvc_all_as_first(&e, lg_a, pos_a, sc_a, "a prefill after the copy");

    cr_assert_eq(be->ops->allocs(be->ctx), allocs, "%s: the passes and copies allocated on "
                 "the backend", e.name);
    /* what is refused */
    int bad[2] = {0, e.B};
    cr_assert_eq(sched_kv_copy(e.s, 0, bad, 1, 1), -EINVAL);
    cr_assert_eq(sched_kv_copy(e.s, 0, bad + 1, 1, 1), -EINVAL);
    cr_assert_eq(sched_kv_copy(e.s, 0, bad, 0, e.cap + 1), -EINVAL);
    cr_assert_eq(sched_kv_copy(e.s, -1, bad, 0, 1), -EINVAL);
    err_clear();
    free(lg_a);
    free(lg_b);
    free(pos_a);
    free(pos_b);
    free(sc_a);
    free(sc_b);
    kvc_close(&e);
}
