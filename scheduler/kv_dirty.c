/* kv_dirty.c: what a decode step reads and changes of a KV record off the
 * GPU, so that only that moves.
 *
 * A sequence's cache uses slots [0, n_slots) of its cap per (layer, KV
 * head); the kernels read no other, and a step's new token goes to slot
 * n_slots or to a victim below it. So a decode step loads the slots in use
 * of each record whose sequences are all in the pass (sched_kv_live_runs:
 * the disk pages holding them; sched_kv_copy_live: a strided copy between
 * a record's home or host stage and its GPU stage), one more on the way
 * back; what the stage holds past them is never read, and is written back
 * only where a page or a whole record takes it along. A full cache of
 * 512 + 1024 tokens so moves about two thirds of its records a step, as
 * FlexGen copies the filled prefix.
 *
 * A decode step adds one token per (sequence, KV head) of the sequences
 * that decoded: its K and V rows and its position go to one slot (the next
 * free one while the cache fills, the H2O / window victim after), and the
 * H2O scores of the slots in use change. Everything else in the record is
 * what the step read. Writing back only the OFF_ALIGN pages that hold
 * those bytes instead of the whole record (FlexGen stores only the new
 * token's KV too) takes most of the writes off the disk, which reads and
 * writes in turn: a record of 544 slots of 128-byte rows has 17 pages per
 * (sequence, head) of K, of which one changes. A request costs about what
 * KV_MERGE_GAP pages do, so runs take in shorter gaps: a short cache's
 * record still goes nearly whole.
 *
 * The victim is chosen on the device (kern_kv_insert); here it is found
 * again as the one slot of the sequence holding the new token's position
 * n_past (positions in a cache are distinct, and slots [n_slots, cap)
 * are never read, so only [0, n_slots) is searched). A step this cannot
 * account for writes the whole record.
 */
#include <string.h>

#include "err.h"
#include "sched_impl.h"

static void mark(uint8_t *pages, size_t from, size_t len)
{
    for (size_t p = from / OFF_ALIGN; p <= (from + len - 1) / OFF_ALIGN; p++)
        pages[p] = 1;
}

/* The slot the step's token of pair (sequence q, head) went to, whose
 * positions are pos[0, cap): n_slots while the cache fills, else the slot
 * holding position n_past. @return the slot or -1. */
static int new_slot(const kern_seq *q, const int32_t *pos)
{
    if (q->n_slots < q->budget)
        return q->n_slots;
    for (int i = 0; i < q->n_slots; i++)
        if (pos[i] == q->n_past)
            return i;
    return -1;
}

/* The flagged pages of a record at rec (fd at file_off) as requests, a
 * run taking in gaps of fewer than KV_MERGE_GAP unflagged pages. */
static int runs_of(const uint8_t *pages, size_t n_pages, int write, char *rec, int fd,
                   uint64_t file_off, off_io *ios)
{
    int n = 0;
    for (size_t p = 0; p < n_pages;) {
        if (!pages[p]) {
            p++;
            continue;
        }
        size_t e = p + 1, gap = 0;
        for (size_t i = e; i < n_pages && gap < KV_MERGE_GAP; i++) {
            gap = pages[i] ? 0 : gap + 1;
            if (pages[i])
                e = i + 1;
        }
        ios[n++] = (off_io){fd, write, rec + p * OFF_ALIGN, (e - p) * OFF_ALIGN,
                            file_off + p * OFF_ALIGN};
        p = e;
    }
    return n;
}

int sched_kv_dirty_runs(const sched *s, int k, int n_seq, const char *rec, int fd,
                        uint64_t file_off, off_io *ios, uint8_t *pages)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t n_pages = g->kv_disk_stride / OFF_ALIGN, row = g->kv_row;
    int cap = s->sh.cap, whole = 0;
    const kern_seq *seqs = s->bseq + (size_t)k * g->gbs + g->kv_seq0[SCHED_DISK];
    memset(pages, 0, n_pages);
    for (int j = 0; j < n_seq && !whole; j++) {
        const kern_seq *q = &seqs[j];
        if (q->n_new == 0)
            continue;
        for (int h = 0; h < g->KVH; h++) {
            size_t base = ((size_t)j * g->KVH + h) * cap;
            int slot = new_slot(q, (const int32_t *)(rec + kl->pos) + base);
            if (slot < 0) {
                whole = 1;
                break;
            }
            mark(pages, kl->kc + (base + slot) * row, row);
            mark(pages, kl->vc + (base + slot) * row, row);
            mark(pages, kl->pos + (base + slot) * 4, 4);
            if (kl->scores != SIZE_MAX) /* the slots in use, the new one included */
                mark(pages, kl->scores + base * 4,
                     4 * (size_t)(slot == q->n_slots ? q->n_slots + 1 : q->n_slots));
        }
    }
    /* (what a decode load left unread is never read: the whole record
     * carries the live slots that sched_kv_live_runs loaded) */
    if (whole)
        memset(pages, 1, n_pages);
    return runs_of(pages, n_pages, 1, (char *)rec, fd, file_off, ios);
}

int sched_kv_live_runs(const sched *s, int k, char *rec, int fd, uint64_t file_off,
                       off_io *ios, uint8_t *pages)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t n_pages = g->kv_disk_stride / OFF_ALIGN, row = g->kv_row;
    int cap = s->sh.cap;
    const kern_seq *seqs = s->bseq + (size_t)k * g->gbs + g->kv_seq0[SCHED_DISK];
    memset(pages, 0, n_pages);
    for (int j = 0; j < g->kv_n[SCHED_DISK]; j++) {
        int n = seqs[j].n_slots; /* idle ones too: a whole write-back keeps them */
        if (n <= 0)
            continue;
        for (int h = 0; h < g->KVH; h++) {
            size_t base = ((size_t)j * g->KVH + h) * cap;
            mark(pages, kl->kc + base * row, (size_t)n * row);
            mark(pages, kl->vc + base * row, (size_t)n * row);
            mark(pages, kl->pos + base * 4, (size_t)n * 4);
            if (kl->scores != SIZE_MAX)
                mark(pages, kl->scores + base * 4, (size_t)n * 4);
        }
    }
    return runs_of(pages, n_pages, 0, rec, fd, file_off, ios);
}

size_t sched_kv_step_store_bytes(const sched_geom *g, int cap)
{
    if (!g->kv_n[SCHED_DISK])
        return 0;
    size_t pairs = (size_t)g->kv_n[SCHED_DISK] * g->KVH, row = g->kv_row;
    /* a row's pages: one more where rows do not tile a page (some straddle two) */
    size_t row_pages = (row + OFF_ALIGN - 1) / OFF_ALIGN + (OFF_ALIGN % row != 0);
    /* a (sequence, head)'s rows span about cap * row / OFF_ALIGN + 1 pages:
     * with gaps shorter than KV_MERGE_GAP pages between its new rows (and
     * those of the next pair) the runs merge into the whole record */
    if ((size_t)cap * row / OFF_ALIGN + 1 <= row_pages + KV_MERGE_GAP)
        return g->kv_disk_stride;
    /* else a request per new K and V row, each costing about KV_MERGE_GAP
     * pages more (kv_dirty.c), and the positions and scores whole */
    size_t b = 2 * pairs * (row_pages + KV_MERGE_GAP) * OFF_ALIGN +
               off_align_up(pairs * cap * 4) * (g->kv[SCHED_DISK].scores != SIZE_MAX ? 2 : 1);
    return b < g->kv_disk_stride ? b : g->kv_disk_stride;
}

/* Bytes of an array of pairs x span bytes read when each pair's first live
 * bytes are live: a run per pair and its request's cost, or the whole
 * array where the clean gaps between runs are too short to split them. */
static double live_bytes(size_t pairs, size_t span, size_t live)
{
    if (live >= span || (span - live) / OFF_ALIGN < KV_MERGE_GAP)
        return (double)pairs * span;
    double run = (double)live + (1 + KV_MERGE_GAP) * OFF_ALIGN;
    return (double)pairs * (run < span ? run : span);
}

double sched_kv_step_load_bytes(const sched_geom *g, int cap, int prompt_len, int gen_len)
{
    if (!g->kv_n[SCHED_DISK])
        return 0;
    size_t pairs = (size_t)g->kv_n[SCHED_DISK] * g->KVH, row = g->kv_row;
    double whole = (double)g->kv_disk_stride, sum = 0;
    int steps = gen_len - 1 > 0 ? gen_len - 1 : 1;
    /* decode step i (1..) reads prompt_len + i - 1 slots, at most cap */
    for (int i = 1; i <= steps; i++) {
        size_t n = (size_t)prompt_len + i - 1 < (size_t)cap ? (size_t)prompt_len + i - 1
                                                             : (size_t)cap;
        double b = 2 * live_bytes(pairs, cap * row, n * row) +
                   live_bytes(pairs, (size_t)cap * 4, n * 4) *
                       (g->kv[SCHED_DISK].scores != SIZE_MAX ? 2 : 1);
        sum += b < whole ? b : whole;
    }
    return sum / steps;
}

int sched_kv_live_slots(const sched *s, int t, int k, int store)
{
    const sched_geom *g = &s->g;
    const kern_seq *seqs = s->bseq + (size_t)k * g->gbs + g->kv_seq0[t];
    int n = 0;
    for (int j = 0; j < g->kv_n[t]; j++)
        if (seqs[j].n_slots > n)
            n = seqs[j].n_slots;
    n += store;
    return n < s->sh.cap ? n : s->sh.cap;
}

int64_t sched_kv_copy_live(const sched *s, int t, int queue, void *dst, const void *src, int n,
                           int wait)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[t];
    const backend_ops *o = s->be->ops;
    size_t rows = (size_t)g->kv_n[t] * g->KVH, cap = (size_t)s->sh.cap;
    size_t at[4] = {kl->kc, kl->vc, kl->pos, kl->scores};
    int64_t moved = 0;
    for (int a = 0; a < 4; a++) {
        if (at[a] == SIZE_MAX)
            continue;
        /* K and V: a row of n slots per (sequence, head); the positions and
         * scores (4 bytes a slot, small beside a K and a V row) whole, in
         * one piece rather than as rows of a few hundred bytes */
        size_t width = rows * cap * 4, pitch = width, n_rows = 1;
        if (a < 2) {
            width = (size_t)n * g->kv_row;
            pitch = cap * g->kv_row;
            n_rows = rows;
        }
        FORWARD_IF(o->copy_2d(s->be->ctx, queue, (char *)dst + at[a], pitch,
                              (const char *)src + at[a], pitch, width, n_rows, wait));
        moved += (int64_t)(width * n_rows);
    }
    return moved;
}

double sched_kv_live_frac(int cap, int prompt_len, int gen_len)
{
    int steps = gen_len - 1 > 0 ? gen_len - 1 : 1;
    double sum = 0;
    /* decode step i (1..) loads prompt_len + i - 1 slots and stores one more */
    for (int i = 1; i <= steps; i++) {
        double n = prompt_len + i - 0.5;
        sum += n < cap ? n : cap;
    }
    return cap > 0 ? sum / steps / cap : 1;
}
