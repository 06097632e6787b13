/* jobio.h: the files of a batch job: the prompt file (JSONL in) and the
 * completions file (JSONL out, appended and flushed per prompt, resumable).
 */
#ifndef FH_JOBIO_H
#define FH_JOBIO_H

#include <stdint.h>
#include <stdio.h>

#include "tok.h"

typedef struct prompt {
    char *id;        /* the id as compact JSON ("\"a1\"", "7"); owned */
    int line;        /* 1-based line in the prompt file */
    int32_t *ids;    /* (n_ids) model input, BOS included for text; owned */
    int n_ids;
    int max_new;     /* per-prompt max_new_tokens, -1 = the job's default */
} prompt;

typedef struct prompt_set {
    prompt *p;       /* (n) valid prompts in file order */
    int n;
    int n_bad;       /* lines reported and skipped */
} prompt_set;

/* Read a JSONL prompt file. Each line: {"id"?, "prompt" | "prompt_ids",
 * "max_new_tokens"?}; blank lines are ignored. Text is encoded with t and
 * bos prepended; prompt_ids are used exactly as given (t may be NULL: text
 * prompts are then refused). A bad line (invalid JSON, no prompt, ids out
 * of [0, vocab), longer than max_len tokens) is reported through err_log
 * as "FILE:LINE: what; what to do" and skipped, or, when strict, ends the
 * load with that message. @return 0 or -errno. */
int prompts_load(const char *path, const tok *t, int bos, int vocab,
                 int max_len, int strict, prompt_set *out);
void prompts_free(prompt_set *ps);

typedef struct outfile {
    FILE *f;
    char *path;
    /* the ids of the records in the file (read on resume, added per
     * write): a hash set, XXH3 + linear probing, at most half full, so
     * that outfile_has is O(1) per prompt */
    char **done;     /* (done_mask + 1) owned ids, NULL = free slot */
    size_t done_mask;
    int n_done;      /* distinct ids */
} outfile;

/* Open the completions file. Without resume an existing non-empty file is
 * refused (nothing is overwritten); with resume the ids already present are
 * read, a torn last line (a killed job) is cut off, and new records are
 * appended. @return 0 or -errno (then o holds nothing to close). */
int outfile_open(const char *path, int resume, outfile *o);
/* 1 when a record with this id (compact JSON) is already in the file. */
int outfile_has(const outfile *o, const char *id);
/* Append one record and flush it: {"id", "completion", "tokens",
 * "logprobs", "finish_reason"}. text may hold invalid UTF-8 (a character
 * cut by the length limit): it is written with U+FFFD in its place. */
int outfile_write(outfile *o, const char *id, const char *text, size_t len,
                  const int32_t *tokens, const float *logprobs, int n,
                  const char *finish_reason);
/* fsync and close. @return 0 or -errno. */
int outfile_close(outfile *o);

/* Copy of s[0..len) with each byte that does not start a valid UTF-8
 * character (tok_utf8_char) and each NUL replaced by U+FFFD, NUL-terminated;
 * *out_len (may be NULL) gets its length. @return the copy, which the
 * caller frees, or NULL when out of memory. */
char *utf8_sanitize(const char *s, size_t len, size_t *out_len);

#endif
