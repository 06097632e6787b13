/* sched.h: the offloading policy, the Chrome trace recorder and the
 * zig-zag block scheduler (DESIGN.md "Policy", "Zig-zag block schedule").
 *
 * scheduler/ drives offload/ (disk engine, weight store) and the backend;
 * src/ wires it to the CLI. Calls return 0 or -errno with one message
 * recorded through err_set() (src/err.h).
 */
#ifndef FH_SCHED_H
#define FH_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ------------------------------------------------------------ policy */

typedef struct sched_policy {
    int gpu_batch_size;   /* sequences per GPU batch (default 8) */
    int num_gpu_batches;  /* GPU batches per block (default 1) */
    /* placement percentages, 0..100: weights (w), KV cache (c) and
     * activations (h) on the GPU and on the CPU; the rest is on disk.
     * Default 100 0 100 0 100 0 (everything on the GPU). */
    double wg, wc, cg, cc, hg, hc;
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
} sched_policy;

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
 *    "compress_weight": false, "compress_cache": false,
 *    "gpu_mem": "16G" | 17179869184, "cpu_mem": "200G", "offload_dir": "/nvme/x"}
 * An unknown field, a wrong type or a bad value is refused naming the file
 * and the field. @return 0 or -errno. */
int sched_policy_load(const char *path, sched_policy *p);

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
/* Monotonic seconds (CLOCK_MONOTONIC); the same clock as the events. */
double sched_trace_now(void);
/* Record one event (t may be NULL: then nothing happens). */
void sched_trace_add(sched_trace *t, const sched_event *e);
/* Number of events recorded. */
size_t sched_trace_count(const sched_trace *t);
/* Write the JSON to path (atomically: path.tmp then rename). @return 0 or
 * -errno with a message naming the path. */
int sched_trace_write(const sched_trace *t, const char *path);

/* ------------------------------------------------------------ plan
 *
 * What every tier must hold for a policy, computed before anything is
 * allocated or loaded (sizes in bytes). The scheduler allocates exactly
 * this, once: nothing on the decode path allocates.
 */
struct model_config;
struct kern_seq;
struct model;
struct backend;

typedef struct sched_shape {
    int max_rows;   /* most packed tokens of one GPU batch in one pass */
    int cap;        /* KV slots per (sequence, layer, head): the largest budget */
    int scores;     /* keep fp32 H2O scores beside the KV */
    int evicted;    /* record evicted positions (--trace-evictions) */
    int weights_on_disk_already; /* the disk share streams from a weight store */
} sched_shape;

enum sched_tier { SCHED_GPU, SCHED_CPU, SCHED_DISK, SCHED_TIERS };
enum sched_part { SCHED_WEIGHTS, SCHED_KV, SCHED_ACT, SCHED_STAGE, SCHED_WORK, SCHED_PARTS };

typedef struct sched_plan {
    uint64_t bytes[SCHED_TIERS][SCHED_PARTS]; /* what each tier holds, by part */
    uint64_t total[SCHED_TIERS];
    int block;                                /* gpu_batch_size x num_gpu_batches */
} sched_plan;

/* Rows of a GPU batch's prefill pass: whole prompts packed up to
 * prefill_rows tokens (at least the longest prompt, at most the batch's
 * prompts together, at least one row per sequence). */
int sched_prefill_rows(int prefill_rows, int max_prompt, int gbs);

/* Compute the plan of policy p for model c stored with es-byte elements.
 * @return 0 or -EINVAL (a shape the scheduler cannot run). */
int sched_plan_compute(const struct model_config *c, size_t es, const sched_policy *p,
                       const sched_shape *sh, sched_plan *out);
/* Check the plan against the caps (gpu_cap, cpu_cap, disk_free: 0 = none)
 * and refuse a policy that cannot fit with what it needs, the cap, and
 * what to change. @return 0 or -ENOSPC. */
int sched_plan_check(const sched_plan *pl, const sched_policy *p, uint64_t gpu_cap,
                     uint64_t cpu_cap, uint64_t disk_free);
/* Print the plan as a small table (one line per tier). */
void sched_plan_print(FILE *f, const sched_plan *pl);

/* MemAvailable of /proc/meminfo in bytes (0 when unreadable): the CPU-tier
 * cap when --cpu-mem is not given. */
uint64_t sched_mem_available(void);
/* Free bytes for the disk tier in dir; a dir that is not a directory is
 * -ENOENT with a message saying to create it. @return 0 or -errno. */
int sched_disk_free(const char *dir, uint64_t *out);

/* ------------------------------------------------------------ scheduler */
typedef struct sched sched;

/* Plan, check against the caps and allocate every tier for model shape
 * (m->cfg) on m's backend; weights then arrive through sched_layer_sink
 * (pass it to model_load_*_sink). trace may be NULL (not owned).
 * @return 0 or -errno; destroy with sched_destroy(). */
int sched_create(struct backend *be, const struct model_config *c, const sched_policy *p,
                 const sched_shape *sh, sched_trace *trace, sched **out);
void sched_destroy(sched *s); /* accepts NULL */
/* A model_layer_sink (model.h): places a layer's blob in its tiers. */
int sched_layer_sink(void *sched_ptr, int layer, const void *blob, int wq, int fd,
                     uint64_t file_offset);
/* Attach the loaded model (its embeddings, LayerNorm and head). */
void sched_attach(sched *s, struct model *m);
const sched_plan *sched_get_plan(const sched *s);
const sched_policy *sched_get_policy(const sched *s);

/* One forward pass over a block of n_seq (<= block) sequences, as
 * model_forward (model.h) describes it, run as the zig-zag schedule: layer
 * by layer, and within a layer GPU batch by GPU batch (sequences [k x gbs,
 * (k+1) x gbs)), loading the next layer's weights and the next batch's KV
 * and activations while the current one computes. Rows must be packed in
 * sequence order. step: 0 for prefill, the decode step otherwise (trace).
 * Logits of the rows last_rows go to sched_logits(). @return 0 or -errno. */
int sched_forward(sched *s, const int32_t *ids, const int32_t *pos, int n_rows,
                  const struct kern_seq *seqs, int n_seq, const int32_t *last_rows,
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
/* The summary block: peak memory per tier and each link's bytes and GB/s. */
void sched_summary_print(const sched *s, FILE *f);
/* "io_uring", "pread/pwrite threads" or "none" (no disk tier). */
const char *sched_disk_kind(const sched *s);

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
    int n_gemm;                   /* linear with m rows against a square weight: */
    int gemm_rows[SCHED_GEMM_SHAPES]; /* m, increasing (decode GEMMs have m = gbs) */
    double gemm_at[SCHED_GEMM_SHAPES]; /* TFLOP/s at each */
} sched_calib;

/* Measure with transfers of `bytes` (0: 1 GiB); dir NULL skips the disk.
 * A scratch file dir/calibrate.bin is created and removed. @return 0 or
 * -errno. */
int sched_calibrate(struct backend *be, const char *dir, uint64_t bytes, sched_calib *out);
/* The profile as one JSON object on one line (what `flexh2o calibrate`
 * prints and `--out` saves): {"device": "cpu", "h2d_GBps": .., "d2h_GBps":
 * .., "dram_GBps": .., "dev_mem_GBps": .., "gemm_TFLOPs": .., "gemm_rows":
 * [1, 4, ..], "gemm_TFLOPs_at": [..], and, when the disk was measured,
 * "disk_read_GBps", "disk_write_GBps", "disk_engine", "o_direct"}. */
void sched_calib_print(FILE *f, const sched_calib *cb);
/* Read a profile written by sched_calib_print (configs/hardware/). A
 * missing or non-positive rate is refused naming the file and the field.
 * @return 0 or -errno. */
int sched_calib_load(const char *path, sched_calib *out);

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
 * weight byte read by every GPU batch plus the KV computed on the device.
 */
enum sched_cost_term {
    COST_H2D,        /* host -> GPU link */
    COST_D2H,        /* GPU -> host link */
    COST_DISK_READ,
    COST_DISK_WRITE,
    COST_DRAM,       /* CPU attention reading host KV */
    COST_FLOPS,      /* 2 x params x tokens / gemm rate */
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
} sched_cost;

/* Evaluate policy p (block shape sh, prompts of prompt_len tokens, gen_len
 * new tokens each) on hardware hw. A rate of 0 with bytes to move makes the
 * term infinite (a disk that was not measured). @return 0 or -EINVAL. */
int sched_cost_eval(const struct model_config *c, size_t es, const sched_policy *p,
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
    int kv_cap;              /* KV slots per sequence: the budget (prompt + gen for full) */
    int scores;              /* the KV policy keeps H2O scores */
    int max_block;           /* largest block tried (e.g. the number of prompts) */
    int max_gpu_batches;     /* largest num_gpu_batches tried */
    const int *gbs_list;     /* GPU batch sizes to try; NULL: 1, 2, 4, 8, 12, 16, 24, ... */
    int n_gbs;
    int cpu_attention;       /* -1: try both, 0 / 1: only that */
    uint64_t gpu_cap, cpu_cap; /* bytes; both required */
    uint64_t disk_cap;       /* bytes free in offload_dir; 0: no disk tier */
} sched_search_opts;

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
int sched_search(const struct model_config *c, size_t es, const sched_policy *base,
                 const sched_search_opts *o, const sched_calib *hw, sched_candidate *out,
                 int n_out, int *n_found);

/* Write policy p as a JSON policy file (sched_policy_load reads it back),
 * atomically. @return 0 or -errno naming the path. */
int sched_policy_write(const char *path, const sched_policy *p);

#endif
