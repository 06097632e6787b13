/* test_disk.c: the disk engine (offload/disk.c): many callers at once on
 * io_uring and on the pread/pwrite fallback, registered buffers, errors
 * that name the file, space reservation, and the counters. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "off.h"

static char scratch[64];    /* on /tmp: a real file system, O_DIRECT works */
static char shm[64];        /* on /dev/shm: tmpfs, no O_DIRECT */

static void setup(void)
{
    strcpy(scratch, "/tmp/fh_disk_XXXXXX");
    cr_assert(mkdtemp(scratch), "mkdtemp in /tmp failed");
    strcpy(shm, "/dev/shm/fh_disk_XXXXXX");
    if (!mkdtemp(shm))
        strcpy(shm, scratch); /* no /dev/shm: the unaligned test still runs */
    err_clear();
}

static void teardown(void)
{
    scratch_remove(scratch);
    if (strcmp(shm, scratch) != 0)
        scratch_remove(shm);
}

TestSuite(disk, .init = setup, .fini = teardown);

static char log_buf[4096];
static void capture_log(const char *msg, void *ud)
{
    (void)ud;
    strncat(log_buf, msg, sizeof log_buf - strlen(log_buf) - 2);
    strcat(log_buf, "\n");
}

/* A byte that depends on where it lives in the file and on a seed, so that
 * data landing at the wrong offset is caught. */
static uint8_t pattern(uint64_t file_off, unsigned seed)
{
    uint64_t x = (file_off + 1) * 0x9E3779B97F4A7C15ull + seed;
    return (uint8_t)(x >> 29);
}

static void fill(uint8_t *p, size_t n, uint64_t file_off, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern(file_off + i, seed);
}

static void check(const uint8_t *p, size_t n, uint64_t file_off, unsigned seed, const char *ctx)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern(file_off + i, seed))
            cr_assert_fail("%s: byte %zu (file offset %llu) is %u, expected %u", ctx, i,
                           (unsigned long long)(file_off + i), p[i],
                           pattern(file_off + i, seed));
}

/* ------------------------------------------------------- concurrent callers */

#define N_THREADS 6
#define N_IOS 5

typedef struct worker {
    off_disk *d;
    int fd;
    int aligned;            /* 1: O_DIRECT sizes; 0: odd lengths and offsets */
    uint64_t base;          /* this thread's region of the file */
    unsigned seed;
    int rc;
    char msg[1024];
    uint64_t bytes;
} worker;

/* Sizes that are not multiples of 1 MiB, some below and some above it. */
static size_t io_len(int i, int aligned)
{
    static const size_t sz[N_IOS] = {3 * 1048576 + 12288, 4096, 1048576 + 4096, 20480,
                                     2 * 1048576 - 8192};
    return aligned ? sz[i] : sz[i] - 4096 + 777 + (size_t)i * 13;
}

static uint64_t region_len(int aligned)
{
    uint64_t n = 0;
    for (int i = 0; i < N_IOS; i++)
        n += off_align_up(io_len(i, aligned)) + (aligned ? 0 : 4096);
    return n;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    uint8_t *buf[N_IOS], *back[N_IOS];
    off_io io[N_IOS];
    uint64_t at = w->base + (w->aligned ? 0 : 333); /* odd start off O_DIRECT */
    for (int i = 0; i < N_IOS; i++) {
        size_t n = io_len(i, w->aligned);
        buf[i] = off_alloc_aligned(n);
        back[i] = off_alloc_aligned(n);
        fill(buf[i], n, at, w->seed);
        io[i] = (off_io){.fd = w->fd, .write = 1, .buf = buf[i], .len = n, .offset = at};
        w->bytes += n;
        at += off_align_up(n) + (w->aligned ? 0 : 4096);
    }
    char what[64];
    snprintf(what, sizeof what, "test thread %u", w->seed);
    err_clear();
    w->rc = off_disk_rw(w->d, io, N_IOS, what);
    if (w->rc == 0) {
        for (int i = 0; i < N_IOS; i++) {
            io[i].write = 0;
            io[i].buf = back[i];
        }
        w->rc = off_disk_rw(w->d, io, N_IOS, what);
    }
    snprintf(w->msg, sizeof w->msg, "%s", err_msg());
    if (w->rc == 0)
        for (int i = 0; i < N_IOS; i++)
            check(back[i], io[i].len, io[i].offset, w->seed, what);
    for (int i = 0; i < N_IOS; i++) {
        free(buf[i]);
        free(back[i]);
    }
    return NULL;
}

/* N_THREADS callers at once on one engine; each writes then reads back its
 * own region. Returns the bytes each direction moved. */
static uint64_t concurrent_round_trip(off_disk *d, const char *dir, int aligned)
{
    char path[128];
    snprintf(path, sizeof path, "%s/rt%d.bin", dir, aligned);
    uint64_t region = region_len(aligned);
    int direct = -1, fd;
    if (aligned) {
        fd = off_file_open(path, 1, region * N_THREADS, &direct);
        cr_assert_geq(fd, 0, "off_file_open(%s): %s", path, err_msg());
        /* The disk file systems take O_DIRECT (tmpfs only from Linux 6.6). */
        struct statfs fs;
        cr_assert_eq(statfs(dir, &fs), 0);
        if (fs.f_type == 0xEF53 || fs.f_type == 0x58465342 || fs.f_type == 0x9123683E)
            cr_expect_eq(direct, 1, "%s: ext4/xfs/btrfs but no O_DIRECT", path);
        cr_assert_str_eq(off_file_path(fd), path);
    } else {
        /* Odd lengths and offsets need a file without O_DIRECT, whatever the
         * file system offers: open it plainly (the engine takes any fd). */
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        cr_assert_geq(fd, 0, "open(%s)", path);
    }

    pthread_t t[N_THREADS];
    worker w[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (worker){.d = d, .fd = fd, .aligned = aligned, .base = region * (uint64_t)i,
                        .seed = (unsigned)(i + 1)};
        cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    uint64_t bytes = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(w[i].rc, 0, "thread %d: %s", i, w[i].msg);
        bytes += w[i].bytes;
    }
    if (aligned)
        off_file_close(fd);
    else
        close(fd);
    return bytes;
}

Test(disk, concurrent_round_trip_odirect)
{
    off_disk *d;
    cr_assert_eq(off_disk_create(8, &d), 0, "%s", err_msg()); /* raised to 32 */
    if (FH_HAVE_URING && !getenv("FLEXH2O_NO_URING"))
        cr_expect_str_eq(off_disk_kind(d), "io_uring",
                         "io_uring works on this machine but the engine fell back");
    uint64_t bytes = concurrent_round_trip(d, scratch, 1);
    uint64_t rd, wr;
    double busy;
    off_disk_counters(d, &rd, &wr, &busy);
    cr_assert_eq(rd, bytes);
    cr_assert_eq(wr, bytes);
    off_disk_destroy(d);
}

Test(disk, concurrent_round_trip_unaligned_tmpfs)
{
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    concurrent_round_trip(d, shm, 0);
    off_disk_destroy(d);
}

/* ------------------------------------------------------- registered buffers */

Test(disk, registered_buffers)
{
    off_disk *d;
    cr_assert_eq(off_disk_create(64, &d), 0, "%s", err_msg());
    size_t n = 9 * 1048576 + 8192; /* several chunks, not a multiple of 1 MiB */
    uint8_t *a = off_alloc_aligned(n), *b = off_alloc_aligned(n);
    cr_assert(a && b);
    void *bufs[2] = {a, b};
    size_t lens[2] = {n, n};
    log_buf[0] = 0;
    err_set_log(capture_log, NULL);
    cr_assert_eq(off_disk_register(d, bufs, lens, 2), 0, "%s", err_msg());
    cr_expect_eq(log_buf[0], 0, "registering 2 small buffers failed: %s", log_buf);

    char path[128];
    snprintf(path, sizeof path, "%s/reg.bin", scratch);
    int fd = off_file_open(path, 1, n + 4096, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    fill(a, n, 4096, 7);
    /* Two requests inside buffer a, one straddling nothing. */
    off_io w[2] = {{fd, 1, a, 5 * 1048576, 4096},
                   {fd, 1, a + 5 * 1048576, n - 5 * 1048576, 4096 + 5 * 1048576}};
    cr_assert_eq(off_disk_rw(d, w, 2, "registered write"), 0, "%s", err_msg());
    off_io r[2] = {{fd, 0, b, 5 * 1048576, 4096},
                   {fd, 0, b + 5 * 1048576, n - 5 * 1048576, 4096 + 5 * 1048576}};
    cr_assert_eq(off_disk_rw(d, r, 2, "registered read"), 0, "%s", err_msg());
    check(b, n, 4096, 7, "registered buffers");

    /* A buffer outside the registered set still works (plain read). */
    uint8_t *c = off_alloc_aligned(8192);
    off_io rc = {fd, 0, c, 8192, 4096};
    cr_assert_eq(off_disk_rw(d, &rc, 1, "unregistered read"), 0, "%s", err_msg());
    check(c, 8192, 4096, 7, "unregistered buffer");

    /* Replacing the set (a second call) keeps the engine working. */
    cr_assert_eq(off_disk_register(d, bufs + 1, lens + 1, 1), 0, "%s", err_msg());
    memset(b, 0, n);
    cr_assert_eq(off_disk_rw(d, r, 2, "re-registered read"), 0, "%s", err_msg());
    check(b, n, 4096, 7, "re-registered buffer");

    err_set_log(NULL, NULL);
    off_file_close(fd);
    off_disk_destroy(d);
    free(a);
    free(b);
    free(c);
}

/* ------------------------------------------------------- fallback */

Test(disk, fallback_pread_threads)
{
    log_buf[0] = 0;
    err_set_log(capture_log, NULL);
    setenv("FLEXH2O_NO_URING", "1", 1);
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    unsetenv("FLEXH2O_NO_URING");
    off_disk *u; /* a second engine beside it, on io_uring where there is one */
    cr_assert_eq(off_disk_create(32, &u), 0, "%s", err_msg());
    if (FH_HAVE_URING)
        cr_expect_str_eq(off_disk_kind(u), "io_uring");
    cr_assert_str_eq(off_disk_kind(d), "pread/pwrite threads");
    cr_assert(strstr(log_buf, "[flexh2o] io_uring unavailable (FLEXH2O_NO_URING=1); disk I/O "
                              "falls back to pread/pwrite threads"),
              "fallback not logged; log was: %s", log_buf);
    /* registering is a no-op there */
    uint8_t *a = off_alloc_aligned(4096);
    void *bufs[1] = {a};
    size_t lens[1] = {4096};
    cr_assert_eq(off_disk_register(d, bufs, lens, 1), 0);
    free(a);

    uint64_t b1 = concurrent_round_trip(d, scratch, 1);
    uint64_t b2 = concurrent_round_trip(d, shm, 0);
    uint64_t rd, wr;
    double busy;
    off_disk_counters(d, &rd, &wr, &busy);
    cr_assert_eq(rd, b1 + b2);
    cr_assert_eq(wr, b1 + b2);
    cr_assert_gt(busy, 0.0);

    /* Logged once, not per engine. */
    off_disk *e;
    setenv("FLEXH2O_NO_URING", "1", 1);
    cr_assert_eq(off_disk_create(32, &e), 0);
    unsetenv("FLEXH2O_NO_URING");
    const char *first = strstr(log_buf, "io_uring unavailable");
    cr_assert(first && !strstr(first + 1, "io_uring unavailable"), "logged twice: %s", log_buf);
    err_set_log(NULL, NULL);
    off_disk_destroy(e);
    off_disk_destroy(d);
    off_disk_destroy(u);
}

/* ------------------------------------------------------- errors */

static void read_past_eof(int no_uring)
{
    if (no_uring)
        setenv("FLEXH2O_NO_URING", "1", 1);
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    char path[128];
    snprintf(path, sizeof path, "%s/short.bin", scratch);
    int fd = off_file_open(path, 1, 8192, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    uint8_t *buf = off_alloc_aligned(3 * 1048576);
    off_io io[2] = {{fd, 0, buf, 4096, 0}, {fd, 0, buf + 4096, 2 * 1048576, 4096}};
    err_clear();
    int rc = off_disk_rw(d, io, 2, "KV of layer 3");
    cr_assert_lt(rc, 0, "reading 2 MiB from an 8 KiB file succeeded");
    const char *m = err_msg();
    cr_assert(strstr(m, path), "message does not name the file: %s", m);
    cr_assert(strstr(m, "offset 4096"), "message does not give the offset: %s", m);
    cr_assert(strstr(m, "KV of layer 3"), "message does not say what: %s", m);
    cr_assert(strstr(m, "end of the file"), "message does not say why: %s", m);

    /* The engine goes on working after an error. */
    err_clear();
    cr_assert_eq(off_disk_rw(d, io, 1, "first block"), 0, "%s", err_msg());
    off_file_close(fd);
    free(buf);
    off_disk_destroy(d);
}

Test(disk, read_past_eof_names_file) { read_past_eof(0); }
Test(disk, read_past_eof_names_file_fallback) { read_past_eof(1); }

Test(disk, write_error_names_file)
{
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    char path[128];
    snprintf(path, sizeof path, "%s/ro.bin", scratch);
    int fd = off_file_open(path, 1, 4096, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    /* An fd the engine cannot write through, under the number that
     * off_file_open remembered the path for: the message still names it. */
    int ro = open(path, O_RDONLY);
    cr_assert_geq(ro, 0);
    cr_assert_eq(dup2(ro, fd), fd);
    close(ro);
    uint8_t *buf = off_alloc_aligned(4096);
    off_io io = {fd, 1, buf, 4096, 0};
    cr_assert_lt(off_disk_rw(d, &io, 1, "KV of layer 5"), 0);
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "write of 4.0 KiB at offset 0 failed") &&
                  strstr(err_msg(), "KV of layer 5") && strstr(err_msg(), "Bad file descriptor"),
              "unclear message: %s", err_msg());
    free(buf);
    off_file_close(fd);
    off_disk_destroy(d);
}

Test(disk, reserve_impossible_size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/huge.bin", scratch);
    int direct;
    int fd = off_file_open(path, 1, 1ull << 50, &direct); /* 1 PiB */
    cr_assert_lt(fd, 0, "reserved 1 PiB in %s", scratch);
    const char *m = err_msg();
    cr_assert(strstr(m, "cannot reserve 1048576.00 GiB for"), "unclear message: %s", m);
    cr_assert(strstr(m, path) && strstr(m, "GiB free;") && strstr(m, "--offload-dir"),
              "unclear message: %s", m);
    cr_assert_neq(access(path, F_OK), 0, "a failed reservation left %s behind", path);
}

Test(disk, open_missing_file)
{
    int fd = off_file_open("/nonexistent/dir/kv.bin", 0, 0, NULL);
    cr_assert_eq(fd, -ENOENT);
    cr_assert(strstr(err_msg(), "/nonexistent/dir/kv.bin"), "%s", err_msg());
    cr_assert_str_eq(off_file_path(12345), "?");
}

/* the probe before a job whose output comes last (search's and calibrate's
 * --out, generate's --trace): each answer, and nothing left behind */
Test(disk, probe_writable_answers_and_leaves_nothing)
{
    char path[128], tmp[160], sub[128];
    snprintf(path, sizeof path, "%s/out.json", scratch);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_eq(off_probe_writable(path), 0);
    cr_assert_neq(access(path, F_OK), 0, "the probe made %s", path);
    cr_assert_neq(access(tmp, F_OK), 0, "the probe left %s behind", tmp);
    /* a path.tmp already there (another writer's) is neither an error nor removed */
    FILE *f = fopen(tmp, "w");
    cr_assert(f);
    fputs("theirs", f);
    fclose(f);
    cr_assert_eq(off_probe_writable(path), 0);
    cr_assert_eq(access(tmp, F_OK), 0, "the probe removed a %s it did not make", tmp);
    cr_assert_eq(off_probe_writable(scratch), -EISDIR);
    snprintf(sub, sizeof sub, "%s/no-such-dir/out.json", scratch);
    cr_assert_eq(off_probe_writable(sub), -ENOENT);
    char *longp = malloc(5000);
    cr_assert(longp);
    memset(longp, 'a', 4999);
    longp[4999] = 0;
    cr_assert_eq(off_probe_writable(longp), -ENAMETOOLONG);
    free(longp);
    if (geteuid() != 0) { /* root writes through any mode */
        snprintf(sub, sizeof sub, "%s/ro", scratch);
        cr_assert_eq(mkdir(sub, 0555), 0);
        snprintf(sub, sizeof sub, "%s/ro/out.json", scratch);
        cr_assert_eq(off_probe_writable(sub), -EACCES);
    }
}

/* ------------------------------------------------------- counters */

Test(disk, counters_add_up)
{
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    uint64_t rd, wr;
    double busy;
    off_disk_counters(d, &rd, &wr, &busy);
    cr_assert(rd == 0 && wr == 0 && busy == 0.0);

    char path[128];
    snprintf(path, sizeof path, "%s/cnt.bin", scratch);
    int fd = off_file_open(path, 1, 16 << 20, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    uint8_t *buf = off_alloc_aligned(16 << 20);
    struct timeval t0, t1;
    gettimeofday(&t0, NULL);
    off_io w = {fd, 1, buf, 16 << 20, 0};
    cr_assert_eq(off_disk_rw(d, &w, 1, "write"), 0, "%s", err_msg());
    off_io r[3] = {{fd, 0, buf, 4096, 0}, {fd, 0, buf, 3 << 20, 4096}, {fd, 0, buf, 0, 0}};
    cr_assert_eq(off_disk_rw(d, r, 3, "read"), 0, "%s", err_msg());
    cr_assert_eq(off_disk_rw(d, r, 0, "nothing"), 0);
    gettimeofday(&t1, NULL);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + 1e-6 * (double)(t1.tv_usec - t0.tv_usec);
    off_disk_counters(d, &rd, &wr, &busy);
    cr_assert_eq(wr, 16u << 20);
    cr_assert_eq(rd, 4096u + (3u << 20));
    cr_assert(busy > 0.0 && busy <= wall + 1e-3, "busy %.6f s, wall %.6f s", busy, wall);
    free(buf);
    off_file_close(fd);
    off_disk_destroy(d);
}

Test(disk, destroy_null_and_alloc)
{
    off_disk_destroy(NULL);
    off_file_close(-1);
    uint8_t *p = off_alloc_aligned(5000);
    cr_assert(p);
    cr_assert_eq((uintptr_t)p % OFF_ALIGN, 0);
    for (int i = 0; i < 8192; i++)
        cr_assert_eq(p[i], 0);
    free(p);
}

/* ------------------------------------------------------- EINTR */

/* pread as the engine and the store see it (this build's pread is pread64,
 * _FILE_OFFSET_BITS=64): while pread_eintr is set, every call is
 * interrupted by a signal, as under a signal storm. */
static volatile int pread_eintr;

ssize_t pread64(int fd, void *buf, size_t n, off64_t off)
{
    if (pread_eintr) {
        errno = EINTR;
        return -1;
    }
    return syscall(SYS_pread64, fd, buf, n, off);
}

/* A pread that is always interrupted fails the read with EINTR, naming
 * the file, instead of retrying forever (the fallback engine spun a
 * thread for good, and the caller waited with it). The .timeout fails
 * the test when it spins. */
Test(disk, persistent_eintr_fails_instead_of_spinning, .timeout = 30)
{
    char path[128];
    snprintf(path, sizeof path, "%s/intr.bin", scratch);
    int fd = off_file_open(path, 1, 8192, NULL);
    cr_assert_geq(fd, 0, "%s", err_msg());
    uint8_t *buf = off_alloc_aligned(8192);
    off_io io = {fd, 0, buf, 8192, 0};
    setenv("FLEXH2O_NO_URING", "1", 1);
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    unsetenv("FLEXH2O_NO_URING");
    cr_assert_eq(off_disk_rw(d, &io, 1, "the EINTR test"), 0, "%s", err_msg());
    pread_eintr = 1;
    err_clear();
    int rc = off_disk_rw(d, &io, 1, "the EINTR test");
    pread_eintr = 0;
    cr_assert_eq(rc, -EINTR, "a read interrupted every time gave %d", rc);
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "the EINTR test") &&
                  strstr(err_msg(), "retried 1000 times in a row"), "%s", err_msg());
    /* the engine goes on once the signals stop */
    err_clear();
    cr_assert_eq(off_disk_rw(d, &io, 1, "the EINTR test"), 0, "%s", err_msg());
    off_disk_destroy(d);
    off_file_close(fd);
    free(buf);

    /* the weight store's own pread loop too */
    snprintf(path, sizeof path, "%s/model.flxh2o", scratch);
    const char *names[1] = {"x"};
    uint64_t len[1] = {100};
    off_store_writer *w;
    cr_assert_eq(off_store_writer_open(path, OFF_DTYPE_F32, "{}", 1, names, len, &w), 0, "%s",
                 err_msg());
    uint8_t data[100] = {1};
    cr_assert_eq(off_store_writer_put(w, 0, data), 0, "%s", err_msg());
    cr_assert_eq(off_store_writer_finish(w), 0, "%s", err_msg());
    off_store s;
    pread_eintr = 1;
    err_clear();
    rc = off_store_open(path, &s);
    pread_eintr = 0;
    cr_assert_eq(rc, -EINTR, "%d: %s", rc, err_msg());
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "cannot read the header"), "%s",
              err_msg());
}
