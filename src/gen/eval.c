/* eval.c: teacher-forced scoring of token streams (eval.h), one block of
 * sequences at a time:
 *
 *   prefill: each stream's first `prefill` tokens, packed as generate packs
 *            prompts (whole, up to max_rows a GPU batch and pass)
 *   decode:  one row per unfinished stream, feeding its next true token
 *   after every pass: the output rows' logits are read back and each
 *            scores the token it predicts (log-softmax in double on the
 *            host), and with compare_full the policy row is set against
 *            the full-cache row of the same stream (agreement, KL)
 *
 * With compare_full, stream i of a block is sequences 2i (the policy's
 * split) and 2i + 1 (a budget of the whole stream: never evicts).
 */
#include "eval.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "gen.h"

/* One sequence of the block. */
typedef struct ev_seq {
    eval_stream *s;
    int full;            /* the compare_full copy */
    int n_past, n_slots; /* tokens fed; KV slots in use */
    int budget, sinks, recent;
    int window;          /* the model's sliding window, 0: none */
} ev_seq;

typedef struct ev_ctx {
    const eval_opts *o;
    sched *sc;
    const backend *be;
    int V, gbs, block, max_rows, per;
    ev_seq *q;           /* (block) */
    kern_seq *seqs;      /* (block) */
    int32_t *ids, *pos;  /* (K x max_rows) */
    int32_t *last;       /* (block) */
    int *members;        /* (block) the sequence of each output row */
    int *row_of;         /* (block) the output row of each sequence this pass, or -1 */
    float *logits;       /* (block, V) host */
    eval_stats *st;
    long total_fed;      /* for the progress line */
    double t0, last_report;
} ev_ctx;

static kern_seq desc(const ev_seq *q, int row, int n_new)
{
    return (kern_seq){.row = row, .n_new = n_new, .n_past = q->n_past, .n_slots = q->n_slots,
                      .budget = q->budget, .sinks = q->sinks, .recent = q->recent,
                      .window = q->window};
}

/* log-sum-exp and argmax of a row of logits, in double. */
static double row_lse(const float *x, int V, int *argmax)
{
    int a = 0;
    for (int v = 1; v < V; v++)
        if (x[v] > x[a])
            a = v;
    double m = x[a], sum = 0;
    for (int v = 0; v < V; v++)
        sum += exp((double)x[v] - m);
    *argmax = a;
    return m + log(sum);
}

/* Score the output rows of the last pass: row r belongs to sequence
 * members[r], which has now fed n_past tokens and so predicts ids[n_past]. */
static int score_pass(ev_ctx *e, int n_out)
{
    FORWARD_IF(e->be->ops->download(e->be->ctx, e->logits, sched_logits(e->sc),
                                    (size_t)n_out * e->V));
    for (int r = 0; r < n_out; r++) {
        ev_seq *q = &e->q[e->members[r]];
        eval_stream *s = q->s;
        int j = q->n_past;
        if (q->full || j < s->first_target || j >= s->n)
            continue;
        const float *x = e->logits + (size_t)r * e->V;
        int arg;
        double lse = row_lse(x, e->V, &arg);
        s->logprob += (double)x[s->ids[j]] - lse;
        s->n_targets++;
        s->n_greedy += arg == s->ids[j];
        e->st->targets++;
        if (!e->o->compare_full)
            continue;
        int rf = e->row_of[e->members[r] + 1]; /* the full copy, fed in lockstep */
        RETURN_IF(rf < 0, -EINVAL, "internal: the full-cache copy of a stream fell behind");
        const float *y = e->logits + (size_t)rf * e->V;
        int arg_f;
        double lse_f = row_lse(y, e->V, &arg_f), kl = 0;
        for (int v = 0; v < e->V; v++) {
            double lf = (double)y[v] - lse_f, lp = (double)x[v] - lse;
            kl += exp(lf) * (lf - lp);
        }
        s->kl += kl;
        s->n_agree += arg == arg_f;
    }
    return 0;
}

static void progress(ev_ctx *e, int force)
{
    double now = kern_now_s();
    if (!e->o->progress || (!force && now - e->last_report < 1.0))
        return;
    double el = now - e->t0;
    err_log("[flexh2o] eval: %ld/%ld tokens, %.1f tok/s", e->st->fed, e->total_fed,
            el > 0 ? e->st->fed / el : 0.0);
    e->last_report = now;
}

/* Run one pass of n sequences whose rows are packed; score it. */
static int run_pass(ev_ctx *e, int n, int rows, int n_out, int step)
{
    FORWARD_IF(sched_forward(e->sc, e->ids, e->pos, rows, e->seqs, n, e->last, n_out, step));
    for (int k = 0; k < n; k++)
        e->row_of[k] = -1;
    for (int r = 0; r < n_out; r++) {
        ev_seq *q = &e->q[e->members[r]];
        int fed = e->seqs[e->members[r]].n_new;
        q->n_past += fed;
        q->n_slots = q->n_past < q->budget ? q->n_past : q->budget;
        e->row_of[e->members[r]] = r;
        if (!q->full)
            e->st->fed += fed;
    }
    FORWARD_IF(score_pass(e, n_out));
    progress(e, 0);
    return 0;
}

/* The prefill of a block: whole prefixes, up to max_rows a GPU batch and
 * pass (the first sequence of a batch always goes). */
static int block_prefill(ev_ctx *e, int n)
{
    for (int first = 0; first < n;) {
        int rows = 0, n_out = 0, batch_rows = 0, k = first;
        for (int i = 0; i < n; i++)
            e->seqs[i] = desc(&e->q[i], 0, 0);
        while (k < n) {
            int len = e->q[k].s->prefill;
            if (k % e->gbs == 0 || k == first)
                batch_rows = 0;
            if (batch_rows > 0 && batch_rows + len > e->max_rows)
                break;
            batch_rows += len;
            e->seqs[k] = desc(&e->q[k], rows, len);
            for (int j = 0; j < len; j++) {
                e->ids[rows + j] = e->q[k].s->ids[j];
                e->pos[rows + j] = j;
            }
            rows += len;
            e->last[n_out] = rows - 1;
            e->members[n_out++] = k;
            k++;
        }
        FORWARD_IF(run_pass(e, n, rows, n_out, 0));
        first = k;
    }
    return 0;
}

/* The decode of a block: each sequence feeds its next true token until it
 * has fed all but its last. */
static int block_decode(ev_ctx *e, int n)
{
    for (int step = 1;; step++) {
        int rows = 0;
        for (int k = 0; k < n; k++) {
            ev_seq *q = &e->q[k];
            if (q->n_past >= q->s->n - 1) {
                e->seqs[k] = desc(q, 0, 0);
                continue;
            }
            e->seqs[k] = desc(q, rows, 1);
            e->ids[rows] = q->s->ids[q->n_past];
            e->pos[rows] = q->n_past;
            e->last[rows] = rows;
            e->members[rows] = k;
            rows++;
        }
        if (rows == 0)
            return 0;
        FORWARD_IF(run_pass(e, n, rows, rows, step));
    }
}

int eval_check(const model_config *c, eval_stream *s, int n, const eval_opts *o)
{
    FORWARD_IF(kv_policy_check(&o->kv));
    int grows = gen_positions_grow(c, &o->kv);
    for (int i = 0; i < n; i++) {
        eval_stream *x = &s[i];
        RETURN_IF(x->n < 2 || x->prefill < 1 || x->prefill >= x->n ||
                  x->first_target < x->prefill || x->first_target >= x->n, -EINVAL,
                  "internal: stream %d of %d tokens, prefill %d, first target %d", i + 1, x->n,
                  x->prefill, x->first_target);
        RETURN_IF(!grows && x->n > c->max_pos && x->line, -EINVAL,
                  "the request on line %d has %d tokens, past the model's "
                  "max_position_embeddings %d; shorten it, or use an evicting --kv-policy on a "
                  "rotary model", x->line, x->n, c->max_pos);
        RETURN_IF(!grows && x->n > c->max_pos, -EINVAL,
                  "window %d has %d tokens, past the model's max_position_embeddings %d; "
                  "shorten it (--context), or use an evicting --kv-policy on a rotary model",
                  i + 1, x->n, c->max_pos);
        FORWARD_IF(gen_split(c, &o->kv, x->prefill, x->n - x->prefill, i + 1, &x->split));
    }
    return 0;
}

void eval_shape(const model_config *c, const eval_stream *s, int n, const eval_opts *o,
                int gbs, sched_shape *sh)
{
    (void)c;
    int max_prompt = 1, cap = 1;
    for (int i = 0; i < n; i++) {
        max_prompt = s[i].prefill > max_prompt ? s[i].prefill : max_prompt;
        int b = o->compare_full ? s[i].n : s[i].split.budget;
        cap = b > cap ? b : cap;
    }
    memset(sh, 0, sizeof *sh);
    sh->max_rows = sched_prefill_rows(o->prefill_rows, max_prompt, gbs);
    sh->max_prompt = max_prompt;
    sh->cap = cap;
    sh->scores = kv_policy_needs_scores(&o->kv);
    sh->sample = SCHED_SAMPLE_NONE; /* the logits are read back */
}

int eval_run(model *m, sched *sc, eval_stream *s, int n, const eval_opts *o, eval_stats *st)
{
    memset(st, 0, sizeof *st);
    const sched_policy *pol = sched_get_policy(sc);
    ev_ctx e = {.o = o, .sc = sc, .be = m->be, .V = m->cfg.vocab_size,
                .gbs = pol->gpu_batch_size, .block = sched_block(sc),
                .max_rows = sched_max_rows(sc), .per = o->compare_full ? 2 : 1, .st = st};
    RETURN_IF(e.block < e.per, -EINVAL, "--compare-full runs each window twice side by side: "
              "use a --batch-size of at least 2");
    for (int i = 0; i < n; i++) {
        s[i].logprob = s[i].kl = 0;
        s[i].n_targets = s[i].n_greedy = s[i].n_agree = 0;
        e.total_fed += s[i].n - 1;
    }
    size_t B = (size_t)e.block, R = (size_t)pol->num_gpu_batches * e.max_rows;
    e.q = calloc(B, sizeof *e.q);
    e.seqs = calloc(B, sizeof *e.seqs);
    e.ids = calloc(R, sizeof *e.ids);
    e.pos = calloc(R, sizeof *e.pos);
    e.last = calloc(B, sizeof *e.last);
    e.members = calloc(B, sizeof *e.members);
    e.row_of = calloc(B, sizeof *e.row_of);
    e.logits = malloc(sizeof(float) * B * (size_t)e.V);
    int rc = e.q && e.seqs && e.ids && e.pos && e.last && e.members && e.row_of && e.logits
                 ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory for a block of %d sequences", e.block);
    e.t0 = e.last_report = kern_now_s();
    int per_block = e.block / e.per;
    for (int first = 0; rc == 0 && first < n; first += per_block) {
        int ns = n - first < per_block ? n - first : per_block, nq = ns * e.per;
        for (int i = 0; i < nq; i++) {
            eval_stream *x = &s[first + i / e.per];
            int full = o->compare_full && i % 2 == 1;
            /* the full cache is still the model's: a sliding window caps it */
            kv_split sp = x->split;
            if (full)
                rc = gen_split(&m->cfg, &(kv_policy){.kind = KV_POLICY_FULL}, x->prefill,
                               x->n - x->prefill, 0, &sp);
            e.q[i] = (ev_seq){.s = x, .full = full, .budget = sp.budget, .sinks = sp.sinks,
                              .recent = sp.recent, .window = m->cfg.sliding_window};
        }
        if (rc < 0)
            break;
        rc = block_prefill(&e, nq);
        if (rc == 0)
            rc = block_decode(&e, nq);
        if (rc == 0 && o->on_block)
            rc = o->on_block(o->ud, s, first, ns);
    }
    progress(&e, 1);
    st->seconds = kern_now_s() - e.t0;
    free(e.q);
    free(e.seqs);
    free(e.ids);
    free(e.pos);
    free(e.last);
    free(e.members);
    free(e.row_of);
    free(e.logits);
    return rc;
}

/* ------------------------------------------------- window records */

uint64_t eval_window_fp(const eval_stream *s, int compare_full)
{
    int h[9] = {s->n, s->prefill, s->first_target, s->split.budget, s->split.sinks,
                s->split.heavy, s->split.recent, s->split.evicts, compare_full};
    return XXH3_64bits_withSeed(s->ids, sizeof(int32_t) * (size_t)s->n,
                                XXH3_64bits(h, sizeof h));
}

char *eval_window_record(const eval_stream *s, int k, int compare_full)
{
    char *t = NULL;
    return asprintf(&t, "{\"id\": %d, \"fp\": \"%016llx\", \"logprob\": %.17g, "
                    "\"targets\": %d, \"greedy\": %d, \"kl\": %.17g, \"agree\": %d}", k + 1,
                    (unsigned long long)eval_window_fp(s, compare_full), s->logprob,
                    s->n_targets, s->n_greedy, s->kl, s->n_agree) < 0 ? NULL : t;
}

/* The numbers of record r into window s, when they are ones a run of s
 * gives: its target count, counts within it, a finite log-probability
 * (at most 0) and KL. @return 1 when taken, 0 when not. */
static int take_numbers(const cJSON *r, eval_stream *s)
{
    const cJSON *f[5] = {cJSON_GetObjectItemCaseSensitive(r, "logprob"),
                         cJSON_GetObjectItemCaseSensitive(r, "targets"),
                         cJSON_GetObjectItemCaseSensitive(r, "greedy"),
                         cJSON_GetObjectItemCaseSensitive(r, "kl"),
                         cJSON_GetObjectItemCaseSensitive(r, "agree")};
    for (int i = 0; i < 5; i++)
        if (!cJSON_IsNumber(f[i]) || !isfinite(f[i]->valuedouble))
            return 0;
    int targets = s->n - s->first_target;
    double lp = f[0]->valuedouble, kl = f[3]->valuedouble;
    double g = f[2]->valuedouble, a = f[4]->valuedouble;
    /* the ranges first: a double cast to int past int's is undefined */
    if (f[1]->valuedouble != targets || !(lp <= 0) || !(g >= 0 && g <= targets) ||
        g != (int)g || !(a >= 0 && a <= targets) || a != (int)a)
        return 0;
    s->logprob = lp;
    s->n_targets = targets;
    s->n_greedy = (int)g;
    s->kl = kl;
    s->n_agree = (int)a;
    return 1;
}

int eval_windows_read(const char *path, const char *buf, size_t len, eval_stream *s, int n,
                      int compare_full, unsigned char *done, long *n_done)
{
    int rc = 0, line = 0;
    for (const char *p = buf, *nl; rc == 0 && p < buf + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(buf + len - p));
        if (!nl)
            nl = buf + len;
        line++;
        cJSON *r = cJSON_ParseWithLength(p, (size_t)(nl - p));
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id"),
                    *fp = cJSON_GetObjectItemCaseSensitive(r, "fp");
        int k = cJSON_IsNumber(id) && id->valuedouble >= 1 && id->valuedouble <= n &&
                        id->valuedouble == (int)id->valuedouble
                    ? (int)id->valuedouble - 1 : -1;
        char want[24] = "";
        if (k >= 0)
            snprintf(want, sizeof want, "%016llx",
                     (unsigned long long)eval_window_fp(&s[k], compare_full));
        if (!want[0] || !cJSON_IsString(fp) || strcmp(fp->valuestring, want) != 0) {
            err_set(__FILE__, __LINE__, "%s line %d: not a record of this run's windows (another "
                    "text, --context, KV policy or --compare-full); choose another --out",
                    path, line);
            rc = -EINVAL;
        } else if (!done[k]) {
            eval_stream keep = s[k];
            if (take_numbers(r, &s[k])) {
                done[k] = 1;
                (*n_done)++;
            } else {
                s[k] = keep;
                err_set(__FILE__, __LINE__, "%s line %d: window %d's numbers are not ones a run "
                        "gives (damaged?); choose another --out", path, line, k + 1);
                rc = -EINVAL;
            }
        }
        cJSON_Delete(r);
    }
    return rc;
}
