/* job_params.c: the sampling and output controls of a request line
 * (job_params), read from a native line or an OpenAI request's body with
 * the same names and ranges as vLLM's, each checked by name. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job_impl.h"

int job_field_bad(job_field_err *e, const char *field, const char *fmt, ...)
{
    snprintf(e->field, sizeof e->field, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->why, sizeof e->why, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* The number of o's field name in [lo, hi], into *v; absent or null: *v
 * unchanged. @return 0 or -EINVAL. */
static int get_float(const cJSON *o, const char *name, double lo, double hi, float *v,
                     job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!x || cJSON_IsNull(x))
        return 0;
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= lo && x->valuedouble <= hi))
        return job_field_bad(e, name, "\"%s\" must be a number in [%g, %g]", name, lo, hi);
    *v = (float)x->valuedouble;
    return 0;
}

/* As get_float over (0, hi]: a value that is 0 as a float too is refused. */
static int get_positive(const cJSON *o, const char *name, double hi, float *v,
                        job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!x || cJSON_IsNull(x))
        return 0;
    if (!cJSON_IsNumber(x) || !(x->valuedouble > 0 && x->valuedouble <= hi) ||
        (float)x->valuedouble == 0.0f)
        return job_field_bad(e, name, "\"%s\" must be a number in (0, %g]", name, hi);
    *v = (float)x->valuedouble;
    return 0;
}

/* An integer field in [lo, hi]. Checked as a double before the cast, so a
 * huge or fractional value is refused, never converted. */
static int get_int(const cJSON *o, const char *name, int lo, int hi, int *v, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!x || cJSON_IsNull(x))
        return 0;
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= lo && x->valuedouble <= hi) ||
        x->valuedouble != floor(x->valuedouble))
        return job_field_bad(e, name, "\"%s\" must be an integer in [%d, %d]", name, lo, hi);
    *v = (int)x->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, int *v, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!x || cJSON_IsNull(x))
        return 0;
    if (!cJSON_IsBool(x))
        return job_field_bad(e, name, "\"%s\" must be true or false", name);
    *v = cJSON_IsTrue(x);
    return 0;
}

int job_field_int(const cJSON *o, const char *name, int lo, int hi, int *v, job_field_err *e)
{
    return get_int(o, name, lo, hi, v, e);
}

int job_field_bool(const cJSON *o, const char *name, int *v, job_field_err *e)
{
    return get_bool(o, name, v, e);
}

/* "seed": any integer a signed 64-bit value holds (exactly as a double). */
static int get_seed(const cJSON *o, job_params *par, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "seed");
    if (!x || cJSON_IsNull(x))
        return 0;
    double d = cJSON_IsNumber(x) ? x->valuedouble : NAN;
    if (!(d >= -0x1p63 && d < 0x1p63) || d != floor(d))
        return job_field_bad(e, "seed", "\"seed\" must be an integer in [-2^63, 2^63)");
    par->has_seed = 1;
    par->seed = (uint64_t)(int64_t)d;
    return 0;
}

/* "stop": a string or an array of at most JOB_STOP_MAX non-empty strings. */
static int get_stop(const cJSON *o, job_params *par, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!x || cJSON_IsNull(x))
        return 0;
    int n = cJSON_IsString(x) ? 1 : cJSON_IsArray(x) ? cJSON_GetArraySize(x) : -1;
    if (n < 0 || n > JOB_STOP_MAX)
        return job_field_bad(e, "stop", "\"stop\" must be a string or an array of at most %d "
                             "strings", JOB_STOP_MAX);
    if (n == 0)
        return 0;
    par->stop = calloc((size_t)n, sizeof *par->stop);
    if (!par->stop)
        return -ENOMEM;
    const cJSON *s = cJSON_IsString(x) ? x : x->child;
    for (int i = 0; i < n; i++, s = s->next) {
        if (!cJSON_IsString(s) || !s->valuestring[0])
            return job_field_bad(e, "stop", "\"stop\" strings must be non-empty strings");
        if (!(par->stop[i] = strdup(s->valuestring)))
            return -ENOMEM;
        par->n_stop = i + 1;
    }
    return 0;
}

/* "stop_token_ids": token ids in [0, vocab). */
static int get_stop_ids(const cJSON *o, int vocab, job_params *par, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "stop_token_ids");
    if (!x || cJSON_IsNull(x))
        return 0;
    int n = cJSON_IsArray(x) ? cJSON_GetArraySize(x) : -1;
    if (n < 0 || n > JOB_STOP_MAX)
        return job_field_bad(e, "stop_token_ids", "\"stop_token_ids\" must be an array of at "
                             "most %d token ids", JOB_STOP_MAX);
    if (n == 0)
        return 0;
    if (!(par->stop_ids = malloc(sizeof *par->stop_ids * (size_t)n)))
        return -ENOMEM;
    const cJSON *s;
    cJSON_ArrayForEach(s, x) {
        if (!cJSON_IsNumber(s) || !(s->valuedouble >= 0 && s->valuedouble < vocab) ||
            s->valuedouble != floor(s->valuedouble))
            return job_field_bad(e, "stop_token_ids", "\"stop_token_ids\" must hold token "
                                 "ids in [0, %d)", vocab);
        par->stop_ids[par->n_stop_ids++] = (int32_t)s->valuedouble;
    }
    return 0;
}

/* "logit_bias": {"<token id>": bias in [-100, 100]}, as OpenAI's. */
static int get_bias(const cJSON *o, int vocab, job_params *par, job_field_err *e)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "logit_bias");
    if (!x || cJSON_IsNull(x))
        return 0;
    int n = cJSON_IsObject(x) ? cJSON_GetArraySize(x) : -1;
    if (n < 0)
        return job_field_bad(e, "logit_bias", "\"logit_bias\" must be an object "
                             "{\"token id\": bias}");
    if (n == 0)
        return 0;
    par->bias_ids = malloc(sizeof *par->bias_ids * (size_t)n);
    par->bias = malloc(sizeof *par->bias * (size_t)n);
    if (!par->bias_ids || !par->bias)
        return -ENOMEM;
    const cJSON *b;
    cJSON_ArrayForEach(b, x) {
        char *end;
        long id = strtol(b->string, &end, 10);
        if (!b->string[0] || *end || id < 0 || id >= vocab)
            return job_field_bad(e, "logit_bias", "\"logit_bias\" key \"%.40s\" is not a token "
                                 "id in [0, %d)", b->string, vocab);
        if (!cJSON_IsNumber(b) || !(b->valuedouble >= -100 && b->valuedouble <= 100))
            return job_field_bad(e, "logit_bias", "\"logit_bias\" values must be numbers in "
                                 "[-100, 100]");
        for (int i = 0; i < par->n_bias; i++)
            if (par->bias_ids[i] == id)
                return job_field_bad(e, "logit_bias", "\"logit_bias\" names token %ld twice",
                                     id);
        par->bias_ids[par->n_bias] = (int32_t)id;
        par->bias[par->n_bias++] = (float)b->valuedouble;
    }
    return 0;
}

void job_params_init(job_params *par)
{
    *par = (job_params){.temperature = NAN, .top_p = NAN, .repetition_penalty = 1.0f,
                        .ignore_eos = -1, .n = 1};
}

int job_params_parse(const cJSON *o, int vocab, job_params *par, job_field_err *e)
{
    FORWARD_IF(get_float(o, "temperature", 0, 100, &par->temperature, e));
    FORWARD_IF(get_positive(o, "top_p", 1, &par->top_p, e));
    FORWARD_IF(get_int(o, "top_k", -1, 1 << 30, &par->top_k, e));
    FORWARD_IF(get_float(o, "min_p", 0, 1, &par->min_p, e));
    FORWARD_IF(get_positive(o, "repetition_penalty", 100, &par->repetition_penalty, e));
    FORWARD_IF(get_float(o, "frequency_penalty", -2, 2, &par->frequency_penalty, e));
    FORWARD_IF(get_float(o, "presence_penalty", -2, 2, &par->presence_penalty, e));
    FORWARD_IF(get_int(o, "min_tokens", 0, 1 << 24, &par->min_tokens, e));
    FORWARD_IF(get_bool(o, "ignore_eos", &par->ignore_eos, e));
    FORWARD_IF(get_int(o, "n", 1, JOB_N_MAX, &par->n, e));
    FORWARD_IF(get_seed(o, par, e));
    FORWARD_IF(get_stop(o, par, e));
    FORWARD_IF(get_stop_ids(o, vocab, par, e));
    FORWARD_IF(get_bias(o, vocab, par, e));
    FORWARD_IF(get_bool(o, "include_stop_str_in_output", &par->include_stop, e));
    return 0;
}

void job_params_free(job_params *par)
{
    for (int i = 0; i < par->n_stop; i++)
        free(par->stop[i]);
    free(par->stop);
    free(par->stop_ids);
    free(par->bias_ids);
    free(par->bias);
    job_params_init(par);
}
