/* tok_decode.c: ids -> text through the decoder of tokenizer.json.
 *
 * `tokenizers` decodes a list of token strings with a chain of steps, each
 * taking the list and giving a new one (decode_chain), then concatenates
 * it; so does this file, a list being one buffer and the offsets of its
 * items:
 *
 *   ids --skip specials--> token strings --step 1--> ... --step n--> join
 *
 *   ByteLevel     each token's byte symbols -> bytes (a token with another
 *                 character keeps its own UTF-8), all in one item
 *   Replace       a -> b in each item
 *   ByteFallback  a run of <0xNN> items -> one item of those bytes
 *   Fuse          all items into one
 *   Strip         up to start / stop copies of a char off each item's ends
 *   Metaspace     the replacement -> ' ' in each item, dropped in the first
 *                 one unless prepend_scheme is never
 *   no decoder    items joined by ' '
 *
 * Where `tokenizers` turns bytes that are not valid UTF-8 into U+FFFD
 * (ByteLevel's from_utf8_lossy, a ByteFallback run that is not UTF-8), the
 * bytes are kept: see tok.h.
 */
#include "tok_impl.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* A list of strings: item i is b[off[i]..off[i+1]); bytes put after the
 * last item form the open one, closed by item_end. */
struct items {
    char *b;
    size_t len, cap;
    size_t *off; /* (n + 1) */
    size_t n, ncap;
};

static int put(struct items *it, const char *s, size_t len)
{
    if (it->len + len > it->cap) {
        size_t cap = 2 * (it->len + len) + 64;
        char *b = realloc(it->b, cap);
        RETURN_IF(!b, -ENOMEM, "out of memory for %zu decoded bytes", cap);
        it->b = b;
        it->cap = cap;
    }
    if (len)
        memcpy(it->b + it->len, s, len);
    it->len += len;
    return 0;
}

static int item_end(struct items *it)
{
    if (it->n + 2 > it->ncap) {
        size_t cap = 2 * (it->n + 2) + 16;
        size_t *off = realloc(it->off, cap * sizeof *off);
        RETURN_IF(!off, -ENOMEM, "out of memory for %zu decoded tokens", cap);
        it->off = off;
        it->ncap = cap;
        it->off[0] = 0;
    }
    it->off[++it->n] = it->len;
    return 0;
}

static void items_reset(struct items *it)
{
    it->len = 0;
    it->n = 0;
}

static void items_free(struct items *it)
{
    free(it->b);
    free(it->off);
}

/* items of no bytes at all have no buffer: NULL + 0 is undefined (found by
 * tests/fuzz/fuzz_tok_json.c, a Strip decoder over empty tokens) */
#define ITEM(it, i) ((it)->b ? (const char *)(it)->b + (it)->off[i] : "")
#define ITEM_LEN(it, i) ((it)->off[(i) + 1] - (it)->off[i])

/* ------------------------------------------------------------- steps */

/* The bytes of one byte-level token: each character through the inverse
 * of bytes_to_unicode or, as `tokenizers` does, the token's own UTF-8 when
 * a character is not a byte symbol. */
static int byte_level_token(const tok *t, const char *s, size_t len,
                            struct items *out)
{
    size_t start = out->len, i = 0;
    while (i < len) {
        uint32_t c;
        int w = tok_utf8_char(s + i, len - i, &c);
        if (w < 0 || c >= TOK_CP_BYTE_MAX || t->cp_byte[c] < 0)
            break;
        char b = (char)t->cp_byte[c];
        FORWARD_IF(put(out, &b, 1));
        i += (size_t)w;
    }
    if (i == len)
        return 0;
    out->len = start;
    return put(out, s, len);
}

static int step_byte_level(const tok *t, const struct items *in,
                           struct items *out)
{
    for (size_t i = 0; i < in->n; i++)
        FORWARD_IF(byte_level_token(t, ITEM(in, i), ITEM_LEN(in, i), out));
    return item_end(out);
}

/* Each item with A replaced by B; with FIRST_B, item 0 gets FIRST_B
 * instead (Metaspace drops the replacement there). */
static int step_replace(const struct items *in, const struct tok_str *a,
                        const struct tok_str *b, const struct tok_str *first_b,
                        struct items *out)
{
    for (size_t k = 0; k < in->n; k++) {
        const char *s = ITEM(in, k);
        size_t len = ITEM_LEN(in, k);
        const struct tok_str *to = k == 0 && first_b ? first_b : b;
        for (size_t i = 0; i < len;)
            if (i + a->len <= len && memcmp(s + i, a->s, a->len) == 0) {
                FORWARD_IF(put(out, to->s, to->len));
                i += a->len;
            } else {
                FORWARD_IF(put(out, s + i++, 1));
            }
        FORWARD_IF(item_end(out));
    }
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
        return (c | 0x20) - 'a' + 10;
    return -1;
}

/* The byte of a "<0xNN>" token, or -1. */
static int fallback_byte(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static int step_byte_fallback(const struct items *in, struct items *out)
{
    int run = 0; /* an item of fallback bytes is open */
    for (size_t i = 0; i < in->n; i++) {
        int b = fallback_byte(ITEM(in, i), ITEM_LEN(in, i));
        if (b >= 0) {
            char c = (char)b;
            FORWARD_IF(put(out, &c, 1));
            run = 1;
            continue;
        }
        if (run)
            FORWARD_IF(item_end(out));
        run = 0;
        FORWARD_IF(put(out, ITEM(in, i), ITEM_LEN(in, i)));
        FORWARD_IF(item_end(out));
    }
    return run ? item_end(out) : 0;
}

static int step_fuse(const struct items *in, struct items *out)
{
    FORWARD_IF(put(out, in->b, in->len));
    return item_end(out);
}

/* Strip: up to d->start leading and d->stop trailing copies of d->a. */
static int step_strip(const struct items *in, const struct tok_dec *d,
                      struct items *out)
{
    size_t c = d->a.len;
    for (size_t k = 0; k < in->n; k++) {
        const char *s = ITEM(in, k);
        size_t a = 0, b = ITEM_LEN(in, k);
        for (int i = 0; i < d->start && a + c <= b && !memcmp(s + a, d->a.s, c); i++)
            a += c;
        for (int i = 0; i < d->stop && b >= a + c && !memcmp(s + b - c, d->a.s, c); i++)
            b -= c;
        FORWARD_IF(put(out, s + a, b - a));
        FORWARD_IF(item_end(out));
    }
    return 0;
}

static int run_step(const tok *t, const struct tok_dec *d,
                    const struct items *in, struct items *out)
{
    static const struct tok_str space = {" ", 1}, none = {"", 0};
    switch (d->kind) {
    case TOK_DEC_BYTE_LEVEL:
        return step_byte_level(t, in, out);
    case TOK_DEC_REPLACE:
        return step_replace(in, &d->a, &d->b, NULL, out);
    case TOK_DEC_BYTE_FALLBACK:
        return step_byte_fallback(in, out);
    case TOK_DEC_FUSE:
        return step_fuse(in, out);
    case TOK_DEC_STRIP:
        return step_strip(in, d, out);
    case TOK_DEC_METASPACE:
        return step_replace(in, &d->a, &space,
                            d->prepend == TOK_PREPEND_NEVER ? NULL : &none, out);
    }
    return -EINVAL;
}

/* ---------------------------------------------------------- decode */

static int decodes(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->kind[id] != TOK_KIND_HOLE &&
           t->kind[id] != TOK_KIND_SPECIAL;
}

/* No decoder: tokens.join(" "). */
static int step_join(const struct items *in, struct items *out)
{
    for (size_t i = 0; i < in->n; i++) {
        if (i)
            FORWARD_IF(put(out, " ", 1));
        FORWARD_IF(put(out, ITEM(in, i), ITEM_LEN(in, i)));
    }
    return item_end(out);
}

/* The token strings of IDS, specials skipped, as items of it[0]; then
 * every decoder step, the list going back and forth between it[0] and
 * it[1]. @return the index of the list that holds the result, or -errno. */
static int run_decoder(const tok *t, const int32_t *ids, size_t n,
                       struct items it[2])
{
    for (size_t i = 0; i < n; i++) {
        if (!decodes(t, ids[i]))
            continue;
        uint32_t a = t->str_off[ids[i]], b = t->str_off[ids[i] + 1];
        FORWARD_IF(put(&it[0], t->str + a, b - a));
        FORWARD_IF(item_end(&it[0]));
    }
    if (t->pipe.no_decoder) {
        FORWARD_IF(step_join(&it[0], &it[1]));
        return 1;
    }
    int cur = 0;
    for (int k = 0; k < t->pipe.n_dec; k++) {
        items_reset(&it[!cur]);
        FORWARD_IF(run_step(t, &t->pipe.dec[k], &it[cur], &it[!cur]));
        cur = !cur;
    }
    return cur;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out)
{
    *out = NULL;
    struct items it[2] = {{0}, {0}};
    int cur = run_decoder(t, ids, n, it);
    size_t len = cur >= 0 ? it[cur].len : 0;
    char *s = cur >= 0 && len <= INT_MAX ? malloc(len + 1) : NULL;
    if (s) {
        if (len)
            memcpy(s, it[cur].b, len);
        s[len] = 0;
    }
    items_free(&it[0]);
    items_free(&it[1]);
    FORWARD_IF(cur);
    RETURN_IF(len > INT_MAX, -EOVERFLOW,
              "decoded text of %zu bytes is too long; decode fewer ids at "
              "once",
              len);
    RETURN_IF(!s, -ENOMEM, "out of memory for %zu decoded bytes", len);
    *out = s;
    return (int)len;
}
