/* model_weights.c: a model's weights: the layer blob layout (the
 * scheduler's format over the family's table), the global tensors on the
 * backend, and the loading protocol every source shares (tensor by tensor
 * into the globals or the host layer blob, each finished layer to the
 * sink). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model_impl.h"
#include "off.h"
#include "safetensors.h"

/* ------------------------------------------------------------ layer blobs */

size_t model_layer_layout_q(const model_config *c, size_t es, int wq, size_t off[MT_COUNT],
                            size_t bytes[MT_COUNT])
{
    sched_model sm;
    model_sched_shape(c, &sm);
    return sched_blob_layout(&sm, es, wq, off, bytes);
}

size_t model_layer_layout(const model_config *c, size_t es, size_t off[MT_COUNT],
                          size_t n[MT_COUNT])
{
    size_t bytes[MT_COUNT], at = model_layer_layout_q(c, es, 0, off, bytes);
    for (int t = 0; n && t < MT_COUNT; t++)
        n[t] = bytes[t] / es;
    return at;
}

void model_layer_quantize(const model_config *c, size_t es, void *dst, const void *src)
{
    sched_model sm;
    model_sched_shape(c, &sm);
    sched_blob_quantize(&sm, es, dst, src);
}

static float elem_f32(const void *src, uint32_t t, size_t i)
{
    const uint16_t *h = src;
    return t == OFF_DTYPE_F32    ? ((const float *)src)[i]
         : t == OFF_DTYPE_BF16   ? st_bf16_to_f32(h[i])
                                 : kern_f16_to_f32(h[i]);
}

void model_convert_elems(void *dst, uint32_t dst_t, const void *src, uint32_t src_t, size_t n)
{
    const float *f32 = src;
    uint16_t *h = dst;
    if (dst_t == src_t) {
        memcpy(dst, src, n * off_dtype_size(dst_t));
    } else if (src_t == OFF_DTYPE_F32 && dst_t == OFF_DTYPE_F16) { /* the loaders' paths */
        for (size_t i = 0; i < n; i++)
            h[i] = kern_f32_to_f16(f32[i]);
    } else if (src_t == OFF_DTYPE_F32) {
        for (size_t i = 0; i < n; i++)
            h[i] = st_f32_to_bf16(f32[i]);
    } else if (dst_t == OFF_DTYPE_F32) {
        float *f = dst;
        for (size_t i = 0; i < n; i++)
            f[i] = elem_f32(src, src_t, i);
    } else { /* between the 16-bit types, through fp32 */
        for (size_t i = 0; i < n; i++) {
            float x = elem_f32(src, src_t, i);
            h[i] = dst_t == OFF_DTYPE_BF16 ? st_f32_to_bf16(x) : kern_f32_to_f16(x);
        }
    }
}

void **model_global(model *m, int g)
{
    switch (g) {
    case MODEL_G_TOK_EMB: return &m->tok_emb;
    case MODEL_G_POS_EMB: return &m->pos_emb;
    case MODEL_G_NORM_W: return &m->lnf_w;
    case MODEL_G_NORM_B: return &m->lnf_b;
    default: return &m->lm_head;
    }
}

int model_global_h16(const model *m, int g)
{
    return (g == MODEL_G_TOK_EMB || g == MODEL_G_LM_HEAD) ? m->g16 : 0;
}

/* ------------------------------------------------------------ allocation */

int model_alloc_weights(model *m)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    RETURN_IF(!m->sink, -EINVAL, "internal: a model loads its layers into a sink");
    model_sched_shape(c, &m->shape);
    unsigned need = (c->norm == MODEL_NORM_RMS ? BACKEND_OP_RMSNORM : 0) |
                    (c->pos == MODEL_POS_ROPE ? BACKEND_OP_ROPE : 0) |
                    (c->act == MODEL_ACT_SWIGLU ? BACKEND_OP_SWIGLU : 0) |
                    (c->act == MODEL_ACT_GELU ? BACKEND_OP_GELU : 0);
    FORWARD_IF(backend_ops_check(o, need, c->family->name));
    /* bf16 tables exactly when the plan counts them so: bf16 layers on a
     * backend computing from bf16 (cli_model_tiers' weight_direct) */
    int direct = o->h16_direct && o->h16_direct(ctx, KERN_H16_BF16);
    RETURN_IF(direct && (!o->embed_h16 || !o->host_visible), -EINVAL, "internal: the %s "
              "backend computes from bf16 but has no bf16 embedding or host memory", o->name);
    m->g16 = (m->h16 == KERN_H16_BF16 || m->t16 == KERN_H16_BF16) && direct ? KERN_H16_BF16 : 0;
    /* the global tensors, as the family's checkpoint table has them */
    model_hf_tensor *w;
    int n = model_hf_tensors(c, &w), rc = 0;
    FORWARD_IF(n);
    for (int i = 0; rc == 0 && i < n; i++)
        if (w[i].layer < 0 && !*model_global(m, w[i].dst)) {
            size_t cnt = model_hf_count(&w[i]);
            if (model_global_h16(m, w[i].dst)) /* 16-bit values in storage elements */
                cnt = (cnt * 2 + o->elem_size - 1) / o->elem_size;
            rc = o->alloc(ctx, cnt, model_global(m, w[i].dst));
        }
    free(w);
    FORWARD_IF(rc);
    if (c->tie_lm_head)
        m->lm_head = m->tok_emb;
    if (c->pos == MODEL_POS_ROPE) {
        m->inv_freq = malloc(sizeof(float) * (size_t)(c->rot_dims / 2));
        RETURN_IF(!m->inv_freq, -ENOMEM, "out of memory");
        FORWARD_IF(kern_rope_inv_freq(m->inv_freq, c->rot_dims, &c->rope));
    }
    /* one host blob, reused by every layer; handed to the sink */
    size_t off[MT_COUNT];
    size_t les = m->h16 ? 2 : o->elem_size;
    m->blob_bytes = (model_layer_layout(c, les, off, NULL) + 4095) & ~(size_t)4095;
    m->blob = aligned_alloc(4096, m->blob_bytes);
    RETURN_IF(!m->blob, -ENOMEM, "out of host memory for a layer (%.1f MiB)",
              m->blob_bytes / 1048576.0);
    memset(m->blob, 0, m->blob_bytes);
    for (int t = 0; t < m->shape.n_tensors; t++)
        m->blob_view.t[t] = (char *)m->blob + off[t];
    return 0;
}

void model_destroy(model *m)
{
    if (!m)
        return;
    const backend_ops *o = m->be ? m->be->ops : NULL;
    if (o) {
        void *ctx = m->be->ctx;
        if (m->lm_head != m->tok_emb)
            o->free(ctx, m->lm_head);
        o->free(ctx, m->tok_emb);
        o->free(ctx, m->pos_emb);
        o->free(ctx, m->lnf_w);
        o->free(ctx, m->lnf_b);
    }
    free(m->blob);
    free(m->inv_freq);
    if (m->store) {
        off_store_close(m->store);
        free(m->store);
    }
    free(m);
}

/* dst + offset (elements) <- n fp32 values of tensor w: a global through
 * the backend, a layer tensor into the host blob in the backend's storage
 * type. */
int model_put_f32(model *m, const model_hf_tensor *w, size_t offset, const float *src,
                   size_t n)
{
    const backend_ops *o = m->be->ops;
    int g16 = w->layer < 0 ? model_global_h16(m, w->dst) : 0;
    if (g16) { /* host-visible backend memory */
        model_convert_elems((uint16_t *)*model_global(m, w->dst) + w->offset + offset,
                            model_h16_dtype(g16), src, OFF_DTYPE_F32, n);
        return 0;
    }
    if (w->layer < 0)
        return o->upload(m->be->ctx,
                         (char *)*model_global(m, w->dst) + (w->offset + offset) * o->elem_size,
                         src, n);
    size_t les = m->h16 ? 2 : o->elem_size;
    uint32_t lt = m->h16 ? model_h16_dtype(m->h16) : model_backend_dtype(o->elem_size);
    char *dst = (char *)m->blob_view.t[w->dst] + (w->offset + offset) * les;
    model_convert_elems(dst, lt, src, OFF_DTYPE_F32, n);
    return 0;
}

/* A new model of config c loading into sink, with its tensor table. */
int model_begin(const model_config *c, backend *be, int h16, int t16, model_layer_sink sink,
                void *ud, model **out, model_hf_tensor **w, int *n)
{
    model *m = calloc(1, sizeof *m);
    RETURN_IF(!m, -ENOMEM, "out of memory");
    m->cfg = *c;
    m->be = be;
    m->h16 = h16;
    m->t16 = t16;
    m->sink = sink;
    m->sink_ud = ud;
    *out = m;
    FORWARD_IF(model_alloc_weights(m));
    *n = model_hf_tensors(c, w);
    return *n < 0 ? *n : 0;
}

/* After tensor i of the table: hand the layer to the sink when it was the
 * last tensor of its layer. */
int model_layer_done(model *m, const model_hf_tensor *w, int n, int i)
{
    if (w[i].layer < 0 || (i + 1 < n && w[i + 1].layer == w[i].layer))
        return 0;
    return m->sink(m->sink_ud, w[i].layer, m->blob, 0, -1, 0);
}
