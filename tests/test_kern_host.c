/* test_kern_host.c: the fp16-cache instances of the slot ops (CPU attention
 * over the CUDA backend's host-resident KV) against the fp32 reference.
 * The reference runs on caches holding the fp16-rounded values, so both
 * read the same numbers in the same order: outputs, scores, positions and
 * evictions must be identical, and the fp16 caches must hold the rounding
 * of what the reference wrote. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"

static float h2f(uint16_t u)
{
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}

static uint16_t f2h(float x)
{
    _Float16 h = (_Float16)x;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static float rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int64_t)(*s >> 11) * 0x1.0p-52 - 1.0);
}

Test(kern_host, h16_slot_ops_equal_the_reference)
{
    enum { NS = 3, H = 4, HD = 16, CAP = 9 };
    const int ld = 3 * H * HD, d = H * HD;
    uint64_t seed = 7;
    /* prefill rows of three prompts of different lengths, budgets 9, 5, 12 > len */
    int lens[NS] = {12, 7, 3}, budget[NS] = {9, 5, 9};
    int rows = lens[0] + lens[1] + lens[2];
    float *qkv = malloc(sizeof(float) * (size_t)rows * ld);
    for (int i = 0; i < rows * ld; i++)
        qkv[i] = h2f(f2h(rnd(&seed))); /* k, v exactly representable in fp16 */
    float *colsum = malloc(sizeof(float) * (size_t)rows * H);
    for (int i = 0; i < rows * H; i++)
        colsum[i] = (float)((i * 37) % 11) * 0.25f; /* ties included */
    kern_seq sq[NS];
    for (int s = 0, r = 0; s < NS; r += lens[s], s++)
        sq[s] = (kern_seq){.row = r, .n_new = lens[s], .n_past = 0, .n_slots = 0,
                           .budget = budget[s], .sinks = 1, .recent = 2};
    size_t slots = (size_t)NS * H * CAP;
    float *kc = calloc(slots * HD, 4), *vc = calloc(slots * HD, 4), *sc = calloc(slots, 4);
    uint16_t *kh = calloc(slots * HD, 2), *vh = calloc(slots * HD, 2);
    float *sh = calloc(slots, 4);
    int32_t *pos = calloc(slots, 4), *posh = calloc(slots, 4);
    kern_kv_prefill_ref(kc, vc, sc, pos, qkv + d, qkv + 2 * d, ld, colsum, sq, NS, H, HD, CAP);
    kern_kv_prefill_h16(kh, vh, sh, posh, qkv + d, qkv + 2 * d, ld, colsum, sq, NS, H, HD, CAP);
    cr_assert_eq(memcmp(pos, posh, slots * 4), 0, "prefill kept different tokens");
    cr_assert_eq(memcmp(sc, sh, slots * 4), 0, "prefill scores differ");
    for (size_t i = 0; i < slots * HD; i++)
        cr_assert(kh[i] == f2h(kc[i]) && vh[i] == f2h(vc[i]), "cache element %zu", i);

    /* decode steps: one new row per sequence, evicting once full */
    float *out = malloc(sizeof(float) * NS * d), *outh = malloc(sizeof(float) * NS * d);
    float self[NS * H], selfh[NS * H];
    int32_t ev[NS * H], evh[NS * H];
    float *row = malloc(sizeof(float) * NS * ld);
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < NS * ld; i++)
            row[i] = h2f(f2h(rnd(&seed)));
        for (int s = 0; s < NS; s++) {
            sq[s].row = s;
            sq[s].n_new = 1;
            sq[s].n_past = lens[s] + step;
            sq[s].n_slots = sq[s].n_past < budget[s] ? sq[s].n_past : budget[s];
        }
        kern_attn_decode_ref(out, d, row, row + d, row + 2 * d, ld, kc, vc, sq, NS, H, HD, CAP,
                             0.25f, sc, self);
        kern_attn_decode_h16(outh, d, row, row + d, row + 2 * d, ld, kh, vh, sq, NS, H, HD,
                             CAP, 0.25f, sh, selfh);
        cr_assert_eq(memcmp(out, outh, sizeof(float) * NS * d), 0, "step %d: output", step);
        cr_assert_eq(memcmp(sc, sh, slots * 4), 0, "step %d: scores", step);
        cr_assert_eq(memcmp(self, selfh, sizeof self), 0, "step %d: self", step);
        kern_kv_insert_ref(kc, vc, sc, pos, row + d, row + 2 * d, ld, self, sq, NS, H, HD, CAP,
                           ev);
        kern_kv_insert_h16(kh, vh, sh, posh, row + d, row + 2 * d, ld, selfh, sq, NS, H, HD,
                           CAP, evh);
        cr_assert_eq(memcmp(ev, evh, sizeof ev), 0, "step %d: evictions", step);
        cr_assert_eq(memcmp(pos, posh, slots * 4), 0, "step %d: positions", step);
        for (size_t i = 0; i < slots * HD; i++)
            cr_assert(kh[i] == f2h(kc[i]) && vh[i] == f2h(vc[i]), "step %d: element %zu",
                      step, i);
    }
    int evicted = 0;
    for (int i = 0; i < NS * H; i++)
        evicted += ev[i] >= 0;
    cr_assert_gt(evicted, 0, "the test must reach evictions");
    free(qkv); free(colsum); free(kc); free(vc); free(sc); free(kh); free(vh); free(sh);
    free(pos); free(posh); free(out); free(outh); free(row);
}
