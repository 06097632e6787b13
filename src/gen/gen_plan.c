/* gen_plan.c: sizing a job before anything runs: how many tokens each
 * prompt may generate, whether every prompt's KV split is valid, and the
 * shape the scheduler is planned for. `flexh2o search` uses these too. */
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "err.h"
#include "gen.h"

int gen_positions_grow(const model_config *c, const kv_policy *kv)
{
    return c->pos == MODEL_POS_ROPE && (kv->kind != KV_POLICY_FULL || c->sliding_window > 0);
}

int gen_max_new(const job_prompt *p, const gen_opts *o)
{
    return p->max_new >= 0 ? p->max_new : o->max_new;
}

int gen_check_length(const model_config *c, const kv_policy *kv, int n_prompt, int max_new,
                     int line)
{
    if (gen_positions_grow(c, kv) || (long)n_prompt + max_new <= c->max_pos)
        return 0;
    const char *how = c->pos == MODEL_POS_ROPE
                          ? "lower max_new_tokens, or set an evicting KV policy (--kv-budget) "
                            "so that positions may count on"
                          : "lower max_new_tokens (this model's learned positions end there)";
    err_set(__FILE__, __LINE__, "line %d: %d prompt + %d new tokens pass the model's "
            "max_position_embeddings %d; %s", line, n_prompt, max_new, c->max_pos, how);
    return -EINVAL;
}

int gen_split(const model_config *c, const kv_policy *kv, int n_prompt, int max_new, int line,
              kv_split *out)
{
    int W = c->sliding_window;
    if (W <= 1 || n_prompt + max_new <= W)
        return kv_policy_split(kv, n_prompt, max_new, line, out);
    kv_policy kp = *kv;
    if (kp.kind == KV_POLICY_FULL) {
        kp = (kv_policy){.kind = KV_POLICY_WINDOW, .budget = W - 1};
    } else {
        FORWARD_IF(kv_policy_split(&kp, n_prompt, max_new, line, out));
        if (out->budget <= W - 1)
            return 0;
        kp.ratio = 0;
        kp.budget = W - 1;
    }
    return kv_policy_split(&kp, n_prompt, max_new, line, out);
}

int gen_uses_penalties(const job_params *par)
{
    return par->repetition_penalty != 1.0f || par->frequency_penalty != 0.0f ||
           par->presence_penalty != 0.0f;
}

long gen_edits_bound(const job_prompt *p, int max_new, int n_eos)
{
    const job_params *par = &p->par;
    return (gen_uses_penalties(par) ? (long)p->n_ids + max_new : 0) + par->n_bias +
           (par->min_tokens > 0 ? n_eos + par->n_stop_ids : 0);
}

int gen_eos_ids(const tok *t, const model_config *c, const int32_t **ids, int32_t *cfg_eos)
{
    int n = t ? tok_eos_ids(t, ids) : 0;
    if (n > 0)
        return n;
    *cfg_eos = c->eos_id;
    *ids = cfg_eos;
    return 1;
}

/* The checks of one request that need the model and the job: length, KV
 * split, n within a block, stop strings only with a tokenizer.
 * @return 0, or -EINVAL with the message set and *param the field. */
static int check_request(const model_config *c, const tok *t, const job_prompt *p,
                         const gen_opts *o, int block, const char **param)
{
    kv_split sp;
    *param = "max_tokens";
    FORWARD_IF(gen_check_length(c, &o->kv, p->n_ids, gen_max_new(p, o), p->line));
    *param = NULL;
    FORWARD_IF(gen_split(c, &o->kv, p->n_ids, gen_max_new(p, o), p->line, &sp));
    *param = "n";
    RETURN_IF(block > 0 && p->par.n > block, -EINVAL,
              "line %d: n = %d completions, but a block holds %d sequence%s; lower n or raise "
              "--batch-size / --num-gpu-batches", p->line, p->par.n, block, block == 1 ? "" : "s");
    *param = "stop";
    RETURN_IF(p->par.n_stop > 0 && !t, -EINVAL,
              "line %d: stop strings need the model's tokenizer (this model has none); use "
              "stop_token_ids", p->line);
    return 0;
}

int gen_check(const model_config *c, const tok *t, job_prompts *ps, const gen_opts *o, int block)
{
    FORWARD_IF(kv_policy_check(&o->kv));
    for (int i = 0; i < ps->n; i++) {
        job_prompt *p = &ps->p[i];
        const char *param = NULL;
        if (p->err)
            continue;
        int rc = check_request(c, t, p, o, block, &param);
        if (rc < 0 && p->kind == JOB_NATIVE)
            return rc;
        if (rc < 0) { /* an OpenAI request: its error line, and the job goes on */
            char msg[1024];
            FORWARD_IF(job_prompt_fail(p, param, "%s", err_take(msg, sizeof msg)));
        }
    }
    return 0;
}

void gen_shape(const model_config *c, const tok *t, const job_prompts *ps, const job_out *out,
               const gen_opts *o, int gbs, sched_shape *sh)
{
    int max_prompt = 1, cap = 1, draw = o->temperature > 0.0f, top = 0;
    const int32_t *eos;
    int32_t eos_cfg;
    int n_eos = gen_eos_ids(t, c, &eos, &eos_cfg);
    long edits = 0;
    for (int i = 0; i < ps->n; i++) {
        const job_prompt *p = &ps->p[i];
        if (p->err || !gen_runs_here(o, out, p))
            continue;
        kv_split sp;
        int mn = gen_max_new(p, o);
        if (gen_check_length(c, &o->kv, p->n_ids, mn, p->line) < 0 ||
            gen_split(c, &o->kv, p->n_ids, mn, p->line, &sp) < 0) {
            err_clear();
            continue; /* gen_check refuses it */
        }
        if (p->n_ids > max_prompt)
            max_prompt = p->n_ids;
        /* the cache holds the largest budget, not the longest sequence:
         * that is where an evicting policy saves its memory */
        if (sp.budget > cap)
            cap = sp.budget;
        draw |= p->par.temperature > 0.0f; /* NAN (the job's) compares false */
        top |= p->par.top_logprobs > 0;
        long e = gen_edits_bound(p, mn, n_eos);
        edits = e > edits ? e : edits;
    }
    memset(sh, 0, sizeof *sh);
    sh->max_rows = sched_prefill_rows(o->prefill_rows, max_prompt, gbs);
    sh->cap = cap;
    sh->scores = kv_policy_needs_scores(&o->kv) || o->kv_stats;
    sh->evicted = o->trace != NULL;
    sh->max_prompt = max_prompt;
    /* gen_run samples every output row on the backend */
    sh->sample = draw ? SCHED_SAMPLE_DRAW : SCHED_SAMPLE_GREEDY;
    sh->sample_row_edits = (int)(edits < (1 << 30) ? edits : 1 << 30);
    sh->sample_top = top;
}

void gen_shape_merge(sched_shape *into, const sched_shape *w)
{
#define WIDEN(f) into->f = w->f > into->f ? w->f : into->f
    WIDEN(max_rows);
    WIDEN(cap);
    WIDEN(scores);
    WIDEN(evicted);
    WIDEN(max_prompt);
    WIDEN(sample); /* NONE < GREEDY < DRAW */
    WIDEN(sample_row_edits);
    WIDEN(sample_top);
#undef WIDEN
}

/* ------------------------------------------- a job over several processes */

int gen_runs_here(const gen_opts *o, const job_out *out, const job_prompt *p)
{
    /* a rank handing its records on (o->put): the split already left out
     * what is written, and the output's id set is the writer's, which
     * another thread may be adding to */
    if (!o->put && out && job_out_has(out, p->id))
        return 0;
    return !o->part || gen_part_mine(o->part, p->seq);
}

int64_t gen_cost(const job_prompt *p, const gen_opts *o)
{
    if (p->err)
        return 1;
    return ((int64_t)p->n_ids + gen_max_new(p, o)) * p->par.n;
}

int gen_part_init(gen_part *gp, int procs, int me)
{
    memset(gp, 0, sizeof *gp);
    RETURN_IF(procs < 1 || procs > GEN_PART_MAX || me < 0 || me >= procs, -EINVAL,
              "process %d of %d: a job splits over 1 to %d processes", me, procs,
              GEN_PART_MAX);
    gp->load = calloc((size_t)procs, sizeof *gp->load);
    RETURN_IF(!gp->load, -ENOMEM, "out of memory");
    gp->procs = procs;
    gp->me = me;
    return 0;
}

int gen_part_add(gen_part *gp, int64_t cost)
{
    if (gp->n == gp->cap) {
        long nc = gp->cap ? 2 * gp->cap : 1024;
        int16_t *no = realloc(gp->owner, sizeof *no * (size_t)nc);
        RETURN_IF(!no, -ENOMEM, "out of memory splitting %ld requests", gp->n);
        gp->owner = no;
        gp->cap = nc;
    }
    int best = -1;
    for (int r = 0; cost >= 0 && r < gp->procs; r++)
        if (best < 0 || gp->load[r] < gp->load[best])
            best = r;
    if (best >= 0)
        gp->load[best] += cost;
    gp->owner[gp->n++] = (int16_t)best;
    return 0;
}

int gen_part_mine(const gen_part *gp, long seq)
{
    return seq >= 0 && seq < gp->n && gp->owner[seq] == gp->me;
}

void gen_part_free(gen_part *gp)
{
    free(gp->owner);
    free(gp->load);
    memset(gp, 0, sizeof *gp);
}
