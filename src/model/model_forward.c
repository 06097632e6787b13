/* model_forward.c: the architecture-neutral part of the forward pass: the
 * family's callbacks bound into the scheduler's sched_model, and the
 * linear layer over weights that may be 4-bit rows (compress_weight).
 *
 * A family's block (arch_<family>.c) calls model_linear for its GEMMs and
 * sched_attend for its attention; everything about where weights and KV
 * live is the scheduler's. Rows of different sequences never mix except in
 * the linear layers, which act row by row, so a sequence's output does not
 * depend on what else is in the batch.
 */
#include <stdlib.h>

#include "err.h"
#include "model.h"

const model_arch *model_arch_of(const model_config *c)
{
    (void)c; /* one family so far: model_config_parse refuses the others */
    return &model_arch_opt;
}

int model_hf_tensors(const model_config *c, model_hf_tensor **out)
{
    int n = model_arch_of(c)->tensors(c, NULL);
    *out = calloc((size_t)n, sizeof **out);
    RETURN_IF(!*out, -ENOMEM, "out of memory for the tensor table of %d tensors", n);
    model_arch_of(c)->tensors(c, *out);
    return n;
}

void model_sched_shape(const model_config *c, sched_model *out)
{
    model_arch_of(c)->shape(c, out);
}

void model_sched_bind(model *m, sched_model *out)
{
    const model_arch *a = model_arch_of(&m->cfg);
    a->shape(&m->cfg, out);
    out->ctx = m;
    out->embed = a->embed;
    out->layer = a->layer;
    out->head = a->head;
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
        if (sm->tensors[t].cols)
            FORWARD_IF(m->be->ops->dequant_q4(m->be->ctx, (char *)sc->w + expanded_at(sm, es, t),
                                              L->t[t], sm->tensors[t].rows,
                                              sm->tensors[t].cols));
    sc->w_layer = L;
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
    } else if (L->wq) {
        FORWARD_IF(o->dequant_q4(m->be->ctx, sc->w, w, (size_t)n, k));
        w = sc->w;
    }
    return o->linear(m->be->ctx, y, x, w, b, rows, n, k, relu);
}
