/* arch_gpt_neox.c: the GPT-NeoX family (GPTNeoXForCausalLM: Pythia,
 * GPT-NeoX-20B).
 *
 *   x = embed_in(ids)
 *   per layer, parallel residual (use_parallel_residual, the default):
 *       x = x + dense(attention(RoPE(q, k), v of query_key_value(LN1(x))))
 *             + dense_4h_to_h(gelu(dense_h_to_4h(LN2(x))))
 *   or sequential: x += attn(LN1(x)); x += mlp(LN2(x))
 *   logits = LNf(x) embed_out^T
 *
 * RoPE turns the first rotary_pct of each head's dimensions (rotate_half
 * over those); GELU is the exact (erf) one. query_key_value holds each
 * head's q, k, v together: the loader regroups its rows into the blob's
 * q | k | v (MODEL_PERM_QKV_PER_HEAD).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "model_family.h"

static int neox_parse(const cJSON *o, const char *what, model_config *c)
{
    int rc = 0;
    double pct = 0.25; /* a double, as transformers computes with */
    FORWARD_IF(model_json_int(o, "vocab_size", MODEL_JSON_REQUIRED, &c->vocab_size, what));
    FORWARD_IF(model_json_int(o, "hidden_size", MODEL_JSON_REQUIRED, &c->hidden, what));
    FORWARD_IF(model_json_int(o, "intermediate_size", MODEL_JSON_REQUIRED, &c->ffn, what));
    FORWARD_IF(model_json_int(o, "num_hidden_layers", MODEL_JSON_REQUIRED, &c->n_layer, what));
    FORWARD_IF(model_json_int(o, "num_attention_heads", MODEL_JSON_REQUIRED, &c->n_head, what));
    FORWARD_IF(model_json_int(o, "max_position_embeddings", 2048, &c->max_pos, what));
    FORWARD_IF(model_json_float(o, "layer_norm_eps", 1e-5f, &c->ln_eps, what));
    FORWARD_IF(model_json_int(o, "bos_token_id", 0, &c->bos_id, what));
    FORWARD_IF(model_json_eos(o, 0, &c->eos_id, what));
    FORWARD_IF(model_json_int(o, "pad_token_id", -1, &c->pad_id, what));
    FORWARD_IF(model_json_bool(o, "tie_word_embeddings", 0, &c->tie_lm_head, what));
    FORWARD_IF(model_json_bool(o, "use_parallel_residual", 1, &c->parallel_residual, what));
    FORWARD_IF(model_json_bool(o, "attention_bias", 1, &c->qkv_bias, what));
    /* rotary_pct; transformers 5 calls it partial_rotary_factor */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    FORWARD_IF(model_json_double(cJSON_IsObject(rp) ? rp : o, "partial_rotary_factor", pct,
                                 &pct, what));
    FORWARD_IF(model_json_double(o, "rotary_pct", pct, &pct, what));
    const char *act = model_json_str(o, "hidden_act", what, &rc);
    FORWARD_IF(rc);
    RETURN_IF(act && strcmp(act, "gelu") != 0, -EINVAL,
              "%s: hidden_act \"%s\" is not supported (GPT-NeoX runs with the exact \"gelu\")",
              what, act);
    RETURN_IF(c->n_head <= 0 || c->hidden % c->n_head != 0, -EINVAL,
              "%s: hidden_size %d must be a multiple of num_attention_heads %d", what,
              c->hidden, c->n_head);
    RETURN_IF(pct <= 0 || pct > 1, -EINVAL, "%s: rotary_pct %g must be in (0, 1]", what, pct);
    c->n_kv_head = c->n_head;
    c->head_dim = c->hidden / c->n_head;
    /* int(head_size * rotary_pct) in double: in fp32, 10 x 0.7 gave 6 where
     * transformers gets 7 (found by tests/fuzz/fuzz_model_config.c) */
    c->rot_dims = (int)(c->head_dim * pct);
    c->o_bias = c->qkv_bias;
    c->mlp_bias = 1;
    c->norm = MODEL_NORM_LAYER;
    c->act = MODEL_ACT_GELU;
    c->pos = MODEL_POS_ROPE;
    return model_json_rope(o, what, "rotary_emb_base", 10000.0f, &c->rope);
}

/* The tensors of a Hugging Face GPTNeoXForCausalLM state dict, in its order. */
static int neox_tensors(const model_config *c, model_hf_tensor *out)
{
    int64_t d = c->hidden, f = c->ffn, V = c->vocab_size;
    model_hf_table tb = {out, 0, "gpt_neox.layers.%d."};
#define T(nm, lay, to, rr, cc, in, pm) model_hf_add(&tb, lay, nm, to, rr, cc, 0, in, pm)
    T("gpt_neox.embed_in.weight", -1, MODEL_G_TOK_EMB, V, d, 'n', 0);
    for (int l = 0; l < c->n_layer; l++) {
        T("input_layernorm.weight", l, MT_LN1_W, d, 0, '1', 0);
        T("input_layernorm.bias", l, MT_LN1_B, d, 0, '0', 0);
        T("post_attention_layernorm.weight", l, MT_LN2_W, d, 0, '1', 0);
        T("post_attention_layernorm.bias", l, MT_LN2_B, d, 0, '0', 0);
        T("attention.query_key_value.weight", l, MT_WQKV, 3 * d, d, 'n',
          MODEL_PERM_QKV_PER_HEAD);
        if (c->qkv_bias)
            T("attention.query_key_value.bias", l, MT_BQKV, 3 * d, 0, '0',
              MODEL_PERM_QKV_PER_HEAD);
        T("attention.dense.weight", l, MT_WO, d, d, 'n', 0);
        if (c->o_bias)
            T("attention.dense.bias", l, MT_BO, d, 0, '0', 0);
        T("mlp.dense_h_to_4h.weight", l, MT_W1, f, d, 'n', 0);
        T("mlp.dense_h_to_4h.bias", l, MT_B1, f, 0, '0', 0);
        T("mlp.dense_4h_to_h.weight", l, MT_W2, d, f, 'n', 0);
        T("mlp.dense_4h_to_h.bias", l, MT_B2, d, 0, '0', 0);
    }
    T("gpt_neox.final_layer_norm.weight", -1, MODEL_G_NORM_W, d, 0, '1', 0);
    T("gpt_neox.final_layer_norm.bias", -1, MODEL_G_NORM_B, d, 0, '0', 0);
    if (!c->tie_lm_head)
        T("embed_out.weight", -1, MODEL_G_LM_HEAD, V, d, 'n', 0);
#undef T
    return tb.n;
}

static int neox_config_json(const model_config *c, char *buf, size_t cap)
{
    /* rotary_pct exact enough that int(head_dim * pct) gives rot_dims back:
     * 8 / 33 at 7 digits came back as 7 */
    double pct = (double)c->rot_dims / c->head_dim;
    if ((int)(c->head_dim * pct) < c->rot_dims)
        pct = nextafter(pct, 2.0);
    int at = 0;
    char name[MODEL_JSON_NAME_MAX];
    FORWARD_IF(model_json_printf(buf, cap, &at,
        "{\n  \"_name_or_path\": \"%s\",\n  \"model_type\": \"gpt_neox\",\n"
        "  \"architectures\": [\"GPTNeoXForCausalLM\"],\n  \"vocab_size\": %d,\n"
        "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"max_position_embeddings\": %d,\n"
        "  \"rotary_pct\": %.17g,\n  \"rotary_emb_base\": %.7g,\n  \"layer_norm_eps\": %.7g,\n"
        "  \"use_parallel_residual\": %s,\n  \"attention_bias\": %s,\n"
        "  \"hidden_act\": \"gelu\",\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
        "  \"tie_word_embeddings\": %s,\n  \"attention_dropout\": 0.0,\n"
        "  \"hidden_dropout\": 0.0,\n",
        model_json_name(c, name), c->vocab_size, c->hidden, c->ffn, c->n_layer, c->n_head,
        c->max_pos, pct, c->rope.theta, c->ln_eps,
        c->parallel_residual ? "true" : "false", c->qkv_bias ? "true" : "false", c->bos_id,
        c->eos_id, c->tie_lm_head ? "true" : "false"));
    /* the scaling model_json_rope read (it was dropped: found by
     * tests/fuzz/fuzz_model_config.c) */
    FORWARD_IF(model_json_rope_scaling(&c->rope, buf, cap, &at));
    FORWARD_IF(model_json_printf(buf, cap, &at, "  \"torch_dtype\": \"float32\"\n}\n"));
    return at;
}

const model_family model_family_gpt_neox = {
    .name = "gpt_neox", .arch = "GPTNeoXForCausalLM",
    .parse = neox_parse, .tensors = neox_tensors, .config_json = neox_config_json,
};
