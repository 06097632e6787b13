/* model.h: OPT weights on a backend and the forward pass over a packed
 * batch with a slot KV cache. */
#ifndef FH_MODEL_H
#define FH_MODEL_H

#include <stdint.h>

#include "backend_impl.h"
#include "model_config.h"

typedef struct model_layer {
    void *ln1_w, *ln1_b;  /* (d) self_attn_layer_norm */
    void *wqkv, *bqkv;    /* (3d, d), (3d): q, k, v projections stacked */
    void *wo, *bo;        /* (d, d), (d) out_proj */
    void *ln2_w, *ln2_b;  /* (d) final_layer_norm of the block */
    void *w1, *b1;        /* (ffn, d), (ffn) fc1 */
    void *w2, *b2;        /* (d, ffn), (d) fc2 */
} model_layer;

typedef struct model {
    model_config cfg;
    backend *be;          /* not owned */
    void *tok_emb;        /* (V, d) embed_tokens */
    void *pos_emb;        /* (max_pos + 2, d) embed_positions */
    void *lnf_w, *lnf_b;  /* (d) decoder.final_layer_norm */
    void *lm_head;        /* (V, d); == tok_emb when tied */
    model_layer *layers;  /* (n_layer) */
} model;

/* Load an OPT model from a Hugging Face directory (config.json +
 * model.safetensors or shards). Every tensor is checked against the shape
 * config.json implies. @return 0 or -errno; free with model_destroy(). */
int model_load_hf(const char *dir, backend *be, model **out);
/* A model of the given shape with random weights (uniform, std 0.02; LayerNorm
 * weight 1, bias 0), deterministic in seed: for benchmarks (--dummy). */
int model_create_dummy(const model_config *cfg, backend *be, uint64_t seed,
                       model **out);
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
