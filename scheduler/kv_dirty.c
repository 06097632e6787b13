/* kv_dirty.c: what a decode step reads and changes of a KV record off the
 * GPU, so that only that moves.
 *
 * A sequence's cache uses slots [0, n_slots) of its cap per (layer, KV
 * head); the kernels read no other, and a step's new token goes to slot
 * n_slots or to a victim below it. So a decode step loads the slots in use
 * of each record whose sequences are all in the pass (sched_kv_load_runs:
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
 * what the step read. On disk those rows lie a (sequence, head)'s span of
 * cap rows apart, so writing back the OFF_ALIGN pages that hold them is a
 * request per row: IOPS, not bandwidth, bound a disk-bound decode. So each
 * disk record has a row log (after the records in kv.bin):
 *
 *   record (l, k):  [kc | vc | pos | scores]          the slots as of the
 *                                                     last write-back
 *   its log:        [entry 0][entry 1]...[entry c-1]  an entry per step since:
 *                   slot and position per (sequence, head), -1 for none,
 *                   then their K rows, then their V rows
 *
 * A store appends one entry (one request: the rows of every pair side by
 * side, as FlexGen stores only the new token) and the pages of the scores
 * in use (a run: they change wholesale); a load reads the slots in use and
 * the log's entries, and applies the entries in order (the last write of a
 * slot wins). When the log is full, the store writes the pages of the
 * slots in use instead, and the log starts over. A log of c entries adds
 * c / 2 of them to a load on average and writes the slots in use once
 * every c + 1 steps, so c is about sqrt(2 record / entry) (sched_kv_log_geom;
 * 33 entries of 68 KiB beside a record of 37 MiB for opt-1.3b's 8
 * sequences of 544 slots). The log's length lives in memory
 * (sched.kv_log_n): kv.bin is scratch that no run reads back.
 *
 * The victim is chosen on the device (kern_kv_insert); here it is found
 * again as the one slot of the sequence holding the new token's position
 * n_past (positions in a cache are distinct, and slots [n_slots, cap)
 * are never read, so only [0, n_slots) is searched). A step this cannot
 * account for writes the whole record, and the log starts over.
 */
#include <math.h>
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

/* The most entries a record's row log holds. */
#define KV_LOG_MAX 64

static size_t log_pairs(const sched_geom *g)
{
    return (size_t)g->kv_n[SCHED_DISK] * g->KVH;
}

/* Entry e of a row log at log: per (sequence, KV head) pair p of the
 * record, the slot its new token went to (-1: none) and that token's
 * position; the pairs' K rows; their V rows. */
typedef struct log_entry {
    int32_t *slot, *pos;
    char *k, *v;
} log_entry;

static log_entry entry_at(const sched_geom *g, const void *log, int e)
{
    size_t P = log_pairs(g);
    char *b = (char *)log + (size_t)e * g->kv_log_entry;
    return (log_entry){(int32_t *)b, (int32_t *)b + P, b + 8 * P, b + 8 * P + P * g->kv_row};
}

static size_t rec_index(const sched *s, int l, int k)
{
    return (size_t)l * s->g.K + k;
}

static uint64_t log_off(const sched *s, int l, int k)
{
    const sched_geom *g = &s->g;
    return g->kv_log_at + rec_index(s, l, k) * g->kv_log_cap * g->kv_log_entry;
}

static int log_len(const sched *s, int l, int k)
{
    return s->g.kv_log_cap ? s->kv_log_n[rec_index(s, l, k)] : 0;
}

void sched_kv_log_set(sched *s, int l, int k, int n)
{
    s->kv_log_n[rec_index(s, l, k)] = (uint8_t)n;
}

/* The entries a record's log of c holds when decode step i (1..) loads it:
 * the prefill's whole store left it empty, each step appends one, and the
 * step that finds it full writes back and empties it. */
static int log_at_step(int i, int c)
{
    return c ? (i - 1) % (c + 1) : 0;
}

void sched_kv_log_geom(sched_geom *g)
{
    size_t P = log_pairs(g);
    g->kv_log_entry = 0;
    g->kv_log_cap = 0;
    if (P == 0)
        return;
    size_t e = off_align_up(P * (8 + 2 * g->kv_row));
    double c = sqrt(2.0 * (double)g->kv_disk_stride / (double)e);
    if (c < 2) /* a record of a few slots: its slots in use every step */
        return;
    g->kv_log_entry = e;
    g->kv_log_cap = c > KV_LOG_MAX ? KV_LOG_MAX : (int)c;
}

/* Flag the pages holding the slots in use of GPU batch k's disk record:
 * [0, n_slots) of each of its sequences, idle ones included, one more for
 * each of the first n_seq that decoded in the pass. */
static void mark_live(const sched *s, int k, int n_seq, uint8_t *pages)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t row = g->kv_row;
    int cap = s->sh.cap;
    const kern_seq *seqs = s->bseq + (size_t)k * g->gbs + g->kv_seq0[SCHED_DISK];
    for (int j = 0; j < g->kv_n[SCHED_DISK]; j++) {
        int n = seqs[j].n_slots + (j < n_seq && seqs[j].n_new > 0);
        n = n < cap ? n : cap;
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
}

int sched_kv_load_runs(const sched *s, int l, int k, int live, char *rec, void *log,
                       off_io *ios, uint8_t *pages)
{
    const sched_geom *g = &s->g;
    size_t n_pages = g->kv_disk_stride / OFF_ALIGN;
    uint64_t at = rec_index(s, l, k) * g->kv_disk_stride;
    int n = 1;
    if (live) {
        memset(pages, 0, n_pages);
        mark_live(s, k, 0, pages);
        n = runs_of(pages, n_pages, 0, rec, s->kv_fd, at, ios);
    } else {
        ios[0] = (off_io){s->kv_fd, 0, rec, g->kv_disk_stride, at};
    }
    int e = log_len(s, l, k);
    if (e > 0)
        ios[n++] = (off_io){s->kv_fd, 0, log, (size_t)e * g->kv_log_entry, log_off(s, l, k)};
    return n;
}

void sched_kv_log_apply(const sched *s, int l, int k, char *rec, const void *log)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t P = log_pairs(g), row = g->kv_row, cap = (size_t)s->sh.cap;
    int n = log_len(s, l, k);
    for (int e = 0; e < n; e++) {
        log_entry en = entry_at(g, log, e);
        for (size_t p = 0; p < P; p++) {
            if (en.slot[p] < 0)
                continue;
            size_t i = p * cap + (size_t)en.slot[p];
            memcpy(rec + kl->kc + i * row, en.k + p * row, row);
            memcpy(rec + kl->vc + i * row, en.v + p * row, row);
            ((int32_t *)(rec + kl->pos))[i] = en.pos[p];
        }
    }
}

int sched_kv_store_runs(const sched *s, int l, int k, int n_seq, const char *rec, void *log,
                        off_io *ios, uint8_t *pages, int *log_n)
{
    const sched_geom *g = &s->g;
    const kv_layout *kl = &g->kv[SCHED_DISK];
    size_t n_pages = g->kv_disk_stride / OFF_ALIGN, row = g->kv_row;
    int cap = s->sh.cap, e = log_len(s, l, k), append = e < g->kv_log_cap;
    uint64_t at = rec_index(s, l, k) * g->kv_disk_stride;
    const kern_seq *seqs = s->bseq + (size_t)k * g->gbs + g->kv_seq0[SCHED_DISK];
    log_entry en = append ? entry_at(g, log, 0) : (log_entry){0};
    memset(pages, 0, n_pages);
    for (int j = 0; j < g->kv_n[SCHED_DISK]; j++) {
        const kern_seq *q = &seqs[j];
        for (int h = 0; h < g->KVH; h++) {
            size_t p = (size_t)j * g->KVH + h, base = p * cap;
            int slot = j < n_seq && q->n_new > 0 /* (-2: no new token) */
                           ? new_slot(q, (const int32_t *)(rec + kl->pos) + base) : -2;
            if (slot == -1) { /* not found: the whole record */
                ios[0] = (off_io){s->kv_fd, 1, (char *)rec, g->kv_disk_stride, at};
                *log_n = 0;
                return 1;
            }
            if (append)
                en.slot[p] = slot < 0 ? -1 : slot;
            if (slot < 0)
                continue;
            if (append) {
                en.pos[p] = ((const int32_t *)(rec + kl->pos))[base + slot];
                memcpy(en.k + p * row, rec + kl->kc + (base + slot) * row, row);
                memcpy(en.v + p * row, rec + kl->vc + (base + slot) * row, row);
            }
            if (kl->scores != SIZE_MAX) /* the slots in use, the new one included */
                mark(pages, kl->scores + base * 4,
                     4 * (size_t)(slot == q->n_slots ? q->n_slots + 1 : q->n_slots));
        }
    }
    if (!append) { /* the log is full: the slots in use, and it starts over */
        mark_live(s, k, n_seq, pages);
        *log_n = 0;
        return runs_of(pages, n_pages, 1, (char *)rec, s->kv_fd, at, ios);
    }
    int n = runs_of(pages, n_pages, 1, (char *)rec, s->kv_fd, at, ios);
    ios[n++] = (off_io){s->kv_fd, 1, log, g->kv_log_entry,
                        log_off(s, l, k) + (uint64_t)e * g->kv_log_entry};
    *log_n = e + 1;
    return n;
}

int64_t sched_kv_read_record(sched *s, int l, int k, char *rec, void *log, const char *what)
{
    off_io ios[2];
    int n = sched_kv_load_runs(s, l, k, 0, rec, log, ios, NULL);
    FORWARD_IF(off_disk_rw(s->disk, ios, n, what));
    sched_kv_log_apply(s, l, k, rec, log);
    return (int64_t)(ios[0].len + (n > 1 ? ios[1].len : 0));
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

/* Bytes of the pages of a disk record holding slots [0, n) of each pair. */
static double live_record(const sched_geom *g, int cap, size_t n)
{
    size_t pairs = log_pairs(g), row = g->kv_row;
    double b = 2 * live_bytes(pairs, cap * row, n * row) +
               live_bytes(pairs, (size_t)cap * 4, n * 4) *
                   (g->kv[SCHED_DISK].scores != SIZE_MAX ? 2 : 1);
    return b < (double)g->kv_disk_stride ? b : (double)g->kv_disk_stride;
}

/* The slots in use at decode step i (1..) of prompts of prompt_len. */
static size_t slots_at(int i, int cap, int prompt_len)
{
    long n = (long)prompt_len + i - 1;
    return n < cap ? (size_t)n : (size_t)cap;
}

double sched_kv_step_load_bytes(const sched_geom *g, int cap, int prompt_len, int gen_len)
{
    if (!g->kv_n[SCHED_DISK])
        return 0;
    int steps = gen_len - 1 > 0 ? gen_len - 1 : 1, c = g->kv_log_cap;
    double sum = 0;
    for (int i = 1; i <= steps; i++) {
        sum += live_record(g, cap, slots_at(i, cap, prompt_len));
        int e = log_at_step(i, c);
        if (e)
            sum += (double)e * g->kv_log_entry + KV_MERGE_GAP * OFF_ALIGN;
    }
    return sum / steps;
}

double sched_kv_step_store_bytes(const sched_geom *g, int cap, int prompt_len, int gen_len)
{
    if (!g->kv_n[SCHED_DISK])
        return 0;
    int steps = gen_len - 1 > 0 ? gen_len - 1 : 1, c = g->kv_log_cap;
    double req = KV_MERGE_GAP * OFF_ALIGN, sum = 0;
    int scores = g->kv[SCHED_DISK].scores != SIZE_MAX;
    for (int i = 1; i <= steps; i++) {
        size_t n = slots_at(i, cap, prompt_len), n1 = n + 1 < (size_t)cap ? n + 1 : (size_t)cap;
        if (log_at_step(i, c) < c) /* an entry, and the scores in use */
            sum += g->kv_log_entry + req +
                   (scores ? live_bytes(log_pairs(g), (size_t)cap * 4, n1 * 4) + req : 0);
        else /* the log is full: the slots in use */
            sum += live_record(g, cap, n1);
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
