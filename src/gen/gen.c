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
#include <math.h>
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

/* The random stream of sample j of a request: its id (compact JSON)
 * hashed with seed + j, so that a sample draws the same numbers in any
 * batch, order or block, and sample j of a request with seed S is the one
 * completion of the same request with seed S + j. */
static uint64_t seq_seed(uint64_t seed, const char *id, int sample)
{
    return XXH3_64bits_withSeed(id, strlen(id), seed + (uint64_t)sample);
}

/* 1 when tok is one of the ids that end a sequence. */
static int is_eos(const gen_ctx *gc, int32_t tok)
{
    for (int i = 0; i < gc->n_eos; i++)
        if (tok == gc->eos[i])
            return 1;
    return 0;
}

static int is_stop_id(const job_params *par, int32_t tok)
{
    for (int i = 0; i < par->n_stop_ids; i++)
        if (tok == par->stop_ids[i])
            return 1;
    return 0;
}

/* ---------------------------------------------------------- penalties */

/* The table slot of token tok in s's penalty table: where it is, or the
 * free slot where it belongs (the table is at most half full). */
static int pen_slot(const gen_seq *s, int32_t tok)
{
    int i = (int)(((uint32_t)tok * 2654435761u) & (uint32_t)(s->pen_cap - 1));
    while (s->pen_key[i] >= 0 && s->pen_key[i] != tok)
        i = (i + 1) & (s->pen_cap - 1);
    return i;
}

/* Count tok once more: in the prompt (prompt = 1) or generated. */
static void pen_add(gen_seq *s, int32_t tok, int prompt)
{
    int i = pen_slot(s, tok);
    if (s->pen_key[i] < 0) {
        s->pen_key[i] = tok;
        s->pen_out[i] = 0;
        s->pen_in[i] = 0;
        s->pen_list[s->pen_n++] = i;
    }
    if (prompt)
        s->pen_in[i] = 1;
    else
        s->pen_out[i]++;
}


/* Add `add` to the edit of tok among this row's edits e[0..*n), or append
 * one. */
static void edit_add(kern_logit_edit *e, int *n, int32_t tok, float add)
{
    for (int i = 0; i < *n; i++)
        if (e[i].tok == tok) {
            e[i].add += add;
            return;
        }
    e[(*n)++] = (kern_logit_edit){tok, 1.0f, 1.0f, add};
}

/* The logit edits of sequence s's next choice into e (DESIGN.md "Job
 * files", vLLM's order): repetition_penalty scales the logit of every
 * token of prompt and output (divided when positive, multiplied when
 * not), frequency and presence penalties subtract per generated
 * occurrence and once; logit_bias adds; before min_tokens tokens, EOS and
 * the stop ids are banned. @return the edits written. */
static int seq_edits(const gen_ctx *gc, const gen_seq *s, int *edit_at, kern_logit_edit *e)
{
    const job_params *par = &s->p->par;
    int n = 0;
    if (s->pen_cap) { /* the table exists only when the request has penalties */
        float rp = par->repetition_penalty;
        for (int k = 0; k < s->pen_n; k++) {
            int i = s->pen_list[k], out = s->pen_out[i];
            edit_at[i] = -1;
            if (rp == 1.0f && out == 0)
                continue; /* only in the prompt, and nothing scales */
            edit_at[i] = n;
            e[n++] = (kern_logit_edit){s->pen_key[i], 1.0f / rp, rp,
                                       -(par->frequency_penalty * (float)out +
                                         (out > 0 ? par->presence_penalty : 0.0f))};
        }
    }
    for (int i = 0; i < par->n_bias; i++) { /* distinct ids (job_params) */
        int at = -1;
        if (s->pen_cap) {
            int sl = pen_slot(s, par->bias_ids[i]);
            at = s->pen_key[sl] == par->bias_ids[i] ? edit_at[sl] : -1;
        }
        if (at >= 0)
            e[at].add += par->bias[i];
        else
            e[n++] = (kern_logit_edit){par->bias_ids[i], 1.0f, 1.0f, par->bias[i]};
    }
    if (s->n_gen < par->min_tokens) {
        for (int i = 0; !s->ignore_eos && i < gc->n_eos; i++)
            edit_add(e, &n, gc->eos[i], -INFINITY);
        for (int i = 0; i < par->n_stop_ids; i++)
            edit_add(e, &n, par->stop_ids[i], -INFINITY);
    }
    return n;
}

/* ------------------------------------------------------- ending a sample */

/* With stop strings: decode s's text and search the part new since the
 * last call (from max stop length - 1 bytes before it, so that a string
 * split over tokens is found); the earliest match ends s. Before
 * min_tokens (search 0) only the searched length moves on, so that text
 * made then never stops s later (as vLLM). @return 0 or -errno. */
static int check_stop_strings(const gen_ctx *gc, gen_seq *s, int search)
{
    const job_params *par = &s->p->par;
    char *text = NULL;
    int len = tok_decode(gc->t, s->toks, (size_t)s->n_gen, &text);
    FORWARD_IF(len);
    size_t longest = 0;
    for (int i = 0; i < par->n_stop; i++) {
        size_t l = strlen(par->stop[i]);
        longest = l > longest ? l : longest;
    }
    size_t from = s->checked + 1 > longest ? s->checked + 1 - longest : 0;
    const char *best = NULL;
    int which = -1;
    for (int i = 0; search && i < par->n_stop; i++) {
        const char *at = from <= (size_t)len
                             ? memmem(text + from, (size_t)len - from, par->stop[i],
                                      strlen(par->stop[i]))
                             : NULL;
        if (at && (!best || at < best)) {
            best = at;
            which = i;
        }
    }
    if (best) {
        s->done = 1;
        s->finish = "stop";
        s->stop_str = par->stop[which];
        s->cut = (size_t)(best - text) + (par->include_stop ? strlen(par->stop[which]) : 0);
    }
    s->checked = (size_t)len;
    free(text);
    return 0;
}

/* Record the sampled token of sequence s (and its top logprobs: row top
 * of KERN_TOP_LOGPROBS_MAX, or NULL); finish s on EOS, a stop id, a stop
 * string or its length (the stops only from min_tokens tokens on).
 * @return 0 or -errno. */
static int take_token(const gen_ctx *gc, gen_seq *s, int32_t tok, float lp, const int32_t *top_ids,
                      const float *top_lps)
{
    const job_params *par = &s->p->par;
    s->toks[s->n_gen] = tok;
    s->lps[s->n_gen] = lp;
    if (top_ids && par->top_logprobs > 0) {
        size_t at = (size_t)s->n_gen * (size_t)gc->top_stride;
        memcpy(s->top_ids + at, top_ids, sizeof(int32_t) * (size_t)par->top_logprobs);
        memcpy(s->top_lps + at, top_lps, sizeof(float) * (size_t)par->top_logprobs);
    }
    s->n_gen++;
    if (s->pen_cap)
        pen_add(s, tok, 0);
    if (s->n_gen < par->min_tokens && par->n_stop > 0) {
        FORWARD_IF(check_stop_strings(gc, s, 0));
    } else if (s->n_gen >= par->min_tokens) {
        if (!s->ignore_eos && is_eos(gc, tok)) {
            s->done = 1;
            s->finish = "eos";
        } else if (is_stop_id(par, tok)) {
            s->done = 1;
            s->finish = "stop";
            s->stop_id = tok;
        } else if (par->n_stop > 0) {
            FORWARD_IF(check_stop_strings(gc, s, 1));
        }
    }
    if (!s->done && s->n_gen >= s->max_new) {
        s->done = 1;
        s->finish = "length";
    }
    return 0;
}

/* Write the finished prefix of the block, in order: a request once all its
 * samples are done (*next: the first sequence not yet written). */
static int flush_done(const gen_ctx *gc, gen_seq *ss, int n, int *next)
{
    job_choice ch[JOB_N_MAX];
    char *text[JOB_N_MAX];
    while (*next < n) {
        const job_prompt *p = ss[*next].p;
        int k = p->err ? 1 : p->par.n;
        for (int j = 0; j < k; j++)
            if (ss[*next + j].done != 1)
                return 0;
        int rc = 0, m = p->err || gc->discard ? 0 : k;
        for (int j = 0; j < m; j++) {
            gen_seq *s = &ss[*next + j];
            text[j] = NULL;
            int len = 0;
            if (gc->t && rc == 0)
                len = tok_decode(gc->t, s->toks, (size_t)s->n_gen, &text[j]);
            rc = len < 0 ? len : rc;
            size_t kept = s->stop_str && s->cut < (size_t)len ? s->cut : (size_t)(len > 0 ? len : 0);
            ch[j] = (job_choice){.text = text[j] ? text[j] : "", .len = kept,
                                 .tokens = s->toks, .logprobs = s->lps, .n = s->n_gen,
                                 .top_ids = s->top_ids, .top_lps = s->top_lps,
                                 .top_stride = gc->top_stride, .finish = s->finish,
                                 .stop_str = s->stop_str, .stop_id = s->stop_id};
        }
        if (gc->discard) {
            /* the warm-up's: nothing is written */
        } else if (rc == 0 && gc->o->put) { /* another process writes the output */
            char *rec = job_record(gc->out, p, ch, m, gc->t);
            long gen = 0;
            for (int j = 0; j < m; j++)
                gen += ch[j].n;
            rc = rec ? gc->o->put(gc->o->put_ud, p, rec, gen) : -ENOMEM;
            if (!rec)
                err_set(__FILE__, __LINE__, "out of memory writing a record");
            free(rec);
        } else if (rc == 0) {
            rc = job_out_result(gc->out, p, ch, m, gc->t);
        }
        for (int j = 0; j < m; j++)
            free(text[j]);
        FORWARD_IF(rc);
        for (int j = 0; j < k; j++)
            ss[*next + j].done = 2;
        *next += k;
    }
    return 0;
}

/* The progress line on stderr, at most once a second (force: now); until
 * a first request is done there is no ETA to tell (a block's requests end
 * together, after its prefill), only the tokens so far. */
static void gen_progress(gen_ctx *gc, const gen_stats *st, int force)
{
    double now = kern_now_s();
    if (!gc->progress || (!force && now - gc->last_report < 1.0))
        return;
    double el = now - gc->t_start;
    if (gc->n_todo <= 0) /* the total is not known */
        err_log("[flexh2o] %ld prompts done, %.1f tok/s generated", st->prompts,
                el > 0 ? st->generated / el : 0.0);
    else if (st->prompts == 0 || el <= 0)
        err_log("[flexh2o] 0/%d prompts done, %ld tokens generated, no ETA before the first",
                gc->n_todo, st->generated);
    else
        err_log("[flexh2o] %ld/%d prompts done, %.1f tok/s generated, ETA %.0f s",
                st->prompts, gc->n_todo, st->generated / el,
                el * (gc->n_todo - st->prompts) / st->prompts);
    gc->last_report = now;
}

/* Sample one token for each output row and hand it to its sequence. */
static int sample_rows(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n_out)
{
    const model_config *c = gc->c;
    const backend *be = gc->m->be;
    int n_edit = 0, any_top = 0;
    for (int i = 0; i < n_out; i++) {
        gen_seq *s = &ss[bb->members[i]];
        const job_params *par = &s->p->par;
        kern_sample_row *r = &bb->rows[i];
        *r = (kern_sample_row){.temperature = s->temperature, .top_p = s->top_p,
                               .min_p = par->min_p, .top_k = par->top_k > 0 ? par->top_k : 0,
                               .u = (kern_splitmix64(&s->rng) >> 11) * 0x1.0p-53,
                               .edit0 = n_edit, .n_top = par->top_logprobs};
        r->n_edit = seq_edits(gc, s, bb->edit_at, bb->edits + n_edit);
        n_edit += r->n_edit;
        assert(n_edit <= bb->n_edit_max); /* sized by gen_edits_bound */
        any_top |= par->top_logprobs > 0;
    }
    FORWARD_IF(be->ops->sample(be->ctx, sched_logits(gc->sc), n_out, c->vocab_size, bb->rows,
                               bb->edits, bb->tokens, bb->lps, any_top ? bb->top_ids : NULL,
                               any_top ? bb->top_lps : NULL));
    for (int i = 0; i < n_out; i++) {
        size_t at = (size_t)i * KERN_TOP_LOGPROBS_MAX;
        FORWARD_IF(take_token(gc, &ss[bb->members[i]], bb->tokens[i], bb->lps[i],
                              any_top ? bb->top_ids + at : NULL,
                              any_top ? bb->top_lps + at : NULL));
    }
    return 0;
}

/* Fill the prefill pass that starts at sequence first: whole prompts in
 * sequence order, each GPU batch bringing at most max_rows tokens (its
 * first prompt always goes). A sequence with nothing to generate brings no
 * rows; nor does a copy (a later sample of the request before it), whose
 * first token is drawn from its source's logits row. *rows and *n_out get
 * the packed rows and the output rows. @return the first sequence of the
 * next pass. */
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
        int own = ss[s].max_new > 0 && ss[s].copy_of < 0;
        int len = own ? p->n_ids : 0;
        if (batch_rows > 0 && batch_rows + len > gc->max_rows)
            break;
        batch_rows += len;
        if (own) {
            bb->seqs[s] = seq_desc(&ss[s], rows, p->n_ids);
            for (int j = 0; j < p->n_ids; j++) {
                bb->ids[rows + j] = p->ids[j];
                bb->pos[rows + j] = j;
            }
            rows += p->n_ids;
        }
        if (ss[s].max_new > 0) {
            bb->last[n_out] = rows - 1; /* a copy: its source's, packed just before */
            bb->members[n_out++] = s;
        }
        s++;
    }
    *rows_out = rows;
    *n_out_out = n_out;
    return s;
}

/* Run one packed prefill pass: each member's cache gets its prompt (a
 * copy: its source's cache, copied once the pass wrote it) and its first
 * token is sampled; then the pass's trace lines and stats. */
static int prefill_pass(gen_ctx *gc, gen_buf *bb, gen_seq *ss, int n, int rows, int n_out,
                        gen_stats *st)
{
    const gen_opts *o = gc->o;
    FORWARD_IF(sched_forward(gc->sc, bb->ids, bb->pos, rows, bb->seqs, n, bb->last, n_out, 0));
    for (int i = 0; i < n_out;) {
        int src = bb->members[i], n_dst = 0;
        while (i + 1 + n_dst < n_out && ss[bb->members[i + 1 + n_dst]].copy_of == src) {
            bb->copy_dst[n_dst] = bb->members[i + 1 + n_dst];
            n_dst++;
        }
        const gen_seq *s = &ss[src];
        int n_slots = s->p->n_ids < s->budget ? s->p->n_ids : s->budget; /* after the pass */
        if (n_dst > 0)
            FORWARD_IF(sched_kv_copy(gc->sc, src, bb->copy_dst, n_dst, n_slots));
        i += 1 + n_dst;
    }
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
 * sequences with nothing to generate (and error requests) are finished. */
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
        FORWARD_IF(flush_done(gc, ss, n, next));
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
    FORWARD_IF(flush_done(gc, ss, n, &next));
    return run_decode(gc, bb, ss, n, &next, st);
}

/* One sequence's state at the start of a block: sample j of request p
 * (copy_of: the block sequence of its sample 0 when j > 0), with its own
 * max_new, KV split, sampling controls and random stream. toks, lps,
 * top_ids, top_lps and the penalty table (pen_cap slots, 0: none) keep
 * their place. */
static void seq_start(gen_seq *s, const job_prompt *p, int j, int copy_of, const gen_opts *o,
                      const model_config *c)
{
    const job_params *par = &p->par;
    s->p = p;
    s->sample = j;
    s->copy_of = copy_of;
    s->max_new = p->err ? 0 : gen_max_new(p, o);
    s->n_past = 0;
    s->n_slots = 0;
    s->budget = s->sinks = s->recent = 0;
    if (!p->err) {
        kv_split sp;
        int rc = gen_split(c, &o->kv, p->n_ids, s->max_new, p->line, &sp);
        /* cannot fail: gen_run began with gen_check, which split every
         * request with these same arguments (or made it an error) */
        assert(rc == 0);
        (void)rc; /* unused under NDEBUG */
        s->budget = sp.budget;
        s->sinks = sp.sinks;
        s->recent = sp.recent;
    }
    s->window = c->sliding_window;
    s->temperature = isnan(par->temperature) ? o->temperature : par->temperature;
    s->top_p = isnan(par->top_p) ? o->top_p : par->top_p;
    s->ignore_eos = par->ignore_eos >= 0 ? par->ignore_eos : o->ignore_eos;
    s->n_gen = 0;
    s->done = 0;
    s->finish = NULL;
    s->stop_str = NULL;
    s->stop_id = -1;
    s->cut = s->checked = 0;
    s->rng = seq_seed(par->has_seed ? par->seed : o->seed, p->id, j);
    s->pen_n = 0;
    if (!gen_uses_penalties(par) || p->err)
        s->pen_cap = 0;
    if (s->pen_cap) {
        memset(s->pen_key, 0xff, sizeof(int32_t) * (size_t)s->pen_cap); /* -1: free */
        for (int i = 0; i < p->n_ids; i++)
            pen_add(s, p->ids[i], 1);
    }
}

/* The size of a run, from its pending requests. */
typedef struct run_size {
    int n_todo;      /* requests of the job not yet in the output */
    int n_seq;       /* their sequences: n per request (1 for an error) */
    int max_prompt;  /* their longest prompt, tokens (0 when none) */
    int max_new;     /* their largest max_new, at least 1 */
    int max_edits;   /* most logit edits of one row (gen_edits_bound) */
    int pen_cap;     /* penalty table slots of the largest request using them, 0: none */
    int top;         /* most top logprobs asked */
    int B;           /* sequences of a block: min(sched_block, n_seq) */
} run_size;

/* Find the requests of ps not yet in gc->out, in file order: size the run
 * in *rs and, when todo is not NULL, list them there (n_todo of them).
 * st->kv_slots_full gets what `full` would have needed. */
static void todo_scan(const gen_ctx *gc, const job_prompts *ps, run_size *rs,
                      const job_prompt **todo, gen_stats *st)
{
    *rs = (run_size){.max_new = 1};
    for (int i = 0; i < ps->n; i++) {
        if (!gen_runs_here(gc->o, gc->out, &ps->p[i]))
            continue;
        const job_prompt *p = &ps->p[i];
        if (todo)
            todo[rs->n_todo] = p;
        rs->n_todo++;
        rs->n_seq += p->err ? 1 : p->par.n;
        if (p->err)
            continue;
        int mn = gen_max_new(p, gc->o);
        if (p->n_ids > rs->max_prompt)
            rs->max_prompt = p->n_ids;
        if (p->n_ids + mn > st->kv_slots_full)
            st->kv_slots_full = p->n_ids + mn;
        if (mn > rs->max_new)
            rs->max_new = mn;
        int e = (int)gen_edits_bound(p, mn, gc->n_eos); /* lengths < 2^24 each */
        rs->max_edits = e > rs->max_edits ? e : rs->max_edits;
        if (gen_uses_penalties(&p->par)) {
            int cap = 16;
            while (cap < 2 * (p->n_ids + mn))
                cap *= 2;
            rs->pen_cap = cap > rs->pen_cap ? cap : rs->pen_cap;
        }
        rs->top = p->par.top_logprobs > rs->top ? p->par.top_logprobs : rs->top;
    }
    rs->B = gc->block < rs->n_seq ? gc->block : rs->n_seq;
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
 * measure it: the todo list, the sequences and their generated tokens
 * (and top logprobs and penalty tables when asked), the block's pass
 * arrays and the read-back buffers (--trace-evictions, --stats). @return
 * the bytes of the block. */
static size_t run_layout(char *base, const gen_ctx *gc, const run_size *rs,
                         const job_prompt ***todo, gen_seq **ss, gen_buf *bb)
{
    const model_config *c = gc->c;
    size_t off = 0, B = (size_t)rs->B, H = (size_t)c->n_kv_head, cap = (size_t)gc->cap;
    size_t rows = B * (size_t)rs->max_prompt, gen = B * (size_t)rs->max_new;
    size_t top = (size_t)gc->top_stride, pen = (size_t)rs->pen_cap;
    *todo = carve(base, &off, (size_t)rs->n_todo, sizeof **todo);
    *ss = carve(base, &off, B, sizeof **ss);
    int32_t *toks = carve(base, &off, gen, sizeof *toks); /* (B, max_new) */
    float *lps = carve(base, &off, gen, sizeof *lps);     /* (B, max_new) */
    int32_t *top_ids = carve(base, &off, gen * top, sizeof *top_ids); /* (B, max_new, top) */
    float *top_lps = carve(base, &off, gen * top, sizeof *top_lps);
    int32_t *pen_key = carve(base, &off, B * pen, sizeof *pen_key); /* (B, pen) */
    int32_t *pen_out = carve(base, &off, B * pen, sizeof *pen_out);
    unsigned char *pen_in = carve(base, &off, B * pen, sizeof *pen_in);
    int32_t *pen_list = carve(base, &off, B * pen / 2, sizeof *pen_list);
    bb->ids = carve(base, &off, rows, sizeof *bb->ids);
    bb->pos = carve(base, &off, rows, sizeof *bb->pos);
    bb->last = carve(base, &off, B, sizeof *bb->last);
    bb->tokens = carve(base, &off, B, sizeof *bb->tokens);
    bb->seqs = carve(base, &off, B, sizeof *bb->seqs);
    bb->members = carve(base, &off, B, sizeof *bb->members);
    bb->rows = carve(base, &off, B, sizeof *bb->rows);
    bb->n_edit_max = rs->B * rs->max_edits;
    bb->edits = carve(base, &off, (size_t)bb->n_edit_max, sizeof *bb->edits);
    bb->edit_at = carve(base, &off, pen, sizeof *bb->edit_at);
    bb->lps = carve(base, &off, B, sizeof *bb->lps);
    bb->copy_dst = carve(base, &off, B, sizeof *bb->copy_dst);
    if (top) {
        bb->top_ids = carve(base, &off, B * KERN_TOP_LOGPROBS_MAX, sizeof *bb->top_ids);
        bb->top_lps = carve(base, &off, B * KERN_TOP_LOGPROBS_MAX, sizeof *bb->top_lps);
    }
    if (gc->o->trace) {
        bb->ev = carve(base, &off, (size_t)c->n_layer * (size_t)gc->block * H, sizeof *bb->ev);
        bb->slot_pos = carve(base, &off, H * cap, sizeof *bb->slot_pos);
        bb->kept = carve(base, &off, (size_t)rs->max_prompt, sizeof *bb->kept);
    }
    if (gc->o->kv_stats)
        bb->scores = carve(base, &off, H * cap, sizeof *bb->scores);
    for (size_t k = 0; base && k < B; k++) {
        gen_seq *s = &(*ss)[k];
        s->toks = toks + k * (size_t)rs->max_new;
        s->lps = lps + k * (size_t)rs->max_new;
        s->top_ids = top ? top_ids + k * (size_t)rs->max_new * top : NULL;
        s->top_lps = top ? top_lps + k * (size_t)rs->max_new * top : NULL;
        s->pen_key = pen_key + k * pen;
        s->pen_out = pen_out + k * pen;
        s->pen_in = pen_in + k * pen;
        s->pen_list = pen_list + k * pen / 2;
    }
    return off;
}

/* Fill a block from todo[*cursor..n_todo): whole requests, each sample a
 * sequence (the first prefilled, the others copies of it), as many as fit
 * in B sequences (gen_check keeps n within a block). @return the
 * sequences. */
static int block_fill(gen_seq *ss, int B, const job_prompt *const *todo, int n_todo,
                      int *cursor, int pen_cap, const gen_opts *o, const model_config *c)
{
    int n = 0;
    while (*cursor < n_todo) {
        const job_prompt *p = todo[*cursor];
        int k = p->err ? 1 : p->par.n;
        if (n + k > B)
            break;
        for (int j = 0; j < k; j++) {
            ss[n + j].pen_cap = pen_cap;
            seq_start(&ss[n + j], p, j, j ? n : -1, o, c);
        }
        n += k;
        (*cursor)++;
    }
    return n;
}

/* --warm-up (gen_run): the first block of the job (todo[0..]) once, each
 * sequence to at most GEN_WARM_UP_TOKENS tokens, writing nothing and
 * counting nothing in *st but its time; then the clock of the rates
 * starts again and the links' counts are zeroed. @return 0 or -errno. */
static int warm_up(gen_ctx *gc, gen_buf *bb, gen_seq *ss, const job_prompt *const *todo,
                   const run_size *rs, gen_stats *st)
{
    const gen_opts *o = gc->o;
    gen_opts wo = *o;
    wo.trace = NULL;
    wo.kv_stats = 0;
    int progress = gc->progress;
    gc->o = &wo;
    gc->discard = 1;
    gc->progress = 0;
    double t0 = kern_now_s();
    int cursor = 0;
    int n = block_fill(ss, rs->B, todo, rs->n_todo, &cursor, rs->pen_cap, &wo, gc->c);
    for (int k = 0; k < n; k++)
        if (ss[k].max_new > GEN_WARM_UP_TOKENS)
            ss[k].max_new = GEN_WARM_UP_TOKENS;
    gen_stats none = {0};
    int rc = run_block(gc, bb, ss, n, &none);
    gc->o = o;
    gc->discard = 0;
    gc->progress = progress;
    double now = kern_now_s();
    st->warm_up_s = now - t0;
    gc->t_start = gc->last_report = now;
    sched_links_reset(gc->sc);
    return rc;
}

/* Generate the pending requests of one window ps of the prompt file
 * (gen_check first: its OpenAI requests that cannot run become error
 * lines). The window's arrays are allocated here, once for its blocks.
 * @return 0 or -errno. */
static int run_window(gen_ctx *gc, job_prompts *ps, gen_stats *st)
{
    const model_config *c = gc->c;
    const gen_opts *o = gc->o;
    FORWARD_IF(gen_check(c, gc->t, ps, o, gc->block));
    run_size rs;
    todo_scan(gc, ps, &rs, NULL, st);
    gc->top_stride = rs.top;
    if (rs.B == 0)
        return 0;
    const job_prompt **todo;
    gen_seq *ss;
    gen_buf bb = {0};
    char *mem = calloc(1, run_layout(NULL, gc, &rs, &todo, &ss, &bb));
    RETURN_IF(!mem, -ENOMEM, "out of memory for a block of %d sequences", rs.B);
    run_layout(mem, gc, &rs, &todo, &ss, &bb);
    todo_scan(gc, ps, &rs, todo, st);
    int rc = 0;
    if (o->warm_up && !gc->warmed) { /* the job's first block */
        gc->warmed = 1;
        rc = warm_up(gc, &bb, ss, todo, &rs, st);
    }
    for (int cursor = 0; rc == 0 && cursor < rs.n_todo;) {
        int first = cursor;
        int n = block_fill(ss, rs.B, todo, rs.n_todo, &cursor, rs.pen_cap, o, c);
        rc = run_block(gc, &bb, ss, n, st);
        st->prompts += cursor - first;
        gen_progress(gc, st, cursor == rs.n_todo);
    }
    free(mem);
    return rc;
}

int gen_run(model *m, sched *sc, const tok *t, job_reader *r, job_out *out,
            const gen_opts *o, gen_stats *st)
{
    const model_config *c = &m->cfg;
    memset(st, 0, sizeof *st);
    gen_ctx gc = {.m = m, .c = c, .sc = sc, .o = o, .t = t, .out = out,
                  .gbs = sched_get_policy(sc)->gpu_batch_size, .block = sched_block(sc),
                  .max_rows = sched_max_rows(sc), .cap = sched_cap(sc),
                  .t_start = kern_now_s(), .progress = o->progress, .n_todo = o->n_todo};
    gc.last_report = gc.t_start;
    gc.n_eos = gen_eos_ids(t, c, &gc.eos, &gc.eos_cfg);
    st->kv_slots = gc.cap;
    if (o->kv_stats) { /* --stats' sums are st's, over every window */
        st->kept_mass = calloc((size_t)c->n_layer, sizeof(double));
        RETURN_IF(!st->kept_mass, -ENOMEM, "out of memory");
        st->n_layer = c->n_layer;
    }
    int rc = job_reader_rewind(r);
    job_prompts win = {0};
    while (rc == 0 && (rc = job_reader_next(r, o->window > 0 ? o->window : GEN_WINDOW, &win)) > 0)
        rc = run_window(&gc, &win, st);
    job_prompts_free(&win);
    gen_stats_mean(st);
    st->total_s = kern_now_s() - gc.t_start;
    return rc < 0 ? rc : 0;
}
