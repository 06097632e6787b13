/* gen.c: the generation loop, one block of sequences at a time.
 *
 *   gen_run: the pending prompts (todo_scan), one allocation carved into
 *            every array of the run (run_layout), then per block of
 *            sched_block sequences (block_start):
 *     run_prefill: pack whole prompts, up to max_rows tokens a GPU batch
 *                  and pass (prefill_pack); each sequence's cache gets its
 *                  prompt K/V, sample token 1 (prefill_pass)
 *     run_decode:  one row per unfinished sequence, idle ones skip (n_new 0)
 *     after the prefill and each decode pass: write the finished prefix of
 *     the block, in order (flush_done)
 *
 * KV policy: every sequence carries its own budget/sinks/recent (from
 * kv_policy_split) in its kern_seq; the kernels keep, evict and score by
 * them. --trace-evictions and --stats read the cache back after a pass
 * (gen_trace.c), and only when asked: nothing else leaves the backend per
 * step. gen_plan.c sizes the job before it runs.
 */
#include <assert.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "gen_impl.h"

/* The kern_seq of sequence s for a pass feeding n_new rows from row. */
static kern_seq seq_desc(const gen_seq *s, int row, int n_new)
{
    return (kern_seq){.row = row, .n_new = n_new, .n_past = s->n_past, .n_slots = s->n_slots,
                      .budget = s->budget, .sinks = s->sinks, .recent = s->recent,
                      .window = s->window};
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

/* 1 when tok is one of the ids that end a sequence. */
static int is_eos(const gen_ctx *gc, int32_t tok)
{
    for (int i = 0; i < gc->n_eos; i++)
        if (tok == gc->eos[i])
            return 1;
    return 0;
}

/* Record the sampled token of sequence s; finish it on EOS or length. */
static void take_token(const gen_ctx *gc, gen_seq *s, int32_t tok, float lp)
{
    s->toks[s->n_gen] = tok;
    s->lps[s->n_gen] = lp;
    s->n_gen++;
    if (is_eos(gc, tok)) {
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
static int sample_rows(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n_out)
{
    const model_config *c = gc->c;
    const gen_opts *o = gc->o;
    const backend *be = gc->m->be;
    for (int i = 0; i < n_out; i++) {
        gen_seq *s = &ss[bb->members[i]];
        bb->srows[i] = (kern_sample_row){.temperature = o->temperature, .top_p = o->top_p,
                                         .u = (kern_splitmix64(&s->rng) >> 11) * 0x1.0p-53};
    }
    FORWARD_IF(be->ops->sample(be->ctx, sched_logits(gc->sc), n_out, c->vocab_size, bb->srows,
                               NULL, bb->tokens, bb->lps, NULL, NULL));
    for (int i = 0; i < n_out; i++)
        take_token(gc, &ss[bb->members[i]], bb->tokens[i], bb->lps[i]);
    return 0;
}

/* Fill the prefill pass that starts at sequence first: whole prompts in
 * sequence order, each GPU batch bringing at most max_rows tokens (its
 * first prompt always goes). A sequence with nothing to generate brings no
 * rows. *rows and *n_out get the packed rows and the output rows.
 * @return the first sequence of the next pass. */
static int prefill_pack(const gen_ctx *gc, gen_buf *bb, const gen_seq *ss, int n, int first,
                        int *rows_out, int *n_out_out)
{
    int rows = 0, n_out = 0, s = first, batch_rows = 0;
    for (int k = 0; k < n; k++)
        bb->seqs[k] = seq_desc(&ss[k], 0, 0);
    while (s < n) {
        const job_prompt *p = ss[s].p;
        if (s % gc->gbs == 0 || s == first)
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
    *rows_out = rows;
    *n_out_out = n_out;
    return s;
}

/* Run one packed prefill pass: each member's cache gets its prompt and
 * its first token is sampled; then the pass's trace lines and stats. */
static int prefill_pass(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n, int rows, int n_out,
                        gen_stats *st)
{
    const gen_opts *o = gc->o;
    FORWARD_IF(sched_forward(gc->sc, bb->ids, bb->pos, rows, bb->seqs, n, bb->last, n_out, 0));
    FORWARD_IF(sample_rows(gc, bb, ss, n_out));
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
    return 0;
}

/* The prefill of a block, in as many passes as max_rows needs; then the
 * sequences with nothing to generate are finished. */
static int run_prefill(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n, gen_stats *st)
{
    double t0 = kern_now_s();
    for (int first = 0; first < n;) {
        int rows, n_out;
        first = prefill_pack(gc, bb, ss, n, first, &rows, &n_out);
        if (n_out > 0)
            FORWARD_IF(prefill_pass(gc, bb, ss, n, rows, n_out, st));
    }
    for (int k = 0; k < n; k++)
        if (ss[k].max_new == 0) {
            ss[k].done = 1;
            ss[k].finish = "length";
        }
    st->prefill_s += kern_now_s() - t0;
    return 0;
}

/* Fill a decode pass: every unfinished sequence feeds its last token;
 * finished ones idle (n_new 0). @return the rows (0: all finished). */
static int decode_pack(gen_buf *bb, const gen_seq *ss, int n)
{
    int rows = 0;
    for (int k = 0; k < n; k++) {
        const gen_seq *s = &ss[k];
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
    return rows;
}

/* The decode of a block: one pass per generated token until every
 * sequence finished, writing the finished prefix after each (*next: the
 * first sequence not yet written). */
static int run_decode(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n, int *next, gen_stats *st)
{
    const gen_opts *o = gc->o;
    double t0 = kern_now_s();
    for (int step = 1;; step++) {
        int rows = decode_pack(bb, ss, n);
        if (rows == 0)
            break;
        FORWARD_IF(sched_forward(gc->sc, bb->ids, bb->pos, rows, bb->seqs, n, bb->last, rows,
                                 step));
        if (o->trace)
            FORWARD_IF(gen_trace_decode(gc, bb, ss, n, o->trace));
        FORWARD_IF(sample_rows(gc, bb, ss, rows));
        for (int i = 0; i < rows; i++)
            seq_advance(&ss[bb->members[i]], 1);
        if (o->kv_stats)
            FORWARD_IF(gen_stats_pass(gc, bb, ss, rows, st));
        gen_progress(gc, st, 0);
        st->decode_tokens += rows;
        st->generated += rows;
        FORWARD_IF(flush_done(ss, n, next, gc->t, gc->out));
    }
    st->decode_s += kern_now_s() - t0;
    return 0;
}

/* Generate the n sequences of a block to the end, writing each record as
 * soon as it and all before it are done. */
static int run_block(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n, gen_stats *st)
{
    int next = 0;
    FORWARD_IF(run_prefill(gc, bb, ss, n, st));
    FORWARD_IF(flush_done(ss, n, &next, gc->t, gc->out));
    return run_decode(gc, bb, ss, n, &next, st);
}

/* Start a block: ss[0..n) take the prompts todo[0..n), each with its own
 * max_new, KV split and random stream (toks and lps keep their place). */
static void block_start(gen_seq *ss, const job_prompt *const *todo, int n, const gen_opts *o,
                        const model_config *c)
{
    for (int k = 0; k < n; k++) {
        gen_seq *s = &ss[k];
        s->p = todo[k];
        s->max_new = gen_max_new(s->p, o);
        s->n_past = 0;
        s->n_slots = 0;
        kv_split sp;
        int rc = gen_split(c, &o->kv, s->p->n_ids, s->max_new, s->p->line, &sp);
        /* cannot fail: gen_run began with gen_check, which split every
         * prompt of the job with these same arguments */
        assert(rc == 0);
        (void)rc; /* unused under NDEBUG */
        s->budget = sp.budget;
        s->sinks = sp.sinks;
        s->recent = sp.recent;
        s->window = c->sliding_window;
        s->n_gen = 0;
        s->done = 0;
        s->finish = NULL;
        s->rng = seq_seed(o->seed, s->p->id);
    }
}

/* The size of a run, from its pending prompts. */
typedef struct run_size {
    int n_todo;      /* prompts of the job not yet in the output */
    int max_prompt;  /* their longest prompt, tokens (0 when none) */
    int max_new;     /* their largest max_new, at least 1 */
    int B;           /* sequences of a block: min(sched_block, n_todo) */
} run_size;

/* Find the prompts of ps not yet in gc->out, in file order: size the run
 * in *rs and, when todo is not NULL, list them there (n_todo of them).
 * st->kv_slots_full gets what `full` would have needed. */
static void todo_scan(const gen_ctx *gc, const job_prompts *ps, run_size *rs,
                      const job_prompt **todo, gen_stats *st)
{
    *rs = (run_size){.max_new = 1};
    for (int i = 0; i < ps->n; i++) {
        if (job_out_has(gc->out, ps->p[i].id))
            continue;
        const job_prompt *p = &ps->p[i];
        int mn = gen_max_new(p, gc->o);
        if (todo)
            todo[rs->n_todo] = p;
        rs->n_todo++;
        if (p->n_ids > rs->max_prompt)
            rs->max_prompt = p->n_ids;
        if (p->n_ids + mn > st->kv_slots_full)
            st->kv_slots_full = p->n_ids + mn;
        if (mn > rs->max_new)
            rs->max_new = mn;
    }
    rs->B = gc->block < rs->n_todo ? gc->block : rs->n_todo;
}

/* Take n items of size bytes at *off of the run's block, aligned for any
 * type. With base NULL only *off moves (measuring). @return the items. */
static void *carve(char *base, size_t *off, size_t n, size_t size)
{
    size_t align = _Alignof(max_align_t);
    size_t at = (*off + align - 1) / align * align;
    *off = at + n * size;
    return base ? base + at : NULL;
}

/* Lay out the arrays of a run in one block at base, or, with base NULL,
 * measure it: the todo list, the sequences and their generated tokens,
 * the block's pass arrays and the read-back buffers (--trace-evictions,
 * --stats). @return the bytes of the block. */
static size_t run_layout(char *base, const gen_ctx *gc, const run_size *rs,
                         const job_prompt ***todo, gen_seq **ss, gen_buf *bb)
{
    const model_config *c = gc->c;
    size_t off = 0, B = (size_t)rs->B, H = (size_t)c->n_kv_head, cap = (size_t)gc->cap;
    size_t rows = B * (size_t)rs->max_prompt, gen = B * (size_t)rs->max_new;
    *todo = carve(base, &off, (size_t)rs->n_todo, sizeof **todo);
    *ss = carve(base, &off, B, sizeof **ss);
    int32_t *toks = carve(base, &off, gen, sizeof *toks); /* (B, max_new) */
    float *lps = carve(base, &off, gen, sizeof *lps);     /* (B, max_new) */
    bb->ids = carve(base, &off, rows, sizeof *bb->ids);
    bb->pos = carve(base, &off, rows, sizeof *bb->pos);
    bb->last = carve(base, &off, B, sizeof *bb->last);
    bb->tokens = carve(base, &off, B, sizeof *bb->tokens);
    bb->seqs = carve(base, &off, B, sizeof *bb->seqs);
    bb->members = carve(base, &off, B, sizeof *bb->members);
    bb->srows = carve(base, &off, B, sizeof *bb->srows);
    bb->lps = carve(base, &off, B, sizeof *bb->lps);
    if (gc->o->trace) {
        bb->ev = carve(base, &off, (size_t)c->n_layer * (size_t)gc->block * H, sizeof *bb->ev);
        bb->slot_pos = carve(base, &off, H * cap, sizeof *bb->slot_pos);
        bb->kept = carve(base, &off, (size_t)rs->max_prompt, sizeof *bb->kept);
    }
    if (gc->o->kv_stats)
        bb->scores = carve(base, &off, H * cap, sizeof *bb->scores);
    for (size_t k = 0; base && k < B; k++) {
        (*ss)[k].toks = toks + k * (size_t)rs->max_new;
        (*ss)[k].lps = lps + k * (size_t)rs->max_new;
    }
    return off;
}

int gen_run(model *m, sched *sc, const tok *t, const job_prompts *ps, job_out *out,
            const gen_opts *o, gen_stats *st)
{
    const model_config *c = &m->cfg;
    memset(st, 0, sizeof *st);
    FORWARD_IF(gen_check(c, ps, o));
    gen_ctx gc = {.m = m, .c = c, .sc = sc, .o = o, .t = t, .out = out,
                  .gbs = sched_get_policy(sc)->gpu_batch_size, .block = sched_block(sc),
                  .max_rows = sched_max_rows(sc), .cap = sched_cap(sc),
                  .t_start = kern_now_s(), .progress = o->progress};
    gc.last_report = gc.t_start;
    /* the ids that end a sequence: the tokenizer's set (Llama-3 instruct
     * has several), else the config's one */
    gc.n_eos = t ? tok_eos_ids(t, &gc.eos) : 0;
    if (gc.n_eos == 0) {
        gc.eos_cfg = c->eos_id;
        gc.eos = &gc.eos_cfg;
        gc.n_eos = 1;
    }
    if (o->ignore_eos)
        gc.n_eos = 0;
    run_size rs;
    todo_scan(&gc, ps, &rs, NULL, st);
    gc.n_todo = rs.n_todo;
    st->kv_slots = gc.cap;
    if (rs.B == 0) {
        st->total_s = kern_now_s() - gc.t_start;
        return 0;
    }
    /* everything the run needs, allocated once; --stats' sums are st's */
    const job_prompt **todo;
    gen_seq *ss;
    gen_buf bb = {0};
    char *mem = calloc(1, run_layout(NULL, &gc, &rs, &todo, &ss, &bb));
    if (mem) {
        run_layout(mem, &gc, &rs, &todo, &ss, &bb);
        todo_scan(&gc, ps, &rs, todo, st);
    }
    if (mem && o->kv_stats) {
        st->kept_mass = calloc((size_t)c->n_layer, sizeof(double));
        st->n_layer = c->n_layer;
    }
    int rc = mem && (!o->kv_stats || st->kept_mass) ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory for a block of %d sequences", rs.B);
    for (int first = 0; rc == 0 && first < rs.n_todo; first += rs.B) {
        int n = rs.n_todo - first < rs.B ? rs.n_todo - first : rs.B;
        block_start(ss, todo + first, n, o, c);
        rc = run_block(&gc, &bb, ss, n, st);
        st->prompts += n;
        gen_progress(&gc, st, first + n == rs.n_todo);
    }
    free(mem);
    gen_stats_mean(st);
    st->total_s = kern_now_s() - gc.t_start;
    return rc;
}
