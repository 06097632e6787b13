/* tok_bpe.c: BPE of one pre-tokenized piece, as `tokenizers`' BPE model.
 *
 *   piece --start symbols--> ids --merges, lowest rank first--> ids
 *
 * Start symbols: a byte-level piece has one symbol per byte (its byte
 * symbol, byte_id). Otherwise each character is its model.vocab entry;
 * failing that its <0xNN> byte tokens (byte_fallback, when all are there);
 * failing that unk (a run of unknowns fused into one with fuse_unk), or
 * nothing when there is no unk_token. With ignore_merges a piece that is
 * itself in model.vocab is that one token (Llama-3).
 *
 * BPE works on ids, never on strings. A min-heap keyed on (rank, position)
 * picks the next merge, exactly the order of `tokenizers`' Word::merge_all,
 * which is also GPT-2's "lowest rank first, leftmost first". Entries made
 * stale by an earlier merge are dropped when popped. Cost is O(n log n) in
 * the piece length n, so a 1 MB word (or a whole Llama-2 line, which has
 * no pre-tokenizer) is fine.
 */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static int scratch_reserve(struct tok_bpe_scratch *sc, size_t n)
{
    if (n <= sc->cap)
        return 0;
    size_t cap = sc->cap ? sc->cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *id = realloc(sc->id, cap * sizeof *id);
    if (id)
        sc->id = id;
    int32_t *prev = realloc(sc->prev, cap * sizeof *prev);
    if (prev)
        sc->prev = prev;
    int32_t *next = realloc(sc->next, cap * sizeof *next);
    if (next)
        sc->next = next;
    /* Each merge pushes at most 2 entries onto the n-1 initial ones. */
    uint64_t *heap = realloc(sc->heap, 3 * cap * sizeof *heap);
    if (heap)
        sc->heap = heap;
    RETURN_IF(!id || !prev || !next || !heap, -ENOMEM,
              "out of memory tokenizing a %zu-byte word", n);
    sc->cap = cap;
    return 0;
}

void tok_bpe_scratch_free(struct tok_bpe_scratch *sc)
{
    free(sc->id);
    free(sc->prev);
    free(sc->next);
    free(sc->heap);
    free(sc->word);
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (h[c] >= v)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

static void push_pair(const tok *t, const int32_t *id, int32_t pos, int32_t nx,
                      uint64_t *heap, size_t *nh)
{
    const struct tok_merge *m = tok_merge_find(t, id[pos], id[nx]);
    if (m)
        heap_push(heap, nh, (uint64_t)m->rank << 32 | (uint32_t)pos);
}

/* Merge the n >= 1 symbols sc->id[0..n) in place; the survivors are
 * chained by sc->next from 0. */
static void merge_all(const tok *t, struct tok_bpe_scratch *sc, size_t n)
{
    int32_t *id = sc->id, *prev = sc->prev, *next = sc->next;
    uint64_t *heap = sc->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, id, (int32_t)i, (int32_t)i + 1, heap, &nh);
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t rank = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        int32_t nx = next[pos];
        if (id[pos] < 0 || nx < 0)
            continue; /* merged away, or now last */
        const struct tok_merge *m = tok_merge_find(t, id[pos], id[nx]);
        if (!m || m->rank != rank)
            continue; /* a neighbour changed since the push */
        id[pos] = m->id;
        id[nx] = -1;
        next[pos] = next[nx];
        if (next[pos] >= 0)
            prev[next[pos]] = pos;
        if (prev[pos] >= 0)
            push_pair(t, id, prev[pos], pos, heap, &nh);
        if (next[pos] >= 0)
            push_pair(t, id, pos, next[pos], heap, &nh);
    }
}

/* Start symbols of a piece that is not byte-level, into sc->id.
 * @return their count (<= n). */
static size_t char_symbols(const tok *t, const char *w, size_t n,
                           struct tok_bpe_scratch *sc)
{
    size_t k = 0;
    int unk = 0; /* an unk is pending (fuse_unk joins the next one to it) */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int cl = tok_utf8_char(w + i, n - i, &cp);
        size_t len = cl > 0 ? (size_t)cl : 1;
        int32_t id = tok_map_get(&t->vocab, w + i, len);
        int bytes = t->pipe.byte_fallback && id < 0;
        for (size_t b = 0; bytes && b < len; b++)
            bytes = t->byte_id[(unsigned char)w[i + b]] >= 0;
        if (id >= 0) {
            if (unk)
                sc->id[k++] = t->unk_id;
            unk = 0;
            sc->id[k++] = id;
        } else if (bytes) { /* a pending unk stays pending, as there */
            for (size_t b = 0; b < len; b++)
                sc->id[k++] = t->byte_id[(unsigned char)w[i + b]];
        } else if (t->unk_id >= 0) {
            if (unk && !t->pipe.fuse_unk)
                sc->id[k++] = t->unk_id;
            unk = 1;
        }
        i += len;
    }
    if (unk)
        sc->id[k++] = t->unk_id;
    return k;
}

/* ignore_merges: the id of the whole piece in model.vocab, -1 when it is
 * not there, or -ENOMEM. */
static int32_t whole_piece(const tok *t, const char *w, size_t n,
                           struct tok_bpe_scratch *sc)
{
    if (!t->pipe.pre.byte_level)
        return tok_map_get(&t->vocab, w, n);
    if (2 * n > sc->word_cap) {
        char *nw = realloc(sc->word, 2 * n);
        RETURN_IF(!nw, -ENOMEM, "out of memory tokenizing a %zu-byte word", n);
        sc->word = nw;
        sc->word_cap = 2 * n;
    }
    size_t k = 0; /* each byte's symbol, U+0021..U+0143: 1 or 2 bytes */
    for (size_t i = 0; i < n; i++) {
        uint32_t c = tok_byte_cp((unsigned char)w[i]);
        if (c < 0x80) {
            sc->word[k++] = (char)c;
        } else {
            sc->word[k++] = (char)(0xc0 | c >> 6);
            sc->word[k++] = (char)(0x80 | (c & 0x3f));
        }
    }
    return tok_map_get(&t->vocab, sc->word, k);
}

int tok_bpe_piece(const tok *t, const char *w, size_t n,
                  struct tok_bpe_scratch *sc, int32_t *out)
{
    if (t->pipe.ignore_merges) {
        int32_t id = whole_piece(t, w, n, sc);
        if (id == -ENOMEM)
            return id;
        if (id >= 0) {
            out[0] = id;
            return 1;
        }
    }
    if (t->pipe.pre.byte_level && n == 1) {
        out[0] = t->byte_id[(unsigned char)w[0]];
        return 1;
    }
    FORWARD_IF(scratch_reserve(sc, n));
    size_t k = n;
    if (t->pipe.pre.byte_level)
        for (size_t i = 0; i < n; i++)
            sc->id[i] = t->byte_id[(unsigned char)w[i]];
    else
        k = char_symbols(t, w, n, sc);
    if (k == 0)
        return 0;
    merge_all(t, sc, k);
    int m = 0;
    for (int32_t i = 0; i >= 0; i = sc->next[i])
        out[m++] = sc->id[i];
    return m;
}
