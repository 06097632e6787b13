/* gen_harness.h: generation in the test process (gen_run, not the CLI) on
 * a backend the test made, counting the backend's allocations
 * (backend_ops.allocs) around the run: every buffer is sized at
 * sched_create, so the prefill and decode passes and the sampling must
 * allocate nothing. Files live in cli_dir (cli_harness.h). */
#ifndef FH_TEST_GEN_HARNESS_H
#define FH_TEST_GEN_HARNESS_H

#include <stdint.h>

#include "backend.h"

/* The job: GEN_HARNESS_PROMPTS prompt_ids prompts of mixed lengths (no
 * tokenizer needed) in blocks of two GPU batches of two, H2O at ratio 0.5
 * with a sink, temperature sampling, 9 new tokens; GEN_HARNESS_FLAGS are
 * the `generate` flags of the same job, for a run to compare with. */
#define GEN_HARNESS_PROMPTS 5
#define GEN_HARNESS_FLAGS                                                                    \
    "--prompts ids.jsonl --max-new-tokens 9 --temperature 0.8 --top-p 0.9 --seed 7 "         \
    "--kv-policy h2o --kv-ratio 0.5 --sinks 1 --gpu-batch-size 2 --num-gpu-batches 2 "       \
    "--offload-dir off"

/* Write the job's prompts to cli_dir/ids.jsonl and make cli_dir/off. */
void gen_harness_job(void);

/* Run the job on be the way `generate` does (plan with gen_shape,
 * sched_create, load through the layer sink, attach, gen_run) with the
 * placement percent (six numbers) and CPU attention or not, records into
 * cli_dir/out; trace: NULL, or a file of cli_dir that gets the evictions
 * (with --stats' read-backs on). Every step is asserted, and that the
 * set-up allocated (the counter counts).
 * @return the allocations gen_run made. */
uint64_t gen_harness_run(backend *be, const char *percent, int cpu_attention, const char *out,
                         const char *trace);

/* make-model's model of head_dim 128 (OPT: two heads of 128, two layers)
 * in cli_dir/wide and four prompt_ids prompts of 1-9 tokens in
 * cli_dir/pw.jsonl: with 200 new tokens a (sequence, head)'s K rows span
 * 26 pages of a disk KV record (13 under H2O at ratio 0.5). */
void gen_harness_wide_model(void);

/* What the transfer events of one name of a --trace file moved. */
typedef struct gen_trace_io {
    int n;                  /* events */
    double prefill;         /* the most bytes at the prefill (step 0) */
    double decode_max, decode_min, decode_sum; /* bytes at a decode step, in all */
    int n_decode;
    int n_large;            /* decode events of more than a quarter of prefill */
} gen_trace_io;

/* The transfer events named event ("disk write", "disk read"; "KV": a
 * lane's load or store of a KV record, whichever tier) of a --trace file
 * of cli_dir, with a "load" or "store" category where cat is not NULL. */
gen_trace_io gen_harness_trace_io(const char *trace, const char *event, const char *cat);

/* That a --trace file of cli_dir of gen_harness_wide_model's job (2 layers,
 * 2 GPU batches, 200 new tokens) with its KV on disk shows a prefill
 * writing each record whole and every decode step moving a part of it:
 * writes of a row log's entry (a sixteenth of a record at most) but where
 * a full log writes back the slots in use (at most one step in eight),
 * reads of the slots in use (from under a quarter at the first step to at
 * most the record). what: the run, for the messages. @return the disk
 * reads. */
gen_trace_io gen_harness_disk_kv_moves(const char *trace, const char *what);

#endif
