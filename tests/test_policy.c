/* test_policy.c: the offloading policy (scheduler/policy.c) and the Chrome
 * trace recorder (scheduler/trace.c): sizes, --percent, policy files (every
 * preset in configs/policies/ and every kind of bad file), each refusal of
 * sched_policy_check with its message, sched_split's rounding, and a trace
 * recorded from four threads at once that parses back as the events given. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "off.h"
#include "fh_config.h"
#include "model_config.h"
#include "scheduler.h"

static char scratch[64];

static void setup(void)
{
    strcpy(scratch, "/tmp/fh_policy_XXXXXX");
    cr_assert(mkdtemp(scratch), "mkdtemp in /tmp failed");
    err_clear();
}

static void teardown(void) { scratch_remove(scratch); }

TestSuite(policy, .init = setup, .fini = teardown);

#define assert_msg(needle)                                                         \
    cr_assert(strstr(err_msg(), (needle)), "message \"%s\" lacks \"%s\"", err_msg(), \
              (needle))

/* ------------------------------------------------------------ sizes */

Test(policy, size_good)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        {"16G", 16ull << 30},   {"16GiB", 16ull << 30}, {"16GB", 16ull << 30},
        {"16g", 16ull << 30},   {"512M", 512ull << 20}, {"512MiB", 512ull << 20},
        {"4096K", 4096ull << 10}, {"123", 123},         {"123B", 123},
        {"1.5G", 3ull << 29},   {"0", 0},               {"2T", 2ull << 40},
        {".5K", 512},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t v = 7;
        int rc = sched_parse_size("--gpu-mem", ok[i].s, &v);
        cr_assert_eq(rc, 0, "\"%s\": %s", ok[i].s, err_msg());
        cr_assert_eq(v, ok[i].v, "\"%s\" gave %llu, expected %llu", ok[i].s,
                     (unsigned long long)v, (unsigned long long)ok[i].v);
    }
}

Test(policy, size_bad)
{
    static const char *bad[] = {"",    "G",   "16X", "16GG",  "-1G", "16 G", " 16G",
                                "0x10G", "inf", "nan", "1e30G", "16Gi", "abc", "16GiBs"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 7;
        err_clear();
        int rc = sched_parse_size("--cpu-mem", bad[i], &v);
        cr_assert_eq(rc, -EINVAL, "\"%s\" accepted (%llu)", bad[i], (unsigned long long)v);
        cr_assert_eq(v, 7, "\"%s\": output written on failure", bad[i]);
        assert_msg("--cpu-mem must be a size like 16G");
        char quoted[64];
        snprintf(quoted, sizeof quoted, "got \"%s\"", bad[i]);
        assert_msg(quoted);
    }
}

/* ------------------------------------------------------------ percent */

static void assert_pct(const sched_policy *p, double wg, double wc, double cg, double cc,
                       double hg, double hc)
{
    cr_assert(p->wg == wg && p->wc == wc && p->cg == cg && p->cc == cc && p->hg == hg &&
                  p->hc == hc,
              "got %g %g %g %g %g %g", p->wg, p->wc, p->cg, p->cc, p->hg, p->hc);
}

Test(policy, percent_forms)
{
    sched_policy p;
    sched_policy_default(&p);
    const char *six[] = {"20", "80", "0", "100", "0", "100"};
    cr_assert_eq(sched_policy_parse_percent(six, 6, &p), 0, "%s", err_msg());
    assert_pct(&p, 20, 80, 0, 100, 0, 100);

    const char *commas[] = {"100,0,100,0,100,0"};
    cr_assert_eq(sched_policy_parse_percent(commas, 1, &p), 0, "%s", err_msg());
    assert_pct(&p, 100, 0, 100, 0, 100, 0);

    const char *spaces[] = {"0 50 12.5, 37.5 0 100"};
    cr_assert_eq(sched_policy_parse_percent(spaces, 1, &p), 0, "%s", err_msg());
    assert_pct(&p, 0, 50, 12.5, 37.5, 0, 100);
}

Test(policy, percent_bad)
{
    static const struct {
        const char *args[7];
        int n;
        const char *msg;
    } bad[] = {
        {{"20", "80", "0", "100", "0"}, 5, "got 5"},
        {{"20", "80", "0", "100", "0", "100", "7"}, 7, "got 7"},
        {{"20,80,0,100,0"}, 1, "got 5"},
        {{"20,80,0,100,0,100,0"}, 1, "got more"},
        {{"20,80,x,100,0,100"}, 1, "got \"x\""},
        {{"20", "80", "0", "100", "0", "101"}, 6, "got \"101\""},
        {{"20", "-1", "0", "100", "0", "100"}, 6, "got \"-1\""},
        {{"20", "80", "0", "100", "0", "50%"}, 6, "got \"50%\""},
        {{""}, 1, "got 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sched_policy p;
        sched_policy_default(&p);
        err_clear();
        int rc = sched_policy_parse_percent(bad[i].args, bad[i].n, &p);
        cr_assert_eq(rc, -EINVAL, "case %zu accepted", i);
        assert_msg("--percent");
        assert_msg(bad[i].msg);
        assert_pct(&p, 100, 0, 100, 0, 100, 0); /* untouched */
    }
}

/* ------------------------------------------------------------ check */

Test(policy, check_default_ok)
{
    sched_policy p;
    sched_policy_default(&p);
    cr_assert_eq(p.gpu_batch_size, 8);
    cr_assert_eq(p.num_gpu_batches, 1);
    assert_pct(&p, 100, 0, 100, 0, 100, 0);
    cr_assert(p.overlap && p.pin_weight && !p.cpu_attention);
    cr_assert(p.gpu_mem == 0 && p.cpu_mem == 0 && p.offload_dir[0] == 0);
    cr_assert_eq(sched_policy_check(&p), 0, "%s", err_msg());
    /* shares that add up to 100 only up to rounding */
    p.wg = 33.3;
    p.wc = 66.7;
    cr_assert_eq(sched_policy_check(&p), 0, "%s", err_msg());
}

Test(policy, check_refusals)
{
    static const struct {
        double pct[6];
        int gbs, ngb;
        const char *dir;
        const char *msg;
    } bad[] = {
        {{100, 20, 100, 0, 100, 0}, 8, 1, "/x",
         "--percent: weights on GPU + CPU is 120%; the two must add up to at most 100"},
        {{100, 0, 60, 60, 100, 0}, 8, 1, "/x", "KV cache on GPU + CPU is 120%"},
        {{100, 0, 100, 0, 100, 100}, 8, 1, "/x", "activations on GPU + CPU is 200%"},
        {{100, 0, 100, 0, 50, 0}, 8, 1, "/x",
         "--percent: activations cannot be split across tiers (hg 50); use 100 0, 0 100 or 0 0"},
        {{100, 0, 100, 0, 0, 30}, 8, 1, "/x", "activations cannot be split across tiers (hc 30)"},
        {{100, 0, 20, 0, 100, 0}, 8, 1, "",
         "--percent puts 80% of the KV cache on disk but no --offload-dir was given; pass "
         "--offload-dir DIR on a fast local disk"},
        {{20, 30, 100, 0, 100, 0}, 8, 1, "", "puts 50% of the weights on disk"},
        {{100, 0, 100, 0, 0, 0}, 8, 1, "", "puts 100% of the activations on disk"},
        {{100, 0, 100, 0, 100, 0}, 0, 1, "", "--gpu-batch-size must be at least 1, got 0"},
        {{100, 0, 100, 0, 100, 0}, 8, -2, "", "--num-gpu-batches must be at least 1, got -2"},
        {{100, 0, 100, 0, 100, 0}, 65536, 65536, "", "block 65536x65536 is too large"},
        {{-5, 0, 100, 0, 100, 0}, 8, 1, "/x", "wg is -5; every value must be in [0, 100]"},
        {{100, 0, 100, 0, 100, NAN}, 8, 1, "/x", "hc is nan"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sched_policy p;
        sched_policy_default(&p);
        p.wg = bad[i].pct[0];
        p.wc = bad[i].pct[1];
        p.cg = bad[i].pct[2];
        p.cc = bad[i].pct[3];
        p.hg = bad[i].pct[4];
        p.hc = bad[i].pct[5];
        p.gpu_batch_size = bad[i].gbs;
        p.num_gpu_batches = bad[i].ngb;
        snprintf(p.offload_dir, sizeof p.offload_dir, "%s", bad[i].dir);
        err_clear();
        cr_assert_eq(sched_policy_check(&p), -EINVAL, "case %zu accepted", i);
        assert_msg(bad[i].msg);
    }
}

Test(policy, check_disk_with_dir_ok)
{
    sched_policy p;
    sched_policy_default(&p);
    const char *pct[] = {"0 50 0 0 0 100"};
    cr_assert_eq(sched_policy_parse_percent(pct, 1, &p), 0, "%s", err_msg());
    cr_assert_eq(sched_policy_check(&p), -EINVAL);
    strcpy(p.offload_dir, "/tmp/x");
    err_clear();
    cr_assert_eq(sched_policy_check(&p), 0, "%s", err_msg());
}

/* ------------------------------------------------------------ policy files */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void load_preset(const char *name, sched_policy *p)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/policies/%s", FH_SOURCE_ROOT, name);
    sched_policy_default(p);
    err_clear();
    cr_assert_eq(sched_policy_load(path, p), 0, "%s: %s", name, err_msg());
    cr_assert_eq(sched_policy_check(p), 0, "%s: %s", name, err_msg());
}

Test(policy, every_preset_loads_and_checks)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/configs/policies", FH_SOURCE_ROOT);
    DIR *d = opendir(dir);
    cr_assert(d, "cannot open %s", dir);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        sched_policy p;
        load_preset(de->d_name, &p);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 5, "only %d presets in %s", n, dir);
}

Test(policy, presets_hold_published_values)
{
    sched_policy p;
    load_preset("all-gpu.json", &p);
    assert_pct(&p, 100, 0, 100, 0, 100, 0);

    load_preset("opt-30b-t4.json", &p);
    assert_pct(&p, 20, 80, 0, 100, 0, 100);
    cr_assert_eq(p.gpu_batch_size, 48);
    cr_assert_eq(p.num_gpu_batches, 3);
    cr_assert_eq(p.cpu_attention, 1);
    cr_assert_eq(p.gpu_mem, 16ull << 30);

    load_preset("opt-175b-t4.json", &p);
    assert_pct(&p, 0, 50, 0, 0, 0, 100);
    cr_assert_eq(p.gpu_batch_size, 32);
    cr_assert_eq(p.num_gpu_batches, 8);
    cr_assert_str_eq(p.offload_dir, "/tmp/flexh2o-offload");

    load_preset("cpu-small.json", &p);
    cr_assert(p.wg == 50 && p.wc == 30 && p.cg == 30 && p.cc == 40, "cpu-small percent");
    cr_assert_eq(p.gpu_batch_size, 4);
    cr_assert_eq(p.num_gpu_batches, 2);
    cr_assert_str_eq(p.offload_dir, "/tmp/flexh2o-offload");
}

Test(policy, load_overrides_only_given_fields)
{
    char path[128];
    snprintf(path, sizeof path, "%s/p.json", scratch);
    write_text(path, "{\"_comment\": \"x\", \"num_gpu_batches\": 4, \"gpu_mem\": 17179869184,"
                     " \"cpu_mem\": \"1.5G\", \"overlap\": false, \"offload_dir\": \"/nvme/x\","
                     " \"weight_layers\": true}");
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = 3;
    cr_assert_eq(sched_policy_load(path, &p), 0, "%s", err_msg());
    cr_assert_eq(p.gpu_batch_size, 3);
    cr_assert_eq(p.num_gpu_batches, 4);
    cr_assert_eq(p.gpu_mem, 16ull << 30);
    cr_assert_eq(p.cpu_mem, 3ull << 29);
    cr_assert_eq(p.overlap, 0);
    cr_assert_eq(p.pin_weight, 1);
    cr_assert_str_eq(p.offload_dir, "/nvme/x");
    cr_assert_eq(p.weight_layers, 1);
    assert_pct(&p, 100, 0, 100, 0, 100, 0);
}

/* Every field of a and b equal (not memcmp: the struct has padding). */
static int same_policy(const sched_policy *a, const sched_policy *b)
{
    return a->gpu_batch_size == b->gpu_batch_size && a->num_gpu_batches == b->num_gpu_batches &&
           a->wg == b->wg && a->wc == b->wc && a->cg == b->cg && a->cc == b->cc &&
           a->hg == b->hg && a->hc == b->hc && a->overlap == b->overlap &&
           a->pin_weight == b->pin_weight && a->cpu_attention == b->cpu_attention &&
           a->compress_weight == b->compress_weight && a->compress_cache == b->compress_cache &&
           a->weight_layers == b->weight_layers && a->prefill_rows == b->prefill_rows &&
           a->gpu_mem == b->gpu_mem && a->cpu_mem == b->cpu_mem &&
           strcmp(a->offload_dir, b->offload_dir) == 0;
}

/* The flags generate lays over a policy file: only the fields named, the
 * six percentages as one, whatever was in the file otherwise. */
Test(policy, apply_overrides_only_the_fields_given)
{
    sched_policy file, flags;
    sched_policy_default(&file);
    file.gpu_batch_size = 32;
    file.num_gpu_batches = 4;
    file.wg = 20, file.wc = 80, file.cg = 0, file.cc = 100, file.hg = 0, file.hc = 100;
    file.overlap = 0;
    file.gpu_mem = 16ull << 30;
    snprintf(file.offload_dir, sizeof file.offload_dir, "/nvme/file");
    sched_policy_default(&flags);
    flags.gpu_batch_size = 5;
    flags.num_gpu_batches = 7;
    flags.wg = 50, flags.wc = 50, flags.cg = 10, flags.cc = 90, flags.hg = 100, flags.hc = 0;
    flags.gpu_mem = 1ull << 30;
    flags.cpu_mem = 2ull << 30;
    flags.overlap = 1;
    flags.pin_weight = 0;
    flags.cpu_attention = flags.compress_weight = flags.compress_cache = 1;
    flags.weight_layers = 1;
    flags.prefill_rows = 1024;
    snprintf(flags.offload_dir, sizeof flags.offload_dir, "/nvme/flag");

    sched_policy p = file;
    cr_assert_eq(sched_policy_apply(&p, &flags, 0), 0);
    cr_assert(same_policy(&p, &file), "no bits given changed the policy");

    p = file;
    cr_assert_eq(sched_policy_apply(&p, &flags, SCHED_POLICY_GPU_BATCH_SIZE |
                                                    SCHED_POLICY_PERCENT |
                                                    SCHED_POLICY_CPU_MEM |
                                                    SCHED_POLICY_PIN_WEIGHT), 0);
    cr_assert_eq(p.gpu_batch_size, 5);
    cr_assert_eq(p.num_gpu_batches, 4, "not given: the file's");
    assert_pct(&p, 50, 50, 10, 90, 100, 0);
    cr_assert_eq(p.gpu_mem, 16ull << 30);
    cr_assert_eq(p.cpu_mem, 2ull << 30);
    cr_assert_eq(p.overlap, 0);
    cr_assert_eq(p.pin_weight, 0);
    cr_assert_eq(p.cpu_attention, 0);
    cr_assert_str_eq(p.offload_dir, "/nvme/file");

    p = file;
    cr_assert_eq(sched_policy_apply(&p, &flags, SCHED_POLICY_ALL), 0);
    cr_assert(same_policy(&p, &flags), "every bit given: the flags' policy");

    /* one bit each: exactly that field moves */
    static const unsigned bits[] = {
        SCHED_POLICY_GPU_BATCH_SIZE, SCHED_POLICY_NUM_GPU_BATCHES, SCHED_POLICY_PERCENT,
        SCHED_POLICY_GPU_MEM, SCHED_POLICY_CPU_MEM, SCHED_POLICY_OFFLOAD_DIR,
        SCHED_POLICY_OVERLAP, SCHED_POLICY_PIN_WEIGHT, SCHED_POLICY_CPU_ATTENTION,
        SCHED_POLICY_COMPRESS_WEIGHT, SCHED_POLICY_COMPRESS_CACHE, SCHED_POLICY_WEIGHT_LAYERS,
        SCHED_POLICY_PREFILL_ROWS};
    unsigned all = 0;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        all |= bits[i];
        p = file;
        cr_assert_eq(sched_policy_apply(&p, &flags, bits[i]), 0);
        cr_assert(!same_policy(&p, &file), "bit 0x%x changed nothing", bits[i]);
        cr_assert(!same_policy(&p, &flags), "bit 0x%x changed everything", bits[i]);
        sched_policy q = flags;
        cr_assert_eq(sched_policy_apply(&q, &file, SCHED_POLICY_ALL & ~bits[i]), 0);
        cr_assert(same_policy(&p, &q), "bit 0x%x: more than its field", bits[i]);
    }
    cr_assert_eq(all, SCHED_POLICY_ALL, "a field bit without a case here");

    p = file;
    cr_assert_eq(sched_policy_apply(&p, &flags, SCHED_POLICY_ALL + 1u), -EINVAL);
    assert_msg("unknown field bits");
    cr_assert(same_policy(&p, &file), "a refused call changed the policy");
}

Test(policy, load_refusals)
{
    static const struct {
        const char *json;
        const char *msg;
    } bad[] = {
        {"{\"gpu_batchsize\": 8}", "unknown field \"gpu_batchsize\"; expected one of"},
        {"{\"gpu_batch_size\": \"8\"}", "field \"gpu_batch_size\" is a string; expected an integer"},
        {"{\"gpu_batch_size\": 0}", "field \"gpu_batch_size\" is 0; expected an integer"},
        {"{\"num_gpu_batches\": 2.5}", "field \"num_gpu_batches\" is 2.5; expected an integer"},
        {"{\"overlap\": 1}", "field \"overlap\" is a number; expected true or false"},
        {"{\"pin_weight\": \"yes\"}", "field \"pin_weight\" is a string; expected true or false"},
        {"{\"cpu_attention\": null}", "field \"cpu_attention\" is null; expected true or false"},
        {"{\"percent\": [100, 0, 100, 0, 100]}", "field \"percent\" is an array of another length"},
        {"{\"percent\": \"100 0 100 0 100 0\"}", "field \"percent\" is a string; expected six"},
        {"{\"percent\": [100, 0, 100, 0, 100, 101]}", "field \"percent\" item 6 is not a number"},
        {"{\"percent\": [100, 0, \"1\", 0, 100, 0]}", "field \"percent\" item 3 is not a number"},
        {"{\"gpu_mem\": \"16Q\"}", "field \"gpu_mem\" must be a size like 16G"},
        {"{\"gpu_mem\": true}", "field \"gpu_mem\" is a boolean; expected a size"},
        {"{\"cpu_mem\": -5}", "field \"cpu_mem\" is -5; expected a whole number of bytes"},
        {"{\"offload_dir\": 3}", "field \"offload_dir\" is a number; expected a directory"},
        {"[1, 2]", "expected a JSON object"},
        {"{\"gpu_batch_size\": 8,", "not valid JSON"},
        {"gpu_batch_size = 8", "not valid JSON"},
    };
    char path[128];
    snprintf(path, sizeof path, "%s/bad.json", scratch);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(path, bad[i].json);
        sched_policy p;
        sched_policy_default(&p);
        err_clear();
        int rc = sched_policy_load(path, &p);
        cr_assert_eq(rc, -EINVAL, "%s accepted", bad[i].json);
        cr_assert(strncmp(err_msg(), path, strlen(path)) == 0, "%s: message \"%s\" does not "
                  "start with the file name", bad[i].json, err_msg());
        assert_msg(bad[i].msg);
        /* a refused file changes nothing */
        sched_policy d;
        sched_policy_default(&d);
        cr_assert(memcmp(&p, &d, sizeof p) == 0, "%s: policy changed", bad[i].json);
    }
}

Test(policy, load_missing_file)
{
    char path[128];
    snprintf(path, sizeof path, "%s/none.json", scratch);
    sched_policy p;
    sched_policy_default(&p);
    cr_assert_eq(sched_policy_load(path, &p), -ENOENT);
    assert_msg(path);
}

/* ------------------------------------------------------------ describe */

Test(policy, describe)
{
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = 32;
    p.num_gpu_batches = 4;
    p.wg = 20;
    p.wc = 80;
    p.cg = 0;
    p.cc = 100;
    p.cpu_attention = 1;
    char buf[256];
    sched_policy_describe(&p, buf, sizeof buf);
    cr_assert_str_eq(buf, "block 32x4, weights 20/80/0, KV 0/100/0, act 100/0/0, overlap, "
                          "cpu-attention");

    p.overlap = 0;
    p.cpu_attention = 0;
    p.pin_weight = 0;
    p.wg = 33.3;
    p.wc = 33.3;
    sched_policy_describe(&p, buf, sizeof buf);
    cr_assert_str_eq(buf, "block 32x4, weights 33.3/33.3/33.4, KV 0/100/0, act 100/0/0, "
                          "no overlap, unpinned weights");

    p.weight_layers = 1;
    sched_policy_describe(&p, buf, sizeof buf);
    cr_assert_str_eq(buf, "block 32x4, weights 33.3/33.3/33.4 of all layers, KV 0/100/0, "
                          "act 100/0/0, no overlap, unpinned weights");

    /* a short buffer is cut, not overrun */
    char small[12];
    memset(small, 'x', sizeof small);
    sched_policy_describe(&p, small, 8);
    cr_assert_str_eq(small, "block 3");
    cr_assert_eq(small[8], 'x');
}

/* ------------------------------------------------------------ split */

static void split(int n, double g, double c, int eg, int ec, int ed)
{
    int a = -9, b = -9, d = -9;
    sched_split(n, g, c, &a, &b, &d);
    cr_assert(a == eg && b == ec && d == ed, "split(%d, %g, %g) = %d/%d/%d, expected %d/%d/%d",
              n, g, c, a, b, d, eg, ec, ed);
}

Test(policy, split_cases)
{
    split(8, 100, 0, 8, 0, 0);
    split(8, 0, 100, 0, 8, 0);
    split(8, 0, 0, 0, 0, 8);
    split(0, 30, 40, 0, 0, 0);
    split(1, 50, 0, 1, 0, 0);  /* ties round up */
    split(4, 30, 40, 1, 2, 1); /* round(1.2) = 1, round(2.8) = 3 */
    split(1, 33, 33, 0, 1, 0);
    split(2, 33, 33, 1, 0, 1);
    split(3, 33, 33, 1, 1, 1);
    split(7, 33, 33, 2, 3, 2);
    split(5, 150, 0, 5, 0, 0);  /* out of range: clamped, still sums to n */
    split(5, -10, 50, 0, 2, 3);
    split(5, NAN, NAN, 0, 0, 5);
}

Test(policy, split_always_sums)
{
    for (int n = 0; n <= 64; n++)
        for (int g = 0; g <= 100; g += 1)
            for (int c = 0; c + g <= 100; c += 3) {
                int a, b, d;
                sched_split(n, g, c, &a, &b, &d);
                cr_assert(a >= 0 && b >= 0 && d >= 0 && a + b + d == n,
                          "split(%d, %d, %d) = %d/%d/%d", n, g, c, a, b, d);
                /* each count is within one of its exact share */
                cr_assert(fabs(a - n * g / 100.0) <= 0.5 + 1e-9, "gpu share %d of %d", a, n);
                cr_assert(fabs(d - n * (100 - g - c) / 100.0) <= 1 + 1e-9, "disk %d", d);
            }
}

/* ------------------------------------------------------------ trace */

#define N_THREADS 4
#define N_PER_THREAD 500

struct worker {
    sched_trace *t;
    int id;
};

static const char *track_cat[5] = {"", "compute", "load", "store", "load"};

static void *record(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < N_PER_THREAD; i++) {
        double t0 = sched_trace_now();
        sched_event e = {
            .name = w->id == 0 ? "compute" : "load \"weights\"",
            .cat = track_cat[w->id + 1],
            .track = w->id + 1,
            .t0 = t0,
            .t1 = t0 + 1e-3,
            .tier = w->id == 0 ? NULL : "cpu",
            .bytes = (uint64_t)(w->id * 1000000 + i),
            .layer = i % 7,
            .batch = w->id == 3 ? -1 : w->id,
            .step = i,
        };
        sched_trace_add(w->t, &e);
    }
    return NULL;
}

static cJSON *read_json(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(off_read_file(path, &text, &len), 0, "%s", err_msg());
    cJSON *j = cJSON_ParseWithLength(text, len);
    cr_assert(j, "%s is not JSON: %.200s", path, text);
    free(text);
    return j;
}

Test(policy, trace_threads_all_written)
{
    sched_trace *t = NULL;
    cr_assert_eq(sched_trace_create(&t), 0);
    sched_trace_add(NULL, &(sched_event){.name = "x"}); /* no recorder: nothing happens */
    pthread_t th[N_THREADS];
    struct worker w[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (struct worker){t, i};
        cr_assert_eq(pthread_create(&th[i], NULL, record, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(sched_trace_count(t), N_THREADS * N_PER_THREAD);
    cr_assert_eq(sched_trace_count(NULL), 0);

    char path[128];
    snprintf(path, sizeof path, "%s/trace.json", scratch);
    cr_assert_eq(sched_trace_write(t, path), 0, "%s", err_msg());
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "%s left behind", tmp);
    sched_trace_destroy(t);

    cJSON *j = read_json(path);
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "displayTimeUnit")), "ms");
    const cJSON *ev = cJSON_GetObjectItem(j, "traceEvents");
    cr_assert(cJSON_IsArray(ev));

    static const char *tracks[5] = {"", "compute", "h2d (loads)", "d2h (stores)", "disk"};
    int named[5] = {0}, seen_meta_after_x = 0, n_x = 0;
    int per_track[5] = {0};
    unsigned char got[N_THREADS][N_PER_THREAD] = {{0}};
    const cJSON *e;
    cJSON_ArrayForEach(e, ev) {
        const char *ph = cJSON_GetStringValue(cJSON_GetObjectItem(e, "ph"));
        cr_assert(ph);
        int tid = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(e, "tid"));
        cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(e, "pid")), 1);
        const cJSON *args = cJSON_GetObjectItem(e, "args");
        cr_assert(cJSON_IsObject(args));
        if (strcmp(ph, "M") == 0) {
            seen_meta_after_x |= n_x > 0;
            if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(e, "name")), "thread_name"))
                continue;
            cr_assert(tid >= 1 && tid <= 4, "thread_name for tid %d", tid);
            cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(args, "name")),
                             tracks[tid]);
            named[tid]++;
            continue;
        }
        cr_assert_str_eq(ph, "X");
        n_x++;
        cr_assert(tid >= 1 && tid <= 4);
        per_track[tid]++;
        int id = tid - 1;
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
        cr_assert_str_eq(name, id == 0 ? "compute" : "load \"weights\"");
        cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(e, "cat")), track_cat[tid]);
        double ts = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "ts"));
        double dur = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "dur"));
        cr_assert(ts >= 0 && ts < 60e6, "ts %g is not microseconds since creation", ts);
        cr_assert(fabs(dur - 1000) < 0.01, "dur %g, expected 1000 us", dur);

        const cJSON *tier = cJSON_GetObjectItem(args, "tier");
        if (id == 0)
            cr_assert_null(tier, "a NULL tier is written");
        else
            cr_assert_str_eq(cJSON_GetStringValue(tier), "cpu");
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(args, "step"));
        cr_assert(step >= 0 && step < N_PER_THREAD);
        const cJSON *bytes = cJSON_GetObjectItem(args, "bytes");
        if (id == 0 && step == 0)
            cr_assert_null(bytes, "0 bytes is written");
        else
            cr_assert_eq((uint64_t)cJSON_GetNumberValue(bytes), (uint64_t)(id * 1000000 + step));
        cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(args, "layer")), step % 7);
        const cJSON *batch = cJSON_GetObjectItem(args, "batch");
        if (id == 3)
            cr_assert_null(batch, "batch -1 is written");
        else
            cr_assert_eq(cJSON_GetNumberValue(batch), id);
        cr_assert_eq(got[id][step], 0, "event %d/%d twice", id, step);
        got[id][step] = 1;
    }
    for (int i = 1; i <= 4; i++) {
        cr_assert_eq(named[i], 1, "track %d named %d times", i, named[i]);
        cr_assert_eq(per_track[i], N_PER_THREAD, "track %d has %d events", i, per_track[i]);
    }
    cr_assert_eq(n_x, N_THREADS * N_PER_THREAD);
    cr_assert_not(seen_meta_after_x, "metadata events must come first");
    cJSON_Delete(j);
}

Test(policy, trace_empty_and_ts_relative)
{
    sched_trace *t = NULL;
    cr_assert_eq(sched_trace_create(&t), 0);
    char path[128];
    snprintf(path, sizeof path, "%s/empty.json", scratch);
    cr_assert_eq(sched_trace_write(t, path), 0, "%s", err_msg());
    cJSON *j = read_json(path);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "traceEvents")), 5);
    cJSON_Delete(j);

    /* an event 2 ms after creation lands at ts ~2000 us, with no args */
    double now = sched_trace_now();
    sched_event e = {"compute", "compute", TRACK_COMPUTE, now + 2e-3, now + 2.5e-3,
                     NULL, 0, -1, -1, -1};
    sched_trace_add(t, &e);
    cr_assert_eq(sched_trace_write(t, path), 0, "%s", err_msg()); /* overwrites */
    sched_trace_destroy(t);
    j = read_json(path);
    const cJSON *last = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "traceEvents"), 5);
    cr_assert(last);
    double ts = cJSON_GetNumberValue(cJSON_GetObjectItem(last, "ts"));
    cr_assert(ts >= 2000 && ts < 2000 + 1e6, "ts %g", ts);
    cr_assert(fabs(cJSON_GetNumberValue(cJSON_GetObjectItem(last, "dur")) - 500) < 0.01);
    cr_assert_null(cJSON_GetObjectItem(last, "args")->child, "empty args expected");
    cJSON_Delete(j);
}

Test(policy, trace_write_missing_dir)
{
    sched_trace *t = NULL;
    cr_assert_eq(sched_trace_create(&t), 0);
    sched_event e = {"compute", "compute", TRACK_COMPUTE, 0, 0, NULL, 0, -1, -1, -1};
    sched_trace_add(t, &e);
    char path[160];
    snprintf(path, sizeof path, "%s/no/such/dir/trace.json", scratch);
    int rc = sched_trace_write(t, path);
    sched_trace_destroy(t);
    cr_assert_eq(rc, -ENOENT, "rc %d: %s", rc, err_msg());
    assert_msg(path);
    assert_msg("cannot write the trace");
    sched_trace_destroy(NULL);
}
