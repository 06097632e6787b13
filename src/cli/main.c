/* main.c: the flexh2o command line.
 *
 *   flexh2o generate   --model DIR | --dummy NAME  --prompts IN --out OUT ...
 *   flexh2o tokenize   --model DIR        (stdin lines -> JSON id arrays)
 *   flexh2o make-model --config NAME --out DIR
 *
 * Every failure prints one line "flexh2o: <what>; <what to do>" and exits
 * non-zero; output already written is never touched.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "fh_config.h"
#include "gen.h"
#include "jobio.h"
#include "model.h"
#include "off.h"
#include "scheduler.h"
#include "tok.h"

static int fail(void)
{
    const char *m = err_msg();
    fprintf(stderr, "flexh2o: %s\n", m[0] ? m : "failed (no message recorded)");
    if (getenv("FLEXH2O_DEBUG"))
        fprintf(stderr, "  (at %s)\n", err_where());
    return 1;
}

static int usage_error(const char *verb, const char *msg)
{
    fprintf(stderr, "flexh2o %s: %s; see flexh2o %s --help\n", verb, msg, verb);
    return 2;
}

/* Parse "N" as an int in [lo, hi]. */
static int parse_int(const char *verb, const char *flag, const char *s, long lo,
                     long hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > hi) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s expects an integer in [%ld, %ld], got \"%s\"",
                 flag, lo, hi, s);
        return usage_error(verb, msg);
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *verb, const char *flag, const char *s, double lo,
                       double hi, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !(v >= lo && v <= hi)) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s expects a number in [%g, %g], got \"%s\"", flag,
                 lo, hi, s);
        return usage_error(verb, msg);
    }
    *out = (float)v;
    return 0;
}

/* The backend --device names (default: cuda when a GPU is present). @return
 * 0, or the exit status of the error already printed. */
static int open_backend(const char *verb, const char *device, int threads, backend *be)
{
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return usage_error(verb, "--device must be cpu or cuda");
    int want_cuda = device ? strcmp(device, "cuda") == 0 : kern_cuda_available();
    int rc = want_cuda ? backend_cuda_create(0, be) : backend_cpu_create(threads, be);
    return rc < 0 ? fail() : 0;
}

/* The KV-policy flags generate and search share (option codes K Q B k H).
 * @return -1 when c is not one of them, else 0 or a usage error's status. */
static int kv_flag(const char *verb, int c, const char *arg, kv_policy *kv)
{
    int rc = 0;
    float f;
    switch (c) {
    case 'K':
        return kv_policy_parse(arg, &kv->kind) < 0 ? usage_error(verb, err_msg()) : 0;
    case 'Q':
        if ((rc = parse_float(verb, "--kv-ratio", arg, 1e-9, 1, &f)) == 0)
            kv->ratio = strtod(arg, NULL); /* not f: 0.3f x 20 would round up to 7 */
        return rc;
    case 'B': return parse_int(verb, "--kv-budget", arg, 1, 1 << 24, &kv->budget);
    case 'k': return parse_int(verb, "--sinks", arg, 0, 1 << 24, &kv->sinks);
    case 'H':
        if ((rc = parse_float(verb, "--hh-share", arg, 0, 1, &f)) == 0)
            kv->hh_share = strtod(arg, NULL); /* as typed: 0.7f x 10 floors to 6 */
        return rc;
    default: return -1;
    }
}

static int unknown_flag(const char *verb, const char *flag)
{
    char msg[256];
    snprintf(msg, sizeof msg, "unknown flag %s", flag);
    return usage_error(verb, msg);
}

/* getopt_long's complaint about argv[optind - 1] as a usage error. */
static int bad_flag(const char *verb, int c, char **argv)
{
    if (!(optopt && c == '?'))
        return unknown_flag(verb, argv[optind - 1]);
    char msg[256];
    snprintf(msg, sizeof msg, "%s needs a value", argv[optind - 1]);
    return usage_error(verb, msg);
}

/* A word left after the flags: a usage error (status 2), else 0. */
static int extra_args(const char *verb, int argc, char **argv)
{
    if (optind >= argc)
        return 0;
    char msg[256];
    snprintf(msg, sizeof msg, "unexpected argument \"%s\"", argv[optind]);
    return usage_error(verb, msg);
}

static const char generate_help[] =
    "usage: flexh2o generate (--model DIR | --dummy NAME) --prompts IN.jsonl --out OUT.jsonl\n"
    "         [--max-new-tokens N] [--batch-size N] [--temperature T --top-p P --seed S]\n"
    "         [--device cpu|cuda] [--threads N] [--resume] [--strict] [--quiet]\n"
    "\n"
    "  --model DIR          Hugging Face OPT directory (config.json, model.safetensors or\n"
    "                       shards, vocab.json + merges.txt or tokenizer.json)\n"
    "  --dummy NAME         random weights of a configs/models shape (opt-125m ... opt-175b)\n"
    "  --prompts FILE       JSONL: {\"id\"?, \"prompt\" | \"prompt_ids\", \"max_new_tokens\"?}\n"
    "  --out FILE           JSONL completions, appended and flushed per prompt\n"
    "  --max-new-tokens N   default 32\n"
    "  --batch-size N       sequences generated together (default 8)\n"
    "  --temperature T      0 = greedy (default); --top-p P (default 1), --seed S (default 0)\n"
    "  --device cpu|cuda    default: cuda when a GPU is present, else cpu\n"
    "  --resume             skip prompts whose id is already in --out\n"
    "  --strict             stop at the first bad prompt line instead of skipping it\n"
    "  --ignore-eos         always generate max_new_tokens (benchmarks)\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "\n"
    "KV cache policy (DESIGN.md \"H2O KV policy\"; B slots per sequence, layer and head):\n"
    "  --kv-policy P        full (default), h2o, window (the B newest tokens) or\n"
    "                       streaming (--sinks first tokens + the newest)\n"
    "  --kv-ratio R         B = ceil(R x (prompt tokens + max new tokens)) per prompt, R in (0, 1]\n"
    "  --kv-budget B        B slots for every prompt (give one of --kv-ratio, --kv-budget)\n"
    "  --sinks N            first tokens never evicted (h2o, streaming; default 0)\n"
    "  --hh-share S         h2o: heavy = floor((B - sinks) x S), recent = B - sinks - heavy\n"
    "                       (default 0.5); recent must be >= 1\n"
    "  --trace-evictions F  JSONL, one line per token leaving a cache: {\"id\", \"layer\",\n"
    "                       \"head\", \"step\", \"pos\"}; step 0 = dropped at prefill, step s =\n"
    "                       evicted when generated token s was inserted (--resume appends)\n"
    "  --stats              print per layer the kept attention mass: the mean, over\n"
    "                       sequences, heads and passes, of (accumulated attention of the\n"
    "                       cached tokens) / (queries so far); 1 = nothing attended was lost\n"
    "\n"
    "Offloading (DESIGN.md \"Policy\", \"Zig-zag block schedule\"; flags override --policy):\n"
    "  --policy FILE        JSON policy (configs/policies/*.json)\n"
    "  --gpu-batch-size N   sequences per GPU batch (same as --batch-size)\n"
    "  --num-gpu-batches N  GPU batches per block (default 1); a layer's weights are\n"
    "                       loaded once per block and reused by each GPU batch\n"
    "  --percent WG WC CG CC HG HC  weights, KV cache, activations on the GPU and the CPU\n"
    "                       in percent; the rest on disk (default 100 0 100 0 100 0)\n"
    "  --gpu-mem SIZE       GPU-tier cap, e.g. 16G (default: what the device has; none on cpu)\n"
    "  --cpu-mem SIZE       CPU-tier cap (default: MemAvailable)\n"
    "  --offload-dir DIR    disk tier (weights.bin, kv.bin, act.bin are created there)\n"
    "  --overlap | --no-overlap  I/O threads overlap compute (default on)\n"
    "  --pin-weight | --no-pin-weight  pinned memory for CPU-tier weights (default on)\n"
    "  --cpu-attention      decode attention over CPU-tier KV runs where it lives\n"
    "  --compress-weight    keep and move the weight matrices as 4-bit groups (64 values,\n"
    "                       fp16 scale + min); each expands just before its GEMM\n"
    "  --compress-cache     keep and move the KV cache as 4-bit groups\n"
    "  --plan               print the memory plan of every tier and exit\n"
    "  --trace FILE         Chrome trace-event JSON of every load, store and compute\n"
    "                       (open in https://ui.perfetto.dev)\n";

static int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"dummy", required_argument, 0, 'D'},
        {"prompts", required_argument, 0, 'p'},
        {"out", required_argument, 0, 'o'},
        {"max-new-tokens", required_argument, 0, 'n'},
        {"batch-size", required_argument, 0, 'b'},
        {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},
        {"seed", required_argument, 0, 's'},
        {"device", required_argument, 0, 'd'},
        {"threads", required_argument, 0, 'T'},
        {"prefill-rows", required_argument, 0, 'R'},
        {"resume", no_argument, 0, 'r'},
        {"strict", no_argument, 0, 'S'},
        {"quiet", no_argument, 0, 'q'},
        {"ignore-eos", no_argument, 0, 'E'},
        {"kv-policy", required_argument, 0, 'K'},
        {"kv-ratio", required_argument, 0, 'Q'},
        {"kv-budget", required_argument, 0, 'B'},
        {"sinks", required_argument, 0, 'k'},
        {"hh-share", required_argument, 0, 'H'},
        {"trace-evictions", required_argument, 0, 'V'},
        {"stats", no_argument, 0, 'X'},
        {"policy", required_argument, 0, 1000},
        {"gpu-batch-size", required_argument, 0, 1013},
        {"num-gpu-batches", required_argument, 0, 1001},
        {"percent", required_argument, 0, 1002},
        {"gpu-mem", required_argument, 0, 1003},
        {"cpu-mem", required_argument, 0, 1004},
        {"offload-dir", required_argument, 0, 1005},
        {"overlap", no_argument, 0, 1006},
        {"no-overlap", no_argument, 0, 1007},
        {"pin-weight", no_argument, 0, 1008},
        {"no-pin-weight", no_argument, 0, 1009},
        {"cpu-attention", no_argument, 0, 1010},
        {"compress-weight", no_argument, 0, 1014},
        {"compress-cache", no_argument, 0, 1015},
        {"trace", required_argument, 0, 1011},
        {"plan", no_argument, 0, 1012},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *dummy = NULL, *prompts = NULL, *outp = NULL;
    const char *device = NULL, *trace_path = NULL, *policy_path = NULL, *sched_trace_path = NULL;
    int resume = 0, strict = 0, quiet = 0, threads = 0, seed = 0, plan_only = 0;
    /* policy flags, applied over --policy FILE whatever their order */
    sched_policy cli;
    sched_policy_default(&cli);
    unsigned given = 0;
    enum { G_GBS = 1, G_NGB = 2, G_PCT = 4, G_GMEM = 8, G_CMEM = 16, G_DIR = 32, G_OVL = 64,
           G_PIN = 128, G_CATT = 256, G_CW = 512, G_CC = 1024 };
    gen_opts go = {.batch_size = 8, .max_new = 32, .temperature = 0.0f, .top_p = 1.0f,
                   .prefill_rows = 4096, .progress = 1, .kv = {.hh_share = 0.5}};
    int c, rc;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'D': dummy = optarg; break;
        case 'p': prompts = optarg; break;
        case 'o': outp = optarg; break;
        case 'n':
            if ((rc = parse_int("generate", "--max-new-tokens", optarg, 0, 1 << 20, &go.max_new)))
                return rc;
            break;
        case 'b':
        case 1013:
            if ((rc = parse_int("generate", c == 'b' ? "--batch-size" : "--gpu-batch-size",
                                optarg, 1, 1 << 16, &cli.gpu_batch_size)))
                return rc;
            given |= G_GBS;
            break;
        case 1000: policy_path = optarg; break;
        case 1001:
            if ((rc = parse_int("generate", "--num-gpu-batches", optarg, 1, 1 << 16,
                                &cli.num_gpu_batches)))
                return rc;
            given |= G_NGB;
            break;
        case 1002: {
            /* six values: "--percent 20 80 0 100 0 100" or "--percent 20,80,0,100,0,100" */
            const char *args[6] = {optarg};
            int n = 1;
            if (!strchr(optarg, ',') && !strchr(optarg, ' '))
                while (n < 6 && optind < argc && argv[optind][0] != '-')
                    args[n++] = argv[optind++];
            if (sched_policy_parse_percent(args, n, &cli) < 0)
                return usage_error("generate", err_msg());
            given |= G_PCT;
            break;
        }
        case 1003:
            if (sched_parse_size("--gpu-mem", optarg, &cli.gpu_mem) < 0)
                return usage_error("generate", err_msg());
            given |= G_GMEM;
            break;
        case 1004:
            if (sched_parse_size("--cpu-mem", optarg, &cli.cpu_mem) < 0)
                return usage_error("generate", err_msg());
            given |= G_CMEM;
            break;
        case 1005:
            snprintf(cli.offload_dir, sizeof cli.offload_dir, "%s", optarg);
            given |= G_DIR;
            break;
        case 1006: cli.overlap = 1; given |= G_OVL; break;
        case 1007: cli.overlap = 0; given |= G_OVL; break;
        case 1008: cli.pin_weight = 1; given |= G_PIN; break;
        case 1009: cli.pin_weight = 0; given |= G_PIN; break;
        case 1010: cli.cpu_attention = 1; given |= G_CATT; break;
        case 1014: cli.compress_weight = 1; given |= G_CW; break;
        case 1015: cli.compress_cache = 1; given |= G_CC; break;
        case 1011: sched_trace_path = optarg; break;
        case 1012: plan_only = 1; break;
        case 't':
            if ((rc = parse_float("generate", "--temperature", optarg, 0, 100, &go.temperature)))
                return rc;
            break;
        case 'P':
            if ((rc = parse_float("generate", "--top-p", optarg, 1e-6, 1, &go.top_p)))
                return rc;
            break;
        case 's':
            if ((rc = parse_int("generate", "--seed", optarg, 0, 2147483647, &seed)))
                return rc;
            break;
        case 'd': device = optarg; break;
        case 'T':
            if ((rc = parse_int("generate", "--threads", optarg, 1, 4096, &threads)))
                return rc;
            break;
        case 'R':
            if ((rc = parse_int("generate", "--prefill-rows", optarg, 1, 1 << 24, &go.prefill_rows)))
                return rc;
            break;
        case 'r': resume = 1; break;
        case 'S': strict = 1; break;
        case 'q': quiet = 1; break;
        case 'E': go.ignore_eos = 1; break;
        case 'K': case 'Q': case 'B': case 'k': case 'H':
            if ((rc = kv_flag("generate", c, optarg, &go.kv)))
                return rc;
            break;
        case 'V': trace_path = optarg; break;
        case 'X': go.kv_stats = 1; break;
        case 'h': fputs(generate_help, stdout); return 0;
        default: return bad_flag("generate", c, argv);
        }
    }
    if ((rc = extra_args("generate", argc, argv)))
        return rc;
    if (!model_dir == !dummy)
        return usage_error("generate", "give exactly one of --model DIR or --dummy NAME");
    if (!prompts || !outp)
        return usage_error("generate", "--prompts and --out are required");
    go.seed = (uint64_t)seed;
    go.progress = !quiet;
    if (kv_policy_check(&go.kv) < 0)
        return usage_error("generate", err_msg());
    sched_policy pol;
    sched_policy_default(&pol);
    if (policy_path && sched_policy_load(policy_path, &pol) < 0)
        return usage_error("generate", err_msg());
    if (given & G_GBS) pol.gpu_batch_size = cli.gpu_batch_size;
    if (given & G_NGB) pol.num_gpu_batches = cli.num_gpu_batches;
    if (given & G_PCT) {
        pol.wg = cli.wg; pol.wc = cli.wc; pol.cg = cli.cg;
        pol.cc = cli.cc; pol.hg = cli.hg; pol.hc = cli.hc;
    }
    if (given & G_GMEM) pol.gpu_mem = cli.gpu_mem;
    if (given & G_CMEM) pol.cpu_mem = cli.cpu_mem;
    if (given & G_DIR) memcpy(pol.offload_dir, cli.offload_dir, sizeof pol.offload_dir);
    if (given & G_OVL) pol.overlap = cli.overlap;
    if (given & G_PIN) pol.pin_weight = cli.pin_weight;
    if (given & G_CATT) pol.cpu_attention = cli.cpu_attention;
    if (given & G_CW) pol.compress_weight = cli.compress_weight;
    if (given & G_CC) pol.compress_cache = cli.compress_cache;
    if (sched_policy_check(&pol) < 0)
        return usage_error("generate", err_msg());
    go.batch_size = pol.gpu_batch_size;

    backend be = {0};
    if ((rc = open_backend("generate", device, threads, &be)))
        return rc;

    model *m = NULL;
    tok *t = NULL;
    prompt_set ps = {0};
    outfile out = {0};
    gen_stats st = {0};
    sched *sc = NULL;
    sched_trace *strace = NULL;
    model_config cfg;
    uint32_t store_dtype = 0;
    int status = 0, kv_usage = 0, is_store = 0;
    if (model_dir) {
        rc = model_config_of(model_dir, &cfg);
        if (rc == 0)
            rc = is_store = model_store_dtype(model_dir, &store_dtype);
        if (rc >= 0)
            rc = tok_load(model_dir, &t);
    } else {
        rc = model_config_by_name(dummy, &cfg);
        cfg.tie_lm_head = 1; /* as model_create_dummy builds it */
    }
    if (rc == 0 && is_store == 1 && (store_dtype & OFF_DTYPE_Q4))
        pol.compress_weight = 1; /* a 4-bit store runs as 4-bit weights */
    if (rc == 0)
        rc = prompts_load(prompts, t, cfg.bos_id, cfg.vocab_size, cfg.max_pos - 1, strict, &ps);
    if (rc == 0 && (rc = gen_check(&cfg, &ps, &go)) < 0)
        kv_usage = 1; /* a budget too small for a prompt: fix the flags */
    /* the output is opened early only to resume it (the plan then skips
     * what is done); a new one appears only once the policy fits */
    if (rc == 0 && !plan_only && resume && access(outp, F_OK) == 0)
        rc = outfile_open(outp, resume, &out);
    if (rc == 0 && sched_trace_path)
        rc = sched_trace_create(&strace);
    sched_shape sh;
    sched_model shape;
    model_sched_shape(&cfg, &shape);
    if (rc == 0) {
        gen_shape(&cfg, &ps, out.f ? &out : NULL, &go, pol.gpu_batch_size, &sh);
        sh.evicted = trace_path != NULL; /* the file is opened below */
        /* a store of the backend's type streams its own disk share when it
         * holds the layers as they run (4-bit or not); otherwise weights.bin
         * gets the disk share */
        sh.weights_on_disk_already =
            is_store && pol.compress_weight == !!(store_dtype & OFF_DTYPE_Q4) &&
            off_dtype_size(store_dtype) == be.ops->elem_size;
        if (plan_only) {
            sched_plan pl;
            rc = sched_plan_compute(&shape, be.ops->elem_size, &pol, &sh, &pl);
            if (rc == 0)
                sched_plan_print(stdout, &pl);
            /* the caps given (not the machine's): exit 1 when it cannot fit */
            if (rc == 0)
                rc = sched_plan_check(&pl, &pol, pol.gpu_mem, pol.cpu_mem, 0);
        } else {
            rc = sched_create(&be, &shape, &pol, &sh, strace, &sc);
        }
    }
    if (rc == 0 && !plan_only && !out.f)
        rc = outfile_open(outp, resume, &out);
    if (rc == 0 && trace_path && !plan_only)
        rc = gen_trace_open(trace_path, resume, &out, &go.trace);
    if (rc == 0 && !plan_only) {
        if (is_store)
            rc = model_load_store(model_dir, &be, NULL, sched_layer_sink, sc, &m);
        else if (model_dir)
            rc = model_load_hf_sink(model_dir, &be, sched_layer_sink, sc, &m);
        else
            rc = model_create_dummy_sink(&cfg, &be, 1234, sched_layer_sink, sc, &m);
    }
    if (rc == 0 && !plan_only) {
        sched_model bound;
        model_sched_bind(m, &bound);
        rc = sched_attach(sc, &bound);
    }
    if (rc == 0 && !plan_only)
        rc = gen_run(m, sc, t, &ps, &out, &go, &st);
    if (strace && sched_trace_path) {
        int trc = sched_trace_write(strace, sched_trace_path);
        if (rc == 0)
            rc = trc;
    }
    if (go.trace && fclose(go.trace) != 0 && rc == 0) {
        err_set(__FILE__, __LINE__, "%s: closing failed", trace_path);
        rc = -EIO;
    }
    if (out.f) {
        int crc = outfile_close(&out);
        if (rc == 0)
            rc = crc;
    }
    if (rc < 0) {
        status = kv_usage ? usage_error("generate", err_msg()) : fail();
    } else {
        if (go.kv_stats)
            gen_stats_print(stdout, &st, &go);
        if (!quiet)
            fprintf(stderr,
                    "[flexh2o] %ld prompts on %s: prefill %.1f tok/s (%ld tokens), "
                    "decode %.1f tok/s (%ld tokens), total %.1f generated tok/s in %.2f s\n",
                    st.prompts, be.ops->name,
                    st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0.0,
                    st.prefill_tokens,
                    st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0,
                    st.decode_tokens, st.total_s > 0 ? st.generated / st.total_s : 0.0,
                    st.total_s);
        if (!quiet && sc)
            sched_summary_print(sc, stderr);
        if (!quiet && go.kv.kind != KV_POLICY_FULL && st.kv_slots > 0)
            fprintf(stderr, "[flexh2o] --kv-policy %s: KV cache of %d slots per sequence, "
                    "layer and head (full: %d)\n", kv_policy_name(go.kv.kind), st.kv_slots,
                    st.kv_slots_full);
        if (ps.n_bad > 0) {
            fprintf(stderr, "flexh2o: %d prompt line%s of %s skipped (reported above); "
                    "fix them and rerun with --resume\n", ps.n_bad,
                    ps.n_bad > 1 ? "s" : "", prompts);
            status = 3;
        }
    }
    gen_stats_free(&st);
    prompts_free(&ps);
    tok_destroy(t);
    sched_destroy(sc); /* before the model: its store may be streamed from */
    model_destroy(m);
    sched_trace_destroy(strace);
    backend_destroy(&be);
    return status;
}

static int cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o tokenize --model DIR < lines.txt\n"
                 "  prints, per input line, the JSON array of ids generate feeds (BOS first)");
            return 0;
        } else {
            return unknown_flag("tokenize", argv[i]);
        }
    }
    if (!dir)
        return usage_error("tokenize", "--model DIR is required");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    tok *t = NULL;
    if (model_config_load(path, &cfg) < 0 || tok_load(dir, &t) < 0)
        return fail();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n')
            len--;
        int32_t *ids = NULL;
        int n = tok_encode(t, line, (size_t)len, &ids);
        if (n < 0) {
            rc = fail();
            break;
        }
        printf("[%d", cfg.bos_id);
        for (int i = 0; i < n; i++)
            printf(", %d", ids[i]);
        printf("]\n");
        free(ids);
    }
    free(line);
    tok_destroy(t);
    return rc;
}

static int cmd_make_model(int argc, char **argv)
{
    const char *name = NULL, *out = NULL;
    int seed = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            int rc = parse_int("make-model", "--seed", argv[++i], 0, 2147483647, &seed);
            if (rc)
                return rc;
        } else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o make-model --config NAME --out DIR [--seed S]\n"
                 "  writes a random OPT in Hugging Face format; NAME: tiny (built in),\n"
                 "  opt-125m ... opt-175b (configs/models), or a config.json path");
            return 0;
        } else {
            return unknown_flag("make-model", argv[i]);
        }
    }
    if (!name || !out)
        return usage_error("make-model", "--config NAME and --out DIR are required");
    model_config cfg;
    if (model_config_by_name(name, &cfg) < 0 ||
        model_write_random(&cfg, out, (uint64_t)seed) < 0)
        return fail();
    fprintf(stderr, "[flexh2o] wrote %s (%s, %.2f M parameters) to %s\n", name, cfg.name,
            model_config_params(&cfg) / 1e6, out);
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    uint32_t dtype = OFF_DTYPE_F16, q4 = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            in = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            if (strcmp(d, "f16") == 0)
                dtype = OFF_DTYPE_F16;
            else if (strcmp(d, "f32") == 0)
                dtype = OFF_DTYPE_F32;
            else
                return usage_error("convert", "--dtype must be f16 (the GPU's) or f32 (the "
                                   "CPU backend's)");
        } else if (strcmp(argv[i], "--compress-weight") == 0) {
            q4 = OFF_DTYPE_Q4;
        } else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o convert --model HF_DIR --out STORE [--dtype f16|f32]\n"
                 "         [--compress-weight]\n"
                 "  writes STORE/model.flxh2o (4 KiB-aligned, checksummed per-layer segments\n"
                 "  that the disk tier streams with O_DIRECT) plus config.json and the\n"
                 "  tokenizer files; then: flexh2o generate --model STORE ...\n"
                 "  --dtype: storage type (default f16, the CUDA backend's; f32 streams\n"
                 "  without conversion on the CPU backend)\n"
                 "  --compress-weight: the layers' matrices as 4-bit groups (kernels/kern.h);\n"
                 "  such a store runs with --compress-weight and streams its disk share");
            return 0;
        } else {
            return unknown_flag("convert", argv[i]);
        }
    }
    if (!in || !out)
        return usage_error("convert", "--model HF_DIR and --out STORE are required");
    if (model_convert(in, out, dtype | q4) < 0)
        return fail();
    fprintf(stderr, "[flexh2o] wrote the weight store %s/model.flxh2o (%s%s)\n", out,
            dtype == OFF_DTYPE_F16 ? "f16" : "f32", q4 ? ", 4-bit matrices" : "");
    return 0;
}

static int cmd_calibrate(int argc, char **argv)
{
    const char *dir = NULL, *device = NULL, *outp = NULL;
    uint64_t bytes = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--offload-dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            outp = argv[++i];
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = argv[++i];
        } else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
            if (sched_parse_size("--bytes", argv[++i], &bytes) < 0)
                return usage_error("calibrate", err_msg());
        } else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o calibrate [--offload-dir DIR] [--device cpu|cuda] [--bytes 1G]\n"
                 "                         [--out PROFILE.json]\n"
                 "  prints the hardware profile the throughput bound and `flexh2o search` use,\n"
                 "  as JSON: host->device, device->host, host memory and device memory\n"
                 "  (GB/s), the backend's GEMM rate (TFLOP/s), and disk read/write (disk\n"
                 "  engine, O_DIRECT) when --offload-dir is given; --out also saves it\n"
                 "  (configs/hardware/ keeps measured profiles)");
            return 0;
        } else {
            return unknown_flag("calibrate", argv[i]);
        }
    }
    backend be = {0};
    int rc = open_backend("calibrate", device, 0, &be);
    if (rc)
        return rc;
    sched_calib cb;
    if ((rc = sched_calibrate(&be, dir, bytes, &cb)) < 0) {
        backend_destroy(&be);
        return fail();
    }
    backend_destroy(&be);
    if (sched_calib_print(stdout, &cb) < 0)
        return fail();
    FILE *f = outp ? fopen(outp, "w") : NULL;
    if (f && sched_calib_print(f, &cb) < 0) {
        fclose(f);
        return fail();
    }
    if (outp && (!f || fclose(f) != 0)) {
        fprintf(stderr, "flexh2o: %s: cannot write the profile (%s); choose a writable "
                "path\n", outp, strerror(errno));
        return 1;
    }
    return 0;
}

static const char search_help[] =
    "usage: flexh2o search (--model DIR | --dummy NAME)\n"
    "         (--prompt-len N --gen-len N | --prompts FILE [--max-new-tokens N])\n"
    "         --gpu-mem SIZE [--cpu-mem SIZE] [--offload-dir DIR] [--hardware FILE]\n"
    "         [--device cpu|cuda] [--out POLICY.json] [--top N] [--max-block N]\n"
    "         [--max-gpu-batches N] [--cpu-attention | --no-cpu-attention]\n"
    "         [--compress-weight] [--compress-cache]\n"
    "         [--kv-policy P --kv-ratio R | --kv-budget B --sinks N --hh-share S]\n\n"
    "Finds the offloading policy (block shape, --percent, CPU attention) with the\n"
    "highest throughput bound (DESIGN.md) that fits the caps: a linear program per\n"
    "block shape (GLPK), checked against the exact memory plan. Prints the best\n"
    "candidates and the plan of the first; --out saves it for generate --policy.\n\n"
    "  --prompt-len N, --gen-len N  the job's prompt and generation lengths\n"
    "  --prompts FILE       or take them from the job's prompt file: its longest prompt,\n"
    "                       its longest generation (--max-new-tokens N, default 32, or\n"
    "                       the line's max_new_tokens) and blocks of at most its size\n"
    "  --gpu-mem SIZE       GPU-tier cap, e.g. 16G (required)\n"
    "  --cpu-mem SIZE       CPU-tier cap (default: MemAvailable)\n"
    "  --offload-dir DIR    allows the disk tier (its free space is the cap)\n"
    "  --hardware FILE      profile from `flexh2o calibrate --out FILE` (default:\n"
    "                       measure now, the disk in --offload-dir included)\n"
    "  --device cpu|cuda    the backend the policy is for (element size; default:\n"
    "                       the profile's, else cuda when a GPU is present)\n"
    "  --top N              candidates printed (default 5)\n"
    "  --max-block N        largest block tried, e.g. the number of prompts (default 1024)\n"
    "  --max-gpu-batches N  largest --num-gpu-batches tried (default 16)\n"
    "  --prefill-rows N     as for generate (default 4096)\n"
    "  --cpu-attention | --no-cpu-attention  only policies with / without it (default:\n"
    "                       both are tried)\n"
    "  --compress-weight, --compress-cache  plan for 4-bit weights / KV (as generate)\n"
    "  KV policy flags as for generate: the cache holds the budget, not the length\n";

/* The lengths a search plans for, from the job's prompt file: the longest
 * prompt, the longest generation, the largest KV budget, and no block
 * larger than the job. @return 0 or the exit status of the error printed. */
static int job_lengths(const model_config *cfg, const char *model_dir, const char *path,
                       int max_new, const kv_policy *kv, sched_search_opts *so, int *n_out)
{
    tok *t = NULL;
    prompt_set ps = {0};
    gen_opts go = {.max_new = max_new, .prefill_rows = so->prefill_rows, .kv = *kv};
    int rc = model_dir ? tok_load(model_dir, &t) : 0;
    if (rc == 0)
        rc = prompts_load(path, t, cfg->bos_id, cfg->vocab_size, cfg->max_pos - 1, 0, &ps);
    if (rc == 0)
        rc = gen_check(cfg, &ps, &go); /* every prompt's KV split */
    for (int i = 0; rc == 0 && i < ps.n; i++) {
        const prompt *p = &ps.p[i];
        int n = gen_max_new(p, &go, cfg->max_pos);
        so->prompt_len = p->n_ids > so->prompt_len ? p->n_ids : so->prompt_len;
        so->gen_len = n > so->gen_len ? n : so->gen_len;
    }
    if (rc == 0) { /* the largest budget, as generate plans it */
        sched_shape sh;
        gen_shape(cfg, &ps, NULL, &go, 1, &sh);
        so->kv_cap = sh.cap;
    }
    if (rc == 0 && ps.n == 0) {
        err_set(__FILE__, __LINE__, "%s: no valid prompt to plan for", path);
        rc = -EINVAL;
    }
    if (rc == 0 && so->gen_len < 1) {
        err_set(__FILE__, __LINE__, "%s: no prompt generates a token (--max-new-tokens 0)",
                path);
        rc = -EINVAL;
    }
    if (rc == 0 && ps.n < so->max_block)
        so->max_block = ps.n;
    *n_out = ps.n;
    prompts_free(&ps);
    tok_destroy(t);
    return rc < 0 ? fail() : 0;
}

static int cmd_search(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"dummy", required_argument, 0, 'D'},
        {"prompt-len", required_argument, 0, 'p'},
        {"gen-len", required_argument, 0, 'n'},
        {"prompts", required_argument, 0, 'P'},
        {"max-new-tokens", required_argument, 0, 'N'},
        {"gpu-mem", required_argument, 0, 'g'},
        {"cpu-mem", required_argument, 0, 'c'},
        {"offload-dir", required_argument, 0, 'o'},
        {"hardware", required_argument, 0, 'w'},
        {"device", required_argument, 0, 'd'},
        {"out", required_argument, 0, 'O'},
        {"top", required_argument, 0, 't'},
        {"max-block", required_argument, 0, 'b'},
        {"max-gpu-batches", required_argument, 0, 'G'},
        {"prefill-rows", required_argument, 0, 'R'},
        {"cpu-attention", no_argument, 0, 'a'},
        {"no-cpu-attention", no_argument, 0, 'A'},
        {"compress-weight", no_argument, 0, 'W'},
        {"compress-cache", no_argument, 0, 'C'},
        {"kv-policy", required_argument, 0, 'K'},
        {"kv-ratio", required_argument, 0, 'Q'},
        {"kv-budget", required_argument, 0, 'B'},
        {"sinks", required_argument, 0, 'k'},
        {"hh-share", required_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *dummy = NULL, *hw_path = NULL, *device = NULL,
               *outp = NULL, *prompts = NULL;
    int top = 5, rc, c, max_new = 32;
    kv_policy kv = {.hh_share = 0.5};
    sched_search_opts so = {.prefill_rows = 4096, .max_block = 1024, .max_gpu_batches = 16,
                            .cpu_attention = -1};
    sched_policy base;
    sched_policy_default(&base);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'D': dummy = optarg; break;
        case 'p':
            if ((rc = parse_int("search", "--prompt-len", optarg, 1, 1 << 20, &so.prompt_len)))
                return rc;
            break;
        case 'n':
            if ((rc = parse_int("search", "--gen-len", optarg, 1, 1 << 20, &so.gen_len)))
                return rc;
            break;
        case 'P': prompts = optarg; break;
        case 'N':
            if ((rc = parse_int("search", "--max-new-tokens", optarg, 0, 1 << 20, &max_new)))
                return rc;
            break;
        case 'g':
            if (sched_parse_size("--gpu-mem", optarg, &so.gpu_cap) < 0)
                return usage_error("search", err_msg());
            break;
        case 'c':
            if (sched_parse_size("--cpu-mem", optarg, &so.cpu_cap) < 0)
                return usage_error("search", err_msg());
            break;
        case 'o': snprintf(base.offload_dir, sizeof base.offload_dir, "%s", optarg); break;
        case 'w': hw_path = optarg; break;
        case 'd': device = optarg; break;
        case 'O': outp = optarg; break;
        case 't':
            if ((rc = parse_int("search", "--top", optarg, 1, 100, &top)))
                return rc;
            break;
        case 'b':
            if ((rc = parse_int("search", "--max-block", optarg, 1, 1 << 16, &so.max_block)))
                return rc;
            break;
        case 'G':
            if ((rc = parse_int("search", "--max-gpu-batches", optarg, 1, 1024,
                                &so.max_gpu_batches)))
                return rc;
            break;
        case 'R':
            if ((rc = parse_int("search", "--prefill-rows", optarg, 1, 1 << 24,
                                &so.prefill_rows)))
                return rc;
            break;
        case 'a': so.cpu_attention = 1; break;
        case 'A': so.cpu_attention = 0; break;
        case 'W': base.compress_weight = 1; break;
        case 'C': base.compress_cache = 1; break;
        case 'K': case 'Q': case 'B': case 'k': case 'H':
            if ((rc = kv_flag("search", c, optarg, &kv)))
                return rc;
            break;
        case 'h': fputs(search_help, stdout); return 0;
        default: return bad_flag("search", c, argv);
        }
    }
    if ((rc = extra_args("search", argc, argv)))
        return rc;
    if (!model_dir == !dummy)
        return usage_error("search", "give exactly one of --model DIR or --dummy NAME");
    if (prompts && (so.prompt_len || so.gen_len))
        return usage_error("search", "give --prompts FILE or --prompt-len and --gen-len, "
                                     "not both");
    if (!prompts && (!so.prompt_len || !so.gen_len))
        return usage_error("search", "--prompt-len and --gen-len are required (or --prompts "
                                     "FILE)");
    if (!so.gpu_cap)
        return usage_error("search", "--gpu-mem is required (the GPU-tier cap to fit)");
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return usage_error("search", "--device must be cpu or cuda");
    if (kv_policy_check(&kv) < 0)
        return usage_error("search", err_msg());
    so.scores = kv_policy_needs_scores(&kv);
    if (!so.cpu_cap)
        so.cpu_cap = off_mem_available();
    if (base.offload_dir[0] && off_disk_free(base.offload_dir, &so.disk_cap) < 0)
        return usage_error("search", err_msg());
    base.gpu_mem = so.gpu_cap;
    base.cpu_mem = so.cpu_cap;

    model_config cfg;
    rc = model_dir ? model_config_of(model_dir, &cfg) : model_config_by_name(dummy, &cfg);
    if (rc < 0)
        return fail();
    if (dummy)
        cfg.tie_lm_head = 1; /* as model_create_dummy builds it */
    int n_prompts = 0;
    if (prompts && (rc = job_lengths(&cfg, model_dir, prompts, max_new, &kv, &so, &n_prompts)))
        return rc;
    if (!prompts) {
        kv_split sp;
        if (kv_policy_split(&kv, so.prompt_len, so.gen_len, 0, &sp) < 0)
            return usage_error("search", err_msg());
        so.kv_cap = sp.budget;
    }

    sched_calib hw;
    if (hw_path) {
        if (sched_calib_load(hw_path, &hw) < 0)
            return usage_error("search", err_msg());
        if (device && strcmp(device, hw.device) != 0) {
            char msg[1400];
            snprintf(msg, sizeof msg, "--device %s but %s was measured on %s; calibrate "
                     "that device or drop --device", device, hw_path, hw.device);
            return usage_error("search", msg);
        }
    } else {
        backend be = {0};
        if ((rc = open_backend("search", device, 0, &be)))
            return rc;
        fprintf(stderr, "[flexh2o] measuring the hardware (save it with flexh2o calibrate "
                        "--out FILE and pass --hardware FILE next time)\n");
        rc = sched_calibrate(&be, base.offload_dir[0] ? base.offload_dir : NULL, 0, &hw);
        backend_destroy(&be);
        if (rc < 0)
            return fail();
    }
    size_t es = strcmp(hw.device, "cuda") == 0 ? 2 : 4;

    sched_candidate *best = calloc((size_t)top, sizeof *best);
    if (!best) {
        fprintf(stderr, "flexh2o: out of memory\n");
        return 1;
    }
    int n = 0;
    sched_model shape;
    model_sched_shape(&cfg, &shape);
    rc = sched_search(&shape, es, &base, &so, &hw, best, top, &n);
    if (rc < 0) {
        free(best);
        return fail();
    }
    printf("[flexh2o] search: %s on %s (%zu-byte elements%s%s), prompt %d + gen %d, %d KV "
           "slots per sequence (%s); caps gpu %.2f GiB, cpu %.2f GiB, disk %s\n", cfg.name,
           hw.device, es, base.compress_weight ? ", 4-bit weights" : "",
           base.compress_cache ? ", 4-bit KV" : "", so.prompt_len, so.gen_len, so.kv_cap,
           kv_policy_name(kv.kind),
           so.gpu_cap / 1073741824.0, so.cpu_cap / 1073741824.0,
           so.disk_cap ? base.offload_dir : "none");
    if (prompts)
        printf("[flexh2o] job: %d prompts in %s; the longest prompt and generation above, "
               "blocks of at most %d\n", n_prompts, prompts, so.max_block);
    printf("[flexh2o] hardware (%s): h2d %.2f, d2h %.2f, host memory %.2f, device memory "
           "%.2f GB/s, GEMM %.3f TFLOP/s", hw_path ? hw_path : "measured now", hw.h2d, hw.d2h,
           hw.dram, hw.dev_mem, hw.gemm);
    if (hw.disk_read > 0)
        printf(", disk read %.2f / write %.2f GB/s", hw.disk_read, hw.disk_write);
    printf("\n rank  gbs x K    block     wg     wc     cg     cc   hg   hc  cpu-attn  "
           "bound tok/s   step s  prefill s  step limited by\n");
    for (int i = 0; i < n; i++) {
        const sched_policy *p = &best[i].pol;
        const sched_cost *q = &best[i].cost;
        printf(" %4d  %4d x %-3d %6d %6.4g %6.4g %6.4g %6.4g %4g %4g  %-8s  %11.2f  %7.3f  %9.2f  "
               "%s\n",
               i + 1, p->gpu_batch_size, p->num_gpu_batches, best[i].plan.block, p->wg, p->wc,
               p->cg, p->cc, p->hg, p->hc, p->cpu_attention ? "yes" : "no", q->tok_s, q->step_s,
               q->prefill_s, sched_cost_term_name(q->step_limit));
    }
    sched_plan_print(stdout, &best[0].plan);
    if (outp) {
        if (sched_policy_write(outp, &best[0].pol) < 0) {
            free(best);
            return fail();
        }
        printf("[flexh2o] wrote %s: flexh2o generate --policy %s ...\n", outp, outp);
    }
    free(best);
    return 0;
}

int main(int argc, char **argv)
{
    /* a file-size limit makes writes fail with EFBIG (reported, output kept)
     * instead of killing the process */
    signal(SIGXFSZ, SIG_IGN);
    const char *verb = argc > 1 ? argv[1] : "";
    if (strcmp(verb, "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (strcmp(verb, "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(verb, "make-model") == 0)
        return cmd_make_model(argc - 1, argv + 1);
    if (strcmp(verb, "convert") == 0)
        return cmd_convert(argc - 1, argv + 1);
    if (strcmp(verb, "calibrate") == 0)
        return cmd_calibrate(argc - 1, argv + 1);
    if (strcmp(verb, "search") == 0)
        return cmd_search(argc - 1, argv + 1);
    if (strcmp(verb, "--version") == 0) {
        printf("flexh2o %s (CUDA %s)\n", FH_VERSION, FH_HAVE_CUDA ? "built" : "not built");
        return 0;
    }
    fprintf(stderr, "usage: flexh2o <generate|search|convert|calibrate|tokenize|make-model> [--help]\n");
    return strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 ? 0 : 2;
}
