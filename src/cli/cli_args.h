/* cli_args.h: what the verbs of the command line share.
 *
 *   - One way to report an error, two kinds of it. What failed is printed
 *     by cli_error() as "flexh2o: <what>; <what to do>"; a library failure
 *     is recorded with err_set() and printed by cli_fail() (exit status 1;
 *     3 for prompt lines skipped). A command line that cannot run is a usage
 *     error, "flexh2o VERB: <what>; see flexh2o VERB --help" (exit status 2).
 *   - Flag values: integers and numbers in a range, the --device backend.
 *   - One option table (cli_opt) per verb, parsed by cli_parse() together
 *     with the table of the flags generate and search both take, which fill
 *     a cli_common.
 */
#ifndef FH_CLI_ARGS_H
#define FH_CLI_ARGS_H

#include <getopt.h>
#include <stddef.h>

#include "backend.h"
#include "kv_policy.h"
#include "scheduler.h"

/* ------------------------------------------------------------ errors */

/* Print "flexh2o: <fmt ...>". @return status. */
int cli_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print the error recorded with err_set() as cli_error does (and, with
 * FLEXH2O_DEBUG set, where it was recorded). @return 1. */
int cli_fail(void);
/* Print "flexh2o VERB: <fmt ...>; see flexh2o VERB --help". @return 2. */
int cli_usage(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The error recorded with err_set() (a bad value) as a usage error. @return 2. */
int cli_usage_err(const char *verb);
/* 1 when paths a and b name the same existing file (device and inode:
 * also through links or another spelling), else 0. */
int cli_same_file(const char *a, const char *b);
/* Whether path can take verb's output of flag (--out ...) before any work
 * is done: not a directory, in a directory that exists and is writable (a
 * file path.tmp is made and removed). @return 0, or 2 with the usage
 * error printed. */
int cli_out_check(const char *verb, const char *flag, const char *path);
/* --shard I/N of verb into *i, *n (0 <= I < N <= GEN_PART_MAX; refused
 * under mpirun, where the ranks split the job). @return 0, or 2 with the
 * usage error printed. */
int cli_parse_shard(const char *verb, const char *arg, int *i, int *n);
/* --chat-template NAME of verb into *kind (tok_chat_template_find).
 * @return 0, or 2 with the usage error (the templates named) printed. */
int cli_parse_chat_template(const char *verb, const char *name, int *kind);
/* "unknown flag FLAG" as a usage error. @return 2. */
int cli_unknown_flag(const char *verb, const char *flag);

/* ------------------------------------------------------------ values */

/* Parse s, the value of flag, as an integer / a number in [lo, hi] into
 * *out. @return 0, or the status of the usage error printed. */
int cli_parse_int(const char *verb, const char *flag, const char *s, long lo, long hi,
                  int *out);
int cli_parse_float(const char *verb, const char *flag, const char *s, double lo, double hi,
                    float *out);

/* The backend --device names (NULL: cuda when a GPU is present, else the
 * CPU with threads threads, 0 = all cores, and bf16 matmuls when
 * bf16_matmul; that with cuda is a usage error). One rank of several on a host
 * (dist.h) takes GPU local rank mod GPUs, or, with threads 0 and no
 * OMP_NUM_THREADS, the host's cores divided by its ranks (at most the
 * cores it is bound to). @return 0 or the exit status of the error
 * printed; the caller destroys *be. */
int cli_open_backend(const char *verb, const char *device, int threads, int bf16_matmul,
                     backend *be);
/* --cpu-matmul fp32|bf16 into *bf16 (1 for bf16: the CPU backend's linear
 * over bf16 weights as bf16 matmuls, backend_cpu_opts.bf16_matmul).
 * @return 0 or the status of the usage error printed. */
int cli_parse_matmul(const char *verb, const char *s, int *bf16);
/* A job over ranks or shards: each process's disk tier is its own
 * subfolder of --offload-dir, DIR/rank-R (created; pol->offload_dir then
 * names it). No-op without --offload-dir. @return 0 or the exit status of
 * the error printed. */
int cli_rank_dir(const char *verb, sched_policy *pol, int rank);

/* ------------------------------------------------------------ option tables */

/* The flags generate and search both take (their parsing is shared). */
typedef struct cli_common {
    const char *model_dir;  /* --model DIR */
    const char *dummy;      /* --dummy NAME */
    const char *prompts;    /* --prompts FILE */
    const char *out;        /* --out FILE */
    const char *device;     /* --device cpu|cuda, or NULL */
    int bf16_matmul;        /* --cpu-matmul bf16 */
    int max_new;            /* --max-new-tokens (default 32) */
    kv_policy kv;           /* --kv-policy, --kv-ratio, --kv-budget, --sinks, --hh-share */
    sched_policy pol;       /* the policy flags; only the fields in given were set */
    unsigned given;         /* enum sched_policy_field bits: the policy flags given */
} cli_common;

/* The defaults above (and sched_policy_default for pol). */
void cli_common_init(cli_common *c);

typedef struct cli_opt cli_opt;

/* The command line a table is parsed from (for flags that take several
 * words, such as --percent). */
typedef struct cli_argv {
    const char *verb;
    int argc;
    char **argv;
} cli_argv;

/* Store the value arg of flag o (NULL for a flag without one) into field,
 * the verb's struct at o->off. @return 0, CLI_HELP, or the exit status of
 * the usage error printed. */
typedef int (*cli_set_fn)(const cli_argv *a, const cli_opt *o, const char *arg, void *field);

struct cli_opt {
    const char *name;   /* the long flag without "--" */
    int has_arg;        /* no_argument or required_argument */
    cli_set_fn set;
    size_t off;         /* offset of the field set in the struct the table fills */
    double lo, hi;      /* cli_set_int, cli_set_float, cli_set_exact: the range */
    int value;          /* cli_set_switch: what it stores */
    unsigned given;     /* enum sched_policy_field bits the flag sets in cli_common.pol */
};

/* A flag's value: a string (const char *), an int, a float, a double kept
 * as typed (checked as a float: 0.3 x 20 must give 6, not 7), a size
 * (uint64_t, sched_parse_size); a switch stores o->value into an int. */
int cli_set_str(const cli_argv *a, const cli_opt *o, const char *arg, void *field);
int cli_set_int(const cli_argv *a, const cli_opt *o, const char *arg, void *field);
int cli_set_float(const cli_argv *a, const cli_opt *o, const char *arg, void *field);
int cli_set_exact(const cli_argv *a, const cli_opt *o, const char *arg, void *field);
int cli_set_size(const cli_argv *a, const cli_opt *o, const char *arg, void *field);
int cli_set_switch(const cli_argv *a, const cli_opt *o, const char *arg, void *field);

#define CLI_STR(name, off) {name, required_argument, cli_set_str, off, 0, 0, 0, 0}
#define CLI_INT(name, off, lo, hi, given) \
    {name, required_argument, cli_set_int, off, lo, hi, 0, given}
#define CLI_FLOAT(name, off, lo, hi) {name, required_argument, cli_set_float, off, lo, hi, 0, 0}
#define CLI_SWITCH(name, off, value, given) \
    {name, no_argument, cli_set_switch, off, 0, 0, value, given}

/* --percent: six values, "--percent 20 80 0 100 0 100" or "--percent
 * 20,80,0,100,0,100" (field: a sched_policy). */
int cli_set_percent(const cli_argv *a, const cli_opt *o, const char *arg, void *field);

/* The flags of a run on the block schedule (generate, eval, score): where
 * everything goes, the policy file, --plan, threads, quiet. T is the verb's
 * struct, with a cli_common c and a cli_run run. */
typedef struct cli_run {
    const char *policy_path;  /* --policy FILE */
    int plan_only, threads;
    int quiet;                /* --quiet: no progress line */
    int no_summary;           /* --no-summary: no end-of-run summary */
} cli_run;
#define CLI_PLACEMENT_OPTS(T)                                                               \
    CLI_INT("batch-size", offsetof(T, c.pol.gpu_batch_size), 1, 1 << 16,                    \
            SCHED_POLICY_GPU_BATCH_SIZE),                                                   \
    CLI_INT("gpu-batch-size", offsetof(T, c.pol.gpu_batch_size), 1, 1 << 16,                \
            SCHED_POLICY_GPU_BATCH_SIZE),                                                   \
    CLI_INT("num-gpu-batches", offsetof(T, c.pol.num_gpu_batches), 1, 1 << 16,              \
            SCHED_POLICY_NUM_GPU_BATCHES),                                                  \
    {"percent", required_argument, cli_set_percent, offsetof(T, c.pol), 0, 0, 0,            \
            SCHED_POLICY_PERCENT},                                                          \
    CLI_SWITCH("overlap", offsetof(T, c.pol.overlap), 1, SCHED_POLICY_OVERLAP),             \
    CLI_SWITCH("no-overlap", offsetof(T, c.pol.overlap), 0, SCHED_POLICY_OVERLAP),          \
    CLI_SWITCH("pin-weight", offsetof(T, c.pol.pin_weight), 1, SCHED_POLICY_PIN_WEIGHT),    \
    CLI_SWITCH("no-pin-weight", offsetof(T, c.pol.pin_weight), 0, SCHED_POLICY_PIN_WEIGHT), \
    CLI_STR("policy", offsetof(T, run.policy_path)),                                        \
    CLI_SWITCH("plan", offsetof(T, run.plan_only), 1, 0),                                   \
    CLI_INT("threads", offsetof(T, run.threads), 1, 4096, 0),                               \
    CLI_SWITCH("quiet", offsetof(T, run.quiet), 1, 0),                                      \
    CLI_SWITCH("no-summary", offsetof(T, run.no_summary), 1, 0)

/* The policy of a run: the defaults, run->policy_path over them, the flags
 * given in c over that (whatever their order), checked. @return 0 or the
 * exit status of the usage error printed. */
int cli_run_policy(const char *verb, const cli_run *run, const cli_common *c,
                   sched_policy *pol);

/* What a setter returns for --help: cli_parse stops and returns it. */
#define CLI_HELP (-1)

/* Parse argv (argv[0] is the verb) against the shared table, which fills
 * c, and the verb's own table (n entries), which fills dst; policy flags
 * add their bits to c->given. Flags may be abbreviated while unambiguous
 * and come in any order; a word left after them is a usage error.
 * @return 0, CLI_HELP (--help was given: print the help, exit 0), or the
 * exit status of the usage error printed. */
int cli_parse(const char *verb, int argc, char **argv, const cli_opt *own, int n, void *dst,
              cli_common *c);

#endif
