/* sched_impl.h: the scheduler's internals shared by sched_plan.c,
 * lanes.c and sched.c (not a public header).
 *
 * Where things live (per policy, see sched_plan.c for the sizes):
 *
 *   weights of layer l: one blob (sched_blob_layout) cut at tensor
 *     boundaries into [0, w_gpu) GPU home | [w_gpu, w_cpu) CPU home |
 *     [w_cpu, blob) disk (weights.bin in --offload-dir, or the store),
 *     the cuts of each layer (sched_w_gpu, sched_w_cpu)
 *   KV of (layer l, GPU batch k): sequences [0, g) GPU home | [g, g + c)
 *     CPU home | [g + c, gbs) disk (kv.bin), each a "record"
 *     [kc | vc | pos | scores] of its sequences
 *   compress_weight / compress_cache: the matrices of a blob / kc and vc of
 *     a record are 4-bit rows (kern.h) on every tier, so every tier and
 *     link carries the compressed bytes; they expand only on the GPU tier
 *   weight_fmt (wh): on a backend computing in fp32 the whole blob is
 *     16-bit on every tier (an fp16 store's segment byte for byte); the
 *     model widens a layer into the work scratch once per block
 *   activations x of GPU batch k: (max_rows, d) on one tier
 *
 * Anything not on the GPU tier is copied into a GPU staging slot (two per
 * kind, so that the next item loads while this one computes) and, when it
 * changed, stored back to its home after the compute.
 */
#ifndef FH_SCHED_IMPL_H
#define FH_SCHED_IMPL_H

#include <pthread.h>
#include <stdint.h>

#include "off.h"
#include "scheduler.h"

/* Byte layout of a KV record of n sequences (sub-arrays 256-aligned). */
typedef struct kv_layout {
    size_t kc, vc, pos, scores; /* offsets; scores == SIZE_MAX: none */
    size_t bytes;
} kv_layout;

/* Geometry derived from (config, elem size, policy, shape): sched_geom(). */
typedef struct sched_geom {
    size_t es;
    int L, H, KVH, hd, d, V;  /* layers, heads, KV heads, head_dim, hidden, vocab */
    size_t qkv;            /* width of the fused q/k/v rows */
    size_t att;            /* width of the scratch att (sched_att_dim) */
    int gbs, K, block;
    int wq, kvq;           /* compress_weight, compress_cache */
    kern_kv_fmt kv_fmt;    /* the KV rows' format: KERN_KV_FMT_Q4 with compress_cache,
                            * else KERN_KV_FMT_BF16 under sched_shape.weight_direct,
                            * else KERN_KV_FMT_PLAIN */
    size_t kv_row;         /* bytes of one KV row (a slot of a head) in that format */
    size_t w_exp;          /* elements of the scratch that 4-bit matrices expand into:
                            * a layer's four (K > 1) or the largest one; 0 without wq */
    int wh;                /* the tiers' blobs are 16-bit (kern_h16; sched_shape.weight_fmt
                            * where it applies), widened per block into a scratch */
    int wdirect;           /* wh and sched_shape.weight_direct: the matrices are read as
                            * they are (bf16 matmuls), never widened */
    size_t wes;            /* bytes per element of the blobs on the tiers (2 with wh) */
    size_t w_wide;         /* bytes of a layer widened into the storage type (the blob
                            * in that type); 0 without wh */
    size_t w_scr;          /* bytes of the scratch sched_scratch.w with wh: w_wide, or
                            * with wdirect or one GPU batch the widened vectors and
                            * linear_h16's scratch (sched_plan.c fused_scratch) */
    size_t blob;           /* layer blob bytes on the tiers (sched_blob_layout, wes) */
    /* the blob's cut points (bytes, tensor boundaries): layer l holds [0,
     * sched_w_gpu(g, l)) in its GPU home and [that, sched_w_cpu(g, l)) in
     * its CPU home. Every layer cuts at w_gpu / w_cpu, except (policy
     * weight_layers) n_gpu_up / n_cpu_up layers spread evenly over the
     * model (sched_layer_up) that cut at w_gpu_up / w_cpu_up, the next
     * tensor boundary */
    size_t w_gpu, w_cpu, w_gpu_up, w_cpu_up;
    int n_gpu_up, n_cpu_up;
    uint16_t w_rank[SCHED_MAX_LAYERS]; /* layer l's place in van der Corput order */
    size_t w_gpu_all;      /* sum over the layers: GPU-home bytes */
    size_t w_cpu_all;      /* CPU-home bytes */
    size_t w_disk_all;     /* bytes of the layers' disk spans (sched_w_span) */
    size_t w_gpu_min;      /* the smallest GPU share: < blob when any layer loads */
    size_t w_cpu_min;      /* the smallest GPU + CPU share: < blob when any layer has a
                            * disk share */
    size_t w_stage_from;   /* the smallest of the layers' w_gpu (host_visible: w_cpu)
                            * rounded down to OFF_ALIGN: a weight slot holds the blob's
                            * bytes [w_stage_from, align_up(blob)) */
    size_t globals;        /* embeddings + final LayerNorm (+ untied head) bytes */
    size_t head_es;        /* bytes per element of the head matrix: 2 under
                            * weight_direct (sched_model.globals_mat), else es */
    int kv_n[SCHED_TIERS]; /* sequences of a GPU batch per tier */
    int kv_seq0[SCHED_TIERS];
    kv_layout kv[SCHED_TIERS];
    size_t kv_disk_stride; /* bytes per (l, k) record in kv.bin (aligned) */
    size_t kv_log_entry;   /* bytes of a decode step's entry in a disk record's row log
                            * (aligned, kv_dirty.c) */
    int kv_log_cap;        /* entries a record's row log holds; 0: no log */
    uint64_t kv_log_at;    /* where the records' row logs start in kv.bin: after the
                            * records, kv_log_cap entries each */
    int act_tier;
    size_t x_bytes;        /* (max_rows, d) */
    size_t x_disk_stride;
    size_t w_disk_span;    /* the largest of the layers' disk spans */
    size_t host_stage;     /* bytes of each I/O lane's host staging buffer */
} sched_geom;

/* Whether layer l is one of the n that take the next cut: the first n of
 * the layers in van der Corput order (sched_geom.w_rank), so that any n of
 * them are spread evenly over the model (the layers' loads stay alike) and
 * the n of a smaller share are among those of a larger one. */
static inline int sched_layer_up(const sched_geom *g, int l, int n)
{
    return g->w_rank[l] < n;
}

/* Layer l's GPU share (bytes of its blob from 0). */
static inline size_t sched_w_gpu(const sched_geom *g, int l)
{
    return sched_layer_up(g, l, g->n_gpu_up) ? g->w_gpu_up : g->w_gpu;
}

/* The end of layer l's CPU share: at least its GPU share. */
static inline size_t sched_w_cpu(const sched_geom *g, int l)
{
    size_t c = sched_layer_up(g, l, g->n_cpu_up) ? g->w_cpu_up : g->w_cpu;
    size_t gpu = sched_w_gpu(g, l);
    return c > gpu ? c : gpu;
}

/* The aligned span read for layer l's disk share [w_cpu, blob): from
 * sched_w_cpu rounded down to OFF_ALIGN to the blob's aligned end; 0 with
 * no disk share. */
static inline size_t sched_w_span(const sched_geom *g, int l)
{
    size_t c = sched_w_cpu(g, l);
    return c < g->blob ? off_align_up(g->blob) - (c & ~(size_t)(OFF_ALIGN - 1)) : 0;
}

void sched_geom_init(sched_geom *g, const sched_model *m, size_t es, const sched_policy *p,
                     const sched_shape *sh);
kv_layout sched_kv_layout(const sched_geom *g, int n, int cap, int scores);
/* FlexGen's midpoint rule: mid[t] = the midpoint of tensor t of a layer blob
 * (4-bit matrices when wq) in percent of the blob, off[t] its offset.
 * @return the blob's bytes. */
size_t sched_weight_mids(const sched_model *m, size_t es, int wq,
                         size_t off[SCHED_MAX_TENSORS], double mid[SCHED_MAX_TENSORS]);
/* sched_plan_compute that also hands back the geometry it planned. */
int sched_plan_geom(const sched_model *m, size_t es, const sched_policy *p,
                    const sched_shape *sh, sched_geom *g, sched_plan *out);

/* Backend events (event_record / event_wait / event_sync). */
#define EV_COMPUTE_W(w) (w)        /* last compute reading weight slot w */
#define EV_COMPUTE_IO(v) (2 + (v)) /* last compute on KV / activation stage slot v */
#define EV_LOAD_W(w) (4 + (w))     /* device-ordered load of weight slot w's CPU share */
#define EV_LOAD_IO(v) (6 + (v))    /* device-ordered loads into stage slot v */
#define EV_STORE_IO(v) (8 + (v))   /* device-ordered stores from stage slot v */
#define EV_STORED 10               /* the last device-ordered store (the D2H queue is FIFO:
                                    * waiting for it waits for every store before it) */

/* What one GPU batch brings to this pass. */
typedef struct batch_desc {
    int k, n_seq;           /* batch index, sequences in it (of this block) */
    int r0, n_rows;         /* its rows of the packed pass */
    int o0, n_out;          /* its output rows */
    int active[SCHED_TIERS];/* any active sequence in that KV segment */
    int idle[SCHED_TIERS];  /* any sequence of that segment idle in this pass (or past
                             * n_seq): a prefill loads the segment before it writes,
                             * so that storing the record keeps their caches */
} batch_desc;

/* ---- the cost model's pieces the search shares (cost.c) ---- */

/* Bytes the activations move when they live off the GPU: loaded before
 * and stored after each (layer, batch) but layer 0's load and the last
 * layer's store; per decode step and per prefill, over the link and, on
 * the disk tier, in aligned spans. Each direction moves this much. */
typedef struct act_io {
    double step, pre, step_disk, pre_disk;
} act_io;
act_io sched_act_moves(const sched_geom *g, int prompt_len);
/* Prefill passes of one GPU batch of gbs prompts of prompt_len tokens. */
int sched_prefill_passes(const sched_shape *sh, int gbs, int prompt_len);

/* ---- I/O lanes: a thread with a FIFO of transfer tasks (lanes.c) ---- */

enum task_kind { TASK_LOAD, TASK_STORE };

typedef struct sched_task {
    int kind;              /* TASK_LOAD: home -> stage; TASK_STORE: stage -> home */
    int tier;              /* SCHED_CPU or SCHED_DISK: where the home is */
    void *stage;           /* the GPU-side buffer (host memory when stage_host) */
    int stage_host;        /* stage is host memory (CPU attention) */
    void *host;            /* SCHED_CPU: the home */
    int fd;                /* SCHED_DISK: the home file, at file_off */
    uint64_t file_off;     /* OFF_ALIGN-aligned; the payload starts delta bytes in */
    size_t delta;
    size_t bytes;          /* payload */
    int kv_seqs;           /* a decode step's store of a disk KV record: how many of its
                            * sequences are in the pass (only what they changed is
                            * written, sched_kv_store_runs); 0: the whole payload */
    int kv_live;           /* a decode step's KV record whose sequences are all in the
                            * pass: only their slots in use move (disk reads
                            * sched_kv_load_runs, copies sched_kv_copy_live) */
    int kv_disk;           /* a disk KV record (of layer, batch): its row log goes
                            * along (sched_kv_load_runs, sched_kv_store_runs) */
    int mark;              /* compute event to wait for first (EV_COMPUTE_*), -1: none */
    int dep_lane;          /* wait for that lane's task dep_ticket first, -1: none */
    uint64_t dep_ticket;
    /* trace */
    const char *name;
    int layer, batch, step;
} sched_task;

#define LANE_QUEUE 64

typedef struct sched_lane {
    struct sched *s;
    int id, track;          /* lane index (0 loader, 1 storer), trace track */
    int threaded;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sched_task q[LANE_QUEUE];
    uint64_t issued, done;  /* tickets: task i is done when done >= i */
    int stop, failed;
    char msg[1024];
    void *stage;            /* host staging for disk transfers (aligned) */
    uint8_t *pages;         /* (disk KV) a flag per page of a KV record */
    off_io *runs;           /* (disk KV) the record's pages to move as requests, and its
                            * row log's */
    void *log;              /* (disk KV) a record's row log (aligned) */
} sched_lane;

struct sched {
    backend *be;
    int reserved;          /* holds a reservation of the backend's work memory */
    sched_model mdl;       /* shape from sched_create, callbacks from sched_attach */
    int attached;
    sched_policy pol;
    sched_shape sh;
    sched_geom g;
    sched_plan plan;
    sched_trace *trace;
    off_disk *disk;

    /* weights */
    void **w_gpu;          /* (L) GPU home of [0, sched_w_gpu) */
    void *w_cpu_arena;     /* the layers' CPU homes, one after another */
    size_t *w_cpu_at;      /* (L) where layer l's CPU home starts in w_cpu_arena */
    int w_cpu_pinned;
    unsigned w_packable;   /* the matrices the backend packs where they stay resident */
    int w_cpu_direct;      /* the backend computes on host memory (host_visible): the
                            * views point into the CPU home, nothing is copied from it */
    int w_fd;              /* disk share: weights.bin or the store */
    int w_fd_owned;
    uint64_t *w_off;       /* (L) file offset of each layer's disk span (the blob's
                            * bytes from w_cpu rounded down to OFF_ALIGN) */
    void *w_stage[2];      /* GPU slots for [w_stage_from, blob) */
    void *q_blob;          /* host: the layer being quantized (compress_weight) */
    sched_layer *w_view[2];/* (L) per slot: the layer's tensors, resident or staged */
    int w_slot_of[2];      /* layer in each slot, -1: none */
    uint64_t w_ticket[2];  /* loader ticket of each slot's load */
    int w_next;            /* slot the next weight load goes to */
    /* the disk read of a weight slot's layer, issued a piece per item of the
     * layer before (zigzag.c): t the whole read, [at, end) the bytes from
     * its aligned start still to issue, pieces how many more issues to
     * split them over; pieces 0: none pending */
    struct {
        sched_task t;
        size_t at, end;
        int v, pieces;
    } w_pend;

    /* KV */
    void **kv_gpu;         /* (L * K) GPU homes */
    void *kv_cpu_arena;    /* (L * K) CPU homes */
    int kv_fd;
    uint8_t *kv_log_n;     /* (L * K) entries in each disk record's row log */
    void *kv_stage[2][SCHED_TIERS]; /* per slot: staging of the CPU / disk segments */

    /* activations */
    void *x_home_arena;    /* GPU or CPU arena of K x x_bytes */
    int x_fd;
    void *x_stage[2];

    /* per-pass work */
    int pass_kind;         /* SCHED_PASS_* of the pass running */
    sched_scratch scr;
    void *h_words, *h_rest;/* the blocks scr's host scratch is carved from (pinned, plain) */
    void *last, *logits, *evicted;
    kern_seq *bseq;        /* (block) sequences rebased per batch */
    struct batch_desc *bdesc; /* (K) the GPU batches of the pass (zigzag.c) */
    int32_t *blast;        /* (block) */

    int dev_order;         /* CPU-tier transfers are ordered on the device (copy_async +
                            * events) instead of by the lanes' host threads */
    int w_async[2];        /* weight slot's CPU share was loaded device-ordered */
    sched_lane lane[2];    /* 0: loads (h2d), 1: stores (d2h) */
    sched_link links[SCHED_LINKS];
    pthread_mutex_t link_mu;
};

/* The home of the KV segment of tier t (GPU or CPU) of (layer l, GPU
 * batch k); the activations' home of GPU batch k (GPU or CPU tier). */
void *sched_kv_home(struct sched *s, int t, int l, int k);
void *sched_x_home(struct sched *s, int k);
/* Where sequence seq of the block keeps its KV: GPU batch *k, tier *t
 * (SCHED_GPU, SCHED_CPU, SCHED_DISK) and index *j among that tier's
 * sequences of the batch (its record's sequence). */
void sched_kv_where(const sched_geom *g, int seq, int *k, int *t, int *j);

/* Account bytes moved over link (SCHED_LINK_*) in secs (0: not timed). */
void sched_link_add(struct sched *s, int link, uint64_t bytes, double secs);

/* Pages a request of a disk KV record's pages (a load's slots in use, a
 * write-back) takes in between the ones it needs rather than splitting:
 * a request costs about as much as 32 KiB more of it does
 * (this VM's disk, fio 4 KiB random writes at depth 64: 144k IOPS, against
 * 2.6 GB/s in large ones: 18 KiB; our engine reached half that rate while
 * both cores computed). Records of short caches so write nearly whole. */
#define KV_MERGE_GAP 8

/* The row log of disk KV records (kv_log_cap entries of kv_log_entry
 * bytes): its sizes from the record's (kv_n, KVH, kv_row, kv_disk_stride;
 * kv_log_at is the caller's). kv_dirty.c. */
void sched_kv_log_geom(sched_geom *g);
/* Bytes of a disk record's row log. */
static inline size_t sched_kv_log_bytes(const sched_geom *g)
{
    return (size_t)g->kv_log_cap * g->kv_log_entry;
}
/* Requests a record's load or store takes at most, with its row log's. */
static inline size_t sched_kv_max_runs(const sched_geom *g)
{
    return g->kv_disk_stride / OFF_ALIGN / 2 + 2;
}

/* The requests that load GPU batch k's disk KV record of layer l into rec
 * (host memory, aligned, a record long): the record whole, or with live
 * (a decode step whose pass holds all of the record's sequences) runs of
 * whole OFF_ALIGN pages holding the slots in use, [0, n_slots), of each
 * of its sequences, idle ones included (a store keeps them); and the
 * entries of its row log into log. The rest of rec is left as it was:
 * slots past n_slots are never read, and the step writes its new ones.
 * Once they are done, sched_kv_log_apply brings rec up to date. ios: room
 * for sched_kv_max_runs; pages: kv_disk_stride / OFF_ALIGN bytes of
 * scratch. @return the number of requests (kv_dirty.c). */
int sched_kv_load_runs(const struct sched *s, int l, int k, int live, char *rec, void *log,
                       off_io *ios, uint8_t *pages);
/* Apply the row log that sched_kv_load_runs read into log to rec. */
void sched_kv_log_apply(const struct sched *s, int l, int k, char *rec, const void *log);
/* The requests that store what a decode step (n_seq of the record's
 * sequences in its pass) changed of GPU batch k's disk KV record of layer
 * l, computed at rec (host memory): an entry of its row log (built in log:
 * the new token's K and V rows and position per (sequence, KV head)) and
 * the pages of the scores in use; or, when the log is full, the pages of
 * the slots in use, the log then empty; or the whole record where a new
 * token's slot cannot be found. *log_n: the entries of the record's row
 * log once they are done. ios, pages: as sched_kv_load_runs's. @return the
 * number of requests (kv_dirty.c). */
int sched_kv_store_runs(const struct sched *s, int l, int k, int n_seq, const char *rec,
                        void *log, off_io *ios, uint8_t *pages, int *log_n);
/* GPU batch k's disk KV record of layer l: its row log holds n entries now
 * (a store of it is done: sched_kv_store_runs's *log_n, 0 after a whole
 * record). kv_dirty.c. */
void sched_kv_log_set(struct sched *s, int l, int k, int n);
/* Read GPU batch k's disk KV record of layer l whole into rec, its row log
 * (read into log, room for kv_log_cap entries) applied. @return the bytes
 * read, or -errno (kv_dirty.c). */
int64_t sched_kv_read_record(struct sched *s, int l, int k, char *rec, void *log, const char *what);
/* The slots a decode step moves of GPU batch k's KV record on tier t: the
 * most its sequences have in use, one more for a store (the slot a filling
 * cache takes), at most cap. */
int sched_kv_live_slots(const struct sched *s, int t, int k, int store);
/* Copy slots [0, n) of every (sequence, head) of a KV record on tier t
 * between src and dst (the home and its stage: the same layout): the K and
 * V rows, with the backend's copy_2d on queue (wait as it takes), and the
 * positions and scores whole. @return the bytes copied, or -errno. */
int64_t sched_kv_copy_live(const struct sched *s, int t, int queue, void *dst, const void *src,
                           int n, int wait);
/* What a decode step copies of a KV record that it moves by its slots in
 * use, a fraction, on average over the gen_len - 1 steps (kv_dirty.c). */
double sched_kv_live_frac(int cap, int prompt_len, int gen_len);
/* About how many bytes of a disk KV record a decode step loads, its row
 * log's included, on average over the gen_len - 1 steps of prompts of
 * prompt_len (kv_dirty.c). */
double sched_kv_step_load_bytes(const sched_geom *g, int cap, int prompt_len, int gen_len);
/* About how many bytes of a disk KV record a decode step writes back, on
 * average over the gen_len - 1 steps, counting each request's own cost as
 * KV_MERGE_GAP pages (kv_dirty.c). */
double sched_kv_step_store_bytes(const sched_geom *g, int cap, int prompt_len, int gen_len);

/* Copy task t's payload (t->bytes; of a decode step's KV record with
 * t->kv_live, its slots in use, sched_kv_copy_live) from src to dst: host
 * to its GPU stage for a load, back for a store, on that direction's
 * queue; wait 1 blocks until the bytes are there, 0 only enqueues (as
 * copy_async). @return the bytes copied, or -errno (lanes.c). */
int64_t sched_task_copy(struct sched *s, const sched_task *t, void *dst, const void *src,
                        int wait);

int sched_lanes_start(struct sched *s);
void sched_lanes_stop(struct sched *s);
/* Queue t on lane (or run it now without overlap). @return its ticket or
 * -errno. */
int64_t sched_lane_submit(sched_lane *l, const sched_task *t);
/* Wait until the lane finished ticket. @return 0 or -errno (the lane's
 * failure, with its message re-recorded in this thread). */
int sched_lane_wait(sched_lane *l, uint64_t ticket);

#endif
