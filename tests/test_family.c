/* test_family.c: every model family (DESIGN.md "Model families") against
 * Hugging Face transformers, from tiny random checkpoints and goldens
 * written by tests/fixtures/gen_family_golden.py: llama (grouped-query
 * attention in groups of 4, head_dim 16 with hidden / heads 8, llama3 RoPE
 * scaling, MLP biases), mistral (a sliding window the generation outgrows),
 * qwen2 (q/k/v biases, tied head), gpt_neox (partial rotary, parallel and
 * sequential residual). Then, per family: `generate` gives the golden
 * tokens, every placement of the offloading matrix gives the all-resident
 * run's bytes (H2O and 4-bit weights and KV too), make-model, convert and
 * the store work; the shapes of configs/models parse to their published
 * parameter counts; configs that change the math in ways the engine does
 * not run are refused by the field's name. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "golden_harness.h"
#include "model.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"

static const char *const families[] = {"llama", "mistral", "qwen2", "neox", "neox-seq"};
#define N_FAMILIES (sizeof families / sizeof *families)

static backend be;

static void setup(void)
{
    err_clear();
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    cli_setup();
}

static void teardown(void)
{
    cli_teardown();
    backend_destroy(&be);
}

TestSuite(family, .init = setup, .fini = teardown, .timeout = 240);

static void golden_of(const char *fam, golden *g, char *dir, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, FIX "tiny-%s-golden.json", fam);
    golden_load(g, path);
    snprintf(dir, cap, FIX "tiny-%s", fam);
}

Test(family, logits_match_transformers_single_and_batched)
{
    for (size_t f = 0; f < N_FAMILIES; f++) {
        golden g;
        char dir[512];
        golden_of(families[f], &g, dir, sizeof dir);
        size_t n = (size_t)g.n_cases * GOLDEN_MAX_NEW * g.vocab;
        float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
        double w1 = golden_run(&be, &g, dir, 0, a, 1e-4);
        double w2 = golden_run(&be, &g, dir, 1, b, 1e-4);
        double diff = 0;
        for (size_t i = 0; i < n; i++)
            diff = fmax(diff, fabs((double)a[i] - b[i]));
        cr_assert_leq(diff, 1e-5, "%s: batched differs from single by %.3g", families[f], diff);
        cr_log_info("%s: worst |logit - transformers| %.3g single, %.3g batched", families[f],
                    w1, w2);
        free(a);
        free(b);
        golden_free(&g);
    }
}

/* The golden prompts as a prompt_ids job. */
static void write_golden_job(const golden *g)
{
    char job[8192];
    size_t at = 0;
    for (int c = 0; c < g->n_cases; c++) {
        at += (size_t)snprintf(job + at, sizeof job - at, "{\"id\": \"c%d\", \"prompt_ids\": [",
                               c);
        for (int i = 0; i < g->cases[c].n_ids; i++)
            at += (size_t)snprintf(job + at, sizeof job - at, "%s%d", i ? ", " : "",
                                   g->cases[c].ids[i]);
        at += (size_t)snprintf(job + at, sizeof job - at, "]}\n");
    }
    cli_write("golden.jsonl", job);
}

/* `generate` (gen_run: the KV split, a sliding window included, and the
 * sampler) writes the golden tokens and their log-probabilities. */
Test(family, generate_writes_the_golden_tokens)
{
    for (size_t f = 0; f < N_FAMILIES; f++) {
        golden g;
        char dir[512], out[64];
        golden_of(families[f], &g, dir, sizeof dir);
        write_golden_job(&g);
        snprintf(out, sizeof out, "g-%s.jsonl", families[f]);
        cr_assert_eq(cli_run("generate --model %s --prompts golden.jsonl --out %s "
                             "--max-new-tokens %d --batch-size 3 --ignore-eos --quiet", dir,
                             out, g.cases[0].n_new), 0, "%s: %s", families[f], cli_err);
        char *text = cli_read(out), *line = text;
        for (int c = 0; c < g.n_cases; c++) {
            char *t = strstr(line, "\"tokens\":["), *l = strstr(line, "\"logprobs\":[");
            cr_assert(t && l, "%s case %d: no record", families[f], c);
            t += strlen("\"tokens\":[");
            l += strlen("\"logprobs\":[");
            for (int s = 0; s < g.cases[c].n_new; s++) {
                long tok = strtol(t, &t, 10);
                double lp = strtod(l, &l);
                cr_assert_eq(tok, g.cases[c].tok[s], "%s case %d step %d: token %ld want %d",
                             families[f], c, s, tok, g.cases[c].tok[s]);
                cr_assert_float_eq(lp, g.cases[c].lp[s], 1e-4, "%s case %d step %d: logprob "
                                   "%g want %g", families[f], c, s, lp, g.cases[c].lp[s]);
                t += *t == ',';
                l += *l == ',';
            }
            line = strchr(l, '\n');
            cr_assert(line || c + 1 == g.n_cases);
        }
        free(text);
        golden_free(&g);
    }
}

/* Mixed lengths (one longer than mistral's window of 16), an odd count. */
static const char mixed[] =
    "{\"id\": \"a\", \"prompt\": \"Hello there, how are you\"}\n"
    "{\"id\": \"b\", \"prompt\": \"x\"}\n"
    "{\"id\": \"c\", \"prompt\": \"The quick brown fox jumps over the lazy dog and more\"}\n"
    "{\"id\": \"d\", \"prompt\": \"one two\"}\n"
    "{\"id\": \"e\", \"prompt_ids\": [2, 100, 200, 300]}\n";

static void assert_same(const char *a, const char *b, const char *what)
{
    char *x = cli_read(a), *y = cli_read(b);
    cr_assert(x && y && strlen(x) > 100, "%s: no output", what);
    cr_assert_str_eq(x, y, "%s differs from the all-resident run", what);
    free(x);
    free(y);
}

/* Every placement of the offloading matrix (weights, KV and activations
 * over the three tiers, CPU attention, overlap off) gives the bytes of the
 * all-resident run of the same block shape, for each family: with the full
 * cache, with H2O (grouped-query scores per KV head), and with 4-bit
 * weights and KV. */
Test(family, every_placement_equals_all_resident)
{
    cli_write("mixed.jsonl", mixed);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/off", cli_dir);
    cr_assert_eq(system(cmd), 0);
    static const char *kinds[] = {
        "",
        "--kv-policy h2o --kv-ratio 0.5 --sinks 1",
        "--compress-weight --compress-cache",
    };
    static const char *placements[] = {
        "--percent 0 0 100 0 100 0",                  /* weights on disk */
        "--percent 30 30 34 33 0 100",                /* everything split */
        "--percent 100 0 0 100 100 0 --cpu-attention",/* KV on the CPU, attended there */
        "--percent 20 30 0 0 0 0 --no-overlap",       /* KV and activations on disk */
        "--percent 50 0 34 33 0 100 --cpu-attention --no-pin-weight",
    };
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    int n = 0;
    for (size_t f = 0; f < N_FAMILIES; f++)
        for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
            char base[64];
            snprintf(base, sizeof base, "b%d.jsonl", n++);
            cr_assert_eq(cli_run("generate --model " FIX "tiny-%s --prompts mixed.jsonl --out %s "
                                 "--max-new-tokens 10 --ignore-eos %s %s --quiet", families[f],
                                 base, shape, kinds[k]), 0, "%s %s: %s", families[f], kinds[k],
                         cli_err);
            for (size_t p = 0; p < sizeof placements / sizeof *placements; p++) {
                char out[64], what[400];
                snprintf(out, sizeof out, "p%d.jsonl", n++);
                snprintf(what, sizeof what, "%s %s %s", families[f], kinds[k], placements[p]);
                cr_assert_eq(cli_run("generate --model " FIX "tiny-%s --prompts mixed.jsonl "
                                     "--out %s --max-new-tokens 10 --ignore-eos %s %s %s "
                                     "--offload-dir off --quiet", families[f], out, shape,
                                     kinds[k], placements[p]), 0, "%s: %s", what, cli_err);
                assert_same(base, out, what);
            }
        }
}
