/* test_dist.c: one job over several processes (DESIGN.md "Scale-out";
 * src/gen/dist.c, gen_part in src/gen/gen_plan.c):
 *   - the split against the rule it states (each request, in file order,
 *     to the process with the least cost so far, the lowest on a tie),
 *     recomputed here independently, and its balance;
 *   - --shard I/N: the shards partition the single run's records, each in
 *     input order, and `merge` joins them into the single run's file;
 *   - where the build has MPI and mpirun is installed: mpirun -n 1, 2, 3
 *     against the single run, byte for byte at --batch-size 1 (greedy,
 *     sampled with n completions, an OpenAI batch file), tokens identical
 *     and logprobs within the CPU backend's batch tolerance at
 *     --batch-size 4; --resume over ranks; a rank failing mid-job (a disk
 *     fault on rank 1's tier, a write fault on rank 0's output) and a rank
 *     killed with SIGKILL (rank 1, then rank 0, the writer), each then
 *     --resume to the single run's file;
 *     eval's numbers and score's records equal to one process's; the
 *     per-rank disk tiers; the verbs that refuse ranks.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_harness.h"
#include "fh_config.h"
#include "gen.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures/"
#define TINY FIX "tiny-llama"

/* ------------------------------------------------------------ the split */

/* A small LCG, so that the costs are the same on every run. */
static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* The rule, written out again: the least loaded process, the lowest on a
 * tie; -1 for a request already written. */
Test(dist, split_follows_its_rule)
{
    uint32_t seed = 7;
    for (int procs = 1; procs <= 6; procs++) {
        gen_part gp;
        cr_assert_eq(gen_part_init(&gp, procs, procs - 1), 0);
        int64_t load[6] = {0};
        for (int k = 0; k < 3000; k++) {
            int64_t cost = lcg(&seed) % 7 == 0 ? -1 : (int64_t)(lcg(&seed) % 500);
            if (k % 97 == 0)
                cost = 0; /* free requests still go somewhere */
            cr_assert_eq(gen_part_add(&gp, cost), 0);
            int want = -1;
            for (int r = 0; cost >= 0 && r < procs; r++)
                if (want < 0 || load[r] < load[want])
                    want = r;
            if (want >= 0)
                load[want] += cost;
            cr_assert_eq(gp.owner[k], want, "procs %d request %d: owner %d, want %d", procs, k,
                         gp.owner[k], want);
            cr_assert_eq(gen_part_mine(&gp, k), want == procs - 1);
        }
        cr_assert_eq(gp.n, 3000);
        cr_assert(!gen_part_mine(&gp, 3000) && !gen_part_mine(&gp, -1));
        gen_part_free(&gp);
    }
    gen_part gp;
    cr_assert_lt(gen_part_init(&gp, 0, 0), 0);
    cr_assert_lt(gen_part_init(&gp, 3, 3), 0);
    cr_assert_lt(gen_part_init(&gp, GEN_PART_MAX + 1, 0), 0);
}

/* Greedy by cost keeps the processes within the largest single cost of
 * each other at every point of the file: none runs ahead of the others,
 * so the one writing the output in input order holds few records back. */
Test(dist, split_balances_the_cost)
{
    uint32_t seed = 11;
    gen_part gp;
    cr_assert_eq(gen_part_init(&gp, 3, 0), 0);
    int64_t max_cost = 0;
    for (int k = 0; k < 5000; k++) {
        int64_t c = 1 + lcg(&seed) % 1000;
        max_cost = c > max_cost ? c : max_cost;
        cr_assert_eq(gen_part_add(&gp, c), 0);
        int64_t lo = gp.load[0], hi = gp.load[0];
        for (int r = 1; r < 3; r++) {
            lo = gp.load[r] < lo ? gp.load[r] : lo;
            hi = gp.load[r] > hi ? gp.load[r] : hi;
        }
        cr_assert_leq(hi - lo, max_cost, "request %d: loads %lld .. %lld", k, (long long)lo,
                      (long long)hi);
    }
    gen_part_free(&gp);
}

/* ------------------------------------------------------------ job files */

/* 800 s a test: sanitizer builds run the killed-rank test's OPT-125M job
 * 10-20x slower (the limit is the suite's: a test's own .timeout leaves an
 * allocation of libcriterion's that LeakSanitizer reports) */
TestSuite(dist_cli, .init = cli_setup, .fini = cli_teardown, .timeout = 800);

/* A job of prompts of different lengths and max_new_tokens (so that the
 * split by cost is not round robin), a request of two completions and
 * some sampled. */
static void write_job(const char *name, int sampled)
{
    char job[8192] = "";
    for (int i = 0; i < 11; i++) {
        char line[512];
        snprintf(line, sizeof line,
                 "{\"id\": \"p%d\", \"prompt\": \"%s\", \"max_new_tokens\": %d%s%s}\n", i,
                 i % 3 == 0 ? "In the beginning God created the heaven and the earth"
                 : i % 3 == 1 ? "And God said" : "Let there be light, and there was",
                 3 + (i * 7) % 13, sampled && i % 2 ? ", \"temperature\": 0.9, \"seed\": 3" : "",
                 sampled && i == 4 ? ", \"n\": 2, \"temperature\": 0.7" : "");
        strcat(job, line);
    }
    cli_write(name, job);
}

/* The lines of cli_dir/name, each with its '\n', into a NULL-terminated
 * array (the caller frees both). */
static char **lines_of(const char *name, int *n)
{
    char *txt = cli_read(name);
    int cap = 1;
    for (char *p = txt; *p; p++)
        cap += *p == '\n';
    char **out = calloc((size_t)cap + 1, sizeof *out);
    *n = 0;
    for (char *p = txt, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        cr_assert(nl, "%s: last line without '\\n'", name);
        out[(*n)++] = strndup(p, (size_t)(nl - p + 1));
    }
    free(txt);
    return out;
}

static void lines_free(char **l)
{
    for (int i = 0; l[i]; i++)
        free(l[i]);
    free(l);
}

/* Each shard's records are the single run's, in its order, and together
 * they are all of them, once. */
Test(dist_cli, shards_partition_the_single_run)
{
    write_job("p.jsonl", 1);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out one.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary"), 0, "%s",
                 cli_err);
    int n_one;
    char **one = lines_of("one.jsonl", &n_one);
    cr_assert_eq(n_one, 11);
    int used[11] = {0}, total = 0;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out s%d.jsonl "
                             "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary "
                             "--shard %d/3", i, i), 0,
                     "%s", cli_err);
        char name[32];
        snprintf(name, sizeof name, "s%d.jsonl", i);
        int n;
        char **sh = lines_of(name, &n);
        cr_assert_gt(n, 1, "shard %d of 3 got %d of 11 requests", i, n);
        int at = 0;
        for (int k = 0; k < n; k++) {
            while (at < n_one && strcmp(one[at], sh[k]) != 0)
                at++;
            cr_assert_lt(at, n_one, "shard %d record %d is not the single run's, in its "
                         "order: %s", i, k, sh[k]);
            cr_assert(!used[at]);
            used[at] = 1;
        }
        total += n;
        lines_free(sh);
    }
    cr_assert_eq(total, 11);
    /* merge joins them into the single run's file */
    cr_assert_eq(cli_run("merge --prompts p.jsonl --out m.jsonl s2.jsonl s0.jsonl s1.jsonl"), 0,
                 "%s", cli_err);
    char *m = cli_read("m.jsonl"), *o = cli_read("one.jsonl");
    cr_assert_str_eq(m, o);
    free(m);
    free(o);
    /* a shard resumes from its own output: nothing redone, nothing lost */
    cr_assert_eq(cli_sh("head -1 s1.jsonl > r1.jsonl"), 0);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out r1.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary --shard 1/3 "
                         "--resume"), 0, "%s",
                 cli_err);
    char *a = cli_read("s1.jsonl"), *b = cli_read("r1.jsonl");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
    lines_free(one);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out x.jsonl "
                         "--shard 3/3"), 2);
    cr_assert(strstr(cli_err, "--shard expects I/N"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out x.jsonl "
                         "--shard 1"), 2);
}

/* ------------------------------------------------------------ MPI ranks */

/* mpirun is usable here: the build has MPI and mpirun runs (as root with
 * Open MPI's consent variables, as CI runs). */
static int mpi_usable(void)
{
    return FH_HAVE_MPI && system("command -v mpirun >/dev/null 2>&1") == 0;
}

#define MPI_SKIP_UNLESS_USABLE()                                                          \
    do {                                                                                  \
        if (!mpi_usable())                                                                \
            cli_skip("no MPI in this build or no mpirun (-Dmpi, Debian libopenmpi-dev "   \
                     "openmpi-bin)");                                                     \
    } while (0)

/* The single run and mpirun -n 1, 2, 3 write the same bytes. */
static void same_bytes_over_ranks(const char *job, const char *flags)
{
    cr_assert_eq(cli_run("generate --model " TINY " --prompts %s --out one.jsonl %s --quiet "
                         "--no-summary", job, flags), 0, "%s", cli_err);
    char *one = cli_read("one.jsonl");
    for (int n = 1; n <= 3; n++) {
        cr_assert_eq(cli_run_mpi(n, NULL, "generate --model " TINY " --prompts %s --out "
                                 "r%d.jsonl %s "
                             "--quiet --no-summary", job, n, flags), 0, "%d ranks: %s", n,
                     cli_err);
        char name[32];
        snprintf(name, sizeof name, "r%d.jsonl", n);
        char *r = cli_read(name);
        cr_assert_str_eq(r, one, "%d ranks wrote another file", n);
        free(r);
    }
    free(one);
}

Test(dist_cli, ranks_write_the_single_runs_bytes_greedy)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 0);
    same_bytes_over_ranks("p.jsonl", "--batch-size 1");
}

Test(dist_cli, ranks_write_the_single_runs_bytes_sampled)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 1);
    /* two GPU batches of one: the block holds the request of n = 2 */
    same_bytes_over_ranks("p.jsonl", "--batch-size 1 --num-gpu-batches 2 --temperature 0.8 "
                          "--seed 9");
}

Test(dist_cli, ranks_write_the_single_runs_bytes_openai)
{
    MPI_SKIP_UNLESS_USABLE();
    char job[4096] = "";
    for (int i = 0; i < 7; i++) {
        char line[512];
        snprintf(line, sizeof line, "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": "
                 "\"/v1/completions\", \"body\": {\"model\": \"kjv\", \"prompt\": \"And God "
                 "said%s\", \"max_tokens\": %d, \"temperature\": %s, \"seed\": %d}}\n", i,
                 i % 2 ? " let there be" : "", 2 + i * 3, i % 3 ? "0.8" : "0", i);
        strcat(job, line);
    }
    /* an error request keeps its place in the output */
    strcat(job, "{\"custom_id\": \"bad\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
                "\"body\": {\"prompt\": \"x\", \"max_tokens\": 4, \"best_of\": 3}}\n");
    cli_write("batch.jsonl", job);
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1); /* "created" */
    same_bytes_over_ranks("batch.jsonl", "--batch-size 1");
    unsetenv("SOURCE_DATE_EPOCH");
}

/* At --batch-size 4 a rank's batches differ from one process's: the same
 * tokens, logprobs within the CPU backend's batch tolerance. */
Test(dist_cli, ranks_at_larger_batches_give_the_same_tokens)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 1);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out one.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary"), 0, "%s",
                 cli_err);
    cr_assert_eq(cli_run_mpi(3, NULL, "generate --model " TINY " --prompts p.jsonl --out r.jsonl "
                         "--batch-size 4 --quiet --no-summary"), 0, "%s", cli_err);
    int na, nb;
    char **a = lines_of("one.jsonl", &na), **b = lines_of("r.jsonl", &nb);
    cr_assert_eq(na, nb);
    for (int i = 0; i < na; i++) {
        cJSON *x = cJSON_Parse(a[i]), *y = cJSON_Parse(b[i]);
        char *ix = cJSON_PrintUnformatted(cJSON_GetObjectItem(x, "id"));
        char *iy = cJSON_PrintUnformatted(cJSON_GetObjectItem(y, "id"));
        cr_assert_str_eq(ix, iy);
        free(ix);
        free(iy);
        const cJSON *cx = cJSON_GetObjectItem(x, "choices");
        const cJSON *cy = cJSON_GetObjectItem(y, "choices");
        int nc = cx ? cJSON_GetArraySize(cx) : 1;
        for (int c = 0; c < nc; c++) {
            const cJSON *ox = cx ? cJSON_GetArrayItem(cx, c) : x;
            const cJSON *oy = cy ? cJSON_GetArrayItem(cy, c) : y;
            char *tx = cJSON_PrintUnformatted(cJSON_GetObjectItem(ox, "tokens"));
            char *ty = cJSON_PrintUnformatted(cJSON_GetObjectItem(oy, "tokens"));
            cr_assert_str_eq(tx, ty, "line %d", i + 1);
            const cJSON *lx = cJSON_GetObjectItem(ox, "logprobs");
            const cJSON *ly = cJSON_GetObjectItem(oy, "logprobs");
            for (int k = 0; k < cJSON_GetArraySize(lx); k++)
                cr_assert_float_eq(cJSON_GetArrayItem(lx, k)->valuedouble,
                                   cJSON_GetArrayItem(ly, k)->valuedouble, 1e-4, "line %d", i + 1);
            free(tx);
            free(ty);
        }
        cJSON_Delete(x);
        cJSON_Delete(y);
    }
    lines_free(a);
    lines_free(b);
}

/* --resume over ranks: rank 0 reads what is written, the ranks split what
 * is left, and the file ends as the single run's. */
Test(dist_cli, ranks_resume_a_partial_output)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 1);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out one.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary"), 0, "%s",
                 cli_err);
    /* 4 records and a torn fifth */
    cr_assert_eq(cli_sh("head -4 one.jsonl > r.jsonl; sed -n 5p one.jsonl | head -c 20 >> r.jsonl"),
                 0);
    cr_assert_eq(cli_run_mpi(3, NULL, "generate --model " TINY " --prompts p.jsonl --out r.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --resume --quiet"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "torn last record"), "%s", cli_err);
    cr_assert(strstr(cli_err, "7 prompts on 3 ranks"), "%s", cli_err);
    cr_assert(strstr(cli_err, "rank 0 (") && strstr(cli_err, "rank 2 ("),
              "a summary line per rank: %s", cli_err);
    char *a = cli_read("one.jsonl"), *b = cli_read("r.jsonl");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

/* A rank that fails mid-job ends the job with its message; what rank 0
 * wrote is intact and --resume finishes the file as one process would. */
Test(dist_cli, a_failing_rank_ends_the_job_and_resume_finishes_it)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 0);
    cr_assert_eq(cli_run("generate --model " TINY " --prompts p.jsonl --out one.jsonl "
                         "--batch-size 1 --num-gpu-batches 2 --quiet --no-summary"), 0, "%s",
                 cli_err);
    /* rank 1's KV cache on its disk tier (DIR/rank-1) fails to read */
    cr_assert_neq(cli_run_mpi(2, "FLEXH2O_FAULT=op=read,nth=6,errno=EIO,path=rank-1",
                              "generate --model " TINY " --prompts p.jsonl --out r.jsonl "
                              "--batch-size 1 --percent 100 0 0 0 100 0 --offload-dir tier "
                              "--quiet --no-summary"), 0);
    cr_assert(strstr(cli_err, "rank 1"), "the failing rank is named: %s", cli_err);
    cr_assert(strstr(cli_err, "--resume"), "%s", cli_err);
    struct stat st;
    char path[512];
    snprintf(path, sizeof path, "%s/tier/rank-0", cli_dir);
    cr_assert_eq(stat(path, &st), 0, "rank 0's disk tier is its own subfolder");
    snprintf(path, sizeof path, "%s/tier/rank-1", cli_dir);
    cr_assert_eq(stat(path, &st), 0);
    int n;
    char **part = lines_of("r.jsonl", &n);
    cr_assert_lt(n, 11, "the job stopped: %d records", n);
    lines_free(part);
    cr_assert_eq(cli_run_mpi(2, NULL, "generate --model " TINY " --prompts p.jsonl --out r.jsonl "
                         "--batch-size 1 --percent 100 0 0 0 100 0 --offload-dir tier --resume "
                         "--quiet --no-summary"), 0, "%s", cli_err);
    char *a = cli_read("one.jsonl"), *b = cli_read("r.jsonl");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);

    /* rank 0 cannot write its third record: the same */
    cr_assert_neq(cli_run_mpi(3, "FLEXH2O_FAULT=op=write,nth=3,errno=ENOSPC,path=w.jsonl",
                              "generate --model " TINY " --prompts p.jsonl --out w.jsonl "
                              "--batch-size 1 --quiet --no-summary"), 0);
    cr_assert(strstr(cli_err, "w.jsonl"), "%s", cli_err);
    part = lines_of("w.jsonl", &n);
    cr_assert_eq(n, 2, "the records before the failed write stay: %d", n);
    lines_free(part);
    cr_assert_eq(cli_run_mpi(3, NULL, "generate --model " TINY " --prompts p.jsonl --out w.jsonl "
                         "--batch-size 1 --resume --quiet --no-summary"), 0, "%s", cli_err);
    a = cli_read("one.jsonl");
    b = cli_read("w.jsonl");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

/* The pid of the flexh2o process that is rank `rank` of a job writing
 * `out` (its environment and command line say so), or 0. */
static pid_t rank_pid(int rank, const char *out)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    while (!found && d && (e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], buf[65536];
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        int is_job = 0;
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
            is_job |= strcmp(buf + i, out) == 0;
        if (!is_job || strstr(buf, "mpirun"))
            continue;
        snprintf(path, sizeof path, "/proc/%d/environ", pid);
        f = fopen(path, "r");
        n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
            if (strcmp(buf + i, want) == 0)
                found = pid;
    }
    if (d)
        closedir(d);
    return found;
}

/* Start `mpirun -n 2 flexh2o generate` of long.jsonl into k.jsonl in the
 * background, in CLI_MPI_ENV's environment. @return mpirun's pid. */
static pid_t start_long_job(void)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd %s && exec env " CLI_MPI_ENV " mpirun --oversubscribe -n 2 "
             "-x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive %s generate --dummy opt-125m "
             "--prompts long.jsonl --out k.jsonl --batch-size 1 --ignore-eos --quiet "
             "--no-summary --device cpu >/dev/null 2>killed.txt", cli_dir,
             getenv("FLEXH2O_BIN"));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid > 0)
        return pid; /* the shell execs env, env execs mpirun: this pid is mpirun's */
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
}

/* SIGKILL of one rank (the writer, rank 0, or another) once records are
 * written: mpirun ends the job; the records rank 0 wrote are intact and
 * --resume completes the file. */
Test(dist_cli, a_killed_rank_then_resume_gives_the_single_runs_file)
{
    MPI_SKIP_UNLESS_USABLE();
    /* long enough to kill in the middle: OPT-125M's shape, random weights */
    char job[8192] = "";
    for (int i = 0; i < 6; i++) { /* (sanitizer builds run it 10-20x slower) */
        char line[256];
        snprintf(line, sizeof line, "{\"id\": %d, \"prompt_ids\": [%d, %d, %d, %d], "
                 "\"max_new_tokens\": 3}\n", i, 5 + i, 70 + 3 * i, 900 - i, 11);
        strcat(job, line);
    }
    cli_write("long.jsonl", job);
    const char *flags = "--dummy opt-125m --prompts long.jsonl --batch-size 1 --ignore-eos "
                        "--quiet --no-summary";
    cr_assert_eq(cli_run("generate %s --out one.jsonl", flags), 0, "%s", cli_err);
    char *one = cli_read("one.jsonl");
    for (int victim_rank = 1; victim_rank >= 0; victim_rank--) {
        cr_assert_eq(cli_sh("rm -f k.jsonl"), 0);
        pid_t job_pid = start_long_job();
        char path[512];
        snprintf(path, sizeof path, "%s/k.jsonl", cli_dir);
        pid_t victim = 0;
        for (int t = 0; t < 6000 && !victim; t++) { /* up to 60 s */
            struct stat st;
            if (stat(path, &st) == 0 && st.st_size > 0)
                victim = rank_pid(victim_rank, "k.jsonl");
            if (!victim)
                usleep(10000);
        }
        cr_assert(victim > 0, "rank %d never showed up, or nothing was written", victim_rank);
        kill(victim, SIGKILL);
        int st;
        waitpid(job_pid, &st, 0);
        cr_assert(!(WIFEXITED(st) && WEXITSTATUS(st) == 0), "mpirun must fail when a rank dies");
        int n;
        char **part = lines_of("k.jsonl", &n);
        cr_log_info("rank %d killed with %d of 6 records written", victim_rank, n);
        cr_assert_lt(n, 6);
        lines_free(part);
        cr_assert_eq(cli_run_mpi(2, NULL, "generate %s --out k.jsonl --resume", flags), 0, "%s",
                     cli_err);
        char *b = cli_read("k.jsonl");
        cr_assert_str_eq(b, one, "rank %d killed, then --resume", victim_rank);
        free(b);
    }
    free(one);
}

/* eval's numbers and score's records do not depend on the ranks. */
Test(dist_cli, eval_and_score_over_ranks)
{
    MPI_SKIP_UNLESS_USABLE();
    const char *ev = "eval --model " TINY " --text " FIX "eval_text.txt --context 24 "
                     "--kv-policy h2o --kv-budget 10 --compare-full --batch-size 2 --quiet "
                     "--no-summary";
    cr_assert_eq(cli_run("%s", ev), 0, "%s", cli_err);
    char *one = cli_read("stdout.txt");
    cJSON *a = cJSON_Parse(one);
    cr_assert(a, "%s", one);
    cJSON_DeleteItemFromObject(a, "tok_s"); /* the one number that is a speed */
    char *sa = cJSON_PrintUnformatted(a);
    for (int n = 2; n <= 3; n++) {
        cr_assert_eq(cli_run_mpi(n, NULL, "%s", ev), 0, "%s", cli_err);
        char *r = cli_read("stdout.txt");
        cJSON *b = cJSON_Parse(r);
        cr_assert(b, "%s", r);
        cJSON_DeleteItemFromObject(b, "tok_s");
        char *sb = cJSON_PrintUnformatted(b);
        cr_assert_str_eq(sb, sa, "%d ranks", n);
        free(sb);
        free(r);
        cJSON_Delete(b);
    }
    /* eval --out over ranks: the records of one process; --resume of a
     * cut file over three ranks: the same line and records */
    cr_assert_eq(cli_run("%s --out w1.jsonl", ev), 0, "%s", cli_err);
    cr_assert_eq(cli_run_mpi(2, NULL, "%s --out w2.jsonl", ev), 0, "%s", cli_err);
    char *w1 = cli_read("w1.jsonl"), *w2 = cli_read("w2.jsonl");
    cr_assert_str_eq(w2, w1);
    free(w2);
    char *two = strchr(strchr(w1, '\n') + 1, '\n') + 1;
    char *part = strndup(w1, (size_t)(two - w1) + 9);
    cli_write("w3.jsonl", part);
    free(part);
    cr_assert_eq(cli_run_mpi(3, NULL, "%s --out w3.jsonl --resume", ev), 0, "%s", cli_err);
    char *r = cli_read("stdout.txt");
    cJSON *b = cJSON_Parse(r);
    cr_assert(b, "%s", r);
    cJSON_DeleteItemFromObject(b, "tok_s");
    char *sb = cJSON_PrintUnformatted(b);
    cr_assert_str_eq(sb, sa, "resumed over 3 ranks");
    free(sb);
    free(r);
    cJSON_Delete(b);
    w2 = cli_read("w3.jsonl");
    cr_assert_str_eq(w2, w1);
    free(w2);
    free(w1);
    free(sa);
    free(one);
    cJSON_Delete(a);

    char req[4096] = "";
    for (int i = 0; i < 9; i++) {
        char line[256];
        snprintf(line, sizeof line, "{\"id\": %d, \"context\": \"In the beginning%s\", "
                 "\"continuation\": \" God created\"}\n", i, i % 2 ? " and" : "");
        strcat(req, line);
    }
    cli_write("req.jsonl", req);
    cr_assert_eq(cli_run("score --model " TINY " --prompts req.jsonl --out s1.jsonl "
                         "--batch-size 1 --quiet"), 0, "%s", cli_err);
    cr_assert_eq(cli_run_mpi(3, NULL, "score --model " TINY " --prompts req.jsonl --out s3.jsonl "
                         "--batch-size 1 --quiet"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "9 requests scored"), "%s", cli_err);
    char *x = cli_read("s1.jsonl"), *y = cli_read("s3.jsonl");
    cr_assert_str_eq(x, y);
    free(x);
    free(y);
    cr_assert_eq(cli_run_mpi(2, NULL, "score --model " TINY " --prompts req.jsonl --out s3.jsonl "
                         "--quiet"), 1, "an existing --out is refused");
    cr_assert(strstr(cli_err, "already exists"), "%s", cli_err);
    /* --resume over ranks: rank 0's "already written" reaches every rank;
     * a file cut inside its fourth record ends as the one process's */
    x = cli_read("s1.jsonl");
    char *cut = x;
    for (int k = 0; k < 3; k++)
        cut = strchr(cut, '\n') + 1;
    cut[10] = 0;
    cli_write("s2.jsonl", x);
    cr_assert_eq(cli_run_mpi(2, NULL, "score --model " TINY " --prompts req.jsonl --out s2.jsonl "
                             "--batch-size 1 --resume --quiet"), 0, "%s", cli_err);
    cr_assert(strstr(cli_err, "6 requests scored") && strstr(cli_err, "(3 already in s2.jsonl)"),
              "%s", cli_err);
    free(x);
    x = cli_read("s1.jsonl");
    y = cli_read("s2.jsonl");
    cr_assert_str_eq(y, x);
    free(x);
    free(y);
}

/* Verbs of one process refuse mpirun; --shard and --trace-evictions too. */
Test(dist_cli, what_ranks_refuse)
{
    MPI_SKIP_UNLESS_USABLE();
    write_job("p.jsonl", 0);
    cr_assert_eq(cli_run_mpi(2, NULL, "search --dummy opt-125m --gpu-mem 1G --prompt-len 8 "
                             "--gen-len 8"),
                 2);
    cr_assert(strstr(cli_err, "search runs in one process"), "%s", cli_err);
    cr_assert_eq(cli_run_mpi(2, NULL, "generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--shard 0/2"), 2);
    cr_assert(strstr(cli_err, "drop --shard"), "%s", cli_err);
    cr_assert_eq(cli_run_mpi(2, NULL, "generate --model " TINY " --prompts p.jsonl --out o.jsonl "
                         "--trace-evictions t.jsonl"), 2);
    cr_assert(strstr(cli_err, "--trace-evictions runs in one process"), "%s", cli_err);
    cr_assert(!cli_exists("o.jsonl"));
    /* a message is printed once, by rank 0 */
    const char *first = strstr(cli_err, "--trace-evictions runs");
    cr_assert(!strstr(first + 1, "--trace-evictions runs"), "%s", cli_err);
}
