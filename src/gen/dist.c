/* dist.c: one job over MPI ranks (dist.h; DESIGN.md "Scale-out").
 *
 *   dist_init: MPI_Init_thread when mpirun / srun started us, the host's
 *              ranks (MPI_Comm_split_type), a silent log on ranks > 0
 *   dist_agree, dist_window, dist_bcast_i64: nonblocking collectives,
 *              waited on by polling and sleeping
 *   dist_out:  rank 0 keeps one FIFO of records per rank (a rank sends
 *              its records in its own request order, and MPI keeps the
 *              order of messages between two ranks), and writes the head
 *              of the FIFO of the rank that owns the next request due
 *              (drain); its own records enter FIFO 0 from the main
 *              thread, the others' from the receiving thread (recv_main)
 *
 * Messages to rank 0 (tags): REC {int64 seq, int64 generated, id\0,
 * record\0}, DONE {double v[nv], host[64]}, FAIL {int32 rc, message\0};
 * from rank 0: END {int32 status} once every rank is done; MSG: the
 * message of a rank failing a dist_agree.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"
#include "err.h"
#include "fh_config.h"
#include "kern.h"

#if FH_HAVE_MPI
#include <mpi.h>
#endif

enum { TAG_REC = 101, TAG_DONE, TAG_FAIL, TAG_END, TAG_MSG };

static dist_world world = {.rank = 0, .size = 1, .local_rank = 0, .local_size = 1};

const dist_world *dist_get(void)
{
    return &world;
}

int dist_active(void)
{
    return world.size > 1;
}

#if FH_HAVE_MPI
static int mpi_on;

/* Sleep a little between polls of a pending message or collective. */
static void nap(void)
{
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
}

/* An err_log hook that drops the line: ranks > 0 leave the job's messages
 * (bad prompt lines, warnings) to rank 0, which meets the same ones. */
static void log_silent(const char *msg, void *ud)
{
    (void)msg;
    (void)ud;
}
#endif

/* 1 when a launcher (mpirun, srun) started this process as one rank of a
 * job: its environment names the world. */
static int launched_as_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

#if FH_HAVE_MPI

int dist_init(int *argc, char ***argv)
{
    gethostname(world.host, sizeof world.host - 1);
    if (!launched_as_rank())
        return 0;
    int provided = 0;
    RETURN_IF(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS,
              -EIO, "MPI_Init_thread failed; check the mpirun / srun command");
    mpi_on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank, MPI_INFO_NULL,
                        &local);
    MPI_Comm_rank(local, &world.local_rank);
    MPI_Comm_size(local, &world.local_size);
    MPI_Comm_free(&local);
    if (world.rank > 0)
        err_set_log(log_silent, NULL);
    RETURN_IF(world.size > 1 && provided < MPI_THREAD_SERIALIZED, -ENOTSUP,
              "this MPI gives thread level %d, flexh2o needs MPI_THREAD_SERIALIZED; use an "
              "MPI built with threads (Open MPI is)", provided);
    RETURN_IF(world.size > GEN_PART_MAX, -EINVAL, "%d ranks: flexh2o runs at most %d",
              world.size, GEN_PART_MAX);
    return 0;
}

void dist_finalize(void)
{
    if (mpi_on)
        MPI_Finalize();
    mpi_on = 0;
}

_Noreturn void dist_abort(int status)
{
    fflush(stdout);
    fflush(stderr);
    if (mpi_on)
        MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

/* Wait for a nonblocking operation, sleeping between tests. @return 0 or
 * -EIO. */
static int wait_req(MPI_Request *rq)
{
    int done = 0;
    while (!done) {
        if (MPI_Test(rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return -EIO;
        if (!done)
            nap();
    }
    return 0;
}

/* Receive one message of tag from src into a malloc'd, NUL-terminated
 * buffer, polling. @return its length, or -errno. */
static int recv_poll(int src, int tag, char **buf)
{
    MPI_Status st;
    int flag = 0;
    while (!flag) {
        if (MPI_Iprobe(src, tag, MPI_COMM_WORLD, &flag, &st) != MPI_SUCCESS)
            return -EIO;
        if (!flag)
            nap();
    }
    int len = 0;
    MPI_Get_count(&st, MPI_BYTE, &len);
    *buf = malloc((size_t)len + 1);
    if (!*buf)
        return -ENOMEM;
    MPI_Recv(*buf, len, MPI_BYTE, src, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    (*buf)[len] = 0;
    return len;
}

int dist_agree(int rc)
{
    if (world.size == 1)
        return rc < 0 ? rc : 0;
    int key = rc < 0 ? world.rank : world.size, low = world.size;
    MPI_Request rq;
    MPI_Iallreduce(&key, &low, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &rq);
    RETURN_IF(wait_req(&rq) < 0, -EIO, "MPI failed agreeing on a step");
    if (low == world.size)
        return 0;
    if (getenv("FH_DIST_DEBUG"))
        fprintf(stderr, "rank %d: agree rc %d low %d msg %s\n", world.rank, rc, low, err_msg());
    int frc = rc;
    MPI_Ibcast(&frc, 1, MPI_INT, low, MPI_COMM_WORLD, &rq);
    RETURN_IF(wait_req(&rq) < 0, -EIO, "MPI failed agreeing on a step");
    if (low != 0 && world.rank == low) {
        char msg[1024];
        snprintf(msg, sizeof msg, "rank %d (%s): %s", low, world.host,
                 err_msg()[0] ? err_msg() : "failed");
        MPI_Send(msg, (int)strlen(msg), MPI_BYTE, 0, TAG_MSG, MPI_COMM_WORLD);
    } else if (low != 0 && world.rank == 0) {
        char *msg = NULL;
        int n = recv_poll(low, TAG_MSG, &msg);
        err_clear();
        err_set(__FILE__, __LINE__, "%s", n >= 0 ? msg : "another rank failed");
        free(msg);
    }
    return frc < 0 ? frc : -EIO;
}

int dist_window(int rc, unsigned char *flags)
{
    if (world.size == 1)
        return rc;
    FORWARD_IF(dist_agree(rc));
    int mm[2] = {rc, -rc}, out[2];
    MPI_Request rq;
    MPI_Iallreduce(mm, out, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &rq);
    RETURN_IF(wait_req(&rq) < 0, -EIO, "MPI failed in the first pass");
    RETURN_IF(out[0] != -out[1], -EIO, "the ranks read %d to %d requests from one window of "
              "the prompt file: every rank must read the same file (a filesystem every host "
              "sees)", out[0], -out[1]);
    if (rc > 0) {
        MPI_Ibcast(flags, rc, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
        RETURN_IF(wait_req(&rq) < 0, -EIO, "MPI failed in the first pass");
    }
    return rc;
}

int dist_bcast_i64(int64_t *v)
{
    if (world.size == 1)
        return 0;
    MPI_Request rq;
    MPI_Ibcast(v, 1, MPI_INT64_T, 0, MPI_COMM_WORLD, &rq);
    RETURN_IF(wait_req(&rq) < 0, -EIO, "MPI failed broadcasting a value");
    return 0;
}

#else /* built without MPI: the world is this process */

int dist_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    gethostname(world.host, sizeof world.host - 1);
    RETURN_IF(launched_as_rank() && getenv("OMPI_COMM_WORLD_SIZE") &&
              atoi(getenv("OMPI_COMM_WORLD_SIZE")) > 1, -ENOTSUP,
              "started by mpirun, but this flexh2o was built without MPI; rebuild with "
              "-Dmpi=enabled (libopenmpi-dev) or split the job with --shard I/N and merge");
    return 0;
}

void dist_finalize(void)
{
}

_Noreturn void dist_abort(int status)
{
    fflush(stdout);
    fflush(stderr);
    exit(status);
}

int dist_agree(int rc)
{
    return rc < 0 ? rc : 0;
}

int dist_window(int rc, unsigned char *flags)
{
    (void)flags;
    return rc;
}

int dist_bcast_i64(int64_t *v)
{
    (void)v;
    return 0;
}

#endif

/* ------------------------------------------------------------ dist_out */

typedef struct dist_rec {
    struct dist_rec *next;
    long seq;
    char *id, *rec;      /* one allocation: id\0rec\0 */
} dist_rec;

struct dist_out {
    const gen_part *gp;
    dist_write_fn write;
    void *ud;
    pthread_mutex_t mu;
    dist_rec **head, **tail; /* (size) each rank's records, in its order */
    long next;           /* the first request not yet written */
    long written, generated, n_todo;
    long held, held_max; /* records waiting for an earlier one */
    int progress;
    const char *unit;    /* what the progress line counts: "prompts", "windows" */
    double t0, last;
    int fail;            /* -errno: a write or a rank failed; the job stops */
    char fail_msg[2048];
    int n_left;          /* ranks > 0 not yet finished */
    char **done_buf;     /* (size) each rank's DONE message */
    int *done_len;
    int thread_on;
    pthread_t thr;
};

/* Record the first failure (under the lock). */
static void out_failed(dist_out *d, int rc, const char *fmt, const char *msg)
{
    if (d->fail)
        return;
    d->fail = rc < 0 ? rc : -EIO;
    snprintf(d->fail_msg, sizeof d->fail_msg, fmt, msg);
}

/* Write every record that is due, in request order (under the lock). */
static void drain(dist_out *d)
{
    while (!d->fail && d->next < d->gp->n) {
        int r = d->gp->owner[d->next];
        if (r < 0) {
            d->next++;
            continue;
        }
        dist_rec *h = d->head[r];
        if (!h)
            return;
        if (h->seq != d->next) {
            char what[128];
            snprintf(what, sizeof what, "rank %d sent request %ld where %ld was due", r, h->seq,
                     d->next);
            out_failed(d, -EPROTO, "internal: %s", what);
            return;
        }
        d->head[r] = h->next;
        if (!d->head[r])
            d->tail[r] = NULL;
        d->held--;
        int rc = d->write(d->ud, h->id, h->rec);
        if (rc < 0)
            out_failed(d, rc, "%s", err_msg()[0] ? err_msg() : "writing the output failed");
        free(h);
        d->written++;
        d->next++;
    }
}

/* Queue a record of rank r (under the lock). @return 0 or -ENOMEM. */
static int enqueue(dist_out *d, int r, long seq, const char *id, const char *rec)
{
    size_t li = strlen(id) + 1, lr = strlen(rec) + 1;
    dist_rec *h = malloc(sizeof *h + li + lr);
    if (!h)
        return -ENOMEM;
    h->next = NULL;
    h->seq = seq;
    h->id = (char *)(h + 1);
    h->rec = h->id + li;
    memcpy(h->id, id, li);
    memcpy(h->rec, rec, lr);
    if (d->tail[r])
        d->tail[r]->next = h;
    else
        d->head[r] = h;
    d->tail[r] = h;
    if (++d->held > d->held_max)
        d->held_max = d->held;
    return 0;
}

/* The job's progress line, at most once a second (force: now), under the
 * lock. */
static void out_progress(dist_out *d, int force)
{
    double now = kern_now_s(), el = now - d->t0;
    if (!d->progress || d->n_todo == 0 || (!force && now - d->last < 1.0))
        return;
    d->last = now;
    if (d->written == 0 || el <= 0)
        err_log("[flexh2o] 0/%ld %s done on %d ranks, %ld tokens generated, no ETA before "
                "the first", d->n_todo, d->unit, world.size, d->generated);
    else
        err_log("[flexh2o] %ld/%ld %s done on %d ranks, %.1f tok/s, ETA %.0f s", d->written,
                d->n_todo, d->unit, world.size, d->generated / el,
                el * (double)(d->n_todo - d->written) / (double)d->written);
}

/* Free d and every record it still holds. */
static void out_free(dist_out *d)
{
    for (int r = 0; r < world.size; r++) {
        for (dist_rec *h = d->head[r], *nx; h; h = nx) {
            nx = h->next;
            free(h);
        }
        free(d->done_buf[r]);
    }
    pthread_mutex_destroy(&d->mu);
    free(d->head);
    free(d->tail);
    free(d->done_buf);
    free(d->done_len);
    free(d);
}

#if FH_HAVE_MPI
static void *recv_main(void *arg);
#endif

int dist_out_start(const gen_part *gp, dist_write_fn write, void *ud, long n_todo,
                   const char *unit, int progress, dist_out **out)
{
    *out = NULL;
    dist_out *d = calloc(1, sizeof *d);
    size_t n = (size_t)world.size;
    if (d) {
        d->head = calloc(n, sizeof *d->head);
        d->tail = calloc(n, sizeof *d->tail);
        d->done_buf = calloc(n, sizeof *d->done_buf);
        d->done_len = calloc(n, sizeof *d->done_len);
    }
    if (!d || !d->head || !d->tail || !d->done_buf || !d->done_len) {
        if (d) {
            free(d->head);
            free(d->tail);
            free(d->done_buf);
            free(d->done_len);
        }
        free(d);
        RETURN_IF(1, -ENOMEM, "out of memory");
    }
    d->gp = gp;
    d->write = write;
    d->ud = ud;
    d->n_todo = n_todo;
    d->progress = progress && world.rank == 0;
    d->unit = unit;
    d->t0 = d->last = kern_now_s();
    d->n_left = world.rank == 0 ? world.size - 1 : 0;
    pthread_mutex_init(&d->mu, NULL);
#if FH_HAVE_MPI
    if (world.rank == 0 && world.size > 1) {
        if (pthread_create(&d->thr, NULL, recv_main, d) != 0) {
            out_free(d);
            RETURN_IF(1, -EAGAIN, "cannot start the thread receiving the other ranks' records");
        }
        d->thread_on = 1;
    }
#endif
    *out = d;
    return 0;
}

#if FH_HAVE_MPI
/* Rank 0's receiving thread: the other ranks' records, DONE and FAIL
 * messages, until every rank is finished; the progress line meanwhile. */
static void *recv_main(void *arg)
{
    dist_out *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        int left = d->n_left;
        out_progress(d, 0);
        pthread_mutex_unlock(&d->mu);
        if (left == 0)
            return NULL;
        MPI_Status st;
        int flag = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
        if (!flag) {
            nap();
            continue;
        }
        int len = 0, src = st.MPI_SOURCE, tag = st.MPI_TAG;
        MPI_Get_count(&st, MPI_BYTE, &len);
        char *buf = malloc((size_t)len + 1);
        if (!buf) { /* out of memory: the job cannot go on */
            pthread_mutex_lock(&d->mu);
            out_failed(d, -ENOMEM, "%s", "out of memory receiving a record");
            d->n_left = 0;
            pthread_mutex_unlock(&d->mu);
            return NULL;
        }
        MPI_Recv(buf, len, MPI_BYTE, src, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        buf[len] = 0;
        pthread_mutex_lock(&d->mu);
        if (tag == TAG_REC && len > 16) {
            int64_t hdr[2];
            memcpy(hdr, buf, sizeof hdr);
            const char *id = buf + 16, *rec = id + strlen(id) + 1;
            d->generated += (long)hdr[1];
            if (rec >= buf + len || enqueue(d, src, (long)hdr[0], id, rec) < 0)
                out_failed(d, -ENOMEM, "%s", "out of memory holding a record");
            drain(d);
            free(buf);
        } else if (tag == TAG_DONE && !d->done_buf[src]) {
            d->done_buf[src] = buf;
            d->done_len[src] = len;
            d->n_left--;
        } else if (tag == TAG_FAIL && len >= 4) {
            char msg[1100];
            snprintf(msg, sizeof msg, "rank %d: %s", src, buf + 4);
            int32_t rc;
            memcpy(&rc, buf, 4);
            out_failed(d, rc, "%s", msg);
            d->n_left = 0; /* rank 0 reports it now and ends the job */
            free(buf);
        } else {
            out_failed(d, -EPROTO, "%s", "internal: an unexpected message from another rank");
            free(buf);
        }
        pthread_mutex_unlock(&d->mu);
    }
}
#endif

int dist_out_put(dist_out *d, long seq, const char *id, const char *record, long generated)
{
#if FH_HAVE_MPI
    if (world.rank > 0) {
        size_t li = strlen(id) + 1, lr = strlen(record) + 1, len = 16 + li + lr;
        RETURN_IF(len > INT_MAX, -EOVERFLOW, "a record of %zu bytes is too long to send",
                  len);
        char *buf = malloc(len);
        RETURN_IF(!buf, -ENOMEM, "out of memory");
        int64_t hdr[2] = {seq, generated};
        memcpy(buf, hdr, sizeof hdr);
        memcpy(buf + 16, id, li);
        memcpy(buf + 16 + li, record, lr);
        int rc = MPI_Send(buf, (int)len, MPI_BYTE, 0, TAG_REC, MPI_COMM_WORLD);
        free(buf);
        RETURN_IF(rc != MPI_SUCCESS, -EIO, "MPI failed sending a record to rank 0");
        return 0;
    }
#endif
    pthread_mutex_lock(&d->mu);
    int rc = enqueue(d, 0, seq, id, record);
    if (rc < 0)
        out_failed(d, rc, "%s", "out of memory holding a record");
    d->generated += generated;
    drain(d);
    out_progress(d, 0);
    rc = d->fail;
    pthread_mutex_unlock(&d->mu);
    RETURN_IF(rc < 0, rc, "%s", d->fail_msg);
    return 0;
}

/* This rank's DONE message: v[0..nv) then the host. */
static char *done_msg(const double *v, int nv, int *len)
{
    *len = (int)(sizeof(double) * (size_t)nv + 64);
    char *buf = calloc(1, (size_t)*len);
    if (buf) {
        memcpy(buf, v, sizeof(double) * (size_t)nv);
        memcpy(buf + sizeof(double) * (size_t)nv, world.host, 63);
    }
    return buf;
}

int dist_out_finish(dist_out *d, int rc, const double *v, int nv, dist_report *rep)
{
    memset(rep, 0, sizeof *rep);
#if FH_HAVE_MPI
    if (world.rank > 0) {
        out_free(d);
        if (rc < 0) { /* rank 0 ends the job once it reads this */
            char msg[1024];
            int32_t rc32 = rc;
            memcpy(msg, &rc32, 4);
            snprintf(msg + 4, sizeof msg - 4, "%s (on %s)",
                     err_msg()[0] ? err_msg() : "failed", world.host);
            MPI_Send(msg, 4 + (int)strlen(msg + 4) + 1, MPI_BYTE, 0, TAG_FAIL, MPI_COMM_WORLD);
        } else {
            int len;
            char *buf = done_msg(v, nv, &len);
            RETURN_IF(!buf, -ENOMEM, "out of memory");
            MPI_Send(buf, len, MPI_BYTE, 0, TAG_DONE, MPI_COMM_WORLD);
            free(buf);
        }
        char *end = NULL;
        int n = recv_poll(0, TAG_END, &end);
        int32_t status = 1;
        if (n >= 4)
            memcpy(&status, end, 4);
        free(end);
        return rc < 0 ? rc : status == 0 ? 0 : -ECANCELED;
    }
#endif
    pthread_mutex_lock(&d->mu);
    if (rc < 0 && !d->fail)
        out_failed(d, rc, "%s", err_msg()[0] ? err_msg() : "failed");
    if (rc < 0) /* rank 0 failed: stop receiving; the caller ends the job */
        d->n_left = 0;
    if (rc == 0)
        d->done_buf[0] = done_msg(v, nv, &d->done_len[0]);
    pthread_mutex_unlock(&d->mu);
    if (d->thread_on)
        pthread_join(d->thr, NULL);
    pthread_mutex_lock(&d->mu);
    drain(d);
    out_progress(d, 1);
    if (!d->fail && d->next < d->gp->n)
        out_failed(d, -EPROTO, "internal: %s", "records were missing when every rank was done");
    int frc = d->fail;
    pthread_mutex_unlock(&d->mu);
    if (frc < 0) {
        err_clear();
        err_set(__FILE__, __LINE__, "%s", d->fail_msg);
        out_free(d);
        return frc;
    }
    rep->nv = nv;
    rep->size = world.size;
    rep->wall_s = kern_now_s() - d->t0;
    rep->v = calloc((size_t)world.size * (size_t)(nv > 0 ? nv : 1), sizeof *rep->v);
    rep->host = calloc((size_t)world.size, sizeof *rep->host);
    for (int r = 0; rep->v && rep->host && r < world.size; r++) {
        if (d->done_buf[r] && d->done_len[r] >= (int)(sizeof(double) * (size_t)nv))
            memcpy(rep->v + (size_t)r * (size_t)nv, d->done_buf[r],
                   sizeof(double) * (size_t)nv);
        if (d->done_buf[r] && d->done_len[r] >= (int)(sizeof(double) * (size_t)nv + 64))
            memcpy(rep->host[r], d->done_buf[r] + sizeof(double) * (size_t)nv, 63);
    }
    out_free(d);
#if FH_HAVE_MPI
    for (int r = 1; r < world.size; r++) { /* every rank is done: let them leave */
        int32_t ok = 0;
        MPI_Send(&ok, 4, MPI_BYTE, r, TAG_END, MPI_COMM_WORLD);
    }
#endif
    RETURN_IF(!rep->v || !rep->host, -ENOMEM, "out of memory");
    return 0;
}

void dist_report_free(dist_report *rep)
{
    free(rep->v);
    free(rep->host);
    memset(rep, 0, sizeof *rep);
}
