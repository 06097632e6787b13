/* gen_impl.h: what the generation loop (gen.c) shares with what it reads
 * back from the cache after a pass (gen_trace.c: the --trace-evictions
 * lines and the --stats sums). Not a public header: src/gen/ only.
 */
#ifndef FH_GEN_IMPL_H
#define FH_GEN_IMPL_H

#include <stdint.h>
#include <stdio.h>

#include "gen.h"
#include "kern.h"

/* One sequence of the block being generated. */
typedef struct gen_seq {
    const job_prompt *p;
    int max_new;
    int n_past;          /* tokens seen (the position of the next one) */
    int n_slots;         /* KV slots in use, min(n_past, budget) */
    int budget, sinks, recent; /* KV policy of this sequence (kern_seq) */
    int window;          /* the model's sliding window (kern_seq), 0: none */
    int32_t *toks;       /* (max_new) generated */
    float *lps;          /* (max_new) */
    int n_gen;
    int done;            /* 1 = finished, 2 = written */
    const char *finish;
    uint64_t rng;
} gen_seq;

/* What the block loop needs of the job (gen_run's arguments and the
 * scheduler's plan). */
typedef struct gen_ctx {
    model *m;
    const model_config *c;
    sched *sc;
    const gen_opts *o;
    const tok *t;        /* NULL: completions are empty strings */
    const int32_t *eos;  /* (n_eos) ids that end a sequence (gen_run) */
    int n_eos;           /* 0: none (ignore_eos) */
    int32_t eos_cfg;     /* the config's eos_id, when eos points here */
    job_out *out;
    int gbs, block, max_rows, cap;
    int n_todo;
    double t_start, last_report;
    int progress;
} gen_ctx;

/* The arrays of one block's passes (B = sequences of the block). */
typedef struct gen_buf {
    int32_t *ids, *pos, *last, *tokens;  /* (max_rows), (max_rows), (B), (B) */
    kern_seq *seqs;                      /* (B) */
    int *members;                        /* (B) sequence of each output row */
    kern_sample_row *srows;              /* (B) each output row's sampling */
    float *lps;                          /* (B) */
    /* read-back buffers, allocated only for --trace-evictions / --stats */
    int32_t *ev;                         /* (n_layer, block, n_head) evicted positions */
    int32_t *slot_pos;                   /* (n_head, cap) positions of one sequence */
    unsigned char *kept;                 /* (max prompt) */
    float *scores;                       /* (n_head, cap) one sequence's scores */
} gen_buf;

/* --trace-evictions after a prefill pass: the prompt tokens that sequence
 * k of the block (s) did not keep, per layer and head, appended to f.
 * @return 0 or -errno (-EIO: f could not be written). */
int gen_trace_prefill(gen_ctx *gc, gen_buf *bb, const gen_seq *s, int k, job_file_wr *f);

/* --trace-evictions after a decode pass, before the sequences advance:
 * what each active sequence of ss[0..n) evicted, per layer and head,
 * appended to f. @return 0 or -errno. */
int gen_trace_decode(gen_ctx *gc, gen_buf *bb, const gen_seq *ss, int n, job_file_wr *f);

/* --stats after a pass, once the sequences advanced: add the kept
 * attention mass of each (output row's sequence, head) to
 * st->kept_mass[layer], and count the samples. @return 0 or -errno. */
int gen_stats_pass(gen_ctx *gc, gen_buf *bb, const gen_seq *ss, int n_out, gen_stats *st);

/* Turn the sums of gen_stats_pass into means (at the end of gen_run). */
void gen_stats_mean(gen_stats *st);

#endif
