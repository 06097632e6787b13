/* eval.h: teacher-forced scoring of token streams through the block
 * schedule: `flexh2o eval` (streaming perplexity, DESIGN.md "Quality") and
 * `flexh2o score` (loglikelihood requests).
 *
 * A stream feeds its first `prefill` tokens as one prompt, then one token
 * per decode step, with the KV policy evicting exactly as in generation;
 * the logits after token i score ids[i + 1] wherever i + 1 >= first_target.
 * eval's windows are streams with prefill 1 and first_target 1 (a prompt
 * of one token, then decode steps); score's requests have first_target =
 * the context's length and prefill either 1 (a KV policy: the context runs
 * through the cache as in eval) or the whole context (the full cache).
 * Streams are independent: a stream's numbers do not depend on its batch.
 */
#ifndef FH_EVAL_H
#define FH_EVAL_H

#include <stdint.h>

#include "kv_policy.h"
#include "model.h"
#include "scheduler.h"
#include "tok.h"

typedef struct eval_stream {
    const int32_t *ids;  /* (n) not owned */
    int n;               /* >= 2 */
    int prefill;         /* tokens of the first pass: 1 .. n - 1 */
    int first_target;    /* first scored index: prefill .. n - 1 */
    int line;            /* score: the request's line in its file, for messages; eval: 0 */
    /* results */
    kv_split split;      /* its KV split (eval_check) */
    double logprob;      /* sum over targets of log p(target) (natural log) */
    int n_targets;       /* targets scored: n - first_target */
    int n_greedy;        /* targets that were the argmax */
    /* compare_full only: against the same stream with the full cache */
    double kl;           /* sum over targets of KL(p_full || p_policy) */
    int n_agree;         /* targets where both argmaxes agree */
} eval_stream;

typedef struct eval_opts {
    kv_policy kv;        /* the policy under test (full: all zero) */
    int compare_full;    /* run each stream with the full cache beside it */
    int prefill_rows;    /* most prefill tokens of one GPU batch per pass */
    int progress;        /* a progress line on stderr, at most once a second */
    /* called after each block with its streams s[first .. first + n), done
     * (score writes them), or NULL. @return 0 or -errno (stops the run) */
    int (*on_block)(void *ud, const eval_stream *s, int first, int n);
    void *ud;
} eval_opts;

typedef struct eval_stats {
    long fed;            /* tokens fed through the model (policy streams) */
    long targets;
    double seconds;
} eval_stats;

/* Each stream's KV split (gen_split: a sliding window caps it) into
 * s[i].split; the message names the stream (1-based) and the flags.
 * @return 0 or -EINVAL. */
int eval_check(const model_config *c, eval_stream *s, int n, const eval_opts *o);
/* The shape the scheduler must be planned for to run the n streams in GPU
 * batches of gbs sequences (each stream two sequences with compare_full). */
void eval_shape(const model_config *c, const eval_stream *s, int n, const eval_opts *o,
                int gbs, sched_shape *sh);
/* Score every stream (results into s[i]) in blocks of sched_block(sc)
 * sequences, the scheduler planned with eval_shape and m attached.
 * @return 0 or -errno. */
int eval_run(model *m, sched *sc, eval_stream *s, int n, const eval_opts *o, eval_stats *st);

/* eval --out: a window's fingerprint (its tokens, how they are fed, its
 * KV split, compare_full) and its record (k: its index), the numbers
 * exact; malloc'd, NULL when out of memory. */
uint64_t eval_window_fp(const eval_stream *s, int compare_full);
char *eval_window_record(const eval_stream *s, int k, int compare_full);
/* eval --resume: the records of buf[0..len) (path's, for messages), each
 * into its window of s[0..n) when its fingerprint is that window's and
 * its numbers are ones a run of it gives; done[k] set and *n_done counted
 * for each window taken (a repeated record is ignored). @return 0, or
 * -EINVAL naming the line of a record that is not this run's. */
int eval_windows_read(const char *path, const char *buf, size_t len, eval_stream *s, int n,
                      int compare_full, unsigned char *done, long *n_done);

/* score's requests (eval_requests.c): streams, each request's key (its
 * "id" as compact JSON, {"line": N} without one: job_line_key's rule),
 * and every request's tokens, which the streams point into. */
typedef struct eval_requests {
    eval_stream *s;      /* (n) */
    char **keys;         /* (n) */
    int32_t *ids;
    int n;
} eval_requests;
typedef struct eval_request_opts {
    const char *path;    /* the file's name, for messages */
    const tok *t;        /* NULL: text requests are refused (ids only) */
    int bos;             /* prepended to a text context; -1: none */
    int vocab;           /* ids must be below it */
    int full;            /* the full cache: the context is one prefill */
} eval_request_opts;
/* The requests of buf[0..len) (score's file, read whole), in file order.
 * The first bad line stops the parse, its message naming the file and
 * line. @return 0, -EINVAL or -ENOMEM (r then holds nothing). */
int eval_requests_parse(const char *buf, size_t len, const eval_request_opts *o,
                        eval_requests *r);
/* Free what eval_requests_parse set up; r is zeroed. */
void eval_requests_free(eval_requests *r);

#endif
