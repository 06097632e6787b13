/* cmd_generate.c: `flexh2o generate`, batch generation over a prompt file.
 *
 *   parse the flags (generate_parse)
 *     -> the policy: --policy FILE with the flags laid over it (generate_policy)
 *     -> the backend (--device)
 *     -> the model source: a weight store, a Hugging Face directory or
 *        random weights (open_model_source), the prompts, the KV check
 *     -> --plan: print the memory plan and stop (generate_plan), or
 *        the scheduler, the output, the weights into the scheduler, gen_run
 *     -> close the traces and the output (generate_close)
 *     -> the error, or the summary (generate_summary); release (generate_free)
 *
 * Output already written is never touched: the output file is created
 * only once the policy fits, and a resumed one is only appended to.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_model.h"
#include "dist.h"
#include "err.h"
#include "gen.h"
#include "job.h"
#include "model.h"
#include "off.h"
#include "scheduler.h"
#include "tok.h"

static const char generate_help[] =
    "usage: flexh2o generate (--model DIR | --dummy NAME) --prompts IN.jsonl --out OUT.jsonl\n"
    "         [--max-new-tokens N] [--batch-size N] [--temperature T --top-p P --seed S]\n"
    "         [--device cpu|cuda] [--cpu-matmul fp32|bf16] [--threads N] [--resume] [--strict]\n"
    "         [--quiet] [--no-summary]\n"
    "         [--chat-template NAME] [--shard I/N]\n"
    "  (mpirun -n N flexh2o generate ...: N ranks, one device each, one output)\n"
    "\n"
    "  --model DIR          Hugging Face directory of an opt, llama, mistral, qwen2 or gpt_neox\n"
    "                       model (config.json, model.safetensors or\n"
    "                       shards, vocab.json + merges.txt or tokenizer.json)\n"
    "  --dummy NAME         random weights of a configs/models shape (opt-6.7b, llama-3.1-8b,\n"
    "                       qwen2.5-7b, mistral-7b, pythia-12b, ...)\n"
    "  --prompts FILE       JSONL requests, native ({\"id\"?, \"prompt\" | \"prompt_ids\",\n"
    "                       \"max_new_tokens\"?, sampling controls}) or OpenAI batch lines\n"
    "                       ({\"custom_id\", \"method\", \"url\", \"body\"}); FILE.zst: zstd\n"
    "  --out FILE           JSONL results in the requests' format, appended and flushed per\n"
    "                       request (FILE.zst: one zstd frame per record)\n"
    "  --chat-template NAME render chat messages with NAME instead of the model's template\n"
    "  --max-new-tokens N   default 32\n"
    "  --batch-size N       sequences generated together (default 8)\n"
    "  --temperature T      0 = greedy (default); --top-p P (default 1), --seed S (default 0)\n"
    "  --device cpu|cuda    default: cuda when a GPU is present, else cpu\n"
    "  --cpu-matmul bf16    CPU backend: bf16 weights (a bf16 checkpoint, or convert --dtype\n"
    "                       bf16) as bf16 matmuls, activations rounded to bf16 (oneDNN: AMX or\n"
    "                       AVX512-BF16), the embedding, head and KV cache kept in bf16 too;\n"
    "                       default fp32: widened, the exact reference numbers\n"
    "  --resume             skip requests whose id (custom_id) is already in --out\n"
    "  --quiet              no progress line; --no-summary: no end-of-run summary\n"
    "  --strict             stop at the first bad prompt line instead of skipping it\n"
    "  --ignore-eos         always generate max_new_tokens (benchmarks)\n"
    "  --warm-up            first run the job's first block to 2 tokens, writing nothing:\n"
    "                       the libraries' one-time costs (kernels loaded on first use,\n"
    "                       GEMM plans) are then not in the rates (benchmarks)\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "  --prefill-rows N     most prompt tokens of a GPU batch in one prefill pass (default:\n"
    "                       the policy file's \"prefill_rows\", else 4096)\n"
    "  --window N           requests read and tokenized at a time (default 8192): memory is\n"
    "                       bounded by N, not by the size of the prompt file\n"
    "  --shard I/N          run shard I (0 .. N-1) of the job split N ways by cost, as\n"
    "                       rank I of mpirun -n N would, into this --out; `flexh2o merge`\n"
    "                       joins the N outputs in input order (for schedulers without MPI)\n"
    "\n"
    "KV cache policy (DESIGN.md \"H2O KV policy\"; B slots per sequence, layer and head):\n"
    "  --kv-policy P        full (default), h2o, window (the B newest tokens) or\n"
    "                       streaming (--sinks first tokens + the newest)\n"
    "  --kv-ratio R         B = ceil(R x (prompt tokens + max new tokens)) per prompt, R in (0, 1]\n"
    "  --kv-budget B        B slots for every prompt (give one of --kv-ratio, --kv-budget)\n"
    "  --sinks N            first tokens never evicted (h2o, streaming; default 0)\n"
    "  --hh-share S         h2o: heavy = floor((B - sinks) x S), recent = B - sinks - heavy\n"
    "                       (default 0.5); recent must be >= 1\n"
    "  --recent R           h2o: recent = R, heavy = B - sinks - R, instead of --hh-share\n"
    "                       (seed 004's h2o_S_R_C = --kv-budget C --sinks S --recent R)\n"
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
    "  --weight-layers      WG and WC are shares of all the layers' bytes: each layer cut at\n"
    "                       a tensor boundary, the two nearest the share mixed over the\n"
    "                       layers (default: FlexGen's rule, every layer cut alike)\n"
    "  --plan               print the memory plan of every tier and exit\n"
    "  --trace FILE         Chrome trace-event JSON of every load, store and compute\n"
    "                       (open in https://ui.perfetto.dev)\n";

/* ------------------------------------------------------------ flags */

typedef struct gen_args {
    cli_common c;             /* the flags shared with search */
    cli_run run;              /* the placement flags shared with eval and score */
    const char *evict_path;   /* --trace-evictions FILE */
    const char *trace_path;   /* --trace FILE (Chrome trace of the scheduler) */
    int resume, strict, seed;
    const char *chat_template_name; /* --chat-template NAME */
    int chat_template;        /* its kind, or -1: the tokenizer's own */
    const char *shard;        /* --shard I/N */
    int shard_i, shard_n;     /* parsed; shard_n 0: none */
    gen_opts go;              /* sampling and the rest gen_run takes */
} gen_args;

#define G(f) offsetof(gen_args, f)
static const cli_opt generate_opts[] = {
    CLI_PLACEMENT_OPTS(gen_args),
    CLI_STR("trace", G(trace_path)),
    CLI_STR("chat-template", G(chat_template_name)),
    CLI_FLOAT("temperature", G(go.temperature), 0, 100),
    CLI_FLOAT("top-p", G(go.top_p), 1e-6, 1),
    CLI_INT("seed", G(seed), 0, 2147483647, 0),
    CLI_SWITCH("resume", G(resume), 1, 0),
    CLI_SWITCH("strict", G(strict), 1, 0),
    CLI_SWITCH("ignore-eos", G(go.ignore_eos), 1, 0),
    CLI_SWITCH("warm-up", G(go.warm_up), 1, 0),
    CLI_STR("trace-evictions", G(evict_path)),
    CLI_SWITCH("stats", G(go.kv_stats), 1, 0),
    CLI_INT("window", G(go.window), 1, 1 << 24, 0),
    CLI_STR("shard", G(shard)),
};
#undef G

/* The flags into *a. @return 0, CLI_HELP or the exit status of the usage
 * error printed. */
static int generate_parse(int argc, char **argv, gen_args *a)
{
    *a = (gen_args){.go = {.temperature = 0.0f, .top_p = 1.0f, .progress = 1,
                           .window = GEN_WINDOW},
                    .chat_template = -1};
    cli_common_init(&a->c);
    int rc = cli_parse("generate", argc, argv, generate_opts,
                       (int)(sizeof generate_opts / sizeof generate_opts[0]), a, &a->c);
    if (rc)
        return rc;
    if (!a->c.model_dir == !a->c.dummy)
        return cli_usage("generate", "give exactly one of --model DIR or --dummy NAME");
    if (!a->c.prompts || !a->c.out)
        return cli_usage("generate", "--prompts and --out are required");
    if (cli_same_file(a->c.prompts, a->c.out) || cli_same_file(a->evict_path, a->c.out) ||
        cli_same_file(a->evict_path, a->c.prompts))
        return cli_usage("generate", "--prompts, --out and --trace-evictions must be "
                         "different files (the output is appended to); choose another --out");
    if (a->chat_template_name &&
        (rc = cli_parse_chat_template("generate", a->chat_template_name, &a->chat_template)))
        return rc;
    if (a->shard) {
        rc = cli_parse_shard("generate", a->shard, &a->shard_i, &a->shard_n);
        if (rc)
            return rc;
    }
    if (dist_active() && a->evict_path)
        return cli_usage("generate", "--trace-evictions runs in one process (one trace file); "
                         "drop it, or run without mpirun (--shard I/N writes one per shard)");
    a->go.seed = (uint64_t)a->seed;
    a->go.progress = !a->run.quiet;
    a->go.max_new = a->c.max_new;
    a->go.kv = a->c.kv;
    if (kv_policy_check(&a->go.kv) < 0)
        return cli_usage_err("generate");
    return 0;
}

/* The policy: the defaults, --policy FILE over them, the flags given over
 * that (whatever their order), checked. @return 0 or the exit status of
 * the usage error printed. */
static int generate_policy(gen_args *a, sched_policy *pol)
{
    int rc = cli_run_policy("generate", &a->run, &a->c, pol);
    a->go.batch_size = pol->gpu_batch_size;
    a->go.prefill_rows = sched_policy_prefill_rows(pol); /* --prefill-rows, or the file's */
    if (rc == 0 && (dist_active() || a->shard_n > 1))
        rc = cli_rank_dir("generate", pol, dist_active() ? dist_get()->rank : a->shard_i);
    return rc;
}

/* ------------------------------------------------------------ the model */

/* ------------------------------------------------------------ the run */

/* What a generate run holds; generate_close and generate_free release it
 * whichever step failed. */
typedef struct gen_job {
    backend be;
    cli_model_src src;
    job_reader *rd;      /* the prompt file, read in windows */
    job_out out;
    sched_trace *strace;
    sched *sc;
    model *m;
    gen_stats st;
    int kv_usage;   /* the failure is a KV budget too small for a prompt: fix the flags */
    /* a job split over ranks or shards */
    gen_part part;
    dist_out *dout;      /* ranks: the records on their way to rank 0 */
    dist_report rep;     /* ranks: every rank's numbers, on rank 0 */
    int ran;             /* ranks: the run began (a failure now ends every rank) */
} gen_job;

/* The job's first pass over the prompt file, window by window: every
 * request checked (gen_check: a native one that cannot run stops the job
 * before anything is written; an OpenAI one becomes its error line), the
 * job split over the ranks (or --shard's N) by cost, and the shape to
 * plan for, the largest of the windows' (this process's requests only).
 * Ranks: every window is agreed on (dist_window), rank 0's "already
 * written" flags reaching all, so a failure anywhere stops every rank at
 * the same window; the split then covers the requests not yet written.
 * Shards: it covers every request (each shard has its own output), and a
 * shard skips what its output has. A store of the backend's type streams
 * its own disk share when it holds the layers as they run (4-bit or not);
 * otherwise weights.bin gets the disk share. a->go.n_todo gets the
 * requests the job (ranks) or this process still runs. @return 0 or
 * -errno. */
static int generate_scan(gen_args *a, const sched_policy *pol, gen_job *j, sched_shape *sh)
{
    const model_config *cfg = &j->src.cfg;
    const job_out *out = j->out.f ? &j->out : NULL;
    const dist_world *w = dist_get();
    int ranks = w->size > 1;
    job_prompts win = {0};
    unsigned char *done = NULL;
    long todo = 0;
    int rc = 0, windows = 0, cap = 0;
    if (ranks || a->shard_n > 1) {
        rc = gen_part_init(&j->part, ranks ? w->size : a->shard_n, ranks ? w->rank : a->shard_i);
        a->go.part = &j->part;
    }
    for (;;) {
        int got = rc < 0 ? rc : job_reader_next(j->rd, a->go.window, &win);
        if (got > cap) {
            unsigned char *nd = realloc(done, (size_t)(unsigned)got);
            if (nd) {
                done = nd;
                cap = got;
            } else {
                err_set(__FILE__, __LINE__, "out of memory");
                got = -ENOMEM;
            }
        }
        for (int i = 0; i < got; i++)
            done[i] = out && job_out_has(out, win.p[i].id);
        got = dist_window(got, done); /* rank 0's flags: it owns the output */
        if (got <= 0) {
            rc = got;
            break;
        }
        rc = gen_check(cfg, j->src.t, &win, &a->go, pol->gpu_batch_size * pol->num_gpu_batches);
        if (rc < 0) {
            j->kv_usage = 1; /* a prompt the flags do not fit: fix them */
            continue;        /* (the next window's agreement stops every rank) */
        }
        for (int i = 0; rc >= 0 && a->go.part && i < win.n; i++)
            rc = gen_part_add(&j->part, ranks && done[i] ? -1 : gen_cost(&win.p[i], &a->go));
        if (rc < 0)
            continue;
        rc = 0;
        sched_shape sw;
        gen_shape(cfg, j->src.t, &win, out, &a->go, pol->gpu_batch_size, windows ? &sw : sh);
        if (windows++)
            gen_shape_merge(sh, &sw);
        for (int i = 0; i < win.n; i++)
            todo += ranks ? j->part.owner[win.p[i].seq] >= 0
                          : gen_runs_here(&a->go, out, &win.p[i]);
    }
    if (rc == 0 && windows == 0) /* no request at all: the smallest plan */
        gen_shape(cfg, j->src.t, &win, out, &a->go, pol->gpu_batch_size, sh);
    job_prompts_free(&win);
    free(done);
    FORWARD_IF(rc);
    a->go.n_todo = todo;
    sh->evicted = a->evict_path != NULL; /* the file is opened later */
    cli_model_tiers(&j->src, &j->be, pol, sh);
    return 0;
}

/* --plan: print the plan; exit 1 when it cannot fit the caps given (not
 * the machine's). @return 0 or -errno. */
static int generate_plan(const sched_model *shape, size_t es, const sched_policy *pol,
                         const sched_shape *sh)
{
    sched_plan pl;
    FORWARD_IF(sched_plan_compute(shape, es, pol, sh, &pl));
    if (dist_get()->rank == 0) /* ranks: rank 0's share stands for them all */
        sched_plan_print(stdout, &pl);
    return sched_plan_check(&pl, pol, pol->gpu_mem, pol->cpu_mem, 0);
}

/* The model's name in an OpenAI output when a request names none: the
 * --model directory's last component, or the --dummy shape. */
static const char *model_name(const gen_args *a)
{
    if (!a->c.model_dir)
        return a->c.dummy;
    const char *d = a->c.model_dir, *end = d + strlen(d);
    while (end > d + 1 && end[-1] == '/')
        end--;
    const char *slash = end;
    while (slash > d && slash[-1] != '/')
        slash--;
    static char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(end - slash), slash);
    return name;
}

/* The model, the prompt file, the output when resuming (rank 0 only:
 * it alone owns the output), the scheduler trace. @return 0 or -errno. */
static int generate_open(gen_args *a, sched_policy *pol, gen_job *j)
{
    const model_config *cfg = &j->src.cfg;
    if (a->trace_path) /* written at the end: a path that cannot be fails now */
        FORWARD_IF(sched_trace_check(a->trace_path));
    FORWARD_IF(cli_model_open(a->c.model_dir, a->c.dummy, &j->src));
    if (j->src.is_store && (j->src.store_dtype & OFF_DTYPE_Q4))
        pol->compress_weight = 1; /* a 4-bit store runs as 4-bit weights */
    int bos = j->src.t ? tok_bos_id(j->src.t) : cfg->bos_id;
    job_load_opts lo = {.t = j->src.t, .bos = bos, .vocab = cfg->vocab_size,
                        .max_len = cfg->max_pos - 1, .strict = a->strict,
                        .chat_template = a->chat_template};
    FORWARD_IF(job_reader_open(a->c.prompts, &lo, &j->rd));
    if (!a->run.plan_only && a->resume && dist_get()->rank == 0 && access(a->c.out, F_OK) == 0)
        FORWARD_IF(job_out_open(a->c.out, a->resume, &j->out));
    if (a->trace_path)
        FORWARD_IF(sched_trace_create(&j->strace));
    return 0;
}

/* Rank 0's writer of the ranks' records (dist_write_fn). */
static int write_record(void *ud, const char *id, const char *record)
{
    return job_out_append(ud, id, record);
}

/* A finished request's record, to rank 0 (gen_opts.put). */
static int put_record(void *ud, const job_prompt *p, const char *record, long generated)
{
    return dist_out_put(ud, p->seq, p->id, record, generated);
}

/* Once the policy fits: the scheduler, the output (rank 0; a new one
 * appears only now), the eviction trace, the weights into the scheduler,
 * and, over ranks, the collector of the records. @return 0 or -errno. */
static int generate_prepare(gen_args *a, const sched_policy *pol, gen_job *j,
                            const sched_model *shape, const sched_shape *sh)
{
    FORWARD_IF(sched_create(&j->be, shape, pol, sh, j->strace, &j->sc));
    if (!j->out.f && dist_get()->rank == 0)
        FORWARD_IF(job_out_open(a->c.out, a->resume, &j->out));
    if (a->evict_path)
        FORWARD_IF(gen_trace_open(a->evict_path, a->resume, &j->out, &a->go.trace));
    FORWARD_IF(cli_model_load(&j->src, &j->be, j->sc, &j->m));
    sched_model bound;
    model_sched_bind(j->m, &bound);
    FORWARD_IF(sched_attach(j->sc, &bound));
    if (dist_active())
        FORWARD_IF(dist_out_start(&j->part, write_record, &j->out, a->go.n_todo, "prompts",
                                  a->go.progress, &j->dout));
    return 0;
}

/* The numbers a rank reports at the end (dist_out_finish): gen_stats'
 * counts and times, then --stats' kept mass per layer. */
enum { ST_PROMPTS, ST_PREFILL_TOK, ST_DECODE_TOK, ST_GENERATED, ST_PREFILL_S, ST_DECODE_S,
       ST_TOTAL_S, ST_KEPT_SAMPLES, ST_KV_SLOTS, ST_KV_SLOTS_FULL, ST_N };

/* Every step from the model source to the last prompt generated (or the
 * plan printed). The output is opened early only to resume it (the plan
 * then skips what is done); a new one appears only once the policy fits.
 * Over ranks each step is agreed on (dist_agree), so a rank failing to
 * set up stops them all before anything runs. @return 0 or -errno. */
static int generate_run(gen_args *a, sched_policy *pol, gen_job *j)
{
    const model_config *cfg = &j->src.cfg;
    FORWARD_IF(dist_agree(generate_open(a, pol, j)));
    sched_shape sh;
    sched_model shape;
    model_sched_shape(cfg, &shape);
    FORWARD_IF(generate_scan(a, pol, j, &sh));
    if (a->run.plan_only)
        return generate_plan(&shape, j->be.ops->elem_size, pol, &sh);
    FORWARD_IF(dist_agree(generate_prepare(a, pol, j, &shape, &sh)));
    j->out.model_name = model_name(a);
    int64_t created = j->out.created; /* OpenAI "created": rank 0's, on every rank */
    FORWARD_IF(dist_bcast_i64(&created));
    j->out.created = created;
    if (!dist_active())
        return gen_run(j->m, j->sc, j->src.t, j->rd, &j->out, &a->go, &j->st);
    j->ran = 1;
    a->go.put = put_record;
    a->go.put_ud = j->dout;
    a->go.progress = 0; /* rank 0's collector tells the job's */
    int rc = gen_run(j->m, j->sc, j->src.t, j->rd, &j->out, &a->go, &j->st);
    const gen_stats *st = &j->st;
    int nv = ST_N + (st->kept_mass ? st->n_layer : 0);
    double v[ST_N + 1024] = {[ST_PROMPTS] = (double)st->prompts,
        [ST_PREFILL_TOK] = (double)st->prefill_tokens, [ST_DECODE_TOK] = (double)st->decode_tokens,
        [ST_GENERATED] = (double)st->generated, [ST_PREFILL_S] = st->prefill_s,
        [ST_DECODE_S] = st->decode_s, [ST_TOTAL_S] = st->total_s,
        [ST_KEPT_SAMPLES] = (double)st->kept_samples, [ST_KV_SLOTS] = st->kv_slots,
        [ST_KV_SLOTS_FULL] = st->kv_slots_full};
    if (nv > ST_N + 1024)
        nv = ST_N; /* (a model of more than 1024 layers: no --stats across ranks) */
    for (int l = 0; l < nv - ST_N; l++)
        v[ST_N + l] = st->kept_mass[l];
    rc = dist_out_finish(j->dout, rc, v, nv, &j->rep);
    j->dout = NULL;
    return rc;
}

/* Write the scheduler trace (what ran, also after a failure) and close the
 * eviction trace and the output (job_out_close: 0 when it was not open).
 * @return rc, or the first failure here when rc is 0. */
static int generate_close(gen_args *a, gen_job *j, int rc)
{
    if (j->strace && a->trace_path) {
        int trc = sched_trace_write(j->strace, a->trace_path);
        if (rc == 0)
            rc = trc;
    }
    if (job_file_wr_close(a->go.trace) != 0 && rc == 0) {
        err_set(__FILE__, __LINE__, "%s: closing failed", a->evict_path);
        rc = -EIO;
    }
    /* also after a failed or skipped job_out_open: it left out zeroed,
     * and closing that does nothing */
    int crc = job_out_close(&j->out);
    if (rc == 0)
        rc = crc;
    return rc;
}

/* Over ranks, on rank 0: the job's totals in *st (every rank's counts
 * summed, --stats' means weighted by their samples, the largest caches)
 * and, unless --no-summary, one line per rank. The job's rates are the
 * ranks' summed (they run at once); its total is every generated token
 * over rank 0's wall time less its --warm-up. */
static void ranks_summary(const gen_args *a, const gen_job *j, gen_stats *st)
{
    const dist_report *r = &j->rep;
    *st = (gen_stats){.n_layer = j->st.n_layer, .kept_mass = j->st.kept_mass};
    double prefill_rate = 0, decode_rate = 0;
    for (int k = 0; k < r->size; k++) {
        const double *v = r->v + (size_t)k * (size_t)r->nv;
        st->prompts += (long)v[ST_PROMPTS];
        st->prefill_tokens += (long)v[ST_PREFILL_TOK];
        st->decode_tokens += (long)v[ST_DECODE_TOK];
        st->generated += (long)v[ST_GENERATED];
        st->kept_samples += (long)v[ST_KEPT_SAMPLES];
        st->kv_slots = (int)v[ST_KV_SLOTS] > st->kv_slots ? (int)v[ST_KV_SLOTS] : st->kv_slots;
        st->kv_slots_full = (int)v[ST_KV_SLOTS_FULL] > st->kv_slots_full
                                ? (int)v[ST_KV_SLOTS_FULL] : st->kv_slots_full;
        prefill_rate += v[ST_PREFILL_S] > 0 ? v[ST_PREFILL_TOK] / v[ST_PREFILL_S] : 0;
        decode_rate += v[ST_DECODE_S] > 0 ? v[ST_DECODE_TOK] / v[ST_DECODE_S] : 0;
    }
    for (int l = 0; st->kept_mass && l < r->nv - ST_N; l++) {
        double sum = 0;
        for (int k = 0; k < r->size; k++) {
            const double *v = r->v + (size_t)k * (size_t)r->nv;
            sum += v[ST_N + l] * v[ST_KEPT_SAMPLES];
        }
        st->kept_mass[l] = st->kept_samples > 0 ? sum / (double)st->kept_samples : 0;
    }
    /* rank 0's wall time but its warm-up (the ranks warm up side by side) */
    st->warm_up_s = j->st.warm_up_s;
    st->total_s = r->wall_s - st->warm_up_s;
    if (a->run.no_summary)
        return;
    fprintf(stderr, "[flexh2o] %ld prompts on %d ranks (%s): prefill %.1f tok/s (%ld tokens), "
            "decode %.1f tok/s (%ld tokens), total %.1f generated tok/s in %.2f s\n",
            st->prompts, r->size, j->be.ops->name, prefill_rate, st->prefill_tokens,
            decode_rate, st->decode_tokens, st->total_s > 0 ? st->generated / st->total_s : 0.0,
            st->total_s);
    for (int k = 0; k < r->size; k++) {
        const double *v = r->v + (size_t)k * (size_t)r->nv;
        fprintf(stderr, "[flexh2o]   rank %d (%s): %ld prompts, prefill %.1f tok/s, decode "
                "%.1f tok/s, %ld tokens generated in %.2f s\n", k, r->host[k],
                (long)v[ST_PROMPTS], v[ST_PREFILL_S] > 0 ? v[ST_PREFILL_TOK] / v[ST_PREFILL_S] : 0,
                v[ST_DECODE_S] > 0 ? v[ST_DECODE_TOK] / v[ST_DECODE_S] : 0, (long)v[ST_GENERATED],
                v[ST_TOTAL_S]);
    }
}

/* Speeds, the scheduler's summary and the KV cache size on stderr (unless
 * --no-summary), --stats on stdout; over ranks the job's totals and a line
 * per rank (rank 0's schedule stands for the others'). @return 0, or 3 when
 * prompt lines were skipped. */
static int generate_summary(const gen_args *a, const gen_job *j)
{
    gen_stats job;
    const gen_stats *st = &j->st;
    if (dist_active()) {
        ranks_summary(a, j, &job);
        st = &job;
    }
    if (a->go.kv_stats)
        gen_stats_print(stdout, st, &a->go);
    if (!a->run.no_summary && !dist_active())
        fprintf(stderr,
                "[flexh2o] %ld prompts on %s: prefill %.1f tok/s (%ld tokens), "
                "decode %.1f tok/s (%ld tokens), total %.1f generated tok/s in %.2f s\n",
                st->prompts, j->be.ops->name,
                st->prefill_s > 0 ? st->prefill_tokens / st->prefill_s : 0.0,
                st->prefill_tokens, st->decode_s > 0 ? st->decode_tokens / st->decode_s : 0.0,
                st->decode_tokens, st->total_s > 0 ? st->generated / st->total_s : 0.0,
                st->total_s);
    if (!a->run.no_summary && st->warm_up_s > 0)
        fprintf(stderr, "[flexh2o] --warm-up: the first block to %d tokens in %.2f s before "
                "the job, not in its rates\n", GEN_WARM_UP_TOKENS, st->warm_up_s);
    if (!a->run.no_summary && j->sc)
        sched_summary_print(j->sc, stderr);
    if (!a->run.no_summary && a->go.kv.kind != KV_POLICY_FULL && st->kv_slots > 0)
        fprintf(stderr, "[flexh2o] --kv-policy %s: KV cache of %d slots per sequence, "
                "layer and head (full: %d)\n", kv_policy_name(a->go.kv.kind), st->kv_slots,
                st->kv_slots_full);
    int n_bad = job_reader_bad(j->rd);
    if (n_bad > 0)
        return cli_error(3, "%d prompt line%s of %s skipped (reported above); fix them and "
                         "rerun with --resume", n_bad, n_bad > 1 ? "s" : "",
                         a->c.prompts);
    return 0;
}

static void generate_free(gen_job *j)
{
    gen_stats_free(&j->st);
    job_reader_close(j->rd);
    tok_destroy(j->src.t);
    sched_destroy(j->sc); /* before the model: its store may be streamed from */
    model_destroy(j->m);
    sched_trace_destroy(j->strace);
    backend_destroy(&j->be);
}

int cli_generate(int argc, char **argv)
{
    gen_args a;
    int rc = generate_parse(argc, argv, &a);
    if (rc == CLI_HELP) {
        fputs(generate_help, stdout);
        return 0;
    }
    sched_policy pol;
    if (rc)
        return rc;
    gen_job j = {0};
    rc = generate_policy(&a, &pol);
    if (rc == 0)
        rc = cli_open_backend("generate", a.c.device, a.run.threads, a.c.bf16_matmul,
                              &j.be);
    if (dist_agree(rc ? -EIO : 0) < 0) { /* a rank that cannot start stops every rank */
        if (rc == 0)
            rc = cli_fail(); /* rank 0 tells another's failure */
        backend_destroy(&j.be);
        return rc;
    }
    rc = generate_run(&a, &pol, &j);
    int out_open = j.out.f != NULL; /* records may be in --out: a resume goes on */
    rc = generate_close(&a, &j, rc);
    int status;
    if (rc < 0 && j.kv_usage)
        status = cli_usage_err("generate");
    else if (rc < 0 && out_open && err_msg()[0] && !strstr(err_msg(), "--resume")) {
        status = cli_error(1, "%s; the records already in %s are intact: --resume goes on "
                           "from them", err_msg(), a.c.out);
        if (getenv("FLEXH2O_DEBUG"))
            fprintf(stderr, "  (at %s)\n", err_where());
    }
    else if (rc < 0)
        status = cli_fail();
    else if (dist_get()->rank == 0 && !a.run.plan_only) /* (--plan ran nothing) */
        status = generate_summary(&a, &j);
    else
        status = 0;
    gen_part_free(&j.part);
    dist_report_free(&j.rep);
    if (j.ran && rc < 0 && dist_active()) /* every record written is intact; end every rank */
        dist_abort(status ? status : 1);
    generate_free(&j);
    return status;
}
