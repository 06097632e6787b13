/* arch_llama.c: the Llama family and its close kin, one block for all:
 * llama (Llama 2, 3.x), mistral (Llama with a sliding window) and qwen2
 * (Qwen2, Qwen2.5: Llama with q/k/v biases).
 *
 *   x = embed_tokens(ids)
 *   per layer:  x += o_proj(attention(RoPE(q, k), v of qkv_proj(RMSNorm1(x))))
 *               h = RMSNorm2(x); x += down_proj(silu(gate_proj(h)) * up_proj(h))
 *   logits = RMSNormf(x) lm_head^T               (lm_head: embed_tokens when tied)
 *
 * Grouped-query attention: num_key_value_heads KV heads, each shared by a
 * group of query heads (DESIGN.md: the cache and H2O's scores per KV head).
 */
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "model_family.h"

/* The defaults of transformers' LlamaConfig / MistralConfig / Qwen2Config
 * that differ between them. */
typedef struct llama_kind {
    int max_pos, bos, eos;
    int qkv_bias;        /* qwen2: q, k, v always have biases */
    int has_window;      /* mistral: sliding_window */
} llama_kind;

static const llama_kind kind_llama = {2048, 1, 2, 0, 0};
static const llama_kind kind_mistral = {4096 * 32, 1, 2, 0, 1};
static const llama_kind kind_qwen2 = {32768, -1, -1, 1, 0};

static const llama_kind *kind_of(const model_config *c)
{
    return c->family == &model_family_mistral ? &kind_mistral
         : c->family == &model_family_qwen2   ? &kind_qwen2
                                              : &kind_llama;
}

static int llama_parse(const cJSON *o, const char *what, model_config *c)
{
    const llama_kind *k = kind_of(c);
    int rc = 0, hd_def = 0;
    FORWARD_IF(model_json_int(o, "vocab_size", MODEL_JSON_REQUIRED, &c->vocab_size, what));
    FORWARD_IF(model_json_int(o, "hidden_size", MODEL_JSON_REQUIRED, &c->hidden, what));
    FORWARD_IF(model_json_int(o, "intermediate_size", MODEL_JSON_REQUIRED, &c->ffn, what));
    FORWARD_IF(model_json_int(o, "num_hidden_layers", MODEL_JSON_REQUIRED, &c->n_layer, what));
    FORWARD_IF(model_json_int(o, "num_attention_heads", MODEL_JSON_REQUIRED, &c->n_head, what));
    FORWARD_IF(model_json_int(o, "num_key_value_heads", c->n_head, &c->n_kv_head, what));
    RETURN_IF(c->n_head <= 0, -EINVAL, "%s: num_attention_heads must be positive", what);
    hd_def = c->hidden % c->n_head == 0 ? c->hidden / c->n_head : 0;
    FORWARD_IF(model_json_int(o, "head_dim", hd_def, &c->head_dim, what));
    FORWARD_IF(model_json_int(o, "max_position_embeddings", k->max_pos, &c->max_pos, what));
    FORWARD_IF(model_json_float(o, "rms_norm_eps", 1e-6f, &c->ln_eps, what));
    FORWARD_IF(model_json_int(o, "bos_token_id", k->bos, &c->bos_id, what));
    FORWARD_IF(model_json_eos(o, k->eos, &c->eos_id, what));
    FORWARD_IF(model_json_int(o, "pad_token_id", -1, &c->pad_id, what));
    FORWARD_IF(model_json_bool(o, "tie_word_embeddings", 0, &c->tie_lm_head, what));
    FORWARD_IF(model_json_bool(o, "attention_bias", k->qkv_bias, &c->qkv_bias, what));
    FORWARD_IF(model_json_bool(o, "mlp_bias", 0, &c->mlp_bias, what));
    c->o_bias = c->family == &model_family_qwen2 ? 0 : c->qkv_bias;
    if (c->family == &model_family_qwen2)
        c->qkv_bias = 1;
    const char *act = model_json_str(o, "hidden_act", what, &rc);
    FORWARD_IF(rc);
    RETURN_IF(act && strcmp(act, "silu") != 0, -EINVAL,
              "%s: hidden_act \"%s\" is not supported (the %s MLP is SwiGLU with silu)", what,
              act, c->family->name);
    if (k->has_window) {
        FORWARD_IF(model_json_int(o, "sliding_window", 0, &c->sliding_window, what));
        RETURN_IF(c->sliding_window < 0, -EINVAL, "%s: sliding_window must be positive",
                  what);
    }
    if (c->family == &model_family_qwen2) {
        int sw = 0;
        FORWARD_IF(model_json_bool(o, "use_sliding_window", 0, &sw, what));
        RETURN_IF(sw, -EINVAL, "%s: \"use_sliding_window\" true (a sliding window on some "
                  "layers) is not supported; set it false to run with full attention",
                  what);
    }
    c->norm = MODEL_NORM_RMS;
    c->act = MODEL_ACT_SWIGLU;
    c->pos = MODEL_POS_ROPE;
    c->rot_dims = c->head_dim;
    return model_json_rope(o, what, "rope_theta", 10000.0f, &c->rope);
}

/* The tensors of a Hugging Face LlamaForCausalLM (MistralForCausalLM,
 * Qwen2ForCausalLM) state dict, in its order. */
static int llama_tensors(const model_config *c, model_hf_tensor *out)
{
    int64_t d = c->hidden, f = c->ffn, V = c->vocab_size, hd = c->head_dim;
    int64_t qd = (int64_t)c->n_head * hd, kd = (int64_t)c->n_kv_head * hd;
    model_hf_table tb = {out, 0, "model.layers.%d."};
#define T(nm, lay, to, rr, cc, of, in) model_hf_add(&tb, lay, nm, to, rr, cc, (size_t)(of), in, 0)
    T("model.embed_tokens.weight", -1, MODEL_G_TOK_EMB, V, d, 0, 'n');
    T("model.norm.weight", -1, MODEL_G_NORM_W, d, 0, 0, '1');
    for (int l = 0; l < c->n_layer; l++) {
        T("input_layernorm.weight", l, MT_LN1_W, d, 0, 0, '1');
        T("self_attn.q_proj.weight", l, MT_WQKV, qd, d, 0, 'n');
        T("self_attn.k_proj.weight", l, MT_WQKV, kd, d, qd * d, 'n');
        T("self_attn.v_proj.weight", l, MT_WQKV, kd, d, (qd + kd) * d, 'n');
        if (c->qkv_bias) {
            T("self_attn.q_proj.bias", l, MT_BQKV, qd, 0, 0, '0');
            T("self_attn.k_proj.bias", l, MT_BQKV, kd, 0, qd, '0');
            T("self_attn.v_proj.bias", l, MT_BQKV, kd, 0, qd + kd, '0');
        }
        T("self_attn.o_proj.weight", l, MT_WO, d, qd, 0, 'n');
        if (c->o_bias)
            T("self_attn.o_proj.bias", l, MT_BO, d, 0, 0, '0');
        T("post_attention_layernorm.weight", l, MT_LN2_W, d, 0, 0, '1');
        T("mlp.gate_proj.weight", l, MT_WG, f, d, 0, 'n');
        T("mlp.up_proj.weight", l, MT_W1, f, d, 0, 'n');
        T("mlp.down_proj.weight", l, MT_W2, d, f, 0, 'n');
        if (c->mlp_bias) {
            T("mlp.gate_proj.bias", l, MT_BG, f, 0, 0, '0');
            T("mlp.up_proj.bias", l, MT_B1, f, 0, 0, '0');
            T("mlp.down_proj.bias", l, MT_B2, d, 0, 0, '0');
        }
    }
    if (!c->tie_lm_head)
        T("lm_head.weight", -1, MODEL_G_LM_HEAD, V, d, 0, 'n');
#undef T
    return tb.n;
}

static int llama_config_json(const model_config *c, char *buf, size_t cap)
{
    int at = 0;
    char name[MODEL_JSON_NAME_MAX];
    const char *arch = c->family->arch;
    FORWARD_IF(model_json_printf(buf, cap, &at,
        "{\n  \"_name_or_path\": \"%s\",\n  \"model_type\": \"%s\",\n"
        "  \"architectures\": [\"%s\"],\n  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n"
        "  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n"
        "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n"
        "  \"rms_norm_eps\": %.7g,\n  \"hidden_act\": \"silu\",\n  \"rope_theta\": %.7g,\n",
        model_json_name(c, name), c->family->name, arch, c->vocab_size, c->hidden, c->ffn,
        c->n_layer, c->n_head, c->n_kv_head, c->head_dim, c->max_pos, c->ln_eps, c->rope.theta));
    FORWARD_IF(model_json_rope_scaling(&c->rope, buf, cap, &at));
    if (c->family == &model_family_mistral) {
        if (c->sliding_window)
            FORWARD_IF(model_json_printf(buf, cap, &at, "  \"sliding_window\": %d,\n",
                                         c->sliding_window));
        else
            FORWARD_IF(model_json_printf(buf, cap, &at, "  \"sliding_window\": null,\n"));
    }
    if (c->family == &model_family_qwen2)
        FORWARD_IF(model_json_printf(buf, cap, &at, "  \"use_sliding_window\": false,\n"));
    else
        FORWARD_IF(model_json_printf(buf, cap, &at,
            "  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n",
            c->qkv_bias ? "true" : "false", c->mlp_bias ? "true" : "false"));
    if (c->bos_id >= 0)
        FORWARD_IF(model_json_printf(buf, cap, &at, "  \"bos_token_id\": %d,\n", c->bos_id));
    if (c->eos_id >= 0)
        FORWARD_IF(model_json_printf(buf, cap, &at, "  \"eos_token_id\": %d,\n", c->eos_id));
    FORWARD_IF(model_json_printf(buf, cap, &at,
        "  \"tie_word_embeddings\": %s,\n  \"attention_dropout\": 0.0,\n"
        "  \"torch_dtype\": \"float32\"\n}\n", c->tie_lm_head ? "true" : "false"));
    return at;
}

const model_family model_family_llama = {
    .name = "llama", .arch = "LlamaForCausalLM",
    .parse = llama_parse, .tensors = llama_tensors, .config_json = llama_config_json,
};
const model_family model_family_mistral = {
    .name = "mistral", .arch = "MistralForCausalLM",
    .parse = llama_parse, .tensors = llama_tensors, .config_json = llama_config_json,
};
const model_family model_family_qwen2 = {
    .name = "qwen2", .arch = "Qwen2ForCausalLM",
    .parse = llama_parse, .tensors = llama_tensors, .config_json = llama_config_json,
};
