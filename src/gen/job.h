/* job.h: the files of a batch job: the prompt file (JSONL in) and the
 * completions file (JSONL out, appended and flushed per prompt, resumable).
 * Either is zstd when its name ends in ".zst" (job_file.h).
 */
#ifndef FH_JOB_H
#define FH_JOB_H

#include <stdint.h>
#include <stdio.h>

#include "job_file.h"
#include "tok.h"

typedef struct job_prompt {
    char *id;        /* the id as compact JSON ("\"a1\"", "7"); owned */
    int line;        /* 1-based line in the prompt file */
    int32_t *ids;    /* (n_ids) model input, BOS (if any) first for text; owned */
    int n_ids;
    int max_new;     /* per-prompt max_new_tokens, -1 = the job's default */
} job_prompt;

typedef struct job_prompts {
    job_prompt *p;   /* (n) valid prompts in file order */
    int n;
    int n_bad;       /* lines reported and skipped */
} job_prompts;

/* Read a JSONL prompt file. Each line: {"id"?, "prompt" | "prompt_ids",
 * "max_new_tokens"?}; blank lines are ignored. Text is encoded with t and
 * bos prepended (none when bos < 0: see tok_bos_id); prompt_ids are used
 * exactly as given (t may be NULL: text
 * prompts are then refused). A bad line (invalid JSON, no prompt, ids out
 * of [0, vocab), longer than max_len tokens) is reported through err_log
 * as "FILE:LINE: what; what to do" and skipped, or, when strict, ends the
 * load with that message. The prompts are malloc'd; free them with
 * job_prompts_free. @return 0, or -errno (then *out holds nothing). */
int job_prompts_load(const char *path, const tok *t, int bos, int vocab,
                     int max_len, int strict, job_prompts *out);
/* Free every prompt of ps and zero it. Accepts a zeroed set. */
void job_prompts_free(job_prompts *ps);

typedef struct job_out {
    job_file_wr *f;  /* the open file, NULL when not open */
    char *path;
    /* the ids of the records in the file (read on resume, added per
     * write): a hash set, XXH3 + linear probing, at most half full, so
     * that job_out_has is O(1) per prompt */
    char **done;     /* (done_mask + 1) owned ids, NULL = free slot */
    size_t done_mask;
    int n_done;      /* distinct ids */
} job_out;

/* Open the completions file. Without resume an existing non-empty file is
 * refused (nothing is overwritten); with resume the ids already present are
 * read, a torn last record (a killed job: a line without its '\n', or in a
 * .zst file a frame cut short or followed by garbage) is cut off, and new
 * records are appended. @return 0 or -errno (then o holds nothing to close). */
int job_out_open(const char *path, int resume, job_out *o);
/* Whether a record with this id (compact JSON) is in the file: read on
 * resume or written since. O(1). @return 1 or 0. */
int job_out_has(const job_out *o, const char *id);
/* Append one record and flush it (in a .zst file: as one zstd frame):
 * {"id", "completion", "tokens", "logprobs", "finish_reason"}. text may hold invalid UTF-8 (a character
 * cut by the length limit): it is written with U+FFFD in its place. The
 * id then counts for job_out_has. @return 0, or -ENOMEM, or -EIO (the
 * records before this one stay intact). */
int job_out_write(job_out *o, const char *id, const char *text, size_t len,
                  const int32_t *tokens, const float *logprobs, int n,
                  const char *finish_reason);
/* fsync and close, and free what job_out_open set up; o is zeroed. A
 * zeroed o (never opened, or a failed job_out_open) is closed as a no-op.
 * @return 0 or -errno. */
int job_out_close(job_out *o);

/* Copy of s[0..len) with each byte that does not start a valid UTF-8
 * character (tok_utf8_char) and each NUL replaced by U+FFFD, NUL-terminated;
 * *out_len (may be NULL) gets its length. @return the copy, which the
 * caller frees, or NULL when out of memory. */
char *job_utf8_sanitize(const char *s, size_t len, size_t *out_len);

#endif
