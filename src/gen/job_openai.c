/* job_openai.c: the OpenAI Batch API's request lines and output lines
 * (DESIGN.md "Job files"), as OpenAI and vLLM's run_batch read and write
 * them:
 *
 *   in:  {"custom_id", "method": "POST", "url": "/v1/completions" |
 *         "/v1/chat/completions", "body": {prompt | messages, ...}}
 *   out: {"id", "custom_id", "response": {"status_code": 200, "request_id",
 *         "body": <completion | chat.completion>}, "error": null}
 *   a request that cannot run: status_code 400, body {"error": {...}} and
 *   "error": {"code", "message", "param", "line"}.
 *
 * A body field is read (job_params.c and below), known to leave the result
 * alone (kept or ignored), or refused by name: an unknown field may change
 * what the caller expects, so it is never ignored silently. Output ids are
 * derived from the custom_id (XXH3), so a rerun writes the same lines
 * (with SOURCE_DATE_EPOCH also the same "created").
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "job_impl.h"

enum { URL_COMPLETION, URL_CHAT };

/* Body fields that leave the result alone, or are read below. */
static const char *const body_common[] = {
    "model", "user", "stream", "stream_options", "metadata", "store", "service_tier",
    "prompt_cache_key", "safety_identifier", "skip_special_tokens",
    "spaces_between_special_tokens", "max_tokens", "response_format", "tools", "tool_choice",
    "functions", "function_call", "parallel_tool_calls", JOB_PARAM_FIELDS, NULL};
static const char *const body_completion[] = {"prompt", "logprobs", "echo", "suffix", "best_of",
                                              NULL};
static const char *const body_chat[] = {"messages", "logprobs", "top_logprobs",
                                        "max_completion_tokens", NULL};

static int in_list(const char *const *list, const char *name)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], name) == 0)
            return 1;
    return 0;
}

int job_openai_is(const cJSON *o)
{
    return cJSON_HasObjectItem(o, "custom_id") || cJSON_HasObjectItem(o, "body") ||
           cJSON_HasObjectItem(o, "url") || cJSON_HasObjectItem(o, "method");
}

/* 1 when field name of body is absent, null or equal to the JSON text
 * want (the value that changes nothing), as compared printed. */
static int is_default(const cJSON *body, const char *name, const char *want)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(body, name);
    if (!x || cJSON_IsNull(x))
        return 1;
    char *s = want ? cJSON_PrintUnformatted(x) : NULL;
    int eq = s && strcmp(s, want) == 0;
    free(s);
    return eq;
}

/* The fields of a body that would change the result but are not
 * available, each refused unless at the value that changes nothing. */
static int check_unsupported(const cJSON *body, int url, int n, job_field_err *e)
{
    static const struct {
        const char *name, *ok, *why;
    } fields[] = {
        {"stream", "false", "a batch line is answered whole; remove it"},
        {"echo", "false", "the prompt is not echoed; remove it"},
        {"suffix", NULL, "insertion (suffix) is not available; remove it"},
        {"tools", "[]", "tool calls are not available; remove them"},
        {"functions", "[]", "function calls are not available; remove them"},
        {"tool_choice", "\"none\"", "tool calls are not available; remove it"},
        {"function_call", "\"none\"", "function calls are not available; remove it"},
        {"response_format", "{\"type\":\"text\"}", "only text output is available; remove it"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (!is_default(body, fields[i].name, fields[i].ok))
            return job_field_bad(e, fields[i].name, "\"%s\": %s", fields[i].name,
                                 fields[i].why);
    const cJSON *best = cJSON_GetObjectItemCaseSensitive(body, "best_of");
    if (url == URL_COMPLETION && best && !cJSON_IsNull(best) &&
        !(cJSON_IsNumber(best) && best->valuedouble == n))
        return job_field_bad(e, "best_of", "\"best_of\" other than n is not available; "
                             "remove it");
    return 0;
}

/* Refuse a body field that is neither read nor known to change nothing. */
static int check_known(const cJSON *body, int url, job_field_err *e)
{
    const cJSON *f;
    cJSON_ArrayForEach(f, body) {
        if (in_list(body_common, f->string) ||
            in_list(url == URL_CHAT ? body_chat : body_completion, f->string))
            continue;
        return job_field_bad(e, f->string, "unknown body field \"%.60s\" for %s; it may "
                             "change the result, so it is refused: remove it", f->string,
                             url == URL_CHAT ? "/v1/chat/completions" : "/v1/completions");
    }
    return 0;
}

/* The completion's prompt: a string, token ids, or a list of one of
 * those (OpenAI's batch of prompts, here of one). */
static int read_prompt(const job_src *src, const cJSON *body, job_prompt *p, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 1 &&
        (cJSON_IsString(x->child) || cJSON_IsArray(x->child)))
        x = x->child;
    if (cJSON_IsString(x))
        return job_encode_text(src, x->valuestring, src->o->bos, p, e);
    if (cJSON_IsArray(x) && (!x->child || cJSON_IsNumber(x->child)))
        return job_parse_ids(src, x, "prompt", p, e);
    if (cJSON_IsArray(x))
        return job_field_bad(e, "prompt", "\"prompt\" holds several prompts; give one per "
                             "request line");
    return job_field_bad(e, "prompt", "\"prompt\" must be a string or an array of token ids");
}

/* The logprobs fields: completions' "logprobs": N (0 .. 20: the chosen
 * token's and N alternatives), chat's "logprobs": true with
 * "top_logprobs": N. */
static int read_logprobs(const cJSON *body, int url, job_params *par, job_field_err *e)
{
    if (url == URL_COMPLETION) {
        int n = -1;
        FORWARD_IF(job_field_int(body, "logprobs", 0, JOB_TOP_LOGPROBS_MAX, &n, e));
        par->logprobs = n >= 0;
        par->top_logprobs = n > 0 ? n : 0;
        return 0;
    }
    FORWARD_IF(job_field_bool(body, "logprobs", &par->logprobs, e));
    FORWARD_IF(job_field_int(body, "top_logprobs", 0, JOB_TOP_LOGPROBS_MAX, &par->top_logprobs,
                             e));
    if (par->top_logprobs > 0 && !par->logprobs)
        return job_field_bad(e, "top_logprobs", "\"top_logprobs\" needs \"logprobs\": true");
    return 0;
}

/* The body of a request, into p (and the chat messages through the
 * template). @return 0, -EINVAL (*e) or -ENOMEM. */
static int read_body(const job_src *src, const cJSON *body, int url, job_prompt *p,
                     job_field_err *e)
{
    FORWARD_IF(check_known(body, url, e));
    FORWARD_IF(job_params_parse(body, src->o->vocab, &p->par, e));
    FORWARD_IF(check_unsupported(body, url, p->par.n, e));
    FORWARD_IF(read_logprobs(body, url, &p->par, e));
    FORWARD_IF(job_field_int(body, "max_tokens", 0, JOB_MAX_NEW_MAX, &p->max_new, e));
    if (url == URL_CHAT)
        FORWARD_IF(job_field_int(body, "max_completion_tokens", 0, JOB_MAX_NEW_MAX,
                                 &p->max_new, e));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model))
        return job_field_bad(e, "model", "\"model\" must be a string");
    if (cJSON_IsString(model) &&
        !(p->model = job_utf8_sanitize(model->valuestring, strlen(model->valuestring), NULL)))
        return -ENOMEM;
    if (url == URL_CHAT)
        return job_chat_encode(src, cJSON_GetObjectItemCaseSensitive(body, "messages"), p, e);
    return read_prompt(src, body, p, e);
}

int job_openai_parse(job_src *src, const cJSON *o, job_prompt *p)
{
    int rc = job_object_key(o, src->line, &p->id);
    FORWARD_IF(rc);
    if (rc == 1)
        return job_bad_line(src, "an OpenAI batch request needs \"custom_id\", a non-empty "
                            "string");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(o, "method");
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(o, "url");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(o, "body");
    const char *u = cJSON_IsString(url) ? url->valuestring : "";
    int kind = strcmp(u, "/v1/chat/completions") == 0 ? URL_CHAT : URL_COMPLETION;
    p->kind = kind == URL_CHAT ? JOB_OPENAI_CHAT : JOB_OPENAI_COMPLETION;
    const cJSON *f;
    cJSON_ArrayForEach(f, o) {
        if (!in_list((const char *const[]){"custom_id", "method", "url", "body", NULL},
                     f->string))
            return job_prompt_fail(p, f->string, "unknown field \"%.60s\" of a batch request; "
                                   "the fields are custom_id, method, url and body", f->string);
    }
    if (!cJSON_IsString(method) || strcmp(method->valuestring, "POST") != 0)
        return job_prompt_fail(p, "method", "\"method\" must be \"POST\"");
    if (strcmp(u, "/v1/completions") != 0 && kind != URL_CHAT)
        return job_prompt_fail(p, "url", "\"url\" must be \"/v1/completions\" or "
                               "\"/v1/chat/completions\"");
    if (!cJSON_IsObject(body))
        return job_prompt_fail(p, "body", "\"body\" must be an object");
    job_field_err e = {0};
    rc = read_body(src, body, kind, p, &e);
    if (rc == -EINVAL)
        return job_prompt_fail(p, e.field, "%s", e.why);
    return rc;
}

/* ------------------------------------------------------------ output */

/* An id of the output: prefix and 16 hex digits of the custom_id's hash
 * under seed (one seed per kind of id). */
static void derived_id(char *buf, size_t size, const char *prefix, const char *cid,
                       uint64_t seed)
{
    snprintf(buf, size, "%s%016" PRIx64, prefix, XXH3_64bits_withSeed(cid, strlen(cid), seed));
}

/* The text of token id for logprobs (sanitised UTF-8) and its raw bytes
 * (*raw, *n_raw): the tokenizer's, or "token_id:ID" (vLLM's form) without
 * one. @return the text (caller frees both) or NULL. */
static char *token_text(const tok *t, int32_t id, char **raw, int *n_raw)
{
    char *bytes = NULL;
    int n = -1;
    if (t)
        n = tok_decode(t, &id, 1, &bytes);
    if (n < 0) {
        err_clear();
        free(bytes);
        bytes = malloc(32);
        n = bytes ? snprintf(bytes, 32, "token_id:%d", id) : 0;
    }
    *raw = bytes;
    *n_raw = n;
    return bytes ? job_utf8_sanitize(bytes, (size_t)n, NULL) : NULL;
}

/* chat's {"token", "logprob", "bytes"} of id. */
static cJSON *chat_token(const tok *t, int32_t id, float lp)
{
    char *raw = NULL;
    int n = 0;
    char *s = token_text(t, id, &raw, &n);
    cJSON *o = cJSON_CreateObject();
    if (o && s) {
        cJSON_AddStringToObject(o, "token", s);
        cJSON_AddNumberToObject(o, "logprob", lp);
        cJSON *b = cJSON_AddArrayToObject(o, "bytes");
        for (int i = 0; i < n; i++)
            cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)raw[i]));
    }
    free(s);
    free(raw);
    return o;
}

/* The "logprobs" object of one choice, or JSON null when not asked. */
static cJSON *logprobs_of(const job_prompt *p, const job_choice *ch, const tok *t)
{
    if (!p->par.logprobs)
        return cJSON_CreateNull();
    int top = p->par.top_logprobs;
    cJSON *o = cJSON_CreateObject();
    if (p->kind == JOB_OPENAI_CHAT) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        for (int i = 0; i < ch->n; i++) {
            cJSON *c = chat_token(t, ch->tokens[i], ch->logprobs[i]);
            cJSON *alt = cJSON_AddArrayToObject(c, "top_logprobs");
            for (int k = 0; k < top; k++) {
                size_t at = (size_t)i * (size_t)ch->top_stride + (size_t)k;
                cJSON_AddItemToArray(alt, chat_token(t, ch->top_ids[at], ch->top_lps[at]));
            }
            cJSON_AddItemToArray(content, c);
        }
        cJSON_AddNullToObject(o, "refusal");
        return o;
    }
    /* completions: parallel arrays, and the text offset of each token */
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    long off = 0;
    for (int i = 0; i < ch->n; i++) {
        char *raw = NULL;
        int n = 0;
        char *s = token_text(t, ch->tokens[i], &raw, &n);
        cJSON_AddItemToArray(toks, cJSON_CreateString(s ? s : ""));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(ch->logprobs[i]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += n;
        free(s);
        free(raw);
        cJSON *d = cJSON_CreateObject();
        for (int k = 0; k < top; k++) {
            size_t at = (size_t)i * (size_t)ch->top_stride + (size_t)k;
            char *r2 = NULL;
            int n2 = 0;
            char *s2 = token_text(t, ch->top_ids[at], &r2, &n2);
            if (s2 && !cJSON_HasObjectItem(d, s2))
                cJSON_AddNumberToObject(d, s2, ch->top_lps[at]);
            free(s2);
            free(r2);
        }
        cJSON_AddItemToArray(tops, d);
    }
    return o;
}

/* One element of "choices". */
static cJSON *choice_of(const job_prompt *p, const job_choice *ch, int index, const tok *t)
{
    cJSON *c = cJSON_CreateObject();
    char *text = job_utf8_sanitize(ch->text, ch->len, NULL);
    if (!c || !text) {
        cJSON_Delete(c);
        free(text);
        return NULL;
    }
    cJSON_AddNumberToObject(c, "index", index);
    if (p->kind == JOB_OPENAI_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    free(text);
    cJSON_AddItemToObject(c, "logprobs", logprobs_of(p, ch, t));
    /* OpenAI says "stop" for a natural end and for a stop sequence */
    cJSON_AddStringToObject(c, "finish_reason",
                            strcmp(ch->finish, "length") == 0 ? "length" : "stop");
    if (ch->stop_str)
        cJSON_AddStringToObject(c, "stop_reason", ch->stop_str); /* vLLM's extra */
    else if (ch->stop_id >= 0)
        cJSON_AddNumberToObject(c, "stop_reason", ch->stop_id);
    else
        cJSON_AddNullToObject(c, "stop_reason");
    return c;
}

/* The completion or chat.completion object of p's choices. */
static cJSON *body_of(const job_out *o, const job_prompt *p, const job_choice *ch, int n,
                      const tok *t)
{
    int chat = p->kind == JOB_OPENAI_CHAT;
    char id[64];
    derived_id(id, sizeof id, chat ? "chatcmpl-" : "cmpl-", p->id, 3);
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "id", id);
    cJSON_AddStringToObject(b, "object", chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(b, "created", (double)o->created);
    cJSON_AddStringToObject(b, "model", p->model ? p->model
                                                 : o->model_name ? o->model_name : "");
    cJSON *cs = cJSON_AddArrayToObject(b, "choices");
    long gen = 0;
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(cs, choice_of(p, &ch[i], i, t));
        gen += ch[i].n;
    }
    cJSON *u = cJSON_AddObjectToObject(b, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", p->n_ids);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)gen);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(p->n_ids + gen));
    return b;
}

/* The body and the "error" of a request that could not run. */
static cJSON *error_body(const job_prompt *p)
{
    cJSON *b = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(b, "error");
    cJSON_AddStringToObject(e, "message", p->err);
    cJSON_AddStringToObject(e, "type", "invalid_request_error");
    if (p->err_param)
        cJSON_AddStringToObject(e, "param", p->err_param);
    else
        cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    return b;
}

char *job_openai_record(const job_out *o, const job_prompt *p, const job_choice *ch, int n,
                        const tok *t)
{
    char id[64], rid[64];
    derived_id(id, sizeof id, "batch_req_", p->id, 1);
    derived_id(rid, sizeof rid, "req_", p->id, 2);
    cJSON *r = cJSON_CreateObject();
    cJSON *cid = cJSON_Parse(p->id);
    if (!r || !cid) {
        cJSON_Delete(r);
        cJSON_Delete(cid);
        return NULL;
    }
    cJSON_AddStringToObject(r, "id", id);
    cJSON_AddItemToObject(r, "custom_id", cid);
    cJSON *resp = cJSON_AddObjectToObject(r, "response");
    cJSON_AddNumberToObject(resp, "status_code", p->err ? 400 : 200);
    cJSON_AddStringToObject(resp, "request_id", rid);
    cJSON_AddItemToObject(resp, "body", p->err ? error_body(p) : body_of(o, p, ch, n, t));
    if (p->err) {
        cJSON *e = cJSON_AddObjectToObject(r, "error");
        cJSON_AddStringToObject(e, "code", "invalid_request");
        cJSON_AddStringToObject(e, "message", p->err);
        if (p->err_param)
            cJSON_AddStringToObject(e, "param", p->err_param);
        else
            cJSON_AddNullToObject(e, "param");
        cJSON_AddNumberToObject(e, "line", p->line);
    } else {
        cJSON_AddNullToObject(r, "error");
    }
    char *js = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return js;
}
