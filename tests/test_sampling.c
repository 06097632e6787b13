/* test_sampling.c: the sampling and output controls of a request (README
 * "Sampling"), through `flexh2o generate`: penalties, logit_bias and
 * min_tokens against a slow reference over the model's own logits; stop
 * strings split over tokens; n completions sharing one prefill equal n
 * separate runs (seed S + j), on every tier and KV policy; top logprobs;
 * what a new user hits first (no tokenizer files, --quiet, --no-summary). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "cli_harness.h"
#include "fh_config.h"
#include "err.h"
#include "golden_harness.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"
#define KJV FH_SOURCE_ROOT "/configs/kjv-llama"

static backend be;

static void setup(void)
{
    cli_setup();
    cr_assert_eq(backend_cpu_create(2, &be), 0, "%s", err_msg());
}

static void teardown(void)
{
    backend_destroy(&be);
    cli_teardown();
}

TestSuite(sampling, .init = setup, .fini = teardown);

/* The first record of cli_dir/name. */
static cJSON *first_record(const char *name)
{
    char *text = cli_read(name);
    cJSON *r = cJSON_Parse(text);
    cr_assert(r, "%s: %s", name, text);
    free(text);
    return r;
}

/* Record i (0-based) of cli_dir/name. */
static cJSON *record(const char *name, int i)
{
    char *text = cli_read(name), *line = text;
    for (int k = 0; k < i; k++) {
        line = strchr(line, '\n');
        cr_assert(line, "%s has no record %d", name, i);
        line++;
    }
    cJSON *r = cJSON_ParseWithOpts(line, NULL, 0);
    cr_assert(r, "%s record %d", name, i);
    free(text);
    return r;
}

static int int_at(const cJSON *a, int i)
{
    return cJSON_GetArrayItem(a, i)->valueint;
}

/* vLLM's order on one row of raw logits x (V): repetition penalty r over
 * prompt and output tokens (divide when positive, multiply otherwise),
 * then minus frequency * count and presence once per generated token,
 * plus logit_bias, and -inf for banned ids; greedy argmax, lowest id on
 * ties. Written from the text, independent of src/gen's tables. */
static int reference_choice(const float *x, int V, const int32_t *prompt, int n_prompt,
                            const int32_t *out, int n_out, float r, float freq, float pres,
                            int bias_id, float bias, const int32_t *ban, int n_ban)
{
    double *y = malloc(sizeof(double) * (size_t)V);
    for (int v = 0; v < V; v++) {
        int in_prompt = 0, count = 0;
        for (int i = 0; i < n_prompt; i++)
            in_prompt |= prompt[i] == v;
        for (int i = 0; i < n_out; i++)
            count += out[i] == v;
        double z = x[v];
        if (in_prompt || count > 0)
            z = z > 0 ? z * (1.0f / r) : z * r;
        z -= freq * count + (count > 0 ? pres : 0.0f);
        if (v == bias_id)
            z += bias;
        for (int i = 0; i < n_ban; i++)
            if (ban[i] == v)
                z = -INFINITY;
        y[v] = z;
    }
    int best = 0;
    for (int v = 1; v < V; v++)
        if (y[v] > y[best])
            best = v;
    free(y);
    return best;
}

/* Greedy with repetition, frequency and presence penalties, a logit_bias
 * and min_tokens (EOS and a stop id banned for the first tokens): each
 * chosen token is the slow reference's choice on the logits transformers'
 * math gives for that prefix (golden_logits: one prefill of the whole
 * sequence), and each logprob the raw log-softmax. */
Test(sampling, penalties_bias_and_min_tokens_follow_a_slow_reference)
{
    const char *dir = FIX "tiny-llama";
    int32_t prompt[] = {1, 45, 45, 300, 17, 45, 9, 300};
    int np = sizeof prompt / sizeof *prompt;
    /* the stop id: what plain greedy picks first, so the ban must bite */
    cli_write("g.jsonl", "{\"id\": 1, \"prompt_ids\": [1, 45, 45, 300, 17, 45, 9, 300], "
                         "\"max_new_tokens\": 1}\n");
    cr_assert_eq(cli_run("generate --model %s --prompts g.jsonl --out g.out --quiet "
                         "--ignore-eos", dir), 0, "%s", cli_err);
    cJSON *g = first_record("g.out");
    int stop_id = int_at(cJSON_GetObjectItem(g, "tokens"), 0);
    cJSON_Delete(g);
    char job[512];
    snprintf(job, sizeof job, "{\"id\": 1, \"prompt_ids\": [1, 45, 45, 300, 17, 45, 9, 300], "
             "\"max_new_tokens\": 14, \"repetition_penalty\": 1.7, \"frequency_penalty\": "
             "0.6, \"presence_penalty\": 0.4, \"logit_bias\": {\"77\": 2.5}, \"min_tokens\": "
             "3, \"stop_token_ids\": [%d]}\n", stop_id);
    cli_write("p.jsonl", job);
    cr_assert_eq(cli_run("generate --model %s --prompts p.jsonl --out p.out --quiet", dir), 0,
                 "%s", cli_err);
    cJSON *r = first_record("p.out");
    const cJSON *tk = cJSON_GetObjectItem(r, "tokens"), *lp = cJSON_GetObjectItem(r, "logprobs");
    int n = cJSON_GetArraySize(tk);
    cr_assert_geq(n, 3, "min_tokens 3: %d tokens", n);
    int32_t seq[64], out[32];
    memcpy(seq, prompt, sizeof prompt);
    for (int i = 0; i < n; i++)
        seq[np + i] = out[i] = int_at(tk, i);
    int V = 0;
    {
        char *cfg = NULL;
        cJSON *c = NULL;
        char path[512];
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = fopen(path, "rb");
        cr_assert(f);
        cfg = calloc(1, 1 << 16);
        cr_assert(fread(cfg, 1, (1 << 16) - 1, f) > 0);
        fclose(f);
        c = cJSON_Parse(cfg);
        V = cJSON_GetObjectItem(c, "vocab_size")->valueint;
        int32_t eos = cJSON_GetObjectItem(c, "eos_token_id")->valueint;
        cJSON_Delete(c);
        free(cfg);
        float *x = malloc(sizeof(float) * (size_t)(np + n) * V);
        golden_logits(&be, dir, seq, np + n, x);
        for (int i = 0; i < n; i++) {
            const float *row = x + (size_t)(np + i - 1) * V;
            int32_t ban[2] = {eos, stop_id};
            int want = reference_choice(row, V, prompt, np, out, i, 1.7f, 0.6f, 0.4f, 77, 2.5f,
                                        ban, i < 3 ? 2 : 0);
            cr_assert_eq(out[i], want, "token %d: %d, the reference picks %d", i, out[i], want);
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < V; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < V; v++)
                sum += exp(row[v] - mx);
            double want_lp = row[out[i]] - mx - log(sum);
            cr_assert_float_eq(cJSON_GetArrayItem(lp, i)->valuedouble, want_lp, 1e-4,
                               "logprob %d", i);
        }
        free(x);
    }
    /* the job stopped at the stop id (once allowed) or ran to its length */
    const char *fin = cJSON_GetObjectItem(r, "finish_reason")->valuestring;
    if (out[n - 1] == stop_id) {
        cr_assert_str_eq(fin, "stop");
        cr_assert_eq(cJSON_GetObjectItem(r, "stop_reason")->valueint, stop_id);
    } else {
        cr_assert_eq(n, 14, "%s after %d tokens", fin, n);
    }
    cJSON_Delete(r);
}

/* A stop string that spans a token boundary ends the completion at the
 * token that completes it; the text stops before it (or includes it with
 * include_stop_str_in_output); text before min_tokens never stops it. */
Test(sampling, stop_strings_split_over_tokens)
{
    cli_write("a.jsonl", "{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": "
                         "\"/v1/completions\", \"body\": {\"prompt\": \"And the LORD said\", "
                         "\"max_tokens\": 16, \"logprobs\": 0}}\n");
    cr_assert_eq(cli_run("generate --model " KJV " --prompts a.jsonl --out a.out --quiet"), 0,
                 "%s", cli_err);
    cJSON *r = first_record("a.out");
    const cJSON *ch = cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "response"), "body"),
                            "choices"), 0);
    const char *text = cJSON_GetObjectItem(ch, "text")->valuestring;
    const cJSON *toks = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "tokens");
    const cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "text_offset");
    /* a boundary k with at least two bytes on each side, ASCII */
    int k = 0, nt = cJSON_GetArraySize(toks);
    for (int i = 1; i < nt && !k; i++) {
        const char *a = cJSON_GetArrayItem(toks, i - 1)->valuestring;
        const char *b = cJSON_GetArrayItem(toks, i)->valuestring;
        if (strlen(a) >= 2 && strlen(b) >= 2 && (unsigned char)a[strlen(a) - 1] < 128 &&
            (unsigned char)b[0] < 128 && (unsigned char)b[1] < 128)
            k = i;
    }
    cr_assert(k > 0, "no token boundary to split in \"%s\"", text);
    int at = int_at(offs, k); /* text offset of token k */
    char stop[8];
    snprintf(stop, sizeof stop, "%.1s%.2s", text + at - 1, text + at);
    char *first = strstr(text, stop);
    cr_assert(first);
    int cut = (int)(first - text);
    /* the token that completes the first occurrence */
    int end_tok = 0;
    while (end_tok + 1 < nt && int_at(offs, end_tok + 1) < cut + 3)
        end_tok++;
    char job[1024];
    cJSON *sj = cJSON_CreateString(stop);
    char *stop_json = cJSON_PrintUnformatted(sj);
    snprintf(job, sizeof job,
             "{\"custom_id\": \"s\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
             "\"body\": {\"prompt\": \"And the LORD said\", \"max_tokens\": 16, \"stop\": "
             "[\"zzzz\", %s], \"logprobs\": 0}}\n"
             "{\"custom_id\": \"i\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
             "\"body\": {\"prompt\": \"And the LORD said\", \"max_tokens\": 16, \"stop\": %s, "
             "\"include_stop_str_in_output\": true}}\n"
             "{\"custom_id\": \"m\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
             "\"body\": {\"prompt\": \"And the LORD said\", \"max_tokens\": 16, \"stop\": %s, "
             "\"min_tokens\": %d}}\n",
             stop_json, stop_json, stop_json, end_tok + 2);
    cli_write("s.jsonl", job);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts s.jsonl --out s.out --quiet"), 0,
                 "%s", cli_err);
    for (int i = 0; i < 3; i++) {
        cJSON *o = record("s.out", i);
        const cJSON *c = cJSON_GetArrayItem(
            cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "response"), "body"),
                                "choices"), 0);
        const char *got = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *fin = cJSON_GetObjectItem(c, "finish_reason")->valuestring;
        const cJSON *usage = cJSON_GetObjectItem(
            cJSON_GetObjectItem(cJSON_GetObjectItem(o, "response"), "body"), "usage");
        int n_gen = cJSON_GetObjectItem(usage, "completion_tokens")->valueint;
        if (i < 2) {
            cr_assert_str_eq(fin, "stop");
            cr_assert_str_eq(cJSON_GetObjectItem(c, "stop_reason")->valuestring, stop);
            cr_assert_eq(n_gen, end_tok + 1, "stopped after %d tokens, want %d", n_gen,
                         end_tok + 1);
            cr_assert_eq((int)strlen(got), cut + (i == 1 ? 3 : 0), "\"%s\" vs \"%s\"", got,
                         text);
            cr_assert_eq(strncmp(got, text, strlen(got)), 0);
        } else { /* min_tokens past the token completing the first occurrence */
            cr_assert_gt(n_gen, end_tok + 1, "%s", got);
            cr_assert_geq((int)strlen(got), cut + 3);
        }
        cJSON_Delete(o);
    }
    free(stop_json);
    cJSON_Delete(sj);
    cJSON_Delete(r);
}

/* n completions of one request (one prefill, the cache copied) equal n
 * separate requests with seeds S, S + 1, ...: sampled, with H2O over
 * several tiers, 4-bit KV, CPU attention, GQA (tiny-llama) and learned
 * positions (tiny-opt). */
Test(sampling, n_completions_equal_separate_runs_with_seed_s_plus_j)
{
    cli_write("n.jsonl", "{\"id\": \"q\", \"prompt_ids\": [1, 45, 300, 17, 9, 33, 2, 71], "
                         "\"n\": 3, \"seed\": 40, \"max_new_tokens\": 12}\n"
                         "{\"id\": \"r\", \"prompt_ids\": [1, 5, 6], \"n\": 2, \"seed\": 7, "
                         "\"max_new_tokens\": 7}\n");
    cli_write("s.jsonl", "{\"id\": \"q\", \"prompt_ids\": [1, 45, 300, 17, 9, 33, 2, 71], "
                         "\"seed\": 40, \"max_new_tokens\": 12}\n"
                         "{\"id\": \"r\", \"prompt_ids\": [1, 5, 6], \"seed\": 7, "
                         "\"max_new_tokens\": 7}\n");
    cli_write("s1.jsonl", "{\"id\": \"q\", \"prompt_ids\": [1, 45, 300, 17, 9, 33, 2, 71], "
                          "\"seed\": 41, \"max_new_tokens\": 12}\n"
                          "{\"id\": \"r\", \"prompt_ids\": [1, 5, 6], \"seed\": 8, "
                          "\"max_new_tokens\": 7}\n");
    cli_write("s2.jsonl", "{\"id\": \"q\", \"prompt_ids\": [1, 45, 300, 17, 9, 33, 2, 71], "
                          "\"seed\": 42, \"max_new_tokens\": 12}\n");
    static const struct {
        const char *model, *flags;
    } runs[] = {
        {"tiny-llama", "--batch-size 4"},
        {"tiny-llama", "--batch-size 2 --num-gpu-batches 3 --kv-policy h2o --kv-budget 10 "
                       "--sinks 1 --percent 100 0 30 40 100 0 --offload-dir off"},
        {"tiny-llama", "--batch-size 5 --kv-policy h2o --kv-ratio 0.5 --compress-cache "
                       "--percent 100 0 0 100 100 0 --cpu-attention"},
        {"tiny-opt", "--batch-size 3 --kv-policy window --kv-budget 6 --percent 100 0 50 50 100 0"},
    };
    char off[600];
    snprintf(off, sizeof off, "%s/off", cli_dir);
    cr_assert_eq(mkdir(off, 0700), 0);
    for (size_t k = 0; k < sizeof runs / sizeof *runs; k++) {
        const char *names[] = {"n", "s", "s1", "s2"};
        for (int f = 0; f < 4; f++) {
            cr_assert_eq(cli_run("generate --model " FIX "%s --prompts %s.jsonl --out %s%zu.out "
                                 "--temperature 0.9 --ignore-eos --quiet --no-summary %s",
                                 runs[k].model, names[f], names[f], k, runs[k].flags), 0,
                         "%s %s: %s", runs[k].model, runs[k].flags, cli_err);
        }
        for (int q = 0; q < 2; q++) {
            char name[32];
            snprintf(name, sizeof name, "n%zu.out", k);
            cJSON *nr = record(name, q);
            const cJSON *choices = cJSON_GetObjectItem(nr, "choices");
            cr_assert_eq(cJSON_GetArraySize(choices), q ? 2 : 3);
            for (int j = 0; j < cJSON_GetArraySize(choices); j++) {
                snprintf(name, sizeof name, "%s%zu.out", j ? (j == 1 ? "s1" : "s2") : "s", k);
                cJSON *sr = record(name, q);
                char *a = cJSON_PrintUnformatted(
                    cJSON_GetObjectItem(cJSON_GetArrayItem(choices, j), "tokens"));
                char *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(sr, "tokens"));
                cr_assert_str_eq(a, b, "%s %s: request %d sample %d", runs[k].model,
                                 runs[k].flags, q, j);
                free(a);
                free(b);
                cJSON_Delete(sr);
            }
            cJSON_Delete(nr);
        }
    }
}

/* Top logprobs: descending, the greedy choice first with its own
 * logprob, as many as asked. */
Test(sampling, top_logprobs_are_the_most_probable_descending)
{
    cli_write("t.jsonl", "{\"id\": 1, \"prompt_ids\": [1, 45, 300], \"max_new_tokens\": 6, "
                         "\"top_logprobs\": 5}\n");
    cr_assert_eq(cli_run("generate --model " FIX "tiny-qwen2 --prompts t.jsonl --out t.out "
                         "--quiet --ignore-eos"), 0, "%s", cli_err);
    cJSON *r = first_record("t.out");
    const cJSON *top = cJSON_GetObjectItem(r, "top_logprobs");
    const cJSON *tk = cJSON_GetObjectItem(r, "tokens"), *lp = cJSON_GetObjectItem(r, "logprobs");
    cr_assert_eq(cJSON_GetArraySize(top), 6);
    for (int i = 0; i < 6; i++) {
        const cJSON *row = cJSON_GetArrayItem(top, i);
        cr_assert_eq(cJSON_GetArraySize(row), 5);
        cr_assert_eq(int_at(cJSON_GetArrayItem(row, 0), 0), int_at(tk, i));
        cr_assert_float_eq(cJSON_GetArrayItem(cJSON_GetArrayItem(row, 0), 1)->valuedouble,
                           cJSON_GetArrayItem(lp, i)->valuedouble, 1e-6);
        for (int k = 1; k < 5; k++)
            cr_assert_leq(cJSON_GetArrayItem(cJSON_GetArrayItem(row, k), 1)->valuedouble,
                          cJSON_GetArrayItem(cJSON_GetArrayItem(row, k - 1), 1)->valuedouble);
    }
    cJSON_Delete(r);
}

/* A model directory without tokenizer files runs a job of token ids (ids
 * and logprobs, empty text) and says so once; a text prompt is then a
 * bad line. --quiet keeps the end-of-run summary, --no-summary drops it,
 * and the progress line waits for a rate before it gives one. */
Test(sampling, what_a_new_user_hits_first)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/m && cp " FIX "tiny-opt/config.json " FIX
             "tiny-opt/model.safetensors %s/m/", cli_dir, cli_dir);
    cr_assert_eq(system(cmd), 0);
    cli_write("ids.jsonl", "{\"id\": 1, \"prompt_ids\": [2, 100, 200], \"max_new_tokens\": 4}\n"
                           "{\"id\": 2, \"prompt\": \"text\"}\n");
    int rc = cli_run("generate --model m --prompts ids.jsonl --out o.jsonl --quiet "
                     "--ignore-eos");
    cr_assert_eq(rc, 3, "%s", cli_err);
    cr_assert(strstr(cli_err, "m: no tokenizer files"), "%s", cli_err);
    cr_assert(strstr(cli_err, "ids.jsonl:2: text prompt but the model has no tokenizer"), "%s",
              cli_err);
    cr_assert(strstr(cli_err, "1 prompts on cpu"), "--quiet keeps the summary: %s", cli_err);
    cJSON *r = first_record("o.jsonl");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(r, "tokens")), 4);
    cr_assert_str_eq(cJSON_GetObjectItem(r, "completion")->valuestring, "");
    cJSON_Delete(r);
    cli_write("ids2.jsonl", "{\"id\": 1, \"prompt_ids\": [2, 100, 200], \"max_new_tokens\": 4}\n");
    cr_assert_eq(cli_run("generate --model m --prompts ids2.jsonl --out o2.jsonl --quiet "
                         "--no-summary"), 0, "%s", cli_err);
    cr_assert_null(strstr(cli_err, "prompts on cpu"), "%s", cli_err);
    cr_assert_null(strstr(cli_err, "ETA > "), "%s", cli_err);
    /* n completions that a block cannot hold: the line, n and the block, in English */
    cli_write("n2.jsonl", "{\"id\": 1, \"prompt_ids\": [2, 100], \"n\": 2}\n");
    cr_assert_eq(cli_run("generate --model m --prompts n2.jsonl --out o3.jsonl --quiet "
                         "--batch-size 1 --strict"), 2, "%s", cli_err);
    cr_assert(strstr(cli_err, "line 1: n = 2 completions, but a block holds 1 sequence; lower n "
                              "or raise --batch-size"), "%s", cli_err);
}

/* Each out-of-range sampling control is named with the range it must be
 * in, open where the bound itself is refused: top_p 0 and top_p 1.5 give
 * the same "(0, 1]" (1.5 said "[0, 1]", a range that 0 is not in), a
 * top_p that is 0 as a float is refused as 0 is, and a seed past 64 bits
 * says which integers are seeds. */
Test(sampling, each_bad_control_names_its_range)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/m && cp " FIX "tiny-opt/config.json " FIX
             "tiny-opt/model.safetensors %s/m/", cli_dir, cli_dir);
    cr_assert_eq(system(cmd), 0);
    cli_write("p.jsonl",
              "{\"id\": 1, \"prompt_ids\": [2, 5], \"top_p\": 0}\n"
              "{\"id\": 2, \"prompt_ids\": [2, 5], \"top_p\": 1.5}\n"
              "{\"id\": 3, \"prompt_ids\": [2, 5], \"top_p\": 1e-50}\n"
              "{\"id\": 4, \"prompt_ids\": [2, 5], \"repetition_penalty\": 0}\n"
              "{\"id\": 5, \"prompt_ids\": [2, 5], \"repetition_penalty\": 101}\n"
              "{\"id\": 6, \"prompt_ids\": [2, 5], \"seed\": 18446744073709551615}\n"
              "{\"id\": 7, \"prompt_ids\": [2, 5], \"top_p\": 1e-30, \"seed\": -5, "
              "\"temperature\": 0.5, \"max_new_tokens\": 2}\n");
    int rc = cli_run("generate --model m --prompts p.jsonl --out o.jsonl --quiet --no-summary");
    cr_assert_eq(rc, 3, "%s", cli_err);
    static const char *want[] = {
        "p.jsonl:1: \"top_p\" must be a number in (0, 1]",
        "p.jsonl:2: \"top_p\" must be a number in (0, 1]",
        "p.jsonl:3: \"top_p\" must be a number in (0, 1]",
        "p.jsonl:4: \"repetition_penalty\" must be a number in (0, 100]",
        "p.jsonl:5: \"repetition_penalty\" must be a number in (0, 100]",
        "p.jsonl:6: \"seed\" must be an integer in [-2^63, 2^63)",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert(strstr(cli_err, want[i]), "want %s in: %s", want[i], cli_err);
    cr_assert_null(strstr(cli_err, "p.jsonl:7"), "%s", cli_err);
    cJSON *r = first_record("o.jsonl");
    cr_assert_eq(cJSON_GetObjectItem(r, "id")->valueint, 7);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(r, "tokens")), 2);
    cJSON_Delete(r);
}
