/* tok.c: loading the vocabulary and merges, BPE, encode and decode.
 *
 * Load (once):
 *
 *   vocab.json / tokenizer.json --cJSON--> (token, id) list  --+
 *   merges.txt / tokenizer.json ---------> (left, right) list -+-> tok_build
 *
 *   tok_build resolves every token through a temporary string hash and
 *   keeps only what encoding and decoding need:
 *     byte_id[256]            id of each of the 256 byte symbols
 *     merge table             (left id, right id) -> (rank, merged id)
 *     dec / dec_off           the bytes each id decodes to
 *     kind, special           which ids are special tokens
 *
 * Encode (per call, see tok.h for the pipeline): BPE works on ids, never on
 * strings. A piece starts as one byte symbol per byte; a min-heap keyed on
 * (rank, position) picks the next merge, exactly the order of `tokenizers`'
 * Word::merge_all, which is also GPT-2's "lowest rank first, leftmost
 * first". Entries made stale by an earlier merge are dropped when popped.
 * Cost is O(n log n) in the piece length n, so a 1 MB word is fine.
 */
#include "tok.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "off.h"

/* Largest id accepted: bounds the per-id arrays a corrupt file can ask for
 * (largest real vocabularies are ~256k). */
#define TOK_MAX_ID (1 << 24)

enum {
    TOK_KIND_HOLE,    /* no token has this id */
    TOK_KIND_BPE,     /* a byte symbol or the result of a merge */
    TOK_KIND_OTHER,   /* unreachable by BPE, not markup: decoded as text */
    TOK_KIND_SPECIAL, /* unreachable "<...>": matched in text, not decoded */
};

#define MERGE_EMPTY UINT64_MAX

struct tok_merge {
    uint64_t key; /* (uint64)left << 32 | right, MERGE_EMPTY when free */
    int32_t rank; /* line of the merge: lower merges first */
    int32_t id;   /* id of left + right */
};

struct tok_special {
    size_t off, len; /* text at special_text + off */
    int32_t id;
};

struct tok {
    int32_t n_vocab;          /* max id + 1 */
    int32_t byte_id[256];     /* id of the byte symbol of each byte */
    struct tok_merge *merge;  /* (merge_mask + 1), open addressing */
    uint64_t merge_mask;
    int merge_shift;          /* 64 - log2(merge_mask + 1) */
    uint8_t *kind;            /* (n_vocab) TOK_KIND_* */
    uint32_t *dec_off;        /* (n_vocab + 1): id i is dec[off[i]..off[i+1]) */
    char *dec;
    struct tok_special *special; /* (n_special) */
    int n_special;
    char *special_text;
    uint8_t special_first[256]; /* 1 where some special starts with that byte */
};

/* ------------------------------------------------------- byte symbols */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes map, in byte order, to U+0100 onwards. */
static uint32_t byte_to_cp(unsigned b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
        return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || x >= 0xae))
            n++;
    return 256 + n;
}

/* The inverse, for code points below 324 (the largest is U+0143). */
#define CP_BYTE_MAX 324

static void cp_to_byte_table(int16_t inv[CP_BYTE_MAX])
{
    for (int i = 0; i < CP_BYTE_MAX; i++)
        inv[i] = -1;
    for (unsigned b = 0; b < 256; b++)
        inv[byte_to_cp(b)] = (int16_t)b;
}

static size_t cp_to_utf8(uint32_t c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xc0 | c >> 6); /* only < U+0800 is needed here */
    out[1] = (char)(0x80 | (c & 0x3f));
    return 2;
}

/* --------------------------------------------------- load-time inputs */

struct vocab_entry {
    const char *s;
    size_t len;
    int32_t id;
};

struct merge_entry {
    const char *a, *b;
    size_t alen, blen;
    int where; /* line of merges.txt, or index in model.merges */
};

struct tok_src {
    const char *vocab_name;  /* for messages: a path or "vocab.json" */
    const char *merges_name;
    int merges_are_lines;    /* where is a line number (merges.txt) */
    struct vocab_entry *v;
    size_t nv;
    struct merge_entry *m;
    size_t nm;
};

static void merge_where(const struct tok_src *src, const struct merge_entry *m,
                        char *buf, size_t n)
{
    if (src->merges_are_lines)
        snprintf(buf, n, "%s line %d", src->merges_name, m->where);
    else
        snprintf(buf, n, "%s: model.merges[%d]", src->merges_name, m->where);
}

/* ------------------------------------------- string -> id (load only) */

struct str_slot {
    const char *s; /* NULL when free */
    size_t len;
    int32_t id;
};

struct str_map {
    struct str_slot *slot;
    size_t mask;
};

static uint64_t str_hash(const char *s, size_t len)
{
    return XXH3_64bits(s, len);
}

static int str_map_init(struct str_map *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    RETURN_IF(!m->slot, -ENOMEM, "out of memory for a %zu-entry vocabulary", n);
    return 0;
}

static struct str_slot *str_map_slot(const struct str_map *m, const char *s,
                                     size_t len)
{
    size_t i = (size_t)str_hash(s, len) & m->mask;
    while (m->slot[i].s &&
           (m->slot[i].len != len || memcmp(m->slot[i].s, s, len) != 0))
        i = (i + 1) & m->mask;
    return &m->slot[i];
}

static int32_t str_map_get(const struct str_map *m, const char *s, size_t len)
{
    const struct str_slot *sl = str_map_slot(m, s, len);
    return sl->s ? sl->id : -1;
}

/* ------------------------------------------------------ merge table */

static inline uint64_t merge_key(int32_t left, int32_t right)
{
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

static inline const struct tok_merge *merge_find(const tok *t, int32_t left,
                                                 int32_t right)
{
    uint64_t key = merge_key(left, right);
    uint64_t i = (key * 0x9e3779b97f4a7c15ull) >> t->merge_shift;
    for (;;) {
        const struct tok_merge *e = &t->merge[i];
        if (e->key == key)
            return e;
        if (e->key == MERGE_EMPTY)
            return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

static int merge_table_init(tok *t, size_t n)
{
    uint64_t cap = 16;
    int bits = 4;
    while (cap < 2 * (uint64_t)n) {
        cap *= 2;
        bits++;
    }
    t->merge = malloc(cap * sizeof *t->merge);
    RETURN_IF(!t->merge, -ENOMEM, "out of memory for %zu merges", n);
    for (uint64_t i = 0; i < cap; i++)
        t->merge[i].key = MERGE_EMPTY;
    t->merge_mask = cap - 1;
    t->merge_shift = 64 - bits;
    return 0;
}

/* A later duplicate of a merge replaces the earlier one, as in the hash map
 * `tokenizers` builds. */
static void merge_put(tok *t, int32_t left, int32_t right, int32_t rank,
                      int32_t id)
{
    uint64_t key = merge_key(left, right);
    uint64_t i = (key * 0x9e3779b97f4a7c15ull) >> t->merge_shift;
    while (t->merge[i].key != MERGE_EMPTY && t->merge[i].key != key)
        i = (i + 1) & t->merge_mask;
    t->merge[i] = (struct tok_merge){.key = key, .rank = rank, .id = id};
}

/* ------------------------------------------------------------- build */

static int is_markup(const char *s, size_t len)
{
    return len >= 3 && s[0] == '<' && s[len - 1] == '>';
}

/* Bytes that token S decodes to, written to OUT (may be NULL to count):
 * each character through the byte-symbol inverse, or, as `tokenizers`'
 * ByteLevel decoder does, the token's own UTF-8 when one character is not
 * a byte symbol. */
static size_t token_bytes(const char *s, size_t len, const int16_t *inv,
                          char *out)
{
    size_t n = 0, i = 0;
    while (i < len) {
        uint32_t c;
        int w = tok_utf8_char(s + i, len - i, &c);
        if (w < 0 || c >= CP_BYTE_MAX || inv[c] < 0)
            break;
        if (out)
            out[n] = (char)inv[c];
        n++;
        i += (size_t)w;
    }
    if (i == len)
        return n;
    if (out)
        memcpy(out, s, len);
    return len;
}

static int build_vocab(tok *t, const struct tok_src *src, struct str_map *map)
{
    int32_t max_id = -1;
    RETURN_IF(src->nv == 0, -EINVAL,
              "%s: the vocabulary is empty; re-download the tokenizer files",
              src->vocab_name);
    for (size_t i = 0; i < src->nv; i++)
        if (src->v[i].id > max_id)
            max_id = src->v[i].id;
    t->n_vocab = max_id + 1;

    t->kind = calloc((size_t)t->n_vocab, 1);
    RETURN_IF(!t->kind, -ENOMEM, "out of memory for %d ids", t->n_vocab);
    FORWARD_IF(str_map_init(map, src->nv));
    for (size_t i = 0; i < src->nv; i++) {
        const struct vocab_entry *e = &src->v[i];
        RETURN_IF(t->kind[e->id] != TOK_KIND_HOLE, -EINVAL,
                  "%s: id %d is given to two tokens (one is \"%.*s\"); "
                  "re-download the tokenizer files",
                  src->vocab_name, (int)e->id, (int)e->len, e->s);
        t->kind[e->id] = TOK_KIND_OTHER;
        struct str_slot *sl = str_map_slot(map, e->s, e->len);
        *sl = (struct str_slot){.s = e->s, .len = e->len, .id = e->id};
    }

    for (unsigned b = 0; b < 256; b++) {
        char u[2];
        size_t n = cp_to_utf8(byte_to_cp(b), u);
        int32_t id = str_map_get(map, u, n);
        RETURN_IF(id < 0, -EINVAL,
                  "%s: no token for byte 0x%02x (\"%.*s\"): not a GPT-2 "
                  "byte-level BPE vocabulary; use the model's own tokenizer "
                  "files",
                  src->vocab_name, b, (int)n, u);
        t->byte_id[b] = id;
        t->kind[id] = TOK_KIND_BPE;
    }
    return 0;
}

static int build_merges(tok *t, const struct tok_src *src,
                        const struct str_map *map)
{
    RETURN_IF(src->nm > INT32_MAX, -EINVAL, "%s: too many merges (%zu)",
              src->merges_name, src->nm);
    FORWARD_IF(merge_table_init(t, src->nm));
    size_t cat_cap = 0;
    char *cat = NULL;
    int rc = 0;
    for (size_t i = 0; i < src->nm && rc == 0; i++) {
        const struct merge_entry *m = &src->m[i];
        if (m->alen + m->blen > cat_cap) {
            cat_cap = 2 * (m->alen + m->blen);
            char *nc = realloc(cat, cat_cap);
            if (!nc) {
                err_set(__FILE__, __LINE__, "out of memory loading merges");
                rc = -ENOMEM;
                break;
            }
            cat = nc;
        }
        memcpy(cat, m->a, m->alen);
        memcpy(cat + m->alen, m->b, m->blen);
        int32_t a = str_map_get(map, m->a, m->alen);
        int32_t b = str_map_get(map, m->b, m->blen);
        int32_t ab = str_map_get(map, cat, m->alen + m->blen);
        if (a < 0 || b < 0 || ab < 0) {
            char where[512];
            merge_where(src, m, where, sizeof where);
            const char *s = a < 0 ? m->a : b < 0 ? m->b : cat;
            size_t len = a < 0 ? m->alen : b < 0 ? m->blen : m->alen + m->blen;
            err_set(__FILE__, __LINE__,
                    "%s: token \"%.*s\" is not in %s; the merges and the "
                    "vocabulary are from different tokenizers, re-download "
                    "both",
                    where, (int)len, s, src->vocab_name);
            rc = -EINVAL;
            break;
        }
        merge_put(t, a, b, (int32_t)i, ab);
        t->kind[ab] = TOK_KIND_BPE;
    }
    free(cat);
    return rc;
}

/* Decode table for every id, and the special tokens. */
static int build_tables(tok *t, const struct tok_src *src)
{
    int16_t inv[CP_BYTE_MAX];
    cp_to_byte_table(inv);

    const struct vocab_entry **by_id = calloc((size_t)t->n_vocab,
                                              sizeof *by_id);
    RETURN_IF(!by_id, -ENOMEM, "out of memory for %d ids", t->n_vocab);
    size_t dec_len = 0, special_len = 0;
    for (size_t i = 0; i < src->nv; i++) {
        const struct vocab_entry *e = &src->v[i];
        by_id[e->id] = e;
        dec_len += token_bytes(e->s, e->len, inv, NULL);
        if (t->kind[e->id] == TOK_KIND_OTHER && is_markup(e->s, e->len)) {
            t->kind[e->id] = TOK_KIND_SPECIAL;
            t->n_special++;
            special_len += e->len;
        }
    }
    int rc = 0;
    t->dec_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->dec_off);
    t->dec = malloc(dec_len ? dec_len : 1);
    t->special = malloc((t->n_special ? (size_t)t->n_special : 1) *
                        sizeof *t->special);
    t->special_text = malloc(special_len ? special_len : 1);
    if (!t->dec_off || !t->dec || !t->special || !t->special_text ||
        dec_len > UINT32_MAX) {
        err_set(__FILE__, __LINE__, "out of memory for the decode table");
        rc = -ENOMEM;
        goto out;
    }
    size_t off = 0, soff = 0;
    int ns = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->dec_off[id] = (uint32_t)off;
        const struct vocab_entry *e = by_id[id];
        if (!e)
            continue;
        off += token_bytes(e->s, e->len, inv, t->dec + off);
        if (t->kind[id] == TOK_KIND_SPECIAL) {
            memcpy(t->special_text + soff, e->s, e->len);
            t->special[ns++] = (struct tok_special){
                .off = soff, .len = e->len, .id = id};
            t->special_first[(unsigned char)e->s[0]] = 1;
            soff += e->len;
        }
    }
    t->dec_off[t->n_vocab] = (uint32_t)off;
out:
    free(by_id);
    return rc;
}

static int tok_build(const struct tok_src *src, tok **out)
{
    tok *t = calloc(1, sizeof *t);
    RETURN_IF(!t, -ENOMEM, "out of memory for the tokenizer");
    struct str_map map = {0};
    int rc = build_vocab(t, src, &map);
    if (rc == 0)
        rc = build_merges(t, src, &map);
    if (rc == 0)
        rc = build_tables(t, src);
    free(map.slot);
    if (rc < 0) {
        tok_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_destroy(tok *t)
{
    if (!t)
        return;
    free(t->merge);
    free(t->kind);
    free(t->dec_off);
    free(t->dec);
    free(t->special);
    free(t->special_text);
    free(t);
}

int tok_vocab_size(const tok *t) { return t->n_vocab; }

/* ------------------------------------------------------------ parsing */

static cJSON *parse_json(const char *text, size_t len, const char *name)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        err_set(__FILE__, __LINE__,
                "%s: not valid JSON at byte %zu; re-download the tokenizer "
                "files",
                name, at);
    }
    return root;
}

/* Collect OBJ's "token": id members into src->v (pointers into OBJ). */
static int vocab_from_json(const cJSON *obj, const char *name,
                           struct tok_src *src)
{
    RETURN_IF(!cJSON_IsObject(obj), -EINVAL,
              "%s: the vocabulary is not a JSON object of \"token\": id; "
              "re-download the tokenizer files",
              name);
    size_t n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    src->v = malloc((n ? n : 1) * sizeof *src->v);
    RETURN_IF(!src->v, -ENOMEM, "out of memory for %zu tokens", n);
    for (const cJSON *c = obj->child; c; c = c->next) {
        double d = cJSON_IsNumber(c) ? c->valuedouble : -1;
        RETURN_IF(!(d >= 0 && d < TOK_MAX_ID && d == (double)(int32_t)d),
                  -EINVAL,
                  "%s: token \"%s\" has no valid id (ids are integers "
                  "0..%d); re-download the tokenizer files",
                  name, c->string, TOK_MAX_ID - 1);
        src->v[src->nv++] = (struct vocab_entry){
            .s = c->string, .len = strlen(c->string), .id = (int32_t)d};
    }
    return 0;
}

/* Split "a b" (exactly one space, both sides non-empty) into E. */
static int split_merge(const char *s, size_t len, struct merge_entry *e)
{
    const char *sp = memchr(s, ' ', len);
    if (!sp || sp == s || sp == s + len - 1 ||
        memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
        return -EINVAL;
    e->a = s;
    e->alen = (size_t)(sp - s);
    e->b = sp + 1;
    e->blen = len - e->alen - 1;
    return 0;
}

/* merges.txt: one "a b" per line; "#version" lines and empty lines are
 * skipped, as are '\r' line ends. Entries point into TEXT. */
static int merges_from_txt(const char *text, size_t len, const char *name,
                           struct tok_src *src)
{
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    src->m = malloc(lines * sizeof *src->m);
    RETURN_IF(!src->m, -ENOMEM, "out of memory for %zu merges", lines);
    src->merges_are_lines = 1;
    int line = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t n = end - i;
        line++;
        if (n && text[i + n - 1] == '\r')
            n--;
        if (n && !(n >= 8 && memcmp(text + i, "#version", 8) == 0)) {
            struct merge_entry *e = &src->m[src->nm];
            RETURN_IF(split_merge(text + i, n, e) < 0, -EINVAL,
                      "%s line %d: expected two tokens separated by one "
                      "space, got \"%.*s\"; re-download merges.txt",
                      name, line, (int)(n < 60 ? n : 60), text + i);
            e->where = line;
            src->nm++;
        }
        i = end + 1;
    }
    return 0;
}

/* model.merges of tokenizer.json: "a b" strings or ["a", "b"] lists. */
static int merges_from_json(const cJSON *arr, const char *name,
                            struct tok_src *src)
{
    RETURN_IF(!cJSON_IsArray(arr), -EINVAL,
              "%s: model.merges is missing or not an array; re-download "
              "tokenizer.json",
              name);
    int n = cJSON_GetArraySize(arr);
    src->m = malloc((n > 0 ? (size_t)n : 1) * sizeof *src->m);
    RETURN_IF(!src->m, -ENOMEM, "out of memory for %d merges", n);
    int i = 0;
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        struct merge_entry *e = &src->m[src->nm];
        int ok;
        if (cJSON_IsString(c)) {
            ok = split_merge(c->valuestring, strlen(c->valuestring), e) == 0;
        } else {
            const cJSON *a = cJSON_IsArray(c) ? c->child : NULL;
            const cJSON *b = a ? a->next : NULL;
            ok = cJSON_IsString(a) && cJSON_IsString(b) && !b->next;
            if (ok)
                *e = (struct merge_entry){
                    .a = a->valuestring, .alen = strlen(a->valuestring),
                    .b = b->valuestring, .blen = strlen(b->valuestring)};
        }
        RETURN_IF(!ok, -EINVAL,
                  "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]; "
                  "re-download tokenizer.json",
                  name, i);
        e->where = i;
        src->nm++;
    }
    return 0;
}

/* Refuse tokenizer.json files whose pipeline this code does not run, rather
 * than tokenize differently from `tokenizers`. */
static int check_tokenizer_json(const cJSON *root, const char *name)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    RETURN_IF(!cJSON_IsObject(model), -EINVAL,
              "%s: no \"model\" object; re-download tokenizer.json", name);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    RETURN_IF(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") != 0,
              -ENOTSUP,
              "%s: model.type is \"%s\"; flexh2o reads only GPT-2 "
              "byte-level BPE tokenizers (OPT, GPT-2)",
              name, type->valuestring);
    static const char *const empty_ok[] = {"continuing_subword_prefix",
                                           "end_of_word_suffix", "dropout"};
    for (size_t i = 0; i < sizeof empty_ok / sizeof *empty_ok; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, empty_ok[i]);
        RETURN_IF(v && !cJSON_IsNull(v) &&
                      !(cJSON_IsString(v) && !v->valuestring[0]),
                  -ENOTSUP,
                  "%s: model.%s is set; flexh2o runs only plain GPT-2 "
                  "byte-level BPE (use a tokenizer without it)",
                  name, empty_ok[i]);
    }
    RETURN_IF(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model,
                                                            "ignore_merges")),
              -ENOTSUP,
              "%s: model.ignore_merges is true; flexh2o runs only plain "
              "GPT-2 byte-level BPE",
              name);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    RETURN_IF(norm && !cJSON_IsNull(norm), -ENOTSUP,
              "%s: has a normalizer; flexh2o runs only GPT-2 byte-level BPE "
              "without normalization",
              name);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(pre, "type");
    RETURN_IF(!cJSON_IsString(pt) || strcmp(pt->valuestring, "ByteLevel") != 0,
              -ENOTSUP,
              "%s: pre_tokenizer is not ByteLevel; flexh2o runs only GPT-2 "
              "byte-level BPE",
              name);
    RETURN_IF(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pre,
                                                            "add_prefix_space")) ||
                  cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pre,
                                                                 "use_regex")),
              -ENOTSUP,
              "%s: pre_tokenizer ByteLevel needs add_prefix_space=false and "
              "use_regex=true (as GPT-2 and OPT have)",
              name);
    return 0;
}

/* --------------------------------------------------------------- load */

int tok_load_mem(const char *vocab_json, size_t vocab_len,
                 const char *merges_txt, size_t merges_len, tok **out)
{
    *out = NULL;
    struct tok_src src = {.vocab_name = "vocab.json",
                          .merges_name = "merges.txt"};
    cJSON *root = parse_json(vocab_json, vocab_len, src.vocab_name);
    int rc = root ? 0 : -EINVAL;
    if (rc == 0)
        rc = vocab_from_json(root, src.vocab_name, &src);
    if (rc == 0)
        rc = merges_from_txt(merges_txt, merges_len, src.merges_name, &src);
    if (rc == 0)
        rc = tok_build(&src, out);
    free(src.v);
    free(src.m);
    cJSON_Delete(root);
    return rc;
}

static int load_tokenizer_json(const char *path, tok **out)
{
    char *text;
    size_t len;
    FORWARD_IF(off_read_file(path, &text, &len)); /* its message names the path */
    struct tok_src src = {.vocab_name = path, .merges_name = path};
    cJSON *root = parse_json(text, len, path);
    int rc = root ? check_tokenizer_json(root, path) : -EINVAL;
    if (rc == 0) {
        const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        rc = vocab_from_json(cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                             path, &src);
        if (rc == 0)
            rc = merges_from_json(
                cJSON_GetObjectItemCaseSensitive(model, "merges"), path, &src);
    }
    if (rc == 0)
        rc = tok_build(&src, out);
    free(src.v);
    free(src.m);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int tok_load(const char *dir, tok **out)
{
    *out = NULL;
    struct stat st;
    RETURN_IF(stat(dir, &st) != 0, -ENOENT,
              "%s: no such directory; pass the model directory that holds "
              "vocab.json and merges.txt (or tokenizer.json)",
              dir);
    RETURN_IF(!S_ISDIR(st.st_mode), -ENOTDIR,
              "%s: not a directory; pass the model directory that holds "
              "vocab.json and merges.txt (or tokenizer.json)",
              dir);

    char vpath[4096], mpath[4096], jpath[4096];
    int nv = snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
    int nm = snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
    int nj = snprintf(jpath, sizeof jpath, "%s/tokenizer.json", dir);
    RETURN_IF(nv >= (int)sizeof vpath || nm >= (int)sizeof mpath ||
                  nj >= (int)sizeof jpath,
              -ENAMETOOLONG, "%s: path too long", dir);

    char *vocab, *merges;
    size_t vlen, mlen;
    /* off_read_file's message names the path; a missing file's is
     * replaced (err_clear: the first message wins) by one that says what to
     * copy, or dropped when tokenizer.json stands in for the pair */
    int rc = off_read_file(vpath, &vocab, &vlen);
    if (rc == -ENOENT) {
        err_clear();
        RETURN_IF(access(jpath, F_OK) != 0, -ENOENT,
                  "%s: not found, nor tokenizer.json; copy the model's "
                  "tokenizer files (vocab.json and merges.txt, or "
                  "tokenizer.json) into %s",
                  vpath, dir);
        return load_tokenizer_json(jpath, out);
    }
    FORWARD_IF(rc);
    rc = off_read_file(mpath, &merges, &mlen);
    if (rc < 0) {
        free(vocab);
        if (rc == -ENOENT)
            err_clear();
        RETURN_IF(rc == -ENOENT, rc,
                  "%s: not found, but vocab.json is there; copy merges.txt "
                  "of the same tokenizer into %s",
                  mpath, dir);
        return rc;
    }

    struct tok_src src = {.vocab_name = vpath, .merges_name = mpath};
    cJSON *root = parse_json(vocab, vlen, vpath);
    rc = root ? vocab_from_json(root, vpath, &src) : -EINVAL;
    if (rc == 0)
        rc = merges_from_txt(merges, mlen, mpath, &src);
    if (rc == 0)
        rc = tok_build(&src, out);
    free(src.v);
    free(src.m);
    cJSON_Delete(root);
    free(vocab);
    free(merges);
    return rc;
}

/* ------------------------------------------------------------ encode */

/* Per-call BPE scratch, grown to the longest piece seen. */
struct bpe_scratch {
    int32_t *id, *prev, *next; /* (cap) symbols of the piece */
    uint64_t *heap;            /* (3 * cap) rank << 32 | position */
    size_t cap;
};

static int scratch_reserve(struct bpe_scratch *sc, size_t n)
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

/* BPE of one piece W[0..n) (n >= 1), ids appended at OUT. @return the
 * number of ids written, or -ENOMEM. */
static int bpe_piece(const tok *t, const unsigned char *w, size_t n,
                     struct bpe_scratch *sc, int32_t *out)
{
    if (n == 1) {
        out[0] = t->byte_id[w[0]];
        return 1;
    }
    FORWARD_IF(scratch_reserve(sc, n));
    int32_t *id = sc->id, *prev = sc->prev, *next = sc->next;
    uint64_t *heap = sc->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = t->byte_id[w[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const struct tok_merge *m = merge_find(t, id[i], id[i + 1]);
        if (m)
            heap_push(heap, &nh, (uint64_t)m->rank << 32 | i);
    }
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t rank = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        int32_t nx = next[pos];
        if (id[pos] < 0 || nx < 0)
            continue; /* merged away, or now last */
        const struct tok_merge *m = merge_find(t, id[pos], id[nx]);
        if (!m || m->rank != rank)
            continue; /* a neighbour changed since the push */
        id[pos] = m->id;
        id[nx] = -1;
        next[pos] = next[nx];
        if (next[pos] >= 0)
            prev[next[pos]] = pos;
        if (prev[pos] >= 0) {
            m = merge_find(t, id[prev[pos]], id[pos]);
            if (m)
                heap_push(heap, &nh, (uint64_t)m->rank << 32 |
                                         (uint32_t)prev[pos]);
        }
        if (next[pos] >= 0) {
            m = merge_find(t, id[pos], id[next[pos]]);
            if (m)
                heap_push(heap, &nh, (uint64_t)m->rank << 32 | (uint32_t)pos);
        }
    }
    int k = 0;
    for (int32_t i = 0; i >= 0; i = next[i])
        out[k++] = id[i];
    return k;
}

/* Pre-tokenize and BPE the text between two special tokens. */
static int encode_segment(const tok *t, const char *s, size_t len,
                          struct bpe_scratch *sc, int32_t *out)
{
    int n = 0;
    for (size_t pos = 0; pos < len;) {
        size_t end = tok_pretok_next(s, len, pos);
        int k = bpe_piece(t, (const unsigned char *)s + pos, end - pos, sc,
                          out + n);
        FORWARD_IF(k);
        n += k;
        pos = end;
    }
    return n;
}

/* The longest special token at S[0..len), or NULL. */
static const struct tok_special *special_at(const tok *t, const char *s,
                                            size_t len)
{
    const struct tok_special *best = NULL;
    for (int i = 0; i < t->n_special; i++) {
        const struct tok_special *sp = &t->special[i];
        if (sp->len <= len && (!best || sp->len > best->len) &&
            memcmp(s, t->special_text + sp->off, sp->len) == 0)
            best = sp;
    }
    return best;
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

    /* Every id covers at least one byte. */
    int32_t *out = malloc((len ? len : 1) * sizeof *out);
    RETURN_IF(!out, -ENOMEM, "out of memory for %zu ids", len);
    struct bpe_scratch sc = {0};
    int n = 0, rc = 0;
    size_t seg = 0;
    for (size_t i = 0; i < len && rc >= 0;) {
        const struct tok_special *sp = NULL;
        if (t->special_first[(unsigned char)text[i]])
            sp = special_at(t, text + i, len - i);
        if (!sp) {
            i++;
            continue;
        }
        rc = encode_segment(t, text + seg, i - seg, &sc, out + n);
        if (rc >= 0) {
            n += rc;
            out[n++] = sp->id;
        }
        i += sp->len;
        seg = i;
    }
    if (rc >= 0)
        rc = encode_segment(t, text + seg, len - seg, &sc, out + n);
    free(sc.id);
    free(sc.prev);
    free(sc.next);
    free(sc.heap);
    if (rc < 0) {
        free(out);
        return rc;
    }
    n += rc;
    int32_t *shrunk = realloc(out, (n ? (size_t)n : 1) * sizeof *out);
    *ids = shrunk ? shrunk : out;
    return n;
}

/* ------------------------------------------------------------ decode */

static int decodes(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->kind[id] != TOK_KIND_HOLE &&
           t->kind[id] != TOK_KIND_SPECIAL;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out)
{
    *out = NULL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (decodes(t, ids[i]))
            total += t->dec_off[ids[i] + 1] - t->dec_off[ids[i]];
    RETURN_IF(total > INT_MAX, -EOVERFLOW,
              "decoded text of %zu bytes is too long; decode fewer ids at "
              "once",
              total);
    char *s = malloc(total + 1);
    RETURN_IF(!s, -ENOMEM, "out of memory for %zu decoded bytes", total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!decodes(t, ids[i]))
            continue;
        uint32_t a = t->dec_off[ids[i]], b = t->dec_off[ids[i] + 1];
        memcpy(s + k, t->dec + a, b - a);
        k += b - a;
    }
    s[k] = 0;
    *out = s;
    return (int)k;
}
