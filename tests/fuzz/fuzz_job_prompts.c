/* fuzz_job_prompts.c: a prompt file (job_prompts_load: native lines with
 * text, ids or chat messages, OpenAI batch lines for /v1/completions and
 * /v1/chat/completions, every sampling field of job_params.c, the chat
 * templates of job_chat.c), plain or zstd, read with the embedded
 * tokenizer; then a completion record written for every request it gives
 * (job_out_result, both output formats and the error lines) and the
 * completions file read back as --resume reads it.
 *
 * Input: one byte of options, then the file. Options: bit 0 strict (a bad
 * line stops the load), bit 1 the file is .zst (the harness compresses
 * it, so the lines reach the parser), bits 2-5 a chat template (a tok_chat
 * kind; past the last: none), bit 6 BOS 0, bit 7 BOS 505 (past the
 * model's vocabulary, as a config.json's bos_token_id may be), else none.
 *
 * Checked for any input: every refusal says why (a bad line's report, an
 * error line's message, a strict load's error: not empty after its
 * "file:line: "); each request is either an error line's or holds
 * 1 .. max_len ids of the vocabulary and controls in their ranges; every
 * record written is found again on resume under the request's id; the
 * completions file cut into two shards (odd and even records) merges
 * back (job_merge, keyed by job_line_key) into the same text. */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <zstd.h>

#include "err.h"
#include "fuzz_common.h"
#include "job.h"
#include "tok.h"

/* The model's vocabulary is smaller than the tokenizer's 512 ids (a
 * tokenizer of another model, or one padded otherwise): text must not
 * reach ids past it. */
enum { VOCAB = 500, MAX_LEN = 64 };

static tok *t;

/* A refusal's text says something after its "file:line: " (a reason read
 * from an error slot another check had not written once came out empty). */
static void check_reason(const char *msg, const char *what)
{
    size_t n = msg ? strlen(msg) : 0;
    FUZZ_CHECK(n > 0 && !(n >= 2 && strcmp(msg + n - 2, ": ") == 0), "%s with no reason: \"%s\"",
               what, msg ? msg : "");
}

/* The bad lines the reader reports (err_log) as it skips them. */
static void on_log(const char *msg, void *ud)
{
    (void)ud;
    check_reason(msg, "a bad line reported");
}

static void check_prompt(const job_prompt *p)
{
    FUZZ_CHECK(p->id && p->id[0], "line %d: no id", p->line);
    if (p->err) {
        FUZZ_CHECK(!p->ids && p->kind != JOB_NATIVE, "line %d: an error with ids", p->line);
        check_reason(p->err, "an error line");
        return;
    }
    FUZZ_CHECK(p->n_ids >= 1 && p->n_ids <= MAX_LEN, "line %d: %d ids", p->line, p->n_ids);
    for (int i = 0; i < p->n_ids; i++)
        FUZZ_CHECK(p->ids[i] >= 0 && p->ids[i] < VOCAB, "line %d: id %d", p->line, p->ids[i]);
    const job_params *q = &p->par;
    FUZZ_CHECK(q->n >= 1 && q->n <= JOB_N_MAX && q->top_logprobs >= 0 &&
                   q->top_logprobs <= JOB_TOP_LOGPROBS_MAX && q->top_k >= -1 &&
                   q->min_tokens >= 0 && q->n_stop >= 0 && q->n_stop_ids >= 0 &&
                   q->n_bias >= 0,
               "line %d: a control out of range", p->line);
    FUZZ_CHECK(isnan(q->temperature) || (q->temperature >= 0 && q->temperature <= 100),
               "line %d: temperature %g", p->line, q->temperature);
    FUZZ_CHECK(isnan(q->top_p) || (q->top_p > 0 && q->top_p <= 1), "line %d: top_p %g",
               p->line, q->top_p);
    FUZZ_CHECK(q->repetition_penalty > 0, "line %d: repetition_penalty", p->line);
    for (int i = 0; i < q->n_stop; i++)
        FUZZ_CHECK(q->stop[i] && q->stop[i][0], "line %d: empty stop string", p->line);
    for (int i = 0; i < q->n_stop_ids; i++)
        FUZZ_CHECK(q->stop_ids[i] >= 0 && q->stop_ids[i] < VOCAB, "line %d: stop id", p->line);
    for (int i = 0; i < q->n_bias; i++)
        FUZZ_CHECK(q->bias_ids[i] >= 0 && q->bias_ids[i] < VOCAB && fabsf(q->bias[i]) <= 100,
                   "line %d: logit_bias", p->line);
}

/* A record for each request, then the file read back as --resume does. */
static void write_and_resume(const job_prompts *ps, const char *out)
{
    char path[512];
    fuzz_path(path, sizeof path, out);
    fuzz_remove(out);
    job_out o;
    FUZZ_CHECK(job_out_open(path, 0, &o) == 0, "%s", err_msg());
    o.model_name = "fuzz";
    static int32_t top_ids[JOB_TOP_LOGPROBS_MAX * 2];
    static float top_lps[JOB_TOP_LOGPROBS_MAX * 2];
    for (int k = 0; k < JOB_TOP_LOGPROBS_MAX * 2; k++) {
        top_ids[k] = k;
        top_lps[k] = -(float)k;
    }
    static job_choice ch[JOB_N_MAX];
    int32_t tokens[2] = {1, 300};
    float lps[2] = {-0.5f, -1.5f};
    for (int i = 0; i < ps->n; i++) {
        const job_prompt *p = &ps->p[i];
        for (int j = 0; j < p->par.n; j++)
            ch[j] = (job_choice){.text = "ok \xff", .len = 4, .tokens = tokens,
                                 .logprobs = lps, .n = 2, .top_ids = top_ids,
                                 .top_lps = top_lps, .top_stride = JOB_TOP_LOGPROBS_MAX,
                                 .finish = j % 2 ? "stop" : "length",
                                 .stop_str = p->par.n_stop ? p->par.stop[0] : NULL,
                                 .stop_id = j % 2 ? 7 : -1};
        FUZZ_CHECK(job_out_result(&o, p, ch, p->par.n, t) == 0, "%s", err_msg());
    }
    FUZZ_CHECK(job_out_close(&o) == 0, "%s", err_msg());
    FUZZ_CHECK(job_out_open(path, 1, &o) == 0, "resuming what was written: %s", err_msg());
    for (int i = 0; i < ps->n; i++)
        FUZZ_CHECK(job_out_has(&o, ps->p[i].id), "line %d: id %s not found on resume",
                   ps->p[i].line, ps->p[i].id);
    FUZZ_CHECK(o.done.n == ps->n, "%d records read back, %d written", o.done.n, ps->n);
    job_out_close(&o);
}

/* The records of out alternately into two shards, merged back in the
 * order of the prompt file in: the same text, every record placed. */
static void split_and_merge(const job_prompts *ps, const char *in, const char *out)
{
    int zst = job_file_is_zst(out);
    const char *names[2] = {zst ? "s0.jsonl.zst" : "s0.jsonl", zst ? "s1.jsonl.zst" : "s1.jsonl"};
    const char *merged = zst ? "merged.jsonl.zst" : "merged.jsonl";
    char paths[2][512], pin[512], pout[512], pm[512];
    job_file_wr *w[2];
    for (int k = 0; k < 2; k++)
        FUZZ_CHECK(job_file_wr_open(fuzz_path(paths[k], sizeof paths[k], names[k]), "wb",
                                    &w[k]) == 0, "%s", err_msg());
    job_file_rd *r;
    FUZZ_CHECK(job_file_rd_open(fuzz_path(pout, sizeof pout, out), "out", -1, &r) == 0, "%s",
               err_msg());
    char *line;
    ssize_t len;
    for (int i = 0; (len = job_file_rd_line(r, &line, NULL)) > 0; i++)
        FUZZ_CHECK(job_file_write(w[i % 2], line, (size_t)len) == 0 &&
                       job_file_flush(w[i % 2]) == 0, "%s", err_msg());
    FUZZ_CHECK(len == 0, "%s", err_msg());
    job_file_rd_close(r);
    for (int k = 0; k < 2; k++)
        FUZZ_CHECK(job_file_wr_close(w[k]) == 0, "%s", err_msg());
    fuzz_remove(merged);
    job_merge_stats st;
    const char *const shards[2] = {paths[1], paths[0]};
    FUZZ_CHECK(job_merge(fuzz_path(pin, sizeof pin, in), shards, 2,
                         fuzz_path(pm, sizeof pm, merged), &st) == 0, "%s", err_msg());
    FUZZ_CHECK(st.records == ps->n, "%ld records merged, %d written", st.records, ps->n);
    char *a, *b;
    size_t na, nb;
    FUZZ_CHECK(job_file_read_all(pout, &a, &na) == 0 && job_file_read_all(pm, &b, &nb) == 0,
               "%s", err_msg());
    FUZZ_CHECK(na == nb && memcmp(a, b, na) == 0, "the merge differs from the one file");
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    t = fuzz_embedded_tok();
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    int zst = opt & 2, kind = (opt >> 2) & 15;
    job_load_opts lo = {.t = t, .bos = opt & 128 ? 505 : opt & 64 ? 0 : -1, .vocab = VOCAB,
                        .max_len = MAX_LEN, .strict = opt & 1,
                        .chat_template = kind < TOK_CHAT_COUNT ? kind : -1};
    const char *in = zst ? "prompts.jsonl.zst" : "prompts.jsonl";
    if (zst) {
        size_t cap = ZSTD_compressBound(size - 1);
        void *z = malloc(cap);
        FUZZ_CHECK(z != NULL, "out of memory");
        size_t n = ZSTD_compress(z, cap, data + 1, size - 1, 1);
        FUZZ_CHECK(!ZSTD_isError(n), "%s", ZSTD_getErrorName(n));
        fuzz_write(in, z, n);
        free(z);
    } else {
        fuzz_write(in, data + 1, size - 1);
    }
    char path[512];
    job_prompts ps;
    err_set_log(on_log, NULL);
    int rc = job_prompts_load(fuzz_path(path, sizeof path, in), &lo, &ps);
    if (rc < 0 && rc != -ENOMEM)
        check_reason(err_msg(), "a refused file");
    fuzz_begin(); /* quiet again */
    if (rc < 0)
        return 0;
    for (int i = 0; i < ps.n; i++)
        check_prompt(&ps.p[i]);
    write_and_resume(&ps, zst ? "out.jsonl.zst" : "out.jsonl");
    split_and_merge(&ps, in, zst ? "out.jsonl.zst" : "out.jsonl");
    job_prompts_free(&ps);
    return 0;
}
