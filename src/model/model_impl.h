/* model_impl.h: what the files of src/model/ share (not a public header). */
#ifndef FH_MODEL_IMPL_H
#define FH_MODEL_IMPL_H

#include "model.h"

/* Allocate the global tensors of m on the backend and the host layer blob
 * (m->cfg, m->be, m->sink, m->h16 set). @return 0 or -errno. */
int model_alloc_weights(model *m);
/* A new model of config c loading into sink (layers as 16-bit blobs of
 * format h16, or 0: the storage type; t16: model_load_hf_h16's; m->shape, the globals on the
 * backend, the host layer blob), with the family's checkpoint table
 * (*w, *n; caller frees *w). On failure *out may hold a partial model for
 * model_destroy. @return 0 or -errno. */
int model_begin(const model_config *c, backend *be, int h16, int t16, model_layer_sink sink,
                void *ud, model **out, model_hf_tensor **w, int *n);
/* n fp32 values at element `offset` of tensor w's destination: a global
 * through the backend, a layer tensor into the host blob. */
int model_put_f32(model *m, const model_hf_tensor *w, size_t offset, const float *src,
                  size_t n);
/* After tensor i of table w (n entries): hand the layer to the sink when
 * it was the last tensor of its layer. */
int model_layer_done(model *m, const model_hf_tensor *w, int n, int i);

#endif
