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
#include "model.h"
#include "safetensors.h"
#include "scheduler.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define GOLDEN FH_SOURCE_ROOT "/tests/fixtures/tiny-opt-golden.json"

typedef struct gcase {
    int32_t ids[64];
    int n_ids, n_new;
    int32_t tok[16];
    double lp[16];
    float *logits; /* (n_new, V) */
} gcase;

static gcase cases[8];
static int n_cases, vocab;

static void load_golden(void)
{
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(GOLDEN, &buf, &len), 0, "%s", err_msg());
    cJSON *g = cJSON_Parse(buf);
    free(buf);
    cr_assert(g);
    const cJSON *cs = cJSON_GetObjectItem(g, "cases"), *c;
    n_cases = 0;
    cJSON_ArrayForEach(c, cs) {
        gcase *k = &cases[n_cases++];
        const cJSON *e, *st;
        k->n_ids = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "prompt_ids"))
            k->ids[k->n_ids++] = e->valueint;
        k->n_new = 0;
        cJSON_ArrayForEach(st, cJSON_GetObjectItem(c, "steps")) {
            const cJSON *lg = cJSON_GetObjectItem(st, "logits");
            vocab = cJSON_GetArraySize(lg);
            if (!k->logits)
                k->logits = malloc(sizeof(float) * 16 * (size_t)vocab);
            int i = 0;
            cJSON_ArrayForEach(e, lg)
                k->logits[(size_t)k->n_new * vocab + i++] = (float)e->valuedouble;
            k->tok[k->n_new] = cJSON_GetObjectItem(st, "token")->valueint;
            k->lp[k->n_new] = cJSON_GetObjectItem(st, "logprob")->valuedouble;
            k->n_new++;
        }
    }
    cJSON_Delete(g);
    cr_assert_geq(n_cases, 4);
}

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

/* The production path for a block of `block` sequences: a scheduler with
 * everything on the "GPU" tier (the CPU backend's memory), the model loaded
 * through its sink. */
typedef struct engine {
    sched *s;
    model *m;
} engine;

static void engine_open(const char *dir, int block, engine *e)
{
    model_config c;
    cr_assert_eq(model_config_of(dir, &c), 0, "%s", err_msg());
    sched_model shape, bound;
    model_sched_shape(&c, &shape);
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = block;
    sched_shape sh = {.max_rows = 512, .cap = 128};
    cr_assert_eq(sched_create(&be, &shape, &p, &sh, NULL, &e->s), 0, "%s", err_msg());
    cr_assert_eq(model_load_hf_sink(dir, &be, sched_layer_sink, e->s, &e->m), 0, "%s",
                 err_msg());
    model_sched_bind(e->m, &bound);
    cr_assert_eq(sched_attach(e->s, &bound), 0, "%s", err_msg());
}

static void engine_close(engine *e)
{
    sched_destroy(e->s);
    model_destroy(e->m);
}

/* Greedy-generate the golden cases with the engine, all of them in one
 * batch (batched) or one at a time, checking every step's logits against
 * the golden file; returns the worst logit error. got (n_cases, n_new, V)
 * receives the logits when non-NULL. */
static double run_cases(const char *dir, int batched, float *got, double tol)
{
    int B = batched ? n_cases : 1;
    engine e;
    engine_open(dir, B, &e);
    float *lg = malloc(sizeof(float) * (size_t)B * vocab);
    double worst = 0;
    for (int first = 0; first < n_cases; first += B) {
        int32_t ids[512], pos[512], last[8], cur[8];
        kern_seq seqs[8];
        int rows = 0;
        for (int s = 0; s < B; s++) {
            gcase *k = &cases[first + s];
            seqs[s] = (kern_seq){.row = rows, .n_new = k->n_ids, .budget = 128, .recent = 1};
            for (int j = 0; j < k->n_ids; j++) {
                ids[rows] = k->ids[j];
                pos[rows++] = j;
            }
            last[s] = rows - 1;
        }
        for (int step = 0; step < cases[first].n_new; step++) {
            cr_assert_eq(sched_forward(e.s, ids, pos, rows, seqs, B, last, B, step), 0, "%s",
                         err_msg());
            be.ops->download(be.ctx, lg, sched_logits(e.s), (size_t)B * vocab);
            rows = 0;
            for (int s = 0; s < B; s++) {
                gcase *k = &cases[first + s];
                const float *ref = k->logits + (size_t)step * vocab;
                const float *out = lg + (size_t)s * vocab;
                int arg = 0;
                for (int v = 0; v < vocab; v++) {
                    double e = fabs((double)out[v] - ref[v]);
                    if (e > worst)
                        worst = e;
                    cr_assert_leq(e, tol, "case %d step %d logit %d: got %.7g want %.7g",
                                  first + s, step, v, out[v], ref[v]);
                    if (out[v] > out[arg])
                        arg = v;
                }
                if (got)
                    memcpy(got + ((size_t)(first + s) * 16 + step) * vocab, out,
                           sizeof(float) * vocab);
                cr_assert_eq(arg, k->tok[step], "case %d step %d: greedy %d want %d",
                             first + s, step, arg, k->tok[step]);
                cur[s] = arg;
                seqs[s].n_past += seqs[s].n_new;
                seqs[s].n_slots = seqs[s].n_past;
                seqs[s].row = rows;
                seqs[s].n_new = 1;
                ids[rows] = cur[s];
                pos[rows] = seqs[s].n_past;
                last[s] = rows++;
            }
        }
    }
    free(lg);
    engine_close(&e);
    return worst;
}

static void setup(void)
{
    err_clear();
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    load_golden();
}
static void teardown(void)
{
    for (int i = 0; i < n_cases; i++) {
        free(cases[i].logits);
        cases[i].logits = NULL;
    }
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
    size_t n = (size_t)n_cases * 16 * vocab;
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
    for (int c = 0; c < n_cases; c++)
        for (int s = 0; s < cases[c].n_new; s++) {
            float lp;
            int32_t t = kern_sample_ref(cases[c].logits + (size_t)s * vocab, vocab, 0.0f,
                                        1.0f, 0.5, &lp, scratch, sizeof scratch);
            cr_assert_eq(t, cases[c].tok[s]);
            cr_assert_float_eq(lp, cases[c].lp[s], 1e-5, "case %d step %d: %g vs %g", c,
                               s, lp, cases[c].lp[s]);
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
