/* model.h: a model's weights on a backend and its forward pass, as the
 * scheduler's sched_model.
 *
 * A family (model_family.h) is its config.json reader and its checkpoint's
 * tensor names; the layer blob, the forward pass (one decoder block over
 * model_config's choices), the dummy weights, make-model, the store and the
 * plan all read the same config and table.
 * Layers never live in the model: each goes, as one blob, to a sink (the
 * scheduler's sched_layer_sink, or convert's store writer) while the model
 * loads; the global tensors (embeddings, final norm, head) stay on the
 * backend. */
#ifndef FH_MODEL_H
#define FH_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "model_config.h"
#include "model_family.h"
#include "off.h"
#include "scheduler.h"

/* A layer's tensors (t[MT_*]) wherever they are; wq: the matrices are
 * 4-bit rows (compress_weight), expanded into sched_scratch.w before their
 * GEMMs; views of the same layer must be the same struct (the reuse key). */
typedef sched_layer model_layer;

struct model;

/* The checkpoint tensor table of config c's family, malloc'd into *out
 * (caller frees). @return the count or -ENOMEM. */
int model_hf_tensors(const model_config *c, model_hf_tensor **out);
/* Values in checkpoint tensor w (rows x cols, or rows for a vector). */
static inline size_t model_hf_count(const model_hf_tensor *w)
{
    return (size_t)w->rows * (size_t)(w->cols > 0 ? w->cols : 1);
}

/* The scheduler's view of shape c (sched_model's data part: shape, layer
 * tensor table, global elements; no callbacks). */
void model_sched_shape(const model_config *c, sched_model *out);
/* The same with the forward pass's callbacks computing on m (ctx = m). */
void model_sched_bind(struct model *m, sched_model *out);

/* A layer as one contiguous blob of storage elements (es bytes each): the
 * unit that the offloading scheduler moves and that a weight store keeps
 * per segment (sched_blob_layout over the family's table). off[t]: byte
 * offset of tensor t (256-aligned); n[t]: its element count (either may be
 * NULL). @return the blob's bytes. */
size_t model_layer_layout(const model_config *c, size_t es, size_t off[MT_COUNT],
                          size_t n[MT_COUNT]);
/* The same with the weight matrices as 4-bit rows when wq != 0 (kern.h's
 * format; the vectors stay in the storage type): off[t] as above, bytes[t]
 * the bytes of tensor t (either may be NULL). */
size_t model_layer_layout_q(const model_config *c, size_t es, int wq, size_t off[MT_COUNT],
                            size_t bytes[MT_COUNT]);
/* dst (a model_layer_layout_q(wq = 1) blob) <- src (a plain blob of es-byte
 * elements): matrices quantized, vectors copied. */
void model_layer_quantize(const model_config *c, size_t es, void *dst, const void *src);
/* dst (n elements of type dst_t) <- src (of type src_t); the types are
 * OFF_DTYPE_F32, OFF_DTYPE_F16 or OFF_DTYPE_BF16 (uint16_t bits; narrowing
 * rounds to nearest even): a copy when they are the same. */
void model_convert_elems(void *dst, uint32_t dst_t, const void *src, uint32_t src_t, size_t n);
/* The element type of a backend storing es-byte elements: fp32 or fp16. */
static inline uint32_t model_backend_dtype(size_t es)
{
    return es == 2 ? OFF_DTYPE_F16 : OFF_DTYPE_F32;
}
/* The element type of 16-bit layers h16 (kern_h16), or 0 for none. */
static inline uint32_t model_h16_dtype(int h16)
{
    return h16 == KERN_H16_F16 ? OFF_DTYPE_F16 : h16 == KERN_H16_BF16 ? OFF_DTYPE_BF16 : 0;
}

/* Receives each layer of a model being loaded: blob (host memory, 4096-
 * aligned, the backend's storage type or the 16 bits the sink keeps
 * (model_load_store's h16), model_layer_layout_q(wq) order) is
 * valid during the call only; wq: its matrices are already 4-bit (a store
 * from convert --compress-weight). fd >= 0: the same bytes are in that file
 * at file_offset (a weight store of the backend's storage type), so the
 * scheduler can stream the disk share from there. sched_layer_sink is one.
 * @return 0 or -errno. */
typedef int (*model_layer_sink)(void *ud, int layer, const void *blob, int wq, int fd,
                                uint64_t file_offset);

typedef struct model {
    model_config cfg;
    sched_model shape;    /* model_sched_shape(&cfg) */
    backend *be;          /* not owned */
    void *tok_emb;        /* (V, d) embed_tokens */
    void *pos_emb;        /* (max_pos + 2, d) learned positions, or NULL */
    void *lnf_w, *lnf_b;  /* (d) the final norm (lnf_b NULL for RMSNorm) */
    void *lm_head;        /* (V, d); == tok_emb when tied */
    int g16;              /* 0: tok_emb and lm_head in the storage type; KERN_H16_BF16:
                           * in bf16 (model_global_h16) */
    int head_packed;      /* lm_head (and so tok_emb when tied) in the backend's packed
                           * layout (model_pack_tables) */
    float *inv_freq;      /* host (rot_dims / 2): RoPE's frequencies, or NULL */
    /* loading (model.c internal) */
    model_layer_sink sink;
    void *sink_ud;
    void *blob;           /* host blob of the layer being loaded */
    size_t blob_bytes;
    model_layer blob_view;/* its tensors */
    int h16;              /* 0: layers go to the sink in the storage type; KERN_H16_*:
                           * in those 16 bits (the sink keeps them so) */
    int t16;              /* KERN_H16_BF16: the tables (g16) bf16 though the layers are
                           * not 16-bit (4-bit layers of a bf16 source), or 0 */
    struct off_store *store; /* the weight store streamed from, or NULL (owned) */
} model;

/* The field of m that holds global tensor g (MODEL_G_*). */
void **model_global(model *m, int g);
/* The 16-bit format (kern_h16) global tensor g is held in, or 0: the
 * storage type. The (V, d) matrices (token embedding, head) are bf16 when
 * the layers are (h16), or the loader was asked so (t16: 4-bit layers of
 * a bf16 source), and the backend computes from bf16 itself
 * (backend_ops.h16_direct, embed_h16 on a host-visible backend): what the
 * plan assumes under sched_shape.weight_direct (sched_table_fmt). */
int model_global_h16(const model *m, int g);
/* Once the model is loaded: a bf16 LM head (g16) goes into the layout the
 * backend's bf16 matmul reads fastest (backend_ops.pack_h16), a tied one
 * too (the embedding then gathers its rows from that layout); nothing
 * else may read the tables as rows afterwards. @return 1 packed, 0 not
 * (no bf16 tables, or not this backend or shape), -errno. */
int model_pack_tables(model *m);
/* Linear layer y(rows, n) = x(rows, k) W^T (+ b) (ReLU when relu) with
 * matrix t of layer L, which may be 4-bit rows: expanded into sc->w first
 * (once per layer with sc->w_all), or else through the backend's linear_q4
 * where it has one (sc->w its scratch), or expanded per call; or 16-bit
 * rows of the fused view of a 16-bit layer (its wh set): the backend's
 * linear_h16. */
int model_linear(model *m, const model_layer *L, sched_scratch *sc, int t, void *y,
                 const void *x, const void *b, int rows, int n, int k, int relu);

/* Load a model from a Hugging Face directory (config.json +
 * model.safetensors or shards), handing every layer to sink (see
 * model_layer_sink); the global tensors go to the backend. Every tensor is
 * checked against the shape config.json implies. @return 0 or -errno; free
 * with model_destroy(). */
int model_load_hf_sink(const char *dir, backend *be, model_layer_sink sink, void *ud,
                       model **out);
/* The same with the layers handed to sink as 16-bit blobs of format h16
 * (kern_h16; 0: the storage type), for a sink that keeps them so
 * (sched_weight_fmt): exact for a checkpoint of that dtype
 * (model_hf_h16). t16 KERN_H16_BF16: the embedding and head in bf16 on a
 * backend computing from bf16 whatever h16 (sched_table_fmt), else 0. */
int model_load_hf_h16(const char *dir, backend *be, int h16, int t16, model_layer_sink sink,
                      void *ud, model **out);
/* The 16-bit format every layer tensor of the Hugging Face checkpoint in
 * dir has: KERN_H16_F16 (all fp16), KERN_H16_BF16 (all bf16), or 0 (fp32,
 * or mixed). @return that, or -errno. */
int model_hf_h16(const char *dir);
/* A model of the given shape with random weights (uniform, std 0.02; norm
 * weights 1, biases 0), deterministic in seed, loaded the same way: for
 * benchmarks (--dummy). */
int model_create_dummy_sink(const model_config *cfg, backend *be, uint64_t seed,
                            model_layer_sink sink, void *ud, model **out);
/* A flexh2o weight store (`flexh2o convert`): the embeddings and final
 * LayerNorm go to the backend, every layer (checksum verified) to sink; fd
 * and offset are passed when the layers go as the store has them: its
 * dtype is the backend's storage type, or h16 == KERN_H16_F16 and the
 * store is fp16 (the sink keeps 16-bit layers, sched_weight_fmt; then the
 * blobs are fp16 whatever the storage type). h16 0: layers in the storage
 * type. t16: as model_load_hf_h16's. disk: the engine to read with (NULL:
 * pread). */
struct off_disk;
int model_load_store(const char *path, backend *be, struct off_disk *disk, int h16, int t16,
                     model_layer_sink sink, void *ud, model **out);
/* Convert a Hugging Face directory into a weight store of dtype
 * OFF_DTYPE_F16 or OFF_DTYPE_F32, or'ed with OFF_DTYPE_Q4 for 4-bit layer
 * matrices, at out_path (`flexh2o convert`). */
int model_convert(const char *hf_dir, const char *out_path, uint32_t dtype);
/* The config of a model source without loading weights: a Hugging Face
 * directory, a weight store file. */
int model_config_of(const char *path, model_config *out);
/* 1 (and *dtype) if path is a weight store directory, 0 if not, or -errno. */
int model_store_dtype(const char *path, uint32_t *dtype);
void model_destroy(model *m); /* accepts NULL */

/* Write a random model of shape cfg as a Hugging Face directory of its
 * family (config.json, model.safetensors, vocab.json, merges.txt with the
 * embedded tokenizer): `flexh2o make-model`. */
int model_write_random(const model_config *cfg, const char *dir, uint64_t seed);

#endif
