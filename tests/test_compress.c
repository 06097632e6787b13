/* test_compress.c: 4-bit compression (compress_weight, compress_cache) end
 * to end on the CPU backend:
 *
 *  - the engine against Hugging Face transformers with the same 4-bit round
 *    trips applied to the weights and to the KV cache (golden file from
 *    tests/fixtures/gen_q4_golden.py, whose quantizer is written from the
 *    format's definition in numpy);
 *  - every placement of compressed weights and KV (disk, three tiers, CPU
 *    attention, no overlap, H2O) gives output byte-identical to the
 *    compressed all-resident run;
 *  - a weight store is compressed on load (the disk share then comes from
 *    weights.bin, not from the store);
 *  - the memory plan shrinks by the format's ratio, so that a policy that
 *    cannot fit uncompressed fits compressed; policy files carry the flags;
 *    the search plans for them.
 * The kernels themselves are tested in test_kern_host.c.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "kern.h"
#include "model_config.h"
#include "scheduler.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define GOLDEN FH_SOURCE_ROOT "/tests/fixtures/tiny-opt-q4-golden.json"
#define HARDWARE FH_SOURCE_ROOT "/configs/hardware/ci-2vcpu-epyc-cpu.json"

TestSuite(compress, .init = cli_setup, .fini = cli_teardown, .timeout = 240);

static const char prompts[] =
    "{\"id\": \"a\", \"prompt\": \"Hello there, how are you\"}\n"
    "{\"id\": \"b\", \"prompt\": \"x\"}\n"
    "{\"id\": \"c\", \"prompt\": \"The quick brown fox jumps over the lazy dog and more\"}\n"
    "{\"id\": \"d\", \"prompt\": \"one two\"}\n"
    "{\"id\": \"e\", \"prompt_ids\": [2, 100, 200, 300]}\n";

static void setup_files(void)
{
    cli_write("prompts.jsonl", prompts);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/off", cli_dir);
    cr_assert_eq(system(cmd), 0);
}

static void assert_same(const char *a, const char *b, const char *what)
{
    char *x = cli_read(a), *y = cli_read(b);
    cr_assert(x && y && strlen(x) > 100);
    cr_assert_str_eq(x, y, "%s differs from the compressed all-resident run", what);
    free(x);
    free(y);
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    cr_assert(j, "%s is not JSON", path);
    return j;
}

Test(compress, matches_transformers_with_the_same_round_trips)
{
    cJSON *g = read_json(GOLDEN);
    const cJSON *cases = cJSON_GetObjectItem(g, "cases");
    int n_new = cJSON_GetObjectItem(g, "n_new")->valueint;
    /* prompts as token ids, one line per golden case */
    char *pj = calloc(1, 1 << 16);
    int n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "prompt_ids"));
        sprintf(pj + strlen(pj), "{\"id\": \"%d\", \"prompt_ids\": %s}\n", n_cases++, ids);
        cJSON_free(ids);
    }
    cli_write("golden.jsonl", pj);
    free(pj);
    /* the weights' codes come from the same fp32 values in both, so only
     * summation order separates them; K and V are computed by each side
     * before they are quantized, so a value on a rounding edge may take the
     * neighbouring code: a looser bound */
    static const struct { const char *mode, *flags; double tol; } modes[] = {
        {"weight", "--compress-weight", 1e-4},
        /* several GPU batches: a layer's matrices are expanded once, reused */
        {"weight", "--compress-weight --gpu-batch-size 2 --num-gpu-batches 3", 1e-4},
        {"cache", "--compress-cache", 5e-3},
        {"both", "--compress-weight --compress-cache", 5e-3},
    };
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts golden.jsonl --out g%zu.jsonl "
                             "--max-new-tokens %d --ignore-eos --quiet %s", m, n_new,
                             modes[m].flags), 0, "%s", cli_err);
        char name[32];
        snprintf(name, sizeof name, "g%zu.jsonl", m);
        char *text = cli_read(name);
        int lines = 0;
        double worst = 0;
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
            cJSON *o = cJSON_Parse(line);
            cr_assert(o);
            int id = atoi(cJSON_GetObjectItem(o, "id")->valuestring);
            const cJSON *want = cJSON_GetObjectItem(cJSON_GetArrayItem(cases, id), modes[m].mode);
            const cJSON *toks = cJSON_GetObjectItem(o, "tokens");
            const cJSON *lps = cJSON_GetObjectItem(o, "logprobs");
            cr_assert_eq(cJSON_GetArraySize(toks), n_new);
            for (int i = 0; i < n_new; i++) {
                const cJSON *w = cJSON_GetArrayItem(want, i);
                cr_assert_eq(cJSON_GetArrayItem(toks, i)->valueint,
                             cJSON_GetObjectItem(w, "token")->valueint,
                             "%s: case %d step %d: token differs from transformers",
                             modes[m].mode, id, i);
                double e = fabs(cJSON_GetArrayItem(lps, i)->valuedouble -
                                cJSON_GetObjectItem(w, "logprob")->valuedouble);
                worst = e > worst ? e : worst;
            }
            cJSON_Delete(o);
        }
        cr_assert_eq(lines, n_cases);
        cr_assert_lt(worst, modes[m].tol, "%s: logprob error %g", modes[m].mode, worst);
        free(text);
    }
    cJSON_Delete(g);
}

static int n_run;

static const char *gen(const char *flags)
{
    static char out[64];
    snprintf(out, sizeof out, "o%d.jsonl", n_run++);
    int st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out %s "
                     "--max-new-tokens 10 --gpu-batch-size 2 --num-gpu-batches 2 %s "
                     "--offload-dir off --quiet", out, flags);
    cr_assert_eq(st, 0, "generate %s failed: %s", flags, cli_err);
    return out;
}

Test(compress, every_placement_equals_compressed_all_resident)
{
    setup_files();
    static const char *modes[] = {"--compress-weight", "--compress-cache",
                                  "--compress-weight --compress-cache"};
    static const char *policies[] = {
        "--percent 0 0 100 0 100 0",                   /* weights on disk */
        "--percent 30 30 100 0 100 0",                 /* weights over three tiers */
        "--percent 100 0 0 0 100 0",                   /* KV on disk */
        "--percent 100 0 34 33 100 0 --cpu-attention", /* KV over three tiers, CPU attn */
        "--percent 100 0 0 100 0 0 --no-overlap",      /* KV on the CPU, act on disk */
        "--percent 20 30 34 33 0 100 --cpu-attention --no-overlap --no-pin-weight",
    };
    char plain[64];
    snprintf(plain, sizeof plain, "%s", gen(""));
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        char base[64];
        snprintf(base, sizeof base, "%s", gen(modes[m]));
        /* compression changes the numbers: the test below is not vacuous */
        char *a = cli_read(plain), *b = cli_read(base);
        cr_assert(strcmp(a, b) != 0, "%s gave the uncompressed output", modes[m]);
        free(a);
        free(b);
        for (size_t p = 0; p < sizeof policies / sizeof *policies; p++) {
            char flags[256];
            snprintf(flags, sizeof flags, "%s %s", modes[m], policies[p]);
            assert_same(base, gen(flags), flags);
        }
    }
}

Test(compress, h2o_with_4bit_kv_on_every_tier)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2 --kv-policy h2o "
                        "--kv-ratio 0.5 --sinks 1 --compress-cache";
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out base.jsonl "
                         "--max-new-tokens 10 %s --trace-evictions ev0.jsonl --quiet", shape), 0,
                 "%s", cli_err);
    char *ev = cli_read("ev0.jsonl");
    cr_assert(ev && strlen(ev) > 100, "the budget must evict");
    free(ev);
    static const char *policies[] = {"--percent 100 0 0 0 100 0",
                                     "--percent 100 0 34 33 100 0 --cpu-attention",
                                     "--percent 0 50 0 100 0 100 --no-overlap --compress-weight"};
    for (size_t p = 0; p < sizeof policies / sizeof *policies; p++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out h%zu.jsonl "
                             "--max-new-tokens 10 %s %s --offload-dir off "
                             "--trace-evictions ev%zu.jsonl --quiet", p, shape, policies[p],
                             p + 1), 0, "%s", cli_err);
        char out[32], evn[32];
        snprintf(out, sizeof out, "h%zu.jsonl", p);
        snprintf(evn, sizeof evn, "ev%zu.jsonl", p + 1);
        if (strstr(policies[p], "--compress-weight"))
            continue; /* other numbers: only that it runs on every tier */
        assert_same("base.jsonl", out, policies[p]);
        assert_same("ev0.jsonl", evn, policies[p]);
    }
}

Test(compress, weight_store_is_compressed_on_load)
{
    setup_files();
    char base[64];
    snprintf(base, sizeof base, "%s", gen("--compress-weight"));
    cr_assert_eq(cli_run("convert --model " TINY " --out store --dtype f32"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model store --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 10 --gpu-batch-size 2 --num-gpu-batches 2 "
                         "--compress-weight --percent 10 20 100 0 100 0 --offload-dir off "
                         "--quiet"), 0, "%s", cli_err);
    assert_same(base, "s.jsonl", "a compressed f32 store with weights on disk");
    cr_assert(cli_exists("off/weights.bin"), "the 4-bit disk share must come from weights.bin");
}

/* ---- the plan and the policy ---- */

#define A256(x) (((x) + 255) & ~(uint64_t)255)

Test(compress, plan_shrinks_by_the_format_ratio)
{
    model_config c;
    cr_assert_eq(model_config_by_name("opt-13b", &c), 0);
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = 4;
    sched_shape sh = {.max_rows = 512, .cap = 544, .scores = 1};
    sched_plan plain, q;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &p, &sh, &plain), 0);
    p.compress_weight = p.compress_cache = 1;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &p, &sh, &q), 0);

    /* weights: per layer 12 d^2 matrix values at 36 bytes per 64 instead of
     * 2 bytes each, the vectors (9 d + ffn values) and the globals as they were */
    uint64_t d = (uint64_t)c.hidden, L = (uint64_t)c.n_layer, f = (uint64_t)c.ffn;
    uint64_t mats_plain = 2 * (3 * d * d + d * d + 2 * f * d);
    uint64_t mats_q4 = (3 * d + d + f) * ((d + 63) / 64) * 36 + d * ((f + 63) / 64) * 36;
    int64_t saved = (int64_t)plain.bytes[SCHED_GPU][SCHED_WEIGHTS] -
                    (int64_t)q.bytes[SCHED_GPU][SCHED_WEIGHTS];
    /* 256-byte padding of each tensor is all that may differ */
    cr_assert_lt(llabs(saved - (int64_t)(L * (mats_plain - mats_q4))), (long long)(L * 12 * 256),
                 "saved %lld bytes of weights", (long long)saved);

    /* KV: kc and vc rows of head_dim values, 36 bytes per group of 64 */
    uint64_t slots = 4ull * c.n_head * 544, hd = (uint64_t)c.head_dim;
    uint64_t rec_q = 2 * A256(slots * kern_q4_row_bytes(c.head_dim)) + 2 * A256(slots * 4);
    uint64_t rec_p = 2 * A256(slots * hd * 2) + 2 * A256(slots * 4);
    cr_assert_eq(q.bytes[SCHED_GPU][SCHED_KV], L * rec_q);
    cr_assert_eq(plain.bytes[SCHED_GPU][SCHED_KV], L * rec_p);
    /* the expanded matrix (the largest, fc1 or fc2) is GPU work space */
    cr_assert_eq(q.bytes[SCHED_GPU][SCHED_WORK] - plain.bytes[SCHED_GPU][SCHED_WORK],
                 A256(f * d * 2));

    /* OPT-13B all on a 16 GiB GPU: only compressed */
    cr_assert_neq(sched_plan_check(&plain, &p, 16ull << 30, 0, 0), 0);
    cr_assert_eq(sched_plan_check(&q, &p, 16ull << 30, 0, 0), 0, "%s", err_msg());
}

Test(compress, policy_files_and_search_carry_the_flags)
{
    setup_files();
    sched_policy p, r;
    sched_policy_default(&p);
    sched_policy_default(&r);
    p.compress_weight = 1;
    char path[512];
    snprintf(path, sizeof path, "%s/pol.json", cli_dir);
    cr_assert_eq(sched_policy_write(path, &p), 0);
    cr_assert_eq(sched_policy_load(path, &r), 0, "%s", err_msg());
    cr_assert(r.compress_weight == 1 && r.compress_cache == 0);
    char desc[256];
    sched_policy_describe(&r, desc, sizeof desc);
    cr_assert(strstr(desc, "4-bit weights") && !strstr(desc, "4-bit KV"), "%s", desc);

    cli_write("bad.json", "{\"compress_cache\": 3}");
    snprintf(path, sizeof path, "%s/bad.json", cli_dir);
    cr_assert_neq(sched_policy_load(path, &r), 0);
    cr_assert(strstr(err_msg(), "compress_cache"), "%s", err_msg());

    /* the search plans the compressed bytes and writes the flags out */
    cr_assert_eq(cli_run("search --model " TINY " --prompt-len 16 --gen-len 4 --gpu-mem 64M "
                         "--cpu-mem 1G --hardware " HARDWARE " --compress-weight "
                         "--compress-cache --out best.json"), 0, "%s", cli_err);
    char *out = cli_read("stdout.txt");
    cr_assert(strstr(out, "4-bit weights") && strstr(out, "4-bit KV"), "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/best.json", cli_dir);
    sched_policy_default(&r);
    cr_assert_eq(sched_policy_load(path, &r), 0, "%s", err_msg());
    cr_assert(r.compress_weight && r.compress_cache);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 4 --policy best.json --quiet"), 0, "%s", cli_err);
}

Test(compress, four_bit_store_streams_its_disk_share)
{
    setup_files();
    char base[64];
    snprintf(base, sizeof base, "%s", gen("--compress-weight"));
    cr_assert_eq(cli_run("convert --model " TINY " --out plain --dtype f32"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model " TINY " --out q4 --dtype f32 --compress-weight"), 0,
                 "%s", cli_err);
    char path[600];
    snprintf(path, sizeof path, "%s/plain/model.flxh2o", cli_dir);
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    fseek(f, 0, SEEK_END);
    long plain = ftell(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/q4/model.flxh2o", cli_dir);
    f = fopen(path, "rb");
    cr_assert(f);
    fseek(f, 0, SEEK_END);
    long q4 = ftell(f);
    fclose(f);
    cr_assert_lt(q4, plain * 6 / 10, "4-bit store %ld bytes, plain %ld", q4, plain);

    /* no --compress-weight: the store's 4-bit layers imply it; the disk
     * share streams from the store (the same codes as quantizing on load) */
    cr_assert_eq(cli_run("generate --model q4 --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 10 --gpu-batch-size 2 --num-gpu-batches 2 "
                         "--percent 10 20 100 0 100 0 --offload-dir off --quiet"), 0, "%s",
                 cli_err);
    assert_same(base, "s.jsonl", "a 4-bit f32 store with weights on disk");
    cr_assert(!cli_exists("off/weights.bin"), "the disk share must stream from the store");

    /* an f16 4-bit store on the CPU backend: vectors converted on load */
    cr_assert_eq(cli_run("convert --model " TINY " --out q16 --compress-weight"), 0, "%s",
                 cli_err);
    cr_assert_eq(cli_run("generate --model q16 --prompts prompts.jsonl --out s16.jsonl "
                         "--max-new-tokens 4 --percent 50 50 100 0 100 0 --quiet"), 0, "%s",
                 cli_err);
    char *out = cli_read("s16.jsonl");
    cr_assert(out && strstr(out, "\"id\":\"e\""), "%s", out ? out : "");
    free(out);
}
