/* gen.c: the generation loop of one block of sequences.
 *
 *   prompts ─► block of batch_size sequences
 *     prefill: pack whole prompts, up to prefill_rows tokens a pass
 *              (each sequence's cache gets its prompt K/V), sample token 1
 *     decode:  one row per unfinished sequence, idle ones skip (n_new 0)
 *     after every step: write the finished prefix of the block in order
 *
 * KV policy: every sequence carries its own budget/sinks/recent (from
 * kv_policy_split) in its kern_seq; the kernels keep, evict and score by
 * them. --trace-evictions and --stats read the cache back after a pass
 * (gen_trace.c), and only when asked: nothing else leaves the backend per
 * step. gen_plan.c sizes the job before it runs.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "gen_impl.h"

/* The kern_seq of sequence s for a pass feeding n_new rows from row. */
static kern_seq seq_desc(const gen_seq *s, int row, int n_new)
{
    return (kern_seq){.row = row, .n_new = n_new, .n_past = s->n_past, .n_slots = s->n_slots,
                      .budget = s->budget, .sinks = s->sinks, .recent = s->recent};
}

/* After a pass that fed n_new tokens of s. */
static void seq_advance(gen_seq *s, int n_new)
{
    s->n_past += n_new;
    s->n_slots = s->n_past < s->budget ? s->n_past : s->budget;
}

/* The prompt's own random stream: the id (compact JSON) hashed with the
 * seed, so that a prompt draws the same numbers in any batch and order. */
static uint64_t seq_seed(uint64_t seed, const char *id)
{
    return XXH3_64bits_withSeed(id, strlen(id), seed);
}

/* Record the sampled token of sequence s; finish it on EOS or length. */
static void take_token(gen_seq *s, int32_t tok, float lp, int eos)
{
    s->toks[s->n_gen] = tok;
    s->lps[s->n_gen] = lp;
    s->n_gen++;
    if (tok == eos) {
        s->done = 1;
        s->finish = "eos";
    } else if (s->n_gen >= s->max_new) {
        s->done = 1;
        s->finish = "length";
    }
}

/* Write the finished prefix of the block, in order. */
static int flush_done(gen_seq *ss, int n, int *next, const tok *t, job_out *out)
{
    while (*next < n && ss[*next].done == 1) {
        gen_seq *s = &ss[*next];
        char *text = NULL;
        int len = 0;
        if (t) {
            len = tok_decode(t, s->toks, (size_t)s->n_gen, &text);
            FORWARD_IF(len);
        }
        int rc = job_out_write(out, s->p->id, text ? text : "", (size_t)len, s->toks,
                                s->lps, s->n_gen, s->finish);
        free(text);
        FORWARD_IF(rc);
        s->done = 2;
        (*next)++;
    }
    return 0;
}

/* The progress line on stderr, at most once a second (force: now). */
static void gen_progress(gen_ctx *gc, const gen_stats *st, int force)
{
    double now = kern_now_s();
    if (!gc->progress || (!force && now - gc->last_report < 1.0))
        return;
    double el = now - gc->t_start, rate = el > 0 ? st->generated / el : 0;
    double eta = st->prompts ? el * (gc->n_todo - st->prompts) / st->prompts : 0;
    err_log("[flexh2o] %ld/%d prompts done, %.1f tok/s generated, ETA %s%.0f s",
            st->prompts, gc->n_todo, rate, st->prompts ? "" : "> ", eta);
    gc->last_report = now;
}

/* Sample one token for each output row and hand it to its sequence. */
static int sample_rows(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n_out,
                       const gen_opts *o)
{
    const model_config *c = gc->c;
    const backend *be = gc->m->be;
    for (int i = 0; i < n_out; i++) {
        gen_seq *s = &ss[bb->members[i]];
        bb->temp[i] = o->temperature;
        bb->topp[i] = o->top_p;
        bb->u[i] = (kern_splitmix64(&s->rng) >> 11) * 0x1.0p-53;
    }
    FORWARD_IF(be->ops->sample(be->ctx, sched_logits(gc->sc), n_out, c->vocab_size,
                               bb->temp, bb->topp, bb->u, bb->tokens, bb->lps));
    for (int i = 0; i < n_out; i++)
        take_token(&ss[bb->members[i]], bb->tokens[i], bb->lps[i],
                   o->ignore_eos ? -1 : c->eos_id);
    return 0;
}

static int run_block(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n,
                     const gen_opts *o, const tok *t, job_out *out, gen_stats *st)
{
    int next = 0, gbs = gc->gbs;
    /* prefill: whole prompts packed in sequence order; each GPU batch
     * brings at most max_rows tokens to a pass */
    double t0 = kern_now_s();
    for (int first = 0; first < n;) {
        int rows = 0, n_out = 0, s = first, batch_rows = 0;
        for (int k = 0; k < n; k++)
            bb->seqs[k] = seq_desc(&ss[k], 0, 0);
        while (s < n) {
            const job_prompt *p = ss[s].p;
            if (s % gbs == 0 || s == first)
                batch_rows = 0;
            int len = ss[s].max_new > 0 ? p->n_ids : 0;
            if (batch_rows > 0 && batch_rows + len > gc->max_rows)
                break;
            batch_rows += len;
            if (ss[s].max_new > 0) {
                bb->seqs[s] = seq_desc(&ss[s], rows, p->n_ids);
                for (int j = 0; j < p->n_ids; j++) {
                    bb->ids[rows + j] = p->ids[j];
                    bb->pos[rows + j] = j;
                }
                rows += p->n_ids;
                bb->last[n_out] = rows - 1;
                bb->members[n_out++] = s;
            }
            s++;
        }
        first = s;
        if (n_out == 0)
            continue;
        FORWARD_IF(sched_forward(gc->sc, bb->ids, bb->pos, rows, bb->seqs, n, bb->last, n_out,
                                 0));
        FORWARD_IF(sample_rows(gc, bb, ss, n_out, o));
        for (int i = 0; i < n_out; i++) {
            gen_seq *sq = &ss[bb->members[i]];
            seq_advance(sq, sq->p->n_ids);
            if (o->trace && sq->p->n_ids > sq->budget)
                FORWARD_IF(gen_trace_prefill(gc, bb, sq, bb->members[i], o->trace));
        }
        if (o->kv_stats)
            FORWARD_IF(gen_stats_pass(gc, bb, ss, n_out, st));
        st->prefill_tokens += rows;
        st->generated += n_out;
    }
    for (int k = 0; k < n; k++)
        if (ss[k].max_new == 0) {
            ss[k].done = 1;
            ss[k].finish = "length";
        }
    st->prefill_s += kern_now_s() - t0;
    FORWARD_IF(flush_done(ss, n, &next, t, out));

    /* decode: every unfinished sequence feeds its last token */
    t0 = kern_now_s();
    for (int step = 1;; step++) {
        int rows = 0;
        for (int k = 0; k < n; k++) {
            gen_seq *s = &ss[k];
            if (s->done) {
                bb->seqs[k] = seq_desc(s, 0, 0);
                continue;
            }
            bb->seqs[k] = seq_desc(s, rows, 1);
            bb->ids[rows] = s->toks[s->n_gen - 1];
            bb->pos[rows] = s->n_past;
            bb->last[rows] = rows;
            bb->members[rows] = k;
            rows++;
        }
        if (rows == 0)
            break;
        FORWARD_IF(sched_forward(gc->sc, bb->ids, bb->pos, rows, bb->seqs, n, bb->last, rows,
                                 step));
        if (o->trace)
            FORWARD_IF(gen_trace_decode(gc, bb, ss, n, o->trace));
        FORWARD_IF(sample_rows(gc, bb, ss, rows, o));
        for (int i = 0; i < rows; i++)
            seq_advance(&ss[bb->members[i]], 1);
        if (o->kv_stats)
            FORWARD_IF(gen_stats_pass(gc, bb, ss, rows, st));
        gen_progress(gc, st, 0);
        st->decode_tokens += rows;
        st->generated += rows;
        FORWARD_IF(flush_done(ss, n, &next, t, out));
    }
    st->decode_s += kern_now_s() - t0;
    return 0;
}

int gen_run(model *m, sched *sc, const tok *t, const job_prompts *ps, job_out *out,
            const gen_opts *o, gen_stats *st)
{
    const model_config *c = &m->cfg;
    memset(st, 0, sizeof *st);
    FORWARD_IF(gen_check(c, ps, o));
    gen_ctx gc = {.m = m, .c = c, .sc = sc, .gbs = sched_get_policy(sc)->gpu_batch_size,
                  .block = sched_block(sc), .max_rows = sched_max_rows(sc),
                  .cap = sched_cap(sc), .t_start = kern_now_s(), .progress = o->progress};
    gc.last_report = gc.t_start;
    /* pending prompts, in file order */
    int n_todo = 0, max_prompt = 0, max_new = 1;
    const job_prompt **todo = malloc(sizeof *todo * (size_t)(ps->n ? ps->n : 1));
    RETURN_IF(!todo, -ENOMEM, "out of memory");
    for (int i = 0; i < ps->n; i++) {
        if (job_out_has(out, ps->p[i].id))
            continue;
        const job_prompt *p = &ps->p[i];
        int mn = gen_max_new(p, o, c->max_pos);
        todo[n_todo++] = p;
        if (p->n_ids > max_prompt)
            max_prompt = p->n_ids;
        if (p->n_ids + mn > st->kv_slots_full)
            st->kv_slots_full = p->n_ids + mn;
        if (mn > max_new)
            max_new = mn;
    }
    gc.n_todo = n_todo;
    st->kv_slots = gc.cap;
    int B = gc.block < n_todo ? gc.block : n_todo;
    if (B == 0) {
        free(todo);
        st->total_s = kern_now_s() - gc.t_start;
        return 0;
    }
    int max_rows = B * max_prompt;

    gen_buf bb = {0};
    gen_seq *ss = calloc((size_t)B, sizeof *ss);
    int rc = ss ? 0 : -ENOMEM;
    if (rc == 0) {
        bb.ids = malloc(sizeof(int32_t) * (size_t)max_rows);
        bb.pos = malloc(sizeof(int32_t) * (size_t)max_rows);
        bb.last = malloc(sizeof(int32_t) * (size_t)B);
        bb.tokens = malloc(sizeof(int32_t) * (size_t)B);
        bb.members = malloc(sizeof(int) * (size_t)B);
        bb.seqs = malloc(sizeof(kern_seq) * (size_t)B);
        bb.temp = malloc(sizeof(float) * (size_t)B);
        bb.topp = malloc(sizeof(float) * (size_t)B);
        bb.lps = malloc(sizeof(float) * (size_t)B);
        bb.u = malloc(sizeof(double) * (size_t)B);
        for (int k = 0; k < B; k++) {
            ss[k].toks = malloc(sizeof(int32_t) * (size_t)max_new);
            ss[k].lps = malloc(sizeof(float) * (size_t)max_new);
            if (!ss[k].toks || !ss[k].lps)
                rc = -ENOMEM;
        }
        if (!bb.ids || !bb.pos || !bb.last || !bb.tokens || !bb.members ||
            !bb.seqs || !bb.temp || !bb.topp || !bb.lps || !bb.u)
            rc = -ENOMEM;
        size_t heads = (size_t)c->n_head;
        if (o->trace) {
            bb.ev = malloc(sizeof(int32_t) * (size_t)c->n_layer * gc.block * heads);
            bb.slot_pos = malloc(sizeof(int32_t) * heads * gc.cap);
            bb.kept = malloc((size_t)max_prompt);
            if (!bb.ev || !bb.slot_pos || !bb.kept)
                rc = -ENOMEM;
        }
        if (o->kv_stats) {
            bb.scores = malloc(sizeof(float) * heads * gc.cap);
            st->kept_mass = calloc((size_t)c->n_layer, sizeof(double));
            st->n_layer = c->n_layer;
            if (!bb.scores || !st->kept_mass)
                rc = -ENOMEM;
        }
        if (rc == -ENOMEM)
            err_set(__FILE__, __LINE__, "out of memory for a block of %d sequences", B);
    }
    for (int first = 0; rc == 0 && first < n_todo; first += B) {
        int n = n_todo - first < B ? n_todo - first : B;
        for (int k = 0; k < n; k++) {
            gen_seq *s = &ss[k];
            s->p = todo[first + k];
            s->max_new = gen_max_new(s->p, o, c->max_pos);
            s->n_past = 0;
            s->n_slots = 0;
            kv_split sp;
            kv_policy_split(&o->kv, s->p->n_ids, s->max_new, s->p->line, &sp);
            s->budget = sp.budget;
            s->sinks = sp.sinks;
            s->recent = sp.recent;
            s->n_gen = 0;
            s->done = 0;
            s->finish = NULL;
            s->rng = seq_seed(o->seed, s->p->id);
        }
        rc = run_block(&gc, &bb, ss, n, o, t, out, st);
        st->prompts += n;
        gen_progress(&gc, st, first + n == n_todo);
    }
    for (int k = 0; ss && k < B; k++) {
        free(ss[k].toks);
        free(ss[k].lps);
    }
    free(ss);
    free(bb.ids);
    free(bb.pos);
    free(bb.last);
    free(bb.tokens);
    free(bb.members);
    free(bb.seqs);
    free(bb.temp);
    free(bb.topp);
    free(bb.lps);
    free(bb.u);
    free(bb.ev);
    free(bb.slot_pos);
    free(bb.kept);
    free(bb.scores);
    gen_stats_mean(st);
    free(todo);
    st->total_s = kern_now_s() - gc.t_start;
    return rc;
}
