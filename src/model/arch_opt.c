/* arch_opt.c: the OPT family (facebook/opt-*, pre-LayerNorm; every size
 * but 350m): its layer tensors, its Hugging Face tensor names and its block.
 *
 *   x = embed_tokens(ids) + embed_positions(pos + 2)     (rows, d)
 *   per layer:  h = LN1(x); qkv = h Wqkv^T + b           (rows, 3d)
 *               a = attention (sched_attend: prefill exact over the prompt
 *                   then the kept k, v to the slot cache; decode over the
 *                   slots + the new k, v, then k, v to a free or evicted slot)
 *               x += a Wo^T + bo
 *               h = LN2(x); x += relu(h W1^T + b1) W2^T + b2
 *   logits = LNf(x[last rows]) E^T                        (n_out, V)
 */
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "model.h"

static size_t opt_tensor_rows(const model_config *c, int t, int *cols)
{
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn;
    switch (t) {
    case MT_WQKV: *cols = c->hidden; return 3 * d;
    case MT_WO: *cols = c->hidden; return d;
    case MT_W1: *cols = c->hidden; return f;
    case MT_W2: *cols = c->ffn; return d;
    default: *cols = 0; return 0;
    }
}

static void opt_shape(const model_config *c, sched_model *out)
{
    memset(out, 0, sizeof *out);
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn;
    out->n_layer = c->n_layer;
    out->n_head = c->n_head;
    out->n_kv_head = c->n_head;
    out->head_dim = c->head_dim;
    out->hidden = c->hidden;
    out->vocab = c->vocab_size;
    out->ffn = c->ffn;
    out->globals = (size_t)c->vocab_size * d * (c->tie_lm_head ? 1 : 2) +
                   (size_t)(c->max_pos + KERN_OPT_POS_OFFSET) * d + 2 * d;
    const size_t cnt[MT_COUNT] = {
        [MT_LN1_W] = d, [MT_LN1_B] = d, [MT_BQKV] = 3 * d, [MT_BO] = d,
        [MT_LN2_W] = d, [MT_LN2_B] = d, [MT_B1] = f, [MT_B2] = d,
    };
    out->n_tensors = MT_COUNT;
    for (int t = 0; t < MT_COUNT; t++) {
        int cols;
        size_t rows = opt_tensor_rows(c, t, &cols);
        out->tensors[t] = rows ? (sched_tensor){rows, cols} : (sched_tensor){cnt[t], 0};
    }
}

/* The tensors of a Hugging Face OPTForCausalLM state dict, in its order. */
static int opt_tensors(const model_config *c, model_hf_tensor *out)
{
    int64_t d = c->hidden, f = c->ffn, V = c->vocab_size;
    int n = 0;
#define T(nm, lay, to, rr, cc, of, in)                                                     \
    do {                                                                                    \
        if (out) {                                                                          \
            model_hf_tensor *x = &out[n];                                                   \
            if ((lay) < 0)                                                                  \
                snprintf(x->name, sizeof x->name, "model.decoder.%s", nm);                  \
            else                                                                            \
                snprintf(x->name, sizeof x->name, "model.decoder.layers.%d.%s", lay, nm);   \
            x->layer = lay;                                                                 \
            x->dst = to;                                                                    \
            x->rows = rr;                                                                   \
            x->cols = cc;                                                                   \
            x->offset = (size_t)(of);                                                       \
            x->init = in;                                                                   \
        }                                                                                   \
        n++;                                                                                \
    } while (0)
    T("embed_tokens.weight", -1, MODEL_G_TOK_EMB, V, d, 0, 'n');
    T("embed_positions.weight", -1, MODEL_G_POS_EMB, c->max_pos + KERN_OPT_POS_OFFSET, d, 0,
      'n');
    T("final_layer_norm.weight", -1, MODEL_G_NORM_W, d, 0, 0, '1');
    T("final_layer_norm.bias", -1, MODEL_G_NORM_B, d, 0, 0, '0');
    for (int l = 0; l < c->n_layer; l++) {
        T("self_attn.k_proj.weight", l, MT_WQKV, d, d, d * d, 'n');
        T("self_attn.k_proj.bias", l, MT_BQKV, d, 0, d, '0');
        T("self_attn.v_proj.weight", l, MT_WQKV, d, d, 2 * d * d, 'n');
        T("self_attn.v_proj.bias", l, MT_BQKV, d, 0, 2 * d, '0');
        T("self_attn.q_proj.weight", l, MT_WQKV, d, d, 0, 'n');
        T("self_attn.q_proj.bias", l, MT_BQKV, d, 0, 0, '0');
        T("self_attn.out_proj.weight", l, MT_WO, d, d, 0, 'n');
        T("self_attn.out_proj.bias", l, MT_BO, d, 0, 0, '0');
        T("self_attn_layer_norm.weight", l, MT_LN1_W, d, 0, 0, '1');
        T("self_attn_layer_norm.bias", l, MT_LN1_B, d, 0, 0, '0');
        T("fc1.weight", l, MT_W1, f, d, 0, 'n');
        T("fc1.bias", l, MT_B1, f, 0, 0, '0');
        T("fc2.weight", l, MT_W2, d, f, 0, 'n');
        T("fc2.bias", l, MT_B2, d, 0, 0, '0');
        T("final_layer_norm.weight", l, MT_LN2_W, d, 0, 0, '1');
        T("final_layer_norm.bias", l, MT_LN2_B, d, 0, 0, '0');
    }
#undef T
    if (!c->tie_lm_head) {
        if (out) {
            model_hf_tensor *x = &out[n];
            *x = (model_hf_tensor){.layer = -1, .dst = MODEL_G_LM_HEAD, .rows = V, .cols = d,
                                   .init = 'n'};
            snprintf(x->name, sizeof x->name, "lm_head.weight");
        }
        n++;
    }
    return n;
}

static int opt_embed(void *mp, void *x, const int32_t *ids, const int32_t *pos, int n_rows)
{
    model *m = mp;
    return m->be->ops->embed(m->be->ctx, x, m->tok_emb, m->pos_emb, ids, pos, n_rows,
                             m->cfg.hidden);
}

static int opt_layer(void *mp, int layer, const model_layer *L, const sched_pass *p, void *x)
{
    (void)layer;
    model *m = mp;
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    sched_scratch *sc = p->scr;
    int d = c->hidden, n = p->n_rows;
    FORWARD_IF(o->layernorm(ctx, sc->h, x, L->t[MT_LN1_W], L->t[MT_LN1_B], n, d, c->ln_eps));
    FORWARD_IF(model_linear(m, L, sc, MT_WQKV, sc->qkv, sc->h, L->t[MT_BQKV], n, 3 * d, d, 0));
    FORWARD_IF(sched_attend(p, sc->qkv, sc->att));
    FORWARD_IF(model_linear(m, L, sc, MT_WO, sc->h, sc->att, L->t[MT_BO], n, d, d, 0));
    FORWARD_IF(o->add(ctx, x, sc->h, (size_t)n * d));
    FORWARD_IF(o->layernorm(ctx, sc->h, x, L->t[MT_LN2_W], L->t[MT_LN2_B], n, d, c->ln_eps));
    FORWARD_IF(model_linear(m, L, sc, MT_W1, sc->ffn, sc->h, L->t[MT_B1], n, c->ffn, d, 1));
    FORWARD_IF(model_linear(m, L, sc, MT_W2, sc->h, sc->ffn, L->t[MT_B2], n, d, c->ffn, 0));
    return o->add(ctx, x, sc->h, (size_t)n * d);
}

static int opt_head(void *mp, void *logits, void *last, const void *x,
                    const int32_t *last_rows, int n_out)
{
    model *m = mp;
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    if (n_out == 0)
        return 0;
    FORWARD_IF(o->gather_rows(ctx, last, x, last_rows, n_out, c->hidden));
    FORWARD_IF(o->layernorm(ctx, last, last, m->lnf_w, m->lnf_b, n_out, c->hidden, c->ln_eps));
    return o->linear(ctx, logits, last, m->lm_head, NULL, n_out, c->vocab_size, c->hidden, 0);
}

const model_arch model_arch_opt = {
    .name = "opt",
    .shape = opt_shape,
    .tensors = opt_tensors,
    .embed = opt_embed,
    .layer = opt_layer,
    .head = opt_head,
};
