/* cli_args.c: error reports, flag values and the option-table parser the
 * verbs share (cli_args.h). */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_args.h"
#include "dist.h"
#include "err.h"
#include "off.h"
#include "tok.h"

/* ------------------------------------------------------------ errors */

int cli_error(int status, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (dist_get()->rank == 0) /* ranks > 0 leave the job's messages to rank 0 */
        fprintf(stderr, "flexh2o: %s\n", msg);
    return status;
}

int cli_fail(void)
{
    const char *m = err_msg();
    cli_error(1, "%s", m[0] ? m : "failed (no message recorded)");
    if (getenv("FLEXH2O_DEBUG") && dist_get()->rank == 0)
        fprintf(stderr, "  (at %s)\n", err_where());
    return 1;
}

int cli_usage(const char *verb, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (dist_get()->rank == 0)
        fprintf(stderr, "flexh2o %s: %s; see flexh2o %s --help\n", verb, msg, verb);
    return 2;
}

int cli_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int cli_out_check(const char *verb, const char *flag, const char *path)
{
    int rc = off_probe_writable(path);
    if (rc == -EISDIR)
        return cli_usage(verb, "%s %s: a directory; give a file path", flag, path);
    if (rc == -ENAMETOOLONG)
        return cli_usage(verb, "%s: the path is too long", flag);
    if (rc < 0)
        return cli_usage(verb, "%s %s: cannot write there (%s); check that the directory "
                         "exists and is writable", flag, path, strerror(-rc));
    return 0;
}

int cli_parse_shard(const char *verb, const char *arg, int *i, int *n)
{
    char *end;
    long si = strtol(arg, &end, 10), sn = *end == '/' ? strtol(end + 1, &end, 10) : 0;
    if (*end || sn < 1 || sn > GEN_PART_MAX || si < 0 || si >= sn)
        return cli_usage(verb, "--shard expects I/N with 0 <= I < N <= %d, got \"%s\"",
                         GEN_PART_MAX, arg);
    if (dist_active())
        return cli_usage(verb, "--shard splits a job without MPI; under mpirun the ranks "
                         "split it: drop --shard");
    *i = (int)si;
    *n = (int)sn;
    return 0;
}

int cli_parse_chat_template(const char *verb, const char *name, int *kind)
{
    if (tok_chat_template_find(name, kind) == 0)
        return 0;
    char msg[512];
    return cli_usage(verb, "%s", err_take(msg, sizeof msg));
}

int cli_usage_err(const char *verb)
{
    return cli_usage(verb, "%s", err_msg());
}

int cli_unknown_flag(const char *verb, const char *flag)
{
    return cli_usage(verb, "unknown flag %s", flag);
}

/* ------------------------------------------------------------ values */

int cli_parse_int(const char *verb, const char *flag, const char *s, long lo, long hi,
                  int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > hi)
        return cli_usage(verb, "%s expects an integer in [%ld, %ld], got \"%s\"", flag, lo, hi,
                         s);
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *verb, const char *flag, const char *s, double lo, double hi,
                    float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !(v >= lo && v <= hi))
        return cli_usage(verb, "%s expects a number in [%g, %g], got \"%s\"", flag, lo, hi, s);
    *out = (float)v;
    return 0;
}

int cli_open_backend(const char *verb, const char *device, int threads, int bf16_matmul,
                     backend *be)
{
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return cli_usage(verb, "--device must be cpu or cuda");
    int n_gpu = kern_cuda_available();
    int want_cuda = device ? strcmp(device, "cuda") == 0 : n_gpu > 0;
    /* a job's ranks on one host: one GPU each (local rank -> GPU index,
     * round robin when there are more ranks than GPUs), or a share of the
     * cores each */
    const dist_world *w = dist_get();
    if (!want_cuda && threads == 0 && w->local_size > 1 && !getenv("OMP_NUM_THREADS")) {
        /* the host's cores shared out, and never more than the cores
         * mpirun bound this rank to */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > w->local_size ? (int)(cores / w->local_size) : 1;
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) >= 1 &&
            CPU_COUNT(&set) < threads)
            threads = CPU_COUNT(&set);
    }
    if (want_cuda && bf16_matmul)
        return cli_usage(verb, "--cpu-matmul is the CPU backend's; drop it or use --device cpu");
    cpu_set_t mine;
    if (threads > 0 && sched_getaffinity(0, sizeof mine, &mine) == 0 &&
        threads > CPU_COUNT(&mine))
        err_log("[flexh2o] --threads %d is more than the %d cores this process may run on: "
                "threads will wait on each other (the matmuls and attention slow down); give "
                "at most %d", threads, CPU_COUNT(&mine), CPU_COUNT(&mine));
    int rc = want_cuda ? backend_cuda_create(n_gpu > 0 ? w->local_rank % n_gpu : 0, be)
                       : backend_cpu_create_opts(&(backend_cpu_opts){.n_threads = threads,
                                                                     .bf16_matmul = bf16_matmul},
                                                 be);
    return rc < 0 ? cli_fail() : 0;
}

int cli_rank_dir(const char *verb, sched_policy *pol, int rank)
{
    if (!pol->offload_dir[0])
        return 0;
    char dir[sizeof pol->offload_dir];
    int n = snprintf(dir, sizeof dir, "%s/rank-%d", pol->offload_dir, rank);
    if (n < 0 || (size_t)n >= sizeof dir)
        return cli_usage(verb, "--offload-dir is too long for a rank's subfolder");
    if ((mkdir(pol->offload_dir, 0755) != 0 && errno != EEXIST) ||
        (mkdir(dir, 0755) != 0 && errno != EEXIST)) {
        err_set(__FILE__, __LINE__, "%s: cannot create the rank's disk tier (%s); check "
                "--offload-dir", dir, strerror(errno));
        return cli_fail();
    }
    memcpy(pol->offload_dir, dir, (size_t)n + 1);
    return 0;
}

/* ------------------------------------------------------------ setters */

/* "--name" of o, for messages. */
static const char *flag_of(const cli_opt *o, char *buf, size_t len)
{
    snprintf(buf, len, "--%s", o->name);
    return buf;
}

int cli_set_str(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)a;
    (void)o;
    *(const char **)field = arg;
    return 0;
}

int cli_set_int(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    char flag[64];
    return cli_parse_int(a->verb, flag_of(o, flag, sizeof flag), arg, (long)o->lo, (long)o->hi,
                         field);
}

int cli_set_float(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    char flag[64];
    return cli_parse_float(a->verb, flag_of(o, flag, sizeof flag), arg, o->lo, o->hi, field);
}

int cli_set_exact(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    float f;
    int rc = cli_set_float(a, o, arg, &f);
    if (rc == 0)
        *(double *)field = strtod(arg, NULL); /* not f: 0.3f x 20 would round up to 7 */
    return rc;
}

/* A memory cap. A number alone is bytes, which nobody means for a small
 * one ("--gpu-mem 16" would cap the tier at 16 bytes): below 1 MiB a unit
 * is required. 0 is refused, not taken for "no cap": the flag's absence
 * says that. */
int cli_set_size(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    char flag[64];
    flag_of(o, flag, sizeof flag);
    if (sched_parse_size(flag, arg, field) < 0)
        return cli_usage_err(a->verb);
    uint64_t v = *(uint64_t *)field;
    char *unit;
    strtod(arg, &unit); /* sched_parse_size took it: a number, then the unit or nothing */
    if (v == 0)
        return cli_usage(a->verb, "%s %s: a cap of 0 bytes leaves no room for anything; give a "
                         "size like 16G, or leave %s out for the default", flag, arg, flag);
    if (!*unit && v < (1u << 20))
        return cli_usage(a->verb, "%s %s: give a unit, e.g. %sG (a number alone is bytes)",
                         flag, arg, arg);
    return 0;
}

int cli_set_switch(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)a;
    (void)arg;
    *(int *)field = o->value;
    return 0;
}

static int set_kv_policy(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)o;
    return kv_policy_parse(arg, field) < 0 ? cli_usage_err(a->verb) : 0;
}

static int set_dir(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)a;
    (void)o;
    snprintf(field, sizeof ((sched_policy *)0)->offload_dir, "%s", arg);
    return 0;
}

int cli_parse_matmul(const char *verb, const char *s, int *bf16)
{
    if (strcmp(s, "fp32") == 0 || strcmp(s, "bf16") == 0) {
        *bf16 = s[0] == 'b';
        return 0;
    }
    return cli_usage(verb, "--cpu-matmul must be fp32 or bf16, got \"%s\"", s);
}

static int set_matmul(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)o;
    return cli_parse_matmul(a->verb, arg, field);
}

static int set_help(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)a;
    (void)o;
    (void)arg;
    (void)field;
    return CLI_HELP;
}

/* --percent: six values, "--percent 20 80 0 100 0 100" or "--percent
 * 20,80,0,100,0,100"; the separate form takes the words after the flag. */
int cli_set_percent(const cli_argv *a, const cli_opt *o, const char *arg, void *field)
{
    (void)o;
    const char *args[6] = {arg};
    int n = 1;
    if (!strchr(arg, ',') && !strchr(arg, ' '))
        while (n < 6 && optind < a->argc && a->argv[optind][0] != '-')
            args[n++] = a->argv[optind++];
    if (sched_policy_parse_percent(args, n, field) < 0)
        return cli_usage_err(a->verb);
    return 0;
}

int cli_run_policy(const char *verb, const cli_run *run, const cli_common *c,
                   sched_policy *pol)
{
    sched_policy_default(pol);
    if (run->policy_path && sched_policy_load(run->policy_path, pol) < 0)
        return cli_usage_err(verb);
    if (sched_policy_apply(pol, &c->pol, c->given) < 0 || sched_policy_check(pol) < 0)
        return cli_usage_err(verb);
    return 0;
}

/* ------------------------------------------------------------ the shared table */

void cli_common_init(cli_common *c)
{
    *c = (cli_common){.max_new = 32, .kv = {.hh_share = NAN}};
    sched_policy_default(&c->pol);
}

#define C(f) offsetof(cli_common, f)
static const cli_opt shared_opts[] = {
    CLI_STR("model", C(model_dir)),
    CLI_STR("dummy", C(dummy)),
    CLI_STR("prompts", C(prompts)),
    CLI_STR("out", C(out)),
    CLI_STR("device", C(device)),
    {"cpu-matmul", required_argument, set_matmul, C(bf16_matmul), 0, 0, 0, 0},
    CLI_INT("max-new-tokens", C(max_new), 0, 1 << 20, 0),
    CLI_INT("prefill-rows", C(pol.prefill_rows), 1, SCHED_PREFILL_ROWS_MAX,
            SCHED_POLICY_PREFILL_ROWS),
    {"kv-policy", required_argument, set_kv_policy, C(kv.kind), 0, 0, 0, 0},
    {"kv-ratio", required_argument, cli_set_exact, C(kv.ratio), 1e-9, 1, 0, 0},
    CLI_INT("kv-budget", C(kv.budget), 1, 1 << 24, 0),
    CLI_INT("sinks", C(kv.sinks), 0, 1 << 24, 0),
    {"hh-share", required_argument, cli_set_exact, C(kv.hh_share), 0, 1, 0, 0},
    {"recent", required_argument, cli_set_int, C(kv.recent), 1, 1 << 30, 0, 0},
    {"gpu-mem", required_argument, cli_set_size, C(pol.gpu_mem), 0, 0, 0, SCHED_POLICY_GPU_MEM},
    {"cpu-mem", required_argument, cli_set_size, C(pol.cpu_mem), 0, 0, 0, SCHED_POLICY_CPU_MEM},
    {"offload-dir", required_argument, set_dir, C(pol.offload_dir), 0, 0, 0,
     SCHED_POLICY_OFFLOAD_DIR},
    CLI_SWITCH("cpu-attention", C(pol.cpu_attention), 1, SCHED_POLICY_CPU_ATTENTION),
    CLI_SWITCH("compress-weight", C(pol.compress_weight), 1, SCHED_POLICY_COMPRESS_WEIGHT),
    CLI_SWITCH("compress-cache", C(pol.compress_cache), 1, SCHED_POLICY_COMPRESS_CACHE),
    CLI_SWITCH("weight-layers", C(pol.weight_layers), 1, SCHED_POLICY_WEIGHT_LAYERS),
    {"help", no_argument, set_help, 0, 0, 0, 0, 0},
};
#undef C

/* ------------------------------------------------------------ parser */

#define N_SHARED ((int)(sizeof shared_opts / sizeof shared_opts[0]))
#define MAX_OPTS 64
#define VAL0 256 /* getopt_long's value of option i is VAL0 + i, clear of '?' */

/* getopt_long's complaint about argv[optind - 1] as a usage error. */
static int bad_flag(const char *verb, int c, char **argv)
{
    if (!(optopt && c == '?'))
        return cli_unknown_flag(verb, argv[optind - 1]);
    return cli_usage(verb, "%s needs a value", argv[optind - 1]);
}

int cli_parse(const char *verb, int argc, char **argv, const cli_opt *own, int n, void *dst,
              cli_common *c)
{
    const cli_opt *tab[MAX_OPTS];
    void *base[MAX_OPTS];
    struct option lo[MAX_OPTS + 1];
    int total = N_SHARED + n;
    assert(total <= MAX_OPTS);
    for (int i = 0; i < total; i++) {
        tab[i] = i < N_SHARED ? &shared_opts[i] : &own[i - N_SHARED];
        base[i] = i < N_SHARED ? (void *)c : dst;
        lo[i] = (struct option){tab[i]->name, tab[i]->has_arg, NULL, VAL0 + i};
    }
    lo[total] = (struct option){0, 0, 0, 0};
    cli_argv a = {verb, argc, argv};
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (ch < VAL0 || ch >= VAL0 + total)
            return bad_flag(verb, ch, argv);
        const cli_opt *o = tab[ch - VAL0];
        int rc = o->set(&a, o, optarg, (char *)base[ch - VAL0] + o->off);
        if (rc)
            return rc;
        c->given |= o->given;
    }
    if (optind < argc)
        return cli_usage(verb, "unexpected argument \"%s\"", argv[optind]);
    return 0;
}
