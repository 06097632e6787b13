/* model_forward.c: the OPT decoder over a packed batch.
 *
 *   x = embed(ids) + pos_embed(pos + 2)                 (rows, d)
 *   per layer:  h = LN1(x); qkv = h Wqkv^T + b          (rows, 3d)
 *               prefill: a = causal attention over the prompt rows,
 *                        then the kept k, v go to the slot cache
 *               decode:  a = attention over the slots + the new k, v,
 *                        then k, v go to a free or evicted slot
 *               x += a Wo^T + bo
 *               h = LN2(x); x += relu(h W1^T + b1) W2^T + b2
 *   logits = LNf(x[last rows]) E^T                       (n_out, V)
 *
 * With compress_weight a layer's matrices are 4-bit rows, each expanded into
 * a scratch matrix just before its GEMM; with compress_cache the KV slots
 * are 4-bit rows and the slot ops have 4-bit versions (kern.h).
 *
 * Pre-LayerNorm OPT (every size but 350m). Rows of different sequences
 * never mix except in the linear layers, which act row by row, so a
 * sequence's output does not depend on what else is in the batch.
 */
#include <math.h>
#include <stdlib.h>

#include "err.h"
#include "model.h"

int model_ctx_create(model *m, int max_rows, int max_seq, int cap, int flags,
                     model_ctx **out)
{
    int with_scores = flags & MODEL_CTX_SCORES;
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
    mc->pos = calloc((size_t)c->n_layer, sizeof(void *));
    if (with_scores)
        mc->scores = calloc((size_t)c->n_layer, sizeof(void *));
    if (!mc->kc || !mc->vc || !mc->pos || (with_scores && !mc->scores))
        rc = -ENOMEM;
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->x);
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->h);
    if (rc == 0) rc = o->alloc(ctx, r * 3 * d, &mc->qkv);
    if (rc == 0) rc = o->alloc(ctx, r * d, &mc->att);
    if (rc == 0) rc = o->alloc(ctx, r * (size_t)c->ffn, &mc->ffn);
    if (rc == 0) rc = o->alloc(ctx, (size_t)max_seq * d, &mc->last);
    if (rc == 0) rc = o->alloc(ctx, (size_t)max_seq * (size_t)c->vocab_size, &mc->logits);
    size_t slots = (size_t)max_seq * (size_t)c->n_head * (size_t)cap;
    size_t kv = slots * (size_t)c->head_dim;
    if (rc == 0 && with_scores) rc = o->alloc_f32(ctx, r * (size_t)c->n_head, &mc->colsum);
    if (rc == 0 && with_scores) rc = o->alloc_f32(ctx, (size_t)max_seq * c->n_head, &mc->self_p);
    if (rc == 0 && (flags & MODEL_CTX_EVICTED))
        rc = o->alloc_f32(ctx, (size_t)c->n_layer * max_seq * c->n_head, &mc->evicted);
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        rc = o->alloc(ctx, kv, &mc->kc[l]);
        if (rc == 0)
            rc = o->alloc(ctx, kv, &mc->vc[l]);
        if (rc == 0)
            rc = o->alloc_f32(ctx, slots, &mc->pos[l]);
        if (rc == 0 && with_scores)
            rc = o->alloc_f32(ctx, slots, &mc->scores[l]);
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
    o->free(ctx, mc->colsum);
    o->free(ctx, mc->self_p);
    o->free(ctx, mc->evicted);
    for (int l = 0; l < mc->m->cfg.n_layer; l++) {
        if (mc->kc)
            o->free(ctx, mc->kc[l]);
        if (mc->vc)
            o->free(ctx, mc->vc[l]);
        if (mc->pos)
            o->free(ctx, mc->pos[l]);
        if (mc->scores)
            o->free(ctx, mc->scores[l]);
    }
    free(mc->kc);
    free(mc->vc);
    free(mc->pos);
    free(mc->scores);
    free(mc);
}

int model_pass_kind(const kern_seq *seqs, int n_seq, int cap)
{
    int kind = MODEL_PASS_IDLE;
    for (int s = 0; s < n_seq; s++) {
        const kern_seq *q = &seqs[s];
        if (q->n_new == 0)
            continue;
        int k = q->n_past == 0 ? MODEL_PASS_PREFILL : MODEL_PASS_DECODE;
        RETURN_IF(kind != MODEL_PASS_IDLE && kind != k, -EINVAL,
                  "internal: prefill and decode sequences mixed in one pass");
        kind = k;
        RETURN_IF(k == MODEL_PASS_DECODE && q->n_new != 1, -EINVAL,
                  "internal: decode of %d rows", q->n_new);
        RETURN_IF(q->budget < 1 || q->budget > cap || q->n_slots > q->budget ||
                  q->recent < 1 || q->sinks + q->recent > q->budget, -EINVAL,
                  "internal: sequence %d has budget %d (sinks %d, recent %d) for %d slots",
                  s, q->budget, q->sinks, q->recent, cap);
    }
    return kind;
}

int model_embed(model *m, void *x, const int32_t *ids, const int32_t *pos, int n_rows)
{
    return m->be->ops->embed(m->be->ctx, x, m->tok_emb, m->pos_emb, ids, pos, n_rows,
                             m->cfg.hidden);
}

/* CPU attention for segment g whose fp16 cache is host memory: the q/k/v
 * rows of its sequences come down, kern_*_h16 run over the cache in place,
 * the attention output goes back up (decode). Rows of a segment's active
 * sequences are contiguous: rows are packed in sequence order. */
static int host_segment(model *m, int kind, const model_kv *g, const kern_seq *seqs,
                        int cap, const model_scratch *sc, void *evicted, float scale)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    int d = c->hidden, H = c->n_head, hd = c->head_dim, r0 = -1, r1 = 0;
    size_t es = o->elem_size;
    for (int i = 0; i < g->n; i++) {
        kern_seq q = seqs[g->seq0 + i];
        if (q.n_new && (r0 < 0 || q.row < r0))
            r0 = q.row;
        if (q.n_new && q.row + q.n_new > r1)
            r1 = q.row + q.n_new;
    }
    if (r0 < 0)
        return 0; /* nothing of this segment in the pass */
    for (int i = 0; i < g->n; i++) {
        sc->h_seqs[i] = seqs[g->seq0 + i];
        sc->h_seqs[i].row = sc->h_seqs[i].n_new ? sc->h_seqs[i].row - r0 : 0;
    }
    size_t rows = (size_t)(r1 - r0);
    FORWARD_IF(o->download(ctx, sc->h_qkv, (const char *)sc->qkv + (size_t)r0 * 3 * d * es,
                           rows * 3 * d));
    const float *q = sc->h_qkv, *k = q + d, *v = q + 2 * d;
    if (kind == MODEL_PASS_PREFILL) {
        const float *cs = NULL;
        if (sc->colsum) {
            FORWARD_IF(o->download_f32(ctx, sc->h_colsum,
                                       (const char *)sc->colsum + (size_t)r0 * H * 4, rows * H));
            cs = sc->h_colsum;
        }
        int rc = g->q4 ? kern_kv_prefill_q4(g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, cs,
                                            sc->h_seqs, g->n, H, hd, cap)
                       : kern_kv_prefill_h16(g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, cs,
                                             sc->h_seqs, g->n, H, hd, cap);
        RETURN_IF(rc < 0, rc, "out of host memory for the scratch of CPU attention's KV "
                  "prefill; lower --gpu-batch-size or the prompt length");
        return 0;
    }
    int32_t *ev = evicted ? sc->h_ev : NULL;
    int rc = g->q4 ? kern_attn_decode_q4(sc->h_att, d, q, k, v, 3 * d, g->kc, g->vc, sc->h_seqs,
                                         g->n, H, hd, cap, scale, g->scores, sc->h_self)
                   : kern_attn_decode_h16(sc->h_att, d, q, k, v, 3 * d, g->kc, g->vc, sc->h_seqs,
                                          g->n, H, hd, cap, scale, g->scores, sc->h_self);
    RETURN_IF(rc < 0, rc, "out of host memory for the scratch of CPU decode attention; lower "
              "--gpu-batch-size");
    if (g->q4) {
        kern_kv_insert_q4(g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, sc->h_self, sc->h_seqs,
                          g->n, H, hd, cap, ev);
    } else {
        kern_kv_insert_h16(g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, sc->h_self,
                           sc->h_seqs, g->n, H, hd, cap, ev);
    }
    if (evicted)
        FORWARD_IF(o->upload_f32(ctx, (char *)evicted + (size_t)g->seq0 * H * 4,
                                 (const float *)sc->h_ev, (size_t)g->n * H));
    return o->upload(ctx, (char *)sc->att + (size_t)r0 * d * es, sc->h_att, rows * d);
}

/* Where matrix t of an expanded layer starts in sc->w (w_all): the
 * matrices in tensor order, MT_WQKV .. MT_W2. @return bytes. */
static size_t expanded_at(const model_config *c, size_t es, int t)
{
    size_t at = 0;
    for (int i = MT_WQKV; i < t; i++) {
        int cols;
        at += model_tensor_rows(c, i, &cols) * (size_t)cols;
    }
    return at * es;
}

/* w_all: expand the four 4-bit matrices of L into sc->w unless they are
 * there already (the GPU batches of a block share the layer). */
static int expand_layer(model *m, const model_layer *L, model_scratch *sc)
{
    if (sc->w_layer == L)
        return 0;
    const void *w[] = {L->wqkv, L->wo, L->w1, L->w2};
    for (int t = MT_WQKV; t <= MT_W2; t++) {
        int cols;
        size_t rows = model_tensor_rows(&m->cfg, t, &cols);
        FORWARD_IF(m->be->ops->dequant_q4(m->be->ctx,
                                          (char *)sc->w + expanded_at(&m->cfg,
                                                                      m->be->ops->elem_size, t),
                                          w[t - MT_WQKV], rows, cols));
    }
    sc->w_layer = L;
    return 0;
}

/* y(rows, n) = x W^T + b for matrix t (held at w) of layer L; a 4-bit
 * matrix is taken from the expanded layer (w_all) or expanded into sc->w
 * for this GEMM. */
static int layer_linear(model *m, const model_layer *L, const model_scratch *sc, int t,
                        void *y, const void *x, const void *w, const void *b, int rows, int n,
                        int k, int relu)
{
    const backend_ops *o = m->be->ops;
    if (L->wq && sc->w_all) {
        w = (const char *)sc->w + expanded_at(&m->cfg, o->elem_size, t);
    } else if (L->wq) {
        FORWARD_IF(o->dequant_q4(m->be->ctx, sc->w, w, (size_t)n, k));
        w = sc->w;
    }
    return o->linear(m->be->ctx, y, x, w, b, rows, n, k, relu);
}

int model_layer_forward(model *m, const model_layer *L, int kind, void *x, int n_rows,
                        const kern_seq *seqs, int n_seq, const model_kv *kv, int n_kv,
                        int cap, model_scratch *sc, void *evicted)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    int d = c->hidden, H = c->n_head, hd = c->head_dim;
    float scale = 1.0f / sqrtf((float)hd);
    size_t es = o->elem_size;
    char *qkv = sc->qkv;
    const char *q = qkv, *k = qkv + (size_t)d * es, *v = qkv + (size_t)2 * d * es;

    if (L->wq && sc->w_all)
        FORWARD_IF(expand_layer(m, L, sc));
    FORWARD_IF(o->layernorm(ctx, sc->h, x, L->ln1_w, L->ln1_b, n_rows, d, c->ln_eps));
    FORWARD_IF(layer_linear(m, L, sc, MT_WQKV, qkv, sc->h, L->wqkv, L->bqkv, n_rows, 3 * d, d,
                            0));
    if (kind == MODEL_PASS_PREFILL)
        FORWARD_IF(o->attn_prefill(ctx, sc->att, d, q, k, v, 3 * d, seqs, n_seq, H, hd,
                                   scale, sc->colsum));
    /* attention and cache updates per KV segment: the kernels index
     * sequences from the segment's first one, rows stay absolute */
    for (int i = 0; i < n_kv; i++) {
        const model_kv *g = &kv[i];
        const kern_seq *sq = seqs + g->seq0;
        char *self_p = sc->self_p ? (char *)sc->self_p + (size_t)g->seq0 * H * 4 : NULL;
        char *ev = evicted ? (char *)evicted + (size_t)g->seq0 * H * 4 : NULL;
        if (g->n == 0)
            continue;
        if (g->host) {
            FORWARD_IF(host_segment(m, kind, g, seqs, cap, sc, evicted, scale));
            continue;
        }
        /* 4-bit caches (compress_cache) have their own ops, same arguments */
        if (kind == MODEL_PASS_PREFILL) {
            FORWARD_IF((g->q4 ? o->kv_prefill_q4 : o->kv_prefill)(
                ctx, g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, sc->colsum, sq, g->n, H, hd,
                cap));
        } else if (kind == MODEL_PASS_DECODE) {
            FORWARD_IF((g->q4 ? o->attn_decode_q4 : o->attn_decode)(
                ctx, sc->att, d, q, k, v, 3 * d, g->kc, g->vc, sq, g->n, H, hd, cap, scale,
                g->scores, self_p));
            FORWARD_IF((g->q4 ? o->kv_insert_q4 : o->kv_insert)(
                ctx, g->kc, g->vc, g->scores, g->pos, k, v, 3 * d, self_p, sq, g->n, H, hd, cap,
                ev));
        }
    }
    FORWARD_IF(layer_linear(m, L, sc, MT_WO, sc->h, sc->att, L->wo, L->bo, n_rows, d, d, 0));
    FORWARD_IF(o->add(ctx, x, sc->h, (size_t)n_rows * d));
    FORWARD_IF(o->layernorm(ctx, sc->h, x, L->ln2_w, L->ln2_b, n_rows, d, c->ln_eps));
    FORWARD_IF(layer_linear(m, L, sc, MT_W1, sc->ffn, sc->h, L->w1, L->b1, n_rows, c->ffn, d, 1));
    FORWARD_IF(layer_linear(m, L, sc, MT_W2, sc->h, sc->ffn, L->w2, L->b2, n_rows, d, c->ffn, 0));
    return o->add(ctx, x, sc->h, (size_t)n_rows * d);
}

int model_head(model *m, void *logits, void *last, const void *x,
               const int32_t *last_rows, int n_out)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    if (n_out == 0)
        return 0;
    FORWARD_IF(o->gather_rows(ctx, last, x, last_rows, n_out, c->hidden));
    FORWARD_IF(o->layernorm(ctx, last, last, m->lnf_w, m->lnf_b, n_out, c->hidden, c->ln_eps));
    return o->linear(ctx, logits, last, m->lm_head, NULL, n_out, c->vocab_size, c->hidden, 0);
}

int model_forward(model_ctx *mc, const int32_t *ids, const int32_t *pos,
                  int n_rows, const kern_seq *seqs, int n_seq,
                  const int32_t *last_rows, int n_out)
{
    model *m = mc->m;
    const model_config *c = &m->cfg;
    int H = c->n_head;
    RETURN_IF(n_rows > mc->max_rows || n_seq > mc->max_seq || n_out > mc->max_seq,
              -EINVAL, "internal: batch of %d rows / %d sequences exceeds the "
              "context (%d rows, %d sequences)", n_rows, n_seq, mc->max_rows,
              mc->max_seq);
    int kind = model_pass_kind(seqs, n_seq, mc->cap);
    FORWARD_IF(kind);
    model_scratch sc = {.h = mc->h, .qkv = mc->qkv, .att = mc->att, .ffn = mc->ffn,
                        .colsum = mc->colsum, .self_p = mc->self_p};
    FORWARD_IF(model_embed(m, mc->x, ids, pos, n_rows));
    for (int l = 0; l < c->n_layer; l++) {
        model_kv kv = {mc->kc[l], mc->vc[l], mc->pos[l], mc->scores ? mc->scores[l] : NULL,
                       0, n_seq, 0, 0};
        void *ev = mc->evicted ? (char *)mc->evicted + (size_t)l * mc->max_seq * H * 4 : NULL;
        FORWARD_IF(model_layer_forward(m, &m->layers[l], kind, mc->x, n_rows, seqs, n_seq,
                                       &kv, 1, mc->cap, &sc, ev));
    }
    return model_head(m, mc->logits, mc->last, mc->x, last_rows, n_out);
}
