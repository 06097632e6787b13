/* cli_model.c: see cli_model.h. */
#include "cli_model.h"

#include <stdio.h>
#include <unistd.h>

#include "err.h"
#include "off.h"

/* 1 when dir holds any tokenizer file tok_load reads. */
static int has_tokenizer(const char *dir)
{
    static const char *const names[] = {"tokenizer.json", "vocab.json", "merges.txt"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) < (int)sizeof path &&
            access(path, F_OK) == 0)
            return 1;
    }
    return 0;
}

int cli_model_open(const char *dir, const char *dummy, cli_model_src *src)
{
    src->dir = dir;
    if (!dir) {
        return model_config_by_name(dummy, &src->cfg);
    }
    FORWARD_IF(model_config_of(dir, &src->cfg));
    int rc = model_store_dtype(dir, &src->store_dtype);
    FORWARD_IF(rc);
    src->is_store = rc;
    if (!src->is_store) {
        /* a checkpoint that cannot be read runs as fp32 here: loading it
         * says what is wrong, after the plan, as it always has */
        rc = model_hf_h16(dir);
        if (rc < 0)
            err_clear();
        src->hf_h16 = rc > 0 ? rc : 0;
    }
    if (!has_tokenizer(dir)) { /* a job of token ids needs none */
        err_log("%s: no tokenizer files (tokenizer.json, or vocab.json + merges.txt): text "
                "prompts are refused and completions carry ids and logprobs only", dir);
        return 0;
    }
    FORWARD_IF(tok_load(dir, &src->t));
    /* every id the tokenizer gives must index the embedding table */
    char cfg_file[4096];
    snprintf(cfg_file, sizeof cfg_file, "%s/%s", dir,
             src->is_store ? "model.flxh2o" : "config.json");
    FORWARD_IF(tok_check_vocab(src->t, src->cfg.vocab_size, cfg_file));
    /* a tokenizer of another model: the ids past it would decode to
     * nothing (a vocabulary padded for the GEMMs is a few hundred ids
     * larger than its tokenizer, which is fine) */
    int tv = tok_vocab_size(src->t);
    if (tv < src->cfg.vocab_size - src->cfg.vocab_size / 20)
        err_log("%s: the tokenizer has %d tokens but the model %d; ids from %d on decode to "
                "no text: is this the model's own tokenizer?", dir, tv, src->cfg.vocab_size,
                tv);
    return 0;
}

int cli_model_h16(const cli_model_src *src)
{
    uint32_t base = src->store_dtype & ~OFF_DTYPE_Q4;
    return src->is_store && base == OFF_DTYPE_F16  ? KERN_H16_F16
         : src->is_store && base == OFF_DTYPE_BF16 ? KERN_H16_BF16
         : src->dir && !src->is_store              ? src->hf_h16
                                                   : 0;
}

void cli_model_tiers_for(const cli_model_src *src, size_t elem_size, int widens,
                         const sched_policy *pol, sched_shape *sh)
{
    /* (a 4-bit store's layers are never 16-bit: compress_weight, or the
     * policy refuses it) */
    int h16 = src->store_dtype & OFF_DTYPE_Q4 ? 0 : cli_model_h16(src);
    sh->weight_fmt = h16 && !pol->compress_weight && elem_size > 2 && widens ? h16 : 0;
    /* the store's layers go to the tiers as they are: in the backend's own
     * type (a bf16 store on an fp16 backend is converted), or kept 16-bit */
    sh->weights_on_disk_already =
        src->is_store && pol->compress_weight == !!(src->store_dtype & OFF_DTYPE_Q4) &&
        ((src->store_dtype & ~OFF_DTYPE_Q4) == model_backend_dtype(elem_size) ||
         sh->weight_fmt);
}

void cli_model_tiers(const cli_model_src *src, const backend *be, const sched_policy *pol,
                     sched_shape *sh)
{
    cli_model_tiers_for(src, be->ops->elem_size, be->ops->widen != NULL, pol, sh);
    int bf16 = be->ops->h16_direct && be->ops->h16_direct(be->ctx, KERN_H16_BF16);
    sh->weight_direct = bf16 && cli_model_h16(src) == KERN_H16_BF16;
    sh->host_visible = be->ops->host_visible;
    /* 4-bit matrices take bf16 matmuls in prefills (backend.h linear_q4) */
    static int told;
    if (bf16 && !sh->weight_direct && !pol->compress_weight && !told++)
        fprintf(stderr, "[flexh2o] --cpu-matmul bf16: the weights are not bf16 on the tiers "
                "(%s), so they run through fp32 matmuls; a store from convert --dtype bf16 "
                "runs as bf16\n", sh->weight_fmt ? "fp16" : "fp32");
}

int cli_model_load(const cli_model_src *src, backend *be, sched *sc, model **m)
{
    int rc = src->is_store
                 ? model_load_store(src->dir, be, NULL, sched_weight_fmt(sc),
                                    sched_table_fmt(sc), sched_layer_sink, sc, m)
             : src->dir
                 ? model_load_hf_h16(src->dir, be, sched_weight_fmt(sc), sched_table_fmt(sc),
                                     sched_layer_sink, sc, m)
                 : model_create_dummy_sink(&src->cfg, be, 1234, sched_layer_sink, sc, m);
    FORWARD_IF(rc);
    rc = model_pack_tables(*m); /* the bf16 head, for the matmuls */
    if (rc < 0) {
        model_destroy(*m);
        *m = NULL;
        return rc;
    }
    return 0;
}

