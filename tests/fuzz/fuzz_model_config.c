/* fuzz_model_config.c: config.json (model_config_parse: the family from
 * model_type or architectures, each family's fields, rope_scaling, the
 * shape checks), then what is derived from an accepted config: the
 * parameter count and the scheduler's shape (model_sched_shape), and the
 * config written back (model_config_json, what make-model writes).
 *
 * Checked for any input: an accepted config written back parses to the
 * same config (the floats to the 7 digits model_config_json prints; not
 * pad_id, which nothing uses and the Llama family does not write). */
#include <math.h>
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "model.h"
#include "model_config.h"

static int near(float a, float b)
{
    return a == b || fabsf(a - b) <= 1e-6f * fabsf(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    model_config c, back;
    if (model_config_parse((const char *)data, size, "config.json", &c) < 0)
        return 0;
    (void)model_config_params(&c);
    sched_model sm;
    model_sched_shape(&c, &sm);
    static char buf[1 << 16];
    int n = model_config_json(&c, buf, sizeof buf);
    FUZZ_CHECK(n > 0, "model_config_json: %s", err_msg());
    FUZZ_CHECK(model_config_parse(buf, (size_t)n, "written", &back) == 0,
               "the config written back does not parse: %s\n%s", err_msg(), buf);
    FUZZ_CHECK(strcmp(c.name, back.name) == 0 && c.family == back.family &&
                   c.vocab_size == back.vocab_size && c.hidden == back.hidden &&
                   c.n_layer == back.n_layer && c.n_head == back.n_head &&
                   c.n_kv_head == back.n_kv_head && c.head_dim == back.head_dim &&
                   c.ffn == back.ffn && c.max_pos == back.max_pos && c.bos_id == back.bos_id &&
                   c.eos_id == back.eos_id &&
                   c.tie_lm_head == back.tie_lm_head && c.norm == back.norm &&
                   c.act == back.act && c.pos == back.pos && c.qkv_bias == back.qkv_bias &&
                   c.o_bias == back.o_bias && c.mlp_bias == back.mlp_bias &&
                   c.parallel_residual == back.parallel_residual &&
                   c.rot_dims == back.rot_dims && c.sliding_window == back.sliding_window &&
                   c.rope.type == back.rope.type && c.rope.orig_max_pos == back.rope.orig_max_pos,
               "the config written back differs:\n%s", buf);
    FUZZ_CHECK(near(c.ln_eps, back.ln_eps) && near(c.rope.theta, back.rope.theta) &&
                   near(c.rope.factor, back.rope.factor) &&
                   near(c.rope.low_freq_factor, back.rope.low_freq_factor) &&
                   near(c.rope.high_freq_factor, back.rope.high_freq_factor),
               "the floats of the config written back differ:\n%s", buf);
    return 0;
}
