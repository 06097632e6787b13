/* test_openai.c: OpenAI batch files through `flexh2o generate` (src/gen/
 * job_openai.c): the same tokens as the native format, output lines of the
 * `openai` package's own types (tests/fixtures/check_openai_output.py, run
 * where Python has `openai`), one error line per bad request while the job
 * goes on, and --resume keyed on custom_id. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "fh_config.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"
#define KJV FH_SOURCE_ROOT "/configs/kjv-llama"

TestSuite(openai, .init = cli_setup, .fini = cli_teardown);

/* The lines of cli_dir/name parsed (asserts each is JSON); *n gets their
 * count. Free with free_lines. */
static cJSON **read_lines(const char *name, int *n)
{
    char *text = cli_read(name);
    cJSON **out = calloc(256, sizeof *out);
    *n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cr_assert_lt(*n, 256);
        out[*n] = cJSON_Parse(line);
        cr_assert(out[*n], "%s line %d is not JSON: %s", name, *n + 1, line);
        (*n)++;
    }
    free(text);
    return out;
}

static void free_lines(cJSON **l, int n)
{
    for (int i = 0; i < n; i++)
        cJSON_Delete(l[i]);
    free(l);
}

/* o's member at a path of object keys and array indices ("response.body.
 * choices.0.text"). */
static const cJSON *at(const cJSON *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *k = strtok(buf, "."); k && o; k = strtok(NULL, "."))
        o = (*k >= '0' && *k <= '9') ? cJSON_GetArrayItem(o, atoi(k))
                                     : cJSON_GetObjectItemCaseSensitive(o, k);
    return o;
}

static const char *str_at(const cJSON *o, const char *path)
{
    const cJSON *x = at(o, path);
    cr_assert(cJSON_IsString(x), "no string at %s", path);
    return x->valuestring;
}

static double num_at(const cJSON *o, const char *path)
{
    const cJSON *x = at(o, path);
    cr_assert(cJSON_IsNumber(x), "no number at %s", path);
    return x->valuedouble;
}

/* Validate cli_dir/name with the openai package's types where Python has
 * it (exit 2 of the script: missing package, then only logged). */
static void validate_with_openai(const char *name)
{
    const char *py = getenv("FLEXH2O_PYTHON");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd %s && %s " FIX "check_openai_output.py %s >check.txt 2>&1",
             cli_dir, py && *py ? py : "python3", name);
    int st = system(cmd);
    char *log = cli_read("check.txt");
    if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
        cr_log_info("openai types not checked (no `openai` in Python; set FLEXH2O_PYTHON): %s",
                    log);
    } else {
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: %s", name, log);
    }
    free(log);
}

/* The same requests in both formats: the completions' text and logprobs
 * agree, token for token, greedy and sampled (the draw depends on the id
 * and custom_id alike), and the output validates. */
Test(openai, same_tokens_as_the_native_format_and_valid_lines)
{
    cli_write("native.jsonl",
              "{\"id\": \"a\", \"prompt\": \"In the beginning\", \"max_new_tokens\": 8}\n"
              "{\"id\": \"b\", \"prompt_ids\": [1, 200, 300], \"max_new_tokens\": 6, "
              "\"temperature\": 0.9, \"top_p\": 0.95, \"seed\": 11}\n"
              "{\"id\": \"c\", \"prompt\": \"And God said\", \"max_new_tokens\": 5, "
              "\"top_logprobs\": 3}\n");
    cli_write("batch.jsonl",
              "{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"model\": \"kjv\", \"prompt\": \"In the beginning\", "
              "\"max_tokens\": 8, \"logprobs\": 0}}\n"
              "{\"custom_id\": \"b\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": [1, 200, 300], \"max_tokens\": 6, \"temperature\": 0.9, "
              "\"top_p\": 0.95, \"seed\": 11, \"logprobs\": 0}}\n"
              "{\"custom_id\": \"c\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": \"And God said\", \"max_tokens\": 5, \"logprobs\": 3}}\n");
    cr_assert_eq(cli_run("generate --model " KJV " --prompts native.jsonl --out n.jsonl "
                         "--quiet --no-summary"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts batch.jsonl --out o.jsonl "
                         "--quiet --no-summary"), 0, "%s", cli_err);
    int nn, no;
    cJSON **n = read_lines("n.jsonl", &nn), **o = read_lines("o.jsonl", &no);
    cr_assert_eq(nn, 3);
    cr_assert_eq(no, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(str_at(o[i], "custom_id"), str_at(n[i], "id"));
        cr_assert_eq(num_at(o[i], "response.status_code"), 200);
        cr_assert(cJSON_IsNull(at(o[i], "error")));
        cr_assert_str_eq(str_at(o[i], "response.body.object"), "text_completion");
        cr_assert_str_eq(str_at(o[i], "response.body.choices.0.text"),
                         str_at(n[i], "completion"));
        const cJSON *lp = at(n[i], "logprobs");
        const cJSON *olp = at(o[i], "response.body.choices.0.logprobs.token_logprobs");
        cr_assert_eq(cJSON_GetArraySize(olp), cJSON_GetArraySize(lp));
        cr_assert_eq(num_at(o[i], "response.body.usage.completion_tokens"),
                     cJSON_GetArraySize(lp));
        for (int k = 0; k < cJSON_GetArraySize(lp); k++)
            cr_assert_float_eq(cJSON_GetArrayItem(olp, k)->valuedouble,
                               cJSON_GetArrayItem(lp, k)->valuedouble, 1e-6);
    }
    cr_assert_str_eq(str_at(o[0], "response.body.model"), "kjv");
    /* top logprobs: native [[id, lp], ...] and OpenAI {text: lp} hold the
     * same values, the first the greedy choice itself */
    const cJSON *nt = at(n[2], "top_logprobs.0"), *ot = at(o[2],
                                                          "response.body.choices.0.logprobs."
                                                          "top_logprobs.0");
    cr_assert_eq(cJSON_GetArraySize(nt), 3);
    cr_assert_eq(cJSON_GetArrayItem(nt, 0)->child->valueint,
                 cJSON_GetArrayItem(at(n[2], "tokens"), 0)->valueint);
    cr_assert_float_eq(num_at(n[2], "top_logprobs.0.0.1"), num_at(n[2], "logprobs.0"), 1e-6);
    cr_assert_eq(cJSON_GetArraySize(ot), 3);
    free_lines(n, nn);
    free_lines(o, no);
    validate_with_openai("o.jsonl");
}

/* Every bad request gets its error line, in its place and naming the
 * field, and the others complete; a line without custom_id is reported
 * and skipped (exit 3). */
Test(openai, each_bad_request_gets_its_error_line_and_the_job_goes_on)
{
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"\"prompt\": \"x\", \"temperature\": -1", "temperature"},
        {"\"prompt\": \"x\", \"top_p\": 0", "top_p"},
        {"\"prompt\": \"x\", \"n\": 0", "n"},
        {"\"prompt\": \"x\", \"max_tokens\": 2147483647", "max_tokens"},
        {"\"prompt\": \"x\", \"max_tokens\": 1.5", "max_tokens"},
        {"\"prompt\": \"x\", \"stop\": [\"\"]", "stop"},
        {"\"prompt\": \"x\", \"stop_token_ids\": [99999999]", "stop_token_ids"},
        {"\"prompt\": \"x\", \"logit_bias\": {\"a\": 1}", "logit_bias"},
        {"\"prompt\": \"x\", \"logprobs\": 21", "logprobs"},
        {"\"prompt\": \"x\", \"echo\": true", "echo"},
        {"\"prompt\": \"x\", \"suffix\": \"y\"", "suffix"},
        {"\"prompt\": \"x\", \"best_of\": 3", "best_of"},
        {"\"prompt\": \"x\", \"frobnicate\": 1", "frobnicate"},
        {"\"prompt\": [\"a\", \"b\"]", "prompt"},
        {"\"prompt\": [1, -4]", "prompt"},
        {"\"prompt\": 7", "prompt"},
        {"\"prompt\": \"x\", \"repetition_penalty\": 0", "repetition_penalty"},
        {"\"prompt\": \"x\", \"seed\": 0.5", "seed"},
        {"\"prompt\": \"x\", \"n\": 3000", "n"},
        {"\"prompt\": \"x\", \"n\": 64", "n"}, /* more than a block of 8 */
        {"\"prompt\": \"x\", \"max_tokens\": 5000", "max_tokens"}, /* past the positions */
    };
    enum { NB = sizeof bad / sizeof *bad };
    char job[16384] = "";
    for (int i = 0; i <= NB; i++) {
        char line[512];
        if (i == NB / 2) /* a good one in the middle, another at the end */
            snprintf(line, sizeof line, "{\"custom_id\": \"ok1\", \"method\": \"POST\", \"url\": "
                     "\"/v1/completions\", \"body\": {\"prompt\": \"In\", \"max_tokens\": 3}}\n");
        else if (i == NB)
            snprintf(line, sizeof line, "{\"custom_id\": \"ok2\", \"method\": \"POST\", \"url\": "
                     "\"/v1/completions\", \"body\": {\"prompt\": \"The\", \"max_tokens\": 3}}\n");
        else
            line[0] = 0;
        strcat(job, line);
        if (i < NB) {
            snprintf(line, sizeof line, "{\"custom_id\": \"bad%d\", \"method\": \"POST\", \"url\": "
                     "\"/v1/completions\", \"body\": {%s}}\n", i, bad[i].body);
            strcat(job, line);
        }
    }
    /* the request's own faults */
    strcat(job, "{\"custom_id\": \"u\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", "
                "\"body\": {\"input\": \"x\"}}\n"
                "{\"custom_id\": \"m\", \"method\": \"GET\", \"url\": \"/v1/completions\", "
                "\"body\": {}}\n"
                "{\"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": {}}\n");
    cli_write("bad.jsonl", job);
    int rc = cli_run("generate --model " KJV " --prompts bad.jsonl --out o.jsonl --quiet "
                     "--batch-size 8");
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    char want[128];
    snprintf(want, sizeof want, "bad.jsonl:%d: an OpenAI batch request needs \"custom_id\"",
             NB + 5);
    cr_assert(strstr(cli_err, want), "%s", cli_err);
    int n;
    cJSON **l = read_lines("o.jsonl", &n);
    cr_assert_eq(n, NB + 4);
    int seen_ok = 0;
    for (int i = 0; i < n; i++) {
        const char *cid = str_at(l[i], "custom_id");
        if (!strncmp(cid, "ok", 2)) {
            cr_assert_eq(num_at(l[i], "response.status_code"), 200, "%s", cid);
            seen_ok++;
            continue;
        }
        cr_assert_eq(num_at(l[i], "response.status_code"), 400, "%s", cid);
        cr_assert(cJSON_IsString(at(l[i], "response.body.error.message")));
        cr_assert(cJSON_IsString(at(l[i], "error.message")));
        if (!strncmp(cid, "bad", 3)) {
            int k = atoi(cid + 3);
            cr_assert_str_eq(str_at(l[i], "error.param"), bad[k].param, "%s (%s): %s", cid,
                             bad[k].body, str_at(l[i], "error.message"));
        }
    }
    cr_assert_eq(seen_ok, 2);
    /* input order: ok1 sits after the first half of the bad ones */
    cr_assert_str_eq(str_at(l[NB / 2], "custom_id"), "ok1");
    free_lines(l, n);
    validate_with_openai("o.jsonl");
}

/* --resume keys on custom_id: a job cut after two records and a torn
 * third ends byte-identical to the uninterrupted one (SOURCE_DATE_EPOCH
 * fixes "created"); chat and completion lines alike. */
Test(openai, resume_keys_on_custom_id)
{
    char job[4096] = "";
    for (int i = 0; i < 5; i++) {
        char line[512];
        snprintf(line, sizeof line, "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": "
                 "\"/v1/completions\", \"body\": {\"prompt\": \"And the LORD\", \"max_tokens\": "
                 "%d, \"temperature\": 0.7, \"n\": %d}}\n", i, 3 + i, 1 + i % 2);
        strcat(job, line);
    }
    cli_write("r.jsonl", job);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts r.jsonl --out full.jsonl --quiet "
                         "--seed 3"), 0, "%s", cli_err);
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts r.jsonl --out a.jsonl --quiet "
                         "--seed 3"), 0, "%s", cli_err);
    char *full = cli_read("a.jsonl");
    char *cut = strchr(strchr(full, '\n') + 1, '\n') + 1; /* after two records */
    char part[8192];
    snprintf(part, sizeof part, "%.*s%.20s", (int)(cut - full), full, cut);
    cli_write("b.jsonl", part);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts r.jsonl --out b.jsonl --quiet "
                         "--seed 3 --resume"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "dropping a torn last record"), "%s", cli_err);
    char *resumed = cli_read("b.jsonl");
    cr_assert_str_eq(resumed, full);
    unsetenv("SOURCE_DATE_EPOCH");
    free(full);
    free(resumed);
}

/* A Qwen2-shaped model with the tok-qwen2 tokenizer (ChatML's special
 * tokens), random weights: cli_dir/chat. */
static void make_chat_model(void)
{
    char *cfg = NULL;
    {
        FILE *f = fopen(FIX "tiny-qwen2/config.json", "rb");
        cr_assert(f);
        cfg = calloc(1, 1 << 14);
        cr_assert(fread(cfg, 1, (1 << 14) - 1, f) > 0);
        fclose(f);
    }
    char *v = strstr(cfg, "\"vocab_size\": 512");
    cr_assert(v);
    memcpy(v, "\"vocab_size\": 960", 17);
    cli_write("chat-config.json", cfg);
    free(cfg);
    cr_assert_eq(cli_run("make-model --config chat-config.json --out chat --seed 5"), 0, "%s",
                 cli_err);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp " FIX "tok-qwen2/tokenizer.json " FIX
             "tok-qwen2/tokenizer_config.json %s/chat/", cli_dir);
    cr_assert_eq(system(cmd), 0);
}

/* Chat requests: the messages rendered with the chosen template give the
 * same completion as a /v1/completions request of the text transformers'
 * apply_chat_template renders (Qwen2.5's ChatML, no BOS); the output is a
 * chat.completion; without a template the request gets its error line;
 * an unknown --chat-template is a usage error naming the choices. */
Test(openai, chat_messages_through_the_template)
{
    make_chat_model();
    cli_write("c.jsonl",
              "{\"custom_id\": \"chat\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
              "\"body\": {\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
              "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"}, "
              "{\"type\": \"text\", \"text\": \" there\"}]}], \"max_completion_tokens\": 6, "
              "\"logprobs\": true, \"top_logprobs\": 2}}\n"
              "{\"custom_id\": \"text\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": \"<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>"
              "user\\nHello there<|im_end|>\\n<|im_start|>assistant\\n\", \"max_tokens\": 6, "
              "\"logprobs\": 2}}\n");
    cr_assert_eq(cli_run("generate --model chat --prompts c.jsonl --out c.out --quiet "
                         "--ignore-eos --chat-template qwen2.5"), 0, "%s", cli_err);
    int n;
    cJSON **l = read_lines("c.out", &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(str_at(l[0], "response.body.object"), "chat.completion");
    cr_assert_str_eq(str_at(l[0], "response.body.choices.0.message.role"), "assistant");
    cr_assert_str_eq(str_at(l[0], "response.body.choices.0.message.content"),
                     str_at(l[1], "response.body.choices.0.text"));
    cr_assert_eq(num_at(l[0], "response.body.usage.prompt_tokens"),
                 num_at(l[1], "response.body.usage.prompt_tokens"));
    for (int k = 0; k < 6; k++) {
        char p0[128], p1[128];
        snprintf(p0, sizeof p0, "response.body.choices.0.logprobs.content.%d.logprob", k);
        snprintf(p1, sizeof p1, "response.body.choices.0.logprobs.token_logprobs.%d", k);
        cr_assert_float_eq(num_at(l[0], p0), num_at(l[1], p1), 1e-6, "token %d", k);
    }
    /* a native line with the same messages */
    cli_write("cn.jsonl", "{\"id\": \"chat\", \"messages\": [{\"role\": \"system\", \"content\": "
                          "\"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hello there\"}], "
                          "\"max_new_tokens\": 6}\n");
    cr_assert_eq(cli_run("generate --model chat --prompts cn.jsonl --out cn.out --quiet "
                         "--ignore-eos --chat-template qwen2.5"), 0, "%s", cli_err);
    int nn;
    cJSON **ln = read_lines("cn.out", &nn);
    cr_assert_str_eq(str_at(ln[0], "completion"),
                     str_at(l[0], "response.body.choices.0.message.content"));
    free_lines(ln, nn);
    free_lines(l, n);
    validate_with_openai("c.out");

    /* no template in the model and none chosen: the chat line's error */
    cr_assert_eq(cli_run("generate --model chat --prompts c.jsonl --out d.out --quiet"), 0, "%s",
                 cli_err);
    l = read_lines("d.out", &n);
    cr_assert_eq(num_at(l[0], "response.status_code"), 400);
    cr_assert_str_eq(str_at(l[0], "error.param"), "messages");
    cr_assert(strstr(str_at(l[0], "error.message"), "the model has no chat template; pass "
                                                    "--chat-template NAME"));
    cr_assert_eq(num_at(l[1], "response.status_code"), 200);
    free_lines(l, n);
    cr_assert_eq(cli_run("generate --model chat --prompts c.jsonl --out e.out "
                         "--chat-template qwen9"), 2);
    cr_assert(strstr(cli_err, "unknown chat template \"qwen9\"") && strstr(cli_err, "llama3"),
              "%s", cli_err);

    /* a message refused before rendering keeps its reason (each of these
     * once got an error line with an empty message) */
    static const struct {
        const char *msg, *why;
    } bad[] = {
        {"{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {}}]}",
         "messages[0].content: only text parts"},
        {"{\"content\": \"hi\"}", "messages[0] needs a \"role\" string"},
        {"{\"role\": \"user\", \"content\": \"hi\", \"tool_calls\": []}",
         "messages[0].tool_calls is not available"},
        {"{\"role\": \"user\", \"content\": 5}",
         "messages[0].content must be a string or an array of text parts"},
        {"{\"role\": \"wizard\", \"content\": \"hi\"}", "has role \"wizard\""},
    };
    char job[4096] = "";
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        snprintf(job + strlen(job), sizeof job - strlen(job),
                 "{\"custom_id\": \"b%zu\", \"method\": \"POST\", \"url\": "
                 "\"/v1/chat/completions\", \"body\": {\"messages\": [%s], \"max_tokens\": 2}}\n",
                 i, bad[i].msg);
    cli_write("b.jsonl", job);
    cr_assert_eq(cli_run("generate --model chat --prompts b.jsonl --out b.out --quiet "
                         "--chat-template qwen2.5"), 0, "%s", cli_err);
    l = read_lines("b.out", &n);
    cr_assert_eq(n, (int)(sizeof bad / sizeof *bad));
    for (int i = 0; i < n; i++) {
        cr_assert_eq(num_at(l[i], "response.status_code"), 400);
        const char *m = str_at(l[i], "response.body.error.message");
        cr_assert(strstr(m, bad[i].why), "line %d: want \"%s\", got \"%s\"", i + 1,
                  bad[i].why, m);
    }
    free_lines(l, n);
}

/* A real kill: `generate` of an OpenAI job into a .zst output, killed
 * with SIGKILL once records are flushed, then --resume: the output
 * decompresses to exactly the uninterrupted run's (one frame per record;
 * a frame cut by the kill is dropped and redone). Batches of one, so that
 * the resumed run's batches equal the first run's. */
Test(openai, killed_mid_job_then_resumed_loses_nothing)
{
    char job[16384] = "";
    for (int i = 0; i < 16; i++) {
        char line[512];
        snprintf(line, sizeof line, "{\"custom_id\": \"k%d\", \"method\": \"POST\", \"url\": "
                 "\"/v1/completions\", \"body\": {\"prompt\": \"And it came to pass\", "
                 "\"max_tokens\": 24, \"temperature\": 0.8, \"seed\": %d, \"logprobs\": 1}}\n",
                 i, i);
        strcat(job, line);
    }
    cli_write("k.jsonl", job);
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    cr_assert_eq(cli_run("generate --model " KJV " --prompts k.jsonl --out full.jsonl.zst "
                         "--quiet --batch-size 1 --ignore-eos"), 0, "%s", cli_err);
    cli_kill_once_written("k.jsonl.zst", 1500,
                          (const char *const[]){"generate", "--model", KJV, "--prompts",
                                                "k.jsonl", "--out", "k.jsonl.zst", "--quiet",
                                                "--batch-size", "1", "--ignore-eos", "--device",
                                                "cpu", NULL});
    cr_assert_eq(cli_run("generate --model " KJV " --prompts k.jsonl --out k.jsonl.zst --quiet "
                         "--batch-size 1 --ignore-eos --resume"), 0, "%s", cli_err);
    unsetenv("SOURCE_DATE_EPOCH");
    int nf_full, nf;
    char *want = cli_read_zst("full.jsonl.zst", &nf_full, NULL);
    char *got = cli_read_zst("k.jsonl.zst", &nf, NULL);
    cr_assert_eq(nf, 16);
    cr_assert_eq(nf_full, 16);
    cr_assert_str_eq(got, want);
    free(want);
    free(got);
}
