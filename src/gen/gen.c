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
 * them. --trace-evictions and --stats read the cache back after a pass,
 * and only when asked: nothing else leaves the backend per step.
 */
#include "gen.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "err.h"
#include "kern.h"
#include "off.h"

typedef struct seq_state {
    const job_prompt *p;
    int max_new;
    int n_past;          /* tokens seen (the position of the next one) */
    int n_slots;         /* KV slots in use, min(n_past, budget) */
    int budget, sinks, recent; /* KV policy of this sequence (kern_seq) */
    int32_t *toks;       /* (max_new) generated */
    float *lps;          /* (max_new) */
    int n_gen;
    int done;            /* 1 = finished, 2 = written */
    const char *finish;
    uint64_t rng;
} seq_state;

/* The kern_seq of sequence s for a pass feeding n_new rows from row. */
static kern_seq seq_desc(const seq_state *s, int row, int n_new)
{
    return (kern_seq){.row = row, .n_new = n_new, .n_past = s->n_past, .n_slots = s->n_slots,
                      .budget = s->budget, .sinks = s->sinks, .recent = s->recent};
}

/* After a pass that fed n_new tokens of s. */
static void seq_advance(seq_state *s, int n_new)
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

int gen_max_new(const job_prompt *p, const gen_opts *o, int max_pos)
{
    int n = p->max_new >= 0 ? p->max_new : o->max_new;
    if (p->n_ids + n > max_pos)
        n = max_pos - p->n_ids;
    return n;
}

/* Record the sampled token of sequence s; finish it on EOS or length. */
static void take_token(seq_state *s, int32_t tok, float lp, int eos)
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
static int flush_done(seq_state *ss, int n, int *next, const tok *t, job_out *out)
{
    while (*next < n && ss[*next].done == 1) {
        seq_state *s = &ss[*next];
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

/* What the block loop needs of the job. */
typedef struct gen_ctx {
    model *m;
    const model_config *c;
    sched *sc;
    int gbs, block, max_rows, cap;
    int n_todo;
    double t_start, last_report;
    int progress;
} gen_ctx;

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

typedef struct block_buf {
    int32_t *ids, *pos, *last, *tokens;  /* (max_rows), (max_rows), (B), (B) */
    kern_seq *seqs;                      /* (B) */
    int *members;                        /* (B) sequence of each output row */
    float *temp, *topp, *lps;            /* (B) */
    double *u;                           /* (B) */
    /* read-back buffers, allocated only for --trace-evictions / --stats */
    int32_t *ev;                         /* (n_layer, B, n_head) evicted positions */
    int32_t *slot_pos;                   /* (n_head, cap) positions of one sequence */
    unsigned char *kept;                 /* (max prompt) */
    float *scores;                       /* (B, n_head, cap) one layer's scores */
} block_buf;

#define TRACE_FMT "{\"id\": %s, \"layer\": %d, \"head\": %d, \"step\": %d, \"pos\": %d}\n"

static int trace_flush(FILE *f)
{
    RETURN_IF(ferror(f) || fflush(f) != 0, -EIO,
              "cannot write the --trace-evictions file (%s); free space and rerun",
              strerror(errno));
    return 0;
}

/* --trace-evictions after a prefill pass: the prompt tokens that sequence k
 * (slot k of the block) did not keep, per layer and head. */
static int trace_prefill(gen_ctx *gc, block_buf *bb, const seq_state *s, int k, FILE *f)
{
    const model_config *c = gc->c;
    int n = s->p->n_ids;
    for (int l = 0; l < c->n_layer; l++) {
        FORWARD_IF(sched_read_kv(gc->sc, l, k, 0, bb->slot_pos));
        for (int h = 0; h < c->n_head; h++) {
            memset(bb->kept, 0, (size_t)n);
            for (int t = 0; t < s->budget; t++)
                bb->kept[bb->slot_pos[(size_t)h * gc->cap + t]] = 1;
            for (int j = 0; j < n; j++)
                if (!bb->kept[j])
                    fprintf(f, TRACE_FMT, s->p->id, l, h, 0, j);
        }
    }
    return trace_flush(f);
}

/* --trace-evictions after a decode pass (before the sequences advance):
 * what each active sequence evicted, per layer and head. */
static int trace_decode(gen_ctx *gc, block_buf *bb, const seq_state *ss, int n, FILE *f)
{
    const model_config *c = gc->c;
    int H = c->n_head;
    FORWARD_IF(sched_read_evicted(gc->sc, bb->ev));
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < n; k++) {
            if (bb->seqs[k].n_new == 0)
                continue;
            int step = bb->seqs[k].n_past - ss[k].p->n_ids + 1;
            for (int h = 0; h < H; h++) {
                int32_t e = bb->ev[((size_t)l * gc->block + k) * H + h];
                if (e >= 0)
                    fprintf(f, TRACE_FMT, ss[k].p->id, l, h, step, e);
            }
        }
    return trace_flush(f);
}

/* --stats after a pass (the sequences advanced): add, per layer, the kept
 * attention mass of every (member sequence, head): the scores still in the
 * cache over the queries so far (each query hands out probability 1). */
static int kv_stats_pass(gen_ctx *gc, block_buf *bb, const seq_state *ss, int n_out,
                         gen_stats *st)
{
    const model_config *c = gc->c;
    int H = c->n_head;
    for (int l = 0; l < c->n_layer; l++) {
        for (int i = 0; i < n_out; i++) {
            int k = bb->members[i];
            const seq_state *s = &ss[k];
            FORWARD_IF(sched_read_kv(gc->sc, l, k, 1, bb->scores));
            for (int h = 0; h < H; h++) {
                const float *sc = bb->scores + (size_t)h * gc->cap;
                double kept = 0;
                for (int t = 0; t < s->n_slots; t++)
                    kept += sc[t];
                st->kept_mass[l] += kept / s->n_past;
            }
        }
    }
    st->kept_samples += (long)n_out * H;
    return 0;
}

/* Sample one token for each output row and hand it to its sequence. */
static int sample_rows(gen_ctx *gc, block_buf *bb, seq_state *ss, int n_out,
                       const gen_opts *o)
{
    const model_config *c = gc->c;
    const backend *be = gc->m->be;
    for (int i = 0; i < n_out; i++) {
        seq_state *s = &ss[bb->members[i]];
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

static int run_block(gen_ctx *gc, block_buf *bb, seq_state *ss, int n,
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
            seq_state *sq = &ss[bb->members[i]];
            seq_advance(sq, sq->p->n_ids);
            if (o->trace && sq->p->n_ids > sq->budget)
                FORWARD_IF(trace_prefill(gc, bb, sq, bb->members[i], o->trace));
        }
        if (o->kv_stats)
            FORWARD_IF(kv_stats_pass(gc, bb, ss, n_out, st));
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
            seq_state *s = &ss[k];
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
            FORWARD_IF(trace_decode(gc, bb, ss, n, o->trace));
        FORWARD_IF(sample_rows(gc, bb, ss, rows, o));
        for (int i = 0; i < rows; i++)
            seq_advance(&ss[bb->members[i]], 1);
        if (o->kv_stats)
            FORWARD_IF(kv_stats_pass(gc, bb, ss, rows, st));
        gen_progress(gc, st, 0);
        st->decode_tokens += rows;
        st->generated += rows;
        FORWARD_IF(flush_done(ss, n, &next, t, out));
    }
    st->decode_s += kern_now_s() - t0;
    return 0;
}

int gen_check(const model_config *c, const job_prompts *ps, const gen_opts *o)
{
    FORWARD_IF(kv_policy_check(&o->kv));
    for (int i = 0; i < ps->n; i++) {
        const job_prompt *p = &ps->p[i];
        kv_split sp;
        FORWARD_IF(kv_policy_split(&o->kv, p->n_ids, gen_max_new(p, o, c->max_pos),
                                   p->line, &sp));
    }
    return 0;
}

void gen_stats_free(gen_stats *st)
{
    free(st->kept_mass);
    st->kept_mass = NULL;
}

void gen_stats_print(FILE *f, const gen_stats *st, const gen_opts *o)
{
    fprintf(f, "[flexh2o] --stats, --kv-policy %s: kept attention mass per layer, mean of "
            "%ld (sequence, head, pass) samples\n", kv_policy_name(o->kv.kind),
            st->kept_samples);
    for (int l = 0; st->kept_mass && st->kept_samples > 0 && l < st->n_layer; l++)
        fprintf(f, "layer %d: %.6f\n", l, st->kept_mass[l]);
}

int gen_trace_open(const char *path, int resume, const job_out *out, FILE **f)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || sb.st_size == 0) {
        *f = fopen(path, "w");
        RETURN_IF(!*f, -errno, "%s: cannot create the eviction trace (%s)", path,
                  strerror(errno));
        return 0;
    }
    RETURN_IF(!resume, -EEXIST, "%s already exists; pass --resume to continue it, or "
              "remove it", path);
    char *buf = NULL;
    size_t len = 0;
    FORWARD_IF(off_read_file(path, &buf, &len));
    /* keep the complete lines of prompts whose completion is on file */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *w = fopen(tmp, "w");
    if (!w)
        free(buf);
    RETURN_IF(!w, -errno, "%s: cannot rewrite the eviction trace (%s)", tmp, strerror(errno));
    for (char *line = buf, *nl; (nl = memchr(line, '\n', len - (size_t)(line - buf)));
         line = nl + 1) {
        *nl = 0;
        cJSON *r = cJSON_Parse(line);
        const cJSON *idv = r ? cJSON_GetObjectItem(r, "id") : NULL;
        char *id = idv ? cJSON_PrintUnformatted(idv) : NULL;
        if (id && job_out_has(out, id))
            fprintf(w, "%s\n", line);
        free(id);
        cJSON_Delete(r);
    }
    free(buf);
    int bad = ferror(w);
    bad |= fclose(w) != 0;
    RETURN_IF(bad || rename(tmp, path) != 0, -EIO, "%s: cannot rewrite the eviction "
              "trace (%s)", path, strerror(errno));
    *f = fopen(path, "a");
    RETURN_IF(!*f, -errno, "%s: cannot open the eviction trace (%s)", path, strerror(errno));
    return 0;
}

void gen_shape(const model_config *c, const job_prompts *ps, const job_out *out,
               const gen_opts *o, int gbs, sched_shape *sh)
{
    int max_prompt = 1, cap = 1;
    for (int i = 0; i < ps->n; i++) {
        const job_prompt *p = &ps->p[i];
        if (out && job_out_has(out, p->id))
            continue;
        kv_split sp;
        if (kv_policy_split(&o->kv, p->n_ids, gen_max_new(p, o, c->max_pos), p->line,
                            &sp) < 0)
            continue; /* gen_check refuses it */
        if (p->n_ids > max_prompt)
            max_prompt = p->n_ids;
        /* the cache holds the largest budget, not the longest sequence:
         * that is where an evicting policy saves its memory */
        if (sp.budget > cap)
            cap = sp.budget;
    }
    memset(sh, 0, sizeof *sh);
    sh->max_rows = sched_prefill_rows(o->prefill_rows, max_prompt, gbs);
    sh->cap = cap;
    sh->scores = kv_policy_needs_scores(&o->kv) || o->kv_stats;
    sh->evicted = o->trace != NULL;
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

    block_buf bb = {0};
    seq_state *ss = calloc((size_t)B, sizeof *ss);
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
            seq_state *s = &ss[k];
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
    if (st->kept_mass && st->kept_samples > 0)
        for (int l = 0; l < st->n_layer; l++)
            st->kept_mass[l] /= (double)st->kept_samples;
    free(todo);
    st->total_s = kern_now_s() - gc.t_start;
    return rc;
}
