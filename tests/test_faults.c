/* test_faults.c: I/O faults injected through offload/'s hook (off.h,
 * FLEXH2O_FAULT) and kill -9, on both disk engines (io_uring and the
 * pread/pwrite threads, FLEXH2O_NO_URING=1):
 *
 *   - the hook itself: its spec is checked (op=truncate included), and
 *     the disk engine reports a failed read / write / completion by file,
 *     offset and errno, resumes a short transfer and retries EAGAIN; a
 *     failed reservation or store fsync leaves no file behind;
 *   - `generate` with weights and KV on disk, H2O and --trace-evictions,
 *     failing in the middle of the job (KV and weight reads and writes,
 *     io_uring completions, the reservation) and at the output and trace
 *     files (ENOSPC, a short write then ENOSPC, a failed fsync): exit 1,
 *     one error line naming the file, the offset and the errno, every
 *     record before it intact, and --resume without the fault gives the
 *     uninterrupted run's bytes;
 *   - the job files' reads and --resume's cut: the prompt file (plain and
 *     .zst) fails its first read, --resume's scans of the existing output
 *     fail a read, the cut of its torn last record fails: exit 1, one
 *     error line naming the file and the errno, no output or the output
 *     untouched, and a resume without the fault completes the job;
 *   - calibrate: the fdatasync of its scratch file fails (op=fsync): the
 *     error names the file, which is removed;
 *   - a torture test: `generate` SIGKILLed again and again at seeded
 *     moments (while it starts, and a little after a record lands),
 *     resumed each time, ends with the uninterrupted output and trace,
 *     each id once.
 * Batches of one, so that a resumed run's batches are the first run's. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "off.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-llama"
#define N_PROMPTS 8

static void setup(void)
{
    cli_setup();
    unsetenv("FLEXH2O_FAULT");
    unsetenv("FLEXH2O_NO_URING");
    off_fault_set(NULL);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/off", cli_dir);
    cr_assert_eq(mkdir(dir, 0755), 0);
}

static void teardown(void)
{
    unsetenv("FLEXH2O_FAULT");
    unsetenv("FLEXH2O_NO_URING");
    off_fault_set(NULL);
    cli_teardown();
}

TestSuite(faults, .init = setup, .fini = teardown);

static void need_hook(void)
{
    if (!off_fault_built())
        cli_skip("built with -Dfault_inject=false: no FLEXH2O_FAULT hook to test");
}

/* engine 0: io_uring (where the kernel allows it), 1: pread/pwrite threads */
static void use_engine(int engine)
{
    if (engine)
        setenv("FLEXH2O_NO_URING", "1", 1);
    else
        unsetenv("FLEXH2O_NO_URING");
}

/* Skip an io_uring test where the kernel (or the build) has no io_uring:
 * the engine would fall back and the test would measure the fallback. */
static void need_engine(int engine)
{
    need_hook();
    if (engine)
        return;
    off_disk *d;
    unsetenv("FLEXH2O_NO_URING");
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    int uring = strcmp(off_disk_kind(d), "io_uring") == 0;
    off_disk_destroy(d);
    if (!uring)
        cli_skip("io_uring is not available here (built without liburing, or refused by the "
                 "kernel): the pread/pwrite twin of this test covers the fallback");
}

static const char *engine_name(int engine)
{
    return engine ? "pread/pwrite" : "io_uring";
}

/* ------------------------------------------------------- the hook itself */

Test(faults, spec_is_checked)
{
    need_hook();
    static const struct {
        const char *spec, *msg;
    } bad[] = {
        {"op=seek,errno=EIO", "op=seek: give read, write"},
        {"op=write", "exactly one of errno=E and short=BYTES"},
        {"op=write,errno=EIO,short=3", "exactly one of errno=E and short=BYTES"},
        {"op=read,nth=0,errno=EIO", "nth=0: give a count from 1"},
        {"op=read,errno=ENOTANERRNO", "errno=ENOTANERRNO: give a name"},
        {"op=fsync,short=5", "short= needs op=read, write or complete"},
        {"op=truncate,short=5", "short= needs op=read, write or complete"},
        {"op=read,when=3,errno=EIO", "unknown key \"when\""},
        {"nth=3,errno=EIO", "a rule needs op="},
        {"op=read,errno", "\"errno\" is not key=value"},
        {"op=read,errno=EIO;op=read,errno=EIO;op=read,errno=EIO;op=read,errno=EIO;"
         "op=read,errno=EIO", "at most 4 rules"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear();
        cr_assert_eq(off_fault_set(bad[i].spec), -EINVAL, "%s was taken", bad[i].spec);
        cr_assert(strstr(err_msg(), bad[i].msg), "%s: %s", bad[i].spec, err_msg());
    }
    cr_assert_eq(off_fault_set("op=write,nth=2,times=0,errno=28,path=x;op=complete,short=0;"),
                 0, "%s", err_msg());
    cr_assert_eq(off_fault_set("op=truncate,errno=EIO;op=fsync,nth=2,errno=EROFS"), 0, "%s",
                 err_msg());
    cr_assert_eq(off_fault_set(""), 0);
    cr_assert_eq(off_fault_set(NULL), 0);
    cr_assert_eq(off_fault_fired(), 0);
}

/* A file of n bytes of a pattern that depends on the offset. */
static int pattern_file(const char *path, size_t n, uint8_t **data)
{
    int fd = off_file_open(path, 1, n, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    uint8_t *p = off_alloc_aligned(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 2654435761u) >> 13);
    cr_assert_eq(pwrite(fd, p, n, 0), (ssize_t)n);
    *data = p;
    return fd;
}

/* One engine: a failed write and read name the file, the offset and the
 * errno, and the engine goes on working; a short read (cut at 4 KiB, the
 * file being O_DIRECT) is resumed and the data are right; EAGAIN is
 * retried; the nth and times of a rule count only its own calls. */
static void engine_faults(int engine)
{
    need_engine(engine);
    use_engine(engine);
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    cr_assert_str_eq(off_disk_kind(d), engine ? "pread/pwrite threads" : "io_uring",
                     "FLEXH2O_NO_URING does not choose the engine");
    char path[300];
    snprintf(path, sizeof path, "%s/kv.bin", cli_dir);
    const size_t n = 3 << 20;
    uint8_t *want, *buf = off_alloc_aligned(n);
    int fd = pattern_file(path, n, &want);

    /* the 2nd write of kv.bin fails: the 2nd 1 MiB chunk of the request */
    cr_assert_eq(off_fault_set("op=write,nth=2,errno=ENOSPC,path=kv.bin"), 0);
    off_io w = {fd, 1, want, n, 0};
    err_clear();
    cr_assert_eq(off_disk_rw(d, &w, 1, "KV of layer 1, batch 0"), -ENOSPC);
    cr_assert_eq(off_fault_fired(), 1);
    const char *m = err_msg();
    cr_assert(strstr(m, path) && strstr(m, "write of 3.0 MiB at offset 0 failed (No space left "
                                           "on device) for KV of layer 1, batch 0; free space"),
              "%s: %s", engine_name(engine), m);

    /* the 3rd read fails with EIO, a later one is fine again */
    cr_assert_eq(off_fault_set("op=read,nth=3,errno=EIO"), 0);
    off_io r = {fd, 0, buf, 4096, 8192};
    for (int i = 0; i < 2; i++)
        cr_assert_eq(off_disk_rw(d, &r, 1, "weights of layer 0"), 0, "%s", err_msg());
    err_clear();
    cr_assert_eq(off_disk_rw(d, &r, 1, "weights of layer 0"), -EIO);
    cr_assert(strstr(err_msg(), "read of 4.0 KiB at offset 8192 failed (Input/output error) "
                                "for weights of layer 0"), "%s", err_msg());
    err_clear();
    cr_assert_eq(off_disk_rw(d, &r, 1, "weights of layer 0"), 0, "%s", err_msg());

    /* short reads from the 2nd on, all of them: every chunk moves 4 KiB at a
     * time and is resumed from where it stopped */
    cr_assert_eq(off_fault_set("op=read,nth=2,times=0,short=5000"), 0);
    memset(buf, 0, n);
    off_io all = {fd, 0, buf, n, 0};
    cr_assert_eq(off_disk_rw(d, &all, 1, "everything"), 0, "%s", err_msg());
    cr_assert_gt(off_fault_fired(), 500, "only %ld short reads", off_fault_fired());
    cr_assert_eq(memcmp(buf, want, n), 0, "%s: a resumed short read misplaced data",
                 engine_name(engine));

    /* EAGAIN three times: retried, not reported */
    cr_assert_eq(off_fault_set(engine ? "op=read,times=3,errno=EAGAIN"
                                      : "op=complete,times=3,errno=EAGAIN"), 0);
    memset(buf, 0, 4096);
    cr_assert_eq(off_disk_rw(d, &r, 1, "retry"), 0, "%s", err_msg());
    cr_assert_eq(off_fault_fired(), 3);
    cr_assert_eq(memcmp(buf, want + 8192, 4096), 0);

    /* a completion that says it read nothing: the end of the file */
    if (!engine) {
        cr_assert_eq(off_fault_set("op=complete,short=0"), 0);
        err_clear();
        cr_assert_eq(off_disk_rw(d, &r, 1, "KV of layer 2, batch 0"), -EIO);
        cr_assert(strstr(err_msg(), "reaches past the end of the file"), "%s", err_msg());
    }
    off_fault_set(NULL);
    off_file_close(fd);
    off_disk_destroy(d);
    free(buf);
    free(want);
}

Test(faults, engine_io_uring) { engine_faults(0); }
Test(faults, engine_pread) { engine_faults(1); }

/* A failed reservation names the file and removes it; a failed write or
 * fsync of `convert`'s store leaves no store and no .tmp behind. */
Test(faults, reservation_and_store_writer)
{
    need_hook();
    char path[300];
    snprintf(path, sizeof path, "%s/off/weights.bin", cli_dir);
    cr_assert_eq(off_fault_set("op=fallocate,errno=ENOSPC,path=weights.bin"), 0);
    err_clear();
    cr_assert_eq(off_file_open(path, 1, 1 << 20, NULL), -ENOSPC);
    cr_assert(strstr(err_msg(), "cannot reserve 1.00 MiB for") && strstr(err_msg(), path) &&
              strstr(err_msg(), "No space left on device"), "%s", err_msg());
    cr_assert_neq(access(path, F_OK), 0, "a failed reservation left %s", path);
    off_fault_set(NULL);

    static const struct {
        const char *fault, *msg;
    } cases[] = {
        {"op=fsync,errno=EIO,path=model.flxh2o.tmp",
         "model.flxh2o.tmp: fsync failed (Input/output error)"},
        {"op=write,nth=3,errno=ENOSPC,path=model.flxh2o.tmp",
         "failed (No space left on device) for segment"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("FLEXH2O_FAULT", cases[i].fault, 1);
        cr_assert_eq(cli_run("convert --model " TINY " --out st"), 1, "%s", cli_err);
        cr_assert(strstr(cli_err, cases[i].msg), "%s", cli_err);
        cr_assert(!cli_exists("st/model.flxh2o") && !cli_exists("st/model.flxh2o.tmp"),
                  "%s left a file behind", cases[i].fault);
    }
    unsetenv("FLEXH2O_FAULT");
    cr_assert_eq(cli_run("convert --model " TINY " --out st"), 0, "%s", cli_err);
    cr_assert(cli_exists("st/model.flxh2o"));
}

/* ------------------------------------------------------- generate */

static void write_prompts(int n, int max_new)
{
    char *job = calloc((size_t)n, 256);
    for (int i = 0; i < n; i++) {
        char line[256];
        /* sampled (the draw depends on seed and id only) and greedy lines */
        if (i % 2)
            snprintf(line, sizeof line, "{\"id\": \"q%d\", \"prompt\": \"The quick brown fox "
                     "%d\", \"max_new_tokens\": %d, \"temperature\": 0.8, \"seed\": %d}\n", i,
                     i, max_new, i);
        else
            snprintf(line, sizeof line, "{\"id\": \"q%d\", \"prompt\": \"Once upon a time %d\", "
                     "\"max_new_tokens\": %d}\n", i, i, max_new);
        strcat(job, line);
    }
    cli_write("p.jsonl", job);
    free(job);
}

/* Weights and KV all on disk, H2O, its trace; model: TINY or a store. */
#define GEN "generate --prompts p.jsonl --quiet --no-summary --batch-size 1 --ignore-eos " \
            "--percent 0 0 0 0 100 0 --offload-dir off --kv-policy h2o --kv-ratio 0.5 "   \
            "--sinks 1 --trace-evictions "

/* Run generate into out (and trace) with fault (NULL: none) on engine. */
static int gen(int engine, const char *fault, const char *model, const char *out,
               const char *trace, int resume)
{
    use_engine(engine);
    if (fault)
        setenv("FLEXH2O_FAULT", fault, 1);
    else
        unsetenv("FLEXH2O_FAULT");
    int rc = cli_run(GEN "%s --model %s --out %s%s", trace, model, out,
                     resume ? " --resume" : "");
    unsetenv("FLEXH2O_FAULT");
    return rc;
}

/* The uninterrupted run: ref.jsonl and ref-ev.jsonl. */
static void reference(const char *model)
{
    write_prompts(N_PROMPTS, 24);
    cr_assert_eq(gen(0, NULL, model, "ref.jsonl", "ref-ev.jsonl", 0), 0, "%s", cli_err);
}

/* stderr holds exactly one error line (the hook's own "[flexh2o] ..."
 * lines aside): "flexh2o: " and each of the needles. */
static void one_error_line(const char *what, const char *const *needles, int n)
{
    const char *line = NULL;
    int count = 0;
    for (const char *p = cli_err; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) + 1 : strlen(p);
        if (strncmp(p, "[flexh2o] ", 10) != 0) {
            line = p;
            count++;
        }
        p += len;
    }
    cr_assert_eq(count, 1, "%s: %d error lines, want one:\n%s", what, count, cli_err);
    cr_assert_eq(strncmp(line, "flexh2o: ", 9), 0, "%s: %s", what, line);
    for (int i = 0; i < n; i++)
        cr_assert(needles[i] && strstr(line, needles[i]), "%s: the error does not say \"%s\": %s",
                  what, needles[i] ? needles[i] : "(null)", line);
    cr_assert(strstr(cli_err, "[flexh2o] FLEXH2O_FAULT: "), "%s: the fault never fired:\n%s",
              what, cli_err);
}

/* name holds whole lines of ref (a prefix of it, torn bytes after the last
 * '\n' aside). @return the lines. */
static int intact_prefix(const char *what, const char *name, const char *ref)
{
    char *got = cli_read(name), *want = cli_read(ref);
    char *end = strrchr(got, '\n');
    size_t whole = end ? (size_t)(end - got) + 1 : 0;
    cr_assert(whole <= strlen(want) && memcmp(got, want, whole) == 0,
              "%s: %s is not a prefix of the uninterrupted %s", what, name, ref);
    int lines = 0;
    for (size_t i = 0; i < whole; i++)
        lines += got[i] == '\n';
    free(got);
    free(want);
    return lines;
}

static void same_file(const char *what, const char *a, const char *b)
{
    char *x = cli_read(a), *y = cli_read(b);
    cr_assert(strcmp(x, y) == 0, "%s: %s differs from the uninterrupted %s", what, a, b);
    free(x);
    free(y);
}

/* Remove the outputs of the last job. */
static void fresh(void)
{
    static const char *const names[] = {"out.jsonl", "ev.jsonl", "out.jsonl.zst",
                                        "ev.jsonl.zst"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s/%s", cli_dir, names[i]);
        unlink(p);
    }
}

typedef struct fault_case {
    const char *fault;    /* FLEXH2O_FAULT */
    const char *file;     /* the file the error must name (NULL: the job succeeds) */
    const char *errstr;   /* and its errno */
    int uring_only;
} fault_case;

/* Each case on engine: fail, check the message and the records, resume. */
static void mid_job(int engine, const char *model, const fault_case *cs, int n)
{
    for (int i = 0; i < n; i++) {
        const fault_case *c = &cs[i];
        if (c->uring_only && engine)
            continue;
        char what[300];
        snprintf(what, sizeof what, "%s, %s", engine_name(engine), c->fault);
        fresh();
        int rc = gen(engine, c->fault, model, "out.jsonl", "ev.jsonl", 0);
        if (!c->file) { /* resumed inside: no error at all */
            cr_assert_eq(rc, 0, "%s: %s", what, cli_err);
            cr_assert(strstr(cli_err, "[flexh2o] FLEXH2O_FAULT: "), "%s: never fired", what);
            same_file(what, "out.jsonl", "ref.jsonl");
            same_file(what, "ev.jsonl", "ref-ev.jsonl");
            continue;
        }
        cr_assert_eq(rc, 1, "%s: exit %d\n%s", what, rc, cli_err);
        const char *needles[] = {c->file, "offset ", c->errstr, "--resume"};
        one_error_line(what, needles, 4);
        int done = intact_prefix(what, "out.jsonl", "ref.jsonl");
        cr_assert(done > 0 && done < N_PROMPTS, "%s: %d of %d records before the fault: not "
                  "in the middle of the job", what, done, N_PROMPTS);
        intact_prefix(what, "ev.jsonl", "ref-ev.jsonl");
        rc = gen(!engine, NULL, model, "out.jsonl", "ev.jsonl", 1); /* the other engine */
        cr_assert_eq(rc, 0, "%s, resumed: %s", what, cli_err);
        same_file(what, "out.jsonl", "ref.jsonl");
        same_file(what, "ev.jsonl", "ref-ev.jsonl");
    }
}

/* KV writes and reads, weight reads, an io_uring completion, a short
 * weight read that is resumed, a failed reservation on resuming: in the
 * middle of a generate pass. The counts put each fault after a few
 * records (the test checks that they do). */
static const fault_case pass_cases[] = {
    {"op=write,nth=150,errno=EIO,path=kv.bin", "off/kv.bin: write of", "Input/output error", 0},
    {"op=write,nth=300,times=0,errno=ENOSPC,path=kv.bin", "off/kv.bin: write of",
     "No space left on device", 0},
    {"op=write,nth=200,short=0,path=kv.bin", "off/kv.bin: write of", "Input/output error", 0},
    {"op=read,nth=250,errno=EIO,path=kv.bin", "off/kv.bin: read of", "Input/output error", 0},
    {"op=read,nth=200,errno=EIO,path=weights.bin", "off/weights.bin: read of",
     "Input/output error", 0},
    {"op=complete,nth=600,errno=EIO", "off/", "Input/output error", 1},
    {"op=read,nth=100,times=40,short=4096,path=weights.bin", NULL, NULL, 0},
    {"op=write,nth=50,times=20,short=4096,path=kv.bin", NULL, NULL, 0},
};

static void pass_faults(int engine)
{
    need_engine(engine);
    reference(TINY);
    mid_job(engine, TINY, pass_cases, (int)(sizeof pass_cases / sizeof pass_cases[0]));

    /* the reservation fails on resuming a job: the records stay, the next
     * resume completes it */
    fresh();
    cr_assert_eq(gen(engine, "op=write,nth=4,errno=ENOSPC,path=out.jsonl", TINY, "out.jsonl",
                     "ev.jsonl", 0), 1);
    cr_assert_eq(gen(engine, "op=fallocate,errno=ENOSPC,path=kv.bin", TINY, "out.jsonl",
                     "ev.jsonl", 1), 1);
    const char *needles[] = {"cannot reserve", "off/kv.bin", "No space left on device"};
    one_error_line("fallocate", needles, 3);
    cr_assert_eq(intact_prefix("fallocate", "out.jsonl", "ref.jsonl"), 3);
    cr_assert_eq(gen(engine, NULL, TINY, "out.jsonl", "ev.jsonl", 1), 0, "%s", cli_err);
    same_file("fallocate", "out.jsonl", "ref.jsonl");
    same_file("fallocate", "ev.jsonl", "ref-ev.jsonl");
}

Test(faults, mid_pass_io_uring) { pass_faults(0); }
Test(faults, mid_pass_pread) { pass_faults(1); }

/* Weights streamed from a converted store (O_DIRECT, checksummed): a
 * failed segment read names the store. */
Test(faults, mid_pass_store_read)
{
    need_hook();
    /* f32: the CPU backend's type, so that the store's own file streams */
    cr_assert_eq(cli_run("convert --model " TINY " --out st --dtype f32"), 0, "%s", cli_err);
    reference("st");
    static const fault_case cs[] = {
        {"op=read,nth=200,errno=EIO,path=model.flxh2o", "st/model.flxh2o: read of",
         "Input/output error", 0},
    };
    for (int engine = 0; engine < 2; engine++)
        mid_job(engine, "st", cs, 1);
}

/* The output and trace files: the Nth record's write fails with ENOSPC, a
 * write is short and the next fails, a short write alone (resumed), the
 * close's fsync fails; plain and .zst. */
static void output_faults(int engine)
{
    need_engine(engine);
    reference(TINY);
    static const fault_case cs[] = {
        {"op=write,nth=3,errno=ENOSPC,path=out.jsonl", "out.jsonl: write of",
         "No space left on device", 0},
        {"op=write,nth=5,short=10,path=out.jsonl;op=write,nth=6,errno=ENOSPC,path=out.jsonl",
         "out.jsonl: write of", "No space left on device", 0},
        {"op=write,nth=2,times=0,short=7,path=out.jsonl", NULL, NULL, 0},
        {"op=write,nth=60,errno=EIO,path=ev.jsonl", "ev.jsonl: write of", "Input/output error",
         0},
        {"op=write,nth=90,short=100,path=ev.jsonl;op=write,nth=91,times=0,errno=EDQUOT,"
         "path=ev.jsonl", "ev.jsonl: write of", "Disk quota exceeded", 0},
    };
    mid_job(engine, TINY, cs, (int)(sizeof cs / sizeof cs[0]));

    /* fsync at the end: every record is there, the job says it may not be
     * on the disk; a resume has nothing left to do */
    fresh();
    cr_assert_eq(gen(engine, "op=fsync,errno=EIO,path=out.jsonl", TINY, "out.jsonl",
                     "ev.jsonl", 0), 1);
    const char *needles[] = {"out.jsonl: fsync failed (Input/output error) after ", " bytes",
                             "--resume"};
    one_error_line("fsync", needles, 3);
    same_file("fsync", "out.jsonl", "ref.jsonl");
    cr_assert_eq(gen(engine, NULL, TINY, "out.jsonl", "ev.jsonl", 1), 0, "%s", cli_err);
    same_file("fsync", "out.jsonl", "ref.jsonl");
    same_file("fsync", "ev.jsonl", "ref-ev.jsonl");

    /* .zst: the record's frame is torn by a short write then ENOSPC; the
     * resume drops it and the frames decompress to the plain bytes */
    cr_assert_eq(gen(engine, "op=write,nth=4,short=9,path=out.jsonl.zst;op=write,nth=5,"
                     "errno=ENOSPC,path=out.jsonl.zst", TINY, "out.jsonl.zst", "ev.jsonl.zst",
                     0), 1);
    const char *zn[] = {"out.jsonl.zst: write of", "No space left on device", "offset "};
    one_error_line("zst", zn, 3);
    cr_assert_eq(gen(!engine, NULL, TINY, "out.jsonl.zst", "ev.jsonl.zst", 1), 0, "%s",
                 cli_err);
    cr_assert(strstr(cli_err, "out.jsonl.zst: dropping a torn last record"), "%s", cli_err);
    int frames;
    char *z = cli_read_zst("out.jsonl.zst", &frames, NULL), *ref = cli_read("ref.jsonl");
    char *zev = cli_read_zst("ev.jsonl.zst", NULL, NULL), *refev = cli_read("ref-ev.jsonl");
    cr_assert_eq(frames, N_PROMPTS);
    cr_assert(strcmp(z, ref) == 0, "the resumed .zst output differs");
    cr_assert(strcmp(zev, refev) == 0, "the resumed .zst trace differs");
    free(z);
    free(ref);
    free(zev);
    free(refev);
}

Test(faults, output_file_io_uring) { output_faults(0); }
Test(faults, output_file_pread) { output_faults(1); }

/* ------------------------------------------------------- job-file reads, resume's cut, calibrate */

/* A job without the disk tiers: these faults fall on the job files. */
#define SMALL "generate --model " TINY " --quiet --no-summary --batch-size 1 --ignore-eos "
#define SMALL_PROMPTS 4

/* Run SMALL with fault (NULL: none) and the rest of the command line. */
static int small(const char *fault, const char *rest)
{
    if (fault)
        setenv("FLEXH2O_FAULT", fault, 1);
    else
        unsetenv("FLEXH2O_FAULT");
    int rc = cli_run(SMALL "%s", rest);
    unsetenv("FLEXH2O_FAULT");
    return rc;
}

/* ref.jsonl: the uninterrupted small job; out.jsonl: its first keep
 * records, then torn bytes of the next (0: none). @return out.jsonl. */
static char *partial_output(int keep, size_t torn)
{
    char *ref = cli_read("ref.jsonl"), *at = ref;
    for (int i = 0; i < keep; i++)
        at = strchr(at, '\n') + 1;
    size_t left = strlen(at);
    cr_assert_gt(left, torn, "ref.jsonl has no record to tear");
    at[torn] = 0;
    cli_write("out.jsonl", ref);
    free(ref);
    return cli_read("out.jsonl");
}

static void unchanged(const char *what, const char *name, const char *before)
{
    char *now = cli_read(name);
    cr_assert(strcmp(now, before) == 0, "%s: %s changed", what, name);
    free(now);
}

/* The prompt file, plain and .zst, fails its first read: one error line
 * naming it and the errno, and no output. */
Test(faults, prompt_file_read)
{
    need_hook();
    write_prompts(SMALL_PROMPTS, 8);
    char *text = cli_read("p.jsonl");
    cli_write_zst("p.jsonl.zst", text, 100); /* frames that cut lines */
    free(text);
    static const char *const files[] = {"p.jsonl", "p.jsonl.zst"};
    for (int i = 0; i < 2; i++) {
        char rest[256], msg[128];
        snprintf(rest, sizeof rest, "--prompts %s --out out.jsonl", files[i]);
        cr_assert_eq(small("op=read,nth=1,errno=EIO,path=p.jsonl", rest), 1, "%s: %s",
                     files[i], cli_err);
        snprintf(msg, sizeof msg, "flexh2o: %s: read failed (Input/output error)", files[i]);
        const char *needles[] = {msg};
        one_error_line(files[i], needles, 1);
        cr_assert(!cli_exists("out.jsonl"), "%s: a failed read left an output", files[i]);
    }
    /* without the fault both read: the hook, not the file, failed */
    cr_assert_eq(small(NULL, "--prompts p.jsonl.zst --out out.jsonl"), 0, "%s", cli_err);
}

/* --resume reads the existing output twice (its torn-tail scan, then its
 * ids): a failed read in either stops the job with the output as it was,
 * and the next resume completes it. */
Test(faults, resume_scan_read)
{
    need_hook();
    write_prompts(SMALL_PROMPTS, 8);
    cr_assert_eq(small(NULL, "--prompts p.jsonl --out ref.jsonl"), 0, "%s", cli_err);
    /* read #1: the scan's, #2: its end of file, #3: the ids' (the file is
     * smaller than one read) */
    static const char *const faults[] = {"op=read,nth=1,errno=EIO,path=out.jsonl",
                                         "op=read,nth=3,errno=EIO,path=out.jsonl"};
    for (int i = 0; i < 2; i++) {
        char *before = partial_output(2, 0);
        cr_assert_eq(small(faults[i], "--prompts p.jsonl --out out.jsonl --resume"), 1, "%s: %s",
                     faults[i], cli_err);
        const char *needles[] = {"flexh2o: out.jsonl: read failed (Input/output error)"};
        one_error_line(faults[i], needles, 1);
        unchanged(faults[i], "out.jsonl", before);
        free(before);
    }
    cr_assert_eq(small(NULL, "--prompts p.jsonl --out out.jsonl --resume"), 0, "%s", cli_err);
    same_file("resume scan", "out.jsonl", "ref.jsonl");
}

/* --resume finds a torn last record and fails to cut it: it says so, the
 * torn bytes stay, and the next resume cuts them and completes the job. */
Test(faults, resume_truncate)
{
    need_hook();
    write_prompts(SMALL_PROMPTS, 8);
    cr_assert_eq(small(NULL, "--prompts p.jsonl --out ref.jsonl"), 0, "%s", cli_err);
    char *before = partial_output(2, 40);
    cr_assert_eq(small("op=truncate,errno=EIO", "--prompts p.jsonl --out out.jsonl --resume"), 1,
                 "%s", cli_err);
    cr_assert(strstr(cli_err, "[flexh2o] FLEXH2O_FAULT: truncate #1 of out.jsonl fails"),
              "the fault never fired:\n%s", cli_err);
    const char *err = strstr(cli_err, "flexh2o: ");
    cr_assert(err && !strstr(err + 1, "flexh2o: "), "want one error line:\n%s", cli_err);
    char msg[160];
    snprintf(msg, sizeof msg, "flexh2o: out.jsonl: cannot cut the torn last record at byte %zu "
             "(Input/output error); the file is unchanged", strlen(before) - 40);
    cr_assert(strstr(err, msg) && strstr(err, "--resume"), "want \"%s\":\n%s", msg, cli_err);
    unchanged("truncate", "out.jsonl", before);
    free(before);
    cr_assert_eq(small(NULL, "--prompts p.jsonl --out out.jsonl --resume"), 0, "%s", cli_err);
    same_file("truncate", "out.jsonl", "ref.jsonl");
}

/* calibrate's disk measure: a failed fdatasync of its scratch file (an
 * fsync rule covers fdatasync) names the file, and the file goes. */
Test(faults, calibrate_sync)
{
    need_hook();
    setenv("FLEXH2O_FAULT", "op=fsync,errno=EIO,path=calibrate.bin", 1);
    int rc = cli_run("calibrate --offload-dir off --device cpu --bytes 1M");
    unsetenv("FLEXH2O_FAULT");
    cr_assert_eq(rc, 1, "%s", cli_err);
    const char *needles[] = {"off/calibrate.bin: fdatasync failed (Input/output error)"};
    one_error_line("calibrate", needles, 1);
    cr_assert(!cli_exists("off/calibrate.bin"), "calibrate left its scratch file");
}

/* ------------------------------------------------------- kill -9 */

#define TORTURE_PROMPTS 48
#define TORTURE_KILLS 30

/* Start generate (resuming) on engine; stderr to /dev/null. */
static pid_t spawn(int engine)
{
    return cli_spawn((const char *const[]){engine ? "FLEXH2O_NO_URING=1" : "FLEXH2O_NO_URING",
                                           "OMP_WAIT_POLICY=passive", NULL},
                     (const char *const[]){"generate", "--model", TINY, "--prompts", "p.jsonl",
                                           "--out", "out.jsonl", "--trace-evictions",
                                           "ev.jsonl", "--quiet", "--no-summary",
                                           "--batch-size", "1", "--ignore-eos", "--percent",
                                           "0", "0", "0", "0", "100", "0", "--offload-dir",
                                           "off", "--kv-policy", "h2o", "--kv-ratio", "0.5",
                                           "--sinks", "1", "--device", "cpu", "--resume",
                                           NULL});
}

static long file_size(const char *name)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", cli_dir, name);
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : 0;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* `generate` killed TORTURE_KILLS times with SIGKILL, resumed after each
 * on alternating engines, then run to the end. A third of the kills come
 * at a random moment of the first two records' time (setup, the trace's
 * rewrite, the first passes), the rest a random moment within half a
 * record's time after the output grew (decode passes, KV and weights
 * moving, trace lines half written). The end: the uninterrupted bytes,
 * each id once. */
Test(faults, kill9_torture)
{
    write_prompts(TORTURE_PROMPTS, 12);
    double t0 = now_s();
    cr_assert_eq(gen(0, NULL, TINY, "ref.jsonl", "ref-ev.jsonl", 0), 0, "%s", cli_err);
    double full = now_s() - t0, per_record = full / TORTURE_PROMPTS;
    unsigned rng = 20240601u; /* seeded: the same kill moments every run */
    int kills = 0, mid = 0, progressed = 0, runs = 0;
    while (kills < TORTURE_KILLS) {
        rng = rng * 1103515245u + 12345u;
        int early = (rng >> 16) % 3 == 0;
        double frac = (double)((rng >> 8) & 0xffff) / 65536.0;
        long before = file_size("out.jsonl");
        pid_t pid = spawn(runs++ % 2);
        double start = now_s(), kill_at = start + frac * 2 * per_record;
        int status, exited = 0;
        for (;;) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
                break;
            }
            double t = now_s();
            if (early && t >= kill_at)
                break;
            if (!early && file_size("out.jsonl") > before) {
                early = 1; /* now wait a random part of half a record's time */
                kill_at = t + frac * per_record / 2;
            }
            if (t - start > 30)
                cr_assert_fail("generate hangs (30 s without a record)");
            usleep(200);
        }
        if (exited) { /* it finished first: the job is done */
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "run %d failed", runs);
            break;
        }
        kill(pid, SIGKILL);
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        kills++;
        if (WIFSIGNALED(status))
            mid++;
        else
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "run %d failed", runs);
        progressed += file_size("out.jsonl") > before;
    }
    /* to the end, without kills */
    cr_assert_eq(gen(runs % 2, NULL, TINY, "out.jsonl", "ev.jsonl", 1), 0, "%s", cli_err);
    cr_log_info("kill -9 torture: %d kills, %d mid-run, %d after new records; %d runs; "
                "uninterrupted run %.2f s", kills, mid, progressed, runs + 1, full);
    fprintf(stderr, "kill -9 torture: %d kills, %d mid-run, %d after new records; %d runs; "
            "uninterrupted run %.2f s\n", kills, mid, progressed, runs + 1, full);
    cr_assert_geq(kills, 2 * TORTURE_KILLS / 3, "only %d kills before the job finished: make it "
                  "longer", kills);
    cr_assert_geq(mid * 4, kills * 3, "only %d of %d kills landed mid-run", mid, kills);
    same_file("torture", "out.jsonl", "ref.jsonl");
    same_file("torture", "ev.jsonl", "ref-ev.jsonl");
    /* each id once (implied by the bytes, said plainly) */
    char *out = cli_read("out.jsonl");
    for (int i = 0; i < TORTURE_PROMPTS; i++) {
        char id[32];
        snprintf(id, sizeof id, "{\"id\":\"q%d\",", i);
        char *at = strstr(out, id);
        cr_assert(at && !strstr(at + 1, id), "id q%d is not there exactly once", i);
    }
    free(out);
}
