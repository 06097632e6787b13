/* job.c: prompt file parsing and the resumable completions file. */
#include "job.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "job_impl.h"
#include "off.h"

/* ------------------------------------------------------ prompt file */

int job_bad_line(job_src *src, const char *fmt, ...)
{
    int n = snprintf(src->why, sizeof src->why, "%s:%d: ", src->path, src->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof src->why)
        vsnprintf(src->why + n, sizeof src->why - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int job_prompt_fail(job_prompt *p, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    free(p->err);
    free(p->err_param);
    free(p->ids);
    p->ids = NULL;
    p->n_ids = 0;
    /* the message may quote the request's bytes: keep the output UTF-8 */
    p->err = job_utf8_sanitize(msg, strlen(msg), NULL);
    p->err_param = param ? job_utf8_sanitize(param, strlen(param), NULL) : NULL;
    return p->err && (!param || p->err_param) ? 0 : -ENOMEM;
}

int job_encode_text(const job_src *src, const char *text, int bos, job_prompt *p,
                    job_field_err *e)
{
    if (!src->o->t)
        return job_field_bad(e, "prompt", "text prompt but the model has no tokenizer "
                             "(--dummy); give token ids instead");
    int32_t *enc = NULL;
    int n = tok_encode(src->o->t, text, strlen(text), &enc);
    if (n < 0) {
        /* the tokenizer's message becomes part of the line's report */
        char msg[400];
        return job_field_bad(e, "prompt", "cannot tokenize the prompt: %s",
                             err_take(msg, sizeof msg));
    }
    int k = bos >= 0;
    /* a tokenizer of another model (or a bos_token_id past vocab_size)
     * gives ids the embedding table does not have */
    int bad = k && bos >= src->o->vocab ? bos : -1;
    for (int i = 0; bad < 0 && i < n; i++)
        bad = enc[i] >= src->o->vocab ? enc[i] : -1;
    if (bad >= 0) {
        free(enc);
        return job_field_bad(e, "prompt", "the %s gives token id %d but the model has %d "
                             "(vocab_size); the tokenizer files are not this model's",
                             k && bad == bos ? "BOS (bos_token_id)" : "tokenizer", bad,
                             src->o->vocab);
    }
    if (n + k == 0) {
        free(enc);
        return job_field_bad(e, "prompt", "the prompt is empty and the model adds no BOS; "
                             "give some text");
    }
    if (n + k > src->o->max_len) {
        free(enc);
        return job_field_bad(e, "prompt", "the prompt has %d tokens but the model takes at "
                             "most %d (max_position_embeddings); shorten it", n + k,
                             src->o->max_len);
    }
    free(p->ids);
    p->ids = malloc(sizeof(int32_t) * ((size_t)n + 1));
    if (!p->ids) {
        free(enc);
        err_set(__FILE__, __LINE__, "out of memory");
        return -ENOMEM;
    }
    if (k)
        p->ids[0] = bos;
    if (n > 0)
        memcpy(p->ids + k, enc, sizeof(int32_t) * (size_t)n);
    free(enc);
    p->n_ids = n + k;
    return 0;
}

int job_parse_ids(const job_src *src, const cJSON *ids, const char *field, job_prompt *p,
                  job_field_err *e)
{
    int n = cJSON_GetArraySize(ids);
    if (n == 0)
        return job_field_bad(e, field, "\"%s\" is empty; give at least one token", field);
    if (n > src->o->max_len)
        return job_field_bad(e, field, "the prompt has %d tokens but the model takes at most "
                             "%d (max_position_embeddings); shorten it", n, src->o->max_len);
    free(p->ids);
    p->ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->ids) {
        err_set(__FILE__, __LINE__, "out of memory");
        return -ENOMEM;
    }
    p->n_ids = n;
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, ids) {
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) ||
            !(x->valuedouble >= 0 && x->valuedouble < src->o->vocab))
            return job_field_bad(e, field, "%s[%d] is not a token id in [0, %d)", field, i,
                                 src->o->vocab);
        p->ids[i++] = (int32_t)x->valuedouble;
    }
    return 0;
}

char *job_id_json(const cJSON *id)
{
    if (!cJSON_IsString(id))
        return cJSON_PrintUnformatted(id);
    char *clean = job_utf8_sanitize(id->valuestring, strlen(id->valuestring), NULL);
    cJSON *s = clean ? cJSON_CreateString(clean) : NULL;
    char *out = s ? cJSON_PrintUnformatted(s) : NULL;
    cJSON_Delete(s);
    free(clean);
    return out;
}

int job_object_key(const cJSON *o, int line, char **key)
{
    *key = NULL;
    const cJSON *id;
    if (job_openai_is(o)) {
        id = cJSON_GetObjectItemCaseSensitive(o, "custom_id");
        if (!cJSON_IsString(id) || !id->valuestring[0])
            return 1;
    } else {
        id = cJSON_GetObjectItemCaseSensitive(o, "id");
        /* a number past a double's range (1e400) would print as null */
        if (id && !cJSON_IsString(id) && !(cJSON_IsNumber(id) && isfinite(id->valuedouble)))
            return 1;
    }
    if (id) {
        *key = job_id_json(id);
    } else { /* an object: no given id (a string or a number) can equal it */
        *key = malloc(32);
        if (*key)
            snprintf(*key, 32, "{\"line\":%d}", line);
    }
    RETURN_IF(!*key, -ENOMEM, "out of memory for the id of line %d", line);
    return 0;
}

int job_line_key(const char *line, size_t len, int lineno, char **key)
{
    *key = NULL;
    cJSON *o = cJSON_ParseWithLength(line, len);
    int rc = cJSON_IsObject(o) ? job_object_key(o, lineno, key) : 1;
    cJSON_Delete(o);
    return rc;
}

/* The fields a native line may have; any other is refused by name (a
 * misspelt control would otherwise be ignored without a word). */
static const char *const native_fields[] = {
    "id", "prompt", "prompt_ids", "messages", "max_new_tokens", "top_logprobs", "metadata",
    JOB_PARAM_FIELDS, NULL};

/* A native line: {"id"?, "prompt" | "prompt_ids", "max_new_tokens"?,
 * "top_logprobs"?, sampling fields}. @return 0, -EINVAL (src->why) or
 * -ENOMEM. */
static int parse_native(job_src *src, const cJSON *o, job_prompt *p)
{
    job_field_err e = {0};
    /* the key first: a bad line keeps it too (job_reader_next reserves it) */
    int rc = job_object_key(o, src->line, &p->id);
    FORWARD_IF(rc);
    const cJSON *f;
    cJSON_ArrayForEach(f, o) {
        int known = 0;
        for (int i = 0; native_fields[i] && !known; i++)
            known = strcmp(f->string, native_fields[i]) == 0;
        if (!known)
            return job_bad_line(src, "unknown field \"%.60s\"; the fields are id, prompt or "
                                "prompt_ids, max_new_tokens, top_logprobs and the sampling "
                                "controls of the README", f->string);
    }
    if (rc == 1)
        return job_bad_line(src, "\"id\" must be a string or a finite number");
    rc = job_field_int(o, "max_new_tokens", 0, JOB_MAX_NEW_MAX, &p->max_new, &e);
    if (rc == 0)
        rc = job_field_int(o, "top_logprobs", 0, JOB_TOP_LOGPROBS_MAX, &p->par.top_logprobs,
                           &e);
    if (rc == 0)
        rc = job_params_parse(o, src->o->vocab, &p->par, &e);
    const cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "prompt_ids");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    int given = !!txt + !!ids + !!msgs;
    if (rc == 0 && given == 1 && cJSON_IsString(txt))
        rc = job_encode_text(src, txt->valuestring, src->o->bos, p, &e);
    else if (rc == 0 && given == 1 && cJSON_IsArray(ids))
        rc = job_parse_ids(src, ids, "prompt_ids", p, &e);
    else if (rc == 0 && given == 1 && msgs)
        rc = job_chat_encode(src, msgs, p, &e);
    else if (rc == 0)
        return job_bad_line(src, "give exactly one of \"prompt\" (a string), \"prompt_ids\" "
                            "(an array of token ids) or \"messages\" (chat)");
    if (rc == -EINVAL)
        return job_bad_line(src, "%s", e.why);
    FORWARD_IF(rc);
    p->par.logprobs = 1; /* the native record always carries them */
    return 0;
}

/* A line of the file's other format: a bad line, which keeps its key
 * (job_reader_next reserves it). @return -EINVAL or -ENOMEM. */
static int other_format(job_src *src, const cJSON *o, job_prompt *p, const char *why)
{
    FORWARD_IF(job_object_key(o, src->line, &p->id));
    return job_bad_line(src, "%s; use one format per file", why);
}

/* One non-blank line: a JSON object of either format (the first line
 * decides the file's: *kind, -1 until then). A bad line with a key
 * (job_line_key's) leaves it in p->id. On failure p may hold allocations
 * the caller frees. @return 0, -EINVAL (a bad line: src->why says why) or
 * -ENOMEM. */
static int parse_line(job_src *src, const char *line, size_t len, int *kind, job_prompt *p)
{
    cJSON *o = cJSON_ParseWithLength(line, len);
    int rc;
    if (!cJSON_IsObject(o)) {
        rc = job_bad_line(src, "invalid JSON; each line must be one object like "
                          "{\"id\": 1, \"prompt\": \"text\"}");
    } else if (job_openai_is(o)) {
        rc = *kind == JOB_NATIVE
                 ? other_format(src, o, p, "an OpenAI batch request in a file of native lines")
                 : job_openai_parse(src, o, p);
        if (rc == 0)
            *kind = JOB_OPENAI_CHAT; /* either OpenAI kind: the file is OpenAI's */
    } else {
        rc = *kind >= 0 && *kind != JOB_NATIVE
                 ? other_format(src, o, p, "a native line in an OpenAI batch file")
                 : parse_native(src, o, p);
        if (rc == 0)
            *kind = JOB_NATIVE;
    }
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

static void prompt_free(job_prompt *p)
{
    free(p->id);
    free(p->ids);
    free(p->model);
    free(p->err);
    free(p->err_param);
    job_params_free(&p->par);
}

/* A prompt file read in windows of requests, in one or more passes. */
struct job_reader {
    char *path;
    job_load_opts o;     /* a copy: the caller's may be a compound literal */
    job_file_rd *f;
    job_src src;
    int kind;            /* the file's format once a line decided it, else -1 */
    job_idset ids;       /* the ids of this pass: a repeat is a bad line */
    int pass;            /* 0: the first, which reports bad lines */
    int n_bad;           /* bad lines of the first pass */
    long seq;            /* requests of this pass so far (job_prompt.seq) */
};

/* A line whose id an earlier line has: a bad line naming both (the
 * output is keyed on the id, so --resume could not tell them apart).
 * @return -EINVAL. */
static int duplicate_line(job_reader *r, const char *id)
{
    return job_bad_line(&r->src, "id %.80s is also on line %d; ids must be unique (the "
                        "output is keyed on them): rename one", id,
                        job_idset_line(&r->ids, id));
}

/* Open r's file for a pass from its first line. */
static int reader_start(job_reader *r)
{
    job_file_rd_close(r->f);
    r->f = NULL;
    job_idset_free(&r->ids);
    r->src.line = 0;
    r->seq = 0;
    r->kind = -1;
    return job_file_rd_open(r->path, "prompt file", -1, &r->f);
}

int job_reader_open(const char *path, const job_load_opts *o, job_reader **out)
{
    *out = NULL;
    job_reader *r = calloc(1, sizeof *r);
    if (r)
        r->path = strdup(path);
    if (!r || !r->path) {
        free(r);
        err_set(__FILE__, __LINE__, "out of memory");
        return -ENOMEM;
    }
    r->o = *o;
    r->src = (job_src){.path = r->path, .o = &r->o};
    job_chat_resolve(&r->src);
    int rc = reader_start(r);
    if (rc < 0) {
        job_reader_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

int job_reader_rewind(job_reader *r)
{
    r->pass++;
    return reader_start(r);
}

int job_reader_bad(const job_reader *r)
{
    return r->n_bad;
}

void job_reader_close(job_reader *r)
{
    if (!r)
        return;
    job_file_rd_close(r->f);
    job_idset_free(&r->ids);
    free(r->path);
    free(r);
}

int job_reader_next(job_reader *r, int max, job_prompts *ps)
{
    job_prompts_free(ps);
    char *line;
    ssize_t len = 1;
    int rc = 0, cap = 0;
    while (rc == 0 && ps->n < max && (len = job_file_rd_line(r->f, &line, NULL)) > 0) {
        r->src.line++;
        if (line_blank(line, (size_t)len))
            continue;
        job_prompt p = {.line = r->src.line, .seq = r->seq, .max_new = -1};
        job_params_init(&p.par);
        rc = parse_line(&r->src, line, (size_t)len, &r->kind, &p);
        /* the key of every line that has one is taken, a bad line's too:
         * an id's record is always at the first line with its key (a later
         * one is a repeat), which merge (job_line_key) and a --resume
         * after fixing the bad line rely on */
        if (rc == 0 && job_idset_has(&r->ids, p.id))
            rc = duplicate_line(r, p.id);
        else if ((rc == 0 || rc == -EINVAL) && p.id &&
                 job_idset_add_at(&r->ids, p.id, p.line) < 0)
            rc = -ENOMEM;
        if (rc == 0)
            rc = prompts_append(ps, &cap, &p);
        if (rc == 0) {
            r->seq++;
            continue; /* ps owns p now */
        }
        prompt_free(&p);
        if (rc == -EINVAL && r->o.strict) {
            err_set(__FILE__, __LINE__, "%s", r->src.why);
        } else if (rc == -EINVAL) {
            if (r->pass == 0) { /* a later pass meets the same lines again */
                err_log("%s", r->src.why);
                r->n_bad++;
                ps->n_bad++;
            }
            rc = 0;
        }
    }
    if (rc == 0 && len < 0)
        rc = (int)len;
    if (rc == -ENOMEM)
        err_set(__FILE__, __LINE__, "out of memory reading %s", r->path);
    if (rc < 0)
        job_prompts_free(ps);
    return rc < 0 ? rc : ps->n;
}

int job_prompts_load(const char *path, const job_load_opts *o, job_prompts *ps)
{
    memset(ps, 0, sizeof *ps);
    job_reader *r;
    FORWARD_IF(job_reader_open(path, o, &r));
    int rc = job_reader_next(r, INT_MAX, ps);
    job_reader_close(r);
    return rc < 0 ? rc : 0;
}

void job_prompts_free(job_prompts *ps)
{
    for (int i = 0; i < ps->n; i++)
        prompt_free(&ps->p[i]);
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

/* ---------------------------------------------------------- id sets */

/* The slot of id in set: where it is, or the free slot where it belongs.
 * The set always has a free slot (at most half full). */
static size_t idset_slot(const job_idset *set, const char *id)
{
    size_t i = (size_t)XXH3_64bits(id, strlen(id)) & set->mask;
    while (set->slot[i] && strcmp(set->slot[i], id) != 0)
        i = (i + 1) & set->mask;
    return i;
}

int job_idset_add_at(job_idset *set, const char *id, int line)
{
    if (!set->slot || 2 * ((size_t)set->n + 1) > set->mask + 1) {
        size_t cap = set->slot ? 2 * (set->mask + 1) : 64;
        job_idset grown = {.slot = calloc(cap, sizeof(char *)), .line = calloc(cap, sizeof(int)),
                           .mask = cap - 1, .n = set->n};
        if (!grown.slot || !grown.line) {
            free(grown.slot);
            free(grown.line);
            err_set(__FILE__, __LINE__, "out of memory for %d ids", set->n + 1);
            return -ENOMEM;
        }
        for (size_t i = 0; set->slot && i <= set->mask; i++)
            if (set->slot[i]) {
                size_t k = idset_slot(&grown, set->slot[i]);
                grown.slot[k] = set->slot[i];
                grown.line[k] = set->line[i];
            }
        free(set->slot);
        free(set->line);
        *set = grown;
    }
    size_t i = idset_slot(set, id);
    if (set->slot[i])
        return 0; /* already there */
    set->slot[i] = strdup(id);
    RETURN_IF(!set->slot[i], -ENOMEM, "out of memory");
    set->line[i] = line;
    set->n++;
    return 0;
}

int job_idset_add(job_idset *set, const char *id)
{
    return job_idset_add_at(set, id, 0);
}

int job_idset_line(const job_idset *set, const char *id)
{
    if (!set->slot)
        return -1;
    size_t i = idset_slot(set, id);
    return set->slot[i] ? set->line[i] : -1;
}

int job_idset_has(const job_idset *set, const char *id)
{
    return set->slot && set->slot[idset_slot(set, id)] != NULL;
}

void job_idset_free(job_idset *set)
{
    for (size_t i = 0; set->slot && i <= set->mask; i++)
        free(set->slot[i]);
    free(set->slot);
    free(set->line);
    memset(set, 0, sizeof *set);
}

/* ------------------------------------------------------------ output */

static int add_done(job_out *o, const char *id)
{
    return job_idset_add(&o->done, id);
}

int job_record_key(const char *line, size_t len, char **key)
{
    *key = NULL;
    cJSON *r = cJSON_ParseWithLength(line, len);
    /* an OpenAI batch line is keyed on its custom_id, a native one on its id */
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "custom_id");
    if (!id)
        id = cJSON_GetObjectItemCaseSensitive(r, "id");
    *key = id ? cJSON_PrintUnformatted(id) : NULL;
    cJSON_Delete(r);
    if (!id)
        return 1;
    RETURN_IF(!*key, -ENOMEM, "out of memory reading a record's id");
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
        char *s;
        rc = job_record_key(line, (size_t)len, &s);
        if (rc == 1) {
            err_set(__FILE__, __LINE__, "%s:%d: not a flexh2o completion record; "
                    "--resume needs the file this job wrote (or move it away)",
                    o->path, lineno);
            rc = -EINVAL;
        }
        if (rc == 0)
            rc = add_done(o, s);
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
        int rc = off_truncate(o->path, (uint64_t)good);
        RETURN_IF(rc < 0, rc, "%s: cannot cut the torn last record at byte %lld (%s); the file "
                  "is unchanged: check the disk and rerun with --resume", o->path,
                  (long long)good, strerror(-rc));
    }
    return 0;
}

int job_out_open(const char *path, int resume, job_out *o)
{
    memset(o, 0, sizeof *o);
    o->path = strdup(path);
    RETURN_IF(!o->path, -ENOMEM, "out of memory");
    const char *epoch = getenv("SOURCE_DATE_EPOCH"); /* reproducible outputs */
    o->created = epoch && *epoch ? atoll(epoch) : (long long)time(NULL);
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
    return job_idset_has(&o->done, id);
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

int job_out_append(job_out *o, const char *id, const char *js)
{
    if (job_file_write(o->f, js, strlen(js)) < 0 || job_file_write(o->f, "\n", 1) < 0 ||
        job_file_flush(o->f) < 0) {
        err_set(__FILE__, __LINE__, "%s: write failed (%s); the records "
                "before this one are intact, free space and rerun with --resume",
                o->path, strerror(errno));
        return -EIO;
    }
    return add_done(o, id);
}

/* Add the native fields of one completion to r: "completion", "tokens",
 * "logprobs", "top_logprobs" (top > 0: per token, [[id, logprob], ...]),
 * "finish_reason", and "stop_reason" when a stop string or id ended it.
 * @return 0 or -ENOMEM. */
static int native_fields_of(cJSON *r, const job_choice *ch, int top)
{
    char *clean = job_utf8_sanitize(ch->text, ch->len, NULL);
    if (!clean)
        return -ENOMEM;
    cJSON_AddStringToObject(r, "completion", clean);
    free(clean);
    cJSON *tk = cJSON_AddArrayToObject(r, "tokens");
    cJSON *lp = cJSON_AddArrayToObject(r, "logprobs");
    cJSON *tl = top > 0 ? cJSON_CreateArray() : NULL;
    for (int i = 0; i < ch->n; i++) {
        cJSON_AddItemToArray(tk, cJSON_CreateNumber(ch->tokens[i]));
        cJSON_AddItemToArray(lp, cJSON_CreateNumber(ch->logprobs[i]));
        cJSON *row = tl ? cJSON_CreateArray() : NULL;
        for (int k = 0; row && k < top; k++) {
            cJSON *pair = cJSON_CreateArray();
            size_t at = (size_t)i * (size_t)ch->top_stride + (size_t)k;
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(ch->top_ids[at]));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(ch->top_lps[at]));
            cJSON_AddItemToArray(row, pair);
        }
        if (row)
            cJSON_AddItemToArray(tl, row);
    }
    if (tl)
        cJSON_AddItemToObject(r, "top_logprobs", tl);
    cJSON_AddStringToObject(r, "finish_reason", ch->finish);
    if (ch->stop_str)
        cJSON_AddStringToObject(r, "stop_reason", ch->stop_str);
    else if (ch->stop_id >= 0)
        cJSON_AddNumberToObject(r, "stop_reason", ch->stop_id);
    return 0;
}

/* The native record of p: {"id", fields of its completion} for n = 1,
 * {"id", "choices": [{"index", fields}, ...]} for more. @return the text
 * (caller frees) or NULL when out of memory. */
static char *native_record(const job_prompt *p, const job_choice *ch, int n)
{
    cJSON *r = cJSON_CreateObject();
    cJSON *idv = cJSON_Parse(p->id);
    int rc = r && idv ? 0 : -ENOMEM;
    if (rc == 0) {
        cJSON_AddItemToObject(r, "id", idv);
        idv = NULL;
    }
    int top = p->par.top_logprobs;
    if (rc == 0 && n == 1) {
        rc = native_fields_of(r, ch, top);
    } else if (rc == 0) {
        cJSON *cs = cJSON_AddArrayToObject(r, "choices");
        for (int i = 0; rc == 0 && i < n; i++) {
            cJSON *c = cJSON_CreateObject();
            rc = c ? 0 : -ENOMEM;
            if (rc == 0) {
                cJSON_AddItemToArray(cs, c);
                cJSON_AddNumberToObject(c, "index", i);
                rc = native_fields_of(c, &ch[i], top);
            }
        }
    }
    char *js = rc == 0 ? cJSON_PrintUnformatted(r) : NULL;
    cJSON_Delete(idv);
    cJSON_Delete(r);
    return js;
}

char *job_record(const job_out *o, const job_prompt *p, const job_choice *ch, int n,
                 const tok *t)
{
    return p->kind == JOB_NATIVE ? native_record(p, ch, n) : job_openai_record(o, p, ch, n, t);
}

int job_out_result(job_out *o, const job_prompt *p, const job_choice *ch, int n, const tok *t)
{
    char *js = job_record(o, p, ch, n, t);
    RETURN_IF(!js, -ENOMEM, "out of memory writing a record");
    int rc = job_out_append(o, p->id, js);
    free(js);
    return rc;
}

int job_out_write(job_out *o, const char *id, const char *text, size_t len,
                  const int32_t *tokens, const float *logprobs, int n,
                  const char *finish_reason)
{
    job_prompt p = {.id = (char *)id, .kind = JOB_NATIVE};
    job_choice ch = {.text = text, .len = len, .tokens = tokens, .logprobs = logprobs, .n = n,
                     .finish = finish_reason, .stop_id = -1};
    return job_out_result(o, &p, &ch, 1, NULL);
}

int job_out_close(job_out *o)
{
    int rc = 0;
    if (o->f) {
        rc = job_file_wr_close(o->f);
        if (rc < 0)
            err_set(__FILE__, __LINE__, "%s: closing failed (%s)", o->path, strerror(-rc));
    }
    job_idset_free(&o->done);
    free(o->path);
    memset(o, 0, sizeof *o);
    return rc;
}
