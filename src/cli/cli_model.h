/* cli_model.h: the model a run uses (generate, eval, score): a weight store,
 * a Hugging Face directory or random weights, opened before the plan and
 * loaded into the scheduler after it. */
#ifndef FH_CLI_MODEL_H
#define FH_CLI_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "model.h"
#include "scheduler.h"
#include "tok.h"

/* Where the model comes from: a weight store (`flexh2o convert`) or a
 * Hugging Face directory (--model DIR), or random weights (--dummy NAME). */
typedef struct cli_model_src {
    const char *dir;        /* --model DIR; NULL: --dummy */
    model_config cfg;
    tok *t;                 /* dir's tokenizer; NULL for --dummy */
    int is_store;           /* dir is a weight store */
    uint32_t store_dtype;   /* its OFF_DTYPE_* (is_store) */
    int hf_h16;             /* a checkpoint's layers all fp16 or all bf16: KERN_H16_*
                             * (model_hf_h16), else 0 */
} cli_model_src;

/* The config and tokenizer of the model, without its weights. @return 0
 * or -errno; the caller destroys src->t. */
int cli_model_open(const char *dir, const char *dummy, cli_model_src *src);

/* The 16-bit type (kern_h16) of src's values: an fp16 or bf16 store (4-bit
 * or not: its tables and scales), a checkpoint all in one of them, or 0. */
int cli_model_h16(const cli_model_src *src);

/* How the tiers keep the weights of src for a run with policy pol on
 * backend be: sh->weight_fmt (an fp16 store, or an fp16 or bf16
 * checkpoint, stays 16-bit on a backend whose storage type is wider,
 * widened per block before the compute), sh->weight_direct (a bf16 source
 * on a backend computing from bf16: its layers, or their 4-bit expansion,
 * meet bf16 matmuls, and its embedding and head stay bf16) and
 * sh->weights_on_disk_already (the disk share then streams from the store
 * as it is, with no weights.bin written). */
void cli_model_tiers(const cli_model_src *src, const backend *be, const sched_policy *pol,
                     sched_shape *sh);

/* The same for a backend not opened: its storage type of elem_size bytes,
 * widens: it can widen 16-bit layers (backend_ops.widen; the CPU
 * backend's). search plans with it. */
void cli_model_tiers_for(const cli_model_src *src, size_t elem_size, int widens,
                         const sched_policy *pol, sched_shape *sh);

/* Load the weights, each layer through the scheduler's sink. @return 0 or
 * -errno. */
int cli_model_load(const cli_model_src *src, backend *be, sched *sc, model **m);

#endif
