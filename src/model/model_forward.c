/* model_forward.c: the forward pass of every family: one pre-norm decoder
 * block over model_config's choices (DESIGN.md "Model families"), bound
 * into the scheduler's sched_model, and the linear layer over weights that
 * may be 4-bit rows (compress_weight).
 *
 *   x = tok_emb[ids] (+ pos_emb[pos + 2], learned positions)
 *   per layer:
 *     h = norm1(x); qkv = h Wqkv^T (+ bqkv); RoPE on q and k (rotary)
 *     a = attention (sched_attend: prefill exact over the prompt then the
 *         kept k, v to the slot cache; decode over the slots + the new k, v,
 *         then k, v to a free or evicted slot; keys are cached rotated)
 *     o = a Wo^T (+ bo)
 *     sequential: x += o; h = norm2(x); x += mlp(h)
 *     parallel:   h = norm2(x); x += o; x += mlp(h)      (GPT-NeoX)
 *     mlp(h) = W2 act(W1 h + b1) + b2 (ReLU, GELU), or
 *              W2 (silu(Wg h + bg) * (W1 h + b1)) + b2   (SwiGLU)
 *   logits = normf(x[last rows]) lm_head^T
 *
 * Everything about where weights and KV live is the scheduler's. Rows of
 * different sequences never mix except in the linear layers, which act
 * row by row, so a sequence's output does not depend on what else is in
 * the batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"

void model_hf_add(model_hf_table *t, int layer, const char *name, int dst, int64_t rows,
                  int64_t cols, size_t offset, char init, char perm)
{
    if (t->out) {
        model_hf_tensor *x = &t->out[t->n];
        *x = (model_hf_tensor){.layer = layer, .dst = dst, .rows = rows, .cols = cols,
                               .offset = offset, .init = init, .perm = perm};
        int at = layer < 0 ? 0 : snprintf(x->name, sizeof x->name, t->layer_prefix, layer);
        snprintf(x->name + at, sizeof x->name - (size_t)at, "%s", name);
    }
    t->n++;
}

int model_hf_tensors(const model_config *c, model_hf_tensor **out)
{
    int n = c->family->tensors(c, NULL);
    *out = calloc((size_t)n, sizeof **out);
    RETURN_IF(!*out, -ENOMEM, "out of memory for the tensor table of %d tensors", n);
    c->family->tensors(c, *out);
    return n;
}

void model_sched_shape(const model_config *c, sched_model *out)
{
    memset(out, 0, sizeof *out);
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn, hd = (size_t)c->head_dim;
    size_t qd = (size_t)(c->n_head + 2 * c->n_kv_head) * hd, ad = (size_t)c->n_head * hd;
    int ln = c->norm == MODEL_NORM_LAYER, glu = c->act == MODEL_ACT_SWIGLU;
    out->n_layer = c->n_layer;
    out->n_head = c->n_head;
    out->n_kv_head = c->n_kv_head;
    out->head_dim = c->head_dim;
    out->hidden = c->hidden;
    out->vocab = c->vocab_size;
    out->ffn = (int)(glu ? 2 * f : f); /* SwiGLU: gate and up side by side */
    out->globals_mat = (size_t)c->vocab_size * d * (c->tie_lm_head ? 1 : 2);
    out->globals = out->globals_mat + d * (ln ? 2 : 1) +
                   (c->pos == MODEL_POS_LEARNED
                        ? (size_t)(c->max_pos + KERN_OPT_POS_OFFSET) * d : 0);
    const sched_tensor t[MT_COUNT] = {
        [MT_LN1_W] = {d, 0},
        [MT_LN1_B] = {ln ? d : 0, 0},
        [MT_BQKV] = {c->qkv_bias ? qd : 0, 0},
        [MT_BO] = {c->o_bias ? d : 0, 0},
        [MT_LN2_W] = {d, 0},
        [MT_LN2_B] = {ln ? d : 0, 0},
        [MT_B1] = {c->mlp_bias ? f : 0, 0},
        [MT_B2] = {c->mlp_bias ? d : 0, 0},
        [MT_BG] = {c->mlp_bias && glu ? f : 0, 0},
        [MT_WQKV] = {qd, c->hidden},
        [MT_WO] = {d, (int)ad},
        [MT_W1] = {f, c->hidden},
        [MT_W2] = {d, c->ffn},
        [MT_WG] = {glu ? f : 0, glu ? c->hidden : 0},
    };
    out->n_tensors = MT_COUNT;
    memcpy(out->tensors, t, sizeof t);
}

size_t model_config_params(const model_config *c)
{
    sched_model sm;
    model_sched_shape(c, &sm);
    size_t layer = 0;
    for (int t = 0; t < sm.n_tensors; t++)
        layer += sm.tensors[t].rows * (size_t)(sm.tensors[t].cols ? sm.tensors[t].cols : 1);
    return (size_t)c->n_layer * layer + sm.globals;
}

/* Where matrix t of an expanded layer starts in sc->w (w_all): the
 * matrices in table order. @return bytes. */
static size_t expanded_at(const sched_model *sm, size_t es, int t)
{
    size_t at = 0;
    for (int i = 0; i < t; i++)
        at += sm->tensors[i].rows * (size_t)sm->tensors[i].cols;
    return at * es;
}

/* w_all: expand every 4-bit matrix of L into sc->w unless it is there
 * already (the GPU batches of a block share the layer). */
static int expand_layer(model *m, const model_layer *L, sched_scratch *sc)
{
    if (sc->w_layer == L)
        return 0;
    const sched_model *sm = &m->shape;
    size_t es = m->be->ops->elem_size;
    for (int t = 0; t < sm->n_tensors; t++)
        if (sm->tensors[t].cols && sm->tensors[t].rows)
            FORWARD_IF(m->be->ops->dequant_q4(m->be->ctx, (char *)sc->w + expanded_at(sm, es, t),
                                              L->t[t], sm->tensors[t].rows,
                                              sm->tensors[t].cols));
    sc->w_layer = L;
    return 0;
}

/* The bytes at the start of sc->w that a fused 16-bit view's vectors take
 * (widen_layer: widened, packed in table order, 256-byte aligned); past
 * them, the scratch of the backend's linear_h16. */
static size_t vectors_bytes(const sched_model *sm, size_t es)
{
    size_t at = 0;
    for (int t = 0; t < sm->n_tensors; t++)
        if (!sm->tensors[t].cols)
            at += (sm->tensors[t].rows * es + 255) & ~(size_t)255;
    return at;
}

/* A layer kept in 16 bits on the tiers (L->wh), widened into sc->w; *out
 * the widened view. With one GPU batch per block and a backend that has
 * linear_h16, or one whose linear_h16 reads the 16-bit matrix itself
 * (h16_direct: bf16 matmuls), only the vectors are widened (packed at the
 * start of sc->w) and the view keeps the matrices in 16 bits (its wh set):
 * each GEMM widens its rows in cache, or needs no widening. Otherwise every tensor is widened, laid out
 * as the blob in the storage type, once while the layer stays the same
 * (the GPU batches of a block share it, as 4-bit layers expand). @return
 * 0 or -errno. */
static int widen_layer(model *m, const model_layer *L, sched_scratch *sc,
                       const model_layer **out)
{
    *out = &sc->w_wide;
    if (sc->w_layer == L)
        return 0;
    const sched_model *sm = &m->shape;
    const backend_ops *o = m->be->ops;
    int fused = o->linear_h16 &&
                (!sc->w_all || (o->h16_direct && o->h16_direct(m->be->ctx, (kern_h16)L->wh)));
    size_t off[SCHED_MAX_TENSORS], bytes[SCHED_MAX_TENSORS], vat = 0;
    sched_blob_layout(sm, o->elem_size, 0, off, bytes);
    RETURN_IF(L->packed && !fused, -EINVAL, "internal: packed bf16 matrices (backend "
              "pack_h16) on a backend that widens them");
    sc->w_layer = NULL; /* set again only once every tensor is widened */
    for (int t = 0; t < sm->n_tensors; t++) {
        if (fused && sm->tensors[t].cols) {
            sc->w_wide.t[t] = L->t[t];
            continue;
        }
        if (fused) {
            sc->w_wide.t[t] = (char *)sc->w + vat;
            vat += (bytes[t] + 255) & ~(size_t)255;
        } else {
            sc->w_wide.t[t] = (char *)sc->w + off[t];
        }
        if (bytes[t])
            FORWARD_IF(o->widen(m->be->ctx, sc->w_wide.t[t], L->t[t], bytes[t] / o->elem_size,
                                (kern_h16)L->wh));
    }
    sc->w_wide.wq = 0;
    sc->w_wide.wh = fused ? L->wh : 0;
    sc->w_wide.packed = fused ? L->packed : 0;
    sc->w_layer = fused ? NULL : L;
    return 0;
}

int model_linear(model *m, const model_layer *L, sched_scratch *sc, int t, void *y,
                 const void *x, const void *b, int rows, int n, int k, int relu)
{
    const backend_ops *o = m->be->ops;
    const void *w = L->t[t];
    if (L->wq && sc->w_all) {
        FORWARD_IF(expand_layer(m, L, sc));
        w = (const char *)sc->w + expanded_at(&m->shape, o->elem_size, t);
    } else if (L->wq && o->linear_q4) {
        return o->linear_q4(m->be->ctx, y, x, w, b, rows, n, k, relu, sc->w);
    } else if (L->wh) { /* widen_layer's fused view: the matrices in 16 bits */
        kern_h16 fmt = L->packed >> t & 1 ? KERN_H16_BF16_PACKED : (kern_h16)L->wh;
        return o->linear_h16(m->be->ctx, y, x, w, fmt, b, rows, n, k, relu,
                             (char *)sc->w + vectors_bytes(&m->shape, o->elem_size));
    } else if (L->wq) {
        FORWARD_IF(o->dequant_q4(m->be->ctx, sc->w, w, (size_t)n, k));
        w = sc->w;
    }
    return o->linear(m->be->ctx, y, x, w, b, rows, n, k, relu);
}

/* ------------------------------------------------------------ the block */

/* The bias tensor t of L, or NULL when the family has none. */
static const void *bias(const model *m, const model_layer *L, int t)
{
    return m->shape.tensors[t].rows ? L->t[t] : NULL;
}

static int norm(model *m, void *out, const void *x, const void *w, const void *b, int n)
{
    const model_config *c = &m->cfg;
    if (c->norm == MODEL_NORM_RMS)
        return m->be->ops->rmsnorm(m->be->ctx, out, x, w, n, c->hidden, c->ln_eps);
    return m->be->ops->layernorm(m->be->ctx, out, x, w, b, n, c->hidden, c->ln_eps);
}

static int fwd_embed(void *mp, void *x, const int32_t *ids, const int32_t *pos, int n_rows)
{
    model *m = mp;
    if (m->g16) {
        kern_h16 fmt = m->head_packed && m->tok_emb == m->lm_head ? KERN_H16_BF16_PACKED
                                                                   : (kern_h16)m->g16;
        return m->be->ops->embed_h16(m->be->ctx, x, m->tok_emb, fmt, m->cfg.vocab_size,
                                     m->pos_emb, ids, pos, n_rows, m->cfg.hidden);
    }
    return m->be->ops->embed(m->be->ctx, x, m->tok_emb, m->pos_emb, ids, pos, n_rows,
                             m->cfg.hidden);
}

/* h(n, d) = mlp(h) through sc->ffn. */
static int mlp(model *m, const model_layer *L, sched_scratch *sc, void *h, int n)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    int d = c->hidden, f = c->ffn;
    void *ffn = sc->ffn;
    if (c->act == MODEL_ACT_SWIGLU) {
        void *up = (char *)ffn + (size_t)n * f * o->elem_size;
        FORWARD_IF(model_linear(m, L, sc, MT_WG, ffn, h, bias(m, L, MT_BG), n, f, d, 0));
        FORWARD_IF(model_linear(m, L, sc, MT_W1, up, h, bias(m, L, MT_B1), n, f, d, 0));
        FORWARD_IF(o->swiglu(m->be->ctx, ffn, f, ffn, up, f, n, f));
    } else {
        int relu = c->act == MODEL_ACT_RELU;
        FORWARD_IF(model_linear(m, L, sc, MT_W1, ffn, h, bias(m, L, MT_B1), n, f, d, relu));
        if (c->act == MODEL_ACT_GELU)
            FORWARD_IF(o->gelu(m->be->ctx, ffn, ffn, (size_t)n * f));
    }
    return model_linear(m, L, sc, MT_W2, h, ffn, bias(m, L, MT_B2), n, d, f, 0);
}

static int fwd_layer(void *mp, int layer, const model_layer *L, const sched_pass *p, void *x)
{
    (void)layer;
    model *m = mp;
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    sched_scratch *sc = p->scr;
    if (L->wh)
        FORWARD_IF(widen_layer(m, L, sc, &L));
    int d = c->hidden, n = p->n_rows, hd = c->head_dim;
    int qd = (c->n_head + 2 * c->n_kv_head) * hd, ad = c->n_head * hd;
    FORWARD_IF(norm(m, sc->h, x, L->t[MT_LN1_W], bias(m, L, MT_LN1_B), n));
    FORWARD_IF(model_linear(m, L, sc, MT_WQKV, sc->qkv, sc->h, bias(m, L, MT_BQKV), n, qd, d, 0));
    if (c->pos == MODEL_POS_ROPE)
        FORWARD_IF(o->rope(ctx, sc->qkv, (char *)sc->qkv + (size_t)ad * o->elem_size, qd, p->pos,
                           n, c->n_head, c->n_kv_head, hd, c->rot_dims, m->inv_freq));
    FORWARD_IF(sched_attend(p, sc->qkv, sc->att));
    FORWARD_IF(model_linear(m, L, sc, MT_WO, sc->h, sc->att, bias(m, L, MT_BO), n, d, ad, 0));
    if (c->parallel_residual) {
        /* the MLP reads norm2 of the block's input: into att, free now */
        FORWARD_IF(norm(m, sc->att, x, L->t[MT_LN2_W], bias(m, L, MT_LN2_B), n));
        FORWARD_IF(o->add(ctx, x, sc->h, (size_t)n * d));
        FORWARD_IF(mlp(m, L, sc, sc->att, n));
        return o->add(ctx, x, sc->att, (size_t)n * d);
    }
    FORWARD_IF(o->add(ctx, x, sc->h, (size_t)n * d));
    FORWARD_IF(norm(m, sc->h, x, L->t[MT_LN2_W], bias(m, L, MT_LN2_B), n));
    FORWARD_IF(mlp(m, L, sc, sc->h, n));
    return o->add(ctx, x, sc->h, (size_t)n * d);
}

static int fwd_head(void *mp, void *logits, void *last, const void *x,
                    const int32_t *last_rows, int n_out, sched_scratch *sc)
{
    model *m = mp;
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    if (n_out == 0)
        return 0;
    FORWARD_IF(o->gather_rows(ctx, last, x, last_rows, n_out, c->hidden));
    FORWARD_IF(norm(m, last, last, m->lnf_w, m->lnf_b, n_out));
    if (m->g16) /* a bf16 matmul: x rounded into h, (rows, d) >= (n_out, d) bf16 */
        return o->linear_h16(ctx, logits, last, m->lm_head,
                             m->head_packed ? KERN_H16_BF16_PACKED : (kern_h16)m->g16, NULL,
                             n_out, c->vocab_size, c->hidden, 0, sc->h);
    return o->linear(ctx, logits, last, m->lm_head, NULL, n_out, c->vocab_size, c->hidden, 0);
}

int model_pack_tables(model *m)
{
    const backend_ops *o = m->be->ops;
    if (m->g16 != KERN_H16_BF16 || !o->pack_h16 || m->head_packed)
        return m->head_packed;
    int r = o->pack_h16(m->be->ctx, m->lm_head, KERN_H16_BF16, m->cfg.vocab_size,
                        m->cfg.hidden);
    FORWARD_IF(r);
    m->head_packed = r;
    return r;
}

void model_sched_bind(model *m, sched_model *out)
{
    model_sched_shape(&m->cfg, out);
    out->ctx = m;
    out->embed = fwd_embed;
    out->layer = fwd_layer;
    out->head = fwd_head;
}
