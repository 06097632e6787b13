/* model.h: OPT weights on a backend and the forward pass over a packed
 * batch with a slot KV cache. */
#ifndef FH_MODEL_H
#define FH_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "model_config.h"
#include "scheduler.h"

/* A layer's tensors (t[MT_*]) wherever they are; wq: the four matrices are
 * 4-bit rows (compress_weight), expanded into sched_scratch.w before their
 * GEMMs; views of the same layer must be the same struct (the reuse key). */
typedef sched_layer model_layer;

/* The tensors of an OPT layer, in the order of a layer blob:
 * the small ones first, so that a weight split across tiers keeps them on
 * the GPU with the first share.
 *   LN1 (d) self_attn_layer_norm; WQKV (3d, d), BQKV (3d): q, k, v stacked;
 *   WO (d, d), BO (d) out_proj; LN2 (d) final_layer_norm of the block;
 *   W1 (ffn, d), B1 (ffn) fc1; W2 (d, ffn), B2 (d) fc2 */
enum model_tensor {
    MT_LN1_W, MT_LN1_B, MT_BQKV, MT_BO, MT_LN2_W, MT_LN2_B, MT_B1, MT_B2,
    MT_WQKV, MT_WO, MT_W1, MT_W2, MT_COUNT
};

/* The scheduler's view of shape c (sched_model's data part: shape, layer
 * tensor table, global elements; no callbacks). */
void model_sched_shape(const model_config *c, sched_model *out);
/* The same with the callbacks computing on m (ctx = m). */
struct model;
void model_sched_bind(struct model *m, sched_model *out);

/* A layer as one contiguous blob of storage elements (es bytes each): the
 * unit that the offloading scheduler moves and that a weight store keeps
 * per segment. off[t]: byte offset of tensor t (256-aligned); n[t]: its
 * element count (either may be NULL). @return the blob's bytes. */
size_t model_layer_layout(const model_config *c, size_t es, size_t off[MT_COUNT],
                          size_t n[MT_COUNT]);
/* The same with the four weight matrices as 4-bit rows when wq != 0
 * (kern.h's format; the vectors stay in the storage type): off[t] as
 * above, bytes[t] the bytes of tensor t (either may be NULL). */
size_t model_layer_layout_q(const model_config *c, size_t es, int wq, size_t off[MT_COUNT],
                            size_t bytes[MT_COUNT]);
/* Rows of weight matrix t, *cols its row length; 0 when t is a vector. */
size_t model_tensor_rows(const model_config *c, int t, int *cols);
/* dst (a model_layer_layout_q(wq = 1) blob) <- src (a plain blob of es-byte
 * elements): matrices quantized, vectors copied. */
void model_layer_quantize(const model_config *c, size_t es, void *dst, const void *src);
/* The field of L that holds tensor t. */
void **model_layer_field(model_layer *L, int t);
/* dst (n elements of dst_es bytes) <- src (src_es bytes each): fp32 and
 * fp16 (uint16_t bits, round to nearest even) either way, or a copy. */
void model_convert_elems(void *dst, size_t dst_es, const void *src, size_t src_es, size_t n);
/* Point every field of L at its place in the blob at base. */
void model_layer_bind(model_layer *L, const model_config *c, size_t es, void *base);

/* Receives each layer of a model being loaded when its weights go to the
 * offloading scheduler instead of the backend: blob (host memory, 4096-
 * aligned, the backend's storage type, model_layer_layout_q(wq) order) is
 * valid during the call only; wq: its matrices are already 4-bit (a store
 * from convert --compress-weight). fd >= 0: the same bytes are in that file
 * at file_offset (a weight store of the backend's storage type), so the
 * scheduler can stream the disk share from there. @return 0 or -errno. */
typedef int (*model_layer_sink)(void *ud, int layer, const void *blob, int wq, int fd,
                                uint64_t file_offset);

typedef struct model {
    model_config cfg;
    backend *be;          /* not owned */
    void *tok_emb;        /* (V, d) embed_tokens */
    void *pos_emb;        /* (max_pos + 2, d) embed_positions */
    void *lnf_w, *lnf_b;  /* (d) decoder.final_layer_norm */
    void *lm_head;        /* (V, d); == tok_emb when tied */
    model_layer *layers;  /* (n_layer); all NULL fields when loaded with a sink */
    /* loading with a sink (model.c internal) */
    model_layer_sink sink;
    void *sink_ud;
    void *blob;           /* host blob of the layer being loaded */
    size_t blob_bytes;
    struct off_store *store; /* the weight store streamed from, or NULL (owned) */
} model;

/* Allocate the backend tensors of m (m->cfg, m->be, m->sink set): all of
 * them, or with a sink only the global ones plus the host layer blob.
 * (model.c internal, shared with model_store.c) */
int model_alloc_weights(model *m);

/* Load an OPT model from a Hugging Face directory (config.json +
 * model.safetensors or shards). Every tensor is checked against the shape
 * config.json implies. @return 0 or -errno; free with model_destroy(). */
int model_load_hf(const char *dir, backend *be, model **out);
/* A model of the given shape with random weights (uniform, std 0.02; LayerNorm
 * weight 1, bias 0), deterministic in seed: for benchmarks (--dummy). */
int model_create_dummy(const model_config *cfg, backend *be, uint64_t seed,
                       model **out);
/* The same, handing every layer to sink (see model_layer_sink) instead of
 * allocating it on the backend; the embeddings and the final LayerNorm are
 * on the backend. */
int model_load_hf_sink(const char *dir, backend *be, model_layer_sink sink, void *ud,
                       model **out);
int model_create_dummy_sink(const model_config *cfg, backend *be, uint64_t seed,
                            model_layer_sink sink, void *ud, model **out);
/* A flexh2o weight store (`flexh2o convert`): the embeddings and final
 * LayerNorm go to the backend, every layer (checksum verified) to sink; fd
 * and offset are passed when the store's dtype is the backend's storage
 * type. disk: the engine to read with (NULL: pread). */
struct off_disk;
int model_load_store(const char *path, backend *be, struct off_disk *disk,
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

/* Write a random model of shape cfg as a Hugging Face directory
 * (config.json, model.safetensors, vocab.json, merges.txt with the
 * embedded tokenizer): `flexh2o make-model`. */
int model_write_random(const model_config *cfg, const char *dir, uint64_t seed);

/* Per-block working memory: activations for up to max_rows packed tokens
 * and a slot KV cache of `cap` slots for each of max_seq sequences. Sized
 * once; nothing on the decode path allocates. */
typedef struct model_ctx {
    model *m;
    int max_rows, max_seq, cap;
    void *x, *h, *qkv, *att, *ffn; /* (rows, d), (rows, d), (rows, 3d), (rows, d), (rows, ffn) */
    void *last;                    /* (max_seq, d) last row of each sequence */
    void *logits;                  /* (max_seq, V) */
    void **kc, **vc;               /* per layer (max_seq, n_head, cap, head_dim) */
    void **pos;                    /* per layer (max_seq, n_head, cap) int32: token of each slot */
    void **scores;                 /* per layer (max_seq, n_head, cap) fp32, or NULL: no
                                    * H2O scores kept (then eviction is by age) */
    void *colsum;                  /* (max_rows, n_head) fp32 prefill column sums, or NULL */
    void *self_p;                  /* (max_seq, n_head) fp32 decode self-attention, or NULL */
    void *evicted;                 /* (n_layer, max_seq, n_head) int32: the position each
                                    * (layer, sequence, head) evicted in the last decode
                                    * pass, -1 for none; NULL unless MODEL_CTX_EVICTED */
} model_ctx;

/* model_ctx_create flags. */
#define MODEL_CTX_SCORES 1  /* keep H2O scores (h2o eviction, --stats) */
#define MODEL_CTX_EVICTED 2 /* record evicted positions (--trace-evictions) */

/* flags: MODEL_CTX_* or'ed (0: no scores, eviction by age only).
 * @return 0 or -errno; free with model_ctx_destroy(). */
int model_ctx_create(model *m, int max_rows, int max_seq, int cap, int flags,
                     model_ctx **out);
void model_ctx_destroy(model_ctx *c); /* accepts NULL */

/* x(n_rows, d) = embeddings of (ids, pos) (host arrays). */
int model_embed(void *m, void *x, const int32_t *ids, const int32_t *pos, int n_rows);
/* Layer `layer` of m (tensors at L, wherever they are) over x(n_rows, d) in
 * place: sched_model.layer. */
int model_layer_forward(void *m, int layer, const model_layer *L, int kind, void *x,
                        int n_rows, const kern_seq *seqs, int n_seq, const sched_kv *kv,
                        int n_kv, int cap, sched_scratch *s, void *evicted);
/* logits(n_out, V) = LNf(x[last_rows]) E^T; last: (n_out, d) scratch. */
int model_head(void *m, void *logits, void *last, const void *x, const int32_t *last_rows,
               int n_out);

/* One forward pass: rows (ids, pos) packed per sequence as described by
 * seqs (n_new may be 0: that sequence is idle this call). Either every
 * active sequence is a prefill (n_past 0, whole prompt) or every one is a
 * decode step (n_new 1); their K/V go to the slot caches (evicting as
 * kern.h describes once a sequence holds its budget). Writes the logits of
 * the rows last_rows[0..n_out) to c->logits (n_out, V). The caller advances
 * n_past and n_slots. @return 0 or -errno. */
int model_forward(model_ctx *c, const int32_t *ids, const int32_t *pos,
                  int n_rows, const kern_seq *seqs, int n_seq,
                  const int32_t *last_rows, int n_out);

#endif
