/* golden_harness.h: a model directory against its golden file (written by
 * tests/fixtures/gen_model_golden.py or gen_family_golden.py with Hugging
 * Face transformers): greedy continuations with every step's logits. The
 * engine runs the production path: the model loaded through a scheduler's
 * layer sink and every pass through sched_forward. */
#ifndef FH_TEST_GOLDEN_HARNESS_H
#define FH_TEST_GOLDEN_HARNESS_H

#include <stdint.h>

#include "backend.h"

#define GOLDEN_MAX_CASES 8
#define GOLDEN_MAX_NEW 16

typedef struct golden_case {
    int32_t ids[64];
    int n_ids, n_new;
    int32_t tok[GOLDEN_MAX_NEW];
    double lp[GOLDEN_MAX_NEW];
    float *logits; /* (n_new, V) */
} golden_case;

typedef struct golden {
    golden_case cases[GOLDEN_MAX_CASES];
    int n_cases, vocab;
} golden;

/* Read a golden file (asserts it is there and has at least 4 cases). */
void golden_load(golden *g, const char *path);
void golden_free(golden *g);

/* Greedy-generate the cases of g with the model in dir on be, all in one
 * batch (batched) or one at a time, asserting every step's logits within
 * tol of the golden ones and the greedy token; returns the worst logit
 * error. got (n_cases, GOLDEN_MAX_NEW, V) receives the logits when not
 * NULL. A model with a sliding window of W tokens (Mistral) runs as
 * DESIGN.md says: its prefill attends each query's last W keys, and a
 * sequence that outgrows it has a `window` cache of W - 1 slots (the W
 * tokens a query attends to, itself included). */
double golden_run(backend *be, const golden *g, const char *dir, int batched, float *got,
                  double tol);

/* The logits after every token of ids[0..n) (n <= 128) under the model in
 * dir on be, full cache, one prefill pass: out (n, V) fp32. */
void golden_logits(backend *be, const char *dir, const int32_t *ids, int n, float *out);

/* tests/fixtures/eval-golden.json (gen_eval_golden.py: transformers'
 * perplexity and loglikelihoods of the golden tiny OPT), parsed; the
 * caller deletes it. */
struct cJSON;
struct cJSON *golden_eval_load(void);
/* Its loglikelihood requests (g, as loaded) as a `flexh2o score` job in
 * cli_dir's file `name`: a line each, id, context_ids, continuation_ids. */
void golden_score_job(const struct cJSON *g, const char *name);

#endif
