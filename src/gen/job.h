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

/* The formats of a request line (DESIGN.md "Job files"), told apart by
 * their fields. */
enum job_kind {
    JOB_NATIVE,          /* {"id", "prompt" | "prompt_ids", ...} */
    JOB_OPENAI_COMPLETION, /* {"custom_id", "method", "url": "/v1/completions", "body"} */
    JOB_OPENAI_CHAT,     /* ... "url": "/v1/chat/completions", body.messages */
};

/* The sampling and output controls of one request (README "Sampling"):
 * what the line sets; a field it leaves out keeps the value that means
 * "the job's flag" (temperature, top_p, seed) or "off". */
typedef struct job_params {
    float temperature;   /* NAN: the job's --temperature */
    float top_p;         /* NAN: the job's --top-p */
    int top_k;           /* 0 (or -1): off */
    float min_p;         /* 0: off */
    float repetition_penalty; /* 1: off; > 0 */
    float frequency_penalty, presence_penalty; /* 0: off; in [-2, 2] */
    int min_tokens;      /* EOS and stop ids banned, stop strings unchecked before this */
    int ignore_eos;      /* -1: the job's --ignore-eos */
    int n;               /* completions of the prompt, >= 1 */
    int logprobs;        /* 1: the output carries per-token logprobs (OpenAI) */
    int top_logprobs;    /* the most probable alternatives per token, 0 .. 20 */
    int has_seed;
    uint64_t seed;       /* when has_seed: replaces the job's --seed */
    char **stop;         /* (n_stop) stop strings, owned */
    int include_stop;    /* 1: a matched stop string stays in the text (vLLM's
                          * include_stop_str_in_output) */
    int n_stop;
    int32_t *stop_ids;   /* (n_stop_ids) token ids that end a completion, owned */
    int n_stop_ids;
    int32_t *bias_ids;   /* (n_bias) logit_bias: id -> added to its logit, owned */
    float *bias;
    int n_bias;
} job_params;

/* Most completions one request may ask for (n), and most top logprobs. */
#define JOB_N_MAX 128
#define JOB_TOP_LOGPROBS_MAX 20

typedef struct job_prompt {
    char *id;        /* the id (native) or custom_id (OpenAI) as compact JSON
                      * ("\"a1\"", "7"): the output's key; owned */
    int line;        /* 1-based line in the prompt file */
    long seq;        /* 0-based index among the file's requests (job_reader):
                      * the key of a job's split over ranks (gen_part) */
    int kind;        /* enum job_kind */
    int32_t *ids;    /* (n_ids) model input, BOS (if any) first for text; owned */
    int n_ids;
    int max_new;     /* per-prompt max_new_tokens, -1 = the job's default */
    job_params par;
    char *model;     /* OpenAI body.model, echoed in the output, or NULL; owned */
    /* A request that cannot run (OpenAI lines only; a native bad line is
     * skipped or stops the job): err is its message, written in its place
     * in the output as the format's error line; ids is then NULL. */
    char *err;       /* owned, or NULL */
    char *err_param; /* the body field at fault, or NULL; owned */
} job_prompt;

typedef struct job_prompts {
    job_prompt *p;   /* (n) valid prompts (and OpenAI error requests) in file order */
    int n;
    int n_bad;       /* lines reported and skipped */
} job_prompts;

/* What reading a prompt file needs besides its path. */
typedef struct job_load_opts {
    const tok *t;        /* NULL: text prompts (and chat messages) are refused */
    int bos;             /* prepended to a text prompt, or -1 */
    int vocab;           /* token ids must be in [0, vocab) */
    int max_len;         /* longest prompt, tokens */
    int strict;          /* a bad native line stops the load */
    int chat_template;   /* tok_chat kind for chat requests, -1: the tokenizer's own */
} job_load_opts;

/* Read a JSONL prompt file. Each line is either format (enum job_kind;
 * the first request line decides the file's, and a line of the other is
 * bad). Native: {"id"?, "prompt" | "prompt_ids", "max_new_tokens"?,
 * sampling fields (job_params)}; blank lines are ignored. Text is encoded
 * with o->t and o->bos prepended (none when bos < 0: see tok_bos_id);
 * prompt_ids are used exactly as given. A bad native line (invalid JSON,
 * no prompt, ids out of [0, vocab), longer than max_len tokens, a bad
 * field) is reported through err_log as "FILE:LINE: what; what to do" and
 * skipped, or, when strict, ends the load with that message. A bad OpenAI
 * request with a custom_id stays in the set with its message (err) for
 * its error line; without one it is a bad line. A line whose id (or
 * custom_id) an earlier line has, a bad one included, is a bad line (the
 * output is keyed on it: an id's record is at its first line). A native
 * line without "id" gets {"line": N}, which no given id can equal. The prompts are malloc'd;
 * free them with job_prompts_free. @return 0, or -errno (then *out holds
 * nothing). */
int job_prompts_load(const char *path, const job_load_opts *o, job_prompts *out);
/* Free every prompt of ps and zero it. Accepts a zeroed set. */
void job_prompts_free(job_prompts *ps);

/* A prompt file read in windows, so that a job of any size holds only a
 * window of tokenized requests (DESIGN.md "Job files"): one pass to check
 * and plan, another to generate. Each line is read as job_prompts_load
 * says; bad lines are reported (err_log) in the first pass only. */
typedef struct job_reader job_reader;
/* Open path (o is copied). @return 0 or -errno (*r NULL). */
int job_reader_open(const char *path, const job_load_opts *o, job_reader **r);
/* The next requests of the pass, at most max, into ps (its previous
 * content freed first; ps->n_bad: the window's bad lines in the first
 * pass). @return the requests read (0: the pass is over), or -errno (a
 * strict bad line, a read error: ps then empty). */
int job_reader_next(job_reader *r, int max, job_prompts *ps);
/* Start another pass from the first line. @return 0 or -errno. */
int job_reader_rewind(job_reader *r);
/* Bad lines the first pass reported. */
int job_reader_bad(const job_reader *r);
/* Close r. Accepts NULL. */
void job_reader_close(job_reader *r);
/* Set p's error (an OpenAI request that cannot run) to fmt, and param.
 * @return 0 or -ENOMEM. */
__attribute__((format(printf, 3, 4)))
int job_prompt_fail(job_prompt *p, const char *param, const char *fmt, ...);

/* The key of line lineno (1-based, blank lines counted) of a prompt file,
 * line[0..len) as read: the id its output record is written under, as the
 * reader computes it (job_prompt.id): a native line's "id", an OpenAI
 * line's "custom_id", as compact JSON ("\"a1\"", "7"), or {"line":N} for
 * a native line without "id". For a tool that matches records to their
 * requests without loading the model (job_merge): a line with a key may
 * still be one generate skipped (a bad prompt, a repeated id, a line of
 * the file's other format). @return 0 with *key malloc'd (the caller
 * frees), 1 when the line is no request at all (blank, invalid JSON, not
 * an object, no usable id or custom_id: generate writes no record for it;
 * *key NULL), or -ENOMEM. */
int job_line_key(const char *line, size_t len, int lineno, char **key);

/* The key of record line[0..len) of a completions file (what
 * job_out_result wrote): its "custom_id" (OpenAI) when it has one, else
 * its "id", as compact JSON: the request's key (job_line_key), on which
 * --resume and job_merge match records to requests. @return 0 with *key
 * malloc'd (the caller frees), 1 when the line has neither (not a record
 * of ours; *key NULL), or -ENOMEM. */
int job_record_key(const char *line, size_t len, char **key);

/* A set of ids (compact JSON): a hash set, XXH3 + linear probing, at most
 * half full. Zeroed = empty. */
typedef struct job_idset {
    char **slot;     /* (mask + 1) owned ids, NULL = free slot */
    int *line;       /* (mask + 1) the line each id was first seen on (job_idset_add_at) */
    size_t mask;
    int n;           /* ids in the set */
} job_idset;
/* Add a copy of id (no-op when present). @return 0 or -ENOMEM. */
int job_idset_add(job_idset *set, const char *id);
/* job_idset_add, remembering line for job_idset_line. */
int job_idset_add_at(job_idset *set, const char *id, int line);
/* The line id was added with (job_idset_add_at), 0 when none, -1 when
 * id is not in the set. */
int job_idset_line(const job_idset *set, const char *id);
/* 1 when id is in set, else 0. O(1). */
int job_idset_has(const job_idset *set, const char *id);
/* Free the set's ids and zero it. */
void job_idset_free(job_idset *set);

typedef struct job_out {
    job_file_wr *f;  /* the open file, NULL when not open */
    char *path;
    /* the ids of the records in the file (read on resume, added per
     * write), so that job_out_has is O(1) per prompt */
    job_idset done;
    const char *model_name; /* OpenAI "model" when a request names none; caller-owned */
    long long created;   /* OpenAI "created": the job's start (or SOURCE_DATE_EPOCH) */
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
/* One completion of a request, as the generation hands it to the output. */
typedef struct job_choice {
    const char *text;        /* decoded completion (stop string cut off), may
                              * hold invalid UTF-8 (sanitised on writing) */
    size_t len;
    const int32_t *tokens;   /* (n) generated ids */
    const float *logprobs;   /* (n) their log-probabilities */
    int n;
    const int32_t *top_ids;  /* (n, top_stride): the first par.top_logprobs of each
                              * row are the most probable ids; NULL when none */
    const float *top_lps;    /* (n, top_stride) */
    int top_stride;
    const char *finish;      /* "length", "eos" or "stop" (a stop string or id) */
    const char *stop_str;    /* the stop string matched, or NULL */
    int32_t stop_id;         /* the stop token id matched (finish "stop"), or -1 */
} job_choice;

/* Append the record of request p and flush it: its choices ch[0..n) (n =
 * p->par.n) in p's format (native: README "Output"; OpenAI: the batch
 * output line with a completion or chat.completion body), or p->err's
 * error line. t (may be NULL) gives the tokens' text for logprobs. The id
 * then counts for job_out_has. @return 0, -ENOMEM or -EIO (the records
 * before this one stay intact). */
int job_out_result(job_out *o, const job_prompt *p, const job_choice *ch, int n, const tok *t);

/* The record job_out_result writes for p (without its '\n'): o gives
 * only the OpenAI fields "model" and "created" (o need not be open: a
 * rank that hands its records to another formats them here). @return the
 * text, which the caller frees, or NULL when out of memory. */
char *job_record(const job_out *o, const job_prompt *p, const job_choice *ch, int n,
                 const tok *t);
/* Append a record made by job_record, key id (compact JSON), with its
 * '\n', and flush it; the id then counts for job_out_has. @return 0,
 * -ENOMEM or -EIO (the records before this one stay intact). */
int job_out_append(job_out *o, const char *id, const char *record);

/* fsync and close, and free what job_out_open set up; o is zeroed. A
 * zeroed o (never opened, or a failed job_out_open) is closed as a no-op.
 * @return 0 or -errno. */
int job_out_close(job_out *o);

/* What job_merge did. */
typedef struct job_merge_stats {
    long records;    /* records written to the output */
    long missing;    /* requests of the prompt file no shard has a record of */
} job_merge_stats;

/* Join the completions files of the shards of one job (generate --shard
 * I/N: each holds its requests' records in the prompt file's order) into
 * out, in the prompt file's order: byte for byte what one run over the
 * whole file writes. Streams: one line per shard is held, and the keys of
 * the prompt file (job_line_key) in a job_idset for its repeated ids.
 * Before out is created every shard is checked for a torn last record (a
 * killed shard: refused, finish it with --resume). out is created
 * ("wbx": an existing file is refused) and each record flushed as it is
 * written (.zst: one frame each). A request no shard has is counted in
 * st->missing and the rest goes on; a shard record that does not come in
 * the prompt file's order (or is not in it) is an error naming its file,
 * line and key. On any error out is removed (a partial join is no use: it
 * has no resume). st (may be NULL) gets the counts. @return 0 or -errno
 * with a message. */
int job_merge(const char *prompts, const char *const *shards, int n_shards, const char *out,
              job_merge_stats *st);

/* Copy of s[0..len) with each byte that does not start a valid UTF-8
 * character (tok_utf8_char) and each NUL replaced by U+FFFD, NUL-terminated;
 * *out_len (may be NULL) gets its length. @return the copy, which the
 * caller frees, or NULL when out of memory. */
char *job_utf8_sanitize(const char *s, size_t len, size_t *out_len);

#endif
