/* tok_encode.c: text -> ids, in `tokenizers`' order of steps.
 *
 *   text --split_added(raw)--> gap_raw: segment between added tokens
 *     --tok_normalize--> --split_added(norm)--> encode_pretok:
 *     --prefix / metaspace transform--> --regex or metaspace split-->
 *     pieces --tok_bpe_piece--> ids
 *
 * split_added is `tokenizers`' AddedVocabulary::find_matches: at each
 * position the longest added token that starts there (leftmost-longest,
 * as its Aho-Corasick automaton); single_word drops a match that touches a
 * word character on either side; lstrip/rstrip widen the match over the
 * whitespace beside it (never back past the previous match); the search
 * goes on from the end of the token itself. The text between matches is
 * a gap, handed on only when not empty.
 *
 * A gap knows whether it starts the text (at_start): Metaspace's
 * prepend_scheme "first" puts the replacement before that one only.
 *
 * NFC is libutf8proc's (Unicode 15.0 in Debian 12), `tokenizers`' that of
 * its older unicode-normalization crate. Every code point on its own
 * normalizes alike in both; they differ where marks added since Unicode
 * 11 (U+1133B, U+11070) are put in canonical order.
 */
#include "tok_impl.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "err.h"

/* One tok_encode call: the ids so far and every scratch buffer. */
struct enc {
    const tok *t;
    int32_t *ids;
    size_t n, cap;
    struct tok_bpe_scratch bpe;
    char *norm; /* a segment after the normalizer */
    size_t norm_cap;
    char *pre;  /* a segment after the pre-tokenizer's transform */
    size_t pre_cap;
};

static int reserve(struct enc *e, size_t more)
{
    if (e->n + more <= e->cap)
        return 0;
    size_t cap = 2 * (e->n + more) + 16;
    int32_t *ids = realloc(e->ids, cap * sizeof *ids);
    RETURN_IF(!ids, -ENOMEM, "out of memory for %zu ids", cap);
    e->ids = ids;
    e->cap = cap;
    return 0;
}

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    char *nb = realloc(*buf, need);
    RETURN_IF(!nb, -ENOMEM, "out of memory for %zu bytes of text", need);
    *buf = nb;
    *cap = need;
    return 0;
}

/* --------------------------------------------------------- normalizer */

/* S with every A replaced by B (A non-empty), malloc'd; *out_len set. */
static char *replace_all(const char *s, size_t len, const struct tok_str *a,
                         const struct tok_str *b, size_t *out_len)
{
    size_t k = 0;
    for (size_t i = 0; i + a->len <= len;)
        if (memcmp(s + i, a->s, a->len) == 0) {
            k++;
            i += a->len;
        } else {
            i++;
        }
    size_t n = len + k * b->len - k * a->len, o = 0;
    char *out = malloc(n ? n : 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;)
        if (i + a->len <= len && memcmp(s + i, a->s, a->len) == 0) {
            memcpy(out + o, b->s, b->len);
            o += b->len;
            i += a->len;
        } else {
            out[o++] = s[i++];
        }
    *out_len = n;
    return out;
}

/* One normalizer step on S[0..len): a malloc'd result, or NULL. */
static char *norm_step(const struct tok_norm *st, const char *s, size_t len,
                       size_t *out_len)
{
    if (st->kind == TOK_NORM_REPLACE)
        return replace_all(s, len, &st->a, &st->b, out_len);
    if (st->kind == TOK_NORM_PREPEND) {
        size_t p = len ? st->a.len : 0; /* an empty text stays empty */
        char *out = malloc(p + len + 1);
        if (out) {
            memcpy(out, st->a.s, p);
            memcpy(out + p, s, len);
            *out_len = p + len;
        }
        return out;
    }
    utf8proc_uint8_t *out = NULL; /* NFC */
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s,
                                      (utf8proc_ssize_t)len, &out,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (n < 0)
        return NULL;
    *out_len = (size_t)n;
    return (char *)out;
}

int tok_normalize(const tok *t, const char *s, size_t len, char **buf,
                  size_t *cap, const char **out)
{
    *out = s;
    if (t->pipe.n_norm == 0)
        return (int)len;
    char *cur = NULL;
    size_t cur_len = len;
    for (int i = 0; i < t->pipe.n_norm; i++) {
        size_t n = 0;
        char *next = norm_step(&t->pipe.norm[i], cur ? cur : s, cur_len, &n);
        free(cur);
        RETURN_IF(!next || n > INT_MAX, -ENOMEM,
                  "out of memory normalizing %zu bytes of text", len);
        cur = next;
        cur_len = n;
    }
    int rc = grow(buf, cap, cur_len + 1);
    if (rc == 0)
        memcpy(*buf, cur, cur_len);
    free(cur);
    FORWARD_IF(rc);
    *out = *buf;
    return (int)cur_len;
}

/* ------------------------------------------------------ added tokens */

/* The longest token of SET that S[0..len) starts with, or NULL. */
static const struct tok_added *added_at(const struct tok_added_set *set,
                                        const char *s, size_t len)
{
    const struct tok_added *best = NULL;
    for (int i = 0; i < set->n; i++) {
        const struct tok_added *a = &set->tok[i];
        if (a->len <= len && (!best || a->len > best->len) &&
            memcmp(s, set->text + a->off, a->len) == 0)
            best = a;
    }
    return best;
}

/* The code point that ends at byte END of S (END > 0). */
static uint32_t char_before(const char *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80)
        i--;
    uint32_t c = 0xfffd;
    tok_utf8_char(s + i, end - i, &c);
    *start = i;
    return c;
}

/* lstrip: where the whitespace run that ends at START begins. */
static size_t space_start(const char *s, size_t start)
{
    size_t i;
    while (start > 0 && tok_is_space(char_before(s, start, &i)))
        start = i;
    return start;
}

/* rstrip: where the whitespace run that starts at STOP ends. */
static size_t space_end(const char *s, size_t len, size_t stop)
{
    uint32_t c;
    int n;
    while (stop < len && (n = tok_utf8_char(s + stop, len - stop, &c)) > 0 &&
           tok_is_space(c))
        stop += (size_t)n;
    return stop;
}

/* single_word: no word character touches S[start..stop). */
static int single_word_ok(const char *s, size_t len, size_t start, size_t stop)
{
    size_t i;
    uint32_t c;
    if (start > 0 && tok_is_word(char_before(s, start, &i)))
        return 0;
    return stop == len || tok_utf8_char(s + stop, len - stop, &c) <= 0 ||
           !tok_is_word(c);
}

typedef int (*gap_fn)(struct enc *e, const char *s, size_t len, int at_start);

static int split_added(struct enc *e, const struct tok_added_set *set,
                       const char *s, size_t len, int at_start, gap_fn gap)
{
    size_t prev = 0; /* end of the last match: the next gap starts there */
    for (size_t i = 0; i < len;) {
        const struct tok_added *a =
            set->first[(unsigned char)s[i]] ? added_at(set, s + i, len - i)
                                            : NULL;
        if (!a) {
            i++;
            continue;
        }
        size_t start = i, stop = i + a->len;
        i = stop;
        if ((a->flags & TOK_ADDED_SINGLE_WORD) &&
            !single_word_ok(s, len, start, stop))
            continue;
        if (a->flags & TOK_ADDED_LSTRIP) {
            size_t ws = space_start(s, start);
            start = ws > prev ? ws : prev;
        }
        if (a->flags & TOK_ADDED_RSTRIP)
            stop = space_end(s, len, stop);
        if (start > prev)
            FORWARD_IF(gap(e, s + prev, start - prev, at_start && prev == 0));
        FORWARD_IF(reserve(e, 1));
        e->ids[e->n++] = a->id;
        prev = stop;
    }
    if (prev < len)
        FORWARD_IF(gap(e, s + prev, len - prev, at_start && prev == 0));
    return 0;
}

/* ------------------------------------------------------ pre-tokenizer */

/* BPE of S[0..len) as one piece. */
static int encode_piece(struct enc *e, const char *s, size_t len)
{
    FORWARD_IF(reserve(e, len));
    int k = tok_bpe_piece(e->t, s, len, &e->bpe, e->ids + e->n);
    FORWARD_IF(k);
    e->n += (size_t)k;
    return 0;
}

/* Split S[0..len) into pieces (the regex, or before each Metaspace
 * replacement) and BPE each. */
static int encode_pieces(struct enc *e, const char *s, size_t len)
{
    const struct tok_pretok *pre = &e->t->pipe.pre;
    if (pre->regex >= 0) {
        for (size_t pos = 0; pos < len;) {
            size_t end = tok_split_next((enum tok_split)pre->regex, s, len, pos);
            FORWARD_IF(encode_piece(e, s + pos, end - pos));
            pos = end;
        }
        return 0;
    }
    if (!(pre->metaspace && pre->msplit))
        return encode_piece(e, s, len);
    size_t r = pre->repl.len, from = 0; /* MergedWithNext on repl */
    for (size_t i = 1; i + r <= len; i++)
        if (memcmp(s + i, pre->repl.s, r) == 0) {
            FORWARD_IF(encode_piece(e, s + from, i - from));
            from = i;
        }
    return encode_piece(e, s + from, len - from);
}

/* Metaspace: ' ' -> repl, then repl in front by prepend_scheme. */
static int metaspace(struct enc *e, const char *s, size_t len, int at_start,
                     size_t *out_len)
{
    const struct tok_pretok *pre = &e->t->pipe.pre;
    size_t r = pre->repl.len, spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += s[i] == ' ';
    FORWARD_IF(grow(&e->pre, &e->pre_cap, len + (spaces + 1) * r));
    int first_is_space = s[0] == ' ' ||
                         (len >= r && memcmp(s, pre->repl.s, r) == 0);
    int prepend = !first_is_space &&
                  (pre->prepend == TOK_PREPEND_ALWAYS ||
                   (pre->prepend == TOK_PREPEND_FIRST && at_start));
    size_t o = 0;
    if (prepend) {
        memcpy(e->pre, pre->repl.s, r);
        o = r;
    }
    for (size_t i = 0; i < len; i++)
        if (s[i] == ' ') {
            memcpy(e->pre + o, pre->repl.s, r);
            o += r;
        } else {
            e->pre[o++] = s[i];
        }
    *out_len = o;
    return 0;
}

/* The pre-tokenizer and BPE of one segment (a gap of the normalized
 * text). */
static int encode_pretok(struct enc *e, const char *s, size_t len, int at_start)
{
    const struct tok_pretok *pre = &e->t->pipe.pre;
    if (len == 0)
        return 0;
    if (pre->metaspace) {
        size_t n;
        FORWARD_IF(metaspace(e, s, len, at_start, &n));
        return encode_pieces(e, e->pre, n);
    }
    if (pre->prefix_space && s[0] != ' ') {
        FORWARD_IF(grow(&e->pre, &e->pre_cap, len + 1));
        e->pre[0] = ' ';
        memcpy(e->pre + 1, s, len);
        return encode_pieces(e, e->pre, len + 1);
    }
    return encode_pieces(e, s, len);
}

/* A gap of the input: normalize it, then split out the normalized added
 * tokens. */
static int gap_raw(struct enc *e, const char *s, size_t len, int at_start)
{
    const char *n;
    int nlen = tok_normalize(e->t, s, len, &e->norm, &e->norm_cap, &n);
    FORWARD_IF(nlen);
    return split_added(e, &e->t->norm, n, (size_t)nlen, at_start,
                       encode_pretok);
}

int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids)
{
    *ids = NULL;
    RETURN_IF(len > INT_MAX, -EOVERFLOW,
              "text of %zu bytes is too long to tokenize at once (at most "
              "%d); split it",
              len, INT_MAX);
    size_t bad;
    RETURN_IF(tok_utf8_check(text, len, &bad) < 0, -EILSEQ,
              "text is not valid UTF-8 at byte %zu (0x%02x); convert it to "
              "UTF-8 first",
              bad, (unsigned char)text[bad]);
    struct enc e = {.t = t};
    int rc = reserve(&e, len / 2 + 1);
    if (rc == 0)
        rc = split_added(&e, &t->raw, text, len, 1, gap_raw);
    tok_bpe_scratch_free(&e.bpe);
    free(e.norm);
    free(e.pre);
    if (rc == 0 && e.n > INT_MAX) {
        err_set(__FILE__, __LINE__, "text of %zu bytes gives too many ids", len);
        rc = -EOVERFLOW;
    }
    if (rc < 0) {
        free(e.ids);
        return rc;
    }
    int32_t *shrunk = realloc(e.ids, (e.n ? e.n : 1) * sizeof *e.ids);
    *ids = shrunk ? shrunk : e.ids;
    return (int)e.n;
}
