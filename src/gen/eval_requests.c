/* eval_requests.c: score's request file (eval.h, README "Quality"): one
 * JSON object per line, {"id"?, "context", "continuation"} as text or
 * {"id"?, "context_ids", "continuation_ids"}, into eval streams.
 *
 *   each non-blank line -> its fields checked (known ones only, each part
 *   given once) -> its key (job_line_key: generate's rule) unique in the
 *   file -> context (BOS first where the model adds one; its trailing
 *   whitespace moved to the continuation, as lm-evaluation-harness does)
 *   and continuation tokenized or taken as ids -> a stream
 *
 * Every refusal names the file and line; the first one stops the parse
 * (score runs nothing of a file it cannot read whole).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "eval.h"
#include "job.h"

/* ids of a JSON array of token ids into *out, or text tokenized; errors
 * name path and line. @return 0, -EINVAL or -ENOMEM. */
static int part_ids(const tok *t, const cJSON *arr, const char *text, size_t len, int V,
                    int32_t **out, int *n, const char *what, const char *path, int line)
{
    if (arr) {
        RETURN_IF(!cJSON_IsArray(arr), -EINVAL, "%s line %d: \"%s_ids\" must be an array of "
                  "token ids", path, line, what);
        int k = cJSON_GetArraySize(arr), i = 0;
        *out = malloc(sizeof(int32_t) * ((size_t)k + 1));
        RETURN_IF(!*out, -ENOMEM, "out of memory");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            /* the range first: casting a double past int's is undefined */
            RETURN_IF(!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < V) ||
                      e->valuedouble != (int)e->valuedouble, -EINVAL,
                      "%s line %d: \"%s_ids\" holds %.17g, not a token id below %d", path,
                      line, what, cJSON_IsNumber(e) ? e->valuedouble : -1.0, V);
            (*out)[i++] = (int32_t)e->valuedouble;
        }
        *n = k;
        return 0;
    }
    RETURN_IF(!t, -EINVAL, "%s line %d: a text %s needs the model's tokenizer files; give "
              "\"%s_ids\" instead", path, line, what, what);
    int k = tok_encode(t, text, len, out);
    if (k < 0 && k != -ENOMEM) {
        err_prefix("%s line %d: cannot tokenize the %s", path, line, what);
        return -EINVAL;
    }
    FORWARD_IF(k);
    for (int i = 0; i < k; i++) /* a tokenizer of another model */
        RETURN_IF((*out)[i] >= V, -EINVAL, "%s line %d: the tokenizer gives id %d for the %s "
                  "but the model has %d (vocab_size); the tokenizer files are not this "
                  "model's", path, line, (*out)[i], what, V);
    *n = k;
    return 0;
}

/* The fields a request may have; any other is refused by name (a misspelt
 * "id" would otherwise key the result by its line without a word). */
static const char *const fields[] = {"id", "context", "continuation", "context_ids",
                                     "continuation_ids", "metadata", NULL};

/* Request o (line `line` of path, the bytes p[0..len)) checked before
 * anything is tokenized: known fields only, each part given once (text or
 * ids), an "id" that is a string or a number and not one an earlier line
 * has (seen). Its key in *key. @return 0, -EINVAL or -ENOMEM. */
static int check_request(const cJSON *o, const char *p, size_t len, const char *path, int line,
                         job_idset *seen, char **key)
{
    *key = NULL;
    const cJSON *f;
    cJSON_ArrayForEach(f, o) {
        int known = 0;
        for (int i = 0; fields[i] && !known; i++)
            known = strcmp(f->string, fields[i]) == 0;
        RETURN_IF(!known, -EINVAL, "%s line %d: unknown field \"%.60s\"; a request has \"id\", "
                  "\"context\" and \"continuation\" (or \"context_ids\" and "
                  "\"continuation_ids\")", path, line, f->string);
    }
    static const char *const part[] = {"context", "continuation"};
    for (int i = 0; i < 2; i++) {
        char ids[32];
        snprintf(ids, sizeof ids, "%s_ids", part[i]);
        const cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, part[i]),
                    *arr = cJSON_GetObjectItemCaseSensitive(o, ids);
        RETURN_IF(txt && arr, -EINVAL, "%s line %d: both \"%s\" and \"%s\"; give the text or "
                  "the ids, not both", path, line, part[i], ids);
        RETURN_IF(!cJSON_IsString(txt) && !arr, -EINVAL, "%s line %d: a request needs "
                  "\"context\" and \"continuation\" (text) or \"context_ids\" and "
                  "\"continuation_ids\"", path, line);
    }
    int rc = job_line_key(p, len, line, key);
    FORWARD_IF(rc);
    RETURN_IF(rc == 1, -EINVAL, "%s line %d: \"id\" must be a string or a finite number", path,
              line);
    int first = job_idset_line(seen, *key);
    if (first > 0)
        err_set(__FILE__, __LINE__, "%s line %d: the id %.80s is also line %d's; give each "
                "request its own id", path, line, *key, first);
    rc = first > 0 ? -EINVAL : job_idset_add_at(seen, *key, line);
    if (rc == -ENOMEM)
        err_set(__FILE__, __LINE__, "out of memory");
    if (rc < 0) {
        free(*key);
        *key = NULL;
    }
    return rc;
}

/* One request into r (its key taken over): tokens in own[r->n], which
 * the caller later packs into r->ids. @return 0, -EINVAL or -ENOMEM. */
static int add_request(const cJSON *o, const eval_request_opts *op, int line, char **key,
                       eval_requests *r, int32_t **own, size_t *total)
{
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(o, "context"),
                *cont = cJSON_GetObjectItemCaseSensitive(o, "continuation"),
                *ctx_ids = cJSON_GetObjectItemCaseSensitive(o, "context_ids"),
                *cont_ids = cJSON_GetObjectItemCaseSensitive(o, "continuation_ids");
    /* lm-evaluation-harness: a context's trailing whitespace goes to the
     * continuation */
    const char *cs = ctx_ids ? "" : ctx->valuestring, *ks = cont_ids ? "" : cont->valuestring;
    size_t cl = strlen(cs), moved = 0;
    while (cl > 0 && (cs[cl - 1] == ' ' || cs[cl - 1] == '\t' || cs[cl - 1] == '\n')) {
        cl--;
        moved++;
    }
    char *kbuf = malloc(moved + strlen(ks) + 1);
    int32_t *ci = NULL, *ki = NULL, *all = NULL;
    int nc = 0, nk = 0, rc = kbuf ? 0 : -ENOMEM;
    if (rc == 0) {
        memcpy(kbuf, cs + cl, moved);
        strcpy(kbuf + moved, ks);
        rc = part_ids(op->t, ctx_ids, cs, cl, op->vocab, &ci, &nc, "context", op->path, line);
    }
    if (rc == 0)
        rc = part_ids(op->t, cont_ids, kbuf, strlen(kbuf), op->vocab, &ki, &nk, "continuation",
                      op->path, line);
    int with_bos = !ctx_ids && op->bos >= 0;
    if (rc == 0 && (nc + with_bos < 1 || nk < 1)) {
        err_set(__FILE__, __LINE__, "%s line %d: the %s has no tokens", op->path, line,
                nk < 1 ? "continuation" : "context");
        rc = -EINVAL;
    }
    if (rc == 0 && (size_t)nc + (size_t)nk + 1 > INT_MAX / 2) {
        err_set(__FILE__, __LINE__, "%s line %d: %d + %d tokens; split the request", op->path,
                line, nc, nk);
        rc = -EINVAL;
    }
    if (rc == 0) {
        all = malloc(sizeof(int32_t) * ((size_t)nc + (size_t)nk + 1));
        rc = all ? 0 : -ENOMEM;
    }
    if (rc == 0) {
        int at = 0;
        if (with_bos)
            all[at++] = op->bos;
        memcpy(all + at, ci, sizeof(int32_t) * (size_t)nc);
        memcpy(all + at + nc, ki, sizeof(int32_t) * (size_t)nk);
        int ctx_n = at + nc, k = r->n++;
        own[k] = all;
        r->s[k] = (eval_stream){.ids = all, .n = ctx_n + nk,
                                .prefill = op->full ? ctx_n : 1, .first_target = ctx_n,
                                .line = line};
        r->keys[k] = *key;
        *key = NULL;
        *total += (size_t)(ctx_n + nk);
    }
    if (rc == -ENOMEM)
        err_set(__FILE__, __LINE__, "out of memory");
    free(kbuf);
    free(ci);
    free(ki);
    return rc;
}

int eval_requests_parse(const char *buf, size_t len, const eval_request_opts *op,
                        eval_requests *r)
{
    memset(r, 0, sizeof *r);
    size_t lines = 1;
    for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + len - p))) != NULL; p++)
        lines++;
    RETURN_IF(lines > INT_MAX, -EINVAL, "%s: more than %d lines; split the file", op->path,
              INT_MAX);
    r->s = calloc(lines, sizeof *r->s);
    r->keys = calloc(lines, sizeof *r->keys);
    int32_t **own = calloc(lines, sizeof *own);
    size_t total = 0;
    int rc = r->s && r->keys && own ? 0 : -ENOMEM, line = 0;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory for %zu requests", lines);
    job_idset seen = {0};
    for (const char *p = buf, *nl; rc == 0 && p < buf + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(buf + len - p));
        if (!nl)
            nl = buf + len;
        line++;
        size_t ll = (size_t)(nl - p);
        while (ll && (p[ll - 1] == '\r' || p[ll - 1] == ' '))
            ll--;
        if (ll == 0)
            continue;
        cJSON *o = cJSON_ParseWithLength(p, ll);
        char *key = NULL;
        if (!cJSON_IsObject(o)) {
            err_set(__FILE__, __LINE__, "%s line %d: not a JSON object; one request per line",
                    op->path, line);
            rc = -EINVAL;
        }
        if (rc == 0)
            rc = check_request(o, p, ll, op->path, line, &seen, &key);
        if (rc == 0)
            rc = add_request(o, op, line, &key, r, own, &total);
        free(key);
        cJSON_Delete(o);
    }
    job_idset_free(&seen);
    if (rc == 0 && r->n == 0) {
        err_set(__FILE__, __LINE__, "%s: no requests", op->path);
        rc = -EINVAL;
    }
    /* one array for every request's tokens */
    if (rc == 0) {
        r->ids = malloc(sizeof(int32_t) * (total ? total : 1));
        if (!r->ids) {
            err_set(__FILE__, __LINE__, "out of memory");
            rc = -ENOMEM;
        }
    }
    size_t at = 0;
    for (int k = 0; k < r->n; k++) {
        if (rc == 0) {
            memcpy(r->ids + at, own[k], sizeof(int32_t) * (size_t)r->s[k].n);
            r->s[k].ids = r->ids + at;
            at += (size_t)r->s[k].n;
        }
        free(own[k]);
    }
    free(own);
    if (rc < 0)
        eval_requests_free(r);
    return rc;
}

void eval_requests_free(eval_requests *r)
{
    for (int k = 0; r->keys && k < r->n; k++)
        free(r->keys[k]);
    free(r->keys);
    free(r->s);
    free(r->ids);
    memset(r, 0, sizeof *r);
}
