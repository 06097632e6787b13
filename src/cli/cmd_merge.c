/* cmd_merge.c: `flexh2o merge`, the outputs of the shards of one job
 * (generate --shard I/N, run anywhere without MPI) joined in the prompt
 * file's order (job_merge, src/gen/job_merge.c, does the joining):
 *
 *   flags and shards (merge_parse): OUT neither IN nor a shard, no shard
 *   twice -> job_merge -> the summary line, or the count of requests no
 *   shard has (exit status 3, the rest written)
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "err.h"
#include "job.h"

static const char merge_help[] =
    "usage: flexh2o merge --prompts IN.jsonl --out OUT.jsonl [--quiet] SHARD.jsonl...\n"
    "\n"
    "  joins the --out files of `flexh2o generate --shard I/N` over IN (every shard of\n"
    "  the job, in any order) into OUT in IN's order: byte for byte the file one run\n"
    "  over all of IN writes; memory does not grow with the job\n"
    "\n"
    "  --prompts FILE   the prompt file the shards ran (FILE.zst: zstd)\n"
    "  --out FILE       the joined completions, a new file (FILE.zst: one zstd frame per\n"
    "                   record)\n"
    "  --quiet          no summary line\n"
    "\n"
    "  A shard whose last record is torn (a killed run) is refused before anything is\n"
    "  written: finish it with generate --shard I/N --resume. Requests of IN that no\n"
    "  shard has are counted, the rest is written, and the exit status is 3. A shard\n"
    "  record out of IN's order (or not in IN) is an error, and OUT is removed.\n";

/* What the command line asks. */
typedef struct merge_args {
    const char *prompts, *out;
    int quiet;
    const char *const *shards; /* (n_shards) the words after the flags */
    int n_shards;
} merge_args;

/* The flags (abbreviated, --flag=value, before or after the shards) and
 * the shards into *a. @return 0, CLI_HELP, or the exit status of the usage
 * error printed. */
static int merge_parse(int argc, char **argv, merge_args *a)
{
    /* values past any char: getopt_long's optopt then tells a flag
     * without its value from an unknown short flag */
    enum { PROMPTS = 256, OUT, QUIET, HELP };
    static const struct option opts[] = {
        {"prompts", required_argument, NULL, PROMPTS},
        {"out", required_argument, NULL, OUT},
        {"quiet", no_argument, NULL, QUIET},
        {"help", no_argument, NULL, HELP},
        {0, 0, 0, 0},
    };
    *a = (merge_args){0};
    opterr = 0;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == PROMPTS)
            a->prompts = optarg;
        else if (ch == OUT)
            a->out = optarg;
        else if (ch == QUIET)
            a->quiet = 1;
        else if (ch == HELP)
            return CLI_HELP;
        else if (optopt >= PROMPTS)
            return cli_usage("merge", "%s needs a value", argv[optind - 1]);
        else
            return cli_unknown_flag("merge", argv[optind - 1]);
    }
    a->shards = (const char *const *)argv + optind; /* getopt moved them last */
    a->n_shards = argc - optind;
    if (!a->prompts || !a->out)
        return cli_usage("merge", "--prompts and --out are required");
    if (a->n_shards == 0)
        return cli_usage("merge", "give the shards' output files after the flags");
    if (cli_same_file(a->out, a->prompts))
        return cli_usage("merge", "--out is the prompt file %s; choose another --out",
                         a->prompts);
    for (int i = 0; i < a->n_shards; i++) {
        if (cli_same_file(a->out, a->shards[i]))
            return cli_usage("merge", "--out is the shard %s; choose another --out",
                             a->shards[i]);
        for (int k = 0; k < i; k++)
            if (cli_same_file(a->shards[k], a->shards[i]) ||
                strcmp(a->shards[k], a->shards[i]) == 0)
                return cli_usage("merge", "the shard %s is given twice (also as %s); give "
                                 "each once", a->shards[i], a->shards[k]);
    }
    return 0;
}

int cli_merge(int argc, char **argv)
{
    merge_args a;
    int rc = merge_parse(argc, argv, &a);
    if (rc == CLI_HELP) {
        fputs(merge_help, stdout);
        return 0;
    }
    if (rc)
        return rc;
    job_merge_stats st;
    if (job_merge(a.prompts, a.shards, a.n_shards, a.out, &st) < 0)
        return cli_fail();
    if (st.missing > 0) {
        fprintf(stderr, "[flexh2o] merge: %ld request%s of %s %s no record in any shard (bad "
                "prompt lines, or a shard not finished: rerun it with --resume)\n",
                st.missing, st.missing > 1 ? "s" : "", a.prompts,
                st.missing > 1 ? "have" : "has");
        return 3;
    }
    if (!a.quiet)
        fprintf(stderr, "[flexh2o] merge: %ld record%s from %d shard%s into %s\n", st.records,
                st.records == 1 ? "" : "s", a.n_shards, a.n_shards == 1 ? "" : "s", a.out);
    return 0;
}
