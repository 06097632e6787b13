/* test_h2o.c: the KV policies (DESIGN.md "H2O KV policy"): h2o, window,
 * streaming and full.
 *
 *   1. a hand-worked example through the kernel references (the numbers
 *      are written out below, as in the seed notes);
 *   2. ties evict the older token;
 *   3. `flexh2o generate` on the tiny golden models (OPT, and Llama with
 *      grouped-query attention: 8 query heads over 2 KV heads) against a
 *      plain, slow re-implementation of the normative text written here
 *      from scratch: no slots, one "present" flag and one double score per
 *      (KV head, position), each token's K/V computed once and attention
 *      recomputed every step over the present set, a KV head's score the
 *      sum of its query heads' probabilities. Same tokens, logprobs within
 *      1e-4, same evictions (--trace-evictions) and the same --stats;
 *   4. a budget that covers prompt + generation is exactly `full`;
 *   5. flag errors;
 *   6. the trace file itself.
 * The CUDA backend's run of the same policies is in test_gpu_e2e.c (the gpu
 * suite); the prompts and the trace reader are h2o_trace.c's.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "h2o_trace.h"
#include "kern.h"
#include "kern_scratch.h"
#include "kv_policy.h"
#include "model_config.h"
#include "off.h"
#include "safetensors.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define TINY_LLAMA FH_SOURCE_ROOT "/tests/fixtures/tiny-llama"

/* ------------------------------------------------- 1. hand-worked example */

/* One head, head_dim 2, scale 1. Key j is (ln a_j, ln b_j), so the query
 * e1 = (1, 0) weighs token j by a_j and e2 = (0, 1) by b_j: every softmax
 * below is a ratio of small numbers. Value j is (j, 1), so out[0] is the
 * mean position the query looked at.
 *
 * Policy h2o, B = 3, sinks 0, hh_share 0.5: heavy = floor(3 x 0.5) = 1,
 * recent = 2.
 *
 * Prompt t0..t3, all queries e1 (a = 1, 1, 2, 4):
 *   q0: t0 1
 *   q1: t0 1/2  t1 1/2
 *   q2: t0 1/4  t1 1/4  t2 1/2
 *   q3: t0 1/8  t1 1/8  t2 1/4  t3 1/2
 *   column sums: t0 1.875  t1 0.875  t2 0.75  t3 0.5
 * 4 tokens > B: keep the 2 most recent (t2 t3) and the 1 highest of the
 * rest, t0 (1.875 > 0.875): t1 is dropped at prefill.
 *   slots [t0 t2 t3]  scores [1.875 0.75 0.5]
 * Step 1: t4 arrives, q4 = e2 (b: t0 1, t2 1, t3 4, t4 2; sum 8)
 *   p: t0 1/8  t2 1/8  t3 1/2  t4 1/4
 *   scores: t0 2.0  t2 0.875  t3 1.0  t4 0.25 (its own attention)
 *   4 present > B: protected recent {t3 t4}; lowest of {t0 t2}: evict t2
 *   slots [t0 t4 t3]  scores [2.0 0.25 1.0]  out = 2/8 + 3/2 + 4/4 = 2.75
 * Step 2: t5, q5 = e1 (a: t0 1, t4 1, t3 4, t5 2; sum 8)
 *   p: t0 1/8  t4 1/8  t3 1/2  t5 1/4
 *   scores: t0 2.125  t4 0.375  t3 1.5  t5 0.25
 *   protected {t4 t5}; lowest of {t0 t3}: evict t3 (1.5 < 2.125): the
 *   token that was attended most this step goes, the old heavy hitter stays
 *   slots [t0 t4 t5]  scores [2.125 0.375 0.25]  out = 4/8 + 3/2 + 5/4 = 3.25
 * Step 3: t6, q6 = e2 (b: t0 1, t4 2, t5 1/2, t6 1/2; sum 4)
 *   p: t0 1/4  t4 1/2  t5 1/8  t6 1/8
 *   scores: t0 2.375  t4 0.875  t5 0.375  t6 0.125
 *   protected {t5 t6}; lowest of {t0 t4}: evict t4
 *   slots [t0 t6 t5]  scores [2.375 0.125 0.375]  out = 4/2 + 5/8 + 6/8 = 3.375
 */
Test(h2o, budget_split)
{
    kv_split s;
    kv_policy h = {.kind = KV_POLICY_H2O, .ratio = 0.2, .sinks = 4, .hh_share = 0.5};
    /* the paper's 20%: 512 + 32 tokens -> B = ceil(108.8) = 109 */
    cr_assert_eq(kv_policy_split(&h, 512, 32, 1, &s), 0);
    cr_assert(s.budget == 109 && s.sinks == 4 && s.heavy == 52 && s.recent == 53 && s.evicts);
    /* exact products stay exact: 0.3 x 20 = 6, floor(10 x 0.7) = 7 */
    h = (kv_policy){.kind = KV_POLICY_H2O, .ratio = 0.3, .hh_share = 0.7};
    cr_assert_eq(kv_policy_split(&h, 15, 5, 1, &s), 0);
    cr_assert_eq(s.budget, 6);
    h = (kv_policy){.kind = KV_POLICY_H2O, .budget = 11, .sinks = 1, .hh_share = 0.7};
    cr_assert_eq(kv_policy_split(&h, 30, 5, 1, &s), 0);
    cr_assert(s.heavy == 7 && s.recent == 3);
    /* window: no sinks, no heavy; streaming: sinks + recent */
    kv_policy w = {.kind = KV_POLICY_WINDOW, .budget = 10, .hh_share = 0.5};
    cr_assert_eq(kv_policy_split(&w, 30, 5, 1, &s), 0);
    cr_assert(s.sinks == 0 && s.heavy == 0 && s.recent == 10);
    kv_policy st = {.kind = KV_POLICY_STREAMING, .budget = 10, .sinks = 4, .hh_share = 0.5};
    cr_assert_eq(kv_policy_split(&st, 30, 5, 1, &s), 0);
    cr_assert(s.sinks == 4 && s.heavy == 0 && s.recent == 6);
    /* B >= prompt + generation: runs as full, whatever the split */
    cr_assert_eq(kv_policy_split(&st, 3, 5, 1, &s), 0);
    cr_assert(!s.evicts && s.budget == 8);
    /* --recent (seed 004's h2o_S_R_C): heavy = C - S - R; h2o_8_32_256 */
    h = (kv_policy){.kind = KV_POLICY_H2O, .budget = 256, .sinks = 8, .recent = 32,
                    .hh_share = NAN};
    cr_assert_eq(kv_policy_check(&h), 0, "%s", err_msg());
    cr_assert_eq(kv_policy_split(&h, 1000, 24, 1, &s), 0);
    cr_assert(s.budget == 256 && s.sinks == 8 && s.heavy == 216 && s.recent == 32 && s.evicts);
    /* a per-prompt budget below sinks + recent is refused by prompt */
    h = (kv_policy){.kind = KV_POLICY_H2O, .ratio = 0.1, .sinks = 4, .recent = 8,
                    .hh_share = NAN};
    err_clear();
    cr_assert_eq(kv_policy_split(&h, 90, 10, 3, &s), -EINVAL); /* B = 10 < 4 + 8 */
    cr_assert(strstr(err_msg(), "prompt on line 3") && strstr(err_msg(), "--recent 8"), "%s",
              err_msg());
    cr_assert_eq(kv_policy_split(&h, 190, 10, 3, &s), 0); /* B = 20: heavy 8 */
    cr_assert(s.heavy == 8 && s.recent == 8);
    /* a ratio that leaves a prompt no recent slot is refused */
    kv_policy r = {.kind = KV_POLICY_STREAMING, .ratio = 0.1, .sinks = 2};
    err_clear();
    cr_assert_eq(kv_policy_split(&r, 15, 5, 7, &s), -EINVAL);
    cr_assert(strstr(err_msg(), "prompt on line 7"), "%s", err_msg());
    cr_assert_eq(kv_policy_check(&r), 0);
    kv_policy_kind k;
    cr_assert_eq(kv_policy_parse("streaming", &k), 0);
    cr_assert_eq(k, KV_POLICY_STREAMING);
    cr_assert_eq(kv_policy_parse("H2O", &k), -EINVAL);
}

Test(h2o, hand_worked_example)
{
    kv_policy kp = {.kind = KV_POLICY_H2O, .budget = 3, .hh_share = 0.5};
    kv_split sp;
    cr_assert_eq(kv_policy_split(&kp, 4, 3, 1, &sp), 0);
    cr_assert(sp.budget == 3 && sp.sinks == 0 && sp.heavy == 1 && sp.recent == 2 && sp.evicts,
              "split %d %d %d %d", sp.budget, sp.sinks, sp.heavy, sp.recent);

    const double a[7] = {1, 1, 2, 4, 1, 2, 1}, b[7] = {1, 1, 1, 4, 2, 0.5, 0.5};
    const int use_b[7] = {0, 0, 0, 0, 1, 0, 1};
    float q[7][2], k[7][2], v[7][2];
    for (int j = 0; j < 7; j++) {
        k[j][0] = (float)log(a[j]);
        k[j][1] = (float)log(b[j]);
        v[j][0] = (float)j;
        v[j][1] = 1.0f;
        q[j][0] = use_b[j] ? 0.0f : 1.0f;
        q[j][1] = use_b[j] ? 1.0f : 0.0f;
    }
    float out[4][2], colsum[4], kc[3][2], vc[3][2], scores[3], self_p;
    int32_t pos[3], ev;
    kern_seq sq = {.row = 0, .n_new = 4, .n_past = 0, .n_slots = 0,
                   .budget = sp.budget, .sinks = sp.sinks, .recent = sp.recent};
    kern_attn_prefill_ref(&out[0][0], 2, &q[0][0], &k[0][0], &v[0][0], 2, &sq, 1, 1, 1, 2, 1.0f,
                          colsum, KERN_WS(4));
    const float want_cs[4] = {1.875f, 0.875f, 0.75f, 0.5f};
    for (int j = 0; j < 4; j++)
        cr_assert_float_eq(colsum[j], want_cs[j], 1e-5, "colsum t%d: %g", j, colsum[j]);
    kern_kv_prefill_ref(&kc[0][0], &vc[0][0], scores, pos, &k[0][0], &v[0][0], 2, colsum, &sq,
                        1, 1, 1, 2, 3, KERN_WS(4));
    const int32_t want_pos0[3] = {0, 2, 3};
    const float want_sc0[3] = {1.875f, 0.75f, 0.5f};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(pos[i], want_pos0[i], "prefill slot %d holds t%d", i, pos[i]);
        cr_assert_float_eq(scores[i], want_sc0[i], 1e-5);
        cr_assert_eq(kc[i][0], k[pos[i]][0]);
        cr_assert_eq(vc[i][0], v[pos[i]][0]);
    }

    struct {
        int32_t evict;
        int32_t pos[3];
        float scores[3], out;
    } want[3] = {
        {2, {0, 4, 3}, {2.0f, 0.25f, 1.0f}, 2.75f},
        {3, {0, 4, 5}, {2.125f, 0.375f, 0.25f}, 3.25f},
        {4, {0, 6, 5}, {2.375f, 0.125f, 0.375f}, 3.375f},
    };
    for (int step = 1; step <= 3; step++) {
        int t = 3 + step;
        sq = (kern_seq){.row = 0, .n_new = 1, .n_past = t, .n_slots = 3, .budget = 3,
                        .sinks = 0, .recent = 2};
        float o[2];
        kern_attn_decode_ref(o, 2, q[t], k[t], v[t], 2, &kc[0][0], &vc[0][0], &sq, 1, 1, 1, 2, 3,
                             1.0f, scores, &self_p, KERN_WS(3));
        kern_kv_insert_ref(&kc[0][0], &vc[0][0], scores, pos, k[t], v[t], 2, &self_p, &sq, 1,
                           1, 1, 2, 3, &ev);
        cr_assert_eq(ev, want[step - 1].evict, "step %d evicted t%d, want t%d", step, ev,
                     want[step - 1].evict);
        cr_assert_float_eq(o[0], want[step - 1].out, 1e-5, "step %d out %g", step, o[0]);
        cr_assert_float_eq(o[1], 1.0f, 1e-5);
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(pos[i], want[step - 1].pos[i], "step %d slot %d holds t%d", step, i,
                         pos[i]);
            cr_assert_float_eq(scores[i], want[step - 1].scores[i], 1e-5,
                               "step %d slot %d score %g", step, i, scores[i]);
            cr_assert_eq(kc[i][1], k[pos[i]][1], "step %d slot %d K is not t%d's", step, i,
                         pos[i]);
        }
    }
}

/* ------------------------------------------------------------- 2. ties */

Test(h2o, ties_evict_the_older_token)
{
    /* equal scores, slots not in position order: the oldest unprotected */
    const float eq[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    const int32_t p[4] = {7, 3, 5, 9};
    cr_assert_eq(kern_h2o_pick_ref(eq, p, 4, 0, 1, 10), 1, "t3 is the oldest");
    cr_assert_eq(kern_h2o_pick_ref(eq, p, 4, 4, 1, 10), 2, "t3 is a sink: t5 next");
    cr_assert_eq(kern_h2o_pick_ref(eq, p, 4, 0, 5, 10), 1, "recent 5 protects t6..t10");
    cr_assert_eq(kern_h2o_pick_ref(eq, p, 4, 0, 8, 10), -1, "everything protected");
    cr_assert_eq(kern_h2o_pick_ref(NULL, p, 4, 0, 1, 10), 1, "no scores: by age");
    /* a lower score wins over age */
    const float sc[4] = {0.5f, 0.5f, 0.25f, 0.5f};
    cr_assert_eq(kern_h2o_pick_ref(sc, p, 4, 0, 1, 10), 2);

    /* through kern_kv_insert_ref: slots hold t4 t1 t2 with equal scores,
     * t3 arrives (B = 3, recent 1): t1 goes, its slot takes t3 */
    float kc[3] = {4, 1, 2}, vc[3] = {4, 1, 2}, scores[3] = {1, 1, 1};
    int32_t pos[3] = {4, 1, 2}, ev;
    float knew = 5, vnew = 5, self_p = 0.75f;
    kern_seq sq = {.row = 0, .n_new = 1, .n_past = 5, .n_slots = 3, .budget = 3, .recent = 1};
    kern_kv_insert_ref(kc, vc, scores, pos, &knew, &vnew, 1, &self_p, &sq, 1, 1, 1, 1, 3, &ev);
    cr_assert_eq(ev, 1);
    cr_assert(pos[1] == 5 && kc[1] == 5 && scores[1] == 0.75f);

    /* prefill: colsum ties keep the newer token. 5 prompt tokens, B = 3,
     * recent 1, heavy 2: t1 t2 t3 tie at 2, so t2 t3 stay, t0 t1 go */
    const float cs[5] = {1, 2, 2, 2, 0.5f};
    float kp[5], kc3[3], vc3[3], sc3[3];
    int32_t pos3[3];
    for (int j = 0; j < 5; j++)
        kp[j] = (float)j;
    kern_seq pf = {.row = 0, .n_new = 5, .budget = 3, .recent = 1};
    kern_kv_prefill_ref(kc3, vc3, sc3, pos3, kp, kp, 1, cs, &pf, 1, 1, 1, 1, 3, KERN_WS(5));
    cr_assert(pos3[0] == 2 && pos3[1] == 3 && pos3[2] == 4, "kept t%d t%d t%d", pos3[0],
              pos3[1], pos3[2]);
}

/* ------------------------------------------ 3. the reference, from scratch */

/* One layer of either fixture: OPT (LayerNorm, ReLU MLP, learned
 * positions) or Llama (RMSNorm: the *_b NULL; SwiGLU: wg, bg; RoPE). */
typedef struct ref_layer {
    double *ln1_w, *ln1_b, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    double *ln2_w, *ln2_b, *w1, *b1, *w2, *b2, *wg, *bg;
} ref_layer;

static struct {
    const char *dir;
    int llama;
    /* the shape, read from config.json here rather than through the engine */
    int V, d, H, KVH, hd, L, ffn;
    double eps, inv_freq[64];
    double *tok, *pos, *lnf_w, *lnf_b, *head; /* (V, d), (P + 2, d), (d), (d), (V, d) */
    ref_layer L_[8];
} R;

static double *ref_tensor_opt(st_set *s, const char *fmt, int layer, int optional)
{
    char name[160];
    snprintf(name, sizeof name, fmt, layer);
    const st_tensor *t = st_find(s, name);
    if (!t && optional)
        return NULL;
    cr_assert(t, "fixture lacks %s", name);
    size_t n = t->bytes / 4; /* the fixture is F32 */
    float *f = malloc(sizeof(float) * n);
    double *d = malloc(sizeof(double) * n);
    st_to_f32(t, f, n);
    for (size_t i = 0; i < n; i++)
        d[i] = f[i];
    free(f);
    return d;
}

static double *ref_tensor(st_set *s, const char *fmt, int layer)
{
    return ref_tensor_opt(s, fmt, layer, 0);
}

static int json_int(const cJSON *o, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valueint : def;
}

static double json_num(const cJSON *o, const char *key, double def)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

/* RoPE frequencies of the config (rope_parameters of transformers 5, or
 * rope_theta + rope_scaling), in double: 1 / theta^(2i / hd), then the
 * llama3 rule of transformers' _compute_llama3_parameters. */
static void ref_rope(const cJSON *o)
{
    const cJSON *rp = cJSON_GetObjectItem(o, "rope_parameters");
    if (!rp)
        rp = cJSON_GetObjectItem(o, "rope_scaling");
    double theta = json_num(o, "rope_theta", json_num(rp, "rope_theta", 10000.0));
    const cJSON *ty = cJSON_GetObjectItem(rp, "rope_type");
    int llama3 = cJSON_IsString(ty) && strcmp(ty->valuestring, "llama3") == 0;
    double factor = json_num(rp, "factor", 1), lo = json_num(rp, "low_freq_factor", 1);
    double hi = json_num(rp, "high_freq_factor", 4);
    double old = json_num(rp, "original_max_position_embeddings", 8192);
    for (int i = 0; i < R.hd / 2; i++) {
        double f = 1.0 / pow(theta, 2.0 * i / R.hd), wavelen = 2 * M_PI / f;
        if (llama3) {
            if (wavelen > old / lo) {
                f /= factor;
            } else if (wavelen >= old / hi) {
                double sm = (old / wavelen - lo) / (hi - lo);
                f = (1 - sm) * f / factor + sm * f;
            }
        }
        R.inv_freq[i] = f;
    }
}

static void ref_load_llama(st_set *s)
{
    R.tok = ref_tensor(s, "model.embed_tokens.weight", 0);
    R.lnf_w = ref_tensor(s, "model.norm.weight", 0);
    R.head = ref_tensor(s, "lm_head.weight", 0);
    for (int l = 0; l < R.L; l++) {
        ref_layer *L = &R.L_[l];
#define P "model.layers.%d."
        L->ln1_w = ref_tensor(s, P "input_layernorm.weight", l);
        L->wq = ref_tensor(s, P "self_attn.q_proj.weight", l);
        L->wk = ref_tensor(s, P "self_attn.k_proj.weight", l);
        L->wv = ref_tensor(s, P "self_attn.v_proj.weight", l);
        L->bq = ref_tensor_opt(s, P "self_attn.q_proj.bias", l, 1);
        L->bk = ref_tensor_opt(s, P "self_attn.k_proj.bias", l, 1);
        L->bv = ref_tensor_opt(s, P "self_attn.v_proj.bias", l, 1);
        L->wo = ref_tensor(s, P "self_attn.o_proj.weight", l);
        L->bo = ref_tensor_opt(s, P "self_attn.o_proj.bias", l, 1);
        L->ln2_w = ref_tensor(s, P "post_attention_layernorm.weight", l);
        L->wg = ref_tensor(s, P "mlp.gate_proj.weight", l);
        L->bg = ref_tensor_opt(s, P "mlp.gate_proj.bias", l, 1);
        L->w1 = ref_tensor(s, P "mlp.up_proj.weight", l);
        L->b1 = ref_tensor_opt(s, P "mlp.up_proj.bias", l, 1);
        L->w2 = ref_tensor(s, P "mlp.down_proj.weight", l);
        L->b2 = ref_tensor_opt(s, P "mlp.down_proj.bias", l, 1);
#undef P
    }
}

/* Load the fixture in dir (tiny-opt or tiny-llama) unless it is loaded. */
static void ref_load(const char *dir)
{
    if (R.tok && R.dir == dir)
        return;
    /* the previous fixture's arrays are left to the process; nothing of it
     * may remain (a Llama has no biases and no learned positions) */
    memset(&R, 0, sizeof R);
    R.dir = dir;
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(path, &buf, &len), 0, "%s", err_msg());
    cJSON *o = cJSON_Parse(buf);
    free(buf);
    cr_assert(o);
    const cJSON *mt = cJSON_GetObjectItem(o, "model_type");
    R.llama = cJSON_IsString(mt) && strcmp(mt->valuestring, "llama") == 0;
    R.V = json_int(o, "vocab_size", 0);
    R.d = json_int(o, "hidden_size", 0);
    R.H = json_int(o, "num_attention_heads", 0);
    R.KVH = json_int(o, "num_key_value_heads", R.H);
    R.hd = json_int(o, "head_dim", R.d / R.H);
    R.L = json_int(o, "num_hidden_layers", 0);
    R.ffn = json_int(o, R.llama ? "intermediate_size" : "ffn_dim", 0);
    R.eps = R.llama ? json_num(o, "rms_norm_eps", 1e-6) : 1e-5;
    cr_assert_leq(R.L, 8);
    cr_assert_leq(R.hd, 128);
    if (R.llama)
        ref_rope(o);
    cJSON_Delete(o);
    st_set *s;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(st_open_file(path, &s), 0, "%s", err_msg());
    if (R.llama) {
        ref_load_llama(s);
        st_close(s);
        return;
    }
    R.tok = ref_tensor(s, "model.decoder.embed_tokens.weight", 0);
    R.pos = ref_tensor(s, "model.decoder.embed_positions.weight", 0);
    R.lnf_w = ref_tensor(s, "model.decoder.final_layer_norm.weight", 0);
    R.lnf_b = ref_tensor(s, "model.decoder.final_layer_norm.bias", 0);
    R.head = R.tok; /* tied */
    for (int l = 0; l < R.L; l++) {
        ref_layer *L = &R.L_[l];
#define P "model.decoder.layers.%d."
        L->ln1_w = ref_tensor(s, P "self_attn_layer_norm.weight", l);
        L->ln1_b = ref_tensor(s, P "self_attn_layer_norm.bias", l);
        L->wq = ref_tensor(s, P "self_attn.q_proj.weight", l);
        L->bq = ref_tensor(s, P "self_attn.q_proj.bias", l);
        L->wk = ref_tensor(s, P "self_attn.k_proj.weight", l);
        L->bk = ref_tensor(s, P "self_attn.k_proj.bias", l);
        L->wv = ref_tensor(s, P "self_attn.v_proj.weight", l);
        L->bv = ref_tensor(s, P "self_attn.v_proj.bias", l);
        L->wo = ref_tensor(s, P "self_attn.out_proj.weight", l);
        L->bo = ref_tensor(s, P "self_attn.out_proj.bias", l);
        L->ln2_w = ref_tensor(s, P "final_layer_norm.weight", l);
        L->ln2_b = ref_tensor(s, P "final_layer_norm.bias", l);
        L->w1 = ref_tensor(s, P "fc1.weight", l);
        L->b1 = ref_tensor(s, P "fc1.bias", l);
        L->w2 = ref_tensor(s, P "fc2.weight", l);
        L->b2 = ref_tensor(s, P "fc2.bias", l);
#undef P
    }
    st_close(s);
}

/* LayerNorm, or RMSNorm when b is NULL (Llama: w * x / sqrt(mean(x^2) + eps)). */
static void layernorm(double *y, const double *x, const double *w, const double *b, int d)
{
    if (!b) {
        double ms = 0;
        for (int i = 0; i < d; i++)
            ms += x[i] * x[i];
        double r = 1.0 / sqrt(ms / d + R.eps);
        for (int i = 0; i < d; i++)
            y[i] = x[i] * r * w[i];
        return;
    }
    double mu = 0, var = 0;
    for (int i = 0; i < d; i++)
        mu += x[i];
    mu /= d;
    for (int i = 0; i < d; i++)
        var += (x[i] - mu) * (x[i] - mu);
    var /= d;
    double r = 1.0 / sqrt(var + R.eps);
    for (int i = 0; i < d; i++)
        y[i] = (x[i] - mu) * r * w[i] + b[i];
}

/* y(n) = W(n, k) x(k) + b */
static void matvec(double *y, const double *w, const double *b, const double *x, int n, int k)
{
    for (int i = 0; i < n; i++) {
        double s = b ? b[i] : 0;
        for (int j = 0; j < k; j++)
            s += w[(size_t)i * k + j] * x[j];
        y[i] = s;
    }
}

typedef h2o_ev ref_ev; /* h2o_trace.h: the reference traces what the engine traces */

typedef struct ref_out {
    int32_t tok[64];
    double lp[64];
    ref_ev *ev;
    int n_ev, cap_ev;
    double mass[8]; /* per layer: sum over (head, pass) of kept / queries */
    long mass_n;    /* (head, pass) samples */
} ref_out;

static void add_ev(ref_out *o, const char *id, int l, int h, int step, int pos)
{
    if (o->n_ev == o->cap_ev) {
        o->cap_ev = o->cap_ev ? 2 * o->cap_ev : 256;
        o->ev = realloc(o->ev, sizeof(ref_ev) * (size_t)o->cap_ev);
    }
    ref_ev *e = &o->ev[o->n_ev++];
    snprintf(e->id, sizeof e->id, "%s", id);
    e->layer = l;
    e->head = h;
    e->step = step;
    e->pos = pos;
}

/* The policy as DESIGN.md states it, in the test's own arithmetic:
 * B, sinks, recent (heavy = B - sinks - recent). ratio and share in %. */
typedef struct ref_pol {
    const char *name;   /* h2o | window | streaming */
    int budget;         /* 0: use ratio_pct */
    int ratio_pct, sinks, share_pct;
} ref_pol;

static void ref_split(const ref_pol *p, int n, int max_new, int *B, int *sinks, int *recent)
{
    int total = n + max_new;
    *B = p->budget ? p->budget : (p->ratio_pct * total + 99) / 100;
    *sinks = strcmp(p->name, "window") == 0 ? 0 : p->sinks;
    int heavy = strcmp(p->name, "h2o") == 0 ? (*B - *sinks) * p->share_pct / 100 : 0;
    *recent = *B - *sinks - heavy;
}

/* rotate_half RoPE of one head x(hd) at position t (Llama). */
static void ref_rotate(double *x, int t)
{
    int half = R.hd / 2;
    for (int i = 0; i < half; i++) {
        double a = t * R.inv_freq[i], c = cos(a), s = sin(a);
        double x0 = x[i], x1 = x[i + half];
        x[i] = x0 * c - x1 * s;
        x[i + half] = x1 * c + x0 * s;
    }
}

/* Greedy generation of max_new tokens for one prompt under policy pol
 * (NULL: full), feeding one token at a time. Every query head attends to
 * the tokens present in its (layer, KV head) plus itself; the
 * probabilities of the query heads sharing a KV head are added to that KV
 * head's scores. During the prompt nothing leaves (exact prefill); after
 * the prompt and after every generated token the rule applies per (layer,
 * KV head):
 *   end of prompt, more than B tokens: keep the first `sinks`, the last
 *     `recent`, and the B - sinks - recent highest scores of the rest
 *     (ties keep the newer);
 *   a decode step leaving B + 1 present: drop the lowest score among those
 *     that are not sinks and not among the `recent` newest present tokens,
 *     ties drop the older. */
static void ref_run(const char *id, const int32_t *ids, int n, int max_new, const ref_pol *pol,
                    const int32_t *force, ref_out *o);

static void ref_generate(const char *id, const int32_t *ids, int n, int max_new,
                         const ref_pol *pol, ref_out *o)
{
    ref_run(id, ids, n, max_new, pol, NULL, o);
}

/* The same, teacher-forced (eval, DESIGN.md "Quality"): force (n +
 * max_new) are the tokens fed, and o->tok / o->lp get, after each token
 * from the prompt's last on, the next forced token and its log-probability
 * instead of the greedy one's. */
static void ref_run(const char *id, const int32_t *ids, int n, int max_new, const ref_pol *pol,
                    const int32_t *force, ref_out *o)
{
    int d = R.d, H = R.H, KVH = R.KVH, G = H / KVH, hd = R.hd, L = R.L, T = n + max_new;
    int qd = H * hd, kd = KVH * hd, F = R.ffn;
    int B = T + 1, sinks = 0, recent = 1;
    if (pol)
        ref_split(pol, n, max_new, &B, &sinks, &recent);
    double *K = calloc((size_t)L * T * kd, sizeof(double));
    double *V = calloc((size_t)L * T * kd, sizeof(double));
    double *score = calloc((size_t)L * KVH * T, sizeof(double));
    unsigned char *present = calloc((size_t)L * KVH * T, 1);
    double *x = malloc(sizeof(double) * d), *h = malloc(sizeof(double) * d);
    double *q = malloc(sizeof(double) * qd), *a = malloc(sizeof(double) * qd);
    double *f = malloc(sizeof(double) * F), *g = malloc(sizeof(double) * F);
    double *p = malloc(sizeof(double) * T), *logit = malloc(sizeof(double) * R.V);
    double scale = 1.0 / sqrt((double)hd);
    memset(o->mass, 0, sizeof o->mass);
    o->mass_n = 0;
    int32_t cur = ids[0];
    for (int t = 0; t < T - 1; t++) {
        cur = t < n ? ids[t] : force ? force[t] : o->tok[t - n];
        for (int i = 0; i < d; i++)
            x[i] = R.tok[(size_t)cur * d + i] + (R.llama ? 0 : R.pos[(size_t)(t + 2) * d + i]);
        for (int l = 0; l < L; l++) {
            const ref_layer *Ly = &R.L_[l];
            double *Kl = K + (size_t)l * T * kd, *Vl = V + (size_t)l * T * kd;
            layernorm(h, x, Ly->ln1_w, Ly->ln1_b, d);
            matvec(q, Ly->wq, Ly->bq, h, qd, d);
            matvec(Kl + (size_t)t * kd, Ly->wk, Ly->bk, h, kd, d);
            matvec(Vl + (size_t)t * kd, Ly->wv, Ly->bv, h, kd, d);
            if (R.llama) {
                for (int hh = 0; hh < H; hh++)
                    ref_rotate(q + hh * hd, t);
                for (int kh = 0; kh < KVH; kh++)
                    ref_rotate(Kl + (size_t)t * kd + kh * hd, t);
            }
            for (int kh = 0; kh < KVH; kh++) {
                unsigned char *pr = present + ((size_t)l * KVH + kh) * T;
                double *sc = score + ((size_t)l * KVH + kh) * T;
                pr[t] = 1;
                int n_present = 0;
                for (int hh = kh * G; hh < (kh + 1) * G; hh++) {
                    double mx = -INFINITY, sum = 0;
                    for (int j = 0; j <= t; j++)
                        if (pr[j]) {
                            double e = 0;
                            for (int i = 0; i < hd; i++)
                                e += q[hh * hd + i] * Kl[(size_t)j * kd + kh * hd + i];
                            p[j] = e * scale;
                            mx = fmax(mx, p[j]);
                        }
                    for (int j = 0; j <= t; j++)
                        if (pr[j]) {
                            p[j] = exp(p[j] - mx);
                            sum += p[j];
                        }
                    for (int i = 0; i < hd; i++)
                        a[hh * hd + i] = 0;
                    n_present = 0;
                    for (int j = 0; j <= t; j++)
                        if (pr[j]) {
                            p[j] /= sum;
                            sc[j] += p[j]; /* the KV head's score: summed over its group */
                            n_present++;
                            for (int i = 0; i < hd; i++)
                                a[hh * hd + i] += p[j] * Vl[(size_t)j * kd + kh * hd + i];
                        }
                }
                if (t >= n && n_present > B) {
                    /* the recent newest present tokens: the `recent` largest positions */
                    int newest_cut = t, seen = 0;
                    for (int j = t; j >= 0 && seen < recent; j--)
                        if (pr[j]) {
                            seen++;
                            newest_cut = j;
                        }
                    int victim = -1;
                    for (int j = sinks; j < newest_cut; j++)
                        if (pr[j] && (victim < 0 || sc[j] < sc[victim]))
                            victim = j; /* strict <: a tie keeps the older j */
                    cr_assert_geq(victim, 0);
                    pr[victim] = 0;
                    add_ev(o, id, l, kh, t - n + 1, victim);
                }
            }
            matvec(h, Ly->wo, Ly->bo, a, d, qd);
            for (int i = 0; i < d; i++)
                x[i] += h[i];
            layernorm(h, x, Ly->ln2_w, Ly->ln2_b, d);
            matvec(f, Ly->w1, Ly->b1, h, F, d);
            if (R.llama) {
                matvec(g, Ly->wg, Ly->bg, h, F, d);
                for (int i = 0; i < F; i++)
                    f[i] *= g[i] / (1 + exp(-g[i])); /* silu(gate) * up */
            } else {
                for (int i = 0; i < F; i++)
                    f[i] = f[i] > 0 ? f[i] : 0;
            }
            matvec(h, Ly->w2, Ly->b2, f, d, F);
            for (int i = 0; i < d; i++)
                x[i] += h[i];
        }
        if (t == n - 1 && n > B) {
            /* the prompt is in: keep sinks, the last recent, the heaviest */
            int heavy = B - sinks - recent;
            for (int l = 0; l < L; l++)
                for (int kh = 0; kh < KVH; kh++) {
                    unsigned char *pr = present + ((size_t)l * KVH + kh) * T;
                    const double *sc = score + ((size_t)l * KVH + kh) * T;
                    unsigned char keep[128] = {0};
                    for (int j = 0; j < n; j++)
                        keep[j] = j < sinks || j >= n - recent;
                    for (int k = 0; k < heavy; k++) {
                        int best = -1;
                        for (int j = 0; j < n; j++)
                            if (!keep[j] && (best < 0 || sc[j] >= sc[best]))
                                best = j; /* >=: a tie keeps the newer j */
                        keep[best] = 1;
                    }
                    for (int j = 0; j < n; j++)
                        if (!keep[j]) {
                            pr[j] = 0;
                            add_ev(o, id, l, kh, 0, j);
                        }
                }
        }
        if (t >= n - 1) {
            /* kept attention mass after this pass: per KV head, of all the
             * probability its G query heads handed out */
            for (int l = 0; l < L; l++)
                for (int kh = 0; kh < KVH; kh++) {
                    const unsigned char *pr = present + ((size_t)l * KVH + kh) * T;
                    const double *sc = score + ((size_t)l * KVH + kh) * T;
                    double kept = 0;
                    for (int j = 0; j <= t; j++)
                        kept += pr[j] ? sc[j] : 0;
                    o->mass[l] += kept / ((t + 1) * (double)G);
                }
            o->mass_n += KVH;
            /* the next token: greedy over the logits of the last row */
            layernorm(h, x, R.lnf_w, R.lnf_b, d);
            matvec(logit, R.head, NULL, h, R.V, d);
            int best = 0;
            double mx = logit[0], sum = 0;
            for (int v = 1; v < R.V; v++)
                if (logit[v] > logit[best]) {
                    best = v;
                    mx = logit[v];
                }
            for (int v = 0; v < R.V; v++)
                sum += exp(logit[v] - mx);
            o->tok[t - n + 1] = force ? force[t + 1] : best;
            o->lp[t - n + 1] = logit[o->tok[t - n + 1]] - mx - log(sum);
        }
    }
    free(K);
    free(V);
    free(score);
    free(present);
    free(x);
    free(h);
    free(q);
    free(a);
    free(f);
    free(g);
    free(p);
    free(logit);
}

/* --------------------------------------------------------- CLI helpers */

TestSuite(h2o_cli, .init = cli_setup, .fini = cli_teardown);

/* Run generate on the loaded fixture (ref_load) under pol (batch size bs)
 * with --trace-evictions and --stats, and compare everything with
 * ref_generate. @return the evictions seen. */
static int check_policy(const ref_pol *pol, int bs)
{
    char flags[256];
    if (pol->budget)
        snprintf(flags, sizeof flags, "--kv-budget %d", pol->budget);
    else
        snprintf(flags, sizeof flags, "--kv-ratio %d.%02d", pol->ratio_pct / 100,
                 pol->ratio_pct % 100);
    char out[64], trace[64];
    static int run_no;
    snprintf(out, sizeof out, "o%d.jsonl", run_no);
    snprintf(trace, sizeof trace, "t%d.jsonl", run_no++);
    cr_assert_eq(cli_run("generate --model %s --prompts p.jsonl --out %s --quiet "
                     "--ignore-eos --batch-size %d --kv-policy %s %s --sinks %d "
                     "--hh-share %d.%02d --trace-evictions %s --stats", R.dir, out, bs, pol->name,
                     flags, pol->sinks, pol->share_pct / 100, pol->share_pct % 100, trace),
                 0, "%s %s: %s", pol->name, flags, cli_err);

    ref_out ro[H2O_N_PROMPTS];
    memset(ro, 0, sizeof ro);
    ref_out all = {0};
    double mass[8] = {0};
    long mass_n = 0;
    for (int i = 0; i < H2O_N_PROMPTS; i++) {
        const h2o_prompt *pr = &h2o_prompts[i];
        ref_generate(pr->id, pr->ids, pr->n, pr->max_new, pol, &ro[i]);
        for (int e = 0; e < ro[i].n_ev; e++)
            add_ev(&all, ro[i].ev[e].id, ro[i].ev[e].layer, ro[i].ev[e].head,
                   ro[i].ev[e].step, ro[i].ev[e].pos);
        for (int l = 0; l < R.L; l++)
            mass[l] += ro[i].mass[l];
        mass_n += ro[i].mass_n;
    }

    /* tokens and logprobs */
    char *buf = cli_read(out);
    int rec = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"), rec++) {
        cr_assert_lt(rec, H2O_N_PROMPTS);
        cJSON *r = cJSON_Parse(line);
        cr_assert(r);
        cr_assert_str_eq(cJSON_GetObjectItem(r, "id")->valuestring, h2o_prompts[rec].id);
        const cJSON *tk = cJSON_GetObjectItem(r, "tokens"), *lp = cJSON_GetObjectItem(r,
                                                                                    "logprobs");
        cr_assert_eq(cJSON_GetArraySize(tk), h2o_prompts[rec].max_new);
        for (int j = 0; j < h2o_prompts[rec].max_new; j++) {
            cr_assert_eq(cJSON_GetArrayItem(tk, j)->valueint, ro[rec].tok[j],
                         "%s %s, %s token %d: engine %d, reference %d", pol->name, flags,
                         h2o_prompts[rec].id, j, cJSON_GetArrayItem(tk, j)->valueint,
                         ro[rec].tok[j]);
            cr_assert_float_eq(cJSON_GetArrayItem(lp, j)->valuedouble, ro[rec].lp[j], 1e-4,
                               "%s %s, %s logprob %d", pol->name, flags, h2o_prompts[rec].id, j);
        }
        cJSON_Delete(r);
    }
    free(buf);
    cr_assert_eq(rec, H2O_N_PROMPTS);

    /* evictions, as sets (the trace's order is per pass) */
    int n_tr;
    ref_ev *tr = h2o_read_trace(trace, R.L, R.KVH, &n_tr);
    if (n_tr > 0) /* qsort's base must not be NULL, even for none */
        qsort(tr, (size_t)n_tr, sizeof *tr, h2o_ev_cmp);
    if (all.n_ev > 0)
        qsort(all.ev, (size_t)all.n_ev, sizeof *all.ev, h2o_ev_cmp);
    for (int e = 0; e < n_tr && e < all.n_ev; e++)
        cr_assert(h2o_ev_cmp(&tr[e], &all.ev[e]) == 0,
                  "%s %s: eviction %d: engine %s layer %d head %d step %d pos %d, reference "
                  "%s layer %d head %d step %d pos %d", pol->name, flags, e, tr[e].id,
                  tr[e].layer, tr[e].head, tr[e].step, tr[e].pos, all.ev[e].id,
                  all.ev[e].layer, all.ev[e].head, all.ev[e].step, all.ev[e].pos);
    cr_assert_eq(n_tr, all.n_ev, "%s %s: %d evictions traced, reference %d", pol->name,
                 flags, n_tr, all.n_ev);

    /* --stats: the kept attention mass per layer */
    char *so = cli_read("stdout.txt");
    for (int l = 0; l < R.L; l++) {
        char key[32];
        snprintf(key, sizeof key, "layer %d: ", l);
        const char *at = strstr(so, key);
        cr_assert(at, "--stats printed no \"%s\": %s", key, so);
        double got = strtod(at + strlen(key), NULL);
        cr_assert_float_eq(got, mass[l] / mass_n, 1e-4, "%s %s: layer %d kept mass %g, "
                           "reference %g", pol->name, flags, l, got, mass[l] / mass_n);
    }
    free(so);
    for (int i = 0; i < H2O_N_PROMPTS; i++)
        free(ro[i].ev);
    free(all.ev);
    free(tr);
    return n_tr;
}

Test(h2o_cli, engine_matches_reference_for_every_policy, .timeout = 60)
{
    ref_load(TINY);
    h2o_write_prompts("p.jsonl");
    const ref_pol pols[] = {
        {"h2o", 6, 0, 0, 50},      /* heavy 3, recent 3 */
        {"h2o", 3, 0, 0, 50},      /* heavy 1, recent 2: the smallest useful */
        {"h2o", 8, 0, 2, 25},      /* sinks 2, heavy 1, recent 5 */
        {"h2o", 0, 30, 1, 50},     /* per-prompt B = ceil(0.3 (n + max_new)): 8, 6, 9 */
        {"h2o", 7, 0, 1, 75},      /* heavy 4, recent 2 */
        {"h2o", 11, 0, 1, 70},     /* heavy 7 (not 6: 0.7 as typed), recent 3 */
        {"window", 5, 0, 0, 50},
        {"window", 0, 45, 0, 50},  /* 12, 8, 14 */
        {"streaming", 6, 0, 2, 50},
        {"streaming", 0, 50, 4, 50},
    };
    for (size_t i = 0; i < sizeof pols / sizeof *pols; i++) {
        int n = check_policy(&pols[i], 3);
        cr_assert_gt(n, 0, "policy %zu evicted nothing: the test would prove little", i);
    }
    /* one block per prompt gives the same as one block of three */
    check_policy(&pols[3], 1);
}

/* Grouped-query attention (DESIGN.md "H2O with grouped-query attention"):
 * the tiny Llama's 8 query heads share 2 KV heads; its cache, scores and
 * evictions are per KV head, a KV head's score the sum of the
 * probabilities its 4 query heads gave. RoPE, RMSNorm and SwiGLU come with
 * it; the reference computes them itself. */
Test(h2o_cli, engine_matches_reference_with_grouped_query_attention, .timeout = 60)
{
    ref_load(TINY_LLAMA);
    cr_assert_eq(R.H / R.KVH, 4, "the fixture should have groups of 4");
    h2o_write_prompts("p.jsonl");
    const ref_pol pols[] = {
        {"h2o", 6, 0, 0, 50},
        {"h2o", 8, 0, 2, 25},
        {"h2o", 0, 30, 1, 50},
        {"window", 5, 0, 0, 50},
        {"streaming", 6, 0, 2, 50},
    };
    for (size_t i = 0; i < sizeof pols / sizeof *pols; i++) {
        int n = check_policy(&pols[i], 3);
        cr_assert_gt(n, 0, "policy %zu evicted nothing: the test would prove little", i);
    }
    check_policy(&pols[2], 1);
    /* the full cache: the golden tokens' model, no eviction */
    cr_assert_eq(check_policy(&(ref_pol){"h2o", 64, 0, 0, 50}, 2), 0);
}

Test(h2o_cli, window_equals_streaming_without_sinks_and_h2o_differs)
{
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --quiet --ignore-eos";
    cr_assert_eq(cli_run("%s --out w.jsonl --kv-policy window --kv-budget 5", base), 0, "%s",
                 cli_err);
    cr_assert_eq(cli_run("%s --out s.jsonl --kv-policy streaming --kv-budget 5", base), 0, "%s",
                 cli_err);
    cr_assert_eq(cli_run("%s --out h.jsonl --kv-policy h2o --kv-budget 5", base), 0, "%s",
                 cli_err);
    /* the cache holds the largest budget, ceil(0.25 x 29) = 8, not 20 + 9 */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --ignore-eos --out h2.jsonl "
                     "--kv-policy h2o --kv-ratio 0.25"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "--kv-policy h2o: KV cache of 8 slots per sequence, layer and "
                              "head (full: 29)"), "%s", cli_err);
    char *w = cli_read("w.jsonl"), *s = cli_read("s.jsonl"), *h = cli_read("h.jsonl");
    cr_assert_str_eq(w, s);
    cr_assert_str_neq(w, h, "h2o kept the same tokens as the window");
    free(w);
    free(s);
    free(h);
}

/* ------------------------------------------ 4. a budget that never evicts */

Test(h2o_cli, budget_covering_everything_is_full)
{
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --quiet --batch-size 2";
    cr_assert_eq(cli_run("%s --out full.jsonl", base), 0, "%s", cli_err);
    /* largest prompt + max_new is 20 + 9 = 29 */
    const char *variants[] = {
        "--kv-policy h2o --kv-budget 29 --trace-evictions t1.jsonl",
        "--kv-policy h2o --kv-budget 1000 --sinks 3",
        "--kv-policy window --kv-ratio 1",
        "--kv-policy streaming --kv-ratio 1 --sinks 2 --trace-evictions t2.jsonl",
    };
    char *full = cli_read("full.jsonl");
    for (int i = 0; i < 4; i++) {
        char out[32];
        snprintf(out, sizeof out, "v%d.jsonl", i);
        cr_assert_eq(cli_run("%s --out %s %s", base, out, variants[i]), 0, "%s: %s", variants[i],
                     cli_err);
        char *v = cli_read(out);
        cr_assert_str_eq(v, full, "%s differs from full", variants[i]);
        free(v);
    }
    char *t1 = cli_read("t1.jsonl"), *t2 = cli_read("t2.jsonl");
    cr_assert_str_eq(t1, "", "nothing may be evicted: %s", t1);
    cr_assert_str_eq(t2, "");
    free(t1);
    free(t2);
    free(full);
    /* full keeps all attention mass */
    cr_assert_eq(cli_run("%s --out s.jsonl --stats", base), 0, "%s", cli_err);
    char *so = cli_read("stdout.txt");
    for (int l = 0; l < 3; l++) {
        char key[32];
        snprintf(key, sizeof key, "layer %d: ", l);
        const char *at = strstr(so, key);
        cr_assert(at, "%s", so);
        cr_assert_float_eq(strtod(at + strlen(key), NULL), 1.0, 1e-5, "%s", so);
    }
    free(so);
}

/* ------------------------------------------------------ 5. flag errors */

/* --recent R names the split that --hh-share reaches another way: budget 8,
 * sinks 2, recent 5 is heavy 1, as hh-share 0.25 makes it (floor(6 x 0.25));
 * the runs write the same bytes and evict the same tokens. */
Test(h2o_cli, recent_names_the_same_split_as_a_share)
{
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --quiet --ignore-eos "
                       "--kv-policy h2o --kv-budget 8 --sinks 2";
    cr_assert_eq(cli_run("%s --recent 5 --out a.jsonl --trace-evictions ta.jsonl", base), 0,
                 "%s", cli_err);
    cr_assert_eq(cli_run("%s --hh-share 0.25 --out b.jsonl --trace-evictions tb.jsonl", base),
                 0, "%s", cli_err);
    cr_assert_eq(cli_run("%s --recent 3 --out c.jsonl", base), 0, "%s", cli_err);
    char *a = cli_read("a.jsonl"), *b = cli_read("b.jsonl"), *c = cli_read("c.jsonl");
    char *ta = cli_read("ta.jsonl"), *tb = cli_read("tb.jsonl");
    cr_assert_str_eq(a, b);
    cr_assert_str_eq(ta, tb);
    cr_assert(strlen(ta) > 100, "no evictions: the test would prove little");
    cr_assert_str_neq(a, c, "--recent 3 (heavy 3) wrote what --recent 5 (heavy 1) wrote");
    free(a), free(b), free(c), free(ta), free(tb);
}

Test(h2o_cli, flag_errors_exit_2_with_a_message)
{
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --out o.jsonl";
    struct {
        const char *flags, *msg;
    } bad[] = {
        {"--kv-policy lru --kv-budget 4",
         "--kv-policy must be full, h2o, window or streaming, got \"lru\""},
        {"--kv-policy h2o --kv-budget 4 --sinks 4",
         "--kv-budget 4 with --sinks 4 and --hh-share 0.5 leaves recent = 0 (B - sinks - heavy "
         "must be >= 1); raise --kv-budget or lower --sinks"},
        {"--kv-policy streaming --kv-budget 3 --sinks 5", "leaves recent = -2"},
        {"--kv-policy h2o --kv-budget 8 --hh-share 1", "--hh-share 1 leaves no recent slot"},
        /* 0.1 x (5 + 12) = 1.7 -> B 2 for p2, with 2 sinks */
        {"--kv-policy h2o --kv-ratio 0.1 --sinks 2",
         "prompt on line 2 (5 tokens + 12 new): --kv-ratio 0.1 gives a budget of 2, which "
         "leaves recent = 0 after --sinks 2"},
        {"--kv-policy h2o", "--kv-policy h2o needs a budget: --kv-ratio R"},
        {"--kv-policy h2o --kv-ratio 0.2 --kv-budget 5", "give one of --kv-ratio and --kv-budget"},
        {"--kv-budget 5", "--kv-ratio / --kv-budget need an evicting --kv-policy"},
        {"--kv-policy window --kv-budget 5 --sinks 2", "window keeps no sinks"},
        {"--kv-policy h2o --kv-ratio 0", "--kv-ratio expects a number in"},
        {"--kv-policy h2o --kv-budget 4 --hh-share 1.5", "--hh-share expects a number in [0, 1]"},
        {"--kv-policy h2o --kv-budget 10 --sinks 4 --recent 8",
         "--kv-budget 10 with --sinks 4 and --recent 8 leaves heavy = -2"},
        {"--kv-policy window --kv-budget 10 --recent 8", "--recent is h2o's"},
        {"--kv-policy h2o --kv-budget 10 --recent 4 --hh-share 0.5",
         "give one of --hh-share and --recent"},
        {"--recent 4", "--recent needs --kv-policy h2o"},
        {"--kv-policy h2o --kv-budget 10 --recent 0", "--recent expects"},
        /* 0.3 x (10 + 10) is 6 exactly, not 7 (as it would be in float) */
        {"--prompts p20.jsonl --kv-policy streaming --kv-ratio 0.3 --sinks 6",
         "--kv-ratio 0.3 gives a budget of 6, which leaves recent = 0 after --sinks 6"},
    };
    cli_write("p20.jsonl", "{\"prompt_ids\": [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "
                            "\"max_new_tokens\": 10}\n");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int st = cli_run("%s %s", base, bad[i].flags);
        cr_assert_eq(st, 2, "%s: exit %d: %s", bad[i].flags, st, cli_err);
        cr_assert(strstr(cli_err, bad[i].msg), "%s: %s", bad[i].flags, cli_err);
        cr_assert(strstr(cli_err, "see flexh2o generate --help"), "%s", cli_err);
        cr_assert(!strchr(cli_err, '\n') || strchr(cli_err, '\n')[1] == 0,
                  "one line only: %s", cli_err);
        cr_assert(!cli_exists("o.jsonl"), "%s: output written", bad[i].flags);
    }
}

/* ---------------------------------------------- 6. the trace file itself */

Test(h2o_cli, trace_is_refused_if_present_and_resumed_per_prompt)
{
    ref_load(TINY);
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --quiet --ignore-eos "
                       "--kv-policy h2o --kv-budget 6 --batch-size 1";
    cr_assert_eq(cli_run("%s --out a.jsonl --trace-evictions ta.jsonl", base), 0, "%s", cli_err);
    /* an existing trace is not overwritten */
    cr_assert_eq(cli_run("%s --out b.jsonl --trace-evictions ta.jsonl", base), 1);
    cr_assert(strstr(cli_err, "ta.jsonl already exists; pass --resume"), "%s", cli_err);
    /* a killed job: p1 finished, p2 half traced and torn */
    char *full_out = cli_read("a.jsonl"), *full_tr = cli_read("ta.jsonl");
    char *nl = strchr(full_out, '\n');
    nl[1] = 0;
    cli_write("c.jsonl", full_out);
    char *p2 = strstr(full_tr, "\"p2\"");
    cr_assert(p2);
    char *cut = strstr(p2, "\"p3\"");
    size_t start = (size_t)(p2 - full_tr), end = cut ? (size_t)(cut - full_tr) : strlen(full_tr);
    size_t keep = start + (end - start) / 2;
    char *torn = strndup(full_tr, keep);
    cli_write("tc.jsonl", torn);
    cr_assert_eq(cli_run("%s --out c.jsonl --trace-evictions tc.jsonl --resume", base), 0, "%s",
                 cli_err);
    int na, nc;
    ref_ev *a = h2o_read_trace("ta.jsonl", R.L, R.KVH, &na),
           *c = h2o_read_trace("tc.jsonl", R.L, R.KVH, &nc);
    cr_assert_eq(na, nc);
    qsort(a, (size_t)na, sizeof *a, h2o_ev_cmp);
    qsort(c, (size_t)nc, sizeof *c, h2o_ev_cmp);
    for (int i = 0; i < na; i++)
        cr_assert(h2o_ev_cmp(&a[i], &c[i]) == 0, "resumed trace differs at %d", i);
    free(a);
    free(c);
    free(torn);
    free(full_out);
    free(full_tr);
}

/* eval under an evicting policy (DESIGN.md "Quality"): every window of the
 * text is a prompt of one token, then decode steps feeding the true tokens
 * with the policy evicting as in generation; its NLL is the reference's,
 * run teacher-forced over the same ids, for the tiny OPT and the tiny
 * Llama (grouped-query attention). */
Test(h2o_cli, eval_perplexity_matches_reference, .timeout = 120)
{
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(FH_SOURCE_ROOT "/tests/fixtures/eval-golden.json", &buf, &len),
                 0, "%s", err_msg());
    cJSON *g = cJSON_Parse(buf);
    free(buf);
    int32_t ids[512];
    int n_ids = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(g, "ids"))
        ids[n_ids++] = e->valueint;
    cJSON_Delete(g);
    const int ctx = 40;
    const char *dirs[] = {TINY, TINY_LLAMA};
    const struct {
        ref_pol pol;
        const char *flags;
    } runs[] = {
        {{"h2o", 40, 0, 1, 50}, "--kv-policy h2o --kv-budget 40 --sinks 1"},
        {{"h2o", 10, 0, 1, 50}, "--kv-policy h2o --kv-budget 10 --sinks 1"},
        {{"h2o", 0, 30, 0, 50}, "--kv-policy h2o --kv-ratio 0.3"},
        {{"window", 8, 0, 0, 50}, "--kv-policy window --kv-budget 8"},
        {{"streaming", 8, 0, 2, 50}, "--kv-policy streaming --kv-budget 8 --sinks 2"},
    };
    for (size_t d = 0; d < 2; d++) {
        ref_load(dirs[d]);
        for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
            cr_assert_eq(cli_run("eval --model %s --text " FH_SOURCE_ROOT
                                 "/tests/fixtures/eval_text.txt --context %d --batch-size 3 "
                                 "--quiet %s", dirs[d], ctx, runs[r].flags), 0, "%s: %s",
                         runs[r].flags, cli_err);
            char *out = cli_read("stdout.txt");
            cJSON *res = cJSON_Parse(out);
            cr_assert(res, "%s", out);
            free(out);
            double nll = cJSON_GetObjectItem(res, "nll")->valuedouble;
            int tokens = cJSON_GetObjectItem(res, "tokens")->valueint;
            cJSON_Delete(res);
            double ref = 0;
            int ref_tokens = 0, evicted = 0;
            for (int at = 0; at < n_ids; at += ctx) {
                int wn = n_ids - at < ctx ? n_ids - at : ctx;
                if (wn < 2)
                    continue;
                ref_out o = {0};
                ref_run("w", ids + at, 1, wn - 1, &runs[r].pol, ids + at, &o);
                for (int i = 0; i < wn - 1; i++)
                    ref -= o.lp[i];
                ref_tokens += wn - 1;
                evicted += o.n_ev;
                free(o.ev);
            }
            cr_assert_eq(tokens, ref_tokens, "%s: %d tokens, reference %d", runs[r].flags, tokens,
                         ref_tokens);
            cr_assert(evicted > 0 || runs[r].pol.budget >= ctx,
                      "%s: nothing evicted: the test would prove little", runs[r].flags);
            cr_assert_float_eq(nll, ref / ref_tokens, 2e-5, "%s on %s: nll %.9g, reference %.9g",
                               runs[r].flags, dirs[d], nll, ref / ref_tokens);
        }
    }
}
