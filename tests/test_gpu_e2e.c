/* test_gpu_e2e.c: the CUDA backend end to end, through the CLI (gpu suite;
 * the kernel ops one by one are test_kern_cuda.c's).
 *
 *   1. `--device cuda` without a GPU fails with one message that says to
 *      use --device cpu, writes nothing, and the CPU still works. Where a
 *      GPU is present, the run hides it (CUDA_VISIBLE_DEVICES=-1), so this
 *      test runs on every machine;
 *   2. the golden tiny model's greedy tokens on the GPU equal the CPU's,
 *      all-resident and through the offloading scheduler (weights, KV and
 *      activations over three tiers, CPU attention over the fp16 host KV,
 *      H2O);
 *   3. 4-bit weights and KV: every placement whose attention runs on the
 *      GPU gives the bytes of the compressed all-resident run, and CPU
 *      attention over the 4-bit host cache generates every token;
 *   4. the KV policies on CUDA evict what the CPU evicts (window and
 *      streaming exactly, h2o up to near-ties) and keep the same mass;
 *   5. a whole run on CUDA (several GPU batches, CPU-tier KV staged or
 *      attended by CPU threads, H2O, temperature sampling) allocates
 *      nothing on the backend after its set-up, and its tokens are those
 *      of `generate --device cuda` with the same flags;
 *   6. every model family's golden tokens (transformers) on CUDA, and the
 *      tiny Llama (grouped-query attention) through the scheduler;
 *   7. sched_kv_copy on CUDA: a prompt's KV copied between the GPU tier,
 *      the CPU tier (staged, or attended in place by CPU threads: the fp16
 *      and 4-bit host caches) and the disk tier, across GPU batches;
 *   8. the request controls (penalties, biases, stop ids, top logprobs, n
 *      samples) on CUDA; 9. two MPI ranks sharing the GPU;
 *  10. eval's perplexity and score's loglikelihoods on CUDA: transformers'
 *      numbers on the golden model, in every placement, H2O's the CPU's;
 *      rotary models generating past max_position_embeddings with a KV
 *      budget.
 * 2-7 skip, saying why, where no GPU is present. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "gen_harness.h"
#include "golden_harness.h"
#include "h2o_trace.h"
#include "kv_copy_harness.h"
#include "kern.h"
#include "model_config.h"
#include "gpu_timeout.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"

/* FH_CUDA_EMU (gpu_timeout.h): this program runs over flexh2o-emu, the
 * CUDA backend on tests/cuda_emu's emulated device, a CUDA build in all but
 * name */
#define CUDA_BUILT (FH_HAVE_CUDA || FH_CUDA_EMU)

/* ---------------------------------------------------- 1. no GPU, no run */

TestSuite(gpu_cli, .init = cli_setup, .fini = cli_teardown);

Test(gpu_cli, cuda_without_a_gpu_says_so_and_cpu_still_works)
{
    /* the child sees no device; this process (a fork of the runner, one per
     * test) keeps its own */
    if (kern_cuda_available())
        cr_assert_eq(setenv("CUDA_VISIBLE_DEVICES", "-1", 1), 0);
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 9]}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --device cuda"),
                 1, "%s", cli_err);
    cr_assert(strstr(cli_err, CUDA_BUILT ? "no CUDA GPU found" : "built without CUDA"), "%s",
              cli_err);
    cr_assert(strstr(cli_err, "--device cpu"), "%s", cli_err);
    cr_assert(!cli_exists("o.jsonl"), "nothing may be written when set-up fails");
    /* the CPU still works */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out o.jsonl --quiet "
                         "--max-new-tokens 2 --device cpu"), 0, "%s", cli_err);
    char *o = cli_read("o.jsonl");
    cr_assert(strchr(o, '\n') && !strchr(strchr(o, '\n') + 1, '\n'), "one record: %s", o);
    free(o);
}

/* ------------------------------------------------- 2-4. on the GPU itself */

static void gpu_setup(void)
{
    cli_setup();
    if (!kern_cuda_available())
        cli_skip("%s; the CUDA backend is compiled but not run end to end",
                 CUDA_BUILT ? "no CUDA GPU found" : "built without CUDA");
}

TestSuite(gpu_e2e, .init = gpu_setup, .fini = cli_teardown);

/* p.jsonl (the three prompts of 2 and 3, then `more` lines) and off/ in
 * cli_dir. */
static void tiny_job(const char *more)
{
    char text[1024], off[300];
    snprintf(text, sizeof text,
             "{\"prompt_ids\": [2, 37, 101, 5, 300]}\n"
             "{\"prompt\": \"Hello world, the heavy hitters\"}\n"
             "{\"prompt_ids\": [2, 9]}\n%s", more);
    cli_write("p.jsonl", text);
    snprintf(off, sizeof off, "%s/off", cli_dir);
    cr_assert_eq(mkdir(off, 0755), 0, "cannot make %s", off);
}

/* The "tokens" arrays of two output files in cli_dir, line by line. */
static void assert_same_tokens(const char *fa, const char *fb, int lines, const char *what)
{
    char *a = cli_read(fa), *b = cli_read(fb);
    char *la = a, *lb = b;
    for (int line = 0; line < lines; line++) {
        char *ta = strstr(la, "\"tokens\":"), *tb = strstr(lb, "\"tokens\":");
        cr_assert(ta && tb, "%s, prompt %d: no tokens", what, line);
        size_t na = strcspn(ta, "]"), nb = strcspn(tb, "]");
        cr_assert(na == nb && !strncmp(ta, tb, na), "%s, prompt %d: %s has %.*s, %s %.*s",
                  what, line, fa, (int)na, ta, fb, (int)nb, tb);
        la = strchr(ta, '\n');
        lb = strchr(tb, '\n');
        cr_assert(la && lb);
    }
    free(a);
    free(b);
}

Test(gpu_e2e, tiny_model_greedy_tokens_equal_cpu)
{
    tiny_job("");
    static const char *variants[] = {
        "--batch-size 3",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 30 30 34 33 0 100",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 30 30 0 50 100 0 --cpu-attention",
        ("--gpu-batch-size 2 --num-gpu-batches 2 --percent 100 0 0 100 100 0 --cpu-attention "
         "--kv-policy h2o --kv-ratio 0.5"),
        /* layers cut at different tensors: some resident, some over three tiers */
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 55 30 34 33 0 100 --weight-layers",
    };
    const char *dev[] = {"cpu", "cuda"};
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        for (int i = 0; i < 2; i++)
            cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out %s%zu.jsonl "
                                 "--max-new-tokens 12 --quiet --device %s %s --offload-dir off",
                                 dev[i], v, dev[i], variants[v]),
                         0, "%s on %s: %s", variants[v], dev[i], cli_err);
        char fa[32], fb[32];
        snprintf(fa, sizeof fa, "cpu%zu.jsonl", v);
        snprintf(fb, sizeof fb, "cuda%zu.jsonl", v);
        assert_same_tokens(fa, fb, 3, variants[v]);
    }
}

/* A bf16 store (convert --dtype bf16) on CUDA: its layers convert to fp16 on
 * load (exact for the tiny model's values: bf16's 8 mantissa bits fit
 * fp16's 10), the disk share into weights.bin; the greedy tokens are the
 * CPU backend's, which streams the same store as bf16. */
Test(gpu_e2e, bf16_store_runs_on_cuda_as_on_the_cpu, .timeout = GPU_TIMEOUT(120))
{
    tiny_job("");
    cr_assert_eq(cli_run("convert --model " TINY " --out stb --dtype bf16"), 0, "%s", cli_err);
    const char *dev[] = {"cpu", "cuda"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(cli_run("generate --model stb --prompts p.jsonl --out b%s.jsonl "
                             "--max-new-tokens 12 --quiet --device %s --gpu-batch-size 2 "
                             "--num-gpu-batches 2 --percent 30 30 100 0 100 0 --offload-dir off",
                             dev[i], dev[i]), 0, "bf16 store on %s: %s", dev[i], cli_err);
        cr_assert_eq(cli_exists("off/weights.bin"), i == 1,
                     "%s: the disk share streams from a bf16 store on the CPU only", dev[i]);
    }
    assert_same_tokens("bcpu.jsonl", "bcuda.jsonl", 3, "bf16 store");
}

Test(gpu_e2e, tiny_model_4bit_placements_equal_all_resident)
{
    tiny_job("{\"prompt\": \"four\"}\n");
    static const char *variants[] = {
        "",
        "--percent 30 30 34 33 0 100",
        "--percent 0 0 0 0 100 0",
        "--percent 0 100 0 100 100 0 --no-overlap",
        "--percent 50 50 0 100 100 0 --cpu-attention",
        "--percent 30 30 34 33 0 100 --warm-up", /* the warm-up writes nothing */
        "--percent 55 30 34 33 0 100 --weight-layers", /* 4-bit blobs cut per layer */
    };
    char *want = NULL;
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out q%zu.jsonl "
                             "--max-new-tokens 12 --ignore-eos --quiet --device cuda "
                             "--gpu-batch-size 2 --num-gpu-batches 2 --compress-weight "
                             "--compress-cache --kv-policy h2o --kv-ratio 0.5 --offload-dir off %s",
                             v, variants[v]),
                     0, "%s: %s", variants[v], cli_err);
        char name[32];
        snprintf(name, sizeof name, "q%zu.jsonl", v);
        char *got = cli_read(name);
        int lines = 0;
        for (const char *c = got; *c; c++)
            lines += *c == '\n';
        cr_assert_eq(lines, 4, "%s: %d lines", variants[v], lines);
        if (v == 0)
            want = got;
        else if (!strstr(variants[v], "--cpu-attention"))
            cr_assert_str_eq(got, want, "4-bit %s differs from all-resident", variants[v]);
        if (v != 0)
            free(got);
    }
    free(want);
}

/* fp16 K/V and another summation order change the scores a little, so h2o
 * may break a near-tie the other way; window and streaming evict by
 * position alone and must trace exactly what the CPU traces. */
/* Disk KV on CUDA (records staged through the lanes' host buffers): a
 * decode step reads the slots in use of each record and writes back a
 * fraction of it, and the tokens are the all-resident run's, for the full
 * cache and H2O (test_sched's a_decode_step_moves_a_fraction_of_a_disk_kv_
 * record on the CPU;
 * here the rows are fp16, so H2O keeps 0.8 of the cache: 10 pages of K a
 * sequence and head, evicting for the last 40 steps). */
Test(gpu_e2e, disk_kv_write_back_on_cuda, .timeout = GPU_TIMEOUT(120))
{
    gen_harness_wide_model();
    static const char *kv[] = {"", "--kv-policy h2o --kv-ratio 0.8 --sinks 1"};
    for (int i = 0; i < 2; i++) {
        const char *run = "generate --model wide --prompts pw.jsonl --max-new-tokens 200 "
                          "--ignore-eos --gpu-batch-size 2 --num-gpu-batches 2 --quiet "
                          "--device cuda";
        cr_assert_eq(cli_run("%s %s --out wa%d.jsonl", run, kv[i], i), 0, "%s", cli_err);
        cr_assert_eq(cli_run("%s %s --out wb%d.jsonl --percent 100 0 0 0 100 0 --offload-dir . "
                             "--trace wt%d.json", run, kv[i], i, i), 0, "%s", cli_err);
        char a[32], b[32], t[32];
        snprintf(a, sizeof a, "wa%d.jsonl", i);
        snprintf(b, sizeof b, "wb%d.jsonl", i);
        snprintf(t, sizeof t, "wt%d.json", i);
        assert_same_tokens(a, b, 4, kv[i][0] ? kv[i] : "full cache, KV on disk");
        gen_harness_disk_kv_moves(t, kv[i][0] ? kv[i] : "full cache");
    }
}

Test(gpu_e2e, cuda_backend_follows_the_same_policies, .timeout = GPU_TIMEOUT(120))
{
    model_config mc;
    cr_assert_eq(model_config_load(TINY "/config.json", &mc), 0, "%s", err_msg());
    h2o_write_prompts("p.jsonl");
    const char *base = "generate --model " TINY " --prompts p.jsonl --quiet --ignore-eos "
                       "--batch-size 3 --stats";
    const char *pols[] = {"--kv-policy window --kv-budget 5",
                          "--kv-policy streaming --kv-budget 6 --sinks 2",
                          "--kv-policy h2o --kv-budget 6 --sinks 1"};
    for (int i = 0; i < 3; i++) {
        double mass[2][8];
        cr_assert_leq(mc.n_layer, 8);
        for (int g = 0; g < 2; g++) {
            cli_device = g ? "cuda" : "cpu";
            cr_assert_eq(cli_run("%s %s --out o%d%d.jsonl --trace-evictions t%d%d.jsonl", base,
                                 pols[i], i, g, i, g),
                         0, "%s on %s: %s", pols[i], cli_device, cli_err);
            char *so = cli_read("stdout.txt");
            for (int l = 0; l < mc.n_layer; l++) {
                char key[32];
                snprintf(key, sizeof key, "layer %d: ", l);
                const char *at = strstr(so, key);
                cr_assert(at, "%s", so);
                mass[g][l] = strtod(at + strlen(key), NULL);
            }
            free(so);
        }
        cli_device = "cpu";
        char ta[32], tb[32];
        snprintf(ta, sizeof ta, "t%d0.jsonl", i);
        snprintf(tb, sizeof tb, "t%d1.jsonl", i);
        int na, nb, same = 0;
        h2o_ev *a = h2o_read_trace(ta, mc.n_layer, mc.n_head, &na);
        h2o_ev *b = h2o_read_trace(tb, mc.n_layer, mc.n_head, &nb);
        cr_assert_eq(na, nb, "%s: %d evictions on the CPU, %d on CUDA", pols[i], na, nb);
        qsort(a, (size_t)na, sizeof *a, h2o_ev_cmp);
        qsort(b, (size_t)nb, sizeof *b, h2o_ev_cmp);
        for (int e = 0; e < na; e++)
            same += h2o_ev_cmp(&a[e], &b[e]) == 0;
        if (i < 2)
            cr_assert_eq(same, na, "%s: CUDA evicted other positions than the CPU", pols[i]);
        else
            cr_assert_geq(same, na * 9 / 10, "%s: only %d of %d evictions agree", pols[i],
                          same, na);
        for (int l = 0; l < mc.n_layer; l++)
            cr_assert_float_eq(mass[1][l], mass[0][l], 0.02, "%s layer %d: kept mass %g on "
                               "CUDA, %g on the CPU", pols[i], l, mass[1][l], mass[0][l]);
        cr_log_info("%s: %d/%d evictions agree with the CPU", pols[i], same, na);
        free(a);
        free(b);
    }
}

/* 5. The decode path allocates nothing on CUDA either: staging through the
 * pinned ring, work spaces and sampling within what sched_create reserved
 * (backend_ops.reserve), CPU attention's host scratch from the scheduler. */
Test(gpu_e2e, a_whole_run_allocates_nothing_after_set_up, .timeout = GPU_TIMEOUT(120))
{
    gen_harness_job();
    static const struct {
        const char *percent;
        int cpu_attention;
    } runs[] = {
        {"100 0 0 100 100 0", 0},  /* CPU-tier KV staged to the GPU, device-ordered */
        {"30 30 34 33 0 100", 1},  /* three tiers, CPU attention over the host KV */
    };
    backend be;
    cr_assert_eq(backend_cuda_create(0, &be), 0, "a CUDA GPU is present but the backend did "
                 "not start: %s", err_msg());
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        char a[32], b[32];
        snprintf(a, sizeof a, "%zuin.jsonl", r);
        snprintf(b, sizeof b, "%zuc.jsonl", r);
        const char *attn = runs[r].cpu_attention ? "--cpu-attention" : "";
        uint64_t during = gen_harness_run(&be, runs[r].percent, runs[r].cpu_attention, a, NULL);
        cr_assert_eq(during, 0, "--percent %s %s: %llu backend allocations after set-up",
                     runs[r].percent, attn, (unsigned long long)during);
        cr_assert_eq(cli_run("generate --model " TINY " " GEN_HARNESS_FLAGS " --out %s "
                             "--percent %s %s --quiet --device cuda", b, runs[r].percent, attn),
                     0, "%s", cli_err);
        assert_same_tokens(a, b, GEN_HARNESS_PROMPTS, runs[r].percent);
    }
    backend_destroy(&be);
}

/* ------------------------------------------------- 6. the model families */

/* Every family's golden greedy tokens (transformers, fp32) on CUDA (fp16
 * storage), step by step while the golden top-2 margin leaves fp16 room
 * (0.1 in logits: beyond a closer step the continuation may fairly
 * differ), with log-probabilities within 0.05; then the tiny Llama
 * (grouped-query attention) through the offloading scheduler gives the
 * bytes of its all-resident CUDA run wherever its attention runs on the
 * GPU, and every token with CPU attention. */
Test(gpu_e2e, families_match_transformers_on_cuda, .timeout = GPU_TIMEOUT(120))
{
    static const char *fams[] = {"llama", "mistral", "qwen2", "neox", "neox-seq"};
    for (size_t f = 0; f < sizeof fams / sizeof *fams; f++) {
        golden g;
        char path[512];
        snprintf(path, sizeof path, FH_SOURCE_ROOT "/tests/fixtures/tiny-%s-golden.json",
                 fams[f]);
        golden_load(&g, path);
        /* every case: mistral's prompts longer than its window of 16 run
         * through the flash prefill's sliding-window band */
        int use[GOLDEN_MAX_CASES];
        for (int c = 0; c < g.n_cases; c++)
            use[c] = 1;
        char job[8192];
        size_t at = 0;
        for (int c = 0; c < g.n_cases; c++) {
            if (!use[c])
                continue;
            at += (size_t)snprintf(job + at, sizeof job - at, "{\"prompt_ids\": [");
            for (int i = 0; i < g.cases[c].n_ids; i++)
                at += (size_t)snprintf(job + at, sizeof job - at, "%s%d", i ? "," : "",
                                       g.cases[c].ids[i]);
            at += (size_t)snprintf(job + at, sizeof job - at, "]}\n");
        }
        cli_write("g.jsonl", job);
        cr_assert_eq(cli_run("generate --model " FH_SOURCE_ROOT "/tests/fixtures/tiny-%s "
                             "--prompts g.jsonl --out g-%s.jsonl --max-new-tokens %d "
                             "--ignore-eos --quiet --device cuda --batch-size 3", fams[f],
                             fams[f], g.cases[0].n_new), 0, "%s: %s", fams[f], cli_err);
        char name[64];
        snprintf(name, sizeof name, "g-%s.jsonl", fams[f]);
        char *text = cli_read(name), *line = text;
        int compared = 0;
        for (int c = 0; c < g.n_cases; c++) {
            if (!use[c])
                continue;
            char *t = strstr(line, "\"tokens\":["), *l = strstr(line, "\"logprobs\":[");
            cr_assert(t && l, "%s case %d: no record", fams[f], c);
            t += strlen("\"tokens\":[");
            l += strlen("\"logprobs\":[");
            for (int s = 0; s < g.cases[c].n_new; s++) {
                const float *lg = g.cases[c].logits + (size_t)s * g.vocab;
                float top = -INFINITY, second = -INFINITY;
                for (int v = 0; v < g.vocab; v++)
                    if (lg[v] > top) {
                        second = top;
                        top = lg[v];
                    } else if (lg[v] > second) {
                        second = lg[v];
                    }
                long tok = strtol(t, &t, 10);
                double lp = strtod(l, &l);
                t += *t == ',';
                l += *l == ',';
                if (top - second < 0.1f)
                    break;
                cr_assert_eq(tok, g.cases[c].tok[s], "%s case %d step %d: %ld, transformers %d",
                             fams[f], c, s, tok, g.cases[c].tok[s]);
                cr_assert(fabs(lp - g.cases[c].lp[s]) < 0.05, "%s case %d step %d: logprob %g, "
                          "transformers %g", fams[f], c, s, lp, g.cases[c].lp[s]);
                compared++;
            }
            line = strchr(l, '\n');
        }
        cr_assert_geq(compared, 10, "%s: only %d steps had room to compare", fams[f], compared);
        free(text);
        golden_free(&g);
    }
    tiny_job("");
    static const char *variants[] = {
        "",
        "--percent 30 30 34 33 0 100",
        "--percent 0 0 0 0 100 0 --kv-policy h2o --kv-ratio 0.5",
        "--percent 50 50 0 100 100 0 --cpu-attention",
    };
    char *want = NULL, *want_h2o = NULL;
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        int h2o = strstr(variants[v], "h2o") != NULL;
        if (h2o)
            cr_assert_eq(cli_run("generate --model " FH_SOURCE_ROOT "/tests/fixtures/tiny-llama "
                                 "--prompts p.jsonl --out lh.jsonl --max-new-tokens 12 "
                                 "--ignore-eos --quiet --device cuda --gpu-batch-size 2 "
                                 "--num-gpu-batches 2 --kv-policy h2o --kv-ratio 0.5"), 0, "%s",
                         cli_err);
        cr_assert_eq(cli_run("generate --model " FH_SOURCE_ROOT "/tests/fixtures/tiny-llama "
                             "--prompts p.jsonl --out l%zu.jsonl --max-new-tokens 12 "
                             "--ignore-eos --quiet --device cuda --gpu-batch-size 2 "
                             "--num-gpu-batches 2 --offload-dir off %s", v, variants[v]), 0,
                     "%s: %s", variants[v], cli_err);
        char name[32];
        snprintf(name, sizeof name, "l%zu.jsonl", v);
        char *got = cli_read(name);
        if (v == 0) {
            want = got;
            continue;
        }
        if (h2o) {
            want_h2o = cli_read("lh.jsonl");
            cr_assert_str_eq(got, want_h2o, "llama h2o %s differs from all-resident", variants[v]);
        } else if (!strstr(variants[v], "--cpu-attention")) {
            cr_assert_str_eq(got, want, "llama %s differs from all-resident", variants[v]);
        } else {
            assert_same_tokens("l0.jsonl", name, 3, variants[v]);
        }
        free(got);
    }
    free(want);
    free(want_h2o);
}

/* ------------------------------------------------------ 7. KV copy */

/* kv_copy_harness.h's checks on CUDA. Sequences attended by CPU threads
 * (CPU attention over host caches) round otherwise than those the GPU
 * attends: the harness compares bits within each kind and the two kinds
 * within tol. A prefill of every sequence (the "own" runs) packs other
 * GEMM shapes, so fp16 rounding may differ by tol, and with H2O or 4-bit
 * KV a near-tie or a code may fall the other way: those cases compare
 * only the copies' bits (tol -1). */
Test(gpu_e2e, kv_copy_continues_as_the_source, .timeout = GPU_TIMEOUT(120))
{
    backend be;
    cr_assert_eq(backend_cuda_create(0, &be), 0, "a CUDA GPU is present but the backend did "
                 "not start: %s", err_msg());
    static const kvc_case cases[] = {
        {.gbs = 2, .K = 2, .percent = "100 0 100 0 100 0", .tol = 0.05},
        {.gbs = 3, .K = 2, .percent = "20 30 34 33 0 100", .tol = 0.05},
        {.gbs = 3, .K = 2, .percent = "20 30 34 33 0 100", .cpu_attention = 1, .tol = 0.05},
        {.gbs = 1, .K = 3, .percent = "0 50 0 100 100 0", .cpu_attention = 1, .tol = 0.05},
        {.gbs = 2, .K = 2, .percent = "100 0 0 0 100 0", .no_overlap = 1, .h2o = 1, .tol = -1},
        {.gbs = 3, .K = 2, .percent = "30 30 34 33 100 0", .cpu_attention = 1, .h2o = 1,
         .tol = -1},
        {.gbs = 3, .K = 2, .percent = "100 0 34 33 100 0", .compress_cache = 1, .h2o = 1,
         .tol = -1},
        {.gbs = 3, .K = 2, .percent = "50 50 34 33 100 0", .compress_cache = 1,
         .cpu_attention = 1, .tol = -1},
        {.model = FH_SOURCE_ROOT "/tests/fixtures/tiny-llama", .gbs = 3, .K = 2,
         .percent = "100 0 34 33 100 0", .h2o = 1, .tol = -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        kvc_check(&be, &cases[i]);
    /* CPU-tier transfers by the I/O threads instead of device-ordered */
    setenv("FLEXH2O_IO_ORDER", "host", 1);
    kvc_check(&be, &cases[1]);
    unsetenv("FLEXH2O_IO_ORDER");
    backend_destroy(&be);
}

/* The request controls on CUDA (README "Sampling"): greedy with penalties,
 * logit_bias, min_tokens and a stop id gives the CPU's tokens (both follow
 * the same edits; fp16 logits may break a near-tie, reported); top
 * logprobs list the greedy choice first; n = 3 completions (one prefill,
 * the cache copied on the device) equal three requests with seeds S, S+1,
 * S+2, on the GPU tier and with the KV cache on the CPU. */
Test(gpu_e2e, request_controls_on_cuda, .timeout = GPU_TIMEOUT(120))
{
    cli_write("c.jsonl",
              "{\"id\": \"g\", \"prompt_ids\": [2, 100, 200, 100, 7, 100], \"max_new_tokens\": "
              "10, \"repetition_penalty\": 1.5, \"frequency_penalty\": 0.5, \"presence_penalty\": "
              "0.3, \"logit_bias\": {\"50\": 2}, \"min_tokens\": 4, \"stop_token_ids\": [9], "
              "\"top_logprobs\": 4}\n");
    char *out[2];
    for (int g = 0; g < 2; g++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts c.jsonl --out c%d.jsonl "
                             "--quiet --device %s", g, g ? "cuda" : "cpu"), 0, "%s", cli_err);
        char name[32];
        snprintf(name, sizeof name, "c%d.jsonl", g);
        out[g] = cli_read(name);
    }
    const char *ta = strstr(out[0], "\"tokens\":"), *tb = strstr(out[1], "\"tokens\":");
    cr_assert(ta && tb);
    cr_assert_eq(strncmp(ta, tb, (size_t)(strchr(ta, ']') - ta)), 0,
                 "penalised greedy tokens differ: CPU %.80s, CUDA %.80s", ta, tb);
    const char *top = strstr(out[1], "\"top_logprobs\":[[[");
    cr_assert(top, "%s", out[1]);
    cr_assert_eq(atoi(top + 18), atoi(tb + 10), "the first top logprob is not the greedy choice");
    free(out[0]);
    free(out[1]);

    cli_write("n.jsonl", "{\"id\": \"q\", \"prompt_ids\": [2, 45, 300, 17, 9, 33], \"n\": 3, "
                         "\"seed\": 40, \"max_new_tokens\": 10, \"temperature\": 0.8, \"top_k\": "
                         "40, \"min_p\": 0.02}\n");
    const char *placements[] = {"--percent 100 0 100 0 100 0",
                                "--percent 100 0 0 100 100 0"};
    for (int p = 0; p < 2; p++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts n.jsonl --out n%d.jsonl "
                             "--quiet --device cuda --batch-size 3 %s", p, placements[p]), 0,
                     "%s", cli_err);
        char name[32];
        snprintf(name, sizeof name, "n%d.jsonl", p);
        char *n = cli_read(name);
        const char *at = n;
        for (int j = 0; j < 3; j++) {
            char job[256];
            snprintf(job, sizeof job, "{\"id\": \"q\", \"prompt_ids\": [2, 45, 300, 17, 9, 33], "
                     "\"seed\": %d, \"max_new_tokens\": 10, \"temperature\": 0.8, \"top_k\": "
                     "40, \"min_p\": 0.02}\n", 40 + j);
            cli_write("s.jsonl", job);
            cr_assert_eq(cli_run("generate --model " TINY " --prompts s.jsonl --out s%d%d.jsonl "
                                 "--quiet --device cuda --batch-size 3 %s", p, j, placements[p]),
                         0, "%s", cli_err);
            snprintf(name, sizeof name, "s%d%d.jsonl", p, j);
            char *s = cli_read(name);
            const char *want = strstr(s, "\"tokens\":");
            at = strstr(at, "\"tokens\":");
            cr_assert(at && want);
            cr_assert_eq(strncmp(at, want, (size_t)(strchr(want, ']') - want)), 0,
                         "%s sample %d: %.80s, alone %.80s", placements[p], j, at, want);
            at++;
            free(s);
        }
        free(n);
    }
}

/* ------------------------------------------------- 9. ranks on one GPU */

/* Scale-out (DESIGN.md "Scale-out"): ranks on a host with one GPU share it
 * (local rank mod GPUs); mpirun -n 2 on CUDA writes the single CUDA run's
 * bytes (greedy, batch 1), each rank on its own context of the device. */
Test(gpu_e2e, two_ranks_share_the_gpu_and_write_the_single_runs_bytes,
     .timeout = GPU_TIMEOUT(120))
{
    if (!FH_HAVE_MPI || system("command -v mpirun >/dev/null 2>&1") != 0)
        cli_skip("no MPI in this build or no mpirun (-Dmpi, Debian libopenmpi-dev "
                 "openmpi-bin)");
    tiny_job("");
    const char *flags = "--device cuda --batch-size 1 --max-new-tokens 6 --ignore-eos --quiet "
                        "--no-summary";
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out one.jsonl %s",
                         flags), 0, "%s", cli_err);
    cr_assert_eq(cli_run_mpi(2, NULL, "generate --model " TINY " --prompts p.jsonl --out "
                             "two.jsonl %s", flags), 0, "%s", cli_err);
    char *one = cli_read("one.jsonl"), *two = cli_read("two.jsonl");
    int lines = 0;
    for (const char *c = one; (c = strstr(c, "\"tokens\":[")); c++)
        lines++;
    cr_assert_eq(lines, 3, "the single run wrote %d records: %s", lines, one);
    cr_assert_str_eq(two, one, "2 ranks on the GPU wrote another file");
    free(one);
    free(two);
}

/* ------------------------------------------- 10. eval and score on CUDA */

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"

/* eval's JSON line (stdout.txt), "tokens" and "nll". */
static void eval_result(long *tokens, double *nll)
{
    char *out = cli_read("stdout.txt");
    cJSON *r = cJSON_Parse(out);
    cr_assert(r, "not one JSON object: %s", out);
    *tokens = (long)cJSON_GetObjectItem(r, "tokens")->valuedouble;
    *nll = cJSON_GetObjectItem(r, "nll")->valuedouble;
    cJSON_Delete(r);
    free(out);
}

/* DESIGN.md "Quality" on the GPU (issue 13: both backends): eval's
 * streaming perplexity of the golden tiny OPT on CUDA is transformers'
 * (tests/fixtures/eval-golden.json) within fp16's rounding, all resident,
 * in batches, over the three tiers with the disk and with CPU attention;
 * with H2O it is the CPU backend's (the same evictions, up to near-ties);
 * score's loglikelihoods are transformers'. Tolerances: fp16 logits of
 * magnitude 16-32 are 1/64 apart, so a single token's logprob may move by
 * 0.016 (the emulated device: up to 0.018 on score's one-token requests,
 * 0.0009 on the 202-token nll, 0.0002 between H2O's two backends). */
Test(gpu_e2e, eval_and_score_on_cuda, .timeout = GPU_TIMEOUT(120))
{
    tiny_job("");
    cJSON *g = golden_eval_load();
    int ctx = (int)cJSON_GetObjectItem(g, "context")->valuedouble;
    long want_tokens = (long)cJSON_GetObjectItem(g, "tokens")->valuedouble;
    double want_nll = cJSON_GetObjectItem(g, "nll")->valuedouble;
    static const char *runs[] = {
        "--batch-size 1",
        "--batch-size 3",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 30 30 34 33 0 100",
        "--gpu-batch-size 2 --num-gpu-batches 2 --percent 100 0 0 100 100 0 --cpu-attention",
    };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        cr_assert_eq(cli_run("eval --model " TINY " --text " FIX "eval_text.txt --context %d "
                             "--quiet --device cuda --offload-dir off %s", ctx, runs[i]),
                     0, "%s: %s", runs[i], cli_err);
        long tokens;
        double nll;
        eval_result(&tokens, &nll);
        cr_assert_eq(tokens, want_tokens, "%s", runs[i]);
        cr_assert_float_eq(nll, want_nll, 1e-2, "%s: nll %.6f on CUDA, transformers %.6f",
                           runs[i], nll, want_nll);
    }
    /* H2O: the CPU backend's evictions and nll */
    double h2o[2];
    for (int dev = 0; dev < 2; dev++) {
        cr_assert_eq(cli_run("eval --model " TINY " --text " FIX "eval_text.txt --context 40 "
                             "--quiet --device %s --batch-size 3 --kv-policy h2o --kv-budget 12 "
                             "--sinks 1", dev ? "cuda" : "cpu"), 0, "%s", cli_err);
        long tokens;
        eval_result(&tokens, &h2o[dev]);
    }
    cr_assert_float_eq(h2o[1], h2o[0], 2e-2, "H2O nll %.6f on CUDA, %.6f on the CPU", h2o[1],
                       h2o[0]);

    /* score: every golden request's loglikelihood */
    const cJSON *rq, *reqs = cJSON_GetObjectItem(g, "requests");
    golden_score_job(g, "req.jsonl");
    cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl --out res.jsonl "
                         "--batch-size 3 --quiet --device cuda"), 0, "%s", cli_err);
    char *res = cli_read("res.jsonl"), *line = strtok(res, "\n");
    int k = 0;
    cJSON_ArrayForEach(rq, reqs) {
        cr_assert(line, "%d results", k);
        cJSON *r = cJSON_Parse(line);
        cr_assert(r);
        const char *id = cJSON_GetObjectItem(rq, "id")->valuestring;
        cr_assert_str_eq(cJSON_GetObjectItem(r, "id")->valuestring, id);
        double lp = cJSON_GetObjectItem(r, "logprob")->valuedouble,
               want = cJSON_GetObjectItem(rq, "logprob")->valuedouble;
        cr_assert_float_eq(lp, want, 5e-2, "%s: logprob %.6f on CUDA, transformers %.6f", id,
                           lp, want);
        cJSON_Delete(r);
        line = strtok(NULL, "\n");
        k++;
    }
    cr_assert_null(line, "more results than requests");
    free(res);
    cJSON_Delete(g);
}

/* Long context on CUDA (issue 13, 6): with an evicting policy a rotary
 * model generates past max_position_embeddings (128 for the tiny models),
 * RoPE's angles from positions that count on; the first tokens are the CPU
 * backend's (later ones may part at an fp16 near-tie). */
Test(gpu_e2e, rotary_positions_run_past_max_positions_on_cuda, .timeout = GPU_TIMEOUT(120))
{
    cli_write("long.jsonl", "{\"id\": \"x\", \"prompt_ids\": [2, 17, 45, 300, 9], "
                            "\"max_new_tokens\": 200}\n");
    static const char *runs[][2] = {
        {"tiny-llama", "--kv-policy h2o --kv-budget 24 --sinks 2"},
        {"tiny-neox", "--kv-policy window --kv-budget 16"},
    };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        char *o[2];
        for (int dev = 0; dev < 2; dev++) {
            cr_assert_eq(cli_run("generate --model " FIX "%s --prompts long.jsonl --out "
                                 "l%zu%d.jsonl --ignore-eos --quiet --device %s %s",
                                 runs[i][0], i, dev, dev ? "cuda" : "cpu", runs[i][1]),
                         0, "%s on %s: %s", runs[i][0], dev ? "cuda" : "cpu", cli_err);
            char name[32];
            snprintf(name, sizeof name, "l%zu%d.jsonl", i, dev);
            o[dev] = cli_read(name);
        }
        const char *t[2] = {strstr(o[0], "\"tokens\":["), strstr(o[1], "\"tokens\":[")};
        cr_assert(t[0] && t[1]);
        int n = 1;
        for (const char *c = t[1]; *c != ']'; c++)
            n += *c == ',';
        cr_assert_eq(n, 200, "%s on CUDA: %d tokens", runs[i][0], n);
        /* the first 8 tokens, before any eviction can part them */
        const char *a = t[0], *b = t[1];
        for (int k = 0; k < 8; k++) {
            a = strchr(a + 1, ',');
            b = strchr(b + 1, ',');
        }
        cr_assert(a - t[0] == b - t[1] && !strncmp(t[0], t[1], (size_t)(a - t[0])),
                  "%s: the first tokens differ: CPU %.60s, CUDA %.60s", runs[i][0], t[0], t[1]);
        free(o[0]);
        free(o[1]);
    }
}
