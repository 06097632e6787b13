/* job_impl.h: what the job file's parts share (job.c: the native format
 * and the files; job_params.c: the sampling fields; job_openai.c: the
 * OpenAI batch format). Not a public header: src/gen/ only.
 */
#ifndef FH_JOB_IMPL_H
#define FH_JOB_IMPL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "err.h"
#include "job.h"

/* Most stop strings (and stop token ids) of one request. */
#define JOB_STOP_MAX 16
/* Largest max_new_tokens a line may ask for. */
#define JOB_MAX_NEW_MAX (1 << 24)
/* The names job_params_parse reads, for the lists of known fields. */
#define JOB_PARAM_FIELDS                                                              \
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", \
        "presence_penalty", "min_tokens", "ignore_eos", "n", "seed", "stop",             \
        "stop_token_ids", "logit_bias", "include_stop_str_in_output"

/* Why a field of a request is refused: its name and a one-line message. */
typedef struct job_field_err {
    char field[64];
    char why[512];
} job_field_err;

/* Set *e to field and the message fmt. @return -EINVAL. */
__attribute__((format(printf, 3, 4)))
int job_field_bad(job_field_err *e, const char *field, const char *fmt, ...);
/* An integer field of o in [lo, hi] into *v (absent or null: unchanged).
 * @return 0 or -EINVAL (*e says why). */
int job_field_int(const cJSON *o, const char *name, int lo, int hi, int *v, job_field_err *e);
/* A boolean field of o into *v (absent or null: unchanged). */
int job_field_bool(const cJSON *o, const char *name, int *v, job_field_err *e);

/* par at "nothing set": temperature and top_p NAN (the job's), n 1,
 * repetition_penalty 1, ignore_eos -1, the rest off. */
void job_params_init(job_params *par);
/* Read the sampling fields both formats share from the object o
 * (temperature, top_p, top_k, min_p, repetition_penalty,
 * frequency_penalty, presence_penalty, min_tokens, ignore_eos, n, seed,
 * stop, stop_token_ids, logit_bias) into par, each checked for type and
 * range (ids against vocab). @return 0, -EINVAL (*e names the field) or
 * -ENOMEM; par may then hold allocations job_params_free frees. */
int job_params_parse(const cJSON *o, int vocab, job_params *par, job_field_err *e);
/* Free what job_params_parse allocated and reset par (job_params_init). */
void job_params_free(job_params *par);

/* What reading one line of a prompt file needs, and the message of a bad
 * line. */
typedef struct job_src {
    const char *path;
    const job_load_opts *o;
    int line;            /* 1-based line being read */
    char why[1024];      /* "FILE:LINE: what; what to do" of a bad line */
    int chat_kind;       /* the chat template (enum tok_chat_kind), -1: none usable */
    char chat_why[512];  /* why none is usable (job_chat_resolve) */
} job_src;

/* Settle the chat template of a load once: o->chat_template, else the
 * tokenizer's own (tok_chat_template_detect), else none, with the reason
 * kept for the first chat request to report. */
void job_chat_resolve(job_src *src);

/* Say why the current line is bad: src->why gets "FILE:LINE: " and fmt.
 * @return -EINVAL, the code of a bad line. */
__attribute__((format(printf, 2, 3)))
int job_bad_line(job_src *src, const char *fmt, ...);

/* Encode text into p->ids: BOS (when bos >= 0) then its tokens, at most
 * max_len. @return 0, -EINVAL (why in *e: no tokenizer, does not encode,
 * empty, too long) or -ENOMEM. */
int job_encode_text(const job_src *src, const char *text, int bos, job_prompt *p,
                    job_field_err *e);

/* The id as compact JSON: a string with each invalid UTF-8 byte replaced
 * (job_utf8_sanitize), so that the output stays valid JSON; a number as
 * cJSON prints it. @return the malloc'd text, or NULL (out of memory). */
char *job_id_json(const cJSON *id);
/* The key of request object o, line line of its prompt file: the output
 * record's "id" (native) or "custom_id" (OpenAI, job_openai_is) as compact
 * JSON (job_id_json), {"line":N} for a native object without "id". The
 * one rule of it: the readers (parse_native, job_openai_parse) and merge
 * (job_line_key) all come here. @return 0 with *key malloc'd (the caller
 * frees), 1 when o can have none (a native "id" neither a string nor a
 * number, an OpenAI "custom_id" not a non-empty string: a bad line, *key
 * NULL), or -ENOMEM. */
int job_object_key(const cJSON *o, int line, char **key);
/* Token ids of the array ids (field: its name for messages) into p->ids:
 * at least one, each in [0, vocab), at most max_len. @return 0, -EINVAL
 * (*e) or -ENOMEM. */
int job_parse_ids(const job_src *src, const cJSON *ids, const char *field, job_prompt *p,
                  job_field_err *e);

/* 1 when the object o looks like an OpenAI batch request (any of
 * "custom_id", "method", "url", "body"). */
int job_openai_is(const cJSON *o);
/* Read OpenAI batch request o into p. A line without a usable custom_id is
 * a bad line (-EINVAL, src->why); any other fault makes p an error request
 * (p->err) and returns 0. @return 0, -EINVAL or -ENOMEM. */
int job_openai_parse(job_src *src, const cJSON *o, job_prompt *p);

/* Chat messages (an OpenAI "messages" array: {"role", "content"}) rendered
 * with the job's chat template (src->o->chat_template, or the tokenizer's)
 * and encoded into p->ids, exactly as transformers' apply_chat_template
 * with add_generation_prompt. @return 0, -EINVAL (*e) or -ENOMEM. */
int job_chat_encode(const job_src *src, const cJSON *messages, job_prompt *p, job_field_err *e);

/* The OpenAI batch output line of p (its error line when p->err), with
 * choices ch[0..n) (job_out_result). @return the text, which the caller
 * frees, or NULL when out of memory. */
char *job_openai_record(const job_out *o, const job_prompt *p, const job_choice *ch, int n,
                        const tok *t);

#endif
