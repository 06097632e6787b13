/* fuzz_eval_resume.c: `eval --resume` reading the window records of an
 * existing --out (eval_windows_read) for a run of four windows.
 *
 * Input: one byte of options, then the records file. Options: bit 0
 * --compare-full; bit 1 each line that parses as an object with an "id"
 * of one of the windows gets that window's fingerprint ("fp", rewritten
 * with cJSON), so that mutations reach the numbers behind it.
 *
 * Checked for any input: a refusal names its line; a read leaves every
 * window it did not take as it was, and the ones it took hold numbers a
 * run of them gives (its target count, counts within it, a finite
 * log-probability at most 0), counted once; their records written again
 * (eval_window_record) read back to the same numbers, bit for bit. */
#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

#include "err.h"
#include "eval.h"
#include "fuzz_common.h"

enum { W = 4, N = 10 };

static int32_t ids[W * N];

static void windows(eval_stream *s)
{
    for (int i = 0; i < W * N; i++)
        ids[i] = (i * 7919) % 500;
    for (int k = 0; k < W; k++)
        s[k] = (eval_stream){.ids = ids + k * N, .n = k == W - 1 ? N - 3 : N, .prefill = 1,
                             .first_target = 1,
                             .split = {.budget = 5, .sinks = 1, .heavy = 2, .recent = 2,
                                       .evicts = 1}};
}

/* Each line with a window's id gets that window's fingerprint. */
static char *fix_fingerprints(const uint8_t *data, size_t size, const eval_stream *s, int cf,
                              size_t *len)
{
    size_t cap = size * 2 + 64 * (size + 1), at = 0;
    char *out = malloc(cap);
    FUZZ_CHECK(out != NULL, "out of memory");
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        cJSON *o = cJSON_ParseWithLength(p, ll);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        char *text = NULL;
        if (cJSON_IsObject(o) && cJSON_IsNumber(id) && id->valuedouble >= 1 &&
            id->valuedouble <= W && id->valuedouble == (int)id->valuedouble) {
            char fp[24];
            snprintf(fp, sizeof fp, "%016llx",
                     (unsigned long long)eval_window_fp(&s[(int)id->valuedouble - 1], cf));
            cJSON_DeleteItemFromObjectCaseSensitive(o, "fp");
            cJSON_AddStringToObject(o, "fp", fp);
            text = cJSON_PrintUnformatted(o);
        }
        const char *src = text ? text : p;
        size_t n = text ? strlen(text) : ll;
        FUZZ_CHECK(at + n + 1 <= cap, "rewritten line too long");
        memcpy(out + at, src, n);
        at += n;
        if (nl)
            out[at++] = '\n';
        free(text);
        cJSON_Delete(o);
        p += ll + (nl != NULL);
    }
    *len = at;
    return out;
}

static int same(const eval_stream *a, const eval_stream *b)
{
    return !memcmp(&a->logprob, &b->logprob, sizeof a->logprob) && a->n_targets == b->n_targets &&
           a->n_greedy == b->n_greedy && !memcmp(&a->kl, &b->kl, sizeof a->kl) &&
           a->n_agree == b->n_agree;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    if (size < 1)
        return 0;
    int cf = data[0] & 1;
    eval_stream s[W], before[W];
    windows(s);
    memcpy(before, s, sizeof s);
    size_t len = size - 1;
    char *buf;
    if (data[0] & 2) {
        buf = fix_fingerprints(data + 1, size - 1, s, cf, &len);
    } else {
        buf = malloc(size);
        FUZZ_CHECK(buf != NULL, "out of memory");
        memcpy(buf, data + 1, size - 1);
    }
    unsigned char done[W] = {0};
    long n_done = 0;
    int rc = eval_windows_read("w.jsonl", buf, len, s, W, cf, done, &n_done);
    free(buf);
    if (rc < 0)
        FUZZ_CHECK(strstr(err_msg(), "w.jsonl line "), "a refusal that names no line: \"%s\"",
                   err_msg());
    long counted = 0;
    for (int k = 0; k < W; k++) {
        counted += done[k];
        if (!done[k]) {
            FUZZ_CHECK(same(&s[k], &before[k]), "window %d changed but not taken", k + 1);
            continue;
        }
        int targets = s[k].n - s[k].first_target;
        FUZZ_CHECK(s[k].n_targets == targets && s[k].n_greedy >= 0 &&
                       s[k].n_greedy <= targets && s[k].n_agree >= 0 &&
                       s[k].n_agree <= targets && isfinite(s[k].logprob) &&
                       s[k].logprob <= 0 && isfinite(s[k].kl),
                   "window %d taken with numbers no run gives", k + 1);
    }
    FUZZ_CHECK(counted == n_done, "%ld windows counted, %ld taken", n_done, counted);
    if (rc < 0)
        return 0;
    /* the windows taken, written again, read back bit for bit */
    char text[W * 256] = "";
    for (int k = 0; k < W; k++) {
        if (!done[k])
            continue;
        char *r = eval_window_record(&s[k], k, cf);
        FUZZ_CHECK(r != NULL, "out of memory");
        strcat(text, r);
        strcat(text, "\n");
        free(r);
    }
    eval_stream again[W];
    windows(again);
    unsigned char done2[W] = {0};
    long n2 = 0;
    FUZZ_CHECK(eval_windows_read("w.jsonl", text, strlen(text), again, W, cf, done2, &n2) == 0,
               "records written again refused: %s", err_msg());
    FUZZ_CHECK(n2 == n_done, "%ld read back, %ld written", n2, n_done);
    for (int k = 0; k < W; k++)
        FUZZ_CHECK(done2[k] == done[k] && (!done[k] || same(&again[k], &s[k])),
                   "window %d read back otherwise", k + 1);
    return 0;
}
