/* gen_harness.h: generation in the test process (gen_run, not the CLI) on
 * a backend the test made, counting the backend's allocations
 * (backend_ops.allocs) around the run: every buffer is sized at
 * sched_create, so the prefill and decode passes and the sampling must
 * allocate nothing. */
#ifndef FH_TEST_GEN_HARNESS_H
#define FH_TEST_GEN_HARNESS_H

#include <stdint.h>

#include "backend.h"
#include "gen.h"
#include "scheduler.h"

/* Generate with the model at model_dir (prompt_ids lines only: no
 * tokenizer) from prompts_path into out_path (a new file) under policy pol
 * and options go, the way `generate` does: plan (gen_shape), sched_create,
 * load through the layer sink, attach, gen_run. Every step is asserted.
 * *made_before gets the allocations of the set-up (sched_create and the
 * load). @return the allocations gen_run made. */
uint64_t gen_harness_allocs(backend *be, const char *model_dir, const char *prompts_path,
                            const char *out_path, const sched_policy *pol, const gen_opts *go,
                            uint64_t *made_before);

#endif
