/* kv_copy_harness.h: sched_kv_copy checked on a backend the test made,
 * through sched_forward over a tiny model (the model loaded through the
 * scheduler's layer sink). One case is one scheduler (block shape,
 * placement, CPU attention, overlap, 4-bit KV, KV policy); kvc_check runs,
 * on it:
 *
 *   shared:    prefill the prompt as sequence 0 alone, copy it onto every
 *              other sequence of the block (every GPU batch, every tier),
 *              decode the same tokens on all: each copy's logits equal
 *              sequence 0's exactly, and with H2O its slot positions and
 *              scores after every step (the same evictions); and they equal
 *              a run where each sequence prefilled the prompt itself
 *              (within tol);
 *   diverged:  after two shared steps, each sequence gets its own tokens:
 *              each equals (within tol) its own-prefill run with that token
 *              history, and the last sequence equals exactly a run where
 *              sequence 0 alone had that history;
 *   overwrite: sequences that held other (longer) prompts and decode steps
 *              are copied over: they continue exactly as the source;
 *   refill:    a later prefill of a sequence in the copies' GPU batch
 *              leaves the copies as they are.
 * Between passes nothing allocates on the backend. Files live in cli_dir
 * (cli_harness.h; the disk tier in cli_dir/off). */
#ifndef FH_TEST_KV_COPY_HARNESS_H
#define FH_TEST_KV_COPY_HARNESS_H

#include "backend.h"

typedef struct kvc_case {
    const char *model;   /* a model directory; NULL: tests/fixtures/tiny-opt */
    int gbs, K;          /* block shape */
    const char *percent; /* the six placement numbers, "100 0 100 0 100 0" */
    int cpu_attention, no_overlap, compress_cache;
    int h2o;             /* 1: H2O with a budget of 6 (1 sink) below prompt + steps;
                          * 0: full */
    double tol;          /* logits of runs whose passes differ (own prefill vs copy);
                          * < 0: those comparisons are skipped */
} kvc_case;

/* Run every check above on case c; asserts, naming the case. */
void kvc_check(backend *be, const kvc_case *c);

/* "2x2 30 30 34 33 0 100 cpu-attention h2o ..." for messages (static buffer). */
const char *kvc_name(const kvc_case *c);

#endif
