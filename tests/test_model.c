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
        cr_assert(strstr(err_msg(), "outside the model directory"), "msg: %s", err_msg());
    }
    cr_assert(st_shard_name_ok("model-00001-of-00002.safetensors") &&
              st_shard_name_ok("sub/a..b.safetensors") && !st_shard_name_ok("") &&
              !st_shard_name_ok("sub/.."));
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
