/* test_eval.c: `flexh2o eval` and `flexh2o score` (DESIGN.md "Quality")
 * against Hugging Face transformers on the golden tiny OPT (goldens from
 * tests/fixtures/gen_eval_golden.py): the full-cache streaming perplexity
 * equals transformers' teacher-forced one, window by window; score's
 * loglikelihoods and is_greedy equal transformers'; eval's numbers do not
 * depend on the batch or the placement; --compare-full agrees with itself
 * where nothing is evicted; bad input is refused with one line. (eval's H2O
 * perplexity against an independent reference is in test_h2o.c.) */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "golden_harness.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"
#define TINY FIX "tiny-opt"
#define TEXT FIX "eval_text.txt"

TestSuite(eval, .init = cli_setup, .fini = cli_teardown, .timeout = 120);

/* The JSON line eval printed (stdout). */
static cJSON *eval_line(void)
{
    char *out = cli_read("stdout.txt");
    cr_assert(out);
    cJSON *r = cJSON_Parse(out);
    cr_assert(r, "not one JSON object: %s", out);
    free(out);
    return r;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    cr_assert(cJSON_IsNumber(v), "no number \"%s\"", k);
    return v->valuedouble;
}

Test(eval, full_cache_perplexity_equals_transformers)
{
    cJSON *g = golden_eval_load();
    cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context %d --quiet",
                         (int)num(g, "context")), 0, "%s", cli_err);
    cJSON *r = eval_line();
    cr_assert_eq(num(r, "windows"), cJSON_GetArraySize(cJSON_GetObjectItem(g, "windows")));
    cr_assert_eq(num(r, "tokens"), num(g, "tokens"));
    cr_assert_float_eq(num(r, "nll"), num(g, "nll"), 2e-6 * num(g, "nll"), "nll %.9g vs %.9g",
                       num(r, "nll"), num(g, "nll"));
    cr_assert_float_eq(num(r, "ppl"), num(g, "ppl"), 1e-4 * num(g, "ppl"));
    cr_assert_str_eq(cJSON_GetObjectItem(r, "policy")->valuestring, "full");
    cr_assert_gt(num(r, "kv_bytes"), 0);
    cJSON_Delete(r);
    cJSON_Delete(g);
}

/* The same nll, to the last digit, in any batch and placement: every
 * window is its own sequence. */
Test(eval, numbers_do_not_depend_on_batch_or_placement)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/off", cli_dir);
    cr_assert_eq(system(cmd), 0);
    static const char *runs[] = {
        "--batch-size 1",
        "--batch-size 3",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 30 30 34 33 0 100 --offload-dir off",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 100 0 0 100 100 0 --cpu-attention",
    };
    static const char *pols[] = {"", "--kv-policy h2o --kv-budget 12 --sinks 1"};
    for (size_t p = 0; p < 2; p++) {
        char first[64] = "";
        for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
            cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context 40 --quiet %s %s",
                                 runs[i], pols[p]), 0, "%s %s: %s", runs[i], pols[p], cli_err);
            cJSON *r = eval_line();
            char nll[64];
            snprintf(nll, sizeof nll, "%.9g", num(r, "nll"));
            if (i == 0)
                snprintf(first, sizeof first, "%s", nll);
            cr_assert_str_eq(nll, first, "%s %s: nll %s, batch 1 %s", runs[i], pols[p], nll,
                             first);
            cJSON_Delete(r);
        }
    }
}

/* --compare-full: with a budget that evicts nothing the policy is the full
 * cache (agreement 1, KL 0); with a small one it is not, and its nll is
 * that of the run without --compare-full. */
Test(eval, compare_full_agreement_and_kl)
{
    cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context 40 --quiet "
                         "--kv-policy h2o --kv-budget 40 --compare-full --batch-size 4"), 0, "%s",
                 cli_err);
    cJSON *r = eval_line();
    cr_assert_eq(num(r, "agreement"), 1.0);
    cr_assert_leq(fabs(num(r, "kl")), 1e-9);
    cJSON_Delete(r);
    cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context 40 --quiet "
                         "--kv-policy h2o --kv-budget 8 --compare-full --batch-size 4"), 0, "%s",
                 cli_err);
    r = eval_line();
    double nll = num(r, "nll"), agree = num(r, "agreement"), kl = num(r, "kl");
    cr_assert(agree > 0.2 && agree < 1.0, "agreement %g", agree);
    cr_assert(kl > 1e-3, "kl %g", kl);
    cr_assert_eq(num(r, "budget"), 8);
    cJSON_Delete(r);
    cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context 40 --quiet "
                         "--kv-policy h2o --kv-budget 8 --batch-size 4"), 0, "%s", cli_err);
    r = eval_line();
    cr_assert_eq(num(r, "nll"), nll, "compare-full changed the policy's nll");
    cJSON_Delete(r);
}

/* score: every golden request's logprob and is_greedy, with the full cache
 * (the context as one prefill) and with a budget that never evicts (the
 * context through the cache token by token). */
Test(eval, score_equals_transformers)
{
    cJSON *g = golden_eval_load();
    const cJSON *rq, *reqs = cJSON_GetObjectItem(g, "requests");
    golden_score_job(g, "req.jsonl");
    static const char *pols[] = {"", "--kv-policy h2o --kv-budget 64"};
    for (size_t p = 0; p < 2; p++) {
        cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl --out res%zu.jsonl "
                             "--batch-size 3 --quiet %s", p, pols[p]), 0, "%s", cli_err);
        char name[32];
        snprintf(name, sizeof name, "res%zu.jsonl", p);
        char *res = cli_read(name), *line = strtok(res, "\n");
        int k = 0, n_false = 0;
        cJSON_ArrayForEach(rq, reqs) {
            cr_assert(line, "%s: %d results", pols[p], k);
            cJSON *r = cJSON_Parse(line);
            cr_assert_str_eq(cJSON_GetObjectItem(r, "id")->valuestring,
                             cJSON_GetObjectItem(rq, "id")->valuestring);
            cr_assert_float_eq(num(r, "logprob"), num(rq, "logprob"), 1e-4, "%s %s: %g vs %g",
                               pols[p], cJSON_GetObjectItem(rq, "id")->valuestring,
                               num(r, "logprob"), num(rq, "logprob"));
            int want = cJSON_IsTrue(cJSON_GetObjectItem(rq, "is_greedy"));
            cr_assert_eq(cJSON_IsTrue(cJSON_GetObjectItem(r, "is_greedy")), want);
            n_false += !want;
            cr_assert_eq(num(r, "n_tokens"),
                         cJSON_GetArraySize(cJSON_GetObjectItem(rq, "continuation_ids")));
            cJSON_Delete(r);
            line = strtok(NULL, "\n");
            k++;
        }
        cr_assert_null(line, "more results than requests");
        cr_assert_gt(n_false, 0, "no request tests is_greedy false");
        free(res);
    }
    cJSON_Delete(g);
}

/* Text requests: the context's trailing space moves to the continuation
 * (lm-evaluation-harness); " dog" scored after "the lazy" equals its ids. */
Test(eval, score_text_requests_and_refusals)
{
    cli_write("t.jsonl", "{\"id\": \"a\", \"context\": \"The quick brown fox jumps over the "
                         "lazy \", \"continuation\": \"dog\"}\n"
                         "{\"context\": \"one two\", \"continuation\": \" three\"}\n");
    cr_assert_eq(cli_run("score --model " TINY " --prompts t.jsonl --out r.jsonl --quiet"), 0,
                 "%s", cli_err);
    char *r = cli_read("r.jsonl");
    /* a request without "id" is keyed by its line as generate's are: no
     * given id (a string or a number) can equal it */
    cr_assert(strstr(r, "{\"id\": \"a\", \"logprob\": ") && strstr(r, "{\"id\": {\"line\":2}, "),
              "%s", r);
    free(r);
    /* the same as ids: "The quick ... lazy" with BOS, then " dog" */
    cli_write("lines.txt", "The quick brown fox jumps over the lazy\n dog\n");
    cr_assert_eq(cli_run("tokenize --model " TINY " < lines.txt"), 0, "%s", cli_err);
    char *ids = cli_read("stdout.txt");
    char *nl = strchr(ids, '\n');
    cr_assert(nl);
    *nl = 0;
    char *cont = nl + 1;
    cont[strcspn(cont, "\n")] = 0;
    /* drop the BOS the tokenize of the second line added */
    char *comma = strchr(cont, ',');
    cr_assert(comma);
    char job[1024];
    snprintf(job, sizeof job, "{\"id\": \"a\", \"context_ids\": %s, \"continuation_ids\": [%s}\n",
             ids, comma + 1);
    free(ids);
    cli_write("i.jsonl", job);
    cr_assert_eq(cli_run("score --model " TINY " --prompts i.jsonl --out ri.jsonl --quiet"), 0,
                 "%s", cli_err);
    char *a = cli_read("r.jsonl"), *b = cli_read("ri.jsonl");
    cr_assert(!strncmp(a, b, strcspn(b, "\n")), "text %s vs ids %s", a, b);
    free(a);
    free(b);
    /* an id with bytes that are not UTF-8 is written with U+FFFD in their
     * place, as generate writes it: the results stay JSON Lines */
    cli_write("u.jsonl", "{\"id\": \"q\xff\xfe" "1\", \"context\": \"x\", \"continuation\": \"y\"}\n");
    cr_assert_eq(cli_run("score --model " TINY " --prompts u.jsonl --out ru.jsonl --quiet"), 0,
                 "%s", cli_err);
    char *u = cli_read("ru.jsonl");
    cr_assert(strstr(u, "{\"id\": \"q\xef\xbf\xbd\xef\xbf\xbd" "1\", ") && !strchr(u, '\xff'), "%s", u);
    cJSON *ur = cJSON_Parse(u);
    cr_assert(ur, "not JSON: %s", u);
    cJSON_Delete(ur);
    free(u);
    /* results already there are never overwritten: --resume goes on after
     * them (a torn last record cut off), and the prompt file is never the
     * output */
    cr_assert_eq(cli_run("score --model " TINY " --prompts t.jsonl --out r.jsonl --quiet"), 1);
    cr_assert(strstr(cli_err, "r.jsonl already exists; pass --resume"), "%s", cli_err);
    cr_assert_eq(cli_run("score --model " TINY " --prompts t.jsonl --out t.jsonl --resume"), 2);
    cr_assert(strstr(cli_err, "--prompts and --out must be different files"), "%s", cli_err);
    char *whole = cli_read("r.jsonl");
    size_t first = strcspn(whole, "\n") + 1;
    char *part = strndup(whole, first + 7); /* the first record and a torn second */
    cli_write("rr.jsonl", part);
    cr_assert_eq(cli_run("score --model " TINY " --prompts t.jsonl --out rr.jsonl --resume"), 0,
                 "%s", cli_err);
    cr_assert(strstr(cli_err, "dropping a torn last record") &&
                  strstr(cli_err, "1 request scored") && strstr(cli_err, "(1 already in rr.jsonl)"),
              "%s", cli_err);
    char *resumed = cli_read("rr.jsonl");
    cr_assert_str_eq(resumed, whole);
    free(resumed);
    cr_assert_eq(cli_run("score --model " TINY " --prompts t.jsonl --out rr.jsonl --resume"), 0,
                 "%s", cli_err);
    cr_assert(strstr(cli_err, "0 requests scored") && strstr(cli_err, "(2 already in rr.jsonl)"),
              "%s", cli_err);
    resumed = cli_read("rr.jsonl");
    cr_assert_str_eq(resumed, whole);
    free(resumed);
    free(part);
    free(whole);
    static const struct {
        const char *verb, *file, *text, *msg;
    } bad[] = {
        {"score", "b.jsonl", "{\"context\": \"x\"}\n", "line 1: a request needs \"context\" and"},
        {"score", "b.jsonl", "{\"context\": \"x\", \"continuation\": \"y\"}\nnot json\n",
         "line 2: not a JSON object"},
        {"score", "b.jsonl", "{\"context_ids\": [2], \"continuation_ids\": [9999]}\n",
         "b.jsonl line 1: \"continuation_ids\" holds 9999, not a token id below 512"},
        /* ids: each request its own (7 and 7.0 are one number), a string
         * or a number; a field given as text and as ids, or unknown */
        {"score", "b.jsonl", "{\"id\": 7, \"context\": \"x\", \"continuation\": \"y\"}\n\n"
         "{\"id\": 7.0, \"context\": \"x\", \"continuation\": \"z\"}\n",
         "b.jsonl line 3: the id 7 is also line 1's"},
        {"score", "b.jsonl", "{\"id\": \"q\", \"context\": \"x\", \"continuation\": \"y\"}\n"
         "{\"id\": \"q\", \"context\": \"x\", \"continuation\": \"z\"}\n",
         "b.jsonl line 2: the id \"q\" is also line 1's"},
        {"score", "b.jsonl", "{\"id\": [1], \"context\": \"x\", \"continuation\": \"y\"}\n",
         "b.jsonl line 1: \"id\" must be a string or a finite number"},
        {"score", "b.jsonl", "{\"id\": 1e400, \"context\": \"x\", \"continuation\": \"y\"}\n",
         "b.jsonl line 1: \"id\" must be a string or a finite number"},
        {"score", "b.jsonl", "{\"context\": \"x\", \"context_ids\": [2], \"continuation\": "
         "\"y\"}\n", "b.jsonl line 1: both \"context\" and \"context_ids\""},
        {"score", "b.jsonl", "{\"ID\": \"q\", \"context\": \"x\", \"continuation\": \"y\"}\n",
         "b.jsonl line 1: unknown field \"ID\""},
        {"score", "b.jsonl", "{\"context\": \"x\\u00ff\", \"continuation\": \"y\xff\"}\n",
         "b.jsonl line 1: cannot tokenize the continuation: text is not valid UTF-8"},
        {"eval", NULL, NULL, "--text FILE is required"},
        {"eval", NULL, "--context 200", "past the model's max_position_embeddings 128"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int st;
        if (!strcmp(bad[i].verb, "score")) {
            cli_write(bad[i].file, bad[i].text);
            st = cli_run("score --model " TINY " --prompts b.jsonl --out rb.jsonl --quiet");
        } else if (bad[i].text) {
            cli_write("long.txt", "");
            char text[4096] = "";
            for (int k = 0; k < 60; k++)
                strcat(text, "the heavy hitters of a long text ");
            cli_write("long.txt", text);
            st = cli_run("eval --model " TINY " --text long.txt --quiet %s", bad[i].text);
        } else {
            st = cli_run("eval --model " TINY " --quiet");
        }
        cr_assert_eq(st, 2, "%s: exit %d: %s", bad[i].msg, st, cli_err);
        cr_assert(strstr(cli_err, bad[i].msg), "want %s: %s", bad[i].msg, cli_err);
    }
    /* a request past the model's positions is named by its line */
    char lng[4096] = "{\"context\": \"x\", \"continuation\": \"y\"}\n{\"context\": \"";
    for (int k = 0; k < 300; k++)
        strcat(lng, "word ");
    strcat(lng, "\", \"continuation\": \" end\"}\n");
    cli_write("b.jsonl", lng);
    cr_assert_eq(cli_run("score --model " TINY " --prompts b.jsonl --out rl.jsonl --quiet"), 2);
    cr_assert(strstr(cli_err, "the request on line 2 has 605 tokens, past the model's max_position_embeddings 128"), "%s", cli_err);
    /* a model without tokenizer files scores requests of ids; a text one
     * is refused by its line */
    cr_assert_eq(cli_run("convert --model " TINY " --out notok"), 0, "%s", cli_err);
    cr_assert_eq(cli_sh("rm notok/vocab.json notok/merges.txt"), 0);
    cli_write("b.jsonl", "{\"context_ids\": [2, 10, 20], \"continuation_ids\": [30, 40]}\n");
    cr_assert_eq(cli_run("score --model notok --prompts b.jsonl --out rn.jsonl --quiet"), 0,
                 "%s", cli_err);
    cli_write("b.jsonl", "{\"context_ids\": [2, 10, 20], \"continuation_ids\": [30, 40]}\n"
                         "{\"context\": \"x\", \"continuation\": \"y\"}\n");
    cr_assert_eq(cli_run("score --model notok --prompts b.jsonl --out rn2.jsonl --quiet"), 2);
    cr_assert(strstr(cli_err, "b.jsonl line 2: a text context needs the model's tokenizer files"),
              "%s", cli_err);
    cr_assert_eq(cli_run("eval --model notok --text " TEXT " --quiet"), 1);
    cr_assert(strstr(cli_err, "notok: no tokenizer"), "%s", cli_err);
    /* a text that is not UTF-8 is named with the tokenizer's reason */
    cli_write("latin1.txt", "caf\xe9 au lait, caf\xe9 noir\n");
    cr_assert_eq(cli_run("eval --model " TINY " --text latin1.txt --quiet"), 2, "%s", cli_err);
    cr_assert(strstr(cli_err, "latin1.txt: cannot tokenize it: text is not valid UTF-8 at byte 3"),
              "%s", cli_err);
}

/* A real kill: `score` of a long request file into a .zst output, killed
 * with SIGKILL once results are flushed, then --resume: the output
 * decompresses to exactly the uninterrupted run's (a frame cut by the
 * kill is dropped and scored again). Batches of one, as the first run's. */
Test(eval, score_killed_then_resumed_loses_nothing)
{
    enum { N = 400 };
    /* one thread: a tiny model's many small parallel regions cost more in
     * wake-ups than they gain (20 s instead of 2 on a loaded 2-core VM) */
    setenv("OMP_NUM_THREADS", "1", 1);
    size_t cap = (size_t)N * 256;
    char *req = malloc(cap);
    cr_assert(req);
    size_t at = 0;
    for (int i = 0; i < N; i++)
        at += (size_t)snprintf(req + at, cap - at, "{\"id\": %d, \"context\": \"the heavy "
                               "hitters of a long text, number %d, and what follows it\", "
                               "\"continuation\": \" is kept %d\"}\n", i, i, i % 7);
    cli_write("k.jsonl", req);
    free(req);
    const char *flags = "--kv-policy h2o --kv-budget 8 --batch-size 1 --quiet --no-summary";
    cr_assert_eq(cli_run("score --model " TINY " --prompts k.jsonl --out full.jsonl.zst %s",
                         flags), 0, "%s", cli_err);
    cli_kill_once_written("k.jsonl.zst", 1500,
                          (const char *const[]){"score", "--model", TINY, "--prompts",
                                                "k.jsonl", "--out", "k.jsonl.zst",
                                                "--kv-policy", "h2o", "--kv-budget", "8",
                                                "--batch-size", "1", "--quiet", "--device",
                                                "cpu", NULL});
    cr_assert_eq(cli_run("score --model " TINY " --prompts k.jsonl --out k.jsonl.zst --resume "
                         "%s", flags), 0, "%s", cli_err);
    unsetenv("OMP_NUM_THREADS");
    int nf_full, nf;
    char *want = cli_read_zst("full.jsonl.zst", &nf_full, NULL);
    char *got = cli_read_zst("k.jsonl.zst", &nf, NULL);
    cr_assert_eq(nf_full, N);
    cr_assert_eq(nf, N);
    cr_assert_str_eq(got, want);
    free(want);
    free(got);
}

/* eval --out: each finished window's record; --resume after a cut file
 * or a real SIGKILL prints the line an uninterrupted run prints and
 * leaves the same records; a record of another run (another budget) is
 * refused, as are --resume without --out and --out equal to --text. */
static char *without_speed(const char *json)
{
    cJSON *o = cJSON_Parse(json);
    cr_assert(o, "not JSON: %s", json);
    cJSON_DeleteItemFromObject(o, "tok_s");
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return t;
}

/* `flexh2o CMD` run to success: its line without the speed (free it). */
static char *run_line(const char *cmd)
{
    cr_assert_eq(cli_run("%s", cmd), 0, "%s: %s", cmd, cli_err);
    char *t = cli_read("stdout.txt"), *line = without_speed(t);
    free(t);
    return line;
}

Test(eval, eval_out_and_resume)
{
    const char *ev = "eval --model " TINY " --text " TEXT " --context 24 --kv-policy h2o "
                     "--kv-budget 10 --compare-full --batch-size 2 --quiet --no-summary";
    char cmd[512];
    char *want = run_line(ev);
    snprintf(cmd, sizeof cmd, "%s --out w.jsonl", ev);
    char *got = run_line(cmd);
    cr_assert_str_eq(got, want);
    free(got);
    char *whole = cli_read("w.jsonl");
    int lines = 0;
    for (char *c = whole; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 9, "%s", whole);
    /* three records and a torn fourth */
    char *cut = whole;
    for (int k = 0; k < 3; k++)
        cut = strchr(cut, '\n') + 1;
    char *part = strndup(whole, (size_t)(cut - whole) + 20);
    cli_write("w2.jsonl", part);
    free(part);
    snprintf(cmd, sizeof cmd, "%s --out w2.jsonl --resume", ev);
    got = run_line(cmd);
    cr_assert_str_eq(got, want);
    free(got);
    char *again = cli_read("w2.jsonl");
    cr_assert_str_eq(again, whole);
    free(again);
    /* everything there: nothing runs, the same line */
    got = run_line("eval --model " TINY " --text " TEXT " --context 24 --kv-policy h2o "
                    "--kv-budget 10 --compare-full --batch-size 2 --quiet --out w2.jsonl "
                    "--resume");
    cr_assert(strstr(cli_err, "9 of 9 windows read back from w2.jsonl"), "%s", cli_err);
    cr_assert_str_eq(got, want);
    free(got);
    free(whole);
    free(want);
    cr_assert_eq(cli_run("eval --model " TINY " --text " TEXT " --context 24 --kv-policy h2o "
                         "--kv-budget 11 --compare-full --batch-size 2 --quiet --out w2.jsonl "
                         "--resume"), 2);
    cr_assert(strstr(cli_err, "w2.jsonl line 1: not a record of this run's windows"), "%s",
              cli_err);
    cr_assert_eq(cli_run("%s --out w2.jsonl", ev), 1);
    cr_assert(strstr(cli_err, "w2.jsonl already exists; pass --resume"), "%s", cli_err);
    cr_assert_eq(cli_run("%s --resume", ev), 2);
    cr_assert(strstr(cli_err, "--resume goes on from the window records of --out"), "%s",
              cli_err);
    cli_write("t.txt", "some text to score, some text to score, some text to score");
    cr_assert_eq(cli_run("eval --model " TINY " --text t.txt --out t.txt --quiet"), 2);
    cr_assert(strstr(cli_err, "--text and --out must be different files"), "%s", cli_err);

    /* a real kill of a long run (800 lines, 611 windows: each record is one
     * zstd frame written as it finishes, so the kill at 3000 bytes lands
     * after about 25 of them; under ASan on a 2 GHz Zen 2 one run takes
     * 16 s), then --resume (one thread: a tiny model's
     * small parallel regions cost more in wake-ups than they gain) */
    size_t cap = 1 << 20, at = 0;
    char *text = malloc(cap);
    cr_assert(text);
    for (int i = 0; at + 200 < cap && i < 800; i++)
        at += (size_t)snprintf(text + at, cap - at, "the heavy hitters of line %d and what "
                               "follows them; ", i);
    cli_write("long.txt", text);
    free(text);
    setenv("OMP_NUM_THREADS", "1", 1);
    const char *lv = "eval --model " TINY " --text long.txt --context 32 --kv-policy h2o "
                     "--kv-budget 8 --batch-size 4 --quiet --no-summary";
    snprintf(cmd, sizeof cmd, "%s --out full.jsonl.zst", lv);
    want = run_line(cmd);
    cli_kill_once_written("k.jsonl.zst", 3000,
                          (const char *const[]){"eval", "--model", TINY, "--text", "long.txt",
                                                "--context", "32", "--kv-policy", "h2o",
                                                "--kv-budget", "8", "--batch-size", "4",
                                                "--quiet", "--out", "k.jsonl.zst", "--device",
                                                "cpu", NULL});
    snprintf(cmd, sizeof cmd, "%s --out k.jsonl.zst --resume", lv);
    got = run_line(cmd);
    unsetenv("OMP_NUM_THREADS");
    cr_assert_str_eq(got, want);
    free(got);
    free(want);
    int nf_full, nf;
    char *a = cli_read_zst("full.jsonl.zst", &nf_full, NULL);
    char *b = cli_read_zst("k.jsonl.zst", &nf, NULL);
    cr_assert_eq(nf, nf_full);
    cr_assert_str_eq(b, a);
    free(a);
    free(b);
}

/* Without MPI: eval --shard I/N keeps its windows' records, and the
 * joined files read back with --resume print the one run's line; score
 * --shard I/N writes its share, and merge joins the shards into the one
 * run's file, byte for byte; a shard cut short and resumed finishes its
 * own share. */
Test(eval, shards_join_into_the_one_run)
{
    const char *ev = "eval --model " TINY " --text " TEXT " --context 24 --kv-policy h2o "
                     "--kv-budget 10 --batch-size 2 --quiet --no-summary";
    char *want = run_line(ev);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cli_run("%s --out w%d.jsonl --shard %d/3", ev, i, i), 0, "%s", cli_err);
        char *t = cli_read("stdout.txt");
        cr_assert_str_eq(t, "", "a shard printed the line of its windows alone: %s", t);
        free(t);
    }
    /* a killed shard resumed runs the rest of the share it began: the
     * split does not depend on what its own file holds */
    char *w1 = cli_read("w1.jsonl");
    w1[strcspn(w1, "\n") + 9] = 0;
    cli_write("w1.jsonl", w1);
    free(w1);
    cr_assert_eq(cli_run("%s --out w1.jsonl --shard 1/3 --resume", ev), 0, "%s", cli_err);
    cr_assert_eq(cli_sh("cat w2.jsonl w0.jsonl w1.jsonl > all.jsonl"), 0);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s --out all.jsonl --resume", ev);
    char *got = run_line(cmd);
    cr_assert_str_eq(got, want);
    free(got);
    free(want);
    cr_assert_eq(cli_run("%s --shard 0/2", ev), 2);
    cr_assert(strstr(cli_err, "--shard I/N keeps its windows' records in --out"), "%s", cli_err);
    cr_assert_eq(cli_run("%s --out x.jsonl --shard 2/2", ev), 2);
    cr_assert(strstr(cli_err, "--shard expects I/N with 0 <= I < N"), "%s", cli_err);

    char req[8192] = "";
    for (int i = 0; i < 17; i++) {
        char line[256];
        snprintf(line, sizeof line, "{\"id\": \"r%d\", \"context\": \"In the beginning%s\", "
                 "\"continuation\": \" God created %d\"}\n", i, i % 3 ? " and" : "", i);
        strcat(req, line);
    }
    cli_write("req.jsonl", req);
    const char *sc = "score --model " TINY " --prompts req.jsonl --batch-size 3 --quiet "
                     "--no-summary";
    cr_assert_eq(cli_run("%s --out one.jsonl", sc), 0, "%s", cli_err);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(cli_run("%s --out s%d.jsonl --shard %d/2", sc, i, i), 0, "%s", cli_err);
    char *s1 = cli_read("s1.jsonl");
    s1[strcspn(s1, "\n") + 7] = 0; /* one record and a torn second */
    cli_write("s1.jsonl", s1);
    free(s1);
    cr_assert_eq(cli_run("%s --out s1.jsonl --shard 1/2 --resume", sc), 0, "%s", cli_err);
    cr_assert_eq(cli_run("merge --prompts req.jsonl --out merged.jsonl --quiet s1.jsonl "
                         "s0.jsonl"), 0, "%s", cli_err);
    char *a = cli_read("one.jsonl"), *b = cli_read("merged.jsonl"), *s0 = cli_read("s0.jsonl");
    cr_assert_str_eq(b, a);
    cr_assert(strlen(s0) > 0 && strlen(s0) < strlen(a), "shard 0 holds %zu of %zu bytes",
              strlen(s0), strlen(a));
    free(a);
    free(b);
    free(s0);
}
