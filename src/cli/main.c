/* main.c: the flexh2o command line, one verb per file (cli.h):
 *
 *   flexh2o generate   --model DIR | --dummy NAME  --prompts IN --out OUT ...
 *   flexh2o search     --model DIR | --dummy NAME  --gpu-mem SIZE ...  (a policy)
 *   flexh2o convert    --model HF_DIR --out STORE  (a weight store)
 *   flexh2o calibrate  [--offload-dir DIR] [--out PROFILE.json]  (a hardware profile)
 *   flexh2o tokenize   --model DIR        (stdin lines -> JSON id arrays)
 *   flexh2o make-model --config NAME --out DIR
 *   flexh2o merge      --prompts IN --out OUT SHARD...  (generate --shard outputs)
 *
 * `flexh2o VERB --help` describes each. Every failure prints one line
 * "flexh2o: <what>; <what to do>" and exits non-zero; output already
 * written is never touched.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "cli_args.h"
#include "dist.h"
#include "fh_config.h"

static const struct verb {
    const char *name;
    int (*run)(int argc, char **argv);
    int ranks;       /* 1: runs as one job over MPI ranks (mpirun -n N) */
} verbs[] = {
    {"generate", cli_generate, 1},   {"search", cli_search, 0},
    {"convert", cli_convert, 0},     {"calibrate", cli_calibrate, 0},
    {"tokenize", cli_tokenize, 0},   {"make-model", cli_make_model, 0},
    {"eval", cli_eval, 1},           {"score", cli_score, 1},
    {"merge", cli_merge, 0},
};

/* Run verb v, as one rank of a job when mpirun started us. @return the
 * exit status. */
static int run_verb(const struct verb *v, int argc, char **argv)
{
    if (dist_init(&argc, &argv) < 0)
        return cli_fail();
    int rc;
    if (dist_active() && !v->ranks)
        rc = cli_error(2, "%s runs in one process (generate, eval and score run over MPI "
                       "ranks); run it without mpirun", v->name);
    else
        rc = v->run(argc - 1, argv + 1);
    dist_finalize();
    return rc;
}

/* The CPU kernels and OpenBLAS run on libgomp's threads, one per core. By
 * default a thread that finishes its share of a parallel region spins for
 * a while (about 300 000 iterations) before it sleeps: on a quiet machine
 * that saves a wake-up per region, but when another process takes a core
 * the spinning thread keeps its own core busy while the thread sharing a
 * core with the intruder finishes, so every region waits for the slowest
 * thread: decode of opt-125m fell 25x with one core busy on the 2-core
 * VM. A spin of 1000 iterations lets the waiting thread give its core to
 * the slow one soon (2.2x with a core busy, as fast as libgomp's default
 * alone); a passive wait costs 30% alone (benchmarks/bench_contention.py,
 * results/cpu-2026-12-02/omp-wait-contention.md). libgomp reads its
 * environment when it loads, before main, so the setting takes effect by
 * executing the program again with it; a user's own OMP_WAIT_POLICY or
 * GOMP_SPINCOUNT wins, and FLEXH2O_OMP_WAIT=libgomp keeps libgomp's
 * default. */
#define FH_OMP_SPIN "1000"
/*
 * And OpenBLAS: Debian's 0.3.21 runs its generic SSE3 kernels ("Prescott")
 * on a CPU it does not know, a Xeon of family 6 model 207 among them:
 * sgemm at 2048 rows 0.036 TFLOP/s instead of 0.17 with its SkylakeX
 * kernels (results/cpu-xeon-2026-12-05). OpenBLAS too reads its
 * OPENBLAS_CORETYPE as it loads, so the same execution sets it where
 * backend_cpu_blas_core_hint names a core; a user's own setting wins.
 * One execv for both: each setting is made only where absent, so the
 * second run finds them and goes on.
 */
static void exec_with_env(char **argv)
{
    int omp = 0, blas = 0;
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") && !getenv("FLEXH2O_OMP_WAIT"))
        omp = setenv("GOMP_SPINCOUNT", FH_OMP_SPIN, 1) == 0 &&
              setenv("FLEXH2O_OMP_WAIT", "flexh2o", 1) == 0;
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : backend_cpu_blas_core_hint();
    if (core)
        blas = setenv("OPENBLAS_CORETYPE", core, 1) == 0 &&
               setenv("FLEXH2O_BLAS_CORE", "flexh2o", 1) == 0;
    if (omp || blas)
        execv("/proc/self/exe", argv);
    /* no /proc: run on with libgomp's and OpenBLAS's defaults */
    if (omp)
        unsetenv("GOMP_SPINCOUNT"), unsetenv("FLEXH2O_OMP_WAIT");
    if (blas)
        unsetenv("OPENBLAS_CORETYPE"), unsetenv("FLEXH2O_BLAS_CORE");
}

int main(int argc, char **argv)
{
    exec_with_env(argv);
    /* a file-size limit makes writes fail with EFBIG (reported, output kept)
     * instead of killing the process */
    signal(SIGXFSZ, SIG_IGN);
    const char *verb = argc > 1 ? argv[1] : "";
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strcmp(verb, verbs[i].name) == 0)
            return run_verb(&verbs[i], argc, argv);
    if (strcmp(verb, "--version") == 0) {
        const char *pol = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
        const char *hint = backend_cpu_blas_core_hint();
        printf("flexh2o %s (CUDA %s; OpenMP wait: %s%s; OpenBLAS core: %s%s%s%s)\n",
               FH_VERSION, FH_HAVE_CUDA ? "built" : "not built",
               pol ? "OMP_WAIT_POLICY=" : spin ? "GOMP_SPINCOUNT=" : "libgomp's default",
               pol ? pol : spin ? spin : "", backend_cpu_blas_core(),
               getenv("FLEXH2O_BLAS_CORE") ? " (OPENBLAS_CORETYPE set by flexh2o)" : "",
               hint ? ", its generic kernels: OPENBLAS_CORETYPE=" : "", hint ? hint : "");
        return 0;
    }
    fputs("usage: flexh2o <", stderr);
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        fprintf(stderr, "%s%s", i ? "|" : "", verbs[i].name);
    fputs("> [--help]\n", stderr);
    return strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 ? 0 : 2;
}
