/* disk.c: the disk engine (see off.h) and the files it works on.
 *
 * Callers never touch the ring. off_disk_rw puts a `call` (on the caller's
 * stack) on a queue and sleeps; the engine thread cuts the queued requests
 * into chunks of at most 1 MiB as ring slots free up, so that one large
 * request and many small ones all keep the queue deep:
 *
 *   caller threads          engine thread (owns the ring)
 *   off_disk_rw ──┐
 *   off_disk_rw ──┼─> queue ─> take_chunk ─> SQE ─┐ submit once
 *   off_disk_rw ──┘    ^                          v
 *        ^             │        resubmit short  kernel
 *        │             │        I/O from where ◄─┤
 *        └── cv_done ◄─┴─ complete_chunk ◄───────┘ reap CQEs in a batch
 *
 * A chunk carries its call in user_data (liburing's io_uring-cp.c). Chunk
 * slots are preallocated, one per ring entry, and the cursor that cuts a
 * call lives in the call itself, so nothing on the I/O path allocates.
 *
 * The fallback (no io_uring) runs the same take/complete protocol on a few
 * worker threads that do blocking pread/pwrite.
 */
#include "off.h"

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "err.h"
#include "fh_config.h"
#include "kern.h"

#if FH_HAVE_URING
#include <liburing.h>
#endif

#define CHUNK_MAX (1u << 20)     /* bytes per SQE: keeps the ring deep */
#define DEPTH_MIN 32
#define DEPTH_MAX 1024
#define N_WORKERS 4              /* pread/pwrite threads of the fallback */
#define REG_PIECE (1ull << 30)   /* the kernel registers at most 1 GiB per iovec */
#define REAP_BATCH 64
/* EINTR and EAGAIN are retried, but not forever: this many in a row with
 * no byte moved and the chunk fails with that error (a signal storm or a
 * file that never becomes ready would otherwise spin a thread for good). */
#define RETRY_MAX 1000
#define STR_(x) #x
#define STR(x) STR_(x)

/* One off_disk_rw call: lives on the caller's stack until `done`. */
typedef struct rw_call {
    const off_io *ios;
    int n;
    const char *what;
    int next_io;              /* cursor: next io to cut ... */
    uint64_t next_off;        /* ... and the offset inside it */
    int inflight;             /* chunks taken and not completed */
    int queued;               /* still on the engine's queue */
    int done;
    int err;                  /* first -errno */
    char msg[768];            /* its message, set by the engine thread */
    struct rw_call *next;
} rw_call;

/* One piece of at most CHUNK_MAX bytes of one request. */
typedef struct chunk {
    rw_call *call;
    const off_io *io;
    char *buf;
    uint64_t off;
    size_t len, done;         /* done: bytes already transferred */
    int buf_index;            /* registered buffer holding buf..buf+len, or -1 */
    int retries;              /* EINTR/EAGAIN in a row since the last progress */
} chunk;

/* A registered range: a user buffer cut into pieces of at most REG_PIECE. */
typedef struct reg_piece {
    char *base;
    size_t len;
} reg_piece;

struct off_disk {
    pthread_mutex_t mu;
    pthread_cond_t cv_work;   /* engine/workers: a call was queued or stop */
    pthread_cond_t cv_done;   /* callers: some call finished */
    rw_call *head, *tail;
    int stop;
    int uring;                /* 1: io_uring engine, 0: pread/pwrite workers */
    int depth;
    pthread_t threads[N_WORKERS];
    int n_threads;
    reg_piece *reg;           /* (n_reg) */
    int n_reg;
    /* counters, under mu */
    int active;               /* chunks in flight, all callers */
    uint64_t bytes_read, bytes_written;
    double busy_s, busy_since;
#if FH_HAVE_URING
    struct io_uring ring;
    chunk *slots;             /* (depth) */
    int *free_slots;          /* (depth) stack of indices into slots */
    int n_free;
#endif
};

/* "512 B", "1.0 MiB", "3.25 GiB": sizes in messages. */
static const char *fmt_bytes(char *out, size_t cap, uint64_t n)
{
    if (n < 1024)
        snprintf(out, cap, "%" PRIu64 " B", n);
    else if (n < (1ull << 20))
        snprintf(out, cap, "%.1f KiB", (double)n / 1024.0);
    else if (n < (1ull << 30))
        snprintf(out, cap, "%.1f MiB", (double)n / (1024.0 * 1024.0));
    else
        snprintf(out, cap, "%.2f GiB", (double)n / (1024.0 * 1024.0 * 1024.0));
    return out;
}

/* ------------------------------------------------------------ fd -> path */

typedef struct path_ent {
    int fd;
    char *path;
} path_ent;

static pthread_mutex_t paths_mu = PTHREAD_MUTEX_INITIALIZER;
static path_ent *paths;
static int n_paths, cap_paths;

static int paths_add(int fd, const char *path)
{
    char *copy = strdup(path);
    RETURN_IF(!copy, -ENOMEM, "out of memory remembering the path %s", path);
    pthread_mutex_lock(&paths_mu);
    for (int i = 0; i < n_paths; i++) {
        if (paths[i].fd == fd) { /* an fd closed without off_file_close */
            free(paths[i].path);
            paths[i].path = copy;
            pthread_mutex_unlock(&paths_mu);
            return 0;
        }
    }
    if (n_paths == cap_paths) {
        int cap = cap_paths ? 2 * cap_paths : 16;
        path_ent *p = realloc(paths, (size_t)cap * sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&paths_mu);
            free(copy);
            RETURN_IF(1, -ENOMEM, "out of memory remembering the path %s", path);
        }
        paths = p;
        cap_paths = cap;
    }
    paths[n_paths++] = (path_ent){fd, copy};
    pthread_mutex_unlock(&paths_mu);
    return 0;
}

int off_file_name(int fd, const char *path)
{
    return paths_add(fd, path);
}

const char *off_file_path(int fd)
{
    /* The string stays put until off_file_close(fd): the table holds
     * pointers, so growing it does not move a path. */
    const char *p = "?";
    pthread_mutex_lock(&paths_mu);
    for (int i = 0; i < n_paths; i++)
        if (paths[i].fd == fd)
            p = paths[i].path;
    pthread_mutex_unlock(&paths_mu);
    return p;
}

void off_file_close(int fd)
{
    if (fd < 0)
        return;
    pthread_mutex_lock(&paths_mu);
    for (int i = 0; i < n_paths; i++) {
        if (paths[i].fd == fd) {
            free(paths[i].path);
            paths[i] = paths[--n_paths];
            break;
        }
    }
    pthread_mutex_unlock(&paths_mu);
    close(fd);
}

/* ------------------------------------------------------------ files */

void *off_alloc_aligned(size_t bytes)
{
    size_t n = (size_t)off_align_up(bytes ? bytes : 1); /* aligned_alloc wants a multiple */
    void *p = aligned_alloc(OFF_ALIGN, n);
    if (p)
        memset(p, 0, n);
    return p;
}

int off_file_open(const char *path, int create, uint64_t size, int *direct)
{
    RETURN_IF(!path || !*path, -EINVAL, "off_file_open: no path given");
    int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
    int is_direct = 1;
    int fd = open(path, flags | O_DIRECT, 0644);
    if (fd < 0 && errno == EINVAL) { /* tmpfs and friends: no O_DIRECT */
        is_direct = 0;
        fd = open(path, flags, 0644);
    }
    if (fd < 0 && !create && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        /* a read-only store is fine for reading */
        flags = (flags & ~O_RDWR) | O_RDONLY;
        is_direct = 1;
        fd = open(path, flags | O_DIRECT);
        if (fd < 0 && errno == EINVAL) {
            is_direct = 0;
            fd = open(path, flags);
        }
    }
    RETURN_IF(fd < 0, -errno, "%s: cannot %s (%s); check the path and its permissions", path,
              create ? "create" : "open", strerror(errno));

    /* named before the reservation: the fault hook's path= sees it */
    int ret = paths_add(fd, path);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    if (create && size > 0) {
        int e = -off_fallocate(fd, size);
        if (e) {
            char want[32], have[32];
            struct statvfs vfs;
            uint64_t avail = 0;
            if (fstatvfs(fd, &vfs) == 0)
                avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
            off_file_close(fd);
            unlink(path); /* we created it: leave nothing half made */
            if (e == ENOSPC || e == EFBIG || e == EDQUOT) {
                snprintf(want, sizeof want, "%.2f GiB", (double)size / (1u << 30));
                if (size < (1u << 30))
                    snprintf(want, sizeof want, "%.2f MiB", (double)size / (1u << 20));
                snprintf(have, sizeof have, "%.2f", (double)avail / (1u << 30));
                RETURN_IF(1, -e,
                          "cannot reserve %s for %s (%s GiB free; %s); free space or choose "
                          "another --offload-dir",
                          want, path, have, strerror(e));
            }
            RETURN_IF(1, -e, "%s: cannot reserve %s (%s); choose another --offload-dir", path,
                      fmt_bytes(want, sizeof want, size), strerror(e));
        }
    }
    if (direct)
        *direct = is_direct;
    return fd;
}

/* ------------------------------------------------------------ the queue
 *
 * take_chunk_locked and complete_chunk_locked are the whole protocol between
 * callers and the engine (or the workers); both run under d->mu. */

static void call_unqueue_locked(off_disk *d, rw_call *c)
{
    if (!c->queued)
        return;
    rw_call **pp = &d->head, *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = c->next;
        if (d->tail == c)
            d->tail = prev;
    }
    c->queued = 0;
    c->next = NULL;
}

/* A call is done once it is off the queue (all of it was cut, or it failed)
 * and none of its chunks is in flight. */
static void call_check_done_locked(off_disk *d, rw_call *c)
{
    if (!c->queued && c->inflight == 0 && !c->done) {
        c->done = 1;
        pthread_cond_broadcast(&d->cv_done); /* its caller sleeps on cv_done */
    }
}

/* Skip empty requests so that an exhausted cursor is seen at once. */
static void cursor_skip_empty(rw_call *c)
{
    while (c->next_io < c->n && c->ios[c->next_io].len == 0)
        c->next_io++;
}

/* Cut the next chunk off the head of the queue. @return 1 or 0 (empty). */
static int take_chunk_locked(off_disk *d, chunk *ch)
{
    while (d->head) {
        rw_call *c = d->head;
        cursor_skip_empty(c);
        if (c->next_io >= c->n) {
            call_unqueue_locked(d, c);
            call_check_done_locked(d, c);
            continue;
        }
        const off_io *io = &c->ios[c->next_io];
        uint64_t left = io->len - c->next_off;
        size_t n = left < CHUNK_MAX ? (size_t)left : CHUNK_MAX;
        *ch = (chunk){
            .call = c,
            .io = io,
            .buf = (char *)io->buf + c->next_off,
            .off = io->offset + c->next_off,
            .len = n,
            .buf_index = -1,
        };
        for (int i = 0; i < d->n_reg; i++) {
            if (ch->buf >= d->reg[i].base && ch->buf + n <= d->reg[i].base + d->reg[i].len) {
                ch->buf_index = i;
                break;
            }
        }
        c->next_off += n;
        if (c->next_off == io->len) {
            c->next_io++;
            c->next_off = 0;
            cursor_skip_empty(c);
        }
        c->inflight++;
        /* Round robin: a big call does not starve the others. */
        call_unqueue_locked(d, c);
        if (c->next_io < c->n) {
            c->queued = 1;
            if (d->tail)
                d->tail->next = c;
            else
                d->head = c;
            d->tail = c;
        }
        if (d->active++ == 0)
            d->busy_since = kern_now_s();
        return 1;
    }
    return 0;
}

static const char *hint(int e, int write)
{
    switch (e) {
    case ENOSPC:
    case EDQUOT:
        return "free space or choose another --offload-dir";
    case EIO:
        return "the device reported an I/O error; check it (dmesg) or choose another "
               "--offload-dir";
    case EINVAL:
        return "the buffer, length or offset is not 4096-aligned for O_DIRECT (a bug in the "
               "caller; please report it)";
    case EBADF:
        return write ? "the file is not open for writing; check its permissions"
                     : "the file is not open; this is a bug, please report it";
    case EINTR:
    case EAGAIN:
        return "it was retried " STR(RETRY_MAX) " times in a row without progress (signals "
               "arriving without end, or a file that is never ready); check what sends them "
               "and run again";
    default:
        return "check the file and the disk, or choose another --offload-dir";
    }
}

/* res: 0 when the whole chunk went through, -errno otherwise, or 1 for a
 * read that met the end of the file. */
static void complete_chunk_locked(off_disk *d, chunk *ch, int res)
{
    rw_call *c = ch->call;
    if (ch->io->write)
        d->bytes_written += ch->done;
    else
        d->bytes_read += ch->done;
    if (--d->active == 0)
        d->busy_s += kern_now_s() - d->busy_since;

    if (res != 0 && !c->err) {
        char sz[32];
        const char *path = off_file_path(ch->io->fd);
        const char *what = c->what ? c->what : "disk I/O";
        uint64_t at = ch->off + ch->done;
        fmt_bytes(sz, sizeof sz, ch->io->len);
        if (res == 1) {
            struct stat st;
            long long end = fstat(ch->io->fd, &st) == 0 ? (long long)st.st_size : -1;
            c->err = -EIO;
            snprintf(c->msg, sizeof c->msg,
                     "%s: read of %s at offset %" PRIu64 " for %s reaches past the end of "
                     "the file (%lld bytes, end met at offset %" PRIu64
                     "); the file is truncated or stale, recreate it",
                     path, sz, ch->io->offset, what, end, at);
        } else {
            c->err = res;
            snprintf(c->msg, sizeof c->msg,
                     "%s: %s of %s at offset %" PRIu64 " failed (%s) for %s; %s", path,
                     ch->io->write ? "write" : "read", sz, ch->io->offset, strerror(-res),
                     what, hint(-res, ch->io->write));
        }
        /* cut no more of a failed call; chunks in flight still finish */
        call_unqueue_locked(d, c);
    }
    c->inflight--;
    call_check_done_locked(d, c);
}

/* ------------------------------------------------------------ fallback */

/* Blocking transfer of the rest of one chunk; resumes short I/O. */
static int sync_rw(chunk *ch)
{
    while (ch->done < ch->len) {
        ssize_t r = ch->io->write
                        ? off_pwrite(ch->io->fd, ch->buf + ch->done, ch->len - ch->done,
                                     ch->off + ch->done)
                        : off_pread(ch->io->fd, ch->buf + ch->done, ch->len - ch->done,
                                    ch->off + ch->done);
        /* off_pread / off_pwrite retried EINTR already (a bounded number of
         * times); EAGAIN is retried here, as boundedly */
        if (r == -EAGAIN && ++ch->retries < RETRY_MAX)
            continue;
        if (r < 0)
            return (int)r;
        if (r == 0)
            return ch->io->write ? -EIO : 1;
        ch->done += (size_t)r;
        ch->retries = 0;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    off_disk *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stop && !d->head)
            pthread_cond_wait(&d->cv_work, &d->mu); /* wait for a queued call */
        if (!d->head)
            break; /* stop, and nothing left */
        chunk ch;
        if (!take_chunk_locked(d, &ch))
            continue;
        pthread_mutex_unlock(&d->mu);
        int res = sync_rw(&ch);
        pthread_mutex_lock(&d->mu);
        complete_chunk_locked(d, &ch, res);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ------------------------------------------------------------ io_uring */

#if FH_HAVE_URING
static void prep_chunk(off_disk *d, chunk *ch)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
    /* Never more chunks in flight than ring entries: an SQE is always free. */
    assert(sqe);
    char *p = ch->buf + ch->done;
    unsigned n = (unsigned)(ch->len - ch->done);
    uint64_t off = ch->off + ch->done;
    if (ch->buf_index >= 0 && ch->io->write)
        io_uring_prep_write_fixed(sqe, ch->io->fd, p, n, off, ch->buf_index);
    else if (ch->buf_index >= 0)
        io_uring_prep_read_fixed(sqe, ch->io->fd, p, n, off, ch->buf_index);
    else if (ch->io->write)
        io_uring_prep_write(sqe, ch->io->fd, p, n, off);
    else
        io_uring_prep_read(sqe, ch->io->fd, p, n, off);
    io_uring_sqe_set_data(sqe, ch);
}

static void *uring_main(void *arg)
{
    off_disk *d = arg;
    int inflight = 0; /* chunks whose SQE is in the ring or in the kernel */
    int stuck_logged = 0;
    chunk *finished[REAP_BATCH];
    int fin_res[REAP_BATCH];
    for (;;) {
        /* Fill the ring to its depth with chunks cut from the queue. */
        pthread_mutex_lock(&d->mu);
        while (!d->stop && !d->head && inflight == 0)
            pthread_cond_wait(&d->cv_work, &d->mu); /* idle: wait for a call */
        if (d->stop && !d->head && inflight == 0) {
            pthread_mutex_unlock(&d->mu);
            break;
        }
        int queued = 0;
        chunk *prepped[DEPTH_MAX];
        while (d->n_free > 0) {
            chunk *ch = &d->slots[d->free_slots[d->n_free - 1]];
            if (!take_chunk_locked(d, ch))
                break;
            d->n_free--;
            prepped[queued++] = ch;
        }
        pthread_mutex_unlock(&d->mu);
        for (int i = 0; i < queued; i++)
            prep_chunk(d, prepped[i]);
        inflight += queued;
        if (inflight == 0)
            continue;

        /* Submit once (new chunks and the resubmissions of the last batch)
         * and wait for at least one completion. An SQE handed to the ring
         * cannot be taken back, so errors are retried, never dropped. */
        int r = io_uring_submit_and_wait(&d->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && !stuck_logged) {
            stuck_logged = 1;
            err_log("[flexh2o] io_uring submit failed (%s); retrying", strerror(-r));
        }
        if (r < 0 && r != -EINTR)
            sched_yield();

        /* Reap whatever is ready, in one batch. */
        struct io_uring_cqe *cqes[REAP_BATCH];
        unsigned got = io_uring_peek_batch_cqe(&d->ring, cqes, REAP_BATCH);
        int n_fin = 0;
        for (unsigned k = 0; k < got; k++) {
            chunk *ch = io_uring_cqe_get_data(cqes[k]);
            int res = off_fault_complete(ch->io->fd, ch->io->write, cqes[k]->res);
            if ((res == -EAGAIN || res == -EINTR) && ++ch->retries < RETRY_MAX) {
                prep_chunk(d, ch); /* try again as it was */
                continue;
            }
            if (res > 0) {
                ch->retries = 0;
                ch->done += (size_t)res;
                if (ch->done < ch->len) { /* short: go on from where it stopped */
                    prep_chunk(d, ch);
                    continue;
                }
                res = 0;
            } else if (res == 0) {
                res = ch->io->write ? -EIO : 1; /* a read at the end of the file */
            }
            finished[n_fin] = ch;
            fin_res[n_fin++] = res;
        }
        io_uring_cq_advance(&d->ring, got);
        inflight -= n_fin;
        if (n_fin) {
            pthread_mutex_lock(&d->mu);
            for (int i = 0; i < n_fin; i++) {
                complete_chunk_locked(d, finished[i], fin_res[i]);
                d->free_slots[d->n_free++] = (int)(finished[i] - d->slots);
            }
            pthread_mutex_unlock(&d->mu);
        }
    }
    return NULL;
}
#endif

/* ------------------------------------------------------------ engine */

static atomic_int fallback_logged;

static void log_fallback(const char *reason)
{
    if (atomic_exchange(&fallback_logged, 1) == 0)
        err_log("[flexh2o] io_uring unavailable (%s); disk I/O falls back to pread/pwrite "
                "threads",
                reason);
}

int off_disk_create(int queue_depth, off_disk **out)
{
    RETURN_IF(!out, -EINVAL, "off_disk_create: no output pointer");
    *out = NULL;
    off_disk *d = calloc(1, sizeof *d);
    RETURN_IF(!d, -ENOMEM, "out of memory creating the disk engine");
    d->depth = queue_depth < DEPTH_MIN ? DEPTH_MIN
               : queue_depth > DEPTH_MAX ? DEPTH_MAX
                                         : queue_depth;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv_work, NULL);
    pthread_cond_init(&d->cv_done, NULL);

    const char *no = getenv("FLEXH2O_NO_URING");
    char reason[128];
    if (no && *no && strcmp(no, "0") != 0) {
        snprintf(reason, sizeof reason, "FLEXH2O_NO_URING=%s", no);
    } else {
#if FH_HAVE_URING
        int r = io_uring_queue_init((unsigned)d->depth, &d->ring, 0);
        if (r == 0) {
            d->slots = calloc((size_t)d->depth, sizeof *d->slots);
            d->free_slots = calloc((size_t)d->depth, sizeof *d->free_slots);
            if (!d->slots || !d->free_slots) {
                io_uring_queue_exit(&d->ring);
                free(d->slots);
                free(d->free_slots);
                free(d);
                RETURN_IF(1, -ENOMEM, "out of memory creating the disk engine");
            }
            for (int i = 0; i < d->depth; i++)
                d->free_slots[i] = d->depth - 1 - i;
            d->n_free = d->depth;
            d->uring = 1;
        } else {
            snprintf(reason, sizeof reason, "io_uring_queue_init: %s", strerror(-r));
        }
#else
        snprintf(reason, sizeof reason, "built without liburing");
#endif
    }
    if (!d->uring)
        log_fallback(reason);

    int n = d->uring ? 1 : N_WORKERS;
    for (int i = 0; i < n; i++) {
        void *(*fn)(void *) = worker_main;
#if FH_HAVE_URING
        if (d->uring)
            fn = uring_main;
#endif
        int e = pthread_create(&d->threads[i], NULL, fn, d);
        if (e) {
            off_disk_destroy(d); /* joins the threads started so far */
            RETURN_IF(1, -e, "cannot start the disk engine thread (%s)", strerror(e));
        }
        d->n_threads++;
    }
    *out = d;
    return 0;
}

void off_disk_destroy(off_disk *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv_work); /* wake the engine/workers to exit */
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < d->n_threads; i++)
        pthread_join(d->threads[i], NULL);
#if FH_HAVE_URING
    if (d->uring) {
        io_uring_queue_exit(&d->ring);
        free(d->slots);
        free(d->free_slots);
    }
#endif
    free(d->reg);
    pthread_cond_destroy(&d->cv_done);
    pthread_cond_destroy(&d->cv_work);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

const char *off_disk_kind(const off_disk *d)
{
    return d && d->uring ? "io_uring" : "pread/pwrite threads";
}

int off_disk_register(off_disk *d, void *const *bufs, const size_t *lens, int n)
{
    RETURN_IF(!d || n < 0 || (n > 0 && (!bufs || !lens)), -EINVAL,
              "off_disk_register: bad arguments (a bug in the caller)");
#if FH_HAVE_URING
    if (!d->uring)
        return 0;
    int n_piece = 0;
    for (int i = 0; i < n; i++)
        n_piece += (int)((lens[i] + REG_PIECE - 1) / REG_PIECE);
    reg_piece *reg = n_piece ? calloc((size_t)n_piece, sizeof *reg) : NULL;
    struct iovec *iov = n_piece ? calloc((size_t)n_piece, sizeof *iov) : NULL;
    if (n_piece && (!reg || !iov)) {
        free(reg);
        free(iov);
        RETURN_IF(1, -ENOMEM, "out of memory registering %d I/O buffers", n);
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        for (size_t at = 0; at < lens[i]; at += REG_PIECE) {
            size_t len = lens[i] - at < REG_PIECE ? lens[i] - at : REG_PIECE;
            reg[k] = (reg_piece){(char *)bufs[i] + at, len};
            iov[k] = (struct iovec){reg[k].base, len};
            k++;
        }
    }
    /* Under mu: take_chunk_locked reads the table. The kernel keeps buffers
     * of requests in flight alive across a replace. */
    pthread_mutex_lock(&d->mu);
    if (d->n_reg)
        io_uring_unregister_buffers(&d->ring);
    free(d->reg);
    d->reg = NULL;
    d->n_reg = 0;
    int r = n_piece ? io_uring_register_buffers(&d->ring, iov, (unsigned)n_piece) : 0;
    if (r == 0) {
        d->reg = reg;
        d->n_reg = n_piece;
        reg = NULL;
    }
    pthread_mutex_unlock(&d->mu);
    free(reg);
    free(iov);
    if (r < 0) {
        static atomic_int logged;
        if (atomic_exchange(&logged, 1) == 0)
            err_log("[flexh2o] cannot register %d I/O buffers with io_uring (%s); using plain "
                    "reads and writes",
                    n, strerror(-r));
    }
#else
    (void)bufs;
    (void)lens;
#endif
    return 0;
}

int off_disk_rw(off_disk *d, const off_io *ios, int n, const char *what)
{
    RETURN_IF(!d || n < 0 || (n > 0 && !ios), -EINVAL,
              "off_disk_rw: bad arguments for %s (a bug in the caller)", what ? what : "I/O");
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        RETURN_IF(ios[i].len && !ios[i].buf, -EINVAL,
                  "off_disk_rw: request %d for %s has no buffer (a bug in the caller)", i,
                  what ? what : "I/O");
        total += ios[i].len;
    }
    if (total == 0)
        return 0;

    rw_call c = {.ios = ios, .n = n, .what = what, .queued = 1};
    pthread_mutex_lock(&d->mu);
    if (d->tail)
        d->tail->next = &c;
    else
        d->head = &c;
    d->tail = &c;
    pthread_cond_broadcast(&d->cv_work); /* an idle engine or worker picks it up */
    while (!c.done)
        pthread_cond_wait(&d->cv_done, &d->mu); /* until all of this call's chunks complete */
    pthread_mutex_unlock(&d->mu);
    RETURN_IF(c.err, c.err, "%s", c.msg);
    return 0;
}

void off_disk_counters(const off_disk *d, uint64_t *read, uint64_t *written, double *busy_s)
{
    if (!d) {
        if (read)
            *read = 0;
        if (written)
            *written = 0;
        if (busy_s)
            *busy_s = 0;
        return;
    }
    /* The mutex is not part of the engine's logical state: lock it through
     * a non-const pointer. */
    off_disk *m = (off_disk *)d;
    pthread_mutex_lock(&m->mu);
    if (read)
        *read = d->bytes_read;
    if (written)
        *written = d->bytes_written;
    if (busy_s)
        *busy_s = d->busy_s + (d->active ? kern_now_s() - d->busy_since : 0);
    pthread_mutex_unlock(&m->mu);
}
