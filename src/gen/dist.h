/* dist.h: one job over several processes (DESIGN.md "Scale-out"): MPI
 * ranks started by mpirun or srun, each with its own device and its own
 * block schedule over its share of the requests (gen_part), the results
 * flowing to rank 0, which alone writes the output, in input order.
 *
 *   main():          dist_init ... dist_finalize (MPI only when started by
 *                    mpirun / srun and built with -Dmpi)
 *   each setup step: dist_agree (a rank that fails stops every rank; rank 0
 *                    holds its message)
 *   the first pass:  dist_window per window of the prompt file (rank 0's
 *                    "already written" flags to every rank)
 *   the run:         dist_out_start -> dist_out_put per finished request
 *                    -> dist_out_finish (every rank's numbers on rank 0)
 *
 * Rank 0 receives on a thread of its own while its main thread computes;
 * only that thread calls MPI meanwhile (MPI_THREAD_SERIALIZED). Waits
 * poll and sleep rather than spin, so that ranks sharing cores (CPU ranks,
 * mpirun --oversubscribe) do not steal them from each other.
 *
 * Alone (one process, or built without MPI) the world is {rank 0 of 1}:
 * dist_agree and dist_window return at once and dist_out writes what it
 * is given, in order.
 */
#ifndef FH_DIST_H
#define FH_DIST_H

#include <stdint.h>

#include "gen.h"

typedef struct dist_world {
    int rank, size;               /* this process and the job's: 0 and 1 alone */
    int local_rank, local_size;   /* on this host: the GPU index, the cores' share */
    char host[64];
} dist_world;

/* Join the job's MPI world when this process was started by mpirun or
 * srun (their environment says so) and the build has MPI; otherwise the
 * world is this process alone. Call once, first thing in main. @return 0,
 * or -ENOTSUP (started by mpirun, built without MPI) or -EIO, with a
 * message. */
int dist_init(int *argc, char ***argv);
/* The world dist_init found. */
const dist_world *dist_get(void);
/* 1 when the job has more than one rank. */
int dist_active(void);
/* Leave the MPI world (a no-op alone). Call once, last thing in main. */
void dist_finalize(void);
/* End every rank of the job now with status (MPI_Abort; exit alone). */
_Noreturn void dist_abort(int status);

/* Every rank passes its result of the same step. @return 0 when every
 * rank succeeded, else the rc of the lowest rank that failed, on every
 * rank; rank 0 then holds its message (err_msg: "rank R: ..." when R is
 * not 0). */
int dist_agree(int rc);

/* One window of the first pass over the prompt file: every rank passes
 * its reader's result rc (the requests read, 0 at the end, or -errno);
 * when all agree on it, rank 0's flags[0..rc) reach every rank. @return rc,
 * or the failure of a rank (as dist_agree), or -EIO when the ranks read
 * different numbers of requests (the file differs between hosts). */
int dist_window(int rc, unsigned char *flags);

/* Rank 0's value of *v on every rank. @return 0 or -EIO. */
int dist_bcast_i64(int64_t *v);

/* Rank 0's output writer: called in input order, under dist_out's lock,
 * with a request's key (compact JSON) and record (one line, no '\n').
 * @return 0 or -errno with a message (the job stops). */
typedef int (*dist_write_fn)(void *ud, const char *id, const char *record);

typedef struct dist_out dist_out;

/* Start collecting the records of the job split gp (every rank has the
 * same): rank 0 writes them through write (ud) in request order, skipping
 * the requests gp gives no rank; the other ranks send theirs to it.
 * n_todo: the requests the job runs, for rank 0's progress line ("N/M
 * <unit> done on R ranks, X tok/s"; when progress, at most once a second,
 * also while it waits for the other ranks). @return 0 or -errno. */
int dist_out_start(const gen_part *gp, dist_write_fn write, void *ud, long n_todo,
                   const char *unit, int progress, dist_out **d);
/* This rank's record of request seq (key id; its tokens, generated or
 * scored, for the progress line). @return 0, or -errno when writing failed or another
 * rank failed (the job stops: err_msg says why). */
int dist_out_put(dist_out *d, long seq, const char *id, const char *record, long generated);

/* What each rank reports at the end: nv numbers of its own choosing and
 * its host (rank 0's array, (size, nv) row-major). */
typedef struct dist_report {
    double *v;           /* (size, nv) */
    int nv, size;
    char (*host)[64];    /* (size) */
    double wall_s;       /* rank 0: from dist_out_start until every rank finished */
} dist_report;

/* End the run: every rank passes its result rc and, when rc is 0, its nv
 * numbers v. Rank 0 waits for every other rank (its progress line goes
 * on), writes what is still held, and gets every rank's numbers in *rep
 * (free with dist_report_free). @return 0, or the first failure (rank 0:
 * err_msg names the rank). Frees d. */
int dist_out_finish(dist_out *d, int rc, const double *v, int nv, dist_report *rep);
/* Free what dist_out_finish put in rep. */
void dist_report_free(dist_report *rep);

#endif
