/* model_config.c: config.json parsing (the family's reader plus what
 * every family checks), the helpers the readers share, and the built-in
 * shapes. */
#include "model_config.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "model_family.h"
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

/* ------------------------------------------------ readers for the families */

static const cJSON *item(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* The range of every integer a family reads from config.json. The bounds
 * keep every size computed from them (elements of a layer, the embedding
 * table, the positions) far from overflow, and are far above any published
 * model: 256k vocabularies, 16k-wide hidden states, 53k-wide MLPs, 126
 * layers, 128 heads, 10M positions. A key not listed takes any int. */
static const struct json_range {
    const char *key;
    int lo, hi;
} json_ranges[] = {
    {"vocab_size", 1, MODEL_MAX_VOCAB},
    {"hidden_size", 1, 65536},
    {"word_embed_proj_dim", 1, 65536},
    {"intermediate_size", 1, 1 << 20},
    {"ffn_dim", 1, 1 << 20},
    {"num_hidden_layers", 1, 1024},
    {"num_attention_heads", 1, 1024},
    {"num_key_value_heads", 1, 1024},
    {"head_dim", 1, 1024},
    {"max_position_embeddings", 1, 1 << 24},
    {"original_max_position_embeddings", 1, 1 << 24},
    {"sliding_window", 0, 1 << 24},
    /* token ids: -1 is how some configs say "none"; check_shape holds
     * the others to the vocabulary */
    {"bos_token_id", -1, MODEL_MAX_VOCAB - 1},
    {"eos_token_id", -1, MODEL_MAX_VOCAB - 1},
    {"pad_token_id", -1, MODEL_MAX_VOCAB - 1},
};

/* v as an int in key's range (any int for an unlisted key). The range is
 * checked on the double, before the cast (a cast of a double out of int's
 * range is undefined). @return 0 or -EINVAL naming file, field and range. */
static int json_to_int(const cJSON *v, const char *key, int *out, const char *what)
{
    int lo = INT_MIN, hi = INT_MAX;
    for (size_t i = 0; i < sizeof json_ranges / sizeof *json_ranges; i++)
        if (strcmp(json_ranges[i].key, key) == 0) {
            lo = json_ranges[i].lo;
            hi = json_ranges[i].hi;
        }
    const char *none = lo == -1 ? " (or null for none)" : "";
    RETURN_IF(!cJSON_IsNumber(v), -EINVAL, "%s: \"%s\" must be an integer from %d to %d%s",
              what, key, lo, hi, none);
    double d = v->valuedouble;
    RETURN_IF(!(d >= lo && d <= hi) || d != floor(d), -EINVAL,
              "%s: \"%s\" is %.17g; it must be an integer from %d to %d%s", what, key, d, lo,
              hi, none);
    *out = (int)d;
    return 0;
}

int model_json_int(const cJSON *o, const char *key, int def, int *out, const char *what)
{
    const cJSON *v = item(o, key);
    if (!v) {
        RETURN_IF(def == MODEL_JSON_REQUIRED, -EINVAL,
                  "%s: missing \"%s\"; is this the model's Hugging Face config.json?", what,
                  key);
        *out = def;
        return 0;
    }
    return json_to_int(v, key, out, what);
}

int model_json_float(const cJSON *o, const char *key, float def, float *out, const char *what)
{
    const cJSON *v = item(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    /* a norm's epsilon is small and positive; any other number must have
     * a float (the cast of a double past FLT_MAX is undefined); RoPE's
     * parameters are checked as a whole by kern_rope_inv_freq */
    int eps = strcmp(key, "rms_norm_eps") == 0 || strcmp(key, "layer_norm_eps") == 0;
    double lo = eps ? 0 : -FLT_MAX, hi = eps ? 1 : FLT_MAX;
    RETURN_IF(!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi), -EINVAL,
              "%s: \"%s\" must be a number from %g to %g", what, key, lo, hi);
    *out = (float)v->valuedouble;
    return 0;
}

int model_json_double(const cJSON *o, const char *key, double def, double *out, const char *what)
{
    const cJSON *v = item(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    RETURN_IF(!cJSON_IsNumber(v) || !isfinite(v->valuedouble), -EINVAL,
              "%s: \"%s\" must be a finite number", what, key);
    *out = v->valuedouble;
    return 0;
}

int model_json_bool(const cJSON *o, const char *key, int def, int *out, const char *what)
{
    const cJSON *v = item(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    RETURN_IF(!cJSON_IsBool(v), -EINVAL, "%s: \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

const char *model_json_str(const cJSON *o, const char *key, const char *what, int *rc)
{
    const cJSON *v = item(o, key);
    if (v && !cJSON_IsString(v)) {
        err_set(__FILE__, __LINE__, "%s: \"%s\" must be a string", what, key);
        *rc = -EINVAL;
        return NULL;
    }
    return v ? v->valuestring : NULL;
}

int model_json_eos(const cJSON *o, int def, int *out, const char *what)
{
    const cJSON *v = item(o, "eos_token_id");
    if (cJSON_IsArray(v)) {
        if (!v->child) {
            *out = def;
            return 0;
        }
        for (const cJSON *e = v->child; e; e = e->next)
            FORWARD_IF(json_to_int(e, "eos_token_id", out, what));
        return json_to_int(v->child, "eos_token_id", out, what);
    }
    return model_json_int(o, "eos_token_id", def, out, what);
}

int model_json_rope(const cJSON *o, const char *what, const char *theta_key, float theta_def,
                    kern_rope *r)
{
    const cJSON *rp = item(o, "rope_parameters"); /* transformers 5 */
    RETURN_IF(rp && !cJSON_IsObject(rp), -EINVAL, "%s: \"rope_parameters\" must be an object",
              what);
    const cJSON *rs = item(o, "rope_scaling") ? item(o, "rope_scaling") : rp;
    memset(r, 0, sizeof *r);
    r->type = KERN_ROPE_DEFAULT;
    r->factor = 1.0f;
    const cJSON *th = item(o, "rope_theta") ? o : item(o, theta_key) ? o : rp;
    const char *tk = item(o, "rope_theta") || !item(o, theta_key) ? "rope_theta" : theta_key;
    FORWARD_IF(model_json_float(th ? th : o, tk, theta_def, &r->theta, what));
    if (!rs)
        return 0;
    RETURN_IF(!cJSON_IsObject(rs), -EINVAL, "%s: \"rope_scaling\" must be an object or null",
              what);
    int rc = 0;
    const char *type = model_json_str(rs, "rope_type", what, &rc);
    if (!type)
        type = model_json_str(rs, "type", what, &rc);
    FORWARD_IF(rc);
    if (!type || strcmp(type, "default") == 0)
        return 0;
    if (strcmp(type, "linear") == 0) {
        r->type = KERN_ROPE_LINEAR;
        return model_json_float(rs, "factor", 1.0f, &r->factor, what);
    }
    RETURN_IF(strcmp(type, "llama3") != 0, -EINVAL,
              "%s: \"rope_scaling\" type \"%s\" is not supported (only \"linear\" and "
              "\"llama3\" are)", what, type);
    r->type = KERN_ROPE_LLAMA3;
    FORWARD_IF(model_json_float(rs, "factor", 8.0f, &r->factor, what));
    FORWARD_IF(model_json_float(rs, "low_freq_factor", 1.0f, &r->low_freq_factor, what));
    FORWARD_IF(model_json_float(rs, "high_freq_factor", 4.0f, &r->high_freq_factor, what));
    return model_json_int(rs, "original_max_position_embeddings", 8192, &r->orig_max_pos, what);
}

int model_json_common(const cJSON *o, const char *what, model_config *c)
{
    static const char *const refused[][2] = {
        {"quantization_config", "a quantized checkpoint; use its fp16/bf16/fp32 weights"},
        {"rope_parameters_per_layer", "per-layer RoPE"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        RETURN_IF(item(o, refused[i][0]), -EINVAL,
                  "%s: \"%s\" is not supported (%s)", what, refused[i][0], refused[i][1]);
    int rc = 0;
    const char *nm = model_json_str(o, "_name_or_path", what, &rc);
    FORWARD_IF(rc);
    snprintf(c->name, sizeof c->name, "%s", nm && *nm ? nm : c->family->name);
    return 0;
}

const char *model_json_name(const model_config *c, char *buf)
{
    /* _name_or_path comes from the user's config.json: a Windows path's
     * backslashes written raw made an invalid config.json (found by
     * tests/fuzz/fuzz_model_config.c) */
    size_t o = 0;
    for (const unsigned char *s = (const unsigned char *)c->name; *s; s++) {
        if (*s == '"' || *s == '\\')
            o += (size_t)sprintf(buf + o, "\\%c", *s);
        else if (*s < 0x20)
            o += (size_t)sprintf(buf + o, "\\u%04x", *s);
        else
            buf[o++] = (char)*s;
    }
    buf[o] = 0;
    return buf;
}

int model_json_rope_scaling(const kern_rope *r, char *buf, size_t cap, int *at)
{
    if (r->type == KERN_ROPE_LINEAR)
        return model_json_printf(buf, cap, at,
            "  \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": %.7g},\n", r->factor);
    if (r->type == KERN_ROPE_LLAMA3)
        return model_json_printf(buf, cap, at,
            "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %.7g, "
            "\"low_freq_factor\": %.7g, \"high_freq_factor\": %.7g, "
            "\"original_max_position_embeddings\": %d},\n",
            r->factor, r->low_freq_factor, r->high_freq_factor, r->orig_max_pos);
    return model_json_printf(buf, cap, at, "  \"rope_scaling\": null,\n");
}

int model_json_printf(char *buf, size_t cap, int *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *at, cap - (size_t)*at, fmt, ap);
    va_end(ap);
    RETURN_IF(n < 0 || (size_t)n >= cap - (size_t)*at, -ENOSPC,
              "internal: config.json text over %zu bytes", cap);
    *at += n;
    return 0;
}

/* ------------------------------------------------------------ parsing */

static const model_family *const families[] = {
    &model_family_opt, &model_family_llama, &model_family_mistral, &model_family_qwen2,
    &model_family_gpt_neox,
};
#define N_FAMILIES (sizeof families / sizeof *families)

/* The family of config o: model_type, else architectures[0], else OPT
 * (configs from before model_type). */
static int family_of(const cJSON *o, const char *what, const model_family **out)
{
    int rc = 0;
    const char *mt = model_json_str(o, "model_type", what, &rc);
    FORWARD_IF(rc);
    const cJSON *ar = item(o, "architectures");
    const char *arch = cJSON_IsArray(ar) && cJSON_IsString(ar->child) ? ar->child->valuestring
                                                                      : NULL;
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (mt ? strcmp(mt, families[i]->name) == 0
               : arch && strcmp(arch, families[i]->arch) == 0) {
            *out = families[i];
            return 0;
        }
    RETURN_IF(mt || arch, -EINVAL,
              "%s: model_type \"%s\" is not supported; flexh2o runs opt, llama, mistral, "
              "qwen2 and gpt_neox models", what, mt ? mt : arch);
    *out = &model_family_opt;
    return 0;
}

/* What every family's shape must satisfy. */
static int check_shape(const model_config *c, const char *what)
{
    RETURN_IF(c->vocab_size <= 0 || c->hidden <= 0 || c->n_layer <= 0 || c->n_head <= 0 ||
              c->n_kv_head <= 0 || c->head_dim <= 0 || c->ffn <= 0 || c->max_pos <= 0,
              -EINVAL, "%s: inconsistent shape (hidden_size %d, heads %d, KV heads %d, "
              "head_dim %d, layers %d, intermediate %d, vocab %d, max positions %d): every "
              "one must be positive", what, c->hidden, c->n_head, c->n_kv_head, c->head_dim,
              c->n_layer, c->ffn, c->vocab_size, c->max_pos);
    /* the ids the engine feeds or stops on index the embedding table */
    const struct {
        const char *key;
        int id;
    } ids[] = {{"bos_token_id", c->bos_id}, {"eos_token_id", c->eos_id},
               {"pad_token_id", c->pad_id}};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++)
        RETURN_IF(ids[i].id < -1 || ids[i].id >= c->vocab_size, -EINVAL,
                  "%s: \"%s\" %d is not in the vocabulary (vocab_size %d): it must be from 0 "
                  "to %d, or null for none", what, ids[i].key, ids[i].id, c->vocab_size,
                  c->vocab_size - 1);
    RETURN_IF(c->n_head % c->n_kv_head != 0, -EINVAL,
              "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", what,
              c->n_head, c->n_kv_head);
    if (c->pos == MODEL_POS_ROPE) {
        RETURN_IF(c->rot_dims <= 0 || c->rot_dims % 2 || c->rot_dims > c->head_dim, -EINVAL,
                  "%s: %d rotary dimensions of a %d-wide head: the rotary fraction must "
                  "give an even count from 2 to head_dim", what, c->rot_dims, c->head_dim);
        float inv[512];
        RETURN_IF(c->rot_dims / 2 > (int)(sizeof inv / sizeof *inv), -EINVAL,
                  "%s: head_dim %d is above the 1024 supported", what, c->head_dim);
        FORWARD_IF(kern_rope_inv_freq(inv, c->rot_dims, &c->rope));
    }
    return 0;
}

int model_config_parse(const char *json, size_t len, const char *what,
                       model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *o = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(o)) {
        int json = o != NULL;
        cJSON_Delete(o);
        RETURN_IF(1, -EINVAL, "%s: %s; re-download or regenerate config.json", what,
                  json ? "not a JSON object" : "not valid JSON");
    }
    const model_family *f = NULL;
    int rc = family_of(o, what, &f);
    if (rc == 0) {
        cfg->family = f;
        rc = f->parse(o, what, cfg);
    }
    if (rc == 0)
        rc = model_json_common(o, what, cfg);
    if (rc == 0)
        rc = check_shape(cfg, what);
    cJSON_Delete(o);
    return rc;
}

int model_config_json(const model_config *c, char *buf, size_t cap)
{
    return c->family->config_json(c, buf, cap);
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
              "unknown model shape \"%s\" (%s not found); use tiny, a name from "
              "configs/models/ (opt-6.7b, llama-3.1-8b, qwen2.5-7b, pythia-12b, ...) "
              "or a config.json path", name, path);
    FORWARD_IF(model_config_load(path, cfg));
    if (strcmp(cfg->name, cfg->family->name) == 0)
        snprintf(cfg->name, sizeof cfg->name, "%s", name);
    return 0;
}
