/* gen.h: batch generation over a prompt set (`flexh2o generate`).
 *
 *   job_prompts_load, job_out_open (job.h)
 *   gen_check, gen_shape  -> plan and create the scheduler, attach the model
 *   gen_trace_open        (--trace-evictions only)
 *   gen_run               -> one record per prompt in the job_out
 *   gen_stats_print, gen_stats_free
 */
#ifndef FH_GEN_H
#define FH_GEN_H

#include <stdint.h>
#include <stdio.h>

#include "job.h"
#include "kv_policy.h"
#include "model.h"
#include "scheduler.h"
#include "tok.h"

/* A job's split over P processes (MPI ranks, or --shard I/P; DESIGN.md
 * "Scale-out"): request k of the prompt file (job_prompt.seq) runs in
 * process owner[k]. Requests are taken in file order and each goes to the
 * process with the least cost so far (gen_cost; ties: the lowest), so the
 * split is deterministic, balanced by cost and interleaved: every process
 * moves through the file at about the same pace, and the one writing the
 * output holds few records back to keep input order. */
typedef struct gen_part {
    int16_t *owner;      /* (n) the process of each request, -1: none (already written) */
    long n, cap;
    int64_t *load;       /* (procs) cost assigned to each so far */
    int procs;           /* 1 .. GEN_PART_MAX */
    int me;              /* this process, 0 .. procs - 1 */
} gen_part;

#define GEN_PART_MAX 4096

/* An empty split over procs processes, seen from process me. @return 0 or
 * -ENOMEM. */
int gen_part_init(gen_part *gp, int procs, int me);
/* Assign the next request of the file (cost < 0: to none, it is already
 * in the output). @return 0 or -ENOMEM. */
int gen_part_add(gen_part *gp, int64_t cost);
/* 1 when request seq runs in this process. */
int gen_part_mine(const gen_part *gp, long seq);
/* Free gp's arrays and zero it. Accepts a zeroed split. */
void gen_part_free(gen_part *gp);

typedef struct gen_opts {
    int batch_size;      /* sequences per GPU batch (the policy's gpu_batch_size) */
    int max_new;         /* default max_new_tokens */
    float temperature;   /* 0 = greedy */
    float top_p;         /* 1 = off */
    uint64_t seed;
    int prefill_rows;    /* most packed prompt tokens of one GPU batch per prefill pass */
    int progress;        /* print a progress line on stderr */
    int ignore_eos;      /* run to max_new_tokens (benchmarks) */
    int warm_up;         /* --warm-up: before the job, its first block runs to
                          * GEN_WARM_UP_TOKENS tokens, nothing written (gen_run) */
    kv_policy kv;        /* KV policy and budget; all zero = full */
    job_file_wr *trace;  /* --trace-evictions: one JSONL line per dropped token
                          * (see gen_run), flushed per pass, or NULL;
                          * caller-owned (gen_trace_open) */
    int kv_stats;        /* --stats: measure the kept attention mass per layer */
    long n_todo;         /* requests not yet in the output (the progress line's
                          * total), 0: unknown */
    int window;          /* requests of the prompt file tokenized and held at a
                          * time (0: GEN_WINDOW): a job of any size needs memory
                          * for this many */
    /* One process of a job split over several (MPI ranks, --shard): */
    const gen_part *part; /* the requests that run here (gen_runs_here), or
                          * NULL: every request not yet in the output */
    /* where a finished request's record goes (job_record's text, its
     * generated tokens) instead of being appended to the output: a rank
     * hands it to the one writing the file. NULL: job_out_result. The
     * callback returns 0 or -errno (the run stops). */
    int (*put)(void *ud, const job_prompt *p, const char *record, long generated);
    void *put_ud;
} gen_opts;

#define GEN_WINDOW 8192
#define GEN_WARM_UP_TOKENS 2 /* a prefill and a decode step: every shape of the job's */

typedef struct gen_stats {
    long prompts, prefill_tokens, decode_tokens, generated;
    double prefill_s, decode_s, total_s;
    double warm_up_s;    /* --warm-up's block, not in the times above (0: none) */
    /* --stats only: per layer, the mean over samples of the kept attention
     * mass (see gen_run); (n_layer) malloc'd, free with gen_stats_free() */
    double *kept_mass;
    long kept_samples;   /* samples behind each mean: (sequence, head, pass) */
    int kv_slots;        /* KV slots per (sequence, layer, head): the largest budget */
    int kv_slots_full;   /* what `full` would have needed: the longest prompt + max_new */
    int n_layer;
} gen_stats;

/* ------------------------------------------- sizing a job (gen_plan.c) */

/* 1 when request p runs in this process: it is not yet in out (may be
 * NULL; not asked when o->put hands the records on: the split then left
 * out what is written) and, when the job is split (o->part), it is this
 * process's. */
int gen_runs_here(const gen_opts *o, const job_out *out, const job_prompt *p);
/* What request p costs to run, for splitting a job: its prompt tokens
 * plus the tokens it may generate, per completion (n); 1 for an error
 * request (its error line only). */
int64_t gen_cost(const job_prompt *p, const gen_opts *o);

/* Tokens prompt p may generate: its max_new_tokens or o->max_new
 * (gen_check_length refuses more than the model's positions allow).
 * @return that count. */
int gen_max_new(const job_prompt *p, const gen_opts *o);
/* Whether a sequence of n_prompt + max_new tokens (the prompt on line
 * `line`) fits model c under policy kv: within max_position_embeddings, or
 * positions count on (gen_positions_grow; DESIGN.md "Model families").
 * @return 0, or -EINVAL with a message naming the line and what to do. */
int gen_check_length(const model_config *c, const kv_policy *kv, int n_prompt, int max_new,
                     int line);
/* 1 when a sequence of model c under policy kv may run past
 * max_position_embeddings: rotary positions (keys cached after RoPE) with
 * an evicting policy or a sliding window. */
int gen_positions_grow(const model_config *c, const kv_policy *kv);
/* The KV split (kv_policy_split of kv) of a prompt of n_prompt tokens (on
 * line `line`, for messages) generating max_new tokens on model
 * c: a sliding window of W tokens (Mistral), when the sequence outgrows
 * it, is a `window` cache of W - 1 slots (plus the token being computed:
 * the W a query attends to) under `full`, and caps every other policy's
 * budget at W - 1. @return 0 or -EINVAL as kv_policy_split. */
int gen_split(const model_config *c, const kv_policy *kv, int n_prompt, int max_new, int line,
              kv_split *out);

/* The ids that end a sequence: the tokenizer's set (Llama-3 instruct has
 * several; t may be NULL), else the config's eos_id, which *cfg_eos then
 * holds for *ids to point at. @return their count (>= 1). */
int gen_eos_ids(const tok *t, const model_config *c, const int32_t **ids, int32_t *cfg_eos);

/* 1 when a request's controls include a penalty (repetition, frequency or
 * presence), so that its sampling needs the counts of its tokens. */
int gen_uses_penalties(const job_params *par);
/* Most logit edits one sampling row of request p generating max_new
 * tokens may need, with n_eos ids that end a sequence: a penalty per
 * distinct token of prompt and output, its logit_bias, and, before
 * min_tokens, a ban per EOS and stop id. The plan reserves for this and
 * the run builds no more (gen_shape, gen_run). */
long gen_edits_bound(const job_prompt *p, int max_new, int n_eos);

/* Check every request of ps before anything runs: its length
 * (gen_check_length), its KV split under o->kv (kv_policy_split), n
 * completions within a block of `block` sequences (0: unknown yet), stop
 * strings only where a tokenizer t exists. A native request that fails
 * stops the job with nothing written (the message names its line and the
 * flags to change); an OpenAI one becomes an error request (job_prompt_fail)
 * whose error line takes its place. Requests already failed are skipped.
 * @return 0 or -EINVAL. */
int gen_check(const model_config *c, const tok *t, job_prompts *ps, const gen_opts *o,
              int block);

/* The shape the scheduler must be planned for (sched_shape) to run ps
 * with o in GPU batches of gbs sequences: rows of a GPU batch's prefill
 * pass, the longest prompt, KV slots (the largest budget), scores and
 * eviction records, and gen_run's sampling (greedy, or drawing when the
 * job or a request has a temperature > 0; the most logit edits of a row,
 * top logprobs), whose backend work the scheduler reserves. Prompts
 * already in out (resume) do not count; out and t may be NULL. Requests
 * gen_check refuses are left out. Fills *sh; returns nothing. */
void gen_shape(const model_config *c, const tok *t, const job_prompts *ps, const job_out *out,
               const gen_opts *o, int gbs, sched_shape *sh);
/* Widen *into to cover *w as well (the shapes of two windows of a job). */
void gen_shape_merge(sched_shape *into, const sched_shape *w);

/* -------------------------------------------------- the run (gen.c) */

/* Generate for every request of the prompt file r (read again from its
 * first line, in windows of GEN_WINDOW requests) whose id is not yet in
 * out, in file order, in blocks of sched_block(sc) sequences run by the scheduler sc
 * (planned with gen_shape; m attached), appending one record per request
 * (job_out_result) as soon as it and all before it are done. A request of
 * n completions takes n sequences of one block: the first is prefilled,
 * the others get a copy of its prompt cache (sched_kv_copy) and draw
 * their first token from the same logits. A completion's output does not
 * depend on its batch: positions, cache slots and the sampler's random
 * stream (seeded by the seed (the request's, else o->seed), the id and
 * the sample index) are its own. t may be NULL (completions are then
 * empty strings). A sequence ends at max_new tokens, at any EOS id
 * (gen_eos_ids) unless ignore_eos (the request's, else o->ignore_eos), at
 * a stop token id, or at a stop string found in its decoded text (the
 * text returned ends before it); none of these before min_tokens. Each
 * token is drawn under the request's controls (temperature and top_p, the
 * request's else o's; top_k, min_p, penalties, logit_bias: kern.h
 * kern_sample_ref, with the edits of DESIGN.md "Job files"). Calls
 * gen_check first (error requests are written as their error lines).
 *
 * KV policy: each prompt gets its own budget and split (kv_policy_split),
 * so its output does not depend on its batch either; the cache of the job
 * has, per sequence, layer and head, as many slots as the largest budget.
 *
 * o->trace gets, per (prompt, layer, head), one line for every token that
 * leaves the cache:
 *   {"id": <prompt id>, "layer": l, "head": h, "step": s, "pos": p}
 * (with "sample": j after the id for a request of several completions)
 * step 0: dropped at prefill (the prompt exceeded the budget); step s >= 1:
 * evicted when the s-th generated token (position prompt_len + s - 1) was
 * inserted. A prefill pass writes its lines in (sequence, layer, head,
 * pos) order, a decode step in (layer, sequence, head) order.
 *
 * o->kv_stats: after the prefill and after every decode step, for each
 * sequence, layer and head, kept = (sum of the H2O scores of the tokens in
 * the cache) / (number of queries so far). Every query hands out
 * probability 1, so this is the share of all attention paid so far that
 * went to tokens still cached (1 for full); st->kept_mass[l] is its mean.
 *
 * o->warm_up: before the job, the sequences of its first block run once to
 * at most GEN_WARM_UP_TOKENS tokens (a prefill pass and a decode step, the
 * shapes of the job's own), with nothing written (records, eviction trace,
 * --stats) and the scheduler's link counts zeroed after it: the libraries'
 * one-time costs (GPU kernels loaded on first use, GEMM plans chosen) are
 * paid there, not in the job's rates (st->warm_up_s has its time). The
 * outputs are the same bytes: every sequence starts afresh in its block.
 *
 * *st is filled from zero, also on failure; free it with gen_stats_free.
 * @return 0 or -errno; records written before a failure stay. */
int gen_run(model *m, sched *sc, const tok *t, job_reader *r, job_out *out,
            const gen_opts *o, gen_stats *st);

/* ------------------------ the eviction trace and --stats (gen_trace.c) */

/* Open the --trace-evictions file (zstd when named *.zst: one frame per
 * pass's lines) for appending. Without resume an existing non-empty file
 * is refused; with resume only its complete lines of prompts already in
 * out are kept (the others are generated again). @return 0 or -errno
 * (-EEXIST: present and not resumed); on success the caller closes *f
 * with job_file_wr_close. */
int gen_trace_open(const char *path, int resume, const job_out *out, job_file_wr **f);

/* Print st->kept_mass, one "layer L: M" line per layer after a header
 * naming o's KV policy and the sample count (--stats). */
void gen_stats_print(FILE *f, const gen_stats *st, const gen_opts *o);

/* Free what gen_run allocated in st (kept_mass). Accepts a zeroed
 * struct. */
void gen_stats_free(gen_stats *st);

#endif
