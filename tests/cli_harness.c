/* cli_harness.c: see cli_harness.h. */
#include "cli_harness.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include "err.h"
#include "model.h"
#include "off.h"
#include "model_config.h"

char cli_dir[256];
char cli_err[8192];
const char *cli_device = "cpu";

void cli_setup(void)
{
    err_clear();
    cli_device = "cpu";
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fh_test_cli_XXXXXX");
    cr_assert(mkdtemp(cli_dir));
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

int scratch_remove(const char *dir)
{
    return nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

void cli_teardown(void) { cr_assert_eq(scratch_remove(cli_dir), 0, "cannot remove %s", cli_dir); }

/* Run cmd (a shell command line for `cd cli_dir && ...`), stderr into
 * cli_err. @return the exit status, or -1. */
static int run_in_dir(const char *cmd_tail)
{
    char cmd[10000];
    snprintf(cmd, sizeof cmd, "cd %s && ( %s ) >stdout.txt 2>stderr.txt", cli_dir, cmd_tail);
    int st = system(cmd);
    char path[512];
    snprintf(path, sizeof path, "%s/stderr.txt", cli_dir);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(cli_err, 1, sizeof cli_err - 1, f) : 0;
    cli_err[n] = 0;
    if (f)
        fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Add --device cli_device to the flexh2o arguments args of a generate run
 * that names none. */
static void add_device(char *args, size_t len)
{
    if (!strncmp(args, "generate", 8) && !strstr(args, "--device")) {
        strncat(args, " --device ", len - strlen(args) - 1);
        strncat(args, cli_device, len - strlen(args) - 1);
    }
}

int cli_run(const char *fmt, ...)
{
    const char *bin = getenv("FLEXH2O_BIN");
    cr_assert(bin, "FLEXH2O_BIN must point at the flexh2o binary");
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    add_device(args, sizeof args);
    snprintf(cmd, sizeof cmd, "OMP_WAIT_POLICY=passive %s %s", bin, args);
    return run_in_dir(cmd);
}

int cli_run_mpi(int ranks, const char *env, const char *fmt, ...)
{
    const char *bin = getenv("FLEXH2O_BIN");
    cr_assert(bin, "FLEXH2O_BIN must point at the flexh2o binary");
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    add_device(args, sizeof args);
    snprintf(cmd, sizeof cmd, "%s mpirun --oversubscribe -n %d -x OMP_NUM_THREADS=1 "
             "-x OMP_WAIT_POLICY=passive %s%s%s %s %s", CLI_MPI_ENV, ranks, env ? "-x '" : "",
             env ? env : "", env ? "'" : "", bin, args);
    return run_in_dir(cmd);
}

int cli_spawn(const char *const *env, const char *const *argv)
{
    const char *args[64] = {"flexh2o"};
    int n = 1;
    for (; argv[n - 1] && n < 63; n++)
        args[n] = argv[n - 1];
    args[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(cli_dir) != 0)
            _exit(99);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        for (int i = 0; env && env[i]; i++) {
            char name[128];
            const char *eq = strchr(env[i], '=');
            snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - env[i]) : 127, env[i]);
            if (eq)
                setenv(name, eq + 1, 1);
            else
                unsetenv(name);
        }
        execv(getenv("FLEXH2O_BIN"), (char *const *)args);
        _exit(98);
    }
    return pid;
}

void cli_kill_once_written(const char *file, long bytes, const char *const *argv)
{
    pid_t pid = cli_spawn(NULL, argv);
    char path[600];
    snprintf(path, sizeof path, "%s/%s", cli_dir, file);
    struct stat st = {0};
    for (int t = 0; t < 20000 && (stat(path, &st) != 0 || st.st_size < bytes); t++)
        usleep(500);
    kill(pid, SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status), "the job ended before the kill (exit %d); make it longer",
              WEXITSTATUS(status));
}

int cli_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return run_in_dir(cmd);
}

void cli_write(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

char *cli_read(const char *name)
{
    char path[512], *buf;
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    cr_assert_eq(off_read_file(path, &buf, NULL), 0, "%s", err_msg());
    return buf;
}

void cli_write_zst(const char *name, const char *text, size_t chunk)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    size_t len = strlen(text);
    if (chunk == 0)
        chunk = len ? len : 1;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    for (size_t at = 0; at < len; at += chunk) {
        size_t k = len - at < chunk ? len - at : chunk, cap = ZSTD_compressBound(k);
        char *z = malloc(cap);
        size_t zn = ZSTD_compressCCtx(cctx, z, cap, text + at, k, 3);
        cr_assert(!ZSTD_isError(zn), "%s", ZSTD_getErrorName(zn));
        cr_assert_eq(fwrite(z, 1, zn, f), zn);
        free(z);
    }
    ZSTD_freeCCtx(cctx);
    cr_assert_eq(fclose(f), 0);
}

char *cli_read_zst(const char *name, int *n_frames, long **ends)
{
    char path[512], *raw;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    cr_assert_eq(off_read_file(path, &raw, &len), 0, "%s", err_msg());
    ZSTD_DCtx *d = ZSTD_createDCtx();
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    long *end = NULL;
    int frames = 0;
    for (size_t at = 0; at < len; frames++) {
        size_t fs = ZSTD_findFrameCompressedSize(raw + at, len - at);
        cr_assert(!ZSTD_isError(fs), "%s: frame %d at byte %zu: %s", path, frames, at,
                  ZSTD_getErrorName(fs));
        ZSTD_inBuffer in = {raw + at, fs, 0};
        for (size_t left = 1; left != 0;) {
            if (cap - n < (1 << 15)) {
                cap *= 2;
                out = realloc(out, cap);
            }
            ZSTD_outBuffer o = {out + n, cap - n - 1, 0};
            left = ZSTD_decompressStream(d, &o, &in);
            cr_assert(!ZSTD_isError(left), "%s: frame %d: %s", path, frames,
                      ZSTD_getErrorName(left));
            n += o.pos;
        }
        at += fs;
        if ((frames & (frames - 1)) == 0) /* 0, 1, 2, 4, ...: room doubled */
            end = realloc(end, sizeof *end * (size_t)(frames ? 2 * frames : 1));
        end[frames] = (long)at;
    }
    out[n] = 0;
    free(raw);
    ZSTD_freeDCtx(d);
    if (n_frames)
        *n_frames = frames;
    if (ends)
        *ends = end;
    else
        free(end);
    return out;
}

int cli_exists(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    return access(path, F_OK) == 0;
}

const sched_model *shape_of(const model_config *c)
{
    static sched_model m;
    model_sched_shape(c, &m);
    return &m;
}
