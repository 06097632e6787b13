/* gen_plan.c: sizing a job before anything runs: how many tokens each
 * prompt may generate, whether every prompt's KV split is valid, and the
 * shape the scheduler is planned for. `flexh2o search` uses these too. */
#include <string.h>

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

int gen_check(const model_config *c, const job_prompts *ps, const gen_opts *o)
{
    FORWARD_IF(kv_policy_check(&o->kv));
    for (int i = 0; i < ps->n; i++) {
        const job_prompt *p = &ps->p[i];
        kv_split sp;
        FORWARD_IF(gen_check_length(c, &o->kv, p->n_ids, gen_max_new(p, o), p->line));
        FORWARD_IF(gen_split(c, &o->kv, p->n_ids, gen_max_new(p, o), p->line, &sp));
    }
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
        if (gen_split(c, &o->kv, p->n_ids, gen_max_new(p, o), p->line, &sp) < 0)
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
    sh->max_prompt = max_prompt;
    /* gen_run samples every output row on the backend */
    sh->sample = o->temperature > 0.0f ? SCHED_SAMPLE_DRAW : SCHED_SAMPLE_GREEDY;
}
