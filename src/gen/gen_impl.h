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

/* One sequence of the block being generated: one completion (sample) of
 * a request. The n samples of a request sit side by side in one block;
 * the first is prefilled, the others get a copy of its cache. */
typedef struct gen_seq {
    const job_prompt *p;
    int sample;          /* which of p's p->par.n completions */
    int copy_of;         /* the block sequence whose prompt cache this one copies, or -1 */
    int max_new;
    int n_past;          /* tokens seen (the position of the next one) */
    int n_slots;         /* KV slots in use, min(n_past, budget) */
    int budget, sinks, recent; /* KV policy of this sequence (kern_seq) */
    int window;          /* the model's sliding window (kern_seq), 0: none */
    float temperature, top_p; /* resolved: the request's, else the job's */
    int ignore_eos;
    int32_t *toks;       /* (max_new) generated */
    float *lps;          /* (max_new) */
    int32_t *top_ids;    /* (max_new, top_stride) top logprobs, when asked */
    float *top_lps;
    int n_gen;
    int done;            /* 1 = finished, 2 = written */
    const char *finish;  /* "eos", "length", "stop" */
    const char *stop_str; /* the stop string that ended it, or NULL */
    int32_t stop_id;     /* the stop token id that ended it, or -1 */
    size_t cut;          /* with a stop string: bytes of the text returned */
    size_t checked;      /* bytes of the decoded text already searched for stops */
    /* penalties: the distinct tokens of prompt and output, an open-addressing
     * table of pen_cap (a power of two) slots, key -1 = free */
    int32_t *pen_key;    /* (pen_cap) */
    int32_t *pen_out;    /* (pen_cap) times generated */
    unsigned char *pen_in; /* (pen_cap) 1: in the prompt */
    int32_t *pen_list;   /* (pen_cap / 2) used slots, in insertion order */
    int pen_n, pen_cap;
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
    int n_eos;
    int32_t eos_cfg;     /* the config's eos_id, when eos points here */
    job_out *out;
    int gbs, block, max_rows, cap;
    int top_stride;      /* top logprobs kept per generated token (the job's most) */
    int n_todo;
    double t_start, last_report;
    int progress;
    int discard;         /* the warm-up's block: records are not written */
    int warmed;          /* --warm-up done (it runs once, before the first window's blocks) */
} gen_ctx;

/* The arrays of one block's passes (B = sequences of the block). */
typedef struct gen_buf {
    int32_t *ids, *pos, *last, *tokens;  /* (max_rows), (max_rows), (B), (B) */
    kern_seq *seqs;                      /* (B) */
    int *members;                        /* (B) sequence of each output row */
    kern_sample_row *rows;               /* (B) sampling controls of each output row */
    kern_logit_edit *edits;              /* (n_edit_max) the rows' logit edits */
    int n_edit_max;
    float *lps;                          /* (B) */
    int32_t *top_ids;                    /* (B, KERN_TOP_LOGPROBS_MAX) or NULL */
    float *top_lps;
    int *copy_dst;                       /* (B) sequences a prefill copies to */
    int *edit_at;                        /* (max pen_cap) scratch: edit of a table slot */
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
