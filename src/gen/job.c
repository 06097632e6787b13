/* job.c: prompt file parsing and the resumable completions file. */
#include "job.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"

/* ------------------------------------------------------ prompt file */

/* What reading one line of a prompt file needs (job_prompts_load's
 * arguments), and the message of a bad line. */
typedef struct prompt_src {
    const char *path;
    const tok *t;        /* NULL: text prompts are refused */
    int bos, vocab, max_len;
    int line;            /* 1-based line being read */
    char why[1024];      /* "FILE:LINE: what; what to do" of a bad line */
} prompt_src;

/* Say why the current line is bad: src->why gets "FILE:LINE: " and fmt.
 * @return -EINVAL, the code of a bad line. */
__attribute__((format(printf, 2, 3)))
static int bad_line(prompt_src *src, const char *fmt, ...)
{
    int n = snprintf(src->why, sizeof src->why, "%s:%d: ", src->path, src->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof src->why)
        vsnprintf(src->why + n, sizeof src->why - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* "max_new_tokens", when given: a non-negative integer. @return 0 or
 * -EINVAL (a bad line). */
static int parse_max_new(prompt_src *src, const cJSON *o, job_prompt *p)
{
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(o, "max_new_tokens");
    if (!mn)
        return 0;
    if (!cJSON_IsNumber(mn) || mn->valuedouble < 0 || mn->valuedouble != (int)mn->valuedouble)
        return bad_line(src, "\"max_new_tokens\" must be a non-negative integer");
    p->max_new = (int)mn->valuedouble;
    return 0;
}

/* A text prompt: BOS (when bos >= 0), then its tokens. @return 0, -EINVAL
 * (a bad line: no tokenizer, the text does not encode, or it gives no
 * token at all) or -ENOMEM. */
static int parse_text(prompt_src *src, const char *text, job_prompt *p)
{
    if (!src->t)
        return bad_line(src, "text prompt but the model has no tokenizer (--dummy); give "
                        "\"prompt_ids\" instead");
    int32_t *enc = NULL;
    int n = tok_encode(src->t, text, strlen(text), &enc);
    if (n < 0) {
        /* the tokenizer's message becomes part of the line's report */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err_msg());
        err_clear();
        return bad_line(src, "cannot tokenize the prompt: %s", msg);
    }
    int k = src->bos >= 0;
    if (n + k == 0) {
        free(enc);
        return bad_line(src, "the prompt is empty and the model adds no BOS; give some text");
    }
    p->ids = malloc(sizeof(int32_t) * ((size_t)n + 1));
    if (!p->ids) {
        free(enc);
        err_set(__FILE__, __LINE__, "out of memory");
        return -ENOMEM;
    }
    if (k)
        p->ids[0] = src->bos;
    if (n > 0)
        memcpy(p->ids + k, enc, sizeof(int32_t) * (size_t)n);
    free(enc);
    p->n_ids = n + k;
    return 0;
}

/* "prompt_ids": at least one token id in [0, vocab), used as given.
 * @return 0, -EINVAL (a bad line) or -ENOMEM. */
static int parse_ids(prompt_src *src, const cJSON *ids, job_prompt *p)
{
    int n = cJSON_GetArraySize(ids);
    if (n == 0)
        return bad_line(src, "\"prompt_ids\" is empty; give at least one token");
    p->ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->ids) {
        err_set(__FILE__, __LINE__, "out of memory");
        return -ENOMEM;
    }
    p->n_ids = n;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ids) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (int)e->valuedouble ||
            e->valuedouble < 0 || e->valuedouble >= src->vocab)
            return bad_line(src, "prompt_ids[%d] is not a token id in [0, %d)", i, src->vocab);
        p->ids[i++] = (int32_t)e->valuedouble;
    }
    return 0;
}

/* The model input of the line: exactly one of "prompt" (a string) and
 * "prompt_ids" (an array), no longer than max_len tokens. @return 0,
 * -EINVAL (a bad line) or -ENOMEM. */
static int parse_input(prompt_src *src, const cJSON *o, job_prompt *p)
{
    const cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "prompt_ids");
    if (cJSON_IsString(txt) && !ids)
        FORWARD_IF(parse_text(src, txt->valuestring, p));
    else if (cJSON_IsArray(ids) && !txt)
        FORWARD_IF(parse_ids(src, ids, p));
    else
        return bad_line(src, "give exactly one of \"prompt\" (a string) or \"prompt_ids\" "
                        "(an array of token ids)");
    if (p->n_ids > src->max_len)
        return bad_line(src, "the prompt has %d tokens but the model takes at most %d "
                        "(max_position_embeddings); shorten it", p->n_ids, src->max_len);
    return 0;
}

/* One non-blank line, checked in this order: JSON object, "id" type,
 * "max_new_tokens", the prompt; then the id as compact JSON (the line
 * number when absent). On failure p may hold allocations the caller frees.
 * @return 0, -EINVAL (a bad line: src->why says why) or -ENOMEM. */
static int parse_line(prompt_src *src, const char *line, size_t len, job_prompt *p)
{
    cJSON *o = cJSON_ParseWithLength(line, len);
    int rc = 0;
    const cJSON *id = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "id") : NULL;
    if (!cJSON_IsObject(o))
        rc = bad_line(src, "invalid JSON; each line must be one object like "
                      "{\"id\": 1, \"prompt\": \"text\"}");
    else if (id && !cJSON_IsString(id) && !cJSON_IsNumber(id))
        rc = bad_line(src, "\"id\" must be a string or a number");
    if (rc == 0)
        rc = parse_max_new(src, o, p);
    if (rc == 0)
        rc = parse_input(src, o, p);
    if (rc == 0 && id) {
        p->id = cJSON_PrintUnformatted(id);
    } else if (rc == 0) {
        p->id = malloc(16);
        if (p->id)
            snprintf(p->id, 16, "%d", src->line);
    }
    if (rc == 0 && !p->id)
        rc = -ENOMEM;
    cJSON_Delete(o);
    return rc;
}

/* 1 when line[0..len) holds only blanks. */
static int line_blank(const char *line, size_t len)
{
    size_t k = 0;
    while (k < len && strchr(" \t\r\n", line[k]))
        k++;
    return k == len;
}

/* Append p to ps (*cap: its room, doubled when full). @return 0 or
 * -ENOMEM (p stays the caller's). */
static int prompts_append(job_prompts *ps, int *cap, const job_prompt *p)
{
    if (ps->n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        job_prompt *np = realloc(ps->p, sizeof *np * (size_t)nc);
        if (!np)
            return -ENOMEM;
        ps->p = np;
        *cap = nc;
    }
    ps->p[ps->n++] = *p;
    return 0;
}

/* Read and keep the prompts of f, line by line; a bad line is reported
 * (counted in ps->n_bad) or, when strict, stops the read with its message
 * as the error. @return 0, -EINVAL (strict), -ENOMEM or the reader's
 * -errno (a damaged .zst file). */
static int prompts_read(job_file_rd *f, prompt_src *src, int strict, job_prompts *ps)
{
    char *line;
    ssize_t len;
    int rc = 0, cap = 0;
    while (rc == 0 && (len = job_file_rd_line(f, &line, NULL)) > 0) {
        src->line++;
        if (line_blank(line, (size_t)len))
            continue;
        job_prompt p = {.line = src->line, .max_new = -1};
        rc = parse_line(src, line, (size_t)len, &p);
        if (rc == 0)
            rc = prompts_append(ps, &cap, &p);
        if (rc == 0)
            continue; /* ps owns p now */
        free(p.ids);
        free(p.id);
        if (rc == -EINVAL && strict) {
            err_set(__FILE__, __LINE__, "%s", src->why);
        } else if (rc == -EINVAL) {
            err_log("%s", src->why);
            ps->n_bad++;
            rc = 0;
        }
    }
    return rc < 0 ? rc : len < 0 ? (int)len : 0;
}

int job_prompts_load(const char *path, const tok *t, int bos, int vocab,
                     int max_len, int strict, job_prompts *ps)
{
    memset(ps, 0, sizeof *ps);
    job_file_rd *f;
    FORWARD_IF(job_file_rd_open(path, "prompt file", -1, &f));
    prompt_src src = {.path = path, .t = t, .bos = bos, .vocab = vocab, .max_len = max_len};
    int rc = prompts_read(f, &src, strict, ps);
    job_file_rd_close(f);
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

/* Read the ids of a completions file, up to the end of its last complete
 * record (job_file_good_end); cut what follows, the torn write of a killed
 * job. */
static int scan_existing(job_out *o)
{
    struct stat st;
    if (stat(o->path, &st) != 0)
        return 0; /* nothing yet */
    int64_t good;
    FORWARD_IF(job_file_good_end(o->path, &good));
    job_file_rd *f;
    FORWARD_IF(job_file_rd_open(o->path, "completions file", good, &f));
    char *line;
    ssize_t len;
    int lineno = 0, rc = 0;
    while ((len = job_file_rd_line(f, &line, NULL)) > 0) {
        lineno++;
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
    }
    if (rc == 0 && len < 0)
        rc = (int)len;
    job_file_rd_close(f);
    FORWARD_IF(rc);
    if (st.st_size > good) {
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
    if (rc == 0)
        rc = job_file_wr_open(path, "ab", &o->f);
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
            if (job_file_write(o->f, js, strlen(js)) < 0 || job_file_write(o->f, "\n", 1) < 0 ||
                job_file_flush(o->f) < 0) {
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
        rc = job_file_wr_close(o->f);
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
