/* model_forward.c: the OPT decoder over a packed batch.
 *
 *   x = embed(ids) + pos_embed(pos + 2)                 (rows, d)
 *   per layer:  h = LN1(x); qkv = h Wqkv^T + b          (rows, 3d)
 *               append k, v to the slot cache; a = causal attention
 *               x += a Wo^T + bo
 *               h = LN2(x); x += relu(h W1^T + b1) W2^T + b2
 *   logits = LNf(x[last rows]) E^T                       (n_out, V)
 *
 * Pre-LayerNorm OPT (every size but 350m). Rows of different sequences
 * never mix except in the linear layers, which act row by row, so a
 * sequence's output does not depend on what else is in the batch.
 */
#include <math.h>
#include <stdlib.h>

#include "err.h"
#include "model.h"

int model_ctx_create(model *m, int max_rows, int max_seq, int cap,
                     model_ctx **out)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    model_ctx *mc = calloc(1, sizeof *mc);
    RETURN_IF(!mc, -ENOMEM, "out of memory");
    mc->m = m;
    mc->max_rows = max_rows;
    mc->max_seq = max_seq;
    mc->cap = cap;
    size_t r = (size_t)max_rows, d = (size_t)c->hidden;
    int rc = 0;
    mc->kc = calloc((size_t)c->n_layer, sizeof(void *));
    mc->vc = calloc((size_t)c->n_layer, sizeof(void *));
    if (!mc->kc || !mc->vc)
        rc = -ENOMEM;
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->x);
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->h);
    if (rc == 0) rc = o->alloc(ctx, r * 3 * d, &mc->qkv);
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->att);
    if (rc == 0) rc = o->alloc(ctx, r * (size_t)c->ffn, &mc->ffn);
    if (rc == 0) rc = o->alloc(ctx, (size_t)max_seq * d, &mc->last);
    if (rc == 0) rc = o->alloc(ctx, (size_t)max_seq * (size_t)c->vocab_size, &mc->logits);
    size_t kv = (size_t)max_seq * (size_t)c->n_head * (size_t)cap * (size_t)c->head_dim;
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        rc = o->alloc(ctx, kv, &mc->kc[l]);
        if (rc == 0)
            rc = o->alloc(ctx, kv, &mc->vc[l]);
    }
    if (rc < 0) {
        model_ctx_destroy(mc);
        return rc;
    }
    *out = mc;
    return 0;
}

void model_ctx_destroy(model_ctx *mc)
{
    if (!mc)
        return;
    const backend_ops *o = mc->m->be->ops;
    void *ctx = mc->m->be->ctx;
    o->free(ctx, mc->x);
    o->free(ctx, mc->h);
    o->free(ctx, mc->qkv);
    o->free(ctx, mc->att);
    o->free(ctx, mc->ffn);
    o->free(ctx, mc->last);
    o->free(ctx, mc->logits);
    for (int l = 0; l < mc->m->cfg.n_layer; l++) {
        if (mc->kc)
            o->free(ctx, mc->kc[l]);
        if (mc->vc)
            o->free(ctx, mc->vc[l]);
    }
    free(mc->kc);
    free(mc->vc);
    free(mc);
}

int model_forward(model_ctx *mc, const int32_t *ids, const int32_t *pos,
                  int n_rows, const kern_seq *seqs, int n_seq,
                  const int32_t *last_rows, int n_out)
{
    model *m = mc->m;
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    int d = c->hidden, H = c->n_head, hd = c->head_dim;
    RETURN_IF(n_rows > mc->max_rows || n_seq > mc->max_seq || n_out > mc->max_seq,
              -EINVAL, "internal: batch of %d rows / %d sequences exceeds the "
              "context (%d rows, %d sequences)", n_rows, n_seq, mc->max_rows,
              mc->max_seq);
    for (int s = 0; s < n_seq; s++)
        RETURN_IF(seqs[s].n_past + seqs[s].n_new > mc->cap, -EINVAL,
                  "internal: sequence %d needs %d KV slots, the cache has %d", s,
                  seqs[s].n_past + seqs[s].n_new, mc->cap);
    float scale = 1.0f / sqrtf((float)hd);
    size_t es = o->elem_size;
    char *qkv = mc->qkv;

    FORWARD_IF(o->embed(ctx, mc->x, m->tok_emb, m->pos_emb, ids, pos, n_rows, d));
    for (int l = 0; l < c->n_layer; l++) {
        const model_layer *L = &m->layers[l];
        FORWARD_IF(o->layernorm(ctx, mc->h, mc->x, L->ln1_w, L->ln1_b, n_rows, d, c->ln_eps));
        FORWARD_IF(o->linear(ctx, qkv, mc->h, L->wqkv, L->bqkv, n_rows, 3 * d, d, 0));
        FORWARD_IF(o->kv_append(ctx, mc->kc[l], mc->vc[l], qkv + (size_t)d * es,
                                qkv + (size_t)2 * d * es, 3 * d, seqs, n_seq, H, hd,
                                mc->cap));
        FORWARD_IF(o->attn(ctx, mc->att, d, qkv, 3 * d, mc->kc[l], mc->vc[l], seqs,
                           n_seq, H, hd, mc->cap, scale,
                           mc->scores ? mc->scores + (size_t)l * mc->max_seq * H * mc->cap
                                      : NULL));
        FORWARD_IF(o->linear(ctx, mc->h, mc->att, L->wo, L->bo, n_rows, d, d, 0));
        FORWARD_IF(o->add(ctx, mc->x, mc->h, (size_t)n_rows * d));
        FORWARD_IF(o->layernorm(ctx, mc->h, mc->x, L->ln2_w, L->ln2_b, n_rows, d, c->ln_eps));
        FORWARD_IF(o->linear(ctx, mc->ffn, mc->h, L->w1, L->b1, n_rows, c->ffn, d, 1));
        FORWARD_IF(o->linear(ctx, mc->h, mc->ffn, L->w2, L->b2, n_rows, d, c->ffn, 0));
        FORWARD_IF(o->add(ctx, mc->x, mc->h, (size_t)n_rows * d));
    }
    if (n_out == 0)
        return 0;
    FORWARD_IF(o->gather_rows(ctx, mc->last, mc->x, last_rows, n_out, d));
    FORWARD_IF(o->layernorm(ctx, mc->last, mc->last, m->lnf_w, m->lnf_b, n_out, d, c->ln_eps));
    return o->linear(ctx, mc->logits, mc->last, m->lm_head, NULL, n_out, c->vocab_size, d, 0);
}
