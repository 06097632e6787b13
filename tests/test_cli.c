/* test_cli.c: `flexh2o` end to end: generate against the golden tokens,
 * batching and sampling determinism, resume after a kill, and every bad
 * input with its one-line message and the output left intact. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "cli_harness.h"
#include "err.h"
#include "off.h"
#include "fh_config.h"
#include "model_config.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"

/* Parse a JSONL file into an array of records. */
static cJSON *records(const char *name)
{
    char *buf = cli_read(name);
    cJSON *arr = cJSON_CreateArray();
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *r = cJSON_Parse(line);
        cr_assert(r, "not JSON: %s", line);
        cJSON_AddItemToArray(arr, r);
    }
    free(buf);
    return arr;
}

/* The same generation, up to float rounding: ids, tokens, text and finish reasons
 * identical, logprobs within tol. Bit equality across batch sizes is not promised: the
 * BLAS picks its blocking from the number of rows, so a sum can round differently. */
static void assert_same_outputs(const char *fa, const char *fb, double tol)
{
    cJSON *a = records(fa), *b = records(fb);
    cr_assert_eq(cJSON_GetArraySize(a), cJSON_GetArraySize(b), "%s and %s: record counts", fa,
                 fb);
    for (int i = 0; i < cJSON_GetArraySize(a); i++) {
        cJSON *ra = cJSON_GetArrayItem(a, i), *rb = cJSON_GetArrayItem(b, i);
        const char *keys[] = {"id", "completion", "tokens", "finish_reason"};
        for (int k = 0; k < 4; k++) {
            char *x = cJSON_PrintUnformatted(cJSON_GetObjectItem(ra, keys[k]));
            char *y = cJSON_PrintUnformatted(cJSON_GetObjectItem(rb, keys[k]));
            cr_assert_str_eq(x, y, "%s vs %s, record %d: %s differs", fa, fb, i, keys[k]);
            free(x);
            free(y);
        }
        cJSON *la = cJSON_GetObjectItem(ra, "logprobs"), *lb = cJSON_GetObjectItem(rb, "logprobs");
        cr_assert_eq(cJSON_GetArraySize(la), cJSON_GetArraySize(lb));
        for (int j = 0; j < cJSON_GetArraySize(la); j++)
            cr_assert_float_eq(cJSON_GetArrayItem(la, j)->valuedouble,
                               cJSON_GetArrayItem(lb, j)->valuedouble, tol,
                               "%s vs %s, record %d, logprob %d", fa, fb, i, j);
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
}

static const char prompts5[] =
    "{\"id\": \"a\", \"prompt\": \"Hello world\"}\n"
    "{\"id\": 7, \"prompt_ids\": [2, 37, 101, 5, 300], \"max_new_tokens\": 8}\n"
    "{\"prompt\": \"The heavy hitters are kept.\", \"max_new_tokens\": 3}\n"
    "\n"
    "{\"id\": \"d\", \"prompt_ids\": [17, 18, 19], \"max_new_tokens\": 0}\n"
    "{\"id\": \"e\", \"prompt\": \"caf\\u00e9 \\u4e2d\\u6587 \\ud83d\\ude00\"}\n";

TestSuite(cli, .init = cli_setup, .fini = cli_teardown);

Test(cli, generate_matches_golden_and_is_batch_invariant)
{
    cli_write("p.jsonl", prompts5);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out b1.jsonl "
                     "--batch-size 1 --max-new-tokens 6 --quiet"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out b4.jsonl "
                     "--batch-size 4 --max-new-tokens 6 --quiet"), 0, "%s", cli_err);
    assert_same_outputs("b1.jsonl", "b4.jsonl", 1e-4);
    cJSON *r = records("b1.jsonl");
    cr_assert_eq(cJSON_GetArraySize(r), 5);
    /* input order, ids as given or {"line": N} */
    const char *ids[] = {"\"a\"", "7", "{\"line\":3}", "\"d\"", "\"e\""};
    for (int i = 0; i < 5; i++) {
        char *s = cJSON_PrintUnformatted(cJSON_GetObjectItem(cJSON_GetArrayItem(r, i), "id"));
        cr_assert_str_eq(s, ids[i]);
        free(s);
    }
    /* record 7 is golden case 1: [2, 37, 101, 5, 300] + 8 greedy tokens */
    char *g;
    cr_assert_eq(off_read_file(FH_SOURCE_ROOT "/tests/fixtures/tiny-opt-golden.json", &g,
                              NULL), 0);
    cJSON *gold = cJSON_Parse(g);
    free(g);
    cJSON *steps = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(gold, "cases"),
                                                          1), "steps");
    cJSON *rec = cJSON_GetArrayItem(r, 1);
    cJSON *toks = cJSON_GetObjectItem(rec, "tokens"), *lps = cJSON_GetObjectItem(rec, "logprobs");
    int n = cJSON_GetArraySize(toks);
    const char *fin = cJSON_GetObjectItem(rec, "finish_reason")->valuestring;
    int stop = 0; /* golden greedy tokens up to the first EOS */
    while (stop < 8 && cJSON_GetObjectItem(cJSON_GetArrayItem(steps, stop), "token")->valueint != 2)
        stop++;
    cr_assert_eq(n, stop < 8 ? stop + 1 : 8);
    cr_assert_str_eq(fin, stop < 8 ? "eos" : "length");
    for (int i = 0; i < n; i++) {
        cJSON *st = cJSON_GetArrayItem(steps, i);
        cr_assert_eq(cJSON_GetArrayItem(toks, i)->valueint,
                     cJSON_GetObjectItem(st, "token")->valueint, "token %d", i);
        cr_assert_float_eq(cJSON_GetArrayItem(lps, i)->valuedouble,
                           cJSON_GetObjectItem(st, "logprob")->valuedouble, 1e-4);
    }
    cJSON_Delete(gold);
    /* max_new_tokens 0 and 3 are honoured; completions are valid strings */
    cJSON *d = cJSON_GetArrayItem(r, 3);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(d, "tokens")), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(d, "finish_reason")->valuestring, "length");
    cJSON *c3 = cJSON_GetArrayItem(r, 2);
    cr_assert_leq(cJSON_GetArraySize(cJSON_GetObjectItem(c3, "tokens")), 3);
    for (int i = 0; i < 5; i++)
        cr_assert(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetArrayItem(r, i), "completion")));
    cJSON_Delete(r);
}

Test(cli, sampling_is_seeded_per_prompt)
{
    cli_write("p.jsonl", prompts5);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out s1.jsonl --quiet "
                     "--batch-size 1 --temperature 1.5 --top-p 0.95 --seed 7"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out s2.jsonl --quiet "
                     "--batch-size 3 --temperature 1.5 --top-p 0.95 --seed 7"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out s3.jsonl --quiet "
                     "--batch-size 3 --temperature 1.5 --top-p 0.95 --seed 8"), 0, "%s", cli_err);
    assert_same_outputs("s1.jsonl", "s2.jsonl", 1e-4);
    char *a = cli_read("s1.jsonl"), *c = cli_read("s3.jsonl");
    cr_assert_str_neq(a, c, "another seed gave the same samples");
    free(a);
    free(c);
}

/* --warm-up runs the first block to 2 tokens before the job and writes
 * nothing of it: the output, the eviction trace and --stats are the bytes
 * of a run without it, whatever the placement (three tiers, so the warm-up
 * streams through the disk tier too), sampling, KV policy and n; the
 * summary says what it took. */
Test(cli, warm_up_changes_no_byte_of_the_job)
{
    cli_write("p.jsonl", "{\"id\": \"a\", \"prompt\": \"Hello world\", \"n\": 2, "
                         "\"temperature\": 0.9}\n"
                         "{\"id\": 7, \"prompt_ids\": [2, 37, 101, 5, 300], \"max_new_tokens\": 8}\n"
                         "{\"prompt\": \"The heavy hitters are kept.\", \"max_new_tokens\": 1}\n"
                         "{\"id\": \"e\", \"prompt\": \"caf\\u00e9 \\u4e2d\\u6587\", "
                         "\"temperature\": 1.2, \"seed\": 3}\n");
    const char *job = "generate --model " TINY " --prompts p.jsonl --batch-size 3 "
                      "--max-new-tokens 6 --kv-policy h2o --kv-ratio 0.5 --sinks 1 --stats "
                      "--percent 30 30 34 33 100 0 --offload-dir off";
    cr_assert_eq(cli_sh("mkdir off"), 0);
    cr_assert_eq(cli_run("%s --out a.jsonl --trace-evictions a.ev --quiet", job), 0, "%s",
                 cli_err);
    cr_assert_eq(cli_sh("mv stdout.txt a.stats"), 0);
    cr_assert_eq(cli_run("%s --out b.jsonl --trace-evictions b.ev --quiet --warm-up", job), 0,
                 "%s", cli_err);
    cr_assert(strstr(cli_err, "--warm-up: the first block to 2 tokens in "), "%s", cli_err);
    cr_assert(strstr(cli_err, "4 prompts on cpu"), "the warm-up's prompts were counted: %s",
              cli_err);
    cr_assert_eq(cli_sh("cmp a.jsonl b.jsonl && cmp a.ev b.ev && cmp a.stats stdout.txt"), 0,
                 "--warm-up changed the job's output, eviction trace or --stats: %s", cli_err);
    /* and resuming a finished job warms up nothing and writes nothing */
    cr_assert_eq(cli_run("%s --out b.jsonl --resume --warm-up", job), 0, "%s", cli_err);
    cr_assert(!strstr(cli_err, "--warm-up:"), "%s", cli_err);
    cr_assert_eq(cli_sh("cmp a.jsonl b.jsonl"), 0);
}

Test(cli, resume_after_a_kill_loses_nothing)
{
    cli_write("p.jsonl", prompts5);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out full.jsonl --quiet"),
                 0, "%s", cli_err);
    char *full = cli_read("full.jsonl");
    /* a killed job: two complete records and a torn third */
    char *second = strchr(strchr(full, '\n') + 1, '\n') + 1;
    size_t keep = (size_t)(second - full) + 10;
    char *part = strndup(full, keep);
    cli_write("part.jsonl", part);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out part.jsonl --resume"),
                 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "torn last record"), "%s", cli_err);
    char *resumed = cli_read("part.jsonl");
    cr_assert_eq(strncmp(resumed, full, (size_t)(second - full)), 0,
                 "the two complete records were not kept as written");
    assert_same_outputs("part.jsonl", "full.jsonl", 1e-4);
    /* resuming a finished job does nothing */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out part.jsonl --resume "
                     "--quiet"), 0, "%s", cli_err);
    char *again = cli_read("part.jsonl");
    cr_assert_str_eq(again, resumed);
    free(full);
    free(part);
    free(resumed);
    free(again);
}

/* Resuming a job with 20000 of its 20004 prompts done: generate runs the
 * other four, in file order, and leaves the done records as they were
 * (job_out_has is asked once per prompt, by the shape, the run and the
 * trace: a set, not a scan of the file's ids). */
Test(cli, resume_with_many_done_prompts_runs_only_the_rest)
{
    enum { N = 20004, DONE = 20000 };
    char *p = malloc((size_t)N * 64), *o = malloc((size_t)DONE * 128);
    cr_assert(p && o);
    size_t np = 0, no = 0;
    for (int i = 0; i < N; i++) {
        char id[32];
        if (i % 3)
            snprintf(id, sizeof id, "%d", i);
        else
            snprintf(id, sizeof id, "\"q%d\"", i);
        np += (size_t)sprintf(p + np, "{\"id\": %s, \"prompt_ids\": [2, %d]}\n", id, 4 + i % 500);
        /* done: every id but 4 spread over the file */
        if (i != 1 && i != 9999 && i != 10002 && i != N - 1)
            no += (size_t)sprintf(o + no, "{\"id\":%s,\"completion\":\"\",\"tokens\":[],"
                                  "\"logprobs\":[],\"finish_reason\":\"length\"}\n", id);
    }
    cli_write("many.jsonl", p);
    cli_write("done.jsonl", o);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts many.jsonl --out done.jsonl "
                         "--resume --max-new-tokens 2 --ignore-eos --quiet"), 0, "%s", cli_err);
    char *after = cli_read("done.jsonl");
    cr_assert_eq(strncmp(after, o, no), 0, "the done records were not kept as written");
    cJSON *r = records("done.jsonl");
    cr_assert_eq(cJSON_GetArraySize(r), N);
    const char *want[] = {"1", "\"q9999\"", "\"q10002\"", "20003"};
    for (int i = 0; i < 4; i++) {
        cJSON *rec = cJSON_GetArrayItem(r, DONE + i);
        char *id = cJSON_PrintUnformatted(cJSON_GetObjectItem(rec, "id"));
        cr_assert_str_eq(id, want[i], "new record %d", i);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(rec, "tokens")), 2);
        free(id);
    }
    cJSON_Delete(r);
    free(after);
    free(p);
    free(o);
}

Test(cli, invalid_json_line_is_reported_and_others_complete)
{
    cli_write("p.jsonl", "{\"id\": 1, \"prompt\": \"ok\"}\n{\"id\": 2, \"prompt\": \"broken\n"
                          "{\"id\": 3, \"prompt_ids\": [2, 9]}\n");
    int st = cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --quiet");
    cr_assert_eq(st, 3, "exit %d: %s", st, cli_err);
    cr_assert(strstr(cli_err, "p.jsonl:2: invalid JSON"), "%s", cli_err);
    cJSON *r = records("o.jsonl");
    cr_assert_eq(cJSON_GetArraySize(r), 2);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(r, 1), "id")->valueint, 3);
    cJSON_Delete(r);
    /* --strict stops at the bad line, and prior output stays intact */
    char *before = cli_read("o.jsonl");
    st = cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --resume --strict");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "flexh2o: p.jsonl:2: invalid JSON"), "%s", cli_err);
    char *after = cli_read("o.jsonl");
    cr_assert_str_eq(before, after);
    free(before);
    free(after);
}

Test(cli, bad_prompts_are_reported_by_line)
{
    char longp[4096] = "{\"prompt_ids\": [2";
    for (int i = 0; i < 200; i++)
        strcat(longp, ", 5");
    strcat(longp, "]}\n");
    cli_write("long.jsonl", longp);
    int st = cli_run("generate --model " TINY " --prompts long.jsonl --out o.jsonl --strict");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "long.jsonl:1: the prompt has 201 tokens but the model takes "
                              "at most 127"), "%s", cli_err);
    cli_write("ids.jsonl", "{\"prompt_ids\": [2, 99999]}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts ids.jsonl --out o2.jsonl --strict"), 1);
    cr_assert(strstr(cli_err, "ids.jsonl:1: prompt_ids[1] is not a token id in [0, 512)"),
              "%s", cli_err);
    cli_write("both.jsonl", "{\"prompt\": \"x\", \"prompt_ids\": [2]}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts both.jsonl --out o3.jsonl --strict"), 1);
    cr_assert(strstr(cli_err, "give exactly one of \"prompt\""), "%s", cli_err);
}

/* OpenBLAS's generic kernels ("Prescott", its fallback for a CPU it does
 * not know) are replaced before OpenBLAS loads where the CPU has AVX2 +
 * FMA or AVX-512 (main.c exec_with_env); a user's OPENBLAS_CORETYPE wins
 * and --version says what it would have asked for. The rule itself over
 * every input. */
Test(cli, openblas_generic_kernels_are_not_run_where_the_cpu_has_better)
{
    cr_assert_str_eq(backend_blas_core_rule("Prescott", 1, 1), "SkylakeX");
    cr_assert_str_eq(backend_blas_core_rule("prescott", 0, 1), "Haswell");
    cr_assert_null(backend_blas_core_rule("Prescott", 0, 0));
    cr_assert_null(backend_blas_core_rule("Zen", 1, 1));
    cr_assert_null(backend_blas_core_rule("SkylakeX", 1, 1));
    cr_assert_null(backend_blas_core_rule(NULL, 1, 1));
    const char *bin = getenv("FLEXH2O_BIN");
    cr_assert(bin);
    __builtin_cpu_init();
    int better = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    cr_assert_eq(cli_sh("env -u OPENBLAS_CORETYPE -u FLEXH2O_BLAS_CORE %s --version > b1.txt",
                        bin), 0);
    cr_assert_eq(cli_sh("env -u FLEXH2O_BLAS_CORE OPENBLAS_CORETYPE=Prescott %s --version > "
                        "b2.txt", bin), 0);
    char *v1 = cli_read("b1.txt"), *v2 = cli_read("b2.txt");
    if (better)
        cr_assert(!strstr(v1, "OpenBLAS core: Prescott"), "%s", v1);
    cr_assert(strstr(v2, "OpenBLAS core: Prescott"), "%s", v2);
    cr_assert(!strstr(v2, "set by flexh2o"), "%s", v2);
    cr_assert_eq(strstr(v2, "its generic kernels: OPENBLAS_CORETYPE=") != NULL, better, "%s",
                 v2);
    free(v1), free(v2);
}

/* flexh2o sets libgomp's spin to 1000 iterations before libgomp starts
 * (main.c exec_with_env: a core taken by another process no longer
 * stalls every parallel region); a user's own setting wins, and
 * FLEXH2O_OMP_WAIT=libgomp keeps libgomp's default. --version says which. */
Test(cli, openmp_wait_policy_is_set_before_libgomp_starts)
{
    const char *bin = getenv("FLEXH2O_BIN");
    cr_assert(bin);
    const char *clean = "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u FLEXH2O_OMP_WAIT";
    cr_assert_eq(cli_sh("%s %s --version > v1.txt", clean, bin), 0);
    cr_assert_eq(cli_sh("%s GOMP_SPINCOUNT=5 %s --version > v2.txt", clean, bin), 0);
    cr_assert_eq(cli_sh("%s OMP_WAIT_POLICY=passive %s --version > v3.txt", clean, bin), 0);
    cr_assert_eq(cli_sh("%s FLEXH2O_OMP_WAIT=libgomp %s --version > v4.txt", clean, bin), 0);
    static const char *const want[] = {"OpenMP wait: GOMP_SPINCOUNT=1000;",
                                       "OpenMP wait: GOMP_SPINCOUNT=5;",
                                       "OpenMP wait: OMP_WAIT_POLICY=passive;",
                                       "OpenMP wait: libgomp's default;"};
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "v%d.txt", i + 1);
        char *v = cli_read(name);
        cr_assert(strstr(v, want[i]), "%s: %s", name, v);
        free(v);
    }
    /* more threads than cores: said, not silently oversubscribed (--plan:
     * no parallel region runs, which ThreadSanitizer cannot follow into
     * libgomp) */
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 5], \"max_new_tokens\": 1}\n");
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    int more = CPU_COUNT(&set) + 1;
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --plan "
                         "--threads %d", more), 0, "%s", cli_err);
    char said[96];
    snprintf(said, sizeof said, "--threads %d is more than the %d cores this process may run on",
             more, more - 1);
    cr_assert(strstr(cli_err, said), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o2.jsonl --plan "
                         "--threads %d", more - 1), 0, "%s", cli_err);
    cr_assert(!strstr(cli_err, "is more than the"), "%s", cli_err);
}

Test(cli, usage_errors)
{
    cli_write("p.jsonl", prompts5);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --bogus"), 2);
    cr_assert(strstr(cli_err, "unknown flag --bogus; see flexh2o generate --help"), "%s",
              cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                     "--batch-size 0"), 2);
    cr_assert(strstr(cli_err, "--batch-size expects an integer in [1, 65536], got \"0\""),
              "%s", cli_err);
    cr_assert_eq(cli_run("generate --prompts p.jsonl --out o.jsonl"), 2);
    cr_assert(strstr(cli_err, "give exactly one of --model DIR or --dummy NAME"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model /nonexistent --prompts p.jsonl --out o.jsonl"), 1);
    cr_assert(strstr(cli_err, "/nonexistent: model directory not found"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts missing.jsonl --out o.jsonl"), 1);
    cr_assert(strstr(cli_err, "missing.jsonl: cannot open the prompt file"), "%s", cli_err);
    cr_assert_eq(cli_run("calibrate --device tpu"), 2);
    cr_assert(strstr(cli_err, "flexh2o calibrate: --device must be cpu or cuda"), "%s", cli_err);
    cr_assert_eq(cli_run("convert --model " TINY " --out st --dtype f8"), 2);
    cr_assert(strstr(cli_err, "--dtype must be f16 (the GPU's), bf16 (a bf16 checkpoint's, "
                              "exactly) or f32"), "%s", cli_err);
    cr_assert(!cli_exists("st"), "a refused convert must not create the store");
    /* a store given to convert is named as one, not as a checkpoint
     * without safetensors; converting in place (--out = --model) keeps the
     * checkpoint a checkpoint, so it converts again */
    cr_assert_eq(cli_run("convert --model " TINY " --out st"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model st --out st2"), 1);
    cr_assert(strstr(cli_err, "st is a weight store already, not a Hugging Face checkpoint"),
              "%s", cli_err);
    cr_assert(!cli_exists("st2/model.flxh2o"));
    cr_assert_eq(cli_run("make-model --config tiny --out hf"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model hf --out hf"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model hf --out hf --dtype f32"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("frobnicate"), 2);
    cr_assert(strstr(cli_err, "usage: flexh2o <generate|search|convert|calibrate|tokenize|make-model|eval|score|merge>"), "%s", cli_err);
}

/* A profile measured beside other work understates the machine: calibrate
 * says so when other processes kept cores busy while it measured (here two
 * busy loops, one per core of the CI machine); the off_cpu_* arithmetic
 * against a known load. */
Test(cli, calibrate_warns_on_a_busy_machine)
{
    off_cpu_load a = {.busy_s = 100, .self_s = 1, .wall_s = 10, .cores = 4};
    off_cpu_load b = {.busy_s = 106, .self_s = 3, .wall_s = 12, .cores = 4};
    cr_assert_float_eq(off_cpu_others(&a, &b), 2.0, 1e-9); /* (6 - 2) s over 2 s */
    cr_assert_float_eq(off_cpu_others(&b, &a), 0.0, 1e-9);
    cr_assert_eq(off_cpu_sample(&a), 0);
    cr_assert_gt(a.cores, 0);
    cr_assert_eq(cli_sh("for i in 1 2; do timeout 40 sh -c 'while :; do :; done' & done; "
                        "sleep 0.3"), 0);
    int rc = cli_run("calibrate --device cpu --bytes 16M");
    char err[sizeof cli_err];
    memcpy(err, cli_err, sizeof err);
    cli_sh("pkill -f 'while :; do :; done'");
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert(strstr(err, "other processes kept") && strstr(err, "measure again on a "
                                                               "quiet machine"),
              "%s", err);
}

Test(cli, existing_output_is_never_overwritten)
{
    cli_write("p.jsonl", prompts5);
    cli_write("o.jsonl", "{\"id\": \"precious\"}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl"), 1);
    cr_assert(strstr(cli_err, "o.jsonl already exists; pass --resume"), "%s", cli_err);
    char *o = cli_read("o.jsonl");
    cr_assert_str_eq(o, "{\"id\": \"precious\"}\n");
    free(o);
}

/* Model m (make-model's) generates one record for a text prompt with the
 * generate flags given; then `tokenize` of text: its stdout (free it). */
static char *generate_then_tokenize(const char *gen_flags, const char *text)
{
    cli_write("p.jsonl", "{\"prompt\": \"Once upon a time\"}\n");
    cr_assert_eq(cli_run("generate --model m --prompts p.jsonl --out o.jsonl --quiet %s",
                         gen_flags), 0, "%s", cli_err);
    cJSON *r = records("o.jsonl");
    cr_assert_eq(cJSON_GetArraySize(r), 1);
    cJSON_Delete(r);
    cli_write("t.txt", text);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tokenize --model m < %s/t.txt", cli_dir);
    cr_assert_eq(cli_run("%s", cmd), 0, "%s", cli_err);
    return cli_read("stdout.txt");
}

Test(cli, make_model_then_generate_and_tokenize)
{
    cr_assert_eq(cli_run("make-model --config tiny --out m"), 0, "%s", cli_err);
    char *t = generate_then_tokenize("--max-new-tokens 5", "Hello world\n\n");
    cr_assert_eq(strncmp(t, "[2, ", 4), 0, "%s", t);
    cr_assert(strstr(t, "\n[2]\n"), "empty line must give just BOS: %s", t);
    free(t);
    /* a line that is not UTF-8 is named; the lines before it are printed */
    cli_write("t.txt", "Hello\ncaf\xe9\nworld\n");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tokenize --model m < %s/t.txt", cli_dir);
    cr_assert_eq(cli_run("%s", cmd), 1);
    cr_assert(strstr(cli_err, "input line 2: text is not valid UTF-8 at byte 3"), "%s", cli_err);
    t = cli_read("stdout.txt");
    cr_assert(!strncmp(t, "[2, ", 4) && strchr(t, '\n') == t + strlen(t) - 1, "%s", t);
    free(t);
    cr_assert_eq(cli_run("make-model --config opt-7b --out x"), 1);
    cr_assert(strstr(cli_err, "unknown model shape \"opt-7b\""), "%s", cli_err);
}

/* A shape whose special ids lie past make-model's toy tokenizer (Llama-3's
 * BOS is 128000; here 900 of 1000 rows): vocab.json names them, so the
 * model it writes runs instead of being refused, and prepends that BOS. */
Test(cli, make_model_names_special_ids_past_the_toy_tokenizer)
{
    cli_write("big-ids.json",
              "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
              "\"vocab_size\": 1000, \"hidden_size\": 64, \"intermediate_size\": 128, "
              "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
              "\"num_key_value_heads\": 2, \"max_position_embeddings\": 256, "
              "\"rms_norm_eps\": 1e-05, \"hidden_act\": \"silu\", \"rope_theta\": 10000, "
              "\"bos_token_id\": 900, \"eos_token_id\": 901, \"tie_word_embeddings\": true}");
    cr_assert_eq(cli_run("make-model --config %s/big-ids.json --out m", cli_dir), 0, "%s",
                 cli_err);
    char *t = generate_then_tokenize("--max-new-tokens 3 --ignore-eos", "Hello\n");
    cr_assert_eq(strncmp(t, "[900, ", 6), 0, "%s", t);
    free(t);
}

Test(cli, dummy_weights_run_without_files)
{
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 10, 20]}\n{\"prompt\": \"text\"}\n");
    cr_assert_eq(cli_run("generate --dummy opt-125m --prompts p.jsonl --out o.jsonl "
                     "--max-new-tokens 2 --quiet"), 3, "%s", cli_err);
    cr_assert(strstr(cli_err, "p.jsonl:2: text prompt but the model has no tokenizer"),
              "%s", cli_err);
    cJSON *r = records("o.jsonl");
    cr_assert_eq(cJSON_GetArraySize(r), 1);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(r, 0), "tokens")), 2);
    cJSON_Delete(r);
}

/* cli_dir/name's first n bytes, then tail[0..tail_len), as a killed job
 * (and whatever the disk left after it) could leave the file. */
static void cut_file(const char *name, long n, const char *tail, size_t tail_len)
{
    char path[512], *raw;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    cr_assert_eq(off_read_file(path, &raw, &len), 0, "%s", err_msg());
    cr_assert_leq((size_t)n, len);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(raw, 1, (size_t)n, f), (size_t)n);
    cr_assert_eq(fwrite(tail, 1, tail_len, f), tail_len);
    cr_assert_eq(fclose(f), 0);
    free(raw);
}

/* .zst in and out (DESIGN.md "Job files"): the prompts read as their
 * plain text whatever their framing; the completions decompress to the
 * plain run's bytes, one frame per record; a job killed in the middle of a
 * frame, or one whose file ends in garbage, resumes to the same bytes; a
 * damaged prompt file is one line of error. */
Test(cli, zst_job_files_round_trip_and_resume)
{
    /* --batch-size 1: a resumed run then computes each prompt as the full
     * run did, to the bit (batch_invariant: up to float rounding only) */
    const char *run = "generate --model " TINY " --max-new-tokens 6 --quiet --batch-size 1";
    cli_write("p.jsonl", prompts5);
    cli_write_zst("p.jsonl.zst", prompts5, 0);
    cli_write_zst("p7.jsonl.zst", prompts5, 7); /* lines cut across frames */
    cr_assert_eq(cli_run("%s --prompts p.jsonl --out full.jsonl", run), 0, "%s", cli_err);
    char *full = cli_read("full.jsonl");
    cr_assert_eq(cli_run("%s --prompts p.jsonl.zst --out o.jsonl.zst", run), 0, "%s", cli_err);
    cr_assert_eq(cli_run("%s --prompts p7.jsonl.zst --out o7.jsonl", run), 0, "%s", cli_err);
    int frames;
    long *fe;
    char *z = cli_read_zst("o.jsonl.zst", &frames, &fe), *o7 = cli_read("o7.jsonl");
    cr_assert_str_eq(z, full);
    cr_assert_str_eq(o7, full);
    cr_assert_eq(frames, 5, "one frame per record");
    free(z);
    free(o7);

    static const struct {
        const char *what;
        int mid;          /* cut in the middle of frame 3, else after it */
        const char *tail; /* then appended */
    } kills[] = {{"killed mid-frame", 1, ""}, {"garbage after a frame", 0, "\x01garbage"},
                 {"mid-frame, then garbage", 1, "garbage"}};
    for (size_t k = 0; k < sizeof kills / sizeof *kills; k++) {
        char cp[1200];
        snprintf(cp, sizeof cp, "cp %s/o.jsonl.zst %s/part.jsonl.zst", cli_dir, cli_dir);
        cr_assert_eq(system(cp), 0);
        cut_file("part.jsonl.zst", kills[k].mid ? (fe[1] + fe[2]) / 2 : fe[2], kills[k].tail,
                 strlen(kills[k].tail));
        cr_assert_eq(cli_run("%s --prompts p.jsonl --out part.jsonl.zst --resume", run), 0,
                     "%s: %s", kills[k].what, cli_err);
        cr_assert(strstr(cli_err, "part.jsonl.zst: dropping a torn last record"), "%s: %s",
                  kills[k].what, cli_err);
        z = cli_read_zst("part.jsonl.zst", &frames, NULL);
        cr_assert_str_eq(z, full, "%s", kills[k].what);
        cr_assert_eq(frames, 5, "%s", kills[k].what);
        free(z);
    }
    /* resuming a finished job does nothing */
    char *before = cli_read_zst("part.jsonl.zst", NULL, NULL);
    cr_assert_eq(cli_run("%s --prompts p.jsonl --out part.jsonl.zst --resume", run), 0, "%s",
                 cli_err);
    cr_assert(!strstr(cli_err, "torn"), "%s", cli_err);
    z = cli_read_zst("part.jsonl.zst", &frames, NULL);
    cr_assert_str_eq(z, before);
    free(z);
    free(before);

    /* damaged prompt files: plain text named .zst, a truncated frame */
    cli_write("bad.jsonl.zst", prompts5);
    cr_assert_eq(cli_run("%s --prompts bad.jsonl.zst --out b.jsonl", run), 1);
    cr_assert(strstr(cli_err, "flexh2o: bad.jsonl.zst: not a zstd file (or corrupt at byte 0)"),
              "%s", cli_err);
    cr_assert_eq(strchr(cli_err, '\n'), cli_err + strlen(cli_err) - 1, "one line: %s", cli_err);
    cut_file("p7.jsonl.zst", 30, "", 0);
    cr_assert_eq(cli_run("%s --prompts p7.jsonl.zst --out b.jsonl", run), 1);
    cr_assert(strstr(cli_err, "p7.jsonl.zst: not a zstd file (or corrupt at byte "), "%s",
              cli_err);
    cr_assert_eq(strchr(cli_err, '\n'), cli_err + strlen(cli_err) - 1, "one line: %s", cli_err);
    cr_assert(!cli_exists("b.jsonl"), "a refused job must not create its output");
    free(fe);
    free(full);
}

/* --trace-evictions and score's files are job files too: .zst gives the
 * plain bytes, and a resumed .zst trace (its last frame torn) is the
 * uninterrupted one. */
Test(cli, zst_trace_and_score_files)
{
    const char *run = "generate --model " TINY " --prompts p.jsonl --max-new-tokens 6 --quiet "
                      "--batch-size 1 --kv-policy h2o --kv-ratio 0.5 --sinks 1";
    cli_write("p.jsonl", prompts5);
    cr_assert_eq(cli_run("%s --out o.jsonl --trace-evictions ev.jsonl", run), 0, "%s", cli_err);
    cr_assert_eq(cli_run("%s --out o.jsonl.zst --trace-evictions ev.jsonl.zst", run), 0, "%s",
                 cli_err);
    char *ev = cli_read("ev.jsonl"), *evz = cli_read_zst("ev.jsonl.zst", NULL, NULL);
    cr_assert(strlen(ev) > 100, "the budget must evict");
    cr_assert_str_eq(evz, ev);
    free(evz);
    /* killed after two records, in the middle of a trace frame */
    int frames, tframes;
    long *fe, *te;
    free(cli_read_zst("o.jsonl.zst", &frames, &fe));
    free(cli_read_zst("ev.jsonl.zst", &tframes, &te));
    cr_assert_gt(tframes, 2);
    cut_file("o.jsonl.zst", fe[1], "", 0);
    cut_file("ev.jsonl.zst", (te[tframes - 2] + te[tframes - 1]) / 2, "", 0);
    cr_assert_eq(cli_run("%s --out o.jsonl.zst --trace-evictions ev.jsonl.zst --resume", run), 0,
                 "%s", cli_err);
    evz = cli_read_zst("ev.jsonl.zst", NULL, NULL);
    cr_assert_str_eq(evz, ev);
    char *o = cli_read("o.jsonl"), *oz = cli_read_zst("o.jsonl.zst", NULL, NULL);
    cr_assert_str_eq(oz, o);
    free(o);
    free(oz);
    free(evz);
    free(ev);
    free(fe);
    free(te);

    static const char req[] = "{\"id\": \"a\", \"context\": \"The quick brown\", "
                              "\"continuation\": \" fox\"}\n"
                              "{\"context_ids\": [2, 9, 10], \"continuation_ids\": [11, 12]}\n"
                              "{\"context\": \"one two\", \"continuation\": \" three\"}\n";
    cli_write("req.jsonl", req);
    cli_write_zst("req.jsonl.zst", req, 20);
    cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl --out r.jsonl --quiet"), 0,
                 "%s", cli_err);
    cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl.zst --out r.jsonl.zst "
                         "--quiet"), 0, "%s", cli_err);
    char *r = cli_read("r.jsonl"), *rz = cli_read_zst("r.jsonl.zst", &frames, NULL);
    cr_assert_str_eq(rz, r);
    cr_assert_eq(frames, 3, "one frame per result");
    free(r);
    free(rz);
    cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl.zst --out r.jsonl.zst "
                         "--quiet"), 1);
    cr_assert(strstr(cli_err, "r.jsonl.zst already exists"), "%s", cli_err);
}

/* ------------------------------------------------------------ bad input (issue 15) */

/* cli_dir/name with its first `from` replaced by `to`. */
static void edit_file(const char *name, const char *from, const char *to)
{
    char *text = cli_read(name);
    char *p = strstr(text, from);
    cr_assert(p, "%s has no %s", name, from);
    size_t n = strlen(text) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(p - text), text, to, p + strlen(from));
    cli_write(name, out);
    free(out);
    free(text);
}

/* Ids the model would look up in its embedding table come from config.json
 * and the tokenizer files: one outside the vocabulary is refused before
 * anything runs (it read past the table, or generated garbage with exit 0),
 * by generate and convert alike, naming the file and the id. The tokenizer
 * alone (tokenize) has no model to check against. */
Test(cli, ids_outside_the_model_vocabulary_are_refused)
{
    cli_write("p.jsonl", "{\"id\": \"a\", \"prompt\": \"hello world\", \"max_new_tokens\": 2}\n");
    static const char *const bos[] = {"-7", "100000"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(cli_run("make-model --config tiny --out mb%d", i), 0, "%s", cli_err);
        char name[64], to[64];
        snprintf(name, sizeof name, "mb%d/config.json", i);
        snprintf(to, sizeof to, "\"bos_token_id\": %s", bos[i]);
        edit_file(name, "\"bos_token_id\": 2", to);
        cr_assert_eq(cli_run("generate --model mb%d --prompts p.jsonl --out o.jsonl --quiet", i),
                     1, "bos_token_id %s was accepted", bos[i]);
        snprintf(to, sizeof to, "\"bos_token_id\" %s%s", i ? "" : "is ", bos[i]);
        cr_assert(strstr(cli_err, name) && strstr(cli_err, to), "%s", cli_err);
        cr_assert(!cli_exists("o.jsonl"), "a refused model wrote output");
        cr_assert_eq(cli_run("convert --model mb%d --out st", i), 1,
                     "convert took bos_token_id %s", bos[i]);
        cr_assert(strstr(cli_err, name) && strstr(cli_err, to), "%s", cli_err);
        cr_assert(!cli_exists("st"), "a refused convert created the store");
    }
    cr_assert_eq(cli_run("make-model --config tiny --out mv"), 0, "%s", cli_err);
    edit_file("mv/vocab.json", "{", "{\"zzz-from-another-model\": 600, ");
    cr_assert_eq(cli_run("generate --model mv --prompts p.jsonl --out o.jsonl --quiet"), 1,
                 "a tokenizer with id 600 was accepted for a vocabulary of 512");
    cr_assert(strstr(cli_err, "mv/vocab.json: token id 600 (\"zzz-from-another-model\") is "
                              "past the model's vocabulary (vocab_size 512 in mv/config.json)"),
              "%s", cli_err);
    cr_assert(!cli_exists("o.jsonl"));
    cli_write("t.txt", "hello\n");
    cr_assert_eq(cli_run("tokenize --model mv < %s/t.txt", cli_dir), 0, "%s", cli_err);
    cr_assert_eq(cli_run("make-model --config tiny --out mg"), 0, "%s", cli_err);
    cli_write("mg/generation_config.json", "{\"eos_token_id\": [2, 700]}");
    cr_assert_eq(cli_run("generate --model mg --prompts p.jsonl --out o.jsonl --quiet"), 1);
    cr_assert(strstr(cli_err, "mg/generation_config.json: eos_token_id 700 is past the "
                              "model's vocabulary"), "%s", cli_err);
}

/* --gpu-mem / --cpu-mem: a number without a unit is bytes, which nobody
 * means for a small one ("needs 0.00 GiB, --gpu-mem is 0.00 GiB"), and 0
 * is no cap that could run; both refused as usage errors. --trace to a
 * path that cannot be written fails before the job, not after it. */
Test(cli, memory_caps_and_trace_path_are_checked_first)
{
    cli_write("p.jsonl", "{\"id\": \"a\", \"prompt\": \"hello world\", \"max_new_tokens\": 2}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--gpu-mem 16"), 2);
    cr_assert(strstr(cli_err, "--gpu-mem 16: give a unit, e.g. 16G"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--gpu-mem 0"), 2);
    cr_assert(strstr(cli_err, "--gpu-mem 0: a cap of 0 bytes") &&
                  strstr(cli_err, "leave --gpu-mem out for the default"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--cpu-mem 0G"), 2);
    cr_assert(strstr(cli_err, "--cpu-mem 0G: a cap of 0 bytes"), "%s", cli_err);
    cr_assert(!cli_exists("o.jsonl"));
    /* a small cap with a unit is a real (too small) cap; the need and the
     * cap each in the largest unit it reaches */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--gpu-mem 64K --device cpu"), 1);
    cr_assert(strstr(cli_err, "the GPU tier needs ") && strstr(cli_err, " KiB (weights ") &&
                  strstr(cli_err, "--gpu-mem is 64.00 KiB"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--gpu-mem 1000 --device cpu"), 2); /* no unit: refused above */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--gpu-mem 3G --cpu-mem 100 --device cpu"), 2);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--percent '0 100 0 100 100 0' --cpu-mem 1K --device cpu"), 1);
    cr_assert(strstr(cli_err, "--cpu-mem is 1.00 KiB"), "%s", cli_err);

    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --quiet "
                         "--trace no-such-dir/t.json"), 1);
    cr_assert(strstr(cli_err, "no-such-dir/t.json: cannot write the trace"), "%s", cli_err);
    cr_assert(!cli_exists("o.jsonl"), "the job ran before the bad --trace path was noticed");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --quiet "
                         "--trace t.json"), 0, "%s", cli_err);
    cr_assert(cli_exists("t.json") && !cli_exists("t.json.tmp"));
}
