/* test_model.c: the CPU engine against Hugging Face transformers (golden
 * file from tests/fixtures/gen_model_golden.py), batching invariance, and
 * the loader on every checkpoint form and on bad checkpoints. The engine
 * runs the production path: the model loaded through a scheduler's layer
 * sink and every pass through sched_forward. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "off.h"
#include "fh_config.h"
#include "golden_harness.h"
#include "model.h"
#include "safetensors.h"
#include "scheduler.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define GOLDEN FH_SOURCE_ROOT "/tests/fixtures/tiny-opt-golden.json"

static golden G;

static backend be;

/* A layer sink that keeps nothing: for tests of the loader alone. */
static int discard_sink(void *ud, int layer, const void *blob, int wq, int fd, uint64_t off)
{
    (void)ud, (void)layer, (void)blob, (void)wq, (void)fd, (void)off;
    return 0;
}

static int load_only(const char *dir, model **m)
{
    return model_load_hf_sink(dir, &be, discard_sink, NULL, m);
}

static double run_cases(const char *dir, int batched, float *got, double tol)
{
    return golden_run(&be, &G, dir, batched, got, tol);
}

static void setup(void)
{
    err_clear();
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    golden_load(&G, GOLDEN);
}
static void teardown(void)
{
    golden_free(&G);
    backend_destroy(&be);
}

TestSuite(model, .init = setup, .fini = teardown);

Test(model, golden_logits_single_prompt)
{
    double worst = run_cases(TINY, 0, NULL, 1e-4);
    cr_log_info("worst |logit - transformers| = %.3g", worst);
}

Test(model, batched_equals_single)
{
    size_t n = (size_t)G.n_cases * GOLDEN_MAX_NEW * G.vocab;
    float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
    run_cases(TINY, 0, a, 1e-4);
    run_cases(TINY, 1, b, 1e-4);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]));
    cr_assert_leq(worst, 1e-5, "batched differs from single by %.3g", worst);
    free(a);
    free(b);
}

Test(model, golden_logprobs_match)
{
    /* log softmax of the golden logits, taken by the sampler, equals the
     * transformers log-probability of the chosen token */
    float scratch[2 * 1024];
    for (int c = 0; c < G.n_cases; c++)
        for (int s = 0; s < G.cases[c].n_new; s++) {
            float lp;
            kern_sample_row greedy = {.temperature = 0.0f, .top_p = 1.0f, .u = 0.5};
            int32_t t = kern_sample_ref(G.cases[c].logits + (size_t)s * G.vocab, G.vocab, &greedy,
                                        NULL, &lp, NULL, NULL, scratch, sizeof scratch);
            cr_assert_eq(t, G.cases[c].tok[s]);
            cr_assert_float_eq(lp, G.cases[c].lp[s], 1e-5, "case %d step %d: %g vs %g", c,
                               s, lp, G.cases[c].lp[s]);
        }
}

/* ------------------------------------------------------------ checkpoints */

static char tmpdir[256];

static void make_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fh_test_model_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void copy_file(const char *from, const char *to)
{
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(from, &buf, &len), 0, "%s", err_msg());
    FILE *f = fopen(to, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
    free(buf);
}

/* Re-save the tiny model's tensors in `dtype`, optionally in two shards. */
static void resave(st_dtype dtype, int sharded)
{
    st_set *s;
    cr_assert_eq(st_open_file(TINY "/model.safetensors", &s), 0, "%s", err_msg());
    static const char *names[64];
    static st_out outs[64];
    int n = 0;
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    copy_file(TINY "/config.json", cfg);
    model_config mcfg;
    cr_assert_eq(model_config_load(cfg, &mcfg), 0);
    /* enumerate by the names the loader asks for */
    const char *base[] = {"embed_tokens.weight", "embed_positions.weight",
                          "final_layer_norm.weight", "final_layer_norm.bias"};
    const char *per[] = {"self_attn.q_proj.weight", "self_attn.q_proj.bias",
                         "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                         "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                         "self_attn.out_proj.weight", "self_attn.out_proj.bias",
                         "self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
                         "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                         "final_layer_norm.weight", "final_layer_norm.bias"};
    char *buf[64];
    for (int i = 0; i < 4 + 16 * mcfg.n_layer; i++) {
        char *nm = malloc(128);
        if (i < 4)
            snprintf(nm, 128, "model.decoder.%s", base[i]);
        else
            snprintf(nm, 128, "model.decoder.layers.%d.%s", (i - 4) / 16, per[(i - 4) % 16]);
        const st_tensor *t = st_find(s, nm);
        cr_assert(t, "fixture lacks %s", nm);
        size_t cnt = t->bytes / 4;
        buf[n] = malloc(t->bytes);
        st_to_f32(t, (float *)buf[n], cnt);
        names[n] = nm;
        outs[n] = (st_out){nm, t->n_dim, {t->shape[0], t->shape[1]}, (float *)buf[n]};
        n++;
    }
    char path[512];
    if (!sharded) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
        cr_assert_eq(st_write(path, outs, n, dtype), 0, "%s", err_msg());
    } else {
        int half = n / 2;
        snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", tmpdir);
        cr_assert_eq(st_write(path, outs, half, dtype), 0);
        snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", tmpdir);
        cr_assert_eq(st_write(path, outs + half, n - half, dtype), 0);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmpdir);
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"metadata\": {}, \"weight_map\": {");
        for (int i = 0; i < n; i++)
            fprintf(f, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "",
                    names[i], i < half ? 1 : 2);
        fprintf(f, "}}\n");
        fclose(f);
    }
    for (int i = 0; i < n; i++) {
        free(buf[i]);
        free((char *)names[i]);
    }
    st_close(s);
}

static void rm_tmp(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

Test(model, loads_f16_bf16_and_shards)
{
    struct { st_dtype dt; int sharded; double tol; } v[] = {
        {ST_F32, 1, 1e-4}, {ST_F16, 0, 0.05}, {ST_BF16, 1, 0.5}};
    model *ref;
    cr_assert_eq(load_only(TINY, &ref), 0, "%s", err_msg());
    size_t n_emb = (size_t)ref->cfg.vocab_size * ref->cfg.hidden;
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        make_tmp();
        resave(v[i].dt, v[i].sharded);
        model *m;
        cr_assert_eq(load_only(tmpdir, &m), 0, "%s", err_msg());
        /* the weights are the fixture's, rounded to the stored dtype */
        const float *a = ref->tok_emb, *b = m->tok_emb;
        double worst = 0;
        for (size_t k = 0; k < n_emb; k++)
            worst = fmax(worst, fabs((double)a[k] - b[k]) / (fabs(a[k]) + 1e-3));
        double eps = v[i].dt == ST_F32 ? 0 : v[i].dt == ST_F16 ? 1e-3 : 8e-3;
        cr_assert_leq(worst, eps, "dtype %d: relative weight error %g", v[i].dt, worst);
        if (v[i].dt == ST_F32)
            run_cases(tmpdir, 1, NULL, v[i].tol); /* shards give the golden logits */
        model_destroy(m);
        rm_tmp();
    }
    model_destroy(ref);
}

/* Sinks that keep every layer blob of a load, to compare two loads. */
typedef struct keep_blobs {
    char *blob[8];
    size_t bytes;
} keep_blobs;

static int keep_sink(void *ud, int layer, const void *blob, int wq, int fd, uint64_t off)
{
    (void)wq, (void)fd, (void)off;
    keep_blobs *k = ud;
    cr_assert(layer < 8);
    k->blob[layer] = malloc(k->bytes);
    cr_assert(k->blob[layer]);
    memcpy(k->blob[layer], blob, k->bytes);
    return 0;
}

/* A checkpoint whose layer tensors are all fp16 (bf16) says so
 * (model_hf_h16), and loading it with its layers kept in those 16 bits
 * hands the sink blobs that widen (kern_widen_ref, tensor by tensor) to
 * exactly the fp32 blobs of the plain load: the values the CPU backend
 * computes with are the same either way. fp32 checkpoints stay fp32. */
Test(model, f16_and_bf16_checkpoints_load_as_16_bit_layers_exactly)
{
    cr_assert_eq(model_hf_h16(TINY), 0);
    struct { st_dtype dt; int h16; } v[] = {{ST_F16, KERN_H16_F16}, {ST_BF16, KERN_H16_BF16}};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        make_tmp();
        resave(v[i].dt, 0);
        cr_assert_eq(model_hf_h16(tmpdir), v[i].h16, "%s", err_msg());
        model_config c;
        cr_assert_eq(model_config_of(tmpdir, &c), 0, "%s", err_msg());
        size_t off2[MT_COUNT], off4[MT_COUNT], n[MT_COUNT];
        keep_blobs a = {.bytes = model_layer_layout(&c, 4, off4, n)};
        keep_blobs b = {.bytes = model_layer_layout(&c, 2, off2, NULL)};
        model *ma, *mb;
        cr_assert_eq(model_load_hf_sink(tmpdir, &be, keep_sink, &a, &ma), 0, "%s", err_msg());
        cr_assert_eq(model_load_hf_h16(tmpdir, &be, v[i].h16, 0, keep_sink, &b, &mb), 0, "%s",
                     err_msg());
        for (int l = 0; l < c.n_layer; l++) {
            for (int t = 0; t < MT_COUNT; t++) {
                float *w = malloc(n[t] * sizeof(float) + 1);
                kern_widen_ref(w, (const uint16_t *)(b.blob[l] + off2[t]), n[t],
                               (kern_h16)v[i].h16);
                cr_assert(memcmp(w, a.blob[l] + off4[t], n[t] * sizeof(float)) == 0,
                          "dtype %d layer %d tensor %d: the 16-bit blob widens to other values",
                          v[i].dt, l, t);
                free(w);
            }
            free(a.blob[l]);
            free(b.blob[l]);
        }
        model_destroy(ma);
        model_destroy(mb);
        rm_tmp();
    }
}

/* Element conversions between the store types: each the per-value
 * rounding of kernels/kern.h (fp16) and safetensors.c (bf16), through fp32
 * between the two 16-bit types; a bf16 store keeps what fp16 cannot
 * (1e30 is inf in fp16). */
Test(model, convert_elems_between_f32_f16_bf16)
{
    const float x[] = {0.0f, -0.0f, 1.0f, -2.5f, 3.14159f, 1e-8f, 65504.0f, 7e4f, 1e30f,
                       -1e-30f, INFINITY, NAN};
    enum { N = sizeof x / sizeof *x };
    uint16_t h[N], b[N], hb[N], bh[N];
    float back[N];
    model_convert_elems(h, OFF_DTYPE_F16, x, OFF_DTYPE_F32, N);
    model_convert_elems(b, OFF_DTYPE_BF16, x, OFF_DTYPE_F32, N);
    model_convert_elems(hb, OFF_DTYPE_BF16, h, OFF_DTYPE_F16, N);
    model_convert_elems(bh, OFF_DTYPE_F16, b, OFF_DTYPE_BF16, N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(h[i], kern_f32_to_f16(x[i]), "%g", x[i]);
        cr_assert_eq(b[i], st_f32_to_bf16(x[i]), "%g", x[i]);
        cr_assert_eq(hb[i], st_f32_to_bf16(kern_f16_to_f32(h[i])), "%g", x[i]);
        cr_assert_eq(bh[i], kern_f32_to_f16(st_bf16_to_f32(b[i])), "%g", x[i]);
    }
    cr_assert_eq(b[2], 0x3f80);
    cr_assert_eq(h[2], 0x3c00);
    cr_assert_eq(h[8], 0x7c00, "1e30 overflows fp16");
    model_convert_elems(back, OFF_DTYPE_F32, b, OFF_DTYPE_BF16, N);
    cr_assert(back[8] > 9.9e29f && back[8] < 1.01e30f, "%g", back[8]);
    cr_assert(isnan(back[11]));
    uint16_t same[N];
    model_convert_elems(same, OFF_DTYPE_BF16, b, OFF_DTYPE_BF16, N);
    cr_assert_eq(memcmp(same, b, sizeof b), 0);
}

/* A bf16 store (convert --dtype bf16) of a bf16 checkpoint holds its
 * values exactly: kept 16-bit, its layers are the checkpoint's bf16 layers
 * bit for bit; converted for an fp32 backend, the checkpoint's fp32 load;
 * its globals too. */
Test(model, bf16_store_keeps_a_bf16_checkpoint_exactly)
{
    make_tmp();
    resave(ST_BF16, 0);
    char st[300];
    snprintf(st, sizeof st, "%s/st", tmpdir);
    cr_assert_eq(model_convert(tmpdir, st, OFF_DTYPE_BF16), 0, "%s", err_msg());
    uint32_t dt = 0;
    cr_assert_eq(model_store_dtype(st, &dt), 1, "%s", err_msg());
    cr_assert_eq(dt, OFF_DTYPE_BF16);
    model_config c;
    cr_assert_eq(model_config_of(tmpdir, &c), 0, "%s", err_msg());
    size_t off2[MT_COUNT], off4[MT_COUNT], n[MT_COUNT];
    keep_blobs hf16 = {.bytes = model_layer_layout(&c, 2, off2, n)};
    keep_blobs st16 = {.bytes = hf16.bytes};
    keep_blobs hf32 = {.bytes = model_layer_layout(&c, 4, off4, NULL)};
    keep_blobs st32 = {.bytes = hf32.bytes};
    model *a, *b, *x, *y;
    cr_assert_eq(model_load_hf_h16(tmpdir, &be, KERN_H16_BF16, 0, keep_sink, &hf16, &a), 0, "%s",
                 err_msg());
    cr_assert_eq(model_load_store(st, &be, NULL, KERN_H16_BF16, 0, keep_sink, &st16, &b), 0, "%s",
                 err_msg());
    cr_assert_eq(model_load_hf_sink(tmpdir, &be, keep_sink, &hf32, &x), 0, "%s", err_msg());
    cr_assert_eq(model_load_store(st, &be, NULL, 0, 0, keep_sink, &st32, &y), 0, "%s", err_msg());
    for (int l = 0; l < c.n_layer; l++) {
        for (int t = 0; t < MT_COUNT; t++) {
            cr_assert_eq(memcmp(hf16.blob[l] + off2[t], st16.blob[l] + off2[t], n[t] * 2), 0,
                         "layer %d tensor %d: bf16 bits differ", l, t);
            cr_assert_eq(memcmp(hf32.blob[l] + off4[t], st32.blob[l] + off4[t], n[t] * 4), 0,
                         "layer %d tensor %d: fp32 values differ", l, t);
        }
        free(hf16.blob[l]);
        free(st16.blob[l]);
        free(hf32.blob[l]);
        free(st32.blob[l]);
    }
    size_t n_emb = (size_t)c.vocab_size * c.hidden;
    cr_assert_eq(memcmp(x->tok_emb, y->tok_emb, n_emb * sizeof(float)), 0);
    cr_assert_eq(memcmp(a->tok_emb, b->tok_emb, n_emb * sizeof(float)), 0);
    model_destroy(a);
    model_destroy(b);
    model_destroy(x);
    model_destroy(y);
    rm_tmp();
}

static int load_store(const char *dir, model **m);

/* A store's globals load through a window of 65 536 fp32 values (no whole
 * fp32 copy of the embedding at the peak): an embedding of 5 windows and a
 * bit loads exactly as from the checkpoint, from an f32 and a bf16 store. */
Test(model, store_globals_larger_than_the_upload_window_load_exactly)
{
    make_tmp();
    model_config c;
    cr_assert_eq(model_config_of(TINY, &c), 0, "%s", err_msg());
    c.vocab_size = 5 * 1024 + 16; /* x 64 = 5 windows + 1024 values */
    char hf[300], st[300], sb[300];
    snprintf(hf, sizeof hf, "%s/hf", tmpdir);
    snprintf(st, sizeof st, "%s/st", tmpdir);
    snprintf(sb, sizeof sb, "%s/sb", tmpdir);
    cr_assert_eq(model_write_random(&c, hf, 7), 0, "%s", err_msg());
    cr_assert_eq(model_convert(hf, st, OFF_DTYPE_F32), 0, "%s", err_msg());
    cr_assert_eq(model_convert(hf, sb, OFF_DTYPE_BF16), 0, "%s", err_msg());
    model *a, *b, *x;
    cr_assert_eq(load_only(hf, &a), 0, "%s", err_msg());
    cr_assert_eq(load_store(st, &b), 0, "%s", err_msg());
    cr_assert_eq(load_store(sb, &x), 0, "%s", err_msg());
    size_t n = (size_t)c.vocab_size * c.hidden;
    const float *ea = a->tok_emb, *eb = b->tok_emb, *ex = x->tok_emb;
    cr_assert_eq(memcmp(ea, eb, n * sizeof(float)), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ex[i], st_bf16_to_f32(st_f32_to_bf16(ea[i])), "value %zu", i);
    model_destroy(a);
    model_destroy(b);
    model_destroy(x);
    rm_tmp();
}

/* A shard index naming a file outside the model directory (absolute or
 * through "..") is refused, even when that file is a valid shard (found
 * by reading st_open_dir; tests/fuzz/fuzz_st_index.c checks it). */
Test(model, shard_outside_the_directory_is_refused)
{
    make_tmp();
    char sub[600], path[700];
    snprintf(sub, sizeof sub, "%s/m", tmpdir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    static const float x[2] = {1, 2};
    st_out t = {"x", 1, {2}, x};
    snprintf(path, sizeof path, "%s/outside.safetensors", tmpdir);
    cr_assert_eq(st_write(path, &t, 1, ST_F32), 0, "%s", err_msg());
    const char *names[] = {"../outside.safetensors", path, "a/../../outside.safetensors"};
    for (int i = 0; i < 3; i++) {
        char idx[1200];
        snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sub);
        FILE *f = fopen(idx, "w");
        fprintf(f, "{\"weight_map\": {\"x\": \"%s\"}}", names[i]);
        fclose(f);
        st_set *s = NULL;
        err_clear();
        cr_assert_eq(st_open_dir(sub, &s), -EINVAL, "%s opened", names[i]);
        cr_assert(strstr(err_msg(), "which is not a file name in"), "msg: %s", err_msg());
    }
    cr_assert(st_shard_name_ok("model-00001-of-00002.safetensors") &&
              st_shard_name_ok("a..b.safetensors") && !st_shard_name_ok("") &&
              !st_shard_name_ok("sub/a.safetensors") && !st_shard_name_ok(".."));
    rm_tmp();
}

Test(model, truncated_safetensors_is_reported)
{
    make_tmp();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    copy_file(TINY "/config.json", path);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    copy_file(TINY "/model.safetensors", path);
    struct stat st;
    stat(path, &st);
    cr_assert_eq(truncate(path, st.st_size - 1000), 0);
    model *m = NULL;
    err_clear();
    int rc = load_only(tmpdir, &m);
    cr_assert_eq(rc, -EINVAL);
    cr_assert_null(m);
    cr_assert(strstr(err_msg(), "model.safetensors: truncated"), "msg: %s", err_msg());
    cr_assert(strstr(err_msg(), "re-download"), "msg: %s", err_msg());
    rm_tmp();
}

Test(model, shape_mismatch_names_tensor)
{
    make_tmp();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    copy_file(TINY "/model.safetensors", path);
    /* config.json claims a wider FFN than the checkpoint has */
    char *cfg;
    size_t len;
    cr_assert_eq(off_read_file(TINY "/config.json", &cfg, &len), 0);
    char *p = strstr(cfg, "\"ffn_dim\": 256");
    cr_assert(p);
    memcpy(p, "\"ffn_dim\": 128", 14);
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    fputs(cfg, f);
    fclose(f);
    free(cfg);
    model *m = NULL;
    err_clear();
    cr_assert_eq(load_only(tmpdir, &m), -EINVAL);
    cr_assert(strstr(err_msg(), "tensor model.decoder.layers.0.fc1.weight has shape "
                                "[256, 64] but config.json implies [128, 64]"),
              "msg: %s", err_msg());
    rm_tmp();
}

Test(model, missing_files_are_reported)
{
    model *m = NULL;
    err_clear();
    cr_assert_eq(load_only("/nonexistent/model", &m), -ENOENT);
    cr_assert(strstr(err_msg(), "/nonexistent/model: model directory not found"), "%s",
              err_msg());
    make_tmp();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    copy_file(TINY "/config.json", path);
    err_clear();
    cr_assert_eq(load_only(tmpdir, &m), -ENOENT);
    cr_assert(strstr(err_msg(), "no model.safetensors"), "%s", err_msg());
    /* corrupt config.json */
    FILE *f = fopen(path, "w");
    fputs("{\"hidden_size\": 64,", f);
    fclose(f);
    err_clear();
    cr_assert_eq(load_only(tmpdir, &m), -EINVAL);
    cr_assert(strstr(err_msg(), "config.json: not valid JSON"), "%s", err_msg());
    rm_tmp();
}

Test(model, post_layernorm_opt_is_refused)
{
    model_config c;
    err_clear();
    cr_assert_eq(model_config_by_name("opt-350m", &c), -EINVAL);
    cr_assert(strstr(err_msg(), "post-LayerNorm"), "%s", err_msg());
    cr_assert_eq(model_config_by_name("opt-30b", &c), 0);
    cr_assert_eq(c.hidden, 7168);
    cr_assert_eq(c.n_head, 56);
    cr_assert_eq(c.head_dim, 128);
    /* OPT-30B has about 30 billion parameters */
    cr_assert(model_config_params(&c) > 29.5e9 && model_config_params(&c) < 30.5e9);
}

/* ------------------------------------------------------------ bad input (issue 15) */

/* The tiny fixture's config.json with one "key": value pair replaced
 * (from must be in it), parsed as config.json. @return as
 * model_config_parse. */
static int parse_edited(const char *from, const char *to, model_config *c)
{
    char *cfg;
    size_t len;
    cr_assert_eq(off_read_file(TINY "/config.json", &cfg, &len), 0, "%s", err_msg());
    char *p = strstr(cfg, from);
    cr_assert(p, "the fixture has no %s", from);
    char buf[4096];
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - cfg), cfg, to, p + strlen(from));
    free(cfg);
    err_clear();
    return model_config_parse(buf, strlen(buf), "m/config.json", c);
}

/* Every number of config.json is checked where it is read, against a range
 * that keeps the sizes made from it clear of overflow, before any cast: the
 * message names the file, the field and the range. Token ids the engine
 * feeds or stops on must be rows of the embedding table. */
Test(model, config_numbers_are_range_checked)
{
    static const struct {
        const char *from, *to, *want;
    } cases[] = {
        {"\"max_position_embeddings\": 128", "\"max_position_embeddings\": 2147483647",
         "\"max_position_embeddings\" is 2147483647; it must be an integer from 1 to 16777216"},
        {"\"max_position_embeddings\": 128", "\"max_position_embeddings\": -5",
         "\"max_position_embeddings\" is -5; it must be an integer from 1 to 16777216"},
        {"\"num_hidden_layers\": 3", "\"num_hidden_layers\": 1e9",
         "\"num_hidden_layers\" is 1000000000; it must be an integer from 1 to 1024"},
        {"\"hidden_size\": 64", "\"hidden_size\": 2147483584",
         "\"hidden_size\" is 2147483584; it must be an integer from 1 to 65536"},
        {"\"ffn_dim\": 256", "\"ffn_dim\": 2147483647",
         "\"ffn_dim\" is 2147483647; it must be an integer from 1 to 1048576"},
        {"\"vocab_size\": 512", "\"vocab_size\": 1e300",
         "\"vocab_size\" is 1.0000000000000001e+300; it must be an integer from 1 to 16777216"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 1e10",
         "\"num_attention_heads\" is 10000000000; it must be an integer from 1 to 1024"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 4.5",
         "\"num_attention_heads\" is 4.5; it must be an integer from 1 to 1024"},
        {"\"bos_token_id\": 2", "\"bos_token_id\": -7",
         "\"bos_token_id\" is -7; it must be an integer from -1 to 16777215 (or null for none)"},
        {"\"bos_token_id\": 2", "\"bos_token_id\": 100000",
         "\"bos_token_id\" 100000 is not in the vocabulary (vocab_size 512): it must be from 0 "
         "to 511, or null for none"},
        {"\"eos_token_id\": 2", "\"eos_token_id\": [512, 2]",
         "\"eos_token_id\" 512 is not in the vocabulary (vocab_size 512)"},
        {"\"eos_token_id\": 2", "\"eos_token_id\": [2, -3]",
         "\"eos_token_id\" is -3; it must be an integer from -1"},
        {"\"pad_token_id\": 1", "\"pad_token_id\": 512",
         "\"pad_token_id\" 512 is not in the vocabulary"},
    };
    model_config c;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = parse_edited(cases[i].from, cases[i].to, &c);
        cr_expect_eq(rc, -EINVAL, "%s was accepted", cases[i].to);
        cr_expect(strstr(err_msg(), "m/config.json: ") && strstr(err_msg(), cases[i].want),
                  "%s: unclear message: %s", cases[i].to, err_msg());
    }
    /* floats: a norm's epsilon in [0, 1], any other one a float */
    static const char *const llama[][2] = {
        {"\"rms_norm_eps\": 1e300", "\"rms_norm_eps\" must be a number from 0 to 1"},
        {"\"rope_theta\": -1e300", "\"rope_theta\" must be a number from"},
    };
    for (size_t i = 0; i < 2; i++) {
        char js[512];
        snprintf(js, sizeof js, "{\"model_type\": \"llama\", \"vocab_size\": 64, "
                 "\"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 1, "
                 "\"num_attention_heads\": 2, %s}", llama[i][0]);
        err_clear();
        cr_expect_eq(model_config_parse(js, strlen(js), "m/config.json", &c), -EINVAL,
                     "%s was accepted", llama[i][0]);
        cr_expect(strstr(err_msg(), llama[i][1]), "unclear message: %s", err_msg());
    }
    /* -1 and null say "none"; the largest id of the vocabulary is one */
    cr_assert_eq(parse_edited("\"pad_token_id\": 1", "\"pad_token_id\": -1", &c), 0, "%s",
                 err_msg());
    cr_assert_eq(c.pad_id, -1);
    cr_assert_eq(parse_edited("\"bos_token_id\": 2", "\"bos_token_id\": 511", &c), 0, "%s",
                 err_msg());
    cr_assert_eq(c.bos_id, 511);
    /* not an object: refused, and nothing leaks (ASan) */
    err_clear();
    cr_assert_eq(model_config_parse("[1, 2]", 6, "m/config.json", &c), -EINVAL);
    cr_assert(strstr(err_msg(), "m/config.json: not a JSON object"), "%s", err_msg());
}

/* The weight store at dir with the config.json in its header edited (from
 * -> to) and the header checksum recomputed: a store whose header and
 * config disagree, as a damaged or hand-edited one would. */
static void store_edit_config(const char *dir, const char *from, const char *to)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.flxh2o", dir);
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    uint8_t h[OFF_ALIGN], out[OFF_ALIGN] = {0};
    cr_assert_eq(fread(h, 1, sizeof h, f), sizeof h);
    uint32_t n_seg = h[16] | h[17] << 8, cfg_len = h[20] | h[21] << 8 | h[22] << 16;
    char cfg[OFF_ALIGN];
    memcpy(cfg, h + 24, cfg_len);
    cfg[cfg_len] = 0;
    char *p = strstr(cfg, from);
    cr_assert(p, "the store's config has no %s", from);
    char edited[OFF_ALIGN];
    int n = snprintf(edited, sizeof edited, "%.*s%s%s", (int)(p - cfg), cfg, to,
                     p + strlen(from));
    size_t segs = (size_t)n_seg * (48 + 24);
    cr_assert_lt(24 + (size_t)n + segs + 8, sizeof out, "the header outgrows its block");
    memcpy(out, h, 20);
    for (int i = 0; i < 4; i++)
        out[20 + i] = (uint8_t)((uint32_t)n >> (8 * i));
    memcpy(out + 24, edited, (size_t)n);
    memcpy(out + 24 + n, h + 24 + cfg_len, segs);
    uint64_t x = XXH64(out, 24 + (size_t)n + segs, 0);
    for (int i = 0; i < 8; i++)
        out[24 + n + segs + (size_t)i] = (uint8_t)(x >> (8 * i));
    cr_assert_eq(fseek(f, 0, SEEK_SET), 0);
    cr_assert_eq(fwrite(out, 1, sizeof out, f), sizeof out);
    fclose(f);
}

static int load_store(const char *dir, model **m)
{
    return model_load_store(dir, &be, NULL, 0, 0, discard_sink, NULL, m);
}

/* A store's segments are checked against its config before anything is
 * read or copied: a missing, extra or wrongly sized segment is refused by
 * name (a vocabulary grown in the config once overran the embedding copy),
 * and a damaged magic says so instead of taking the store for a Hugging
 * Face directory. */
Test(model, store_segments_must_match_its_config)
{
    make_tmp();
    char st[300], cmd[1024];
    snprintf(st, sizeof st, "%s/st", tmpdir);
    cr_assert_eq(model_convert(TINY, st, OFF_DTYPE_F32), 0, "%s", err_msg());
    snprintf(cmd, sizeof cmd, "cp -r %s %s.orig", st, st);
    cr_assert_eq(system(cmd), 0);
    model *m = NULL;
    cr_assert_eq(load_store(st, &m), 0, "%s", err_msg());
    model_destroy(m);
    static const struct {
        const char *from, *to, *want;
    } cases[] = {
        {"\"vocab_size\": 512", "\"vocab_size\": 1024",
         "segment tok_emb has 131072 bytes, but its config.json gives 262144"},
        {"\"ffn_dim\": 256", "\"ffn_dim\": 512", "segment layer.0 has"},
        {"\"max_position_embeddings\": 128", "\"max_position_embeddings\": 256",
         "segment pos_emb has"},
        {"\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2",
         "7 segments, but its config.json gives 6 (2 layers)"},
        {"\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4",
         "segment layer.3 is missing"},
        {"\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false",
         "segment lm_head is missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s.orig %s", st, st, st);
        cr_assert_eq(system(cmd), 0);
        store_edit_config(st, cases[i].from, cases[i].to);
        m = NULL;
        err_clear();
        cr_expect_eq(load_store(st, &m), -EINVAL, "%s: the store was loaded", cases[i].to);
        cr_expect_null(m);
        cr_expect(strstr(err_msg(), "model.flxh2o: ") && strstr(err_msg(), cases[i].want) &&
                      strstr(err_msg(), "run flexh2o convert again"),
                  "%s: unclear message: %s", cases[i].to, err_msg());
    }
    /* a flipped magic: a damaged store, not a Hugging Face directory */
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s.orig %s", st, st, st);
    cr_assert_eq(system(cmd), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/model.flxh2o", st);
    FILE *f = fopen(path, "r+b");
    fputc('X', f);
    fclose(f);
    model_config c;
    uint32_t dt;
    err_clear();
    cr_assert_lt(model_config_of(st, &c), 0);
    cr_assert(strstr(err_msg(), "is not a flexh2o weight store") &&
                  strstr(err_msg(), "magic") && !strstr(err_msg(), "safetensors"),
              "unclear message: %s", err_msg());
    err_clear();
    cr_assert_lt(model_store_dtype(st, &dt), 0);
    cr_assert(strstr(err_msg(), "is not a flexh2o weight store"), "%s", err_msg());
    rm_tmp();
}

/* Write a safetensors file at dir/name with header JSON hdr and n bytes of
 * zero data. */
static void put_safetensors(const char *dir, const char *name, const char *hdr, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    uint64_t hl = strlen(hdr);
    for (int i = 0; i < 8; i++)
        fputc((int)(hl >> (8 * i)) & 0xff, f);
    fputs(hdr, f);
    for (size_t i = 0; i < n; i++)
        fputc(0, f);
    fclose(f);
}

static void st_refused(const char *dir, const char *name, const char *want)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    st_set *s = NULL;
    err_clear();
    int rc = name[0] ? st_open_file(path, &s) : st_open_dir(dir, &s);
    cr_expect_eq(rc, -EINVAL, "%s was accepted (want: %s)", name[0] ? path : dir, want);
    cr_expect(strstr(err_msg(), want), "unclear message: %s (want: %s)", err_msg(), want);
    if (rc == 0)
        st_close(s);
}

/* A safetensors header's tensors must lie within the data section and not
 * share bytes; offsets and shapes are whole numbers from 0, checked before
 * any cast. An index's shards are plain file names of the model directory:
 * a name that climbs out of it, an absolute path or a name with '/' is
 * refused before anything is opened. */
Test(model, safetensors_offsets_and_shard_names_are_checked)
{
    make_tmp();
    const char *ok = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                     "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}";
    put_safetensors(tmpdir, "ok.safetensors", ok, 16);
    st_set *s;
    char okp[512];
    snprintf(okp, sizeof okp, "%s/ok.safetensors", tmpdir);
    cr_assert_eq(st_open_file(okp, &s), 0, "%s", err_msg());
    cr_assert(st_find(s, "a") && st_find(s, "b"));
    st_close(s);

    put_safetensors(tmpdir, "overlap.safetensors",
                    "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}, "
                    "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                    16);
    st_refused(tmpdir, "overlap.safetensors", "tensors b and a overlap in the data section");
    put_safetensors(tmpdir, "reversed.safetensors",
                    "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 0]}}",
                    16);
    st_refused(tmpdir, "reversed.safetensors",
               "tensor a has data_offsets [8, 0]: the end is before the start");
    put_safetensors(tmpdir, "negative.safetensors",
                    "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 0]}}",
                    16);
    st_refused(tmpdir, "negative.safetensors",
               "tensor a has data_offsets [-8, 0]; they must be two byte offsets");
    put_safetensors(tmpdir, "past.safetensors",
                    "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
                    16);
    st_refused(tmpdir, "past.safetensors", "past.safetensors: truncated: tensor a ends at byte");
    put_safetensors(tmpdir, "shape.safetensors",
                    "{\"a\": {\"dtype\": \"F32\", \"shape\": [-2, -1], \"data_offsets\": "
                    "[0, 8]}}", 16);
    st_refused(tmpdir, "shape.safetensors", "tensor a has a bad shape");
    put_safetensors(tmpdir, "array.safetensors", "[1, 2]", 16); /* no leak (ASan) */
    st_refused(tmpdir, "array.safetensors", "corrupt safetensors header");

    const char *bad[] = {"../../../../etc/passwd", "/etc/passwd", "sub/ok.safetensors", ".."};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char idx[512], want[512];
        snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", tmpdir);
        FILE *f = fopen(idx, "w");
        fprintf(f, "{\"weight_map\": {\"a\": \"ok.safetensors\", \"b\": \"%s\"}}", bad[i]);
        fclose(f);
        snprintf(want, sizeof want, "weight_map gives tensor b the shard \"%s\", which is not "
                 "a file name in %s", bad[i], tmpdir);
        st_refused(tmpdir, "", want);
    }
    rm_tmp();
}
