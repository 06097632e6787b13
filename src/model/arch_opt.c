/* arch_opt.c: the OPT family (facebook/opt-*, pre-LayerNorm; every size
 * but 350m): its config.json and its checkpoint's tensor names.
 *
 *   x = embed_tokens(ids) + embed_positions(pos + 2)
 *   per layer:  x += out_proj(attention(qkv_proj(LN1(x))))
 *               x += fc2(relu(fc1(LN2(x))))
 *   logits = LNf(x) E^T                                   (tied head)
 */
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "model_family.h"

static int opt_parse(const cJSON *o, const char *what, model_config *c)
{
    int proj = 0, before = 1, bias = 1, affine = 1, rc = 0;
    FORWARD_IF(model_json_int(o, "vocab_size", MODEL_JSON_REQUIRED, &c->vocab_size, what));
    FORWARD_IF(model_json_int(o, "hidden_size", MODEL_JSON_REQUIRED, &c->hidden, what));
    FORWARD_IF(model_json_int(o, "num_hidden_layers", MODEL_JSON_REQUIRED, &c->n_layer, what));
    FORWARD_IF(model_json_int(o, "num_attention_heads", MODEL_JSON_REQUIRED, &c->n_head, what));
    FORWARD_IF(model_json_int(o, "ffn_dim", MODEL_JSON_REQUIRED, &c->ffn, what));
    FORWARD_IF(model_json_int(o, "max_position_embeddings", 2048, &c->max_pos, what));
    FORWARD_IF(model_json_int(o, "word_embed_proj_dim", c->hidden, &proj, what));
    FORWARD_IF(model_json_int(o, "bos_token_id", 2, &c->bos_id, what));
    FORWARD_IF(model_json_eos(o, 2, &c->eos_id, what));
    FORWARD_IF(model_json_int(o, "pad_token_id", 1, &c->pad_id, what));
    FORWARD_IF(model_json_bool(o, "do_layer_norm_before", 1, &before, what));
    FORWARD_IF(model_json_bool(o, "enable_bias", 1, &bias, what));
    FORWARD_IF(model_json_bool(o, "layer_norm_elementwise_affine", 1, &affine, what));
    FORWARD_IF(model_json_bool(o, "tie_word_embeddings", 1, &c->tie_lm_head, what));
    RETURN_IF(!before || proj != c->hidden, -EINVAL,
              "%s: post-LayerNorm OPT with a %d-wide embedding projection (opt-350m style: "
              "do_layer_norm_before, word_embed_proj_dim) is not supported; use another OPT "
              "size", what, proj);
    RETURN_IF(!bias || !affine, -EINVAL,
              "%s: OPT without biases or LayerNorm affine weights (enable_bias, "
              "layer_norm_elementwise_affine) is not supported", what);
    const char *act = model_json_str(o, "activation_function", what, &rc);
    FORWARD_IF(rc);
    RETURN_IF(act && strcmp(act, "relu") != 0, -EINVAL,
              "%s: activation_function \"%s\" is not supported (OPT uses relu)", what, act);
    RETURN_IF(c->n_head <= 0 || c->hidden % c->n_head != 0, -EINVAL,
              "%s: hidden_size %d must be a multiple of num_attention_heads %d", what,
              c->hidden, c->n_head);
    c->n_kv_head = c->n_head;
    c->head_dim = c->hidden / c->n_head;
    c->ln_eps = 1e-5f;
    c->norm = MODEL_NORM_LAYER;
    c->act = MODEL_ACT_RELU;
    c->pos = MODEL_POS_LEARNED;
    c->qkv_bias = c->o_bias = c->mlp_bias = 1;
    return 0;
}

/* The tensors of a Hugging Face OPTForCausalLM state dict, in its order. */
static int opt_tensors(const model_config *c, model_hf_tensor *out)
{
    int64_t d = c->hidden, f = c->ffn, V = c->vocab_size;
    model_hf_table tb = {out, 0, "model.decoder.layers.%d."};
#define T(nm, lay, to, rr, cc, of, in) model_hf_add(&tb, lay, nm, to, rr, cc, (size_t)(of), in, 0)
    T("model.decoder.embed_tokens.weight", -1, MODEL_G_TOK_EMB, V, d, 0, 'n');
    T("model.decoder.embed_positions.weight", -1, MODEL_G_POS_EMB,
      c->max_pos + KERN_OPT_POS_OFFSET, d, 0, 'n');
    T("model.decoder.final_layer_norm.weight", -1, MODEL_G_NORM_W, d, 0, 0, '1');
    T("model.decoder.final_layer_norm.bias", -1, MODEL_G_NORM_B, d, 0, 0, '0');
    for (int l = 0; l < c->n_layer; l++) {
        T("self_attn.k_proj.weight", l, MT_WQKV, d, d, d * d, 'n');
        T("self_attn.k_proj.bias", l, MT_BQKV, d, 0, d, '0');
        T("self_attn.v_proj.weight", l, MT_WQKV, d, d, 2 * d * d, 'n');
        T("self_attn.v_proj.bias", l, MT_BQKV, d, 0, 2 * d, '0');
        T("self_attn.q_proj.weight", l, MT_WQKV, d, d, 0, 'n');
        T("self_attn.q_proj.bias", l, MT_BQKV, d, 0, 0, '0');
        T("self_attn.out_proj.weight", l, MT_WO, d, d, 0, 'n');
        T("self_attn.out_proj.bias", l, MT_BO, d, 0, 0, '0');
        T("self_attn_layer_norm.weight", l, MT_LN1_W, d, 0, 0, '1');
        T("self_attn_layer_norm.bias", l, MT_LN1_B, d, 0, 0, '0');
        T("fc1.weight", l, MT_W1, f, d, 0, 'n');
        T("fc1.bias", l, MT_B1, f, 0, 0, '0');
        T("fc2.weight", l, MT_W2, d, f, 0, 'n');
        T("fc2.bias", l, MT_B2, d, 0, 0, '0');
        T("final_layer_norm.weight", l, MT_LN2_W, d, 0, 0, '1');
        T("final_layer_norm.bias", l, MT_LN2_B, d, 0, 0, '0');
    }
    if (!c->tie_lm_head)
        T("lm_head.weight", -1, MODEL_G_LM_HEAD, V, d, 0, 'n');
#undef T
    return tb.n;
}

static int opt_config_json(const model_config *c, char *buf, size_t cap)
{
    int at = 0;
    char name[MODEL_JSON_NAME_MAX];
    FORWARD_IF(model_json_printf(buf, cap, &at,
        "{\n  \"_name_or_path\": \"%s\",\n  \"model_type\": \"opt\",\n"
        "  \"architectures\": [\"OPTForCausalLM\"],\n  \"vocab_size\": %d,\n"
        "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"ffn_dim\": %d,\n"
        "  \"max_position_embeddings\": %d,\n  \"word_embed_proj_dim\": %d,\n"
        "  \"do_layer_norm_before\": true,\n  \"activation_function\": \"relu\",\n"
        "  \"enable_bias\": true,\n  \"layer_norm_elementwise_affine\": true,\n"
        "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"pad_token_id\": %d,\n"
        "  \"tie_word_embeddings\": %s,\n  \"dropout\": 0.0,\n"
        "  \"attention_dropout\": 0.0,\n  \"torch_dtype\": \"float32\"\n}\n",
        model_json_name(c, name), c->vocab_size, c->hidden, c->n_layer, c->n_head, c->ffn,
        c->max_pos, c->hidden, c->bos_id, c->eos_id, c->pad_id, c->tie_lm_head ? "true" : "false"));
    return at;
}

const model_family model_family_opt = {
    .name = "opt",
    .arch = "OPTForCausalLM",
    .parse = opt_parse,
    .tensors = opt_tensors,
    .config_json = opt_config_json,
};
