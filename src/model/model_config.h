/* model_config.h: the shape and the math of a decoder-only model, read from
 * a Hugging Face config.json (a model directory, or
 * configs/models/<name>.json for --dummy and make-model).
 *
 * Every family (DESIGN.md "Model families") is the same pre-norm decoder
 * block with these choices: the norm (LayerNorm with bias, or RMSNorm), the
 * positions (learned, OPT; or rotary over the first rot_dims of a head),
 * the MLP (fc1-ReLU-fc2, fc1-GELU-fc2, or SwiGLU), which linear layers have
 * biases, and sequential or parallel residual. The family's file
 * (arch_<family>.c) reads its config.json into these fields and names its
 * checkpoint's tensors; everything else reads only the fields. */
#ifndef FH_MODEL_CONFIG_H
#define FH_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "kern.h"

typedef enum model_norm { MODEL_NORM_LAYER, MODEL_NORM_RMS } model_norm;
typedef enum model_act { MODEL_ACT_RELU, MODEL_ACT_GELU, MODEL_ACT_SWIGLU } model_act;
typedef enum model_pos { MODEL_POS_LEARNED, MODEL_POS_ROPE } model_pos;

struct model_family;

/* The largest vocabulary config.json may give (the tokenizer's bound on an
 * id, TOK_MAX_ID, is the same). */
#define MODEL_MAX_VOCAB (1 << 24)

typedef struct model_config {
    char name[64];        /* _name_or_path, or the file's base name */
    const struct model_family *family; /* from model_type */
    int vocab_size;       /* V */
    int hidden;           /* d */
    int n_layer;
    int n_head;
    int n_kv_head;        /* KV heads (grouped-query attention); n_head for MHA */
    int head_dim;         /* hidden / n_head unless config.json says otherwise */
    int ffn;              /* the MLP's intermediate size */
    int max_pos;          /* max_position_embeddings */
    int bos_id, eos_id, pad_id; /* -1: none (eos: the first of a list) */
    int tie_lm_head;      /* lm_head shares embed_tokens */
    float ln_eps;         /* the norms' epsilon */
    model_norm norm;
    model_act act;
    model_pos pos;
    int qkv_bias;         /* q, k, v projections have biases */
    int o_bias;           /* the attention output projection has a bias */
    int mlp_bias;         /* the MLP's projections have biases */
    int parallel_residual;/* x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX) */
    int rot_dims;         /* rotated dimensions of a head (pos == MODEL_POS_ROPE) */
    kern_rope rope;       /* rope_theta and rope_scaling */
    int sliding_window;   /* the tokens a query attends to, itself included (Mistral);
                           * 0: all */
} model_config;

/* Parse config.json text. `what` names the file in messages. The family
 * comes from model_type (or architectures); what the engine cannot run
 * (an unknown family, a field that changes the math in a way it does not
 * implement) is refused with a one-line message naming the field. Every
 * number is range-checked as it is read (the table in model_config.c:
 * vocab_size up to MODEL_MAX_VOCAB, hidden_size up to 65536, layers and
 * heads up to 1024, max_position_embeddings up to 2^24, ...), so no size
 * made from them overflows; bos/eos/pad_token_id must be rows of the
 * vocabulary (or -1/null for none). The message names the file, the field
 * and the allowed range.
 * @return 0 or -EINVAL. */
int model_config_parse(const char *json, size_t len, const char *what,
                       model_config *cfg);
/* Read and parse a config.json file. @return 0, -ENOENT or -EINVAL. */
int model_config_load(const char *path, model_config *cfg);
/* Resolve a model shape name ("tiny", "opt-125m", "llama-3.2-1b", ... or a
 * path to a .json file): "tiny" is built in, the others come from
 * configs/models/ in the source tree. @return 0 or -errno with a message
 * listing where the names are. */
int model_config_by_name(const char *name, model_config *cfg);
/* config.json text for cfg, in its family's Hugging Face form (make-model):
 * model_config_parse of it gives cfg back. @return its length, or -ENOSPC
 * when it does not fit in cap bytes. */
int model_config_json(const model_config *cfg, char *buf, size_t cap);

/* Parameter count (weights + biases + embeddings + head). */
size_t model_config_params(const model_config *cfg);
/* Query heads per KV head. */
static inline int model_config_group(const model_config *c) { return c->n_head / c->n_kv_head; }

#endif
