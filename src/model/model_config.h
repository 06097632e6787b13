/* model_config.h: the shape of an OPT model, read from a Hugging Face
 * config.json (a model directory, or configs/models/<name>.json for
 * --dummy and make-model). */
#ifndef FH_MODEL_CONFIG_H
#define FH_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct model_config {
    char name[64];        /* _name_or_path, or the file's base name */
    int vocab_size;       /* V */
    int hidden;           /* d = n_head * head_dim */
    int n_layer;
    int n_head;
    int head_dim;
    int ffn;              /* ffn_dim */
    int max_pos;          /* max_position_embeddings */
    int bos_id, eos_id, pad_id;
    int tie_lm_head;      /* lm_head shares embed_tokens */
    float ln_eps;         /* 1e-5 for OPT */
} model_config;

/* Parse config.json text. `what` names the file in messages.
 * Refuses what the engine cannot run (post-LayerNorm models such as
 * opt-350m, a word_embed_proj_dim different from hidden_size, activations
 * other than relu) with a message that says so.
 * @return 0 or -EINVAL. */
int model_config_parse(const char *json, size_t len, const char *what,
                       model_config *cfg);
/* Read and parse a config.json file. @return 0, -ENOENT or -EINVAL. */
int model_config_load(const char *path, model_config *cfg);
/* Resolve a model shape name ("tiny", "opt-125m", ... or a path to a
 * .json file): "tiny" is built in, the others come from configs/models/ in
 * the source tree. @return 0 or -errno with a message listing the names. */
int model_config_by_name(const char *name, model_config *cfg);

/* Parameter count (weights + biases + embeddings). */
size_t model_config_params(const model_config *cfg);

#endif
