/* kern_scratch.h: scratch for the tests that call the CPU kernels directly
 * (kern.h's attention, KV prefill and decode ops take it from their
 * caller). KERN_WS(n) is the (scratch, scratch_bytes) argument pair of a
 * call over prompts of up to n tokens or caches of up to n slots on this
 * thread's kern_cpu_threads(): one buffer per test process, grown to the
 * largest n asked, never freed. */
#ifndef FH_TEST_KERN_SCRATCH_H
#define FH_TEST_KERN_SCRATCH_H

#include <criterion/criterion.h>
#include <stdlib.h>

#include "kern.h"

static inline size_t kern_ws_bytes(int n)
{
    int nt = kern_cpu_threads();
    size_t a = kern_attn_prefill_scratch_bytes(n, nt), b = kern_kv_prefill_scratch_bytes(n, nt);
    size_t c = kern_attn_decode_scratch_bytes(n, nt);
    return a > b ? (a > c ? a : c) : (b > c ? b : c);
}

static inline void *kern_ws(size_t bytes)
{
    static void *p;
    static size_t have;
    if (bytes > have) {
        free(p);
        p = malloc(bytes);
        cr_assert(p, "out of memory for %zu bytes of kernel scratch", bytes);
        have = bytes;
    }
    return p;
}

#define KERN_WS(n) kern_ws(kern_ws_bytes(n)), kern_ws_bytes(n)

#endif
