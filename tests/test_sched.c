/* test_sched.c: the offloading scheduler on the CPU backend (where the
 * "GPU" tier is a capped host arena): every placement of weights, KV cache
 * and activations, CPU attention, overlap on and off and several block
 * shapes give output byte-identical to the all-resident run of the same
 * block shape; a whole run allocates nothing on the backend after its
 * set-up; the trace shows loads overlapping compute; the weight store
 * streams and detects corruption; the pread fallback works; policies that
 * cannot fit are refused before anything runs; a sequence's KV copied onto
 * others (sched_kv_copy) continues as the source on every tier. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "gen_harness.h"
#include "kv_copy_harness.h"
#include "model_config.h"
#include "sched_impl.h"
#include "scheduler.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define A256(x) (((x) + 255) & ~(uint64_t)255)
#define POLICIES FH_SOURCE_ROOT "/configs/policies"

/* Mixed lengths, one prompt of 1 token, an odd count (a partial block). */
static const char prompts[] =
    "{\"id\": \"a\", \"prompt\": \"Hello there, how are you\"}\n"
    "{\"id\": \"b\", \"prompt\": \"x\"}\n"
    "{\"id\": \"c\", \"prompt\": \"The quick brown fox jumps over the lazy dog and more\"}\n"
    "{\"id\": \"d\", \"prompt\": \"one two\"}\n"
    "{\"id\": \"e\", \"prompt\": \"the sixth prompt is longer than the fifth\"}\n"
    "{\"id\": \"f\", \"prompt\": \"short\"}\n"
    "{\"id\": \"g\", \"prompt_ids\": [2, 100, 200, 300]}\n";

TestSuite(sched, .init = cli_setup, .fini = cli_teardown, .timeout = 240);

static int n_run;

/* Run generate on prompts.jsonl with the block shape and extra flags; the
 * output goes to a fresh file whose name is returned (static buffer). */
static const char *gen(const char *shape, const char *extra)
{
    static char out[64];
    snprintf(out, sizeof out, "o%d.jsonl", n_run++);
    int st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out %s "
                     "--max-new-tokens 10 %s %s --offload-dir off --quiet", out, shape, extra);
    cr_assert_eq(st, 0, "generate %s %s failed: %s", shape, extra, cli_err);
    return out;
}

static void assert_same(const char *a, const char *b, const char *what)
{
    char *x = cli_read(a), *y = cli_read(b);
    cr_assert(x && y && strlen(x) > 100);
    cr_assert_str_eq(x, y, "%s differs from the all-resident run", what);
    free(x);
    free(y);
}

static void setup_files(void)
{
    cli_write("prompts.jsonl", prompts);
    cr_assert_eq(cli_run("generate --help"), 0); /* the binary is there */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/off", cli_dir);
    cr_assert_eq(system(cmd), 0);
}

Test(sched, every_placement_equals_all_resident)
{
    setup_files();
    static const char *shapes[] = {"--gpu-batch-size 2 --num-gpu-batches 2",
                                   "--gpu-batch-size 1 --num-gpu-batches 3",
                                   "--gpu-batch-size 3 --num-gpu-batches 1"};
    static const char *policies[] = {
        "--percent 0 0 100 0 100 0",      /* weights on disk */
        "--percent 30 30 100 0 100 0",    /* weights over three tiers */
        "--percent 100 0 0 0 100 0",      /* KV on disk */
        "--percent 100 0 0 100 100 0",    /* KV on the CPU */
        "--percent 100 0 34 33 100 0",    /* KV over three tiers */
        "--percent 100 0 100 0 0 100",    /* activations on the CPU */
        "--percent 100 0 100 0 0 0",      /* activations on disk */
        "--percent 20 30 34 33 0 100",    /* everything split */
        /* layers cut at different tensors (weight_layers): some wholly on
         * the GPU tier, some over three tiers */
        "--percent 55 30 100 0 100 0 --weight-layers",
        "--percent 12 50 34 33 0 100 --weight-layers",
    };
    static const char *modes[] = {"--overlap", "--no-overlap", "--cpu-attention",
                                  "--cpu-attention --no-overlap --no-pin-weight"};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        char base[64];
        snprintf(base, sizeof base, "%s", gen(shapes[s], ""));
        for (size_t p = 0; p < sizeof policies / sizeof *policies; p++)
            for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
                /* the full matrix on the first shape, a diagonal on the others */
                if (s > 0 && m != p % 4)
                    continue;
                char extra[256], what[512];
                snprintf(extra, sizeof extra, "%s %s", policies[p], modes[m]);
                snprintf(what, sizeof what, "%s %s", shapes[s], extra);
                assert_same(base, gen(shapes[s], extra), what);
            }
    }
}

/* CPU-tier transfers ordered by device events (the CUDA default; on the
 * CPU backend by FLEXH2O_IO_ORDER=device, where copies and events run in
 * issue order) give the same tokens as the I/O threads do. */
Test(sched, device_ordered_transfers_equal_all_resident)
{
    setup_files();
    static const char *policies[] = {
        "--percent 30 30 100 0 100 0",   /* weights over three tiers */
        "--percent 100 0 0 100 100 0",   /* KV on the CPU */
        "--percent 100 0 34 33 0 100",   /* KV over three tiers, activations on the CPU */
        "--percent 20 30 34 33 0 100 --cpu-attention",
        "--percent 0 50 0 100 0 100 --no-overlap --kv-policy h2o --kv-ratio 0.5 --sinks 1",
        "--percent 40 35 100 0 100 0 --weight-layers",
    };
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    char base[64];
    snprintf(base, sizeof base, "%s", gen(shape, ""));
    char h2o[64];
    snprintf(h2o, sizeof h2o, "%s", gen(shape, "--kv-policy h2o --kv-ratio 0.5 --sinks 1"));
    setenv("FLEXH2O_IO_ORDER", "device", 1);
    for (size_t p = 0; p < sizeof policies / sizeof *policies; p++)
        assert_same(strstr(policies[p], "h2o") ? h2o : base, gen(shape, policies[p]),
                    policies[p]);
    /* the run says which ordering it used */
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 2 %s --percent 100 0 0 100 100 0", shape), 0, "%s",
                 cli_err);
    cr_assert(strstr(cli_err, "CPU-tier copies: device-ordered"), "%s", cli_err);
    unsetenv("FLEXH2O_IO_ORDER");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out t.jsonl "
                         "--max-new-tokens 2 %s --percent 100 0 0 100 100 0", shape), 0, "%s",
                 cli_err);
    cr_assert(strstr(cli_err, "CPU-tier copies: I/O threads"), "%s", cli_err);
}

Test(sched, h2o_on_every_tier_equals_all_resident)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2 --kv-policy h2o "
                        "--kv-ratio 0.5 --sinks 1";
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out base.jsonl "
                         "--max-new-tokens 10 %s --trace-evictions ev0.jsonl --quiet", shape), 0,
                 "%s", cli_err);
    static const char *policies[] = {"--percent 100 0 0 0 100 0",
                                     "--percent 100 0 34 33 100 0 --cpu-attention",
                                     "--percent 0 50 0 100 0 100 --no-overlap",
                                     "--percent 50 0 50 0 0 0 --cpu-attention"};
    for (size_t p = 0; p < sizeof policies / sizeof *policies; p++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out h%zu.jsonl "
                             "--max-new-tokens 10 %s %s --offload-dir off "
                             "--trace-evictions ev%zu.jsonl --quiet", p, shape, policies[p],
                             p + 1), 0, "%s", cli_err);
        char out[32], ev[32];
        snprintf(out, sizeof out, "h%zu.jsonl", p);
        snprintf(ev, sizeof ev, "ev%zu.jsonl", p + 1);
        assert_same("base.jsonl", out, policies[p]);
        assert_same("ev0.jsonl", ev, policies[p]); /* the same tokens leave the cache */
    }
}

/* The records of two output files agree from "tokens" on (tokens,
 * logprobs, finish reason), line by line, and there are `lines` of them: a
 * run without a tokenizer writes empty completions. */
static void assert_same_records(const char *fa, const char *fb, int lines, const char *what)
{
    char *a = cli_read(fa), *b = cli_read(fb);
    cr_assert(a && b, "%s: %s or %s missing", what, fa, fb);
    char *la = a, *lb = b;
    for (int line = 0; line < lines; line++) {
        char *ta = strstr(la, "\"tokens\":"), *tb = strstr(lb, "\"tokens\":");
        cr_assert(ta && tb, "%s, record %d: no tokens", what, line);
        size_t na = strcspn(ta, "\n"), nb = strcspn(tb, "\n");
        cr_assert(na == nb && !strncmp(ta, tb, na), "%s, record %d: %.*s vs %.*s", what, line,
                  (int)na, ta, (int)nb, tb);
        la = ta + na;
        lb = tb + nb;
    }
    cr_assert(!strstr(la, "\"tokens\":") && !strstr(lb, "\"tokens\":"), "%s: more than %d "
              "records", what, lines);
    free(a);
    free(b);
}

/* Every buffer is sized at sched_create (the backend's work memory through
 * backend_ops.reserve): a whole generate run, its prefill and decode
 * passes over several GPU batches, CPU-tier and disk-tier KV with and
 * without CPU attention, H2O with the eviction trace and --stats read
 * back, temperature sampling, transfers ordered by the I/O threads and on
 * the device, makes no allocation on the backend once it is set up. Its
 * records and evictions are those of `generate` with the same flags. */
Test(sched, a_whole_run_allocates_nothing_after_set_up)
{
    gen_harness_job();
    static const struct {
        const char *percent, *io_order;
        int cpu_attention;
    } runs[] = {
        {"100 0 0 100 100 0", "host", 0},   /* KV on the CPU tier, staged */
        {"30 30 34 33 0 100", "host", 1},   /* everything split, CPU attention */
        {"100 0 0 100 100 0", "device", 0}, /* device-ordered CPU-tier transfers */
        {"20 30 34 33 0 100", "device", 1},
    };
    backend be;
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        char a[32], b[32], ea[32], eb[32];
        snprintf(a, sizeof a, "%zuin.jsonl", r);
        snprintf(b, sizeof b, "%zuc.jsonl", r);
        snprintf(ea, sizeof ea, "%zuin_ev.jsonl", r);
        snprintf(eb, sizeof eb, "%zuc_ev.jsonl", r);
        const char *attn = runs[r].cpu_attention ? "--cpu-attention" : "";
        setenv("FLEXH2O_IO_ORDER", runs[r].io_order, 1);
        uint64_t during = gen_harness_run(&be, runs[r].percent, runs[r].cpu_attention, a, ea);
        cr_assert_eq(during, 0, "--percent %s %s, %s-ordered: %llu backend allocations after "
                     "set-up", runs[r].percent, attn, runs[r].io_order,
                     (unsigned long long)during);
        cr_assert_eq(cli_run("generate --model " TINY " " GEN_HARNESS_FLAGS " --out %s "
                             "--trace-evictions %s --percent %s %s --quiet --stats", b, eb,
                             runs[r].percent, attn), 0, "%s", cli_err);
        assert_same_records(a, b, GEN_HARNESS_PROMPTS, runs[r].percent);
        char *x = cli_read(ea), *y = cli_read(eb);
        cr_assert(x && y && strlen(x) > 0, "%s: no evictions traced", runs[r].percent);
        cr_assert_str_eq(x, y, "%s: other evictions than generate's", runs[r].percent);
        free(x);
        free(y);
    }
    unsetenv("FLEXH2O_IO_ORDER");
    backend_destroy(&be);
}

/* sched_kv_copy (n completions sharing one prefill): a prompt prefilled
 * as sequence 0 and copied onto the rest of the block continues, on every
 * copy, exactly as sequence 0 does, and as a run where each sequence
 * prefilled it itself; diverges per sequence with other tokens; overwrites
 * what a sequence held; survives a later prefill in its GPU batch
 * (kv_copy_harness.h). Over the block shapes and KV placements of
 * every_placement_equals_all_resident: KV on one tier, on three tiers in
 * one GPU batch and across batches, CPU attention, overlap on and off,
 * 4-bit KV, the I/O threads' and device-ordered transfers, full and H2O
 * (positions and scores of every slot equal after each step), and
 * grouped-query attention (tiny Llama). */
static const kvc_case kv_copy_cases[] = {
    {.gbs = 2, .K = 2, .percent = "100 0 100 0 100 0"},
    {.gbs = 2, .K = 2, .percent = "100 0 0 100 100 0"},
    {.gbs = 2, .K = 2, .percent = "100 0 0 0 100 0", .no_overlap = 1},
    {.gbs = 3, .K = 1, .percent = "100 0 34 33 100 0"},
    {.gbs = 3, .K = 2, .percent = "20 30 34 33 0 100", .cpu_attention = 1},
    {.gbs = 1, .K = 3, .percent = "100 0 0 0 0 0"},
    {.gbs = 1, .K = 3, .percent = "0 50 0 100 100 0", .cpu_attention = 1, .no_overlap = 1},
    {.gbs = 2, .K = 3, .percent = "100 0 50 0 100 0", .compress_cache = 1},
    {.gbs = 3, .K = 2, .percent = "30 30 34 33 100 0", .compress_cache = 1,
     .cpu_attention = 1},
    {.gbs = 2, .K = 2, .percent = "50 50 0 100 100 0", .cpu_attention = 1},
};

static void kv_copy_all(int h2o)
{
    backend be;
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    for (size_t i = 0; i < sizeof kv_copy_cases / sizeof *kv_copy_cases; i++) {
        kvc_case c = kv_copy_cases[i];
        c.h2o = h2o;
        c.tol = 1e-4;
        kvc_check(&be, &c);
    }
    backend_destroy(&be);
}

Test(sched, kv_copy_continues_as_the_source_on_every_tier) { kv_copy_all(0); }
Test(sched, kv_copy_h2o_evicts_as_the_source_on_every_tier) { kv_copy_all(1); }

Test(sched, kv_copy_device_ordered_and_grouped_query_attention)
{
    backend be;
    cr_assert_eq(backend_cpu_create(0, &be), 0);
    static const kvc_case cases[] = {
        {.gbs = 2, .K = 2, .percent = "100 0 0 100 100 0", .h2o = 1},
        {.gbs = 3, .K = 2, .percent = "20 30 34 33 0 100", .compress_cache = 1},
        {.gbs = 3, .K = 2, .percent = "20 30 34 33 0 100", .cpu_attention = 1, .h2o = 1},
    };
    setenv("FLEXH2O_IO_ORDER", "device", 1);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        kvc_case c = cases[i];
        c.tol = 1e-4;
        kvc_check(&be, &c);
    }
    unsetenv("FLEXH2O_IO_ORDER");
    kvc_case llama = {.model = FH_SOURCE_ROOT "/tests/fixtures/tiny-llama", .gbs = 3, .K = 2,
                      .percent = "100 0 34 33 100 0", .h2o = 1, .tol = 1e-4};
    kvc_check(&be, &llama);
    llama.compress_cache = 1;
    llama.cpu_attention = 1;
    llama.h2o = 0;
    kvc_check(&be, &llama);
    backend_destroy(&be);
}

/* Events of one track from a trace file: (t0, t1) pairs in microseconds. */
static int track_events(const cJSON *evs, int tid, const char *cat, double (*iv)[2], int max)
{
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, evs) {
        const cJSON *ph = cJSON_GetObjectItem(e, "ph");
        if (!cJSON_IsString(ph) || strcmp(ph->valuestring, "X") != 0)
            continue;
        if (cJSON_GetObjectItem(e, "tid")->valueint != tid)
            continue;
        if (strcmp(cJSON_GetObjectItem(e, "cat")->valuestring, cat) != 0)
            continue;
        const cJSON *args = cJSON_GetObjectItem(e, "args");
        cr_assert(cJSON_GetObjectItem(args, "layer"), "every event names its layer");
        if (strcmp(cat, "compute") != 0)
            cr_assert(cJSON_GetObjectItem(args, "tier") && cJSON_GetObjectItem(args, "bytes"),
                      "every transfer names its tier and bytes");
        if (n < max) {
            iv[n][0] = cJSON_GetObjectItem(e, "ts")->valuedouble;
            iv[n][1] = iv[n][0] + cJSON_GetObjectItem(e, "dur")->valuedouble;
            n++;
        }
    }
    return n;
}

/* A --trace file, parsed (the caller deletes it). */
static cJSON *trace_root(const char *file)
{
    char *text = cli_read(file);
    cr_assert(text, "%s missing", file);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cr_assert(root, "%s is not JSON", file);
    return root;
}

/* Loads (track 2) whose interval intersects some compute (track 1). */
static int overlapping_loads(const char *file)
{
    cJSON *root = trace_root(file);
    const cJSON *evs = cJSON_GetObjectItem(root, "traceEvents");
    cr_assert(cJSON_IsArray(evs));
    static double comp[20000][2], load[20000][2];
    int nc = track_events(evs, 1, "compute", comp, 20000);
    int nl = track_events(evs, 2, "load", load, 20000);
    cr_assert(nc > 0 && nl > 0, "compute %d, loads %d", nc, nl);
    int over = 0;
    for (int i = 0; i < nl; i++)
        for (int j = 0; j < nc; j++)
            if (load[i][0] < comp[j][1] && comp[j][0] < load[i][1]) {
                over++;
                break;
            }
    cJSON_Delete(root);
    return over;
}

Test(sched, trace_shows_loads_overlapping_compute)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2 --percent 0 0 0 0 0 100";
    gen(shape, "--overlap --trace t1.json");
    gen(shape, "--no-overlap --trace t0.json");
    int with = overlapping_loads("t1.json"), without = overlapping_loads("t0.json");
    cr_assert_gt(with, 0, "no load overlapped a compute with --overlap");
    cr_assert_eq(without, 0, "%d loads overlapped compute with --no-overlap", without);
}

/* A lane-0 load of a trace: what, (layer, batch, step), when. */
typedef struct lane_load {
    char name[16];
    int layer, batch, step;
    double t0, t1, bytes;
} lane_load;

static int lane_loads(const char *file, lane_load *out, int max)
{
    cJSON *root = trace_root(file);
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "traceEvents")) {
        const cJSON *ph = cJSON_GetObjectItem(e, "ph"), *args = cJSON_GetObjectItem(e, "args");
        if (!cJSON_IsString(ph) || strcmp(ph->valuestring, "X") != 0 ||
            cJSON_GetObjectItem(e, "tid")->valueint != 2 || n >= max)
            continue;
        const cJSON *b = cJSON_GetObjectItem(args, "batch");
        lane_load *x = &out[n++];
        snprintf(x->name, sizeof x->name, "%s", cJSON_GetObjectItem(e, "name")->valuestring);
        x->layer = cJSON_GetObjectItem(args, "layer")->valueint;
        x->batch = b ? b->valueint : -1;
        x->step = cJSON_GetObjectItem(args, "step")->valueint;
        x->t0 = cJSON_GetObjectItem(e, "ts")->valuedouble;
        x->t1 = x->t0 + cJSON_GetObjectItem(e, "dur")->valuedouble;
        x->bytes = cJSON_GetObjectItem(args, "bytes")->valuedouble;
    }
    cJSON_Delete(root);
    return n;
}

/* With two GPU batches and the weights and KV on disk, the loader lane
 * reads the next layer's weights in two pieces, the first after the KV of
 * the layer's second batch (which then never waits behind a whole layer of
 * weights), the pieces of every layer alike; the output is the
 * all-resident run's (every_placement_equals_all_resident). */
Test(sched, next_layer_weights_load_a_piece_per_batch_after_its_kv)
{
    setup_files();
    /* one block: the steps of one pass each */
    cli_write("p4.jsonl", "{\"id\": 1, \"prompt\": \"Hello there, how are you\"}\n"
                          "{\"id\": 2, \"prompt\": \"x\"}\n"
                          "{\"id\": 3, \"prompt\": \"The quick brown fox jumps\"}\n"
                          "{\"id\": 4, \"prompt\": \"one two\"}\n");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p4.jsonl --out tw.jsonl "
                         "--max-new-tokens 6 --gpu-batch-size 2 --num-gpu-batches 2 "
                         "--percent 0 0 0 0 0 100 --offload-dir off --trace tw.json --quiet"),
                 0, "%s", cli_err);
    static lane_load ev[20000];
    int n = lane_loads("tw.json", ev, 20000), checked = 0;
    cr_assert(n > 0 && n < 20000, "%d lane loads", n);
    int L = 0;
    for (int i = 0; i < n; i++)
        L = ev[i].layer + 1 > L ? ev[i].layer + 1 : L;
    double piece_bytes[2] = {-1, -1};
    for (int step = 1; step < 4; step++) /* decode steps: every batch loads its KV */
        for (int l = 0; l + 1 < L; l++) {
            const lane_load *kv1 = NULL, *w[3] = {NULL};
            int nw = 0;
            for (int i = 0; i < n; i++) {
                if (ev[i].step != step)
                    continue;
                if (!strcmp(ev[i].name, "KV") && ev[i].layer == l && ev[i].batch == 1)
                    kv1 = &ev[i];
                if (!strcmp(ev[i].name, "weights") && ev[i].layer == l + 1 && nw < 3)
                    w[nw++] = &ev[i];
            }
            cr_assert(kv1, "step %d layer %d: no KV load of batch 1", step, l);
            cr_assert_eq(nw, 2, "step %d: layer %d's weights in %d loads", step, l + 1, nw);
            cr_assert_geq(w[0]->t0, kv1->t1, "step %d: layer %d's weights before the KV of "
                          "(%d, 1)", step, l + 1, l);
            for (int p = 0; p < 2; p++) {
                if (piece_bytes[p] < 0)
                    piece_bytes[p] = w[p]->bytes;
                cr_assert_eq(w[p]->bytes, piece_bytes[p], "layer %d piece %d", l + 1, p);
            }
            checked++;
        }
    cr_assert_gt(checked, 0);
    cr_assert(piece_bytes[0] > 0 && piece_bytes[1] > 0);
}

Test(sched, weight_store_streams_and_detects_corruption)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    const char *base = gen(shape, "");
    char b[64];
    snprintf(b, sizeof b, "%s", base);
    cr_assert_eq(cli_run("convert --model " TINY " --out store --dtype f32"), 0, "%s", cli_err);
    cr_assert(cli_exists("store/model.flxh2o") && cli_exists("store/vocab.json"));
    cr_assert_eq(cli_run("generate --model store --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 10 %s --percent 10 20 100 0 100 0 --offload-dir off "
                         "--quiet", shape), 0, "%s", cli_err);
    assert_same(b, "s.jsonl", "weights streamed from the store");
    cr_assert(!cli_exists("off/weights.bin"), "the disk share must stream from the store");
    /* --plan: the disk tier holds no weights; the share read from the store
     * is its own line */
    cr_assert_eq(cli_run("generate --model store --prompts prompts.jsonl --out s.jsonl "
                         "--max-new-tokens 10 %s --percent 10 20 100 0 100 0 --offload-dir off "
                         "--plan", shape), 0, "%s", cli_err);
    char *plan = cli_read("stdout.txt");
    cr_assert(strstr(plan, "[flexh2o] plan        disk      0.000 ") &&
              strstr(plan, "weights' disk share read from the weight store: "), "%s", plan);
    free(plan);

    /* an f16 store on the CPU backend runs (its layers stay fp16: see
     * fp16_store_streams_as_fp16_on_the_cpu_backend) */
    cr_assert_eq(cli_run("convert --model " TINY " --out store16"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("generate --model store16 --prompts prompts.jsonl --out s16.jsonl "
                         "--max-new-tokens 4 --quiet"), 0, "%s", cli_err);

    /* flip one byte in the middle of the file: a layer segment */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd %s && python3 -c \"import os; p='store/model.flxh2o'; "
             "n=os.path.getsize(p); f=open(p,'r+b'); f.seek(n//2); c=f.read(1); f.seek(n//2); "
             "f.write(bytes([c[0]^0x40])); f.close()\"", cli_dir);
    cr_assert_eq(system(cmd), 0);
    cli_write("keep.jsonl", "{\"id\": \"old\", \"completion\": \"kept\"}\n");
    int st = cli_run("generate --model store --prompts prompts.jsonl --out keep.jsonl --resume "
                     "--max-new-tokens 4 --quiet");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "segment layer.") && strstr(cli_err, "corrupt"), "%s", cli_err);
    char *kept = cli_read("keep.jsonl");
    cr_assert_str_eq(kept, "{\"id\": \"old\", \"completion\": \"kept\"}\n");
    free(kept);
}

/* The tokens and logprobs of each line of a completions file. */
typedef struct gen_line {
    long tok[16];
    double lp[16];
    int n;
} gen_line;

static int read_lines(const char *path, gen_line *out, int max)
{
    char *text = cli_read(path);
    cr_assert(text, "cannot read %s", path);
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < max; line = strtok(NULL, "\n"), n++) {
        cJSON *j = cJSON_Parse(line);
        cr_assert(j, "%s: not JSON: %s", path, line);
        const cJSON *t = cJSON_GetObjectItem(j, "tokens"), *l = cJSON_GetObjectItem(j, "logprobs");
        out[n].n = cJSON_GetArraySize(t);
        cr_assert(out[n].n <= 16 && cJSON_GetArraySize(l) == out[n].n);
        for (int i = 0; i < out[n].n; i++) {
            out[n].tok[i] = (long)cJSON_GetArrayItem(t, i)->valuedouble;
            out[n].lp[i] = cJSON_GetArrayItem(l, i)->valuedouble;
        }
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* Generate from a 16-bit store with one placement into out, with a fresh
 * disk tier: the disk share must stream from the store (no weights.bin). */
static void gen_from_store(const char *store, const char *out, const char *shape,
                           const char *placement)
{
    cr_assert_eq(cli_sh("rm -rf off && mkdir off"), 0);
    cr_assert_eq(cli_run("generate --model %s --prompts prompts.jsonl --out %s "
                         "--max-new-tokens 10 %s --percent %s --offload-dir off", store, out,
                         shape, placement), 0, "%s", cli_err);
    cr_assert(!cli_exists("off/weights.bin"), "%s: the disk share must stream from %s",
              placement, store);
}

/* An fp16 store on the CPU backend (whose storage type is fp32) keeps its
 * layers fp16 on every tier and widens each once per block before the
 * compute: the disk share streams from the store (no weights.bin), every
 * placement gives the bytes of the all-resident run (widening is exact,
 * so these are also the bytes of the old path that converted the store to
 * fp32 on load), the disk link moves half the bytes of an fp32 store, and
 * against the fp32 checkpoint the greedy tokens agree with logprobs within
 * 0.05 (the tolerance of the fp16 GPU comparisons, test_gpu_e2e.c) up to
 * the first near tie. */
Test(sched, fp16_store_streams_as_fp16_on_the_cpu_backend)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    char ref[64];
    snprintf(ref, sizeof ref, "%s", gen(shape, ""));
    cr_assert_eq(cli_run("convert --model " TINY " --out st16"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model " TINY " --out st32 --dtype f32"), 0, "%s", cli_err);
    static const char *const placements[] = {"100 0 100 0 100 0", "10 20 100 0 100 0",
                                             "0 0 100 0 100 0", "0 50 0 0 0 100"};
    double disk_gib[2] = {0};
    for (size_t i = 0; i < sizeof placements / sizeof *placements; i++) {
        char b[32];
        snprintf(b, sizeof b, "s%zu.jsonl", i);
        gen_from_store("st16", b, shape, placements[i]);
        assert_same("s0.jsonl", b, placements[i]);
        if (i == 2) { /* every layer on disk: the bytes the disk link moved */
            const char *l = strstr(cli_err, "link disk->cpu");
            cr_assert(l, "%s", cli_err);
            disk_gib[0] = strtod(l + strlen("link disk->cpu"), NULL);
        }
    }
    cr_assert_eq(cli_sh("rm -rf off && mkdir off"), 0);
    cr_assert_eq(cli_run("generate --model st32 --prompts prompts.jsonl --out s32.jsonl "
                         "--max-new-tokens 10 %s --percent 0 0 100 0 100 0 --offload-dir off",
                         shape), 0, "%s", cli_err);
    const char *l = strstr(cli_err, "link disk->cpu");
    cr_assert(l, "%s", cli_err);
    disk_gib[1] = strtod(l + strlen("link disk->cpu"), NULL);
    cr_assert(disk_gib[0] > 0 && disk_gib[0] < 0.6 * disk_gib[1],
              "the fp16 store moved %g GiB from disk, the fp32 one %g", disk_gib[0],
              disk_gib[1]);
    assert_same(ref, "s32.jsonl", "the fp32 store");

    gen_line x[8], y[8];
    int n = read_lines(ref, x, 8);
    cr_assert_eq(read_lines("s0.jsonl", y, 8), n);
    int agree = 0, total = 0;
    for (int i = 0; i < n; i++) {
        cr_assert_eq(x[i].n, y[i].n);
        total += x[i].n;
        for (int k = 0; k < x[i].n && x[i].tok[k] == y[i].tok[k]; k++, agree++)
            cr_assert(fabs(x[i].lp[k] - y[i].lp[k]) < 0.05, "line %d step %d: logprob %g, "
                      "fp32 %g", i, k, y[i].lp[k], x[i].lp[k]);
    }
    cr_log_info("fp16 store: %d of %d greedy tokens before the first divergence", agree, total);
    cr_assert_geq(agree, total * 3 / 4, "only %d of %d tokens agree with fp32", agree, total);
}

/* With one GPU batch per block the CPU backend does not widen a 16-bit
 * layer whole: the vectors are widened and each GEMM widens its rows in
 * cache (linear_h16); with two, the layer is widened once and shared. The
 * two give the same bytes (the same batches of two sequences, the same
 * numbers), fp16 and bf16, resident and streamed from disk. */
Test(sched, a_16_bit_layer_fused_into_its_gemms_equals_it_widened_whole)
{
    setup_files();
    static const char *const dtypes[] = {"f16", "bf16"};
    static const char *const placements[] = {"100 0 100 0 100 0", "0 0 100 0 100 0",
                                             "10 20 100 0 100 0"};
    for (int d = 0; d < 2; d++) {
        cr_assert_eq(cli_run("convert --model " TINY " --out st%d --dtype %s", d, dtypes[d]), 0,
                     "%s", cli_err);
        for (size_t i = 0; i < sizeof placements / sizeof *placements; i++) {
            char st[16], one[32], two[32];
            snprintf(st, sizeof st, "st%d", d);
            snprintf(one, sizeof one, "one%d-%zu.jsonl", d, i);
            snprintf(two, sizeof two, "two%d-%zu.jsonl", d, i);
            gen_from_store(st, one, "--gpu-batch-size 2 --num-gpu-batches 1", placements[i]);
            gen_from_store(st, two, "--gpu-batch-size 2 --num-gpu-batches 2", placements[i]);
            assert_same(one, two, placements[i]);
        }
    }
}

/* A bf16 store (convert --dtype bf16) on the CPU backend streams as bf16
 * like an fp16 one: no weights.bin, the disk placement gives the bytes of
 * the all-resident run (whose layers are converted to fp32 on load), and
 * --plan says bf16. With --compress-weight convert refuses bf16. */
Test(sched, bf16_store_streams_as_bf16_on_the_cpu_backend)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    cr_assert_eq(cli_run("convert --model " TINY " --out stb --dtype bf16"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "(bf16)"), "%s", cli_err);
    static const char *const placements[] = {"100 0 100 0 100 0", "0 0 100 0 100 0",
                                             "10 20 100 0 100 0"};
    for (size_t i = 0; i < sizeof placements / sizeof *placements; i++) {
        char b[32];
        snprintf(b, sizeof b, "b%zu.jsonl", i);
        gen_from_store("stb", b, shape, placements[i]);
        assert_same("b0.jsonl", b, placements[i]);
    }
    cr_assert_eq(cli_run("generate --model stb --prompts prompts.jsonl --out b.jsonl "
                         "--max-new-tokens 10 %s --percent 0 0 100 0 100 0 --offload-dir off "
                         "--plan", shape), 0, "%s", cli_err);
    char *plan = cli_read("stdout.txt");
    cr_assert(strstr(plan, "weights bf16 on the tiers"), "%s", plan);
    free(plan);
    cr_assert_eq(cli_run("convert --model " TINY " --out stq --dtype bf16 --compress-weight"),
                 2);
    cr_assert(strstr(cli_err, "--compress-weight keeps the vectors f16 or f32"), "%s", cli_err);
}

/* opt-1.3b's config, and the default policy at a GPU batch of 4 with the
 * weights wg % on the GPU, wc % on the CPU, the rest on disk in /tmp. */
static void opt13_split(model_config *c, sched_policy *p, int wg, int wc)
{
    cr_assert_eq(model_config_by_name("opt-1.3b", c), 0);
    sched_policy_default(p);
    p->gpu_batch_size = 4;
    p->wg = wg;
    p->wc = wc;
    snprintf(p->offload_dir, sizeof p->offload_dir, "/tmp");
}

/* The scratch a 16-bit layer takes where the model does not widen it whole
 * (model_forward.c widen_layer), from backend.h's linear_h16: the vectors
 * widened, each 256-byte aligned, then for the matrix that needs most its
 * n * k floats, or under bf16 matmuls the smaller of that and x's rows * k
 * halves. */
static uint64_t fused_scratch_of(const sched_model *m, uint64_t rows, int direct)
{
    uint64_t vec = 0, x = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        uint64_t n = m->tensors[t].rows, k = (uint64_t)m->tensors[t].cols;
        if (!k) {
            vec += A256(n * 4);
            continue;
        }
        uint64_t need = direct && rows * k * 2 < n * k * 4 ? rows * k * 2 : n * k * 4;
        x = need > x ? need : x;
    }
    cr_assert(x > 0 && vec > 0);
    return vec + x;
}

/* 16-bit weights on the CPU backend: the GPU tier's work space holds a
 * whole layer widened to fp32 only where the model widens it whole (two
 * or more GPU batches share it, and no bf16 matmuls read it as it lies);
 * with one GPU batch, or under bf16 matmuls (sched_shape.weight_direct)
 * at any batch count, only linear_h16's scratch. It was the whole layer
 * in every case (805 MB at OPT-6.7B, 243 MB at Llama-3.2-1B), which held
 * weights and KV off the tier. */
Test(policy, plan_of_16_bit_layers_holds_a_widened_layer_only_when_one_is_made)
{
    model_config c;
    sched_policy p;
    opt13_split(&c, &p, 20, 30);
    const sched_model *m = shape_of(&c);
    uint64_t blob4 = sched_blob_layout(m, 4, 0, NULL, NULL);
    for (int K = 1; K <= 2; K++)
        for (int rows = 1; rows <= 4096; rows *= 4) {
            p.num_gpu_batches = K;
            sched_shape sh = {.max_rows = rows, .cap = 96, .scores = 0};
            sched_plan f32, wide, direct;
            cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &f32), 0, "%s", err_msg());
            sh.weight_fmt = KERN_H16_BF16;
            cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &wide), 0, "%s", err_msg());
            sh.weight_direct = 1;
            cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &direct), 0, "%s", err_msg());
            uint64_t d = A256(fused_scratch_of(m, (uint64_t)rows, 1));
            uint64_t w = K == 1 ? A256(fused_scratch_of(m, (uint64_t)rows, 0)) : A256(blob4);
            /* the fp32 plan has no such scratch (no 4-bit, no 16 bits): the
             * difference is the scratch alone */
            cr_assert_eq(direct.bytes[SCHED_GPU][SCHED_WORK] - f32.bytes[SCHED_GPU][SCHED_WORK],
                         d, "K %d rows %d", K, rows);
            cr_assert_eq(wide.bytes[SCHED_GPU][SCHED_WORK] - f32.bytes[SCHED_GPU][SCHED_WORK],
                         w, "K %d rows %d", K, rows);
            cr_assert(direct.weight_direct && !wide.weight_direct);
            cr_assert_eq(direct.widen, d);
            cr_assert_eq(wide.widen, w);
            cr_assert_leq(d, w);
            cr_assert_lt(d, A256(blob4) / 2, "K %d rows %d", K, rows);
        }
}

/* weight_layers: the GPU share of every layer is a tensor boundary, the
 * layers at the boundary at or below wg percent of a layer or at the next
 * one, so that the sum is as near wg percent of all the layers as one
 * layer's step allows, from below (likewise GPU + CPU for wg + wc); under
 * FlexGen's rule (no weight_layers) the share is the level every layer
 * takes, which sits a whole tensor (a quarter of an OPT layer) apart. */
Test(policy, weight_layers_cut_each_layer_at_a_tensor_and_come_near_the_share)
{
    model_config c;
    sched_policy p;
    opt13_split(&c, &p, 0, 0);
    const sched_model *m = shape_of(&c);
    uint64_t L = (uint64_t)c.n_layer, off[SCHED_MAX_TENSORS], bytes[SCHED_MAX_TENSORS];
    size_t offz[SCHED_MAX_TENSORS], bytesz[SCHED_MAX_TENSORS];
    uint64_t blob = sched_blob_layout(m, 4, 0, offz, bytesz);
    uint64_t glob = (uint64_t)m->globals * 4;
    int nb = 0;
    uint64_t bound[SCHED_MAX_TENSORS + 1];
    for (int t = 0; t < m->n_tensors; t++) {
        off[t] = offz[t], bytes[t] = bytesz[t];
        if (bytes[t] && (nb == 0 || bound[nb - 1] != off[t]))
            bound[nb++] = off[t];
    }
    bound[nb++] = blob;
    /* the sum of L layers each at bound[a] or bound[a + 1]: which a, and how many up */
    static const double shares[][2] = {{0, 0},  {5, 20},  {12.5, 40}, {30, 30}, {47, 53},
                                       {55, 0}, {99, 1},  {100, 0},   {3, 96.5}, {63.3, 20},
                                       {26, 4}, {40, 2},  {34.5, 3.1}, {70, 29.9}};
    for (size_t i = 0; i < sizeof shares / sizeof *shares; i++) {
        sched_shape sh = {.max_rows = 64, .cap = 96, .scores = 0};
        p.wg = shares[i][0];
        p.wc = shares[i][1];
        p.weight_layers = 1;
        sched_plan w, f;
        cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &w), 0, "%s", err_msg());
        p.weight_layers = 0;
        cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &f), 0, "%s", err_msg());
        uint64_t sum[2] = {w.bytes[SCHED_GPU][SCHED_WEIGHTS] - glob,
                           w.bytes[SCHED_GPU][SCHED_WEIGHTS] - glob +
                               w.bytes[SCHED_CPU][SCHED_WEIGHTS]};
        double pct[2] = {p.wg, p.wg + p.wc};
        for (int k = 0; k < 2; k++) {
            double want = pct[k] / 100 * (double)(L * blob);
            cr_assert_leq((double)sum[k], want + 1, "%g%%: %llu over %g", pct[k],
                          (unsigned long long)sum[k], want);
            int found = 0;
            for (int a = 0; a < nb && !found; a++)
                for (uint64_t up = 0; up < L && !found; up++) {
                    uint64_t hi = a + 1 < nb ? bound[a + 1] : bound[a];
                    if ((L - up) * bound[a] + up * hi != sum[k])
                        continue;
                    found = 1;
                    /* nearest from below: one more layer up would pass the share */
                    if (a + 1 < nb)
                        cr_assert_gt((double)((L - up - 1) * bound[a] + (up + 1) * hi), want,
                                     "%g%%: %llu layers up of %llu, one more fits",
                                     pct[k], (unsigned long long)up, (unsigned long long)L);
                    cr_assert_eq(w.w_up[k], (int)up, "%g%%", pct[k]);
                    cr_assert_float_eq(w.w_cut[k][0], 100.0 * bound[a] / blob, 1e-9);
                }
            cr_assert(found, "%g%%: %llu bytes is no mix of two neighbouring cuts", pct[k],
                      (unsigned long long)sum[k]);
            cr_assert_eq(f.w_up[k], 0);
        }
        /* the disk share: each layer's aligned span past its CPU share */
        cr_assert_eq(w.bytes[SCHED_DISK][SCHED_WEIGHTS] == 0, pct[1] >= 100, "%g%%", pct[1]);
    }
    /* between two levels, the mix holds more on the GPU tier than the level
     * below that FlexGen's rule would take there or fewer bytes than its
     * level above */
    p.wg = 30, p.wc = 0;
    sched_shape sh = {.max_rows = 64, .cap = 96, .scores = 0};
    sched_plan w, f;
    p.weight_layers = 1;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &w), 0, "%s", err_msg());
    p.weight_layers = 0;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &f), 0, "%s", err_msg());
    cr_assert_neq(w.bytes[SCHED_GPU][SCHED_WEIGHTS], f.bytes[SCHED_GPU][SCHED_WEIGHTS]);
    cr_assert_gt(w.w_up[0], 0);
}

/* The plan of 16-bit weights on the CPU backend (storage type fp32): each
 * tier holds the layers at 2 bytes per value, the globals stay fp32, and
 * the GPU tier's work space gains one layer in fp32 (the scratch it widens
 * into); --plan names the format. Without the format, or with
 * compress_weight, the plan is the fp32 one. */
Test(policy, plan_counts_fp16_weights_and_the_widening_scratch)
{
    model_config c;
    sched_policy p;
    opt13_split(&c, &p, 20, 30);
    p.num_gpu_batches = 2; /* a layer widened whole, once for both batches */
    sched_shape sh = {.max_rows = 64, .cap = 96, .scores = 0};
    sched_plan f32, f16;
    const sched_model *m = shape_of(&c);
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &f32), 0, "%s", err_msg());
    sh.weight_fmt = KERN_H16_F16;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &f16), 0, "%s", err_msg());
    uint64_t L = (uint64_t)c.n_layer, blob2 = sched_blob_layout(m, 2, 0, NULL, NULL);
    uint64_t blob4 = sched_blob_layout(m, 4, 0, NULL, NULL);
    uint64_t glob = (uint64_t)m->globals * 4;
    /* the GPU and CPU shares are the blob's 2-byte bytes, cut by the same rule */
    uint64_t res16 = f16.bytes[SCHED_GPU][SCHED_WEIGHTS] + f16.bytes[SCHED_CPU][SCHED_WEIGHTS];
    uint64_t res32 = f32.bytes[SCHED_GPU][SCHED_WEIGHTS] + f32.bytes[SCHED_CPU][SCHED_WEIGHTS];
    /* the disk share is weights.bin: of each layer only the aligned span that
     * holds the bytes past the resident ones (half the blob here), not the
     * whole blob */
    uint64_t w16 = (res16 - glob) / L, w32 = (res32 - glob) / L;
    cr_assert_eq(f16.bytes[SCHED_DISK][SCHED_WEIGHTS],
                 L * (((blob2 + 4095) & ~4095ull) - (w16 & ~4095ull)));
    cr_assert_eq(f32.bytes[SCHED_DISK][SCHED_WEIGHTS],
                 L * (((blob4 + 4095) & ~4095ull) - (w32 & ~4095ull)));
    cr_assert_lt(f32.bytes[SCHED_DISK][SCHED_WEIGHTS], L * blob4 * 3 / 4, "%llu of %llu",
                 (unsigned long long)f32.bytes[SCHED_DISK][SCHED_WEIGHTS],
                 (unsigned long long)(L * blob4));
    cr_assert(res16 - glob > 0 && res16 - glob < L * blob2, "%llu", (unsigned long long)res16);
    cr_assert(llabs((long long)(2 * (res16 - glob)) - (long long)(res32 - glob)) <
                  (long long)(L * 24 * 256), "resident weights: %llu fp16, %llu fp32",
              (unsigned long long)res16, (unsigned long long)res32);
    cr_assert_eq(f16.bytes[SCHED_GPU][SCHED_WORK] - f32.bytes[SCHED_GPU][SCHED_WORK],
                 A256(blob4));
    cr_assert_eq(f16.weight_fmt, KERN_H16_F16);
    cr_assert_eq(f16.widen, A256(blob4));
    cr_assert_eq(f32.weight_fmt, 0);
    /* the staging slots hold the 2-byte blob's offloaded share */
    cr_assert_lt(f16.bytes[SCHED_GPU][SCHED_STAGE], f32.bytes[SCHED_GPU][SCHED_STAGE]);

    /* every layer on the GPU tier: nothing moves, the layers stay fp32
     * (widening every block would cost more than it saves) */
    sched_plan r16, r32;
    p.wg = 100;
    p.wc = 0;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &r16), 0, "%s", err_msg());
    sh.weight_fmt = 0;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &r32), 0, "%s", err_msg());
    cr_assert(memcmp(&r16, &r32, sizeof r16) == 0, "all resident: the fp32 plan");
    sh.weight_fmt = KERN_H16_F16;
    p.wg = 20;
    p.wc = 30;

    /* a 16-bit backend (CUDA) and compress_weight ignore the format */
    sched_plan h, q, q16;
    cr_assert_eq(sched_plan_compute(m, 2, &p, &sh, &h), 0);
    cr_assert_eq(h.weight_fmt, 0);
    p.compress_weight = 1;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &q16), 0);
    sh.weight_fmt = 0;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &q), 0);
    cr_assert(memcmp(&q, &q16, sizeof q) == 0, "compress_weight must ignore weight_fmt");

    /* the cost model reads what the tiers hold: with every layer on disk a
     * step reads 2-byte blobs from disk and over the link, and device
     * memory gains the widening (the blob read, the fp32 layer written) */
    sched_calib hw = {.h2d = 10, .d2h = 10, .dram = 20, .disk_read = 2, .disk_write = 1,
                      .dev_mem = 20, .gemm = 1};
    p.compress_weight = 0;
    p.wg = p.wc = 0;
    sched_cost c16, c32;
    sh.weight_fmt = KERN_H16_F16;
    cr_assert_eq(sched_cost_eval(m, 4, &p, &sh, 32, 8, &hw, &c16), 0, "%s", err_msg());
    sh.weight_fmt = 0;
    cr_assert_eq(sched_cost_eval(m, 4, &p, &sh, 32, 8, &hw, &c32), 0, "%s", err_msg());
    double r = c16.step[COST_DISK_READ] / c32.step[COST_DISK_READ];
    cr_assert(r > 0.49 && r < 0.51, "disk read: fp16 %g s, fp32 %g s", c16.step[COST_DISK_READ],
              c32.step[COST_DISK_READ]);
    r = c16.step[COST_H2D] / c32.step[COST_H2D];
    cr_assert(r > 0.49 && r < 0.51, "h2d: fp16 %g s, fp32 %g s", c16.step[COST_H2D],
              c32.step[COST_H2D]);
    double widen = (double)L * (double)(blob2 + blob4) / (hw.dev_mem * 1e9);
    cr_assert(fabs(c16.step[COST_DEV_MEM] - c32.step[COST_DEV_MEM] - widen) < 1e-3 * widen,
              "device memory: fp16 %g s, fp32 %g s, widening %g s", c16.step[COST_DEV_MEM],
              c32.step[COST_DEV_MEM], widen);

    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    sched_plan_print(f, &f16);
    fclose(f);
    cr_assert(strstr(buf, "weights fp16 on the tiers, widened per block"), "%s", buf);
}

/* On a backend whose buffers are host memory (sched_shape.host_visible: the
 * CPU backend) the compute reads the CPU share in its home, so a weight
 * slot holds the disk share only: the two slots shrink by the CPU share
 * (cut at 4096-byte boundaries), the I/O lanes keep no host stages (the
 * disk reads go into the slots) and nothing else in the plan changes. With
 * no disk share there is no slot either way; the cost model charges the
 * host-visible backend no weight crossing h2d. */
Test(policy, a_host_visible_weight_slot_holds_the_disk_share_only)
{
    model_config c;
    sched_policy p;
    opt13_split(&c, &p, 20, 50);
    sched_shape sh = {.max_rows = 64, .cap = 96};
    const sched_model *m = shape_of(&c);
    sched_plan dev, host;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &dev), 0, "%s", err_msg());
    sh.host_visible = 1;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &host), 0, "%s", err_msg());
    uint64_t L = (uint64_t)c.n_layer, glob = (uint64_t)m->globals * 4;
    uint64_t w_gpu = (dev.bytes[SCHED_GPU][SCHED_WEIGHTS] - glob) / L;
    uint64_t w_cpu = w_gpu + dev.bytes[SCHED_CPU][SCHED_WEIGHTS] / L;
    cr_assert(w_gpu > 0 && (w_cpu & ~4095ull) > (w_gpu & ~4095ull), "a CPU share: %llu %llu",
              (unsigned long long)w_gpu, (unsigned long long)w_cpu);
    cr_assert_eq(dev.bytes[SCHED_GPU][SCHED_STAGE] - host.bytes[SCHED_GPU][SCHED_STAGE],
                 2 * ((w_cpu & ~4095ull) - (w_gpu & ~4095ull)));
    uint64_t blob = sched_blob_layout(m, 4, 0, NULL, NULL);
    cr_assert_geq(host.bytes[SCHED_GPU][SCHED_STAGE], 2 * (blob - w_cpu),
                  "the slots hold the disk share");
    /* and the I/O lanes have no host stages there: the disk share goes
     * straight into the slots */
    cr_assert_eq(host.bytes[SCHED_CPU][SCHED_STAGE], 0);
    cr_assert_geq(dev.bytes[SCHED_CPU][SCHED_STAGE], 2 * (blob - w_cpu),
                  "two lane stages of a layer's disk share");
    host.bytes[SCHED_GPU][SCHED_STAGE] = dev.bytes[SCHED_GPU][SCHED_STAGE];
    host.bytes[SCHED_CPU][SCHED_STAGE] = dev.bytes[SCHED_CPU][SCHED_STAGE];
    host.total[SCHED_GPU] = dev.total[SCHED_GPU];
    host.total[SCHED_CPU] = dev.total[SCHED_CPU];
    cr_assert(memcmp(&host, &dev, sizeof host) == 0, "only the slots and stages differ");
    /* the cost model: a step's h2d carries the offloaded weights only off
     * the host-visible backend */
    sched_calib hw = {.h2d = 10, .d2h = 10, .dram = 20, .disk_read = 2, .disk_write = 1,
                      .dev_mem = 20, .gemm = 1};
    sched_cost ch, cd;
    cr_assert_eq(sched_cost_eval(m, 4, &p, &sh, 32, 8, &hw, &ch), 0, "%s", err_msg());
    sh.host_visible = 0;
    cr_assert_eq(sched_cost_eval(m, 4, &p, &sh, 32, 8, &hw, &cd), 0, "%s", err_msg());
    cr_assert_eq(ch.step[COST_H2D], 0);
    cr_assert_gt(cd.step[COST_H2D], (double)L * (blob - w_gpu) / 10e9 * 0.99);
    /* every layer resident: no slot */
    p.wg = 100;
    p.wc = 0;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &dev), 0, "%s", err_msg());
    sh.host_visible = 1;
    cr_assert_eq(sched_plan_compute(m, 4, &p, &sh, &host), 0, "%s", err_msg());
    cr_assert_eq(memcmp(&host, &dev, sizeof host), 0);
}

Test(sched, pread_fallback_when_io_uring_is_refused)
{
    setup_files();
    const char *shape = "--gpu-batch-size 2 --num-gpu-batches 2";
    char b[64];
    snprintf(b, sizeof b, "%s", gen(shape, ""));
    setenv("FLEXH2O_NO_URING", "1", 1);
    int st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out fb.jsonl "
                     "--max-new-tokens 10 %s --percent 0 50 0 50 0 100 --offload-dir off", shape);
    unsetenv("FLEXH2O_NO_URING");
    cr_assert_eq(st, 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "pread/pwrite"), "the fallback must say so: %s", cli_err);
    assert_same(b, "fb.jsonl", "the pread/pwrite fallback");
}

Test(sched, policies_that_cannot_run_are_refused_first)
{
    setup_files();
    cli_write("keep.jsonl", "{\"id\": \"old\"}\n");
    int st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out keep.jsonl "
                     "--resume --gpu-batch-size 2 --num-gpu-batches 2 --gpu-mem 64K");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "cannot fit block 2x2: the GPU tier needs") &&
              strstr(cli_err, "--gpu-mem is"), "%s", cli_err);
    char *k = cli_read("keep.jsonl");
    cr_assert_str_eq(k, "{\"id\": \"old\"}\n");
    free(k);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 0 100 100 0 100 0 --cpu-mem 1K");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "the CPU tier needs"), "%s", cli_err);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 0 0 100 0 100 0");
    cr_assert_eq(st, 2);
    cr_assert(strstr(cli_err, "no --offload-dir was given"), "%s", cli_err);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 60 60 100 0 100 0");
    cr_assert_eq(st, 2);
    cr_assert(strstr(cli_err, "weights on GPU + CPU is 120%"), "%s", cli_err);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 100 0 100 0 50 50");
    cr_assert_eq(st, 2);
    cr_assert(strstr(cli_err, "activations cannot be split"), "%s", cli_err);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 100 0 100");
    cr_assert_eq(st, 2);
    cr_assert(strstr(cli_err, "--percent takes six numbers"), "%s", cli_err);
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--percent 0 0 100 0 100 0 --offload-dir nowhere");
    cr_assert_eq(st, 1);
    cr_assert(strstr(cli_err, "--offload-dir nowhere is not a directory"), "%s", cli_err);
    cli_write("bad.json", "{\"gpu_batch_size\": 4, \"percnt\": [1]}");
    st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out x.jsonl "
                 "--policy bad.json");
    cr_assert_eq(st, 2);
    cr_assert(strstr(cli_err, "bad.json: unknown field \"percnt\""), "%s", cli_err);
    cr_assert(!cli_exists("x.jsonl"), "a refused policy must not create the output");
}

Test(sched, full_disk_is_refused_and_output_kept)
{
    setup_files();
    cli_write("keep.jsonl", "{\"id\": \"old\"}\n");
    /* a file-size limit below what kv.bin needs stands in for a full disk */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 << 10;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int st = cli_run("generate --model " TINY " --prompts prompts.jsonl --out keep.jsonl "
                     "--resume --max-new-tokens 4 --percent 100 0 0 0 100 0 --offload-dir off");
    setrlimit(RLIMIT_FSIZE, &old);
    cr_assert_eq(st, 1, "%s", cli_err);
    cr_assert(strstr(cli_err, "cannot reserve") && strstr(cli_err, "off/kv.bin") &&
              strstr(cli_err, "choose another --offload-dir"), "%s", cli_err);
    char *k = cli_read("keep.jsonl");
    cr_assert_str_eq(k, "{\"id\": \"old\"}\n");
    free(k);
    cr_assert(!cli_exists("off/kv.bin"), "a failed reservation leaves no file");
}

Test(sched, policy_file_and_plan)
{
    setup_files();
    char b[64];
    snprintf(b, sizeof b, "%s", gen("--gpu-batch-size 4 --num-gpu-batches 2", ""));
    /* the preset uses every tier; flags override its offload_dir */
    gen("--policy " POLICIES "/cpu-small.json", "");
    char o[64];
    snprintf(o, sizeof o, "o%d.jsonl", n_run - 1);
    assert_same(b, o, "configs/policies/cpu-small.json");
    cr_assert_eq(cli_run("generate --model " TINY " --prompts prompts.jsonl --out p.jsonl "
                         "--policy " POLICIES "/cpu-small.json --offload-dir off --plan"), 0,
                 "%s", cli_err);
    char *plan = cli_read("stdout.txt");
    cr_assert(strstr(plan, "plan") && strstr(plan, "gpu") && strstr(plan, "disk"), "%s", plan);
    free(plan);
    cr_assert(!cli_exists("p.jsonl"), "--plan runs nothing");
}

/* ---- policy unit tests ---- */

Test(policy, sizes_percent_split_and_presets)
{
    uint64_t v;
    cr_assert_eq(sched_parse_size("--gpu-mem", "16G", &v), 0);
    cr_assert_eq(v, 16ull << 30);
    cr_assert_eq(sched_parse_size("--gpu-mem", "1.5GiB", &v), 0);
    cr_assert_eq(v, 3ull << 29);
    cr_assert_eq(sched_parse_size("--gpu-mem", "512M", &v), 0);
    cr_assert_eq(v, 512ull << 20);
    cr_assert_eq(sched_parse_size("--gpu-mem", "4096", &v), 0);
    cr_assert_eq(v, 4096);
    err_clear();
    cr_assert_eq(sched_parse_size("--gpu-mem", "16X", &v), -EINVAL);
    cr_assert(strstr(err_msg(), "--gpu-mem must be a size like 16G"), "%s", err_msg());
    err_clear();

    sched_policy p;
    sched_policy_default(&p);
    const char *one[] = {"20,80,0,100,0,100"};
    cr_assert_eq(sched_policy_parse_percent(one, 1, &p), 0);
    cr_assert(p.wg == 20 && p.wc == 80 && p.cg == 0 && p.cc == 100 && p.hg == 0 && p.hc == 100);
    const char *six[] = {"1", "2", "3", "4", "100", "0"};
    cr_assert_eq(sched_policy_parse_percent(six, 6, &p), 0);
    cr_assert(p.wg == 1 && p.hc == 0);

    for (int n = 0; n <= 9; n++) {
        int a, b, c;
        sched_split(n, 33, 33, &a, &b, &c);
        cr_assert(a >= 0 && b >= 0 && c >= 0 && a + b + c == n, "n %d: %d %d %d", n, a, b, c);
        sched_split(n, 100, 0, &a, &b, &c);
        cr_assert(a == n && b == 0 && c == 0);
        sched_split(n, 0, 0, &a, &b, &c);
        cr_assert(c == n);
    }

    static const char *presets[] = {"all-gpu", "opt-6.7b-t4", "opt-30b-t4", "opt-175b-t4",
                                    "cpu-small"};
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        char path[512];
        snprintf(path, sizeof path, POLICIES "/%s.json", presets[i]);
        sched_policy_default(&p);
        cr_assert_eq(sched_policy_load(path, &p), 0, "%s", err_msg());
        cr_assert_eq(sched_policy_check(&p), 0, "%s: %s", path, err_msg());
    }
    sched_policy_default(&p);
    sched_policy_load(POLICIES "/opt-30b-t4.json", &p);
    cr_assert(p.gpu_batch_size == 48 && p.num_gpu_batches == 3 && p.wg == 20 && p.wc == 80 &&
              p.cpu_attention && p.gpu_mem == 16ull << 30);
    char d[256];
    sched_policy_describe(&p, d, sizeof d);
    cr_assert_str_eq(d, "block 48x3, weights 20/80/0, KV 0/100/0, act 0/100/0, overlap, "
                        "cpu-attention");
}

/* One decode step of the CPU kernels over the disk record rec of s's batch
 * 1 (attention adding to the scores, then the insert) from the rows q and
 * kv: its output and self probabilities into out and self_p. */
static void decode_on_record(const sched *s, char *rec, const float *q, const float *kv,
                             float *out, float *self_p)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    int n_seq = g->kv_n[SCHED_DISK], cap = s->sh.cap;
    const kern_seq *seqs = s->bseq + g->gbs + g->kv_seq0[SCHED_DISK];
    size_t ld = (size_t)g->H * g->hd;
    size_t sb = kern_attn_decode_scratch_bytes(cap, kern_cpu_threads());
    void *scr = malloc(sb);
    cr_assert(scr);
    float *kc = (float *)(rec + kl->kc), *vc = (float *)(rec + kl->vc);
    float *sc = kl->scores != SIZE_MAX ? (float *)(rec + kl->scores) : NULL;
    cr_assert_eq(kern_attn_decode_ref(out, (int)ld, q, kv, kv, (int)ld, kc, vc, seqs, n_seq,
                                      g->H, g->KVH, g->hd, cap, 0.125f, sc, self_p, scr, sb), 0);
    kern_kv_insert_ref(kc, vc, sc, (int32_t *)(rec + kl->pos), kv, kv, (int)ld, self_p, seqs,
                       n_seq, g->H, g->KVH, g->hd, cap, NULL);
    free(scr);
}

/* That the record disk holds what the next step reads: the K, V,
 * positions and (where kept) scores of the slots that s's batch-1
 * sequences use after this step, as in after (the step over the whole
 * record). path: what moved the record, for the message. */
static void assert_next_step_reads(const sched *s, const char *disk, const char *after,
                                   const char *path)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    const kern_seq *seqs = s->bseq + g->gbs + g->kv_seq0[SCHED_DISK];
    size_t cap = (size_t)s->sh.cap;
    for (int j = 0; j < g->kv_n[SCHED_DISK]; j++) {
        int nn = seqs[j].n_slots + seqs[j].n_new;
        nn = nn < seqs[j].budget ? nn : seqs[j].budget;
        for (int h = 0; h < g->KVH; h++) {
            size_t base = ((size_t)j * g->KVH + h) * cap;
            int scores = kl->scores != SIZE_MAX;
            size_t at[4] = {kl->kc + base * g->kv_row, kl->vc + base * g->kv_row,
                            kl->pos + base * 4, scores ? kl->scores + base * 4 : 0};
            size_t len[4] = {nn * g->kv_row, nn * g->kv_row, nn * 4u, scores ? nn * 4u : 0};
            for (int a = 0; a < 4; a++)
                cr_assert(memcmp(disk + at[a], after + at[a], len[a]) == 0,
                          "sequence %d head %d: part %d differs after the %s", j, h, a, path);
        }
    }
}

/* The requests ios[0, n) against a file image: a read copies the image's
 * bytes into its buffer, a write the other way. Each is aligned, on fd 7
 * and inside the image of size bytes. @return the bytes they move. */
static size_t image_rw(char *image, size_t size, const off_io *ios, int n, int write)
{
    size_t moved = 0;
    for (int i = 0; i < n; i++) {
        const off_io *io = &ios[i];
        cr_assert(io->fd == 7 && io->write == write && io->offset % OFF_ALIGN == 0 &&
                  io->len % OFF_ALIGN == 0 && (uintptr_t)io->buf % OFF_ALIGN == 0 &&
                  io->offset + io->len <= size, "request %d: %zu at %llu", i, io->len,
                  (unsigned long long)io->offset);
        if (write)
            memcpy(image + io->offset, io->buf, io->len);
        else
            memcpy(io->buf, image + io->offset, io->len);
        moved += io->len;
    }
    return moved;
}

/* Decode steps of the CPU kernels over GPU batch 1's disk record of layer
 * 0 (n_seq sequences), moved as the lanes move it, against the same steps
 * over a record that never leaves memory (truth): each step loads
 * (sched_kv_load_runs: the live runs, every third step the whole record,
 * and the row log's entries) into a stage of garbage (NaN), applies the
 * log, and computes bit for bit what the truth's step computes; its store
 * (sched_kv_store_runs) goes to a file image. So whatever the appends and
 * the write-backs of a full log leave on "disk", the next step reads what
 * it would read in memory. staged: the CUDA path between (the slots in use
 * copied on into a device stage of NaNs and back into another host stage
 * of NaNs). Steps run past two full logs, and append a fraction of the
 * record. Sequences: idle, filling (n_slots < budget) and, with evict,
 * evicting (H2O with scores, window without). */
static void log_steps(int n_seq, int kvh, int hd, int cap, int scores, int evict, int staged)
{
    sched s;
    memset(&s, 0, sizeof s);
    sched_geom *g = &s.g;
    g->KVH = kvh;
    g->H = 2 * kvh; /* two query heads a KV head */
    g->hd = hd;
    g->L = 1;
    g->K = 2;
    g->gbs = n_seq + 1;
    g->kv_seq0[SCHED_DISK] = 1; /* the batch's first sequence elsewhere */
    g->kv_n[SCHED_DISK] = n_seq;
    g->kv_row = (size_t)hd * sizeof(float);
    g->kv[SCHED_DISK] = sched_kv_layout(g, n_seq, cap, scores);
    g->kv_disk_stride = off_align_up(g->kv[SCHED_DISK].bytes);
    sched_kv_log_geom(g);
    cr_assert(g->kv_log_cap >= 2 && g->kv_log_entry % OFF_ALIGN == 0 &&
              g->kv_log_entry < g->kv_disk_stride / 4, "a log of %d entries of %zu bytes",
              g->kv_log_cap, g->kv_log_entry);
    g->kv_log_at = 2 * g->kv_disk_stride;
    s.sh.cap = cap;
    s.kv_fd = 7;
    uint8_t log_n[2] = {0, 0};
    s.kv_log_n = log_n;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t stride = g->kv_disk_stride, n_pages = stride / OFF_ALIGN;
    size_t log_bytes = sched_kv_log_bytes(g), size = 2 * (stride + log_bytes);
    kern_seq *bseq = calloc((size_t)2 * g->gbs, sizeof(kern_seq)); /* batch k = 1 */
    s.bseq = bseq;
    kern_seq *seqs = bseq + g->gbs + 1;
    char *truth = off_alloc_aligned(stride), *stage = off_alloc_aligned(stride);
    char *dev = off_alloc_aligned(stride), *host2 = off_alloc_aligned(stride);
    char *image = off_alloc_aligned(size), *whole = off_alloc_aligned(stride);
    void *log_ld = off_alloc_aligned(log_bytes), *log_st = off_alloc_aligned(log_bytes);
    cr_assert(bseq && truth && stage && dev && host2 && image && whole && log_ld && log_st);
    uint64_t r = 12345;
    for (size_t i = 0; i < stride; i++)
        truth[i] = (char)((r = r * 6364136223846793005ULL + 1442695040888963407ULL) >> 56);
    for (int j = 0; j < n_seq; j++) {
        kern_seq *q = &seqs[j];
        q->budget = cap - j % 3;
        q->n_past = evict && j % 3 == 2 ? cap + 5 + j : 1 + j % (cap / 2); /* evicting, filling */
        q->n_slots = q->n_past < q->budget ? q->n_past : q->budget;
        q->row = j;
        q->sinks = 1;
        q->recent = 2;
        for (int h = 0; h < kvh; h++) { /* distinct positions, the newest last but shuffled */
            int32_t *pos = (int32_t *)(truth + kl->pos) + ((size_t)j * kvh + h) * cap;
            for (int i = 0; i < q->n_slots; i++)
                pos[i] = q->n_past - q->n_slots + i;
            for (int i = q->n_slots - 1; i > 1; i--) {
                int k = (int)((r = r * 6364136223846793005ULL + 1) >> 33) % i;
                int32_t t = pos[i];
                pos[i] = pos[k];
                pos[k] = t;
            }
            if (scores)
                for (int i = 0; i < cap; i++)
                    ((float *)(truth + kl->scores))[((size_t)j * kvh + h) * cap + i] =
                        (float)(i % 7);
        }
    }
    memcpy(image + stride, truth, stride); /* the prefill's whole store */
    size_t ld = (size_t)g->H * hd, nv = (size_t)n_seq * ld;
    float *q = calloc(nv, sizeof(float)), *kv = calloc(nv, sizeof(float));
    float *out = calloc(nv, sizeof(float)), *out2 = calloc(nv, sizeof(float));
    float *self_p = calloc((size_t)n_seq * kvh, sizeof(float));
    float *self_p2 = calloc((size_t)n_seq * kvh, sizeof(float));
    off_io *ios = malloc(sizeof(off_io) * sched_kv_max_runs(g));
    uint8_t *pages = malloc(n_pages);
    cr_assert(q && kv && out && out2 && self_p && self_p2 && ios && pages);
    backend be;
    cr_assert_eq(backend_cpu_create(1, &be), 0);
    s.be = &be;

    int steps = 2 * (g->kv_log_cap + 1) + 3, appends = 0, write_backs = 0;
    for (int step = 0; step < steps; step++) {
        for (int j = 0; j < n_seq; j++) /* every fourth idle, another each step */
            seqs[j].n_new = (j + step) % 4 != 3;
        for (size_t i = 0; i < nv; i++)
            q[i] = kv[i] = (float)((i * 37 + (size_t)step * 5) % 11) / 11.0f;
        int e = log_n[1];
        memset(stage, 0xff, stride);
        int live = step % 3 != 2;
        int n = sched_kv_load_runs(&s, 0, 1, live, stage, log_ld, ios, pages);
        cr_assert(n >= 1 && (size_t)n <= sched_kv_max_runs(g), "%d requests", n);
        size_t read = image_rw(image, size, ios, n, 0);
        cr_assert(ios[n - 1].offset + ios[n - 1].len <= (e ? size : 2 * stride),
                  "the record's requests end in its log");
        cr_assert(!e || (ios[n - 1].buf == log_ld && ios[n - 1].len == e * g->kv_log_entry),
                  "step %d: the log's %d entries", step, e);
        if (live && step == 0)
            cr_assert_lt(read, stride / 2, "%zu of %zu bytes read", read, stride);
        sched_kv_log_apply(&s, 0, 1, stage, log_ld);
        char *rec = stage; /* what the step computes on and stores from */
        if (staged) {
            memset(dev, 0xff, stride);
            memset(host2, 0xff, stride);
            int64_t b = sched_kv_copy_live(&s, SCHED_DISK, BACKEND_Q_H2D, dev, stage,
                                           sched_kv_live_slots(&s, SCHED_DISK, 1, 0), 1);
            cr_assert(b > 0 && (size_t)b <= kl->bytes, "%lld bytes copied", (long long)b);
            rec = dev;
        }
        decode_on_record(&s, truth, q, kv, out, self_p);
        decode_on_record(&s, rec, q, kv, out2, self_p2);
        cr_assert(memcmp(out, out2, nv * sizeof(float)) == 0,
                  "step %d (%d entries in the log): the step read other keys or values", step, e);
        cr_assert(memcmp(self_p, self_p2, (size_t)n_seq * kvh * sizeof(float)) == 0);
        if (staged) {
            int64_t b = sched_kv_copy_live(&s, SCHED_DISK, BACKEND_Q_D2H, host2, dev,
                                           sched_kv_live_slots(&s, SCHED_DISK, 1, 1), 1);
            cr_assert(b > 0);
            rec = host2;
        }
        int next = -1;
        n = sched_kv_store_runs(&s, 0, 1, n_seq, rec, log_st, ios, pages, &next);
        size_t written = image_rw(image, size, ios, n, 1);
        if (e < g->kv_log_cap) { /* an entry at the log's end, the scores' pages before it */
            cr_assert(next == e + 1 && ios[n - 1].buf == log_st &&
                      ios[n - 1].len == g->kv_log_entry &&
                      ios[n - 1].offset == g->kv_log_at + log_bytes + e * g->kv_log_entry,
                      "step %d: the entry after %d", step, e);
            cr_assert(n <= (scores ? 3 : 1), "step %d: %d requests", step, n);
            cr_assert_lt(written, stride / 4, "%zu of %zu bytes written", written, stride);
            appends++;
        } else { /* a full log: the slots in use written back, the log empty */
            cr_assert(next == 0 && ios[n - 1].offset + ios[n - 1].len <= 2 * stride);
            write_backs++;
        }
        sched_kv_log_set(&s, 0, 1, next);
        for (int j = 0; j < n_seq; j++) {
            kern_seq *sq = &seqs[j];
            sq->n_past += sq->n_new;
            sq->n_slots = sq->n_past < sq->budget ? sq->n_past : sq->budget;
        }
    }
    cr_assert(appends >= 2 * g->kv_log_cap && write_backs == 2, "%d appends, %d write-backs",
              appends, write_backs);

    /* the record read whole (a prefill's or a KV copy's read) holds what
     * the next step reads; so does it after a step that the runs cannot
     * account for writes it whole and empties the log */
    for (int lost = 0; lost < 2; lost++) {
        for (int j = 0; j < n_seq; j++) /* (the slots in use as they are) */
            seqs[j].n_new = 0;
        memset(whole, 0xff, stride);
        int n = sched_kv_load_runs(&s, 0, 1, 0, whole, log_ld, ios, pages);
        image_rw(image, size, ios, n, 0);
        sched_kv_log_apply(&s, 0, 1, whole, log_ld);
        assert_next_step_reads(&s, whole, truth, lost ? "whole write-back" : "whole read");
        if (lost || !evict)
            break;
        for (int j = 0; j < n_seq; j++)
            seqs[j].n_new = 1;
        seqs[2].n_past += 1000; /* an evicting sequence's token that no slot holds */
        int next = -1;
        n = sched_kv_store_runs(&s, 0, 1, n_seq, whole, log_st, ios, pages, &next);
        cr_assert(n == 1 && ios[0].buf == whole && ios[0].len == stride && next == 0,
                  "%d requests", n);
        image_rw(image, size, ios, n, 1);
        sched_kv_log_set(&s, 0, 1, next);
        seqs[2].n_past -= 1000;
    }
    s.be = NULL;
    backend_destroy(&be);
    free(ios);
    free(pages);
    free(q);
    free(kv);
    free(out);
    free(out2);
    free(self_p);
    free(self_p2);
    free(bseq);
    free(truth);
    free(stage);
    free(dev);
    free(host2);
    free(image);
    free(whole);
    free(log_ld);
    free(log_st);
}

Test(sched, a_decode_step_reads_the_live_slots_and_logs_what_it_changed)
{
    log_steps(9, 2, 64, 300, 1, 1, 0); /* H2O: long rows of a pair, requests apart */
    log_steps(9, 2, 64, 300, 0, 1, 0); /* window: no scores */
    log_steps(9, 2, 64, 300, 0, 0, 0); /* full: every cache filling */
    log_steps(6, 4, 128, 97, 1, 1, 0); /* rows of 512 bytes, four KV heads */
    log_steps(9, 2, 64, 300, 1, 1, 1); /* the staged (CUDA) path */
    log_steps(9, 2, 64, 300, 0, 0, 1);
}

/* With the KV cache on disk and rows long enough (a model of head_dim
 * 128, 209 slots: a sequence and head's K rows span 26 pages, 13 under
 * H2O's half), a decode step reads the slots in use of each record and
 * writes back a fraction of it, and the run equals the all-resident one,
 * for the full cache (the next slot) and H2O (the victims, the scores). */
Test(sched, a_decode_step_moves_a_fraction_of_a_disk_kv_record)
{
    setup_files();
    gen_harness_wide_model();
    static const char *kv[] = {"", "--kv-policy h2o --kv-ratio 0.5 --sinks 1"};
    for (int i = 0; i < 2; i++) {
        const char *run = "generate --model wide --prompts pw.jsonl --max-new-tokens 200 "
                          "--ignore-eos --gpu-batch-size 2 --num-gpu-batches 2 --quiet";
        cr_assert_eq(cli_run("%s %s --out wa%d.jsonl --trace-evictions ea%d.jsonl", run, kv[i],
                             i, i), 0, "%s", cli_err);
        cr_assert_eq(cli_run("%s %s --out wb%d.jsonl --trace-evictions eb%d.jsonl --percent 100 "
                             "0 0 0 100 0 --offload-dir off --trace wt%d.json", run, kv[i], i, i,
                             i), 0, "%s", cli_err);
        char a[32], b[32], t[32];
        snprintf(a, sizeof a, "wa%d.jsonl", i);
        snprintf(b, sizeof b, "wb%d.jsonl", i);
        assert_same(a, b, kv[i][0] ? kv[i] : "full cache, KV on disk");
        snprintf(a, sizeof a, "ea%d.jsonl", i);
        snprintf(b, sizeof b, "eb%d.jsonl", i);
        if (i == 1)
            assert_same(a, b, "evictions, KV on disk");
        snprintf(t, sizeof t, "wt%d.json", i);
        gen_trace_io r = gen_harness_disk_kv_moves(t, kv[i][0] ? kv[i] : "full cache");
        /* --plan counts the records' row logs in the disk tier's KV, and says so */
        cr_assert_eq(cli_run("%s %s --out wp.jsonl --percent 100 0 0 0 100 0 --offload-dir off "
                             "--plan", run, kv[i]), 0, "%s", cli_err);
        char *plan = cli_read("stdout.txt");
        cr_assert(strstr(plan, "[flexh2o] plan        disk KV: 0.000 GiB of it the records' "
                               "row logs"), "%s", plan);
        free(plan);
        double record = gen_harness_trace_io(t, "disk write", NULL).prefill;
        if (i == 0) /* slots 1-9 to 208 of 209 */
            cr_assert_lt(r.decode_sum / r.n_decode, 0.7 * record, "%.0f bytes a read",
                         r.decode_sum / r.n_decode);
        /* on the CPU tier, without CPU attention: a decode step copies the
         * slots in use into the stage and back (the prefill stores whole) */
        cr_assert_eq(cli_run("%s %s --out wc%d.jsonl --percent 100 0 0 100 100 0 --trace "
                             "wc%d.json", run, kv[i], i, i), 0, "%s", cli_err);
        snprintf(b, sizeof b, "wc%d.jsonl", i);
        snprintf(a, sizeof a, "wa%d.jsonl", i);
        assert_same(a, b, "KV on the CPU tier");
        snprintf(t, sizeof t, "wc%d.json", i);
        gen_trace_io cl = gen_harness_trace_io(t, "KV", "load");
        gen_trace_io cs = gen_harness_trace_io(t, "KV", "store");
        cr_assert(cl.n == 2 * 2 * 199 && cs.n == 2 * 2 * 200, "%s: %d loads, %d stores", t, cl.n,
                  cs.n);
        cr_assert(cl.decode_min > 0 && cl.decode_min < cs.prefill / 4 &&
                  cs.decode_min < cs.prefill / 4 && cs.decode_max <= cs.prefill,
                  "%s: decode copies of %.0f (load), %.0f-%.0f (store) bytes of a record of %.0f",
                  kv[i], cl.decode_min, cs.decode_min, cs.decode_max, cs.prefill);
    }
}

