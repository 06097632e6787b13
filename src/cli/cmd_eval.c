/* cmd_eval.c: `flexh2o eval` (streaming perplexity of a text, DESIGN.md
 * "Quality") and `flexh2o score` (loglikelihood requests, the kind
 * lm-evaluation-harness sends), both teacher-forced through the block
 * schedule with the KV policy evicting as in generation (src/gen/eval.h).
 *
 *   parse the flags -> the policy -> the backend -> the model's config and
 *   tokenizer -> the streams (eval: windows of the text; score: context +
 *   continuation per request) -> --out opened (--resume: what it holds
 *   leaves the run; eval's windows keep their numbers from it) -> their KV
 *   splits -> the plan (--plan: print it and stop) -> the scheduler, the
 *   weights -> eval_run, each finished block's records appended -> the
 *   report
 *
 * Over MPI ranks (mpirun -n N) the streams are split by cost (gen_part:
 * their tokens); each rank runs its share through its own schedule and
 * hands each stream's result to rank 0 (dist_out), which writes score's
 * records in input order and reports eval's sums over every window, in
 * window order: the numbers a single process prints.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_model.h"
#include "dist.h"
#include "err.h"
#include "eval.h"
#include "job.h"
#include "job_file.h"
#include "off.h"

static const char eval_help[] =
    "usage: flexh2o eval --model DIR --text FILE [--context N] [--compare-full]\n"
    "         [--out WINDOWS.jsonl [--resume] [--shard I/N]]\n"
    "         [KV policy flags] [placement flags] [--device cpu|cuda] [--quiet] [--no-summary]\n\n"
    "Streaming perplexity (DESIGN.md \"Quality\"): the text, tokenized as `tokenize` does\n"
    "(BOS first where the model adds one), is cut into consecutive windows of --context\n"
    "tokens (default: max_position_embeddings, at most 1024; the last may be shorter); each\n"
    "window starts from an empty cache and is fed token by token with the KV policy\n"
    "evicting as in generation. ppl = exp(NLL of every token after a window's first /\n"
    "tokens scored). Prints one JSON line: policy, budget, sinks, heavy, recent (of a\n"
    "full window), context, windows, tokens, nll (per token), ppl, tok_s, kv_bytes (the\n"
    "policy's KV cache in the plan, every tier, for the block of --batch-size windows);\n"
    "with --compare-full also agreement (top-1 of the\n"
    "policy equal to the full cache's) and kl (mean KL(full || policy)), the full cache\n"
    "running beside the policy in the same batch.\n\n"
    "  --text FILE          UTF-8 text\n"
    "  --context N          tokens per window\n"
    "  --max-windows N      score the first N windows only\n"
    "  --compare-full       agreement and KL against the full cache\n"
    "  --out FILE           each finished window's numbers, a JSON line each (FILE.zst:\n"
    "                       zstd), so that a long run can be resumed\n"
    "  --shard I/N          run share I of N of the windows (by tokens, as ranks split\n"
    "                       them), their records into --out; `cat` the shards' files and\n"
    "                       run the eval with --out JOINED --resume: the line of one run\n"
    "  --resume             go on after the windows already in --out (a killed run's torn\n"
    "                       last record is cut off); the line printed is the one an\n"
    "                       uninterrupted run prints\n"
    "KV policy and placement flags as for generate (--kv-policy, --kv-ratio, --kv-budget,\n"
    "--sinks, --hh-share, --recent, --batch-size, --percent, --cpu-attention, ...), and\n"
    "--cpu-matmul bf16.\n"
    "Under mpirun -n N the windows are split over N ranks (one device each).\n";

static const char score_help[] =
    "usage: flexh2o score --model DIR --prompts REQUESTS.jsonl --out RESULTS.jsonl\n"
    "         [--resume] [--shard I/N]\n"
    "         [KV policy flags] [placement flags] [--device cpu|cuda] [--quiet] [--no-summary]\n\n"
    "Loglikelihood requests, one JSON object per line: {\"id\"?, \"context\",\n"
    "\"continuation\"} (text) or {\"id\"?, \"context_ids\", \"continuation_ids\"}; writes per\n"
    "request {\"id\", \"logprob\", \"is_greedy\", \"n_tokens\"}: the sum of the natural-log\n"
    "probabilities of the continuation's tokens after the context, and whether each was\n"
    "the argmax. \"id\" is a string or a number, each request's its own ({\"line\": N}\n"
    "where a line has none); a bad request stops the run before anything is scored.\n"
    "The context is tokenized with BOS where the model adds one; a context\n"
    "ending in whitespace gives it to the continuation (as lm-evaluation-harness does).\n"
    "With the full cache the context is one prefill; with an evicting --kv-policy it\n"
    "runs through the cache token by token, as eval does. Records are written per\n"
    "finished block, in input order. Files named *.zst are zstd (one frame per result).\n"
    "  --resume   skip the requests whose id is in --out already (a killed run's torn\n"
    "             last record is cut off) and append the rest\n"
    "  --shard I/N  score share I of N of the requests (by tokens, as ranks split them);\n"
    "             flexh2o merge --prompts REQUESTS --out ALL SHARDS... joins the shards'\n"
    "             files into the one run's\n"
    "Under mpirun -n N the requests are split over N ranks; rank 0 writes --out.\n";

typedef struct eval_args {
    cli_common c;
    cli_run run;
    const char *text;
    int context, max_windows, compare_full, resume;
    const char *shard;
} eval_args;

#define E(f) offsetof(eval_args, f)
static const cli_opt eval_opts_tab[] = {
    CLI_PLACEMENT_OPTS(eval_args),
    CLI_STR("text", E(text)),
    CLI_INT("context", E(context), 2, 1 << 24, 0),
    CLI_INT("max-windows", E(max_windows), 1, 1 << 30, 0),
    CLI_SWITCH("compare-full", E(compare_full), 1, 0),
    CLI_SWITCH("resume", E(resume), 1, 0),
    CLI_STR("shard", E(shard)),
};
#undef E

/* What an eval or score run holds; released by run_free whichever step
 * failed. */
typedef struct eval_job {
    backend be;
    cli_model_src src;
    sched *sc;
    model *m;
    int32_t *ids;        /* eval: the text's tokens; score: every request's */
    eval_stream *s;
    int n;
    char **req_ids;      /* score: each request's id, as JSON text */
    job_out out;         /* score's results (zstd when named *.zst), rank 0's */
    long written;
    long skipped;        /* --resume: requests (windows) already in --out */
    unsigned char *done; /* eval --resume: (n) 1 where --out holds the window's record */
    int keep;            /* eval --out: each finished window's record into it */
    int compare_full;    /* eval: the flag, for the records' fingerprints */
    int shard_i, shard_n; /* --shard I/N (N 0: none): this process runs its share */
    uint64_t kv_bytes;
    eval_stats st;
    /* over ranks: this rank's streams, copies of s[idx[i]] */
    gen_part part;
    eval_stream *mine;
    int *idx;
    int n_mine;
    dist_out *dout;
    int ran;             /* the run began: a failure now ends every rank */
    int score;           /* score (records), not eval (sums) */
} eval_job;

static void run_free(eval_job *j)
{
    sched_destroy(j->sc);
    model_destroy(j->m);
    tok_destroy(j->src.t);
    backend_destroy(&j->be);
    for (int i = 0; j->req_ids && i < j->n; i++)
        free(j->req_ids[i]);
    free(j->req_ids);
    free(j->ids);
    free(j->s);
    free(j->mine);
    free(j->idx);
    free(j->done);
    gen_part_free(&j->part);
}

/* ------------------------------------------------------ eval --out */

static int window_append(eval_job *j, int k)
{
    char *rec = eval_window_record(&j->s[k], k, j->compare_full), key[16];
    RETURN_IF(!rec, -ENOMEM, "out of memory");
    snprintf(key, sizeof key, "%d", k + 1);
    int rc = job_out_append(&j->out, key, rec);
    free(rec);
    return rc;
}

/* eval --resume (rank 0): the windows whose records --out holds
 * (eval_windows_read). @return 0 or -errno. */
static int windows_read(eval_job *j, const char *path, int compare_full)
{
    char *buf;
    size_t len;
    FORWARD_IF(job_file_read_all(path, &buf, &len));
    int rc = eval_windows_read(path, buf, len, j->s, j->n, compare_full, j->done, &j->skipped);
    free(buf);
    return rc;
}

/* eval --out: open it (rank 0), read what a resumed one holds, and give
 * every rank the flags of the windows already there. @return 0 or -errno. */
static int windows_open(eval_job *j, const char *path, int resume, const eval_opts *eo)
{
    j->keep = 1;
    j->compare_full = eo->compare_full;
    j->done = calloc((size_t)j->n, 1);
    int rc = j->done ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory");
    /* the splits (the fingerprints' policy part), as run_streams checks them */
    if (rc == 0)
        rc = eval_check(&j->src.cfg, j->s, j->n, eo);
    if (rc == 0 && dist_get()->rank == 0) {
        rc = job_out_open(path, resume, &j->out);
        if (rc == 0 && resume)
            rc = windows_read(j, path, eo->compare_full);
    }
    rc = dist_agree(rc);
    if (rc == 0 && resume)
        rc = dist_agree(dist_window(j->n, j->done) < 0 ? -EIO : 0);
    return rc;
}

/* ------------------------------------------------------------ ranks */

/* A stream's result as a rank sends it to rank 0 (exact: %.17g). */
static char *result_text(const eval_stream *s, const char *id)
{
    char *t = NULL;
    if (id) /* score: the output record itself */
        return asprintf(&t, "{\"id\": %s, \"logprob\": %.9g, \"is_greedy\": %s, "
                        "\"n_tokens\": %d}", id, s->logprob,
                        s->n_greedy == s->n_targets ? "true" : "false", s->n_targets) < 0
                   ? NULL : t;
    return asprintf(&t, "%.17g %d %d %.17g %d", s->logprob, s->n_targets, s->n_greedy, s->kl,
                    s->n_agree) < 0 ? NULL : t;
}

/* Rank 0's writer (dist_write_fn): score's record into --out; eval's
 * numbers back into the stream the key (its index) names. */
static int write_result(void *ud, const char *id, const char *record)
{
    eval_job *j = ud;
    if (j->score) {
        FORWARD_IF(job_out_append(&j->out, id, record));
        j->written++;
        return 0;
    }
    int k = atoi(id);
    eval_stream *s = &j->s[k];
    RETURN_IF(sscanf(record, "%lf %d %d %lf %d", &s->logprob, &s->n_targets, &s->n_greedy,
                     &s->kl, &s->n_agree) != 5, -EPROTO, "internal: a bad window result");
    return j->keep ? window_append(j, k) : 0;
}

/* eval_opts.on_block over ranks: each finished stream of this rank's
 * share to rank 0. */
static int put_results(void *ud, const eval_stream *s, int first, int n)
{
    eval_job *j = ud;
    for (int i = first; i < first + n; i++) {
        int k = j->idx[i];
        char key[32];
        snprintf(key, sizeof key, "%d", k);
        char *t = result_text(&s[i], j->score ? j->req_ids[k] : NULL);
        RETURN_IF(!t, -ENOMEM, "out of memory");
        int rc = dist_out_put(j->dout, k, j->score ? j->req_ids[k] : key, t, s[i].n_targets);
        free(t);
        FORWARD_IF(rc);
    }
    return 0;
}

/* eval --out, one process (eval_opts.on_block): each finished window's
 * numbers back into j->s and its record into --out. */
static int keep_results(void *ud, const eval_stream *s, int first, int n)
{
    eval_job *j = ud;
    for (int i = first; i < first + n; i++) {
        int k = j->idx[i];
        j->s[k] = s[i];
        FORWARD_IF(window_append(j, k));
    }
    return 0;
}

/* The cost of stream k for the split over processes: the tokens it
 * feeds (twice with --compare-full); over ranks none when --out holds it
 * already (rank 0's file is the whole job's). A --shard's file holds only
 * its share: the split must not depend on it, so that a resumed shard
 * runs the share it began (what --out holds is left out after). */
static int64_t stream_cost(const eval_job *j, int k, const eval_opts *eo)
{
    return j->done && j->done[k] && j->shard_n <= 1
               ? -1 : (int64_t)j->s[k].n * (eo->compare_full ? 2 : 1);
}

/* Alone with windows already done (eval --resume), records to keep or a
 * --shard: the streams this process runs into j->mine, j->idx their
 * indices. */
static int left_streams(eval_job *j, const eval_opts *eo)
{
    if (j->shard_n > 1) {
        FORWARD_IF(gen_part_init(&j->part, j->shard_n, j->shard_i));
        for (int k = 0; k < j->n; k++)
            FORWARD_IF(gen_part_add(&j->part, stream_cost(j, k, eo)));
    }
    j->mine = calloc((size_t)(unsigned)j->n, sizeof *j->mine);
    j->idx = calloc((size_t)(unsigned)j->n, sizeof *j->idx);
    RETURN_IF(!j->mine || !j->idx, -ENOMEM, "out of memory");
    for (int k = 0; k < j->n; k++)
        if ((!j->done || !j->done[k]) && (j->shard_n <= 1 || gen_part_mine(&j->part, k))) {
            j->idx[j->n_mine] = k;
            j->mine[j->n_mine++] = j->s[k];
        }
    return 0;
}

/* Over ranks: this rank's share of the streams (by cost: tokens fed,
 * twice with --compare-full; none for a window already in --out) into
 * j->mine. @return 0 or -errno. */
static int split_streams(eval_job *j, const eval_opts *eo)
{
    const dist_world *w = dist_get();
    FORWARD_IF(gen_part_init(&j->part, w->size, w->rank));
    for (int k = 0; k < j->n; k++)
        FORWARD_IF(gen_part_add(&j->part, stream_cost(j, k, eo)));
    j->mine = calloc((size_t)j->n, sizeof *j->mine);
    j->idx = calloc((size_t)j->n, sizeof *j->idx);
    RETURN_IF(!j->mine || !j->idx, -ENOMEM, "out of memory");
    for (int k = 0; k < j->n; k++)
        if (gen_part_mine(&j->part, k)) {
            j->idx[j->n_mine] = k;
            j->mine[j->n_mine++] = j->s[k];
        }
    return 0;
}

static int prepare_streams(eval_job *j, const cli_run *run, const sched_policy *pol,
                           eval_opts *eo);

/* From the streams on: plan (print it with --plan), the scheduler, the
 * weights, the run; over ranks, this rank's share, its setup agreed on by
 * every rank, its results to rank 0. @return 0 or -errno. */
static int run_streams(eval_job *j, const cli_run *run, const sched_policy *pol,
                       eval_opts *eo)
{
    int rc = eval_check(&j->src.cfg, j->s, j->n, eo);
    if (rc == 0 && dist_active()) {
        rc = split_streams(j, eo);
    } else if (rc == 0 && (j->keep || j->shard_n > 1 || j->done)) {
        rc = left_streams(j, eo);
        if (!j->score) /* (score's on_block maps through j->idx itself) */
            eo->on_block = keep_results;
        eo->ud = j;
    } else if (rc == 0) {
        j->mine = j->s; /* alone: every stream, in place */
        j->n_mine = j->n;
    }
    if (rc == 0)
        rc = prepare_streams(j, run, pol, eo);
    rc = dist_agree(rc);
    if (rc < 0 || run->plan_only || !dist_active()) {
        if (rc == 0 && !run->plan_only && j->n_mine > 0)
            rc = eval_run(j->m, j->sc, j->mine, j->n_mine, eo, &j->st);
        if (j->mine == j->s)
            j->mine = NULL;
        return rc;
    }
    FORWARD_IF(dist_out_start(&j->part, write_result, j, j->n - (int)j->skipped,
                              j->score ? "requests" : "windows", eo->progress, &j->dout));
    j->ran = 1;
    eo->on_block = put_results;
    eo->ud = j;
    eo->progress = 0; /* rank 0's collector tells the job's */
    rc = j->n_mine ? eval_run(j->m, j->sc, j->mine, j->n_mine, eo, &j->st) : 0;
    double v[3] = {(double)j->st.fed, (double)j->st.targets, j->st.seconds};
    dist_report rep;
    rc = dist_out_finish(j->dout, rc, v, 3, &rep);
    j->dout = NULL;
    if (rc == 0) { /* the job's: every rank's tokens over rank 0's wall time */
        j->st = (eval_stats){.seconds = rep.wall_s};
        for (int r = 0; r < rep.size; r++) {
            j->st.fed += (long)rep.v[3 * r];
            j->st.targets += (long)rep.v[3 * r + 1];
        }
    }
    dist_report_free(&rep);
    return rc;
}

/* This process's streams: plan (print it with --plan), the scheduler,
 * the weights. @return 0 or -errno. */
static int prepare_streams(eval_job *j, const cli_run *run, const sched_policy *pol,
                           eval_opts *eo)
{
    const model_config *cfg = &j->src.cfg;
    sched_shape sh;
    sched_model shape;
    model_sched_shape(cfg, &shape);
    eval_shape(cfg, j->mine, j->n_mine, eo, pol->gpu_batch_size, &sh);
    cli_model_tiers(&j->src, &j->be, pol, &sh);
    sched_plan pl;
    FORWARD_IF(sched_plan_compute(&shape, j->be.ops->elem_size, pol, &sh, &pl));
    /* the policy's own KV cache (--compare-full's full copies not counted),
     * planned over every window, so that neither the ranks nor a resume
     * (fewer windows left) change it */
    eval_opts alone = *eo;
    alone.compare_full = 0;
    sched_shape sh_alone;
    sched_plan pl_alone;
    eval_shape(cfg, j->s, j->n, &alone, pol->gpu_batch_size, &sh_alone);
    cli_model_tiers(&j->src, &j->be, pol, &sh_alone);
    FORWARD_IF(sched_plan_compute(&shape, j->be.ops->elem_size, pol, &sh_alone, &pl_alone));
    for (int t = 0; t < SCHED_TIERS; t++)
        j->kv_bytes += pl_alone.bytes[t][SCHED_KV];
    if (run->plan_only) {
        if (dist_get()->rank == 0) /* ranks: rank 0's share stands for them all */
            sched_plan_print(stdout, &pl);
        return sched_plan_check(&pl, pol, pol->gpu_mem, pol->cpu_mem, 0);
    }
    if (j->n_mine == 0)
        return 0; /* every window is in --out already (or another rank's) */
    FORWARD_IF(sched_create(&j->be, &shape, pol, &sh, NULL, &j->sc));
    FORWARD_IF(cli_model_load(&j->src, &j->be, j->sc, &j->m));
    sched_model bound;
    model_sched_bind(j->m, &bound);
    return sched_attach(j->sc, &bound);
}

/* ------------------------------------------------------------ eval */

/* The text's tokens (BOS first where the tokenizer adds one) cut into
 * windows of ctx tokens. */
static int eval_windows(eval_job *j, const char *path, int ctx, int max_windows)
{
    char *text;
    size_t len;
    FORWARD_IF(off_read_file(path, &text, &len));
    int32_t *ids = NULL;
    int n = tok_encode(j->src.t, text, len, &ids);
    free(text);
    if (n < 0 && n != -ENOMEM) {
        err_prefix("%s: cannot tokenize it", path);
        return -EINVAL;
    }
    FORWARD_IF(n);
    int bos = tok_bos_id(j->src.t);
    j->ids = malloc(sizeof(int32_t) * ((size_t)n + 1));
    RETURN_IF(!j->ids, -ENOMEM, "out of memory for %d tokens", n);
    int total = 0;
    if (bos >= 0)
        j->ids[total++] = bos;
    memcpy(j->ids + total, ids, sizeof(int32_t) * (size_t)n);
    total += n;
    free(ids);
    int nw = (total + ctx - 1) / ctx;
    if (nw > 0 && total - (nw - 1) * ctx < 2)
        nw--; /* a last window of one token scores nothing */
    if (max_windows > 0 && nw > max_windows)
        nw = max_windows;
    RETURN_IF(nw == 0, -EINVAL, "%s: %d tokens, too few to score; give a longer text", path,
              total);
    j->s = calloc((size_t)nw, sizeof *j->s);
    RETURN_IF(!j->s, -ENOMEM, "out of memory");
    for (int w = 0; w < nw; w++) {
        int at = w * ctx, wn = total - at < ctx ? total - at : ctx;
        j->s[w] = (eval_stream){.ids = j->ids + at, .n = wn, .prefill = 1, .first_target = 1};
    }
    j->n = nw;
    return 0;
}

static void eval_report(const eval_args *a, const eval_job *j, const eval_opts *eo)
{
    double lp = 0, kl = 0;
    long tokens = 0, agree = 0;
    for (int i = 0; i < j->n; i++) {
        lp += j->s[i].logprob;
        kl += j->s[i].kl;
        tokens += j->s[i].n_targets;
        agree += j->s[i].n_agree;
    }
    const kv_split *sp = &j->s[0].split;
    double nll = tokens ? -lp / tokens : 0;
    printf("{\"policy\": \"%s\", \"budget\": %d, \"sinks\": %d, \"heavy\": %d, \"recent\": %d, "
           "\"context\": %d, \"windows\": %d, \"tokens\": %ld, \"nll\": %.9g, \"ppl\": %.9g, "
           "\"tok_s\": %.6g, \"kv_bytes\": %llu",
           kv_policy_name(eo->kv.kind), sp->budget, sp->sinks, sp->heavy, sp->recent,
           a->context, j->n, tokens, nll, exp(nll),
           j->st.seconds > 0 ? j->st.fed / j->st.seconds : 0.0,
           (unsigned long long)j->kv_bytes);
    if (eo->compare_full)
        printf(", \"agreement\": %.9g, \"kl\": %.9g", tokens ? (double)agree / tokens : 0,
               tokens ? kl / tokens : 0);
    printf("}\n");
    fflush(stdout);
}

/* The exit status of a failed eval or score (rc < 0): a bad value as a
 * usage error; when --out holds records (kept), the message says they are
 * intact and --resume goes on from them. */
static int failure_status(const char *verb, int rc, int kept, const char *what, const char *out)
{
    if (rc == -EINVAL)
        return cli_usage_err(verb);
    if (kept && err_msg()[0] && !strstr(err_msg(), "--resume"))
        return cli_error(1, "%s; the %s already in %s are intact: --resume goes on from them",
                         err_msg(), what, out);
    return cli_fail();
}

/* Parse, check and open what eval and score share: the flags, the policy,
 * the backend, the model's config and tokenizer. @return 0, or the exit
 * status to return (CLI_HELP: the help is printed, return 0). */
static int open_common(const char *verb, const char *help, int argc, char **argv,
                       const cli_opt *tab, int n_tab, void *a, cli_common *c, cli_run *run,
                       sched_policy *pol, eval_job *j)
{
    cli_common_init(c);
    int rc = cli_parse(verb, argc, argv, tab, n_tab, a, c);
    if (rc == CLI_HELP)
        fputs(help, stdout);
    if (rc)
        return rc;
    if (!c->model_dir)
        return cli_usage(verb, "--model DIR is required");
    if (kv_policy_check(&c->kv) < 0)
        return cli_usage_err(verb);
    if ((rc = cli_run_policy(verb, run, c, pol)))
        return rc;
    if (dist_active())
        rc = cli_rank_dir(verb, pol, dist_get()->rank);
    if (rc == 0)
        rc = cli_open_backend(verb, c->device, run->threads, c->bf16_matmul, &j->be);
    if (rc == 0 && cli_model_open(c->model_dir, NULL, &j->src) < 0)
        rc = cli_fail();
    if (dist_agree(rc ? -EIO : 0) < 0) /* a rank that cannot start stops every rank */
        return rc ? rc : cli_fail();
    if (j->src.is_store && (j->src.store_dtype & OFF_DTYPE_Q4))
        pol->compress_weight = 1;
    return 0;
}

int cli_eval(int argc, char **argv)
{
    eval_args a = {0};
    sched_policy pol;
    eval_job j = {0};
    int rc = open_common("eval", eval_help, argc, argv, eval_opts_tab,
                         (int)(sizeof eval_opts_tab / sizeof *eval_opts_tab), &a, &a.c, &a.run,
                         &pol, &j);
    if (rc == 0 && !a.text)
        rc = cli_usage("eval", "--text FILE is required");
    if (rc == 0 && !j.src.t)
        rc = cli_error(1, "%s: no tokenizer (vocab.json + merges.txt or tokenizer.json); eval "
                       "needs one", a.c.model_dir);
    if (rc == 0 && (a.c.prompts || a.c.dummy))
        rc = cli_usage("eval", "eval takes --model and --text (no --prompts, --dummy)");
    if (rc == 0 && a.resume && !a.c.out)
        rc = cli_usage("eval", "--resume goes on from the window records of --out: give it");
    if (rc == 0 && a.shard && !a.c.out)
        rc = cli_usage("eval", "--shard I/N keeps its windows' records in --out (joined and "
                       "read back with --resume for the line): give it");
    if (rc == 0 && a.shard)
        rc = cli_parse_shard("eval", a.shard, &j.shard_i, &j.shard_n);
    if (rc == 0 && a.c.out && cli_same_file(a.text, a.c.out))
        rc = cli_usage("eval", "--text and --out must be different files (the records are "
                       "appended to); choose another --out");
    if (rc == 0 && a.compare_full && pol.gpu_batch_size * pol.num_gpu_batches < 2)
        rc = cli_usage("eval", "--compare-full runs each window twice side by side: use a "
                       "--batch-size of at least 2");
    if (rc) {
        run_free(&j);
        return rc == CLI_HELP ? 0 : rc;
    }
    if (a.context == 0)
        a.context = j.src.cfg.max_pos < 1024 ? j.src.cfg.max_pos : 1024;
    eval_opts eo = {.kv = a.c.kv, .compare_full = a.compare_full,
                    .prefill_rows = sched_policy_prefill_rows(&pol), .progress = !a.run.quiet};
    rc = dist_agree(eval_windows(&j, a.text, a.context, a.max_windows));
    if (rc == 0 && a.c.out && !a.run.plan_only)
        rc = windows_open(&j, a.c.out, a.resume, &eo);
    if (rc == -EEXIST) {
        run_free(&j);
        return cli_fail();
    }
    if (rc == 0)
        rc = run_streams(&j, &a.run, &pol, &eo);
    int out_open = j.out.f != NULL;
    if (job_out_close(&j.out) != 0 && rc == 0) {
        err_set(__FILE__, __LINE__, "%s: closing failed", a.c.out);
        rc = -EIO;
    }
    int status = 0;
    if (rc < 0)
        status = failure_status("eval", rc, out_open, "windows", a.c.out);
    else if (!a.run.plan_only && j.shard_n > 1)
        fprintf(stderr, "[flexh2o] eval: shard %d/%d: %d of the %d windows into %s; join the "
                "shards' files (cat) and run this eval with --out JOINED --resume for the line\n",
                j.shard_i, j.shard_n, j.n_mine, j.n, a.c.out);
    else if (!a.run.plan_only && dist_get()->rank == 0)
        eval_report(&a, &j, &eo);
    if (rc == 0 && j.skipped && !a.run.no_summary && dist_get()->rank == 0)
        fprintf(stderr, "[flexh2o] %ld of %d windows read back from %s\n", j.skipped, j.n,
                a.c.out);
    if (rc == 0 && !a.run.no_summary && j.sc && dist_get()->rank == 0)
        sched_summary_print(j.sc, stderr);
    int ran = j.ran;
    run_free(&j);
    if (ran && rc < 0 && dist_active()) /* end every rank */
        dist_abort(status ? status : 1);
    return status;
}

/* ------------------------------------------------------------ score */

typedef struct score_args {
    cli_common c;
    cli_run run;
    int resume;
    const char *shard;
} score_args;

#define S(f) offsetof(score_args, f)
static const cli_opt score_opts_tab[] = {
    CLI_SWITCH("resume", S(resume), 1, 0),
    CLI_STR("shard", S(shard)),
    CLI_PLACEMENT_OPTS(score_args),
};
#undef S

/* The requests of path as streams (eval_requests_parse), into j. */
static int score_requests(eval_job *j, const char *path, int full)
{
    char *buf;
    size_t len;
    FORWARD_IF(job_file_read_all(path, &buf, &len));
    const tok *t = j->src.t;
    eval_requests r;
    int rc = eval_requests_parse(buf, len,
                                 &(eval_request_opts){.path = path, .t = t,
                                                      .bos = t ? tok_bos_id(t)
                                                               : j->src.cfg.bos_id,
                                                      .vocab = j->src.cfg.vocab_size,
                                                      .full = full},
                                 &r);
    free(buf);
    FORWARD_IF(rc);
    j->s = r.s; /* run_free frees them */
    j->req_ids = r.keys;
    j->ids = r.ids;
    j->n = r.n;
    return 0;
}

/* Write the results of a finished block, in input order, each flushed as
 * its own record (in a .zst file: its own frame). */
static int score_block(void *ud, const eval_stream *s, int first, int n)
{
    eval_job *j = ud;
    for (int i = first; i < first + n; i++) {
        int k = j->idx ? j->idx[i] : i; /* a --shard's streams are a share */
        char *t = result_text(&s[i], j->req_ids[k]);
        RETURN_IF(!t, -ENOMEM, "out of memory");
        int rc = job_out_append(&j->out, j->req_ids[k], t);
        free(t);
        FORWARD_IF(rc);
        j->written++;
    }
    return 0;
}

/* score --resume: the requests whose id is in --out already (rank 0 read
 * them; every rank gets its flags) leave the job. @return 0 or -errno. */
static int skip_done(eval_job *j)
{
    j->done = calloc((size_t)(unsigned)j->n + 1, 1);
    RETURN_IF(!j->done, -ENOMEM, "out of memory");
    for (int k = 0; k < j->n; k++)
        j->done[k] = j->out.f && job_out_has(&j->out, j->req_ids[k]);
    int rc = dist_window(j->n, j->done); /* rank 0's flags on every rank */
    for (int k = 0; rc >= 0 && k < j->n; k++)
        j->skipped += j->done[k];
    return rc < 0 ? rc : 0;
}

int cli_score(int argc, char **argv)
{
    score_args a = {0};
    sched_policy pol;
    eval_job j = {0};
    int rc = open_common("score", score_help, argc, argv, score_opts_tab,
                         (int)(sizeof score_opts_tab / sizeof *score_opts_tab), &a, &a.c,
                         &a.run, &pol, &j);
    if (rc == 0 && (!a.c.prompts || !a.c.out))
        rc = cli_usage("score", "--prompts and --out are required");
    if (rc == 0 && cli_same_file(a.c.prompts, a.c.out))
        rc = cli_usage("score", "--prompts and --out must be different files (the results "
                       "are appended to); choose another --out");
    if (rc == 0 && a.shard)
        rc = cli_parse_shard("score", a.shard, &j.shard_i, &j.shard_n);
    if (rc) {
        run_free(&j);
        return rc == CLI_HELP ? 0 : rc;
    }
    eval_opts eo = {.kv = a.c.kv, .prefill_rows = sched_policy_prefill_rows(&pol),
                    .progress = !a.run.quiet, .on_block = score_block, .ud = &j};
    j.score = 1;
    rc = score_requests(&j, a.c.prompts, a.c.kv.kind == KV_POLICY_FULL);
    /* never over results already written (--resume appends to them);
     * rank 0 alone writes them */
    if (rc == 0 && !a.run.plan_only && dist_get()->rank == 0)
        rc = job_out_open(a.c.out, a.resume, &j.out);
    rc = dist_agree(rc);
    if (rc == -EEXIST) {
        run_free(&j);
        return cli_fail();
    }
    if (rc == 0 && a.resume && !a.run.plan_only)
        rc = dist_agree(skip_done(&j));
    if (rc == 0 && j.n > 0)
        rc = run_streams(&j, &a.run, &pol, &eo);
    int out_open = j.out.f != NULL;
    if (job_out_close(&j.out) != 0 && rc == 0) {
        err_set(__FILE__, __LINE__, "%s: closing failed", a.c.out);
        rc = -EIO;
    }
    int status = 0;
    if (rc < 0)
        status = failure_status("score", rc, out_open && j.written + j.skipped > 0, "results",
                                a.c.out);
    else if (!a.run.no_summary && !a.run.plan_only && dist_get()->rank == 0) {
        char skip[96] = "";
        if (j.skipped)
            snprintf(skip, sizeof skip, " (%ld already in %s)", j.skipped, a.c.out);
        fprintf(stderr, "[flexh2o] %ld request%s scored, %ld token%s in %.2f s%s%s\n",
                j.written, j.written == 1 ? "" : "s", (long)j.st.targets,
                j.st.targets == 1 ? "" : "s", j.st.seconds,
                dist_active() ? " (every rank)" : "", skip);
    }
    int ran = j.ran;
    run_free(&j);
    if (ran && rc < 0 && dist_active()) /* the records written are intact; end every rank */
        dist_abort(status ? status : 1);
    return status;
}
