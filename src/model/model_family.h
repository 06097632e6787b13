/* model_family.h: what a model family is (DESIGN.md "Model families"):
 * its config.json reader, its checkpoint's tensor names and its
 * config.json writer. Everything else (the layer blob, the forward pass,
 * the plan and cost model, the store, 4-bit) reads model_config's fields
 * and the layer tensors below, so adding a family is one arch_<name>.c. */
#ifndef FH_MODEL_FAMILY_H
#define FH_MODEL_FAMILY_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "model_config.h"

/* The tensors of a layer, in the order of a layer blob: the small ones
 * first, so that a weight split across tiers keeps them on the GPU with the
 * first share. A tensor a family does not have has no elements.
 *   LN1 (d) the attention's norm (weight, bias for LayerNorm);
 *   WQKV (qkv_dim, d), BQKV (qkv_dim): q (n_head heads), k, v (n_kv_head
 *   heads each) stacked; WO (d, n_head x head_dim), BO (d) the output
 *   projection; LN2 (d) the MLP's norm; W1 (ffn, d), B1 (ffn): fc1 or
 *   up_proj; W2 (d, ffn), B2 (d): fc2 or down_proj; WG (ffn, d), BG (ffn):
 *   gate_proj (SwiGLU). */
enum model_tensor {
    MT_LN1_W, MT_LN1_B, MT_BQKV, MT_BO, MT_LN2_W, MT_LN2_B, MT_B1, MT_B2, MT_BG,
    MT_WQKV, MT_WO, MT_W1, MT_W2, MT_WG, MT_COUNT
};

/* The global tensors (on the backend; a family without one leaves it NULL). */
enum model_global {
    MODEL_G_TOK_EMB,  /* (V, d) token embeddings */
    MODEL_G_POS_EMB,  /* (max_pos + 2, d) learned positions (OPT) */
    MODEL_G_NORM_W,   /* (d) final norm */
    MODEL_G_NORM_B,   /* (d) final norm bias (LayerNorm) */
    MODEL_G_LM_HEAD,  /* (V, d); the token embeddings when tied */
    MODEL_G_COUNT
};

/* How a checkpoint tensor's rows map onto its destination. */
enum model_hf_perm {
    MODEL_PERM_NONE,
    /* GPT-NeoX's query_key_value: rows per head h as [q_h; k_h; v_h]
     * (head_dim rows each) into q (all heads), then k, then v */
    MODEL_PERM_QKV_PER_HEAD,
};

/* One tensor of a Hugging Face checkpoint and where it goes: rows x cols
 * values (cols 0: a vector of rows values) at element `offset` of global
 * `dst` (layer < 0) or of tensor `dst` of layer `layer`'s blob (separate
 * q/k/v are three tensors into one). init: the dummy weights' fill, 'n'
 * random (std 0.02), '1' ones, '0' zeros. */
typedef struct model_hf_tensor {
    char name[96];
    int layer, dst;
    int64_t rows, cols;
    size_t offset;
    char init;
    char perm; /* enum model_hf_perm */
} model_hf_tensor;

typedef struct model_family {
    const char *name;      /* config.json model_type */
    const char *arch;      /* its architectures[0] */
    /* config.json object o into c (memset to 0, family set); refuses with
     * a message naming the field what it cannot run. @return 0 or -EINVAL */
    int (*parse)(const cJSON *o, const char *what, model_config *c);
    /* the checkpoint's tensors in state-dict order, the globals first and
     * each layer's together; out NULL: count only. @return the count. */
    int (*tensors)(const model_config *c, model_hf_tensor *out);
    /* config.json of c (see model_config_json) */
    int (*config_json)(const model_config *c, char *buf, size_t cap);
} model_family;

/* A family's checkpoint table being written: entries go to out[n] (out
 * NULL: counted only); a layer tensor's name is layer_prefix (printf with
 * the layer's number) + its name, a global's is its name as given. */
typedef struct model_hf_table {
    model_hf_tensor *out;
    int n;
    const char *layer_prefix; /* e.g. "model.layers.%d." */
} model_hf_table;
/* Append one tensor (see model_hf_tensor) to t. */
void model_hf_add(model_hf_table *t, int layer, const char *name, int dst, int64_t rows,
                  int64_t cols, size_t offset, char init, char perm);

extern const model_family model_family_opt, model_family_llama, model_family_mistral,
    model_family_qwen2, model_family_gpt_neox;

/* ---- for the families' readers (model_config.c) ----
 * Each reads key of o into *out, or def when it is absent or null;
 * required keys (model_json_int with def MODEL_JSON_REQUIRED) are refused
 * when missing. A number is checked against key's range (model_config.c's
 * table; a float: any value a float holds, a norm's epsilon in [0, 1])
 * before it is converted. @return 0 or -EINVAL with a message naming key,
 * file and range. */
#define MODEL_JSON_REQUIRED (-2147483647 - 1)
int model_json_int(const cJSON *o, const char *key, int def, int *out, const char *what);
int model_json_float(const cJSON *o, const char *key, float def, float *out, const char *what);
/* As model_json_float, kept as a double (what Python computes with). */
int model_json_double(const cJSON *o, const char *key, double def, double *out,
                      const char *what);
int model_json_bool(const cJSON *o, const char *key, int def, int *out, const char *what);
/* The string value of key, or NULL when absent or null; -EINVAL (message)
 * in *rc when it is something else. */
const char *model_json_str(const cJSON *o, const char *key, const char *what, int *rc);
/* eos_token_id: an integer or a list of them (the first is kept; the
 * tokenizer keeps them all). */
int model_json_eos(const cJSON *o, int def, int *out, const char *what);
/* The RoPE parameters into r: theta from "rope_theta" (or theta_key, or
 * rope_parameters' rope_theta; theta_def when none is there), the scaling
 * from rope_scaling or rope_parameters (absent, null, or {"rope_type" or
 * "type": "default", "linear", "llama3"}); other types refused by name. */
int model_json_rope(const cJSON *o, const char *what, const char *theta_key, float theta_def,
                    kern_rope *r);
/* The common tail of a family's reader: refuses config fields that no
 * family runs (quantization_config, ...). */
int model_json_common(const cJSON *o, const char *what, model_config *c);

/* c->name as the inside of a JSON string (quotes, backslashes and control
 * characters escaped) in buf, which MODEL_JSON_NAME_MAX bytes always hold.
 * @return buf. */
#define MODEL_JSON_NAME_MAX (6 * 64)
const char *model_json_name(const model_config *c, char *buf);

/* Append r as the "rope_scaling" line of a config.json (null, linear or
 * llama3) to buf at *at. @return 0 or -ENOSPC. */
int model_json_rope_scaling(const kern_rope *r, char *buf, size_t cap, int *at);

/* Append printf text to buf (cap bytes) at *at; -ENOSPC when full. */
int model_json_printf(char *buf, size_t cap, int *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
