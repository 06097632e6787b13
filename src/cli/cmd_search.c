/* cmd_search.c: `flexh2o search`, the offloading policy with the highest
 * throughput bound that fits the caps (scheduler/search.c).
 *
 *   parse the flags (search_parse) -> the lengths to plan for: the flags or
 *   the job's prompt file (job_lengths) -> the hardware profile: a file or
 *   measured now (search_profile) -> one rank's share of the host
 *   (sched_calib_share) -> sched_search -> the report (search_report) ->
 *   --out: the best policy as a policy file
 *
 * A job of --ranks N data-parallel ranks (DESIGN.md "Scale-out") runs N
 * copies of one policy, each on its own GPU and its share of the prompts,
 * and --ranks-per-node K of them share a host: the search plans one rank
 * with the host's CPU memory, disk space, disk and host-memory bandwidth
 * (and, on the CPU backend, its cores) divided by K; the scheduler never
 * sees ranks. The job's bound is N times the rank's: they share nothing
 * but the results.
 */
#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_model.h"
#include "err.h"
#include "gen.h"
#include "job.h"
#include "model.h"
#include "off.h"
#include "scheduler.h"
#include "tok.h"

static const char search_help[] =
    "usage: flexh2o search (--model DIR | --dummy NAME)\n"
    "         (--prompt-len N --gen-len N | --prompts FILE [--max-new-tokens N])\n"
    "         --gpu-mem SIZE [--cpu-mem SIZE] [--offload-dir DIR] [--hardware FILE]\n"
    "         [--device cpu|cuda] [--out POLICY.json] [--top N] [--max-block N]\n"
    "         [--max-gpu-batches N] [--cpu-attention | --no-cpu-attention]\n"
    "         [--weight-layers | --no-weight-layers]\n"
    "         [--compress-weight] [--compress-cache] [--ranks N [--ranks-per-node K]]\n"
    "         [--kv-policy P --kv-ratio R | --kv-budget B --sinks N --hh-share S | --recent R]\n\n"
    "Finds the offloading policy (block shape, --percent, CPU attention) with the\n"
    "highest throughput bound (DESIGN.md) that fits the caps: a linear program per\n"
    "block shape (GLPK), checked against the exact memory plan. Prints the best\n"
    "candidates and the plan of the first; --out saves it for generate --policy.\n\n"
    "  --prompt-len N, --gen-len N  the job's prompt and generation lengths\n"
    "  --prompts FILE       or take them from the job's prompt file: its longest prompt,\n"
    "                       its longest generation (--max-new-tokens N, default 32, or\n"
    "                       the line's max_new_tokens) and blocks of at most its size\n"
    "  --chat-template NAME the template generate will render chat requests with\n"
    "  --gpu-mem SIZE       GPU-tier cap, e.g. 16G (required)\n"
    "  --cpu-mem SIZE       CPU-tier cap of the host (default: MemAvailable)\n"
    "  --offload-dir DIR    allows the disk tier (its free space is the host's cap)\n"
    "  --hardware FILE      profile from `flexh2o calibrate --out FILE` (default:\n"
    "                       measure now, the disk in --offload-dir included)\n"
    "  --device cpu|cuda    the backend the policy is for (element size; default:\n"
    "                       the profile's, else cuda when a GPU is present)\n"
    "  --cpu-matmul bf16    plan for generate --cpu-matmul bf16 (a profile from calibrate\n"
    "                       --cpu-matmul bf16: bf16 weights stay bf16, read by bf16 matmuls)\n"
    "  --top N              candidates printed (default 5)\n"
    "  --max-block N        largest block tried, e.g. the number of prompts (default 1024)\n"
    "  --max-prefill-seconds S  only blocks whose estimated prefill takes at most S s\n"
    "                       (default without --prompts: 60, as the job's size is unknown and\n"
    "                       its first records come after one block; with --prompts: no limit;\n"
    "                       0: no limit)\n"
    "  --max-gpu-batches N  largest --num-gpu-batches tried (default 16)\n"
    "  --prefill-rows N     as for generate; without it search tries 4096 and its halves\n"
    "                       down to a prompt and writes the pick as \"prefill_rows\"\n"
    "  --cpu-attention | --no-cpu-attention  only policies with / without it (default:\n"
    "                       both are tried)\n"
    "  --weight-layers | --no-weight-layers  only weights cut per layer (generate\n"
    "                       --weight-layers) / only FlexGen's cuts, every layer alike\n"
    "                       (default: both are tried)\n"
    "  --compress-weight, --compress-cache  plan for 4-bit weights / KV (as generate)\n"
    "  --ranks N            the job runs on N data-parallel ranks (mpirun -n N flexh2o\n"
    "                       generate), each with its own GPU (default 1); reports the\n"
    "                       job's bound, N x one rank's; --out is one rank's policy\n"
    "  --ranks-per-node K   ranks sharing one host (1..N, default N): the policy is\n"
    "                       planned for one rank with the host's --cpu-mem (or\n"
    "                       MemAvailable), the --offload-dir disk's free space and\n"
    "                       read/write rates and the host-memory rate of the profile\n"
    "                       (CPU attention) divided by K; on the CPU backend also the\n"
    "                       profile's copy, memory and GEMM rates (the host's cores).\n"
    "                       --gpu-mem is each rank's own. With --prompts a rank gets\n"
    "                       ceil(prompts / N) of them: no larger block is tried\n"
    "  KV policy flags as for generate: the cache holds the budget, not the length\n";

/* ------------------------------------------------------------ flags */

typedef struct search_args {
    cli_common c;            /* the flags shared with generate */
    const char *hw_path;     /* --hardware FILE */
    int top;                 /* --top N */
    sched_search_opts so;    /* lengths, block limits; the caps once parsed: one rank's */
    sched_policy base;       /* what the search does not choose (sched_search) */
    int ranks;               /* --ranks N (0 until parsed: 1) */
    int per_node;            /* --ranks-per-node K (0 until parsed: N) */
    uint64_t host_cpu, host_disk; /* the host's caps before the division by K */
    int max_prefill;         /* --max-prefill-seconds S (-1 until given: the default) */
    const char *chat_template_name; /* --chat-template NAME: as generate will render */
    int chat_template;       /* its kind, or -1: the tokenizer's own */
} search_args;

#define S(f) offsetof(search_args, f)
static const cli_opt search_opts[] = {
    CLI_INT("prompt-len", S(so.prompt_len), 1, 1 << 20, 0),
    CLI_INT("gen-len", S(so.gen_len), 1, 1 << 20, 0),
    CLI_STR("hardware", S(hw_path)),
    CLI_INT("top", S(top), 1, 100, 0),
    CLI_INT("max-block", S(so.max_block), 1, 1 << 16, 0),
    CLI_INT("max-prefill-seconds", S(max_prefill), 0, 1 << 30, 0),
    CLI_INT("max-gpu-batches", S(so.max_gpu_batches), 1, 1024, 0),
    CLI_SWITCH("no-cpu-attention", S(c.pol.cpu_attention), 0, SCHED_POLICY_CPU_ATTENTION),
    CLI_SWITCH("no-weight-layers", S(c.pol.weight_layers), 0, SCHED_POLICY_WEIGHT_LAYERS),
    CLI_INT("ranks", S(ranks), 1, 1 << 16, 0),
    CLI_INT("ranks-per-node", S(per_node), 1, 1 << 16, 0),
    CLI_STR("chat-template", S(chat_template_name)),
};
#undef S

/* The flags, checked, into a->so and a->base; the caps filled in: one
 * rank's share of the host's CPU memory and disk space (the host's in
 * a->host_cpu, a->host_disk). @return 0, CLI_HELP or the exit status of
 * the usage error printed. */
static int search_parse(int argc, char **argv, search_args *a)
{
    *a = (search_args){.top = 5, .max_prefill = -1, .chat_template = -1,
                       .so = {.max_block = 1024, .max_gpu_batches = 16}};
    cli_common_init(&a->c);
    int rc = cli_parse("search", argc, argv, search_opts,
                       (int)(sizeof search_opts / sizeof search_opts[0]), a, &a->c);
    if (rc)
        return rc;
    const cli_common *c = &a->c;
    sched_search_opts *so = &a->so;
    if (!c->model_dir == !c->dummy)
        return cli_usage("search", "give exactly one of --model DIR or --dummy NAME");
    if (c->prompts && (so->prompt_len || so->gen_len))
        return cli_usage("search", "give --prompts FILE or --prompt-len and --gen-len, not both");
    if (!c->prompts && (!so->prompt_len || !so->gen_len))
        return cli_usage("search", "--prompt-len and --gen-len are required (or --prompts FILE)");
    /* a job of unknown size: blocks whose prefill the estimate puts within a
     * minute (the search would otherwise pick the largest block the caps
     * allow, whose first records come late and which a small job cannot fill) */
    so->max_prefill_s = a->max_prefill >= 0 ? a->max_prefill : c->prompts ? 0 : 60;
    if (!c->pol.gpu_mem)
        return cli_usage("search", "--gpu-mem is required (the GPU-tier cap to fit)");
    if (c->device && strcmp(c->device, "cpu") != 0 && strcmp(c->device, "cuda") != 0)
        return cli_usage("search", "--device must be cpu or cuda");
    if (kv_policy_check(&c->kv) < 0)
        return cli_usage_err("search");
    if (a->chat_template_name && !c->prompts)
        return cli_usage("search", "--chat-template renders the chat requests of --prompts: "
                         "give the prompt file");
    if (a->chat_template_name &&
        (rc = cli_parse_chat_template("search", a->chat_template_name, &a->chat_template)))
        return rc;
    a->ranks = a->ranks ? a->ranks : 1;
    a->per_node = a->per_node ? a->per_node : a->ranks;
    if (a->per_node > a->ranks)
        return cli_usage("search", "--ranks-per-node %d is more than the job's --ranks %d; "
                         "give --ranks N with N >= K", a->per_node, a->ranks);
    /* --prefill-rows fixes the prefill pass; else search picks it */
    so->prefill_rows = sched_policy_prefill_rows(&c->pol);
    so->pick_prefill_rows = !(c->given & SCHED_POLICY_PREFILL_ROWS);
    so->scores = kv_policy_needs_scores(&c->kv);
    so->cpu_attention = c->given & SCHED_POLICY_CPU_ATTENTION ? c->pol.cpu_attention : -1;
    so->weight_layers = c->given & SCHED_POLICY_WEIGHT_LAYERS ? c->pol.weight_layers : -1;
    so->gpu_cap = c->pol.gpu_mem;
    a->host_cpu = c->pol.cpu_mem ? c->pol.cpu_mem : off_mem_available();
    so->cpu_cap = a->host_cpu / (uint64_t)a->per_node;
    sched_policy_default(&a->base);
    sched_policy_apply(&a->base, &c->pol, c->given & (SCHED_POLICY_OFFLOAD_DIR |
                                                      SCHED_POLICY_COMPRESS_WEIGHT |
                                                      SCHED_POLICY_COMPRESS_CACHE));
    if (a->base.offload_dir[0] && off_disk_free(a->base.offload_dir, &a->host_disk) < 0)
        return cli_usage_err("search");
    so->disk_cap = a->host_disk / (uint64_t)a->per_node; /* each rank its own subfolder */
    a->base.gpu_mem = so->gpu_cap;
    a->base.cpu_mem = so->cpu_cap;
    return 0;
}

/* ------------------------------------------------------------ the job */

/* The lengths a search plans for, from the job's prompt file: the longest
 * prompt, the longest generation, the largest KV budget, and no block
 * larger than the job. @return 0 or the exit status of the error printed. */
static int job_lengths(const cli_model_src *src, const cli_common *c, int chat_template,
                       sched_search_opts *so, int *n_out)
{
    const model_config *cfg = &src->cfg;
    tok *t = src->t;
    job_prompts ps = {0};
    job_reader *rd = NULL;
    gen_opts go = {.max_new = c->max_new, .prefill_rows = so->prefill_rows, .kv = c->kv};
    int rc = job_reader_open(c->prompts,
                             &(job_load_opts){.t = t, .bos = t ? tok_bos_id(t) : cfg->bos_id,
                                              .vocab = cfg->vocab_size,
                                              .max_len = cfg->max_pos - 1,
                                              .chat_template = chat_template},
                             &rd);
    long n_req = 0;
    so->kv_cap = 0;
    /* window by window: every prompt's length and KV split checked, and the
     * largest budget as generate plans it */
    while (rc == 0 && (rc = job_reader_next(rd, GEN_WINDOW, &ps)) > 0) {
        rc = gen_check(cfg, t, &ps, &go, 0);
        for (int i = 0; rc == 0 && i < ps.n; i++) {
            const job_prompt *p = &ps.p[i];
            if (p->err)
                continue; /* an OpenAI request that cannot run: its error line */
            int n = gen_max_new(p, &go);
            so->prompt_len = p->n_ids > so->prompt_len ? p->n_ids : so->prompt_len;
            so->gen_len = n > so->gen_len ? n : so->gen_len;
            n_req += p->par.n;
        }
        sched_shape sh;
        gen_shape(cfg, t, &ps, NULL, &go, 1, &sh);
        so->kv_cap = sh.cap > so->kv_cap ? sh.cap : so->kv_cap;
    }
    rc = rc < 0 ? rc : 0;
    if (rc == 0 && n_req == 0) {
        err_set(__FILE__, __LINE__, "%s: no valid prompt to plan for", c->prompts);
        rc = -EINVAL;
    }
    if (rc == 0 && so->gen_len < 1) {
        err_set(__FILE__, __LINE__, "%s: no prompt generates a token (--max-new-tokens 0)",
                c->prompts);
        rc = -EINVAL;
    }
    if (rc == 0 && n_req < so->max_block) /* sequences: n per request */
        so->max_block = (int)n_req;
    *n_out = (int)(n_req < INT_MAX ? n_req : INT_MAX);
    job_prompts_free(&ps);
    job_reader_close(rd);
    return rc < 0 ? cli_fail() : 0;
}

/* The hardware profile: --hardware FILE (measured on --device, when given),
 * or measured now, the disk in --offload-dir included. @return 0 or the
 * exit status of the error printed. */
static int search_profile(const search_args *a, sched_calib *hw)
{
    const char *device = a->c.device, *dir = a->base.offload_dir;
    if (a->hw_path) {
        if (sched_calib_load(a->hw_path, hw) < 0)
            return cli_usage_err("search");
        if (device && strcmp(device, hw->device) != 0)
            return cli_usage("search", "--device %s but %s was measured on %s; calibrate that "
                             "device or drop --device", device, a->hw_path, hw->device);
        if (a->c.bf16_matmul != (hw->matmul[0] != 0))
            return cli_usage("search", "%s measured %s matmuls but the run asks for %s; "
                             "calibrate with --cpu-matmul %s", a->hw_path,
                             hw->matmul[0] ? "bf16" : "fp32", a->c.bf16_matmul ? "bf16" : "fp32",
                             a->c.bf16_matmul ? "bf16" : "fp32");
        return 0;
    }
    backend be = {0};
    int rc = cli_open_backend("search", device, 0, a->c.bf16_matmul, &be);
    if (rc)
        return rc;
    fprintf(stderr, "[flexh2o] measuring the hardware (save it with flexh2o calibrate "
                    "--out FILE and pass --hardware FILE next time)\n");
    rc = sched_calibrate(&be, dir[0] ? dir : NULL, 0, hw);
    backend_destroy(&be);
    return rc < 0 ? cli_fail() : 0;
}

/* With more than one rank: the job's bound (N ranks, or as many as have a
 * prompt, times the rank's) and each rank's share of the job and of its
 * host (rank: the profile after sched_calib_share). */
static void ranks_report(const search_args *a, const sched_calib *rank, int n_prompts,
                         const sched_candidate *best)
{
    const sched_search_opts *so = &a->so;
    const double gib = 1073741824.0;
    int busy = a->c.prompts && n_prompts < a->ranks ? n_prompts : a->ranks;
    int k = a->per_node, cpu = strcmp(rank->device, "cpu") == 0;
    double tok_s = best->cost.tok_s;
    printf("[flexh2o] ranks: %d (%d per node): job throughput bound %.2f tok/s = %d x %.2f "
           "tok/s per rank", a->ranks, k, busy * tok_s, busy, tok_s);
    if (busy < a->ranks)
        printf(" (%d of the %d ranks get a prompt)", busy, a->ranks);
    printf("; --out is one rank's policy\n[flexh2o] each rank:");
    if (a->c.prompts)
        printf(" %d of the %d prompts (blocks of at most %d);",
               (n_prompts + a->ranks - 1) / a->ranks, n_prompts, so->max_block);
    if (k > 1)
        printf(" 1/%d of the host's: cpu-mem %.2f GiB (of %.2f)", k, so->cpu_cap / gib,
               a->host_cpu / gib);
    else
        printf(" alone on its host: cpu-mem %.2f GiB", so->cpu_cap / gib);
    if (so->disk_cap && k > 1)
        printf(", disk %.2f GiB (of %.2f)", so->disk_cap / gib, a->host_disk / gib);
    else if (so->disk_cap)
        printf(", disk %.2f GiB", so->disk_cap / gib);
    if (so->disk_cap)
        printf(", disk read %.2f / write %.2f GB/s", rank->disk_read, rank->disk_write);
    printf(", host memory %.2f GB/s", rank->dram);
    if (cpu) /* the CPU backend's "device" is the host: its copies, memory, cores */
        printf(", h2d %.2f, d2h %.2f, device memory %.2f GB/s, GEMM %.3f TFLOP/s", rank->h2d,
               rank->d2h, rank->dev_mem, rank->gemm);
    printf("; its own: gpu-mem %.2f GiB", so->gpu_cap / gib);
    if (!cpu)
        printf(", h2d %.2f, d2h %.2f, device memory %.2f GB/s, GEMM %.3f TFLOP/s", rank->h2d,
               rank->d2h, rank->dev_mem, rank->gemm);
    printf("\n");
}

/* What was searched for, on what, then the candidates and the plan of the
 * best. */
static void search_report(const search_args *a, const model_config *cfg, const sched_calib *hw,
                          size_t es, int n_prompts, const sched_candidate *best, int n)
{
    const sched_search_opts *so = &a->so;
    printf("[flexh2o] search: %s on %s (%zu-byte elements%s%s%s), prompt %d + gen %d, %d KV "
           "slots per sequence (%s); caps gpu %.2f GiB, cpu %.2f GiB, disk %s\n", cfg->name,
           hw->device, es, a->base.compress_weight ? ", 4-bit weights" : "",
           !so->weight_fmt                         ? ""
           : so->weight_direct                     ? ", bf16 weights as bf16 matmuls"
           : so->weight_fmt == KERN_H16_BF16       ? ", bf16 weights widened per block"
                                                   : ", fp16 weights widened per block",
           a->base.compress_cache ? ", 4-bit KV" : "", so->prompt_len, so->gen_len, so->kv_cap,
           kv_policy_name(a->c.kv.kind), so->gpu_cap / 1073741824.0,
           so->cpu_cap / 1073741824.0, so->disk_cap ? a->base.offload_dir : "none");
    if (a->c.prompts)
        printf("[flexh2o] job: %d prompts in %s; the longest prompt and generation above, "
               "blocks of at most %d\n", n_prompts, a->c.prompts, so->max_block);
    if (so->max_prefill_s > 0)
        printf("[flexh2o] blocks whose estimated prefill takes at most %g s "
               "(--max-prefill-seconds; 0: no limit)\n", so->max_prefill_s);
    printf("[flexh2o] hardware (%s): h2d %.2f, d2h %.2f, host memory %.2f, device memory "
           "%.2f GB/s, GEMM %.3f TFLOP/s", a->hw_path ? a->hw_path : "measured now", hw->h2d,
           hw->d2h, hw->dram, hw->dev_mem, hw->gemm);
    if (hw->disk_read > 0)
        printf(", disk read %.2f / write %.2f GB/s", hw->disk_read, hw->disk_write);
    printf("\n");
    sched_search_print(stdout, best, n);
    sched_plan_print(stdout, &best[0].plan);
}

/* ------------------------------------------------------------ the verb */

/* Search with the model's shape on one rank's share of the host (rank; hw
 * is the host's profile, as measured), report, and save the best with
 * --out. @return the exit status. */
static int search_run(search_args *a, const cli_model_src *src, const sched_calib *hw,
                      const sched_calib *rank, int n_prompts)
{
    const model_config *cfg = &src->cfg;
    int cpu = strcmp(hw->device, "cpu") == 0;
    size_t es = cpu ? 4 : 2;
    /* the weights as generate keeps them on this device: an fp16 store or a
     * 16-bit checkpoint stays 16-bit on the CPU backend's tiers */
    sched_shape sh = {0};
    cli_model_tiers_for(src, es, cpu, &a->base, &sh);
    sh.weight_direct = cli_model_h16(src) == KERN_H16_BF16 && a->c.bf16_matmul;
    a->so.weight_fmt = sh.weight_fmt;
    a->so.weight_direct = sh.weight_direct;
    a->so.host_visible = cpu;
    a->so.weights_on_disk_already = sh.weights_on_disk_already;
    sched_candidate *best = calloc((size_t)a->top, sizeof *best);
    if (!best)
        return cli_error(1, "out of memory");
    int n = 0, status = 0;
    sched_model shape;
    model_sched_shape(cfg, &shape);
    if (sched_search(&shape, es, &a->base, &a->so, rank, best, a->top, &n) < 0) {
        status = cli_fail();
        if (a->per_node > 1)
            fprintf(stderr, "flexh2o: those are one rank's caps: --cpu-mem and the disk "
                    "divided by --ranks-per-node %d\n", a->per_node);
    } else {
        search_report(a, cfg, hw, es, n_prompts, best, n);
        if (a->ranks > 1)
            ranks_report(a, rank, n_prompts, best);
        if (a->c.out && sched_policy_write(a->c.out, &best[0].pol) < 0)
            status = cli_fail();
        else if (a->c.out)
            printf("[flexh2o] wrote %s: flexh2o generate --policy %s ...\n", a->c.out, a->c.out);
    }
    free(best);
    return status;
}

/* The job's lengths (--prompts) or the given ones, the hardware, then the
 * search. @return the exit status. */
static int search_model(search_args *a, const cli_model_src *src)
{
    const cli_common *c = &a->c;
    int rc, n_prompts = 0;
    if (c->prompts && (rc = job_lengths(src, c, a->chat_template, &a->so, &n_prompts)))
        return rc;
    /* the job's prompts split over the ranks: a rank cannot fill a block
     * larger than its share */
    int per_rank = (int)(((long)n_prompts + a->ranks - 1) / a->ranks);
    if (c->prompts && per_rank < a->so.max_block)
        a->so.max_block = per_rank;
    if (!c->prompts) {
        kv_split sp;
        if (kv_policy_split(&c->kv, a->so.prompt_len, a->so.gen_len, 0, &sp) < 0)
            return cli_usage_err("search");
        a->so.kv_cap = sp.budget;
    }
    sched_calib hw, rank;
    if ((rc = search_profile(a, &hw)))
        return rc;
    rank = hw;
    if (sched_calib_share(&rank, a->per_node) < 0)
        return cli_fail();
    return search_run(a, src, &hw, &rank, n_prompts);
}

int cli_search(int argc, char **argv)
{
    search_args a;
    int rc = search_parse(argc, argv, &a);
    if (rc == CLI_HELP) {
        fputs(search_help, stdout);
        return 0;
    }
    if (rc == 0 && a.c.out) /* before measuring and searching, not after */
        rc = cli_out_check("search", "--out", a.c.out);
    if (rc)
        return rc;
    const cli_common *c = &a.c;
    cli_model_src src = {0};
    if (cli_model_open(c->model_dir, c->dummy, &src) < 0)
        rc = cli_fail();
    else
        rc = search_model(&a, &src);
    tok_destroy(src.t);
    return rc;
}
