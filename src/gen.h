/* gen.h: batch generation over a prompt set (`flexh2o generate`). */
#ifndef FH_GEN_H
#define FH_GEN_H

#include <stdint.h>

#include "jobio.h"
#include "model.h"
#include "tok.h"

typedef struct gen_opts {
    int batch_size;      /* sequences per block */
    int max_new;         /* default max_new_tokens */
    float temperature;   /* 0 = greedy */
    float top_p;         /* 1 = off */
    uint64_t seed;
    int prefill_rows;    /* most packed prompt tokens per prefill pass */
    int progress;        /* print a progress line on stderr */
    int ignore_eos;      /* run to max_new_tokens (benchmarks) */
} gen_opts;

typedef struct gen_stats {
    long prompts, prefill_tokens, decode_tokens, generated;
    double prefill_s, decode_s, total_s;
} gen_stats;

/* Generate for every prompt of ps whose id is not yet in out, in file
 * order, appending one record per prompt as soon as it and all before it
 * are done. A prompt's output does not depend on its batch: positions,
 * cache slots and the sampler's random stream (seeded by seed and the id)
 * are its own. t may be NULL (completions are then empty strings).
 * @return 0 or -errno; records written before a failure stay. */
int gen_run(model *m, const tok *t, const prompt_set *ps, outfile *out,
            const gen_opts *o, gen_stats *st);

#endif
