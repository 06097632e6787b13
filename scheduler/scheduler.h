/* scheduler.h: the offloading policy, the KV policies, the layer blob
 * format, the Chrome trace recorder, the zig-zag block scheduler, the
 * cost model, calibration and the policy search (DESIGN.md "Policy",
 * "Zig-zag block schedule").
 *
 * scheduler/ sits above kernels/ (backends, kernels, err) and offload/
 * (disk engine, store, files) and below src/. It sees a model only through
 * a sched_model: shape data, the tensor table of a layer blob and three
 * callbacks (embed, layer, head) that src/model implements. Calls return 0
 * or -errno with one message recorded through err_set() (kernels/err.h).
 */
#ifndef FH_SCHED_H
#define FH_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "kv_policy.h"

/* ------------------------------------------------------------ policy */

/* The most layers a model may have (model_config.c's limit). */
#define SCHED_MAX_LAYERS 1024

typedef struct sched_policy {
    int gpu_batch_size;   /* sequences per GPU batch (default 8) */
    int num_gpu_batches;  /* GPU batches per block (default 1) */
    /* placement percentages, 0..100: weights (w), KV cache (c) and
     * activations (h) on the GPU and on the CPU; the rest is on disk.
     * Default 100 0 100 0 100 0 (everything on the GPU). */
    double wg, wc, cg, cc, hg, hc;
    int weight_layers;    /* 0 (default, FlexGen's rule): each layer puts tensor t on
                           * the GPU tier when its midpoint lies below wg percent of
                           * the layer, on the CPU tier below wg + wc, so every
                           * layer is cut alike and a tier's share moves a tensor at
                           * a time; 1: wg and wg + wc are shares of all the layers'
                           * bytes, each layer cut at the tensor boundary at or below
                           * them or at the next one, the two mixed over the layers
                           * (spread evenly) to come as near as they can from below */
    int overlap;          /* 1 (default): I/O threads overlap compute */
    int pin_weight;       /* 1 (default): CPU-tier weights in pinned memory */
    int cpu_attention;    /* 0 (default): decode attention over CPU-tier KV
                           * runs on CPU threads where that KV lives */
    int compress_weight;  /* 0 (default): 1 = the layers' weight matrices are kept
                           * and moved as 4-bit groups (kern.h), expanded on the
                           * GPU tier before their GEMMs (once per layer and block
                           * when there are several GPU batches) */
    int compress_cache;   /* 0 (default): 1 = the KV cache is kept and moved as
                           * 4-bit groups of head_dim rows */
    uint64_t gpu_mem;     /* GPU-tier cap in bytes; 0 = the device's free memory
                           * (on the CPU backend: no cap) */
    uint64_t cpu_mem;     /* CPU-tier cap in bytes; 0 = MemAvailable */
    char offload_dir[1024]; /* disk tier; "" = none given */
    int prefill_rows;     /* 0 (default): SCHED_PREFILL_ROWS; else the most prompt
                           * tokens of a GPU batch in one prefill pass (fewer
                           * rows: smaller work buffers, more passes over the
                           * weights; search picks it for the caps) */
} sched_policy;

/* The prompt tokens of a GPU batch a prefill pass takes by default
 * (generate's --prefill-rows). */
#define SCHED_PREFILL_ROWS 4096
#define SCHED_PREFILL_ROWS_MAX (1 << 24)
/* p's prefill_rows, or the default. */
static inline int sched_policy_prefill_rows(const sched_policy *p)
{
    return p->prefill_rows > 0 ? p->prefill_rows : SCHED_PREFILL_ROWS;
}

/* The defaults above. */
void sched_policy_default(sched_policy *p);

/* Parse a size: "16G", "16GiB", "16GB" (all 2^30), "512M", "512MiB",
 * "4096K", "123" (bytes), fractions allowed ("1.5G"). flag names the option
 * for the message ("--gpu-mem must be a size like 16G or 512M, got ..").
 * @return 0 or -EINVAL. */
int sched_parse_size(const char *flag, const char *s, uint64_t *out);

/* Parse the six placement percentages from n strings: either n == 6
 * separate numbers, or n == 1 string of six numbers separated by commas or
 * spaces ("100,0,100,0,100,0"). @return 0 or -EINVAL with a message naming
 * --percent. Does not check the sums (see sched_policy_check). */
int sched_policy_parse_percent(const char *const *args, int n, sched_policy *p);

/* Read a policy JSON file over *p (fields given override, others stay):
 *   {"gpu_batch_size": 32, "num_gpu_batches": 4,
 *    "percent": [20, 80, 0, 100, 0, 100],
 *    "overlap": true, "pin_weight": true, "cpu_attention": true,
 *    "compress_weight": false, "compress_cache": false, "weight_layers": false,
 *    "gpu_mem": "16G" | 17179869184, "cpu_mem": "200G", "offload_dir": "/nvme/x"}
 * An unknown field, a wrong type or a bad value is refused naming the file
 * and the field. @return 0 or -errno. */
int sched_policy_load(const char *path, sched_policy *p);

/* The fields of a sched_policy as bits, for saying which ones a caller
 * set (the CLI's flags over a --policy FILE). SCHED_POLICY_PERCENT covers
 * the six placement percentages together. */
enum sched_policy_field {
    SCHED_POLICY_GPU_BATCH_SIZE = 1u << 0,
    SCHED_POLICY_NUM_GPU_BATCHES = 1u << 1,
    SCHED_POLICY_PERCENT = 1u << 2,
    SCHED_POLICY_GPU_MEM = 1u << 3,
    SCHED_POLICY_CPU_MEM = 1u << 4,
    SCHED_POLICY_OFFLOAD_DIR = 1u << 5,
    SCHED_POLICY_OVERLAP = 1u << 6,
    SCHED_POLICY_PIN_WEIGHT = 1u << 7,
    SCHED_POLICY_CPU_ATTENTION = 1u << 8,
    SCHED_POLICY_COMPRESS_WEIGHT = 1u << 9,
    SCHED_POLICY_COMPRESS_CACHE = 1u << 10,
    SCHED_POLICY_WEIGHT_LAYERS = 1u << 11,
    SCHED_POLICY_PREFILL_ROWS = 1u << 12,
    SCHED_POLICY_ALL = (1u << 13) - 1,
};

/* Copy the fields of flags named by given (enum sched_policy_field bits)
 * over *p; the others stay. This is how `generate` lays the flags given on
 * the command line over a policy file, whatever their order. Nothing is
 * checked (see sched_policy_check). @return 0, or -EINVAL for a bit
 * outside SCHED_POLICY_ALL (then *p is unchanged). */
int sched_policy_apply(sched_policy *p, const sched_policy *flags, unsigned given);

/* Check: every percentage in [0, 100]; wg+wc, cg+cc, hg+hc each <= 100;
 * activations not split (each of hg, hc is 0 or 100); batch sizes >= 1; a
 * disk share (of weights, KV or activations) needs offload_dir. The message
 * says which field and what to change. @return 0 or -EINVAL. */
int sched_policy_check(const sched_policy *p);

/* One line describing the policy, for logs and the summary:
 * "block 32x4, weights 20/80/0, KV 0/100/0, act 100/0/0, overlap, cpu-attention". */
void sched_policy_describe(const sched_policy *p, char *buf, size_t len);

/* Split n items (sequences of a GPU batch) by percentages: n_gpu =
 * round(n * g / 100), n_cpu = round(n * (g + c) / 100) - n_gpu, the rest
 * on disk. */
void sched_split(int n, double g, double c, int *n_gpu, int *n_cpu, int *n_disk);

/* ------------------------------------------------------------ trace
 *
 * Chrome trace-event JSON ("Trace Event Format", opens in Perfetto and
 * chrome://tracing): complete events ("ph": "X") with ts/dur in
 * microseconds since the recorder started, one track (tid) per stream. Safe
 * to call from any thread. Events are buffered in memory and written by
 * sched_trace_write as {"traceEvents": [...], "displayTimeUnit": "ms"} with
 * thread_name metadata naming each track.
 */
typedef struct sched_trace sched_trace;

enum sched_track {
    TRACK_COMPUTE = 1, /* compute stream / thread */
    TRACK_H2D = 2,     /* loads towards the GPU tier */
    TRACK_D2H = 3,     /* stores away from the GPU tier */
    TRACK_DISK = 4,    /* disk engine */
};

typedef struct sched_event {
    const char *name;  /* "load weights", "store KV", "compute", ... (static) */
    const char *cat;   /* "load", "store", "compute" (static) */
    int track;         /* enum sched_track */
    double t0, t1;     /* seconds, sched_trace_now() clock */
    const char *tier;  /* "disk", "cpu", "gpu" or NULL (static) */
    uint64_t bytes;
    int layer;         /* -1: none */
    int batch;         /* GPU batch, -1: none */
    int step;          /* decode step (0 = prefill), -1: none */
} sched_event;

/* @return 0 or -ENOMEM. */
int sched_trace_create(sched_trace **out);
void sched_trace_destroy(sched_trace *t); /* accepts NULL */
/* Monotonic seconds, the clock of the events: kern_now_s (kern.h). */
double sched_trace_now(void);
/* Record one event (t may be NULL: then nothing happens). */
void sched_trace_add(sched_trace *t, const sched_event *e);
/* Number of events recorded. */
size_t sched_trace_count(const sched_trace *t);
/* Write the JSON to path (atomically: path.tmp then rename). @return 0 or
 * -errno with a message naming the path. */
int sched_trace_write(const sched_trace *t, const char *path);
/* Whether sched_trace_write could write path: call it before the run, so
 * that a bad --trace path fails first, not after the whole job. Leaves
 * nothing behind. @return 0 or -errno with a message naming the path. */
int sched_trace_check(const char *path);

/* ------------------------------------------------------------ the model seam
 *
 * What the scheduler knows of a model. The data part (shape and the tensor
 * table of a layer blob) is all that planning, the cost model and the
 * search need; running passes also needs the three callbacks, which compute
 * on the backend the scheduler was created with.
 *
 * A layer blob is the unit the scheduler moves between tiers: the layer's
 * tensors in table order, each starting 256-byte aligned, in the backend's
 * storage type; with compress_weight the matrices are 4-bit rows (kern.h's
 * format, groups along a row) and the vectors stay as they are. The model
 * orders its table so that the small tensors come first (a weight split
 * across tiers then keeps them on the GPU with the first share).
 */
#define SCHED_MAX_TENSORS 24

typedef struct sched_tensor {
    size_t rows;  /* a matrix's rows, or a vector's element count */
    int cols;     /* a matrix's row length; 0: a vector */
} sched_tensor;

/* A layer's tensors where they are for this pass (resident or staged). The
 * scheduler keeps one per (weight slot, layer): its address identifies the
 * layer's copy, so a model may cache work on it (4-bit expansion, 16-bit
 * widening). */
typedef struct sched_layer {
    void *t[SCHED_MAX_TENSORS];
    int wq;       /* the matrices are 4-bit rows */
    int wh;       /* 0, or every tensor is 16-bit bits of this kern_h16 format
                   * (sched_shape.weight_fmt): widen before use (a model's
                   * widened view may keep them on its matrices only) */
    unsigned packed; /* bit t: matrix t is resident and in the backend's packed
                      * layout (backend_ops.pack_h16): pass it to linear_h16
                      * as KERN_H16_BF16_PACKED, never widen it */
} sched_layer;

/* The KV cache of sequences [seq0, seq0 + n) of a GPU batch, kept together
 * in one place (a tier's home or a staging buffer). */
typedef struct sched_kv {
    void *kc, *vc;  /* (n, kv_heads, cap, head_dim) storage type, or 4-bit rows */
    void *pos;      /* (n, kv_heads, cap) int32 */
    void *scores;   /* (n, kv_heads, cap) fp32, or NULL */
    int seq0, n;
    int host;       /* 1: caches in host memory of a backend whose buffers are not
                     * (CUDA with CPU attention): attention and cache writes run on
                     * CPU threads over the cache in place; only q/k/v rows and the
                     * attention output cross the link */
    kern_kv_fmt fmt; /* the row format of kc, vc: KERN_KV_FMT_Q4 (compress_cache,
                      * kern_q4_row_bytes(head_dim) bytes per slot), KERN_KV_FMT_BF16
                      * (sched_shape.weight_direct) or KERN_KV_FMT_PLAIN */
} sched_kv;

/* Per-pass scratch on the backend, sized from the plan, shared by the
 * layers and batches. */
typedef struct sched_scratch {
    void *h, *qkv, *att, *ffn; /* (rows, d), (rows, qkv_dim), (rows, att_dim), (rows, ffn) */
    void *w;                   /* weight matrices expanded from 4-bit rows (layers with
                                * wq), or NULL: the largest one, expanded per GEMM, or
                                * with w_all a whole layer's, expanded once and reused
                                * while the layer stays the same; layers with wh: the
                                * whole blob widened to the storage type, once per
                                * layer while it stays the same, or (one batch, a
                                * backend with linear_h16) its vectors widened and
                                * the rest the GEMMs' scratch; read by bf16 matmuls
                                * (weight_direct) it holds only those vectors and
                                * the GEMMs' x rounded to bf16, not the layer */
    int w_all;
    const sched_layer *w_layer; /* the layer whose matrices w holds (w_all, or the
                                 * widened layer of wh), or NULL */
    sched_layer w_wide;        /* layers with wh: the tensors of w_layer widened into
                                * w (a blob in the storage type), filled by the model */
    void *colsum;              /* (rows, heads) fp32, or NULL */
    void *self_p;              /* (n_seq, heads) fp32, or NULL */
    /* host scratch for sched_kv.host segments (NULL when there are none),
     * carved from two blocks: the words the backend copies (pinned) and
     * the rest */
    float *h_qkv, *h_att;      /* (rows, qkv_dim), (rows, n_head x head_dim) */
    float *h_colsum, *h_self;  /* (rows, heads) pinned, (n_seq, heads) */
    int32_t *h_ev;             /* (n_seq, kv_heads) pinned */
    kern_seq *h_seqs;          /* (n_seq) */
    void *h_work;              /* the CPU kernels' per-thread scratch (kern.h), */
    size_t h_work_bytes;       /* sized for the plan's largest prompt and cap */
} sched_scratch;

enum { SCHED_PASS_IDLE = 0, SCHED_PASS_PREFILL = 1, SCHED_PASS_DECODE = 2 };
/* Which pass seqs describe: every active sequence a prefill (n_past 0,
 * whole prompt) or every one a decode step (n_new 1), budgets within cap.
 * @return SCHED_PASS_* or -EINVAL. */
int sched_pass_kind(const kern_seq *seqs, int n_seq, int cap);

/* One layer of one GPU batch, as the scheduler hands it to the model's
 * layer callback: the rows, the sequences, the scratch, and the KV
 * segments that sched_attend runs attention over, wherever they live. */
typedef struct sched_pass {
    backend *be;
    int kind;                /* SCHED_PASS_PREFILL or SCHED_PASS_DECODE */
    int n_rows;              /* rows of x */
    const kern_seq *seqs;    /* rows relative to x */
    int n_seq;
    int n_head, n_kv_head, head_dim, hidden;
    int cap;                 /* KV slots per (sequence, KV head) */
    sched_scratch *scr;
    const sched_kv *kv;      /* segments covering every sequence with rows */
    int n_kv;
    void *evicted;           /* (n_seq, kv_heads) int32, or NULL */
    const int32_t *pos;      /* host (n_rows): each row's token position (RoPE) */
} sched_pass;

/* Attention of the pass over fused q/k/v rows (qkv: (n_rows, qkv_dim), q
 * then k then v; scale 1/sqrt(head_dim)) into att (n_rows, n_head x
 * head_dim):
 * prefill is exact over each prompt and writes the kept tokens to the
 * caches; decode attends over the kept slots plus the new token and writes
 * it into a free or evicted slot. Each KV segment is computed where it
 * lives: by the backend, or by CPU threads over a host cache (CPU
 * attention), whose rows cross the link. @return 0 or -errno. */
int sched_attend(const sched_pass *p, const void *qkv, void *att);

typedef struct sched_model {
    int n_layer, n_head, n_kv_head, head_dim;
    int hidden;           /* d: rows of activations are d wide */
    int vocab;            /* V: logits per output row */
    int ffn;              /* columns of the MLP scratch */
    size_t globals;       /* elements of the tensors outside the layers (embeddings,
                           * final norm, untied head): on the GPU tier */
    size_t globals_mat;   /* of those, the (V, d) matrices' (token embedding, untied
                           * head): 16-bit where sched_shape.weight_direct */
    int n_tensors;
    sched_tensor tensors[SCHED_MAX_TENSORS]; /* a layer blob, in blob order */

    void *ctx;            /* the callbacks' first argument */
    /* x(n_rows, d) = embeddings of (ids, pos) (host arrays) */
    int (*embed)(void *ctx, void *x, const int32_t *ids, const int32_t *pos, int n_rows);
    /* layer `layer` (tensors at L) over x(p->n_rows, d) in place; its attention
     * is sched_attend(p, ...) */
    int (*layer)(void *ctx, int layer, const sched_layer *L, const sched_pass *p, void *x);
    /* logits(n_out, V) = head(x[last_rows]); last: (n_out, d) scratch, and
     * scr the pass's (its h free) */
    int (*head)(void *ctx, void *logits, void *last, const void *x, const int32_t *last_rows,
                int n_out, sched_scratch *scr);
} sched_model;

/* Width of the fused q/k/v rows: (n_head + 2 n_kv_head) x head_dim. */
size_t sched_qkv_dim(const sched_model *m);
/* Width of the scratch att: the attention output (n_head x head_dim) or a
 * row of activations (hidden), whichever is wider. */
size_t sched_att_dim(const sched_model *m);
/* Layout of a layer blob with es-byte elements (4-bit matrices when wq):
 * off[t] the byte offset of tensor t (256-aligned), bytes[t] its bytes
 * (either may be NULL; arrays of m->n_tensors). @return the blob's bytes. */
size_t sched_blob_layout(const sched_model *m, size_t es, int wq, size_t *off, size_t *bytes);
/* Values in the matrices of a layer; *largest (may be NULL): in the
 * largest one. */
size_t sched_blob_matrix_elems(const sched_model *m, size_t *largest);
/* dst (a wq = 1 blob) <- src (a plain blob of es-byte elements, 4 or 2):
 * matrices quantized, vectors copied. */
void sched_blob_quantize(const sched_model *m, size_t es, void *dst, const void *src);
/* Parameters multiplied per token of a pass (layers + head), for the
 * compute term; of those, the LM head's, which a prefill multiplies for
 * each sequence's last row only. */
double sched_matmul_params(const sched_model *m);
double sched_head_params(const sched_model *m);

/* ------------------------------------------------------------ plan
 *
 * What every tier must hold for a policy, computed before anything is
 * allocated or loaded (sizes in bytes). The scheduler allocates exactly
 * this, once: nothing on the decode path allocates.
 */

/* What the caller of sched_forward does with sched_logits() on the
 * backend (sched_shape.sample): the scheduler reserves the backend's
 * sampling work for it at sched_create. */
enum sched_sample {
    SCHED_SAMPLE_NONE,   /* nothing: it reads the logits back (downloads) */
    SCHED_SAMPLE_GREEDY, /* sample calls of up to block rows, every row greedy */
    SCHED_SAMPLE_DRAW,   /* sample calls of up to block rows, some with temperature > 0 */
};

typedef struct sched_shape {
    int max_rows;   /* most packed tokens of one GPU batch in one pass */
    int cap;        /* KV slots per (sequence, layer, head): the largest budget */
    int scores;     /* keep fp32 H2O scores beside the KV */
    int evicted;    /* record evicted positions (--trace-evictions) */
    int weights_on_disk_already; /* the disk share streams from a weight store */
    int weight_fmt; /* 0: the layer blobs on the tiers are in the backend's storage type;
                     * KERN_H16_F16 / KERN_H16_BF16: in those 16 bits (the source's),
                     * widened per block into the storage type just before the
                     * compute. Only where the storage type is wider (the CPU
                     * backend's fp32) and without compress_weight; else ignored */
    int weight_direct; /* 1: the source is bf16 and the backend computes from bf16
                        * itself (backend_ops.h16_direct: bf16 matmuls), so the layers
                        * stay bf16 even when every layer is resident on the GPU tier
                        * (4-bit under compress_weight, expanded into bf16 per tile),
                        * and the model keeps its embedding and head in bf16 too
                        * (sched_model.globals_mat, sched_table_fmt); the KV cache is
                        * bf16 rows (KERN_KV_FMT_BF16) unless compress_cache */
    int host_visible; /* the backend's buffers are host memory (backend_ops.host_visible:
                       * the CPU backend): its compute reads the CPU tier's weights where
                       * they lie, so a weight slot holds the disk share only and no
                       * weight crosses a link but from the disk. sched_create sets it
                       * from its backend; a plan made without one (search) from the
                       * device */
    int max_prompt; /* longest prompt of a prefill pass (<= max_rows); 0: max_rows */
    int sample;     /* enum sched_sample */
    int sample_row_edits; /* most logit edits (kern_logit_edit) of one sample row
                           * (the reservation is for a block of such rows); 0: none */
    int sample_top; /* 1: sample rows may ask for top logprobs (kern_sample_row.n_top) */
} sched_shape;

enum sched_tier { SCHED_GPU, SCHED_CPU, SCHED_DISK, SCHED_TIERS };
enum sched_part { SCHED_WEIGHTS, SCHED_KV, SCHED_ACT, SCHED_STAGE, SCHED_WORK, SCHED_PARTS };

typedef struct sched_plan {
    uint64_t bytes[SCHED_TIERS][SCHED_PARTS]; /* what each tier holds, by part */
    uint64_t total[SCHED_TIERS];
    int block;                                /* gpu_batch_size x num_gpu_batches */
    int L;                                    /* layers */
    int weight_fmt;  /* the 16-bit type (kern_h16) the tiers keep the layers in, or 0:
                      * the storage type (sched_shape.weight_fmt where it applies) */
    int weight_direct; /* sched_shape.weight_direct applied: read by bf16 matmuls */
    int tables16;      /* sched_table_fmt: the embedding and head bf16 (KERN_H16_BF16;
                        * with the layers bf16, or 4-bit expanded into bf16), or 0 */
    int kv_fmt;        /* the KV rows' format (kern_kv_fmt) */
    uint64_t widen;  /* of the GPU tier's work: the scratch a layer widens into */
    uint64_t kv_log;  /* of the disk tier's KV: the records' row logs (a decode step's
                       * new rows until they are written back, scheduler/kv_dirty.c) */
    uint64_t w_store; /* the layers' disk share read from a weight store as it is
                       * (sched_shape.weights_on_disk_already): on disk, but not in
                       * bytes[SCHED_DISK], which is what offload_dir must hold */
    /* the layers' weight cuts in percent of a layer's blob: [0] the GPU
     * share, [1] GPU + CPU; every layer at cut[i][0] but up[i] of them at
     * cut[i][1] (policy weight_layers; up 0 under FlexGen's rule) */
    double w_cut[2][2];
    int w_up[2];
} sched_plan;

/* Rows of a GPU batch's prefill pass: whole prompts packed up to
 * prefill_rows tokens (at least the longest prompt, at most the batch's
 * prompts together, at least one row per sequence). */
int sched_prefill_rows(int prefill_rows, int max_prompt, int gbs);

/* Compute the plan of policy p for model c stored with es-byte elements.
 * @return 0 or -EINVAL (a shape the scheduler cannot run). */
int sched_plan_compute(const sched_model *m, size_t es, const sched_policy *p,
                       const sched_shape *sh, sched_plan *out);
/* Check the plan against the caps (gpu_cap, cpu_cap, disk_free: 0 = none)
 * and refuse a policy that cannot fit with what it needs, the cap, and
 * what to change. @return 0 or -ENOSPC. */
int sched_plan_check(const sched_plan *pl, const sched_policy *p, uint64_t gpu_cap,
                     uint64_t cpu_cap, uint64_t disk_free);
/* Print the plan as a small table (one line per tier). */
void sched_plan_print(FILE *f, const sched_plan *pl);

/* ------------------------------------------------------------ scheduler */
typedef struct sched sched;

/* Plan, check against the caps and allocate every tier for model shape m
 * (its data part; the callbacks come with sched_attach) on backend be;
 * weights then arrive through sched_layer_sink (pass it to the model
 * loader). trace may be NULL (not owned). The backend's work memory is
 * reserved here too (backend_ops.reserve) for the largest op calls of a
 * pass and for the caller's sampling (sh->sample), so that no pass, and
 * no sample call within those limits, allocates. Passes (sched_forward)
 * run on the thread that created the scheduler: the scratch of its CPU
 * kernels is sized for that thread's kern_cpu_threads().
 * @return 0 or -errno; destroy with sched_destroy(), which ends the
 * reservation. */
int sched_create(backend *be, const sched_model *m, const sched_policy *p,
                 const sched_shape *sh, sched_trace *trace, sched **out);
void sched_destroy(sched *s); /* accepts NULL */
/* 1 when a scheduler on be orders the transfers of CPU-tier homes on the
 * device (copy queues + events; the default where the backend's buffers
 * are not host memory), 0 when its I/O threads do. FLEXH2O_IO_ORDER=host
 * or =device in the environment overrides it (for comparisons and tests). */
int sched_io_order_device(const backend *be);
/* Receives each layer blob of the model being loaded (host memory, valid
 * during the call only, sched_blob_layout order; wq: its matrices are
 * already 4-bit) and places it in its tiers. The blob is in the element
 * type sched_weight_fmt() names. fd >= 0: the same bytes are in that file
 * at file_offset (a weight store of that type), so the disk share can
 * stream from there. @return 0 or -errno. */
int sched_layer_sink(void *sched_ptr, int layer, const void *blob, int wq, int fd,
                     uint64_t file_offset);
/* Attach the loaded model's callbacks (m must have the shape the scheduler
 * was created for). @return 0 or -EINVAL. */
int sched_attach(sched *s, const sched_model *m);
const sched_policy *sched_get_policy(const sched *s);
/* The element type the tiers keep layer blobs in, which sched_layer_sink
 * takes them in: KERN_H16_F16 or KERN_H16_BF16 (sched_shape.weight_fmt,
 * where it applies), or 0: the backend's storage type. */
int sched_weight_fmt(const sched *s);
/* The 16-bit type the plan counts the embedding and head in:
 * KERN_H16_BF16 under sched_shape.weight_direct (also with 4-bit layers),
 * or 0: the backend's storage type (model_load_store's t16). */
int sched_table_fmt(const sched *s);

/* One forward pass over a block of n_seq (<= block) sequences: rows (ids,
 * pos) packed per sequence as seqs describe them (n_new may be 0: idle this
 * pass); either every active sequence is a prefill (n_past 0, whole prompt)
 * or every one a decode step (n_new 1), and their K/V go to the slot caches
 * (evicting as kern.h describes once a sequence holds its budget; the
 * caller advances n_past and n_slots). A sequence idle in the pass (n_new
 * 0, or at or past n_seq) keeps its cache as it is: a block may be
 * prefilled over several passes, and copies made with sched_kv_copy
 * survive a later prefill of their neighbours. Run as the zig-zag
 * schedule: layer by layer, and within a layer GPU batch by GPU batch
 * (sequences [k x gbs, (k+1) x gbs)), loading the next layer's weights and
 * the next batch's KV and activations while the current one computes. Rows
 * must be packed in sequence order. step: 0 for prefill, the decode step otherwise (trace).
 * Logits of the rows last_rows go to sched_logits(). @return 0 or -errno. */
int sched_forward(sched *s, const int32_t *ids, const int32_t *pos, int n_rows,
                  const kern_seq *seqs, int n_seq, const int32_t *last_rows,
                  int n_out, int step);
/* Backend buffer of the last pass's logits (n_out, V), storage type. */
const void *sched_logits(const sched *s);
/* Most rows one GPU batch may bring to a pass, and the block size. */
int sched_max_rows(const sched *s);
int sched_block(const sched *s);
/* KV slots per (sequence, layer, head) the plan has (sched_shape.cap). */
int sched_cap(const sched *s);
/* Read the slot positions (what = 0, int32) or H2O scores (what = 1, fp32)
 * of sequence seq of the block for layer l: (n_head, cap) into out, from
 * whichever tier holds them. @return 0 or -errno. */
int sched_read_kv(sched *s, int layer, int seq, int what, void *out);
/* Copy the KV cache of sequence src of the block onto sequences dst[0,
 * n_dst), between passes: every layer and KV head, the keys and values
 * (4-bit rows with their scales under compress_cache), the slot positions
 * and the H2O scores, from whichever tier holds src to whichever holds
 * each dst (GPU, CPU, disk; in any GPU batch). This is how n completions
 * of one prompt share its prefill: prefill src alone, copy, then give each
 * dst the kern_seq of src (n_past, n_slots, budget, ...: the caller's
 * bookkeeping) and decode them as independent sequences. A dst continues
 * exactly as src would; what it held before is gone.
 * n_slots: the slots src has in use (its kern_seq.n_slots, 0 .. cap):
 * slots [0, n_slots) of each (layer, KV head) are copied, the others of
 * dst are left as they are, because no op reads a slot at or past n_slots
 * before it writes it. Nothing is allocated: a disk record is patched in
 * the I/O lanes' host staging, which the plan already has. Call it from
 * the thread that runs the passes; it waits for the last pass's stores
 * and the weight prefetch first. @return 0 or -errno (-EINVAL: a sequence
 * outside the block, dst == src, n_slots outside 0 .. cap). */
int sched_kv_copy(sched *s, int src, const int *dst, int n_dst, int n_slots);
/* The positions evicted in the last decode pass: (n_layer, block, n_head)
 * int32, -1 for none. @return 0 or -errno. */
int sched_read_evicted(sched *s, int32_t *out);

/* End-of-run figures: memory per tier, bytes and GB/s per link. */
typedef struct sched_link {
    const char *name;   /* "disk->cpu", "cpu->gpu", "gpu->cpu", "cpu->disk" */
    uint64_t bytes;
    double busy_s;      /* seconds with a transfer on that link */
} sched_link;
enum { SCHED_LINK_DISK_CPU, SCHED_LINK_CPU_GPU, SCHED_LINK_GPU_CPU, SCHED_LINK_CPU_DISK,
       SCHED_LINKS };
void sched_links(const sched *s, sched_link out[SCHED_LINKS]);
/* Zero every link's bytes and busy time (after a warm-up that is not the job's). */
void sched_links_reset(sched *s);
/* The summary block: peak memory per tier and each link's bytes and GB/s. */
void sched_summary_print(const sched *s, FILE *f);

/* ------------------------------------------------------------ calibrate */

#define SCHED_GEMM_SHAPES 7

/* A hardware profile: measured link speeds in GB/s (10^9 bytes per
 * second) and compute rates of one backend on one machine. */
typedef struct sched_calib {
    char device[16];              /* backend: "cpu" / "cuda" */
    double h2d, d2h;              /* backend copies host -> "GPU", back */
    double dram;                  /* host memory (memcpy, read + write) */
    double disk_read, disk_write; /* disk engine on the --offload-dir; 0: not measured */
    char disk_kind[32];           /* "io_uring" / "pread/pwrite threads" / "" */
    int direct;                   /* the file was opened with O_DIRECT */
    double dev_mem;               /* device memory, copy read + write (GB/s) */
    double gemm;                  /* backend linear at a large square shape (TFLOP/s) */
    char matmul[8];               /* "bf16": the GEMMs were bf16 matmuls over bf16 weights
                                   * (--cpu-matmul bf16); "": the backend's linear */
    int n_gemm;                   /* linear with m rows against a square weight: */
    int gemm_rows[SCHED_GEMM_SHAPES]; /* m, increasing (decode GEMMs have m = gbs) */
    double gemm_at[SCHED_GEMM_SHAPES]; /* TFLOP/s at each */
} sched_calib;

/* Measure with transfers of `bytes` (0: 1 GiB); dir NULL skips the disk.
 * A scratch file dir/calibrate.bin is created and removed. @return 0 or
 * -errno. */
int sched_calibrate(backend *be, const char *dir, uint64_t bytes, sched_calib *out);
/* Write the profile to f as one compact JSON object on one line (what
 * `flexh2o calibrate` prints and `--out` saves; cJSON, so
 * sched_calib_load reads it back): {"device":"cpu","h2d_GBps":..,
 * "d2h_GBps":..,"dram_GBps":..,"dev_mem_GBps":..,"gemm_TFLOPs":..,
 * "gemm_rows":[1,4,..],"gemm_TFLOPs_at":[..], "matmul":"bf16" for bf16
 * matmuls, and, when the disk was
 * measured, "disk_read_GBps","disk_write_GBps","disk_engine","o_direct"};
 * rates to 3 decimals, TFLOP/s to 4. Write errors show in ferror(f).
 * @return 0 or -ENOMEM. */
int sched_calib_print(FILE *f, const sched_calib *cb);
/* Write that line to path (created or truncated in place, so a device
 * such as /dev/stdout works too). @return 0 or -errno with a message
 * naming the path and what to do. */
int sched_calib_write(const char *path, const sched_calib *cb);
/* Read a profile written by sched_calib_print (configs/hardware/). A
 * missing or non-positive rate is refused naming the file and the field.
 * @return 0 or -errno. */
int sched_calib_load(const char *path, sched_calib *out);
/* One rank's share of a host's profile when k ranks run on that host at
 * once (`search --ranks-per-node k`, DESIGN.md "Scale-out"), in place:
 * what the ranks share is divided by k, what each has to itself stays.
 * Shared: the disk (disk_read, disk_write: one --offload-dir disk) and host
 * memory (dram: what CPU attention reads); on a CPU profile also the
 * backend's "device", which is the host: its copies (h2d, d2h), its
 * memory (dev_mem) and its cores (gemm, gemm_at). A CUDA profile's h2d,
 * d2h, dev_mem and GEMM rates are each rank's own GPU and its link (one
 * PCIe link per GPU assumed) and stay. k = 1 changes nothing.
 * @return 0 or -EINVAL (k < 1; then *hw is unchanged). */
int sched_calib_share(sched_calib *hw, int k);

/* ------------------------------------------------------------ cost model
 *
 * DESIGN.md "Throughput bound" evaluated for a policy before running it:
 * per decode step of the block (all layers) and for the prefill, each term
 * is bytes over a measured rate; the step takes at least the largest.
 * The compute term divides by the GEMM rate measured at the rows a GEMM
 * has (a GPU batch's gbs when decoding, a pass's rows when prefilling),
 * interpolated between the profile's shapes.
 * Terms beyond DESIGN's formula, each a true lower bound too: disk writes
 * (KV and activations stored to disk every step), the q/k/v rows and
 * attention outputs that cross the link with CPU attention, activations
 * moved when they live off the GPU, and device memory counted as every
 * weight byte read by every GPU batch plus the KV computed on the device,
 * and the disk's reads and writes in turn: one device, whose rates were
 * measured one direction at a time (on the Xeon VM of 2026-12-06 a run
 * reading 45.6 GiB and writing 24.4 GiB took the sum of the two times at
 * the calibrated rates, not the larger).
 */
enum sched_cost_term {
    COST_H2D,        /* host -> GPU link */
    COST_D2H,        /* GPU -> host link */
    COST_DISK_READ,
    COST_DISK_WRITE,
    COST_DISK,       /* the two above together: the disk does one, then the other */
    COST_DRAM,       /* CPU attention reading host KV */
    COST_FLOPS,      /* 2 x params x rows / gemm rate (prefill: the head's last rows only) */
    COST_DEV_MEM,    /* device memory traffic */
    COST_TERMS
};
const char *sched_cost_term_name(int term); /* "h2d", "d2h", "disk read", ... */

typedef struct sched_cost {
    double step[COST_TERMS];    /* seconds per term, one decode step of the block */
    double prefill[COST_TERMS]; /* seconds per term, the prefill of the block */
    double step_s, prefill_s;   /* the largest term of each */
    int step_limit, prefill_limit; /* which term that is */
    double tok_s;               /* block x gen / (prefill_s + (gen - 1) x step_s) */
    double busy_tok;            /* every term's seconds (COST_DISK's parts once) over
                                 * the prefill and gen - 1 steps, per generated token:
                                 * what a policy moves and computes, hidden or not */
} sched_cost;

/* Evaluate policy p (block shape sh, prompts of prompt_len tokens, gen_len
 * new tokens each) on hardware hw. A rate of 0 with bytes to move makes the
 * term infinite (a disk that was not measured). @return 0 or -EINVAL. */
int sched_cost_eval(const sched_model *m, size_t es, const sched_policy *p,
                    const sched_shape *sh, int prompt_len, int gen_len, const sched_calib *hw,
                    sched_cost *out);

/* ------------------------------------------------------------ policy search
 *
 * FlexGen's search: for every block shape (GPU batch size x number of GPU
 * batches), activation tier and CPU-attention choice, a linear program
 * (GLPK) places weights and KV over the tiers to minimise
 * T_prefill + (gen - 1) x T_step under the memory caps; its solution is
 * rounded to whole percentages, checked against the exact plan
 * (sched_plan_compute: tensor-boundary cuts, per-sequence KV split,
 * alignment) and re-solved with tighter caps until it fits, then scored
 * with sched_cost_eval. Candidates come back best first.
 */
typedef struct sched_search_opts {
    int prompt_len, gen_len;
    int prefill_rows;        /* generate's --prefill-rows (default 4096) */
    int pick_prefill_rows;   /* 1: try prefill_rows and its halves down to a prompt
                              * (smaller work buffers against more passes over the
                              * weights; sched_policy.prefill_rows says which won) */
    int kv_cap;              /* KV slots per sequence: the budget (prompt + gen for full) */
    int scores;              /* the KV policy keeps H2O scores */
    int max_block;           /* largest block tried (e.g. the number of prompts) */
    double max_prefill_s;    /* > 0: only blocks whose estimated prefill takes at most
                              * this long (a job of unknown size: the first records
                              * come after one block); 0: no limit */
    int max_gpu_batches;     /* largest num_gpu_batches tried */
    const int *gbs_list;     /* GPU batch sizes to try; NULL: 1, 2, 4, 8, 12, 16, 24, ... */
    int n_gbs;
    int cpu_attention;       /* -1: try both, 0 / 1: only that */
    int weight_layers;       /* sched_policy.weight_layers: -1 try both, 0 / 1 only that */
    uint64_t gpu_cap, cpu_cap; /* bytes; both required */
    uint64_t disk_cap;       /* bytes free in offload_dir; 0: no disk tier */
    int weight_fmt;          /* sched_shape.weight_fmt: the source's 16 bits, kept on
                              * the tiers of a wider backend (cli_model_tiers) */
    int weight_direct;       /* sched_shape.weight_direct (--cpu-matmul bf16) */
    int host_visible;        /* sched_shape.host_visible: the CPU backend */
    int weights_on_disk_already; /* sched_shape's: the disk share streams from a weight
                              * store, so it takes no room in offload_dir */
} sched_search_opts;

/* Bounds this close count as equal in the search's ranking (a fraction of
 * the larger), the candidate that moves and computes less per token
 * (sched_cost.busy_tok) going first: the bound takes every term but the
 * largest as hidden, which a machine whose cores compute does not quite
 * manage (opt-1.3b 4-bit on the 2-core Xeon VM: a policy reading 70% of the
 * layers from disk each step, 1.3% ahead by the bound with 13% of the
 * weights on the GPU tier, ran 7% behind the same policy with the CPU tier
 * holding the rest). */
#define SCHED_SEARCH_NEAR 0.015

typedef struct sched_candidate {
    sched_policy pol;
    sched_plan plan;
    sched_cost cost;
} sched_candidate;

/* Search policies for model c (es-byte elements); base gives the fields
 * the search does not choose (overlap, pin_weight, offload_dir, caps). Up
 * to n_out best candidates go to out, *n_found says how many. No policy
 * fitting is -ENOSPC with a message saying what the smallest one needs.
 * @return 0 or -errno. */
int sched_search(const sched_model *m, size_t es, const sched_policy *base,
                 const sched_search_opts *o, const sched_calib *hw, sched_candidate *out,
                 int n_out, int *n_found);

/* The candidates as a table, one line per candidate, best first, under a
 * header line: rank, block shape (gbs x K) and size, the six percentages,
 * CPU attention, the throughput bound, the step and prefill times and the
 * term that limits a step. */
void sched_search_print(FILE *f, const sched_candidate *c, int n);

/* Write policy p as a JSON policy file (sched_policy_load reads it back),
 * atomically. @return 0 or -errno naming the path. */
int sched_policy_write(const char *path, const sched_policy *p);

#endif
