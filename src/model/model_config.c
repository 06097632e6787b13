/* model_config.c: OPT config.json parsing and the built-in shapes. */
#include "model_config.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "off.h"
#include "fh_config.h"

/* The embedded default model of `flexh2o make-model --config tiny`: small
 * enough to generate, load and run in a second, shaped like OPT. */
static const char tiny_config[] =
    "{\"_name_or_path\":\"flexh2o-tiny-opt\",\"model_type\":\"opt\","
    "\"architectures\":[\"OPTForCausalLM\"],\"vocab_size\":512,"
    "\"hidden_size\":64,\"num_hidden_layers\":4,\"num_attention_heads\":4,"
    "\"ffn_dim\":256,\"max_position_embeddings\":256,"
    "\"word_embed_proj_dim\":64,\"do_layer_norm_before\":true,"
    "\"activation_function\":\"relu\",\"enable_bias\":true,"
    "\"layer_norm_elementwise_affine\":true,\"bos_token_id\":2,"
    "\"eos_token_id\":2,\"pad_token_id\":1,\"tie_word_embeddings\":true,"
    "\"dropout\":0.0,\"attention_dropout\":0.0,\"init_std\":0.02,"
    "\"torch_dtype\":\"float32\"}";

static int get_int(const cJSON *o, const char *key, int def, int *out,
                   const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        RETURN_IF(def < 0, -EINVAL, "%s: missing \"%s\"; is this an OPT config.json?",
                  what, key);
        *out = def;
        return 0;
    }
    RETURN_IF(!cJSON_IsNumber(v) || v->valuedouble != (int)v->valuedouble,
              -EINVAL, "%s: \"%s\" must be an integer", what, key);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return def;
}

int model_config_parse(const char *json, size_t len, const char *what,
                       model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *o = cJSON_ParseWithLength(json, len);
    RETURN_IF(!o || !cJSON_IsObject(o), -EINVAL,
              "%s: not valid JSON; re-download or regenerate config.json", what);
    int rc = 0;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (cJSON_IsString(mt) && strcmp(mt->valuestring, "opt") != 0) {
        err_set(__FILE__, __LINE__,
                "%s: model_type \"%s\" is not supported; flexh2o runs OPT models",
                what, mt->valuestring);
        rc = -EINVAL;
        goto out;
    }
    int proj = 0;
    if ((rc = get_int(o, "vocab_size", -1, &cfg->vocab_size, what)) ||
        (rc = get_int(o, "hidden_size", -1, &cfg->hidden, what)) ||
        (rc = get_int(o, "num_hidden_layers", -1, &cfg->n_layer, what)) ||
        (rc = get_int(o, "num_attention_heads", -1, &cfg->n_head, what)) ||
        (rc = get_int(o, "ffn_dim", -1, &cfg->ffn, what)) ||
        (rc = get_int(o, "max_position_embeddings", 2048, &cfg->max_pos, what)) ||
        (rc = get_int(o, "word_embed_proj_dim", cfg->hidden, &proj, what)) ||
        (rc = get_int(o, "bos_token_id", 2, &cfg->bos_id, what)) ||
        (rc = get_int(o, "eos_token_id", 2, &cfg->eos_id, what)) ||
        (rc = get_int(o, "pad_token_id", 1, &cfg->pad_id, what)))
        goto out;
    if (cfg->vocab_size <= 0 || cfg->hidden <= 0 || cfg->n_layer <= 0 ||
        cfg->n_head <= 0 || cfg->ffn <= 0 || cfg->max_pos <= 0 ||
        cfg->hidden % cfg->n_head != 0) {
        err_set(__FILE__, __LINE__,
                "%s: inconsistent shape (hidden_size %d, heads %d, layers %d, "
                "ffn_dim %d, vocab %d); hidden_size must be a multiple of the heads",
                what, cfg->hidden, cfg->n_head, cfg->n_layer, cfg->ffn,
                cfg->vocab_size);
        rc = -EINVAL;
        goto out;
    }
    if (!get_bool(o, "do_layer_norm_before", 1) || proj != cfg->hidden) {
        err_set(__FILE__, __LINE__,
                "%s: post-LayerNorm OPT with a %d-wide embedding projection "
                "(opt-350m style) is not supported; use another OPT size",
                what, proj);
        rc = -EINVAL;
        goto out;
    }
    if (!get_bool(o, "enable_bias", 1) ||
        !get_bool(o, "layer_norm_elementwise_affine", 1)) {
        err_set(__FILE__, __LINE__,
                "%s: OPT without biases or LayerNorm affine weights is not supported",
                what);
        rc = -EINVAL;
        goto out;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "activation_function");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "relu") != 0) {
        err_set(__FILE__, __LINE__,
                "%s: activation_function \"%s\" is not supported (OPT uses relu)",
                what, act->valuestring);
        rc = -EINVAL;
        goto out;
    }
    cfg->head_dim = cfg->hidden / cfg->n_head;
    cfg->tie_lm_head = get_bool(o, "tie_word_embeddings", 1);
    cfg->ln_eps = 1e-5f;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "_name_or_path");
    snprintf(cfg->name, sizeof cfg->name, "%s",
             cJSON_IsString(nm) ? nm->valuestring : "opt");
out:
    cJSON_Delete(o);
    return rc;
}

int model_config_load(const char *path, model_config *cfg)
{
    char *buf;
    size_t len;
    FORWARD_IF(off_read_file(path, &buf, &len));
    int rc = model_config_parse(buf, len, path, cfg);
    free(buf);
    return rc;
}

int model_config_by_name(const char *name, model_config *cfg)
{
    if (strcmp(name, "tiny") == 0)
        return model_config_parse(tiny_config, sizeof tiny_config - 1, "tiny", cfg);
    char path[4096];
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".json") == 0)
        snprintf(path, sizeof path, "%s", name);
    else
        snprintf(path, sizeof path, "%s/configs/models/%s.json", FH_SOURCE_ROOT, name);
    struct stat st;
    RETURN_IF(stat(path, &st) != 0, -ENOENT,
              "unknown model shape \"%s\" (%s not found); use tiny, opt-125m, "
              "opt-1.3b, opt-2.7b, opt-6.7b, opt-13b, opt-30b, opt-66b, opt-175b "
              "or a config.json path", name, path);
    FORWARD_IF(model_config_load(path, cfg));
    if (strcmp(cfg->name, "opt") == 0)
        snprintf(cfg->name, sizeof cfg->name, "%s", name);
    return 0;
}

size_t model_config_params(const model_config *c)
{
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn;
    size_t layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d;
    size_t p = (size_t)c->n_layer * layer + (size_t)c->vocab_size * d +
               (size_t)(c->max_pos + 2) * d + 2 * d;
    if (!c->tie_lm_head)
        p += (size_t)c->vocab_size * d;
    return p;
}
