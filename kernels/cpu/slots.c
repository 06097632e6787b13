/* slots.c: the slot caches, plain-C reference of attention.cu's decode
 * attention and of kv_slots.cu: attention of each decode step over the kept
 * slots, the prompt's kept tokens after prefill, and each decode step's new
 * token into a free slot or over the H2O victim (kern_h2o_pick_ref). The
 * bodies are slot_ops.h, instantiated for fp32 caches (the _ref functions)
 * and for fp16 caches in host memory (the _h16 functions of CPU attention).
 */
#include "../kern.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"

/* Which prompt tokens a (sequence, head) keeps when the prompt exceeds the
 * budget: keep[j] = 1 for the first sinks, the last recent and the heavy
 * highest colsum of the rest; ties keep the newer token (the older one is
 * what H2O evicts). cs: colsum of the sequence's rows for this head,
 * stride n_head, or NULL (all scores equal: the newest are kept). */
static void prefill_keep(unsigned char *keep, const float *cs, int n_head,
                         int n, const kern_seq *sq)
{
    int heavy = sq->budget - sq->sinks - sq->recent;
    for (int j = 0; j < n; j++)
        keep[j] = j < sq->sinks || j >= n - sq->recent;
    for (int taken = 0; taken < heavy; taken++) {
        int best = -1;
        for (int j = sq->sinks; j < n - sq->recent; j++)
            if (!keep[j] && (best < 0 || (cs ? cs[(size_t)j * n_head] >= cs[(size_t)best * n_head]
                                               : 1)))
                best = j;
        if (best < 0)
            break;
        keep[best] = 1;
    }
}

/* fp32 caches: the reference and the CPU backend */
#define SLOT_T float
#define SLOT_LD(p) (*(p))
#define SLOT_ST(p, x) (*(p) = (x))
#define SLOT_FN(n) n##_ref
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_LD
#undef SLOT_ST
#undef SLOT_FN

/* fp16 caches (the CUDA backend's storage type) in host memory */
static inline float h16_ld(const uint16_t *p)
{
    _Float16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

static inline void h16_st(uint16_t *p, float x)
{
    _Float16 h = (_Float16)x; /* round to nearest even, like __float2half */
    memcpy(p, &h, 2);
}

#define SLOT_T uint16_t
#define SLOT_LD(p) h16_ld(p)
#define SLOT_ST(p, x) h16_st((p), (x))
#define SLOT_FN(n) n##_h16
#include "slot_ops.h"
