/* fuzz_score.c: score's request file (eval_requests_parse: text or ids,
 * the id rule of job_line_key, the lm-evaluation-harness whitespace move,
 * the embedded tokenizer).
 *
 * Input: one byte of options, then the file. Options: bit 0 the full
 * cache (the context is one prefill), bit 1 no tokenizer (text requests
 * are refused), bit 2 no BOS, bit 3 a model vocabulary of 500 (smaller
 * than the tokenizer's 512 ids: text must not reach ids past it), else
 * 512.
 *
 * Checked for any input: a refusal says why (not empty after its "file
 * line N: "); a parse gives at least one request, each a stream of at
 * least two tokens inside the one token array, ids below the vocabulary,
 * the context (prefill and first target) before the continuation, a key
 * that is valid UTF-8 compact JSON and no other request's. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <string.h>

#include "err.h"
#include "eval.h"
#include "fuzz_common.h"
#include "job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    const tok *t = fuzz_embedded_tok();
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    int vocab = opt & 8 ? 500 : 512;
    eval_request_opts o = {.path = "requests.jsonl", .t = opt & 2 ? NULL : t,
                           .bos = opt & 4 ? -1 : tok_bos_id(t), .vocab = vocab,
                           .full = opt & 1};
    eval_requests r;
    int rc = eval_requests_parse((const char *)data + 1, size - 1, &o, &r);
    if (rc < 0) {
        const char *m = err_msg();
        size_t n = strlen(m);
        FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "rc %d", rc);
        FUZZ_CHECK(n > 0 && !(n >= 2 && strcmp(m + n - 2, ": ") == 0),
                   "a refusal with no reason: \"%s\"", m);
        FUZZ_CHECK(!r.s && !r.keys && !r.ids && r.n == 0, "a refusal left requests");
        return 0;
    }
    FUZZ_CHECK(r.n >= 1, "no requests parsed, none refused");
    job_idset seen = {0};
    const int32_t *next = r.ids;
    for (int k = 0; k < r.n; k++) {
        const eval_stream *s = &r.s[k];
        FUZZ_CHECK(s->ids == next, "request %d: its tokens are not the next in the array", k);
        next += s->n;
        FUZZ_CHECK(s->n >= 2 && s->first_target >= 1 && s->first_target < s->n &&
                       s->prefill == (o.full ? s->first_target : 1) && s->line >= 1,
                   "request %d: n %d, prefill %d, first target %d, line %d", k, s->n,
                   s->prefill, s->first_target, s->line);
        for (int i = 0; i < s->n; i++)
            FUZZ_CHECK(s->ids[i] >= 0 && s->ids[i] < vocab, "request %d: id %d", k, s->ids[i]);
        const char *key = r.keys[k];
        FUZZ_CHECK(key && key[0], "request %d: no key", k);
        size_t kl = strlen(key), cl;
        char *clean = job_utf8_sanitize(key, kl, &cl);
        FUZZ_CHECK(clean && cl == kl && !memcmp(clean, key, kl), "request %d: key %s is not "
                   "UTF-8", k, key);
        free(clean);
        cJSON *j = cJSON_Parse(key);
        FUZZ_CHECK(cJSON_IsString(j) || cJSON_IsNumber(j) || cJSON_IsObject(j),
                   "request %d: key %s is not a JSON string, number or {\"line\"}", k, key);
        cJSON_Delete(j);
        FUZZ_CHECK(!job_idset_has(&seen, key), "request %d: key %s repeated", k, key);
        FUZZ_CHECK(job_idset_add(&seen, key) == 0, "out of memory");
    }
    job_idset_free(&seen);
    eval_requests_free(&r);
    return 0;
}
