/* cli_harness.h: running the flexh2o binary (FLEXH2O_BIN) from a Criterion
 * test inside a scratch directory, shared by the tests that drive the CLI.
 *
 * cli_setup() makes the directory (cli_dir) and cli_teardown() removes it:
 * use them as a suite's .init / .fini. Suites with scratch directories of
 * their own remove them with scratch_remove(). */
#ifndef FH_CLI_HARNESS_H
#define FH_CLI_HARNESS_H

#include <stddef.h>

#include "fh_config.h"

extern char cli_dir[256];     /* the scratch directory of the running test */
extern char cli_err[8192];    /* stderr of the last cli_run */
extern const char *cli_device; /* --device given to generate runs ("cpu") */

void cli_setup(void);
void cli_teardown(void);

/* Skip the running test of a cli_setup suite: Criterion does not run the
 * suite's .fini after a skip, so the scratch directory goes first. */
#define cli_skip(...)                                                          \
    do {                                                                       \
        cli_teardown();                                                        \
        cr_skip_test(__VA_ARGS__);                                             \
    } while (0)

/* Remove dir and everything below it (any test's scratch directory).
 * @return 0 or -1. */
int scratch_remove(const char *dir);

/* Run `flexh2o <args>` (printf-style shell fragment) in cli_dir: stdout to
 * cli_dir/stdout.txt, stderr into cli_err. A generate run without --device
 * gets --device cli_device, so CPU-engine tests stay on the CPU where a GPU
 * is present; OpenMP waits passively (tests share few cores).
 * @return the exit status, or -1 when the process did not exit. */
int cli_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The environment of an mpirun of the tests: Open MPI run as root (CI),
 * and, for sanitizer builds, Open MPI's own allocations left out of the
 * leak report (tests/lsan-mpi.supp; the slow unwinder walks through its
 * libraries, built without frame pointers, to the frames the file names)
 * and its own threads and locks out of ThreadSanitizer's
 * (tests/tsan-mpi.supp). */
#define CLI_MPI_ENV                                                                 \
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "                    \
    "OMPI_MCA_mca_base_component_disable_dlclose=1 "                                \
    "LSAN_OPTIONS=suppressions=" FH_SOURCE_ROOT "/tests/lsan-mpi.supp:print_suppressions=0 " \
    "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0 "               \
    "TSAN_OPTIONS=${TSAN_OPTIONS:+$TSAN_OPTIONS:}suppressions=" FH_SOURCE_ROOT               \
    "/tests/tsan-mpi.supp"

/* cli_run as `mpirun -n ranks` (Open MPI, root allowed, oversubscribed,
 * one OpenMP thread per rank); env (may be NULL): "VAR=value" given to
 * every rank (-x). @return mpirun's exit status, or -1. */
int cli_run_mpi(int ranks, const char *env, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Run a shell command line in cli_dir (stderr into cli_err). @return its
 * exit status, or -1. */
int cli_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Start `flexh2o argv...` (argv NULL-terminated, argv[0] the verb) in
 * cli_dir, stderr to /dev/null, with env (NULL-terminated, may be NULL):
 * "NAME=value" set, "NAME" unset in the child. @return its pid. */
int cli_spawn(const char *const *env, const char *const *argv);
/* Start `flexh2o argv...` (argv NULL-terminated, argv[0] the verb) in
 * cli_dir, stderr to /dev/null, and SIGKILL it once cli_dir/file holds at
 * least `bytes`: a killed job for --resume to finish. A job that ends
 * before (or never writes that much in 10 s) fails the test. */
void cli_kill_once_written(const char *file, long bytes, const char *const *argv);

/* Write text to cli_dir/name. */
void cli_write(const char *name, const char *text);
/* The contents of cli_dir/name (NUL-terminated); the caller frees. */
char *cli_read(const char *name);
/* Write text to cli_dir/name as zstd frames of chunk bytes of text each
 * (0: one frame for all of it), straight through libzstd as another
 * program would: a frame may cut a line or hold several. */
void cli_write_zst(const char *name, const char *text, size_t chunk);
/* cli_read of a zstd file, decompressed frame by frame with libzstd
 * (not with job_file.c); *n_frames (may be NULL) gets the frame count, and
 * *ends (may be NULL; the caller frees) each frame's end offset. A damaged
 * frame fails the test. */
char *cli_read_zst(const char *name, int *n_frames, long **ends);
/* 1 when cli_dir/name exists. */
int cli_exists(const char *name);

/* The scheduler's view of model shape c (model_sched_shape), in a buffer
 * of the calling test that the next call overwrites. */
struct model_config;
struct sched_model;
const struct sched_model *shape_of(const struct model_config *c);

#endif
