/* h2o_trace.h: what the H2O tests of the fast and gpu suites share: the
 * prompts of the engine-vs-reference runs and the reader of
 * --trace-evictions files. Both work in cli_harness's scratch directory. */
#ifndef FH_H2O_TRACE_H
#define FH_H2O_TRACE_H

#include <stdint.h>

/* Lengths 12, 5 and 20, the second shorter than most budgets, so some
 * prefills drop and some fill. */
typedef struct h2o_prompt {
    const char *id;
    int32_t ids[32];
    int n, max_new;
} h2o_prompt;

#define H2O_N_PROMPTS 3
extern const h2o_prompt h2o_prompts[H2O_N_PROMPTS];

/* Write the prompts as JSONL to cli_dir/name. */
void h2o_write_prompts(const char *name);

/* One line of a --trace-evictions file. */
typedef struct h2o_ev {
    char id[32];
    int layer, head, step, pos;
} h2o_ev;

/* qsort order: id, layer, head, step, pos. */
int h2o_ev_cmp(const void *a, const void *b);

/* Parse cli_dir/name, asserting every line's form (5 keys, integers >= 0,
 * layer < n_layer, head < n_head). @return the events (*n_out of them);
 * the caller frees. */
h2o_ev *h2o_read_trace(const char *name, int n_layer, int n_head, int *n_out);

#endif
