/* job.c: prompt file parsing and the resumable completions file. */
#include "job.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"

/* Report one bad line: through the log hook, or as the error when strict. */
#define BAD_LINE(...)                                                        \
    do {                                                                     \
        if (strict) {                                                        \
            err_set(__FILE__, __LINE__, __VA_ARGS__);                        \
            rc = -EINVAL;                                                    \
        } else {                                                             \
            err_log(__VA_ARGS__);                                            \
            ps->n_bad++;                                                     \
        }                                                                    \
        goto next;                                                           \
    } while (0)

int job_prompts_load(const char *path, const tok *t, int bos, int vocab,
                     int max_len, int strict, job_prompts *ps)
{
    memset(ps, 0, sizeof *ps);
    FILE *f = fopen(path, "rb");
    RETURN_IF(!f, -errno, "%s: cannot open the prompt file (%s)", path,
              strerror(errno));
    char *line = NULL;
    size_t cap_line = 0;
    ssize_t len;
    int lineno = 0, rc = 0, cap = 0;
    while (rc == 0 && (len = getline(&line, &cap_line, f)) >= 0) {
        lineno++;
        cJSON *o = NULL;
        job_prompt p = {.line = lineno, .max_new = -1};
        size_t k = 0;
        while (k < (size_t)len && strchr(" \t\r\n", line[k]))
            k++;
        if (k == (size_t)len)
            continue; /* blank line */
        o = cJSON_ParseWithLength(line, (size_t)len);
        if (!o || !cJSON_IsObject(o))
            BAD_LINE("%s:%d: invalid JSON; each line must be one object like "
                     "{\"id\": 1, \"prompt\": \"text\"}", path, lineno);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        if (id && !cJSON_IsString(id) && !cJSON_IsNumber(id))
            BAD_LINE("%s:%d: \"id\" must be a string or a number", path, lineno);
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(o, "max_new_tokens");
        if (mn) {
            if (!cJSON_IsNumber(mn) || mn->valuedouble < 0 ||
                mn->valuedouble != (int)mn->valuedouble)
                BAD_LINE("%s:%d: \"max_new_tokens\" must be a non-negative integer",
                         path, lineno);
            p.max_new = (int)mn->valuedouble;
        }
        const cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "prompt_ids");
        if (cJSON_IsString(txt) && !ids) {
            if (!t)
                BAD_LINE("%s:%d: text prompt but the model has no tokenizer "
                         "(--dummy); give \"prompt_ids\" instead", path, lineno);
            int32_t *enc = NULL;
            int n = tok_encode(t, txt->valuestring, strlen(txt->valuestring), &enc);
            if (n < 0) {
                char msg[512];
                snprintf(msg, sizeof msg, "%s", err_msg());
                err_clear();
                BAD_LINE("%s:%d: cannot tokenize the prompt: %s", path, lineno, msg);
            }
            p.ids = malloc(sizeof(int32_t) * ((size_t)n + 1));
            if (!p.ids) {
                free(enc);
                err_set(__FILE__, __LINE__, "out of memory");
                rc = -ENOMEM;
                goto next;
            }
            p.ids[0] = bos;
            if (n > 0)
                memcpy(p.ids + 1, enc, sizeof(int32_t) * (size_t)n);
            free(enc);
            p.n_ids = n + 1;
        } else if (cJSON_IsArray(ids) && !txt) {
            int n = cJSON_GetArraySize(ids);
            if (n == 0)
                BAD_LINE("%s:%d: \"prompt_ids\" is empty; give at least one token",
                         path, lineno);
            p.ids = malloc(sizeof(int32_t) * (size_t)n);
            if (!p.ids) {
                err_set(__FILE__, __LINE__, "out of memory");
                rc = -ENOMEM;
                goto next;
            }
            p.n_ids = n;
            int i = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, ids) {
                if (!cJSON_IsNumber(e) || e->valuedouble != (int)e->valuedouble ||
                    e->valuedouble < 0 || e->valuedouble >= vocab)
                    BAD_LINE("%s:%d: prompt_ids[%d] is not a token id in [0, %d)",
                             path, lineno, i, vocab);
                p.ids[i++] = (int32_t)e->valuedouble;
            }
        } else {
            BAD_LINE("%s:%d: give exactly one of \"prompt\" (a string) or "
                     "\"prompt_ids\" (an array of token ids)", path, lineno);
        }
        if (p.n_ids > max_len)
            BAD_LINE("%s:%d: the prompt has %d tokens but the model takes at most "
                     "%d (max_position_embeddings); shorten it", path, lineno,
                     p.n_ids, max_len);
        if (id) {
            p.id = cJSON_PrintUnformatted(id);
        } else {
            p.id = malloc(16);
            if (p.id)
                snprintf(p.id, 16, "%d", lineno);
        }
        if (!p.id) {
            rc = -ENOMEM;
            goto next;
        }
        if (ps->n == cap) {
            cap = cap ? 2 * cap : 64;
            job_prompt *np = realloc(ps->p, sizeof *np * (size_t)cap);
            if (!np) {
                rc = -ENOMEM;
                goto next;
            }
            ps->p = np;
        }
        ps->p[ps->n++] = p;
        p.ids = NULL;
        p.id = NULL;
    next:
        free(p.ids);
        free(p.id);
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    if (rc < 0) {
        job_prompts_free(ps);
        if (rc == -ENOMEM)
            err_set(__FILE__, __LINE__, "out of memory reading %s", path);
    }
    return rc;
}

void job_prompts_free(job_prompts *ps)
{
    for (int i = 0; i < ps->n; i++) {
        free(ps->p[i].id);
        free(ps->p[i].ids);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

/* ------------------------------------------------------------ output */

/* The slot of id in the done set: where it is, or the free slot where it
 * belongs. The set always has a free slot (at most half full). */
static size_t done_slot(char *const *done, size_t mask, const char *id)
{
    size_t i = (size_t)XXH3_64bits(id, strlen(id)) & mask;
    while (done[i] && strcmp(done[i], id) != 0)
        i = (i + 1) & mask;
    return i;
}

static int add_done(job_out *o, const char *id)
{
    if (!o->done || 2 * ((size_t)o->n_done + 1) > o->done_mask + 1) {
        size_t cap = o->done ? 2 * (o->done_mask + 1) : 64;
        char **nd = calloc(cap, sizeof *nd);
        RETURN_IF(!nd, -ENOMEM, "out of memory for %d completed ids", o->n_done + 1);
        for (size_t i = 0; o->done && i <= o->done_mask; i++)
            if (o->done[i])
                nd[done_slot(nd, cap - 1, o->done[i])] = o->done[i];
        free(o->done);
        o->done = nd;
        o->done_mask = cap - 1;
    }
    size_t i = done_slot(o->done, o->done_mask, id);
    if (o->done[i])
        return 0; /* already there */
    o->done[i] = strdup(id);
    RETURN_IF(!o->done[i], -ENOMEM, "out of memory");
    o->n_done++;
    return 0;
}

/* Read the ids of a completions file; cut a torn last line. */
static int scan_existing(job_out *o)
{
    FILE *f = fopen(o->path, "rb");
    if (!f)
        return 0; /* nothing yet */
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long good = 0;
    int lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (line[len - 1] != '\n')
            break; /* torn write of a killed job: dropped below */
        cJSON *r = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
        if (!id) {
            cJSON_Delete(r);
            err_set(__FILE__, __LINE__, "%s:%d: not a flexh2o completion record; "
                    "--resume needs the file this job wrote (or move it away)",
                    o->path, lineno);
            rc = -EINVAL;
            break;
        }
        char *s = cJSON_PrintUnformatted(id);
        cJSON_Delete(r);
        rc = s ? add_done(o, s) : -ENOMEM;
        free(s);
        if (rc < 0)
            break;
        good = ftell(f);
    }
    free(line);
    fclose(f);
    FORWARD_IF(rc);
    struct stat st;
    if (stat(o->path, &st) == 0 && st.st_size > good) {
        err_log("%s: dropping a torn last record (%lld bytes) left by an "
                "interrupted run", o->path, (long long)(st.st_size - good));
        RETURN_IF(truncate(o->path, good) != 0, -errno, "%s: cannot truncate (%s)",
                  o->path, strerror(errno));
    }
    return 0;
}

int job_out_open(const char *path, int resume, job_out *o)
{
    memset(o, 0, sizeof *o);
    o->path = strdup(path);
    RETURN_IF(!o->path, -ENOMEM, "out of memory");
    struct stat st;
    int rc = 0;
    if (!resume && stat(path, &st) == 0 && st.st_size > 0) {
        err_set(__FILE__, __LINE__, "%s already exists; pass --resume to continue that job "
                "or choose another --out", path);
        rc = -EEXIST;
    }
    if (rc == 0 && resume)
        rc = scan_existing(o);
    if (rc == 0 && !(o->f = fopen(path, "ab"))) {
        rc = -errno;
        err_set(__FILE__, __LINE__, "%s: cannot open for writing (%s)", path, strerror(errno));
    }
    if (rc < 0)
        job_out_close(o); /* frees what was set up; the file itself is untouched */
    return rc;
}

int job_out_has(const job_out *o, const char *id)
{
    return o->done && o->done[done_slot(o->done, o->done_mask, id)] != NULL;
}

char *job_utf8_sanitize(const char *s, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1); /* each bad byte -> 3-byte U+FFFD */
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
    while (i < len) {
        uint32_t cp;
        int n = tok_utf8_char(s + i, len - i, &cp);
        if (n > 0 && cp != 0) { /* NUL cannot travel in a C string */
            memcpy(out + o, s + i, (size_t)n);
            o += (size_t)n;
            i += (size_t)n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    if (out_len)
        *out_len = o;
    return out;
}

int job_out_write(job_out *o, const char *id, const char *text, size_t len,
                  const int32_t *tokens, const float *logprobs, int n,
                  const char *finish_reason)
{
    char *clean = job_utf8_sanitize(text, len, NULL);
    cJSON *r = cJSON_CreateObject();
    cJSON *idv = cJSON_Parse(id);
    int rc = clean && r && idv ? 0 : -ENOMEM;
    if (rc == 0) {
        cJSON_AddItemToObject(r, "id", idv);
        idv = NULL;
        cJSON_AddStringToObject(r, "completion", clean);
        cJSON *tk = cJSON_AddArrayToObject(r, "tokens");
        cJSON *lp = cJSON_AddArrayToObject(r, "logprobs");
        for (int i = 0; i < n; i++) {
            cJSON_AddItemToArray(tk, cJSON_CreateNumber(tokens[i]));
            cJSON_AddItemToArray(lp, cJSON_CreateNumber(logprobs[i]));
        }
        cJSON_AddStringToObject(r, "finish_reason", finish_reason);
        char *js = cJSON_PrintUnformatted(r);
        if (!js) {
            rc = -ENOMEM;
        } else {
            if (fputs(js, o->f) < 0 || fputc('\n', o->f) < 0 || fflush(o->f) != 0) {
                err_set(__FILE__, __LINE__, "%s: write failed (%s); the records "
                        "before this one are intact, free space and rerun with --resume",
                        o->path, strerror(errno));
                rc = -EIO;
            }
            free(js);
        }
    }
    cJSON_Delete(idv);
    cJSON_Delete(r);
    free(clean);
    if (rc == -ENOMEM)
        err_set(__FILE__, __LINE__, "out of memory writing a record");
    if (rc == 0)
        rc = add_done(o, id);
    return rc;
}

int job_out_close(job_out *o)
{
    int rc = 0;
    if (o->f) {
        if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)
            rc = -errno;
        if (fclose(o->f) != 0 && rc == 0)
            rc = -errno;
        if (rc < 0)
            err_set(__FILE__, __LINE__, "%s: closing failed (%s)", o->path, strerror(-rc));
    }
    for (size_t i = 0; o->done && i <= o->done_mask; i++)
        free(o->done[i]);
    free(o->done);
    free(o->path);
    memset(o, 0, sizeof *o);
    return rc;
}
