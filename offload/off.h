/* off.h: the offload tiers' storage layer: the disk engine (io_uring with a
 * pread/pwrite fallback) and the versioned weight store file.
 *
 * offload/ knows bytes, files and segments, never models or schedules
 * (scheduler/ drives it). Every call returns 0 (or a count) or -errno with
 * one message recorded through err_set() (kernels/err.h) that names the file,
 * the segment and what to do.
 */
#ifndef FH_OFF_H
#define FH_OFF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Alignment of every O_DIRECT buffer, file offset and length. */
#define OFF_ALIGN 4096u
static inline uint64_t off_align_up(uint64_t n)
{
    return (n + OFF_ALIGN - 1) & ~(uint64_t)(OFF_ALIGN - 1);
}

/* ------------------------------------------------------------ disk engine
 *
 * One engine thread owns an io_uring (queue depth >= 32) and performs the
 * requests that any number of caller threads hand it; off_disk_rw blocks
 * its caller until all of that call's requests are complete. Large
 * requests are cut into chunks (at most 1 MiB) so that the queue stays deep;
 * short reads and writes are resumed. Buffers passed to off_disk_register
 * are registered with the ring once and then used with READ_FIXED /
 * WRITE_FIXED whenever a request lies inside one of them.
 *
 * Where io_uring cannot be set up (seccomp in a container, an old kernel,
 * or FLEXH2O_NO_URING=1 in the environment) the engine says so once through
 * err_log() and runs the same requests on pread/pwrite worker threads.
 */
typedef struct off_disk off_disk;

typedef struct off_io {
    int fd;
    int write;        /* 0: read file -> buf, 1: write buf -> file */
    void *buf;        /* OFF_ALIGN-aligned when the file is O_DIRECT */
    size_t len;       /* multiple of OFF_ALIGN when the file is O_DIRECT */
    uint64_t offset;  /* file offset, multiple of OFF_ALIGN when O_DIRECT */
} off_io;

/* queue_depth: at least 32 (smaller values are raised to 32).
 * @return 0 or -errno; destroy with off_disk_destroy(). */
int off_disk_create(int queue_depth, off_disk **out);
void off_disk_destroy(off_disk *d); /* accepts NULL; waits for the thread */
/* "io_uring" or "pread/pwrite threads". */
const char *off_disk_kind(const off_disk *d);
/* Register n buffers for fixed-buffer I/O; call once, before any I/O
 * (a second call replaces the set). A no-op on the fallback path.
 * @return 0 or -errno (failure to register is not fatal: the engine logs it
 * once and uses plain reads/writes; it returns 0 then). */
int off_disk_register(off_disk *d, void *const *bufs, const size_t *lens, int n);
/* Perform the n requests (in any order, concurrently) and wait for all.
 * what: a short description for error messages ("KV of layer 3, batch 1").
 * An error (EIO, ENOSPC, a read past the end of the file) names the file
 * descriptor's path (see off_file_open), the offset and `what`.
 * @return 0 or -errno. */
int off_disk_rw(off_disk *d, const off_io *ios, int n, const char *what);
/* Bytes read and written so far, and the seconds requests were in flight
 * (wall time with at least one request pending), for the summary. */
void off_disk_counters(const off_disk *d, uint64_t *read, uint64_t *written,
                       double *busy_s);

/* Open (or with create, create/truncate) a file for the engine: O_DIRECT
 * where the file system supports it (a plain open otherwise, *direct = 0),
 * and with create, space reserved up front with fallocate (posix_fallocate
 * where fallocate is unsupported) so that a full disk fails here, with the
 * size asked and the space free in the message, instead of halfway through
 * a job. The path is remembered for error messages.
 * @return the fd (>= 0) or -errno; close with off_file_close(). */
int off_file_open(const char *path, int create, uint64_t size, int *direct);
void off_file_close(int fd); /* accepts -1 */
/* The path an fd was opened with ("?" when unknown). */
const char *off_file_path(int fd);
/* Remember path as the name of an fd opened elsewhere (a job file), for
 * messages and the fault hook's path=; off_file_close(fd) closes it and
 * forgets the name. @return 0 or -ENOMEM. */
int off_file_name(int fd, const char *path);

/* OFF_ALIGN-aligned, zeroed host memory (plain; the scheduler pins through
 * the backend instead). Free with free(). NULL on failure. */
void *off_alloc_aligned(size_t bytes);

/* ------------------------------------------------------------ weight store
 *
 * A versioned file of named segments, each at an OFF_ALIGN-aligned offset
 * and padded to a multiple of OFF_ALIGN, so that O_DIRECT reads any segment
 * straight into an aligned buffer:
 *
 *   header (OFF_ALIGN multiple):
 *     magic "FLXH2OST", u32 version (OFF_STORE_VERSION), u32 dtype
 *     (OFF_DTYPE_*), u32 n_segments, u32 config length,
 *     config (the model's config.json text, NUL-free),
 *     n_segments x {name[48], u64 offset, u64 length, u64 xxh64}
 *     u64 xxh64 of the header bytes before it
 *   segments
 *
 * All integers little-endian. length is the payload length (unpadded);
 * xxh64 (seed 0) covers the payload. A header that fails its checksum, an
 * unknown version, or a file shorter than its last segment is refused with a
 * message that says to run `flexh2o convert` again.
 */
#define OFF_STORE_MAGIC "FLXH2OST"
#define OFF_STORE_VERSION 1u
#define OFF_DTYPE_F32 1u
#define OFF_DTYPE_F16 2u
#define OFF_DTYPE_BF16 3u
/* or'ed into the dtype: the layers' weight matrices are 4-bit groups
 * (kernels/kern.h's format; the vectors and the globals in the base dtype) */
#define OFF_DTYPE_Q4 0x100u

/* Bytes per element of a store's base dtype (its vectors and globals). */
static inline size_t off_dtype_size(uint32_t dtype)
{
    uint32_t base = dtype & ~OFF_DTYPE_Q4;
    return base == OFF_DTYPE_F16 || base == OFF_DTYPE_BF16 ? 2 : 4;
}
#define OFF_SEG_NAME 48

typedef struct off_seg {
    char name[OFF_SEG_NAME];
    uint64_t offset, length, xxh;
} off_seg;

typedef struct off_store {
    char *path;
    int fd, direct;
    uint32_t version, dtype;
    char *config_json;  /* NUL-terminated copy */
    int n_seg;
    off_seg *seg;
    uint64_t file_size;
} off_store;

/* 1 if the file at path starts with OFF_STORE_MAGIC, 0 if not (or it is a
 * directory / cannot be read). */
int off_store_probe(const char *path);
/* Open and validate the header. @return 0 or -errno. */
int off_store_open(const char *path, off_store *s);
void off_store_close(off_store *s); /* accepts a zeroed struct */
/* Index of the segment called name, or -1. */
int off_store_find(const off_store *s, const char *name);
/* Read segment i whole into buf (OFF_ALIGN-aligned, at least
 * off_align_up(length) bytes) through d (or pread when d is NULL) and
 * verify its checksum: a mismatch says "<path>: segment <name> is corrupt
 * (checksum ...); run flexh2o convert again". @return 0 or -errno. */
int off_store_read_seg(const off_store *s, off_disk *d, int i, void *buf);

/* Writer: segment lengths are fixed up front, payloads are written in any
 * order, the header (with checksums) last; the file appears under its name
 * only on off_store_writer_finish (written as path.tmp, fsync'ed, renamed),
 * so an interrupted convert never leaves a file that looks complete. */
typedef struct off_store_writer off_store_writer;
int off_store_writer_open(const char *path, uint32_t dtype, const char *config_json,
                          int n_seg, const char *const *names, const uint64_t *lengths,
                          off_store_writer **out);
/* Write segment i's payload (length bytes as declared). */
int off_store_writer_put(off_store_writer *w, int i, const void *data);
/* Every segment must have been put. @return 0 or -errno; frees w. */
int off_store_writer_finish(off_store_writer *w);
void off_store_writer_abort(off_store_writer *w); /* removes path.tmp; NULL ok */

/* EINTR in a row that off_read, off_pread, off_pwrite, off_write and
 * off_truncate retry before they fail with -EINTR (a signal storm must not
 * spin a thread for good). */
#define OFF_EINTR_MAX 1000

/* ------------------------------------------------------------ system calls and fault injection
 *
 * Every transfer of offload/ and of the job files (src/gen/job_file.c:
 * their reads and writes; job.c: the cut of a torn last record), the sync
 * of calibrate's scratch file, and every io_uring completion of the disk
 * engine (off_fault_complete) go through these wrappers, so that one hook
 * can fail any of them in tests. Each returns what its system call
 * returns, as a count (possibly short) or -errno; EINTR is retried inside
 * (OFF_EINTR_MAX times at most).
 */
ssize_t off_read(int fd, void *buf, size_t n);        /* at the file position */
ssize_t off_pread(int fd, void *buf, size_t n, uint64_t off);
ssize_t off_pwrite(int fd, const void *buf, size_t n, uint64_t off);
ssize_t off_write(int fd, const void *buf, size_t n); /* at the file position */
int off_fsync(int fd);                                 /* @return 0 or -errno */
int off_fdatasync(int fd); /* op=fsync faults it too; @return 0 or -errno */
/* Reserve [0, size): fallocate, or posix_fallocate where the file system
 * has no fallocate. @return 0 or -errno. */
int off_fallocate(int fd, uint64_t size);
/* Cut (or extend) the file at path to size bytes: truncate(2), as an open,
 * an ftruncate (op=truncate, path= matching path) and a close. The caller
 * words the message (what the cut was for). @return 0 or -errno (the
 * open's, or the ftruncate's: the file is then unchanged). */
int off_truncate(const char *path, uint64_t size);

/* Fault injection (built in unless meson -Dfault_inject=false).
 *
 *   FLEXH2O_FAULT="op=write,nth=3,errno=ENOSPC,path=out.jsonl"
 *   FLEXH2O_FAULT="op=read,nth=5,short=4096,path=weights.bin;op=complete,nth=9,errno=EIO"
 *
 * A spec is up to 4 rules separated by ';', each keys separated by ','.
 *   op      read | write | fsync | fallocate | truncate | complete
 *           (required). read and write are the transfers of both disk
 *           engines (a pread/pwrite, or the completion of an io_uring
 *           read/write) and of the job files (prompts, outputs, traces,
 *           shards, read plain or .zst, and --resume's scan of an output);
 *           fsync is an fsync or an fdatasync (calibrate's scratch file);
 *           truncate is --resume's cut of a torn last record; complete is
 *           any io_uring completion.
 *   nth     the first matching call to fault, counted from 1 (default 1).
 *   times   how many calls from the nth on are faulted (default 1; 0: every
 *           one from the nth on, a disk that stays full).
 *   errno   the call fails with this errno (ENOSPC, EIO, ... or a number),
 *           having done nothing (an io_uring completion: its result is
 *           replaced, the kernel did the transfer) ...
 *   short   ... or it moves only this many bytes (rounded down to OFF_ALIGN
 *           on an O_DIRECT file, as the kernel cuts them); give one of the
 *           two (short= only with read, write and complete).
 *   path    count only calls on files whose path contains this text (the
 *           path the file was opened with).
 * Every rule counts each call it matches; when two are due on the same
 * call, the first listed acts. The spec in the environment is
 * read at the first call and logged once through err_log ("[flexh2o] fault
 * injection armed: ..."); the first fault of each rule is logged too
 * ("[flexh2o] FLEXH2O_FAULT: write #3 of out.jsonl fails with ..."). A bad
 * spec is logged and ignored.
 *
 * off_fault_set arms spec in place of the environment's (NULL or "":
 * disarm) and zeroes the counts; call it while no I/O is in flight.
 * @return 0, -EINVAL with a message naming the bad key, or -ENOTSUP when
 * the hook is not built in. */
enum off_fault_op {
    OFF_FAULT_READ,
    OFF_FAULT_WRITE,
    OFF_FAULT_FSYNC,
    OFF_FAULT_FALLOCATE,
    OFF_FAULT_COMPLETE,
    OFF_FAULT_TRUNCATE,
    OFF_FAULT_N_OPS
};
int off_fault_set(const char *spec);
/* Faults injected since the last off_fault_set (tests check that theirs
 * fired). */
long off_fault_fired(void);
/* 1 when the hook is built in (tests skip without it). */
int off_fault_built(void);
/* The disk engine's io_uring completion of a read or write (res: the CQE's
 * result) through the hook. @return res, or the faulted result. */
int off_fault_complete(int fd, int write, int res);

/* ------------------------------------------------------------ files and capacity */

/* Read a whole file into a NUL-terminated malloc'd buffer (caller frees).
 * @return 0, or -errno with a message naming the path. */
int off_read_file(const char *path, char **out, size_t *len);
/* Whether a file can be written at path the way our writers write one
 * (path.tmp, then renamed over path), before any work that ends in writing
 * it: path.tmp made and removed (never over a file of that name, which is
 * left as it is). Sets no message: the caller names the flag.
 * @return 0, -EISDIR (path is a directory), -ENAMETOOLONG, or the -errno of
 * creating path.tmp. */
int off_probe_writable(const char *path);
/* MemAvailable of /proc/meminfo in bytes (0 when unreadable): the CPU-tier
 * cap when --cpu-mem is not given. */
uint64_t off_mem_available(void);
/* How busy the machine is around a measurement: take a sample before and
 * one after; off_cpu_others gives the cores that processes other than this
 * one kept busy in between (from /proc/stat and getrusage). */
typedef struct off_cpu_load {
    double busy_s;       /* CPU seconds every core spent busy since boot */
    double self_s;       /* of them, this process's */
    double wall_s;       /* the monotonic clock */
    int cores;
} off_cpu_load;
/* @return 0, or -ENOTSUP when /proc/stat cannot be read. */
int off_cpu_sample(off_cpu_load *s);
/* Cores other processes kept busy between samples a and b (0 when unknown). */
double off_cpu_others(const off_cpu_load *a, const off_cpu_load *b);
/* Free bytes for the disk tier in dir; a dir that is not a directory is
 * -ENOENT with a message saying to create it. @return 0 or -errno. */
int off_disk_free(const char *dir, uint64_t *out);

#endif
