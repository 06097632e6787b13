/* tok.c: loading a tokenizer, and what the other files look up in it.
 *
 * Load (once):
 *
 *   vocab.json + merges.txt ----------------+
 *   tokenizer.json --tok_json_read----------+-> struct tok_src -> tok_build
 *   tokenizer_config.json, generation_config.json,
 *   config.json --tok_config_load--> BOS, EOS
 *
 *   tok_build resolves every token once and keeps only what encoding and
 *   decoding need (struct tok in tok_impl.h):
 *     str / str_off       the string of each id, and kind: special or not
 *     vocab               model.vocab: string -> id (characters, <0xNN>,
 *                         whole pieces for ignore_merges)
 *     byte_id[256]        the byte symbols of byte-level BPE, or <0xNN>
 *     merge table         (left id, right id) -> (rank, merged id)
 *     raw, norm           the added tokens, matched before BPE
 */
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "off.h"

/* ------------------------------------------------------- byte symbols */

static int byte_is_printable(unsigned b)
{
    return (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
}

uint32_t tok_byte_cp(unsigned b)
{
    if (byte_is_printable(b))
        return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        n += !byte_is_printable(x);
    return 256 + n;
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

/* ------------------------------------------------------ string -> id */

static int map_init(struct tok_map *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    RETURN_IF(!m->slot, -ENOMEM, "out of memory for a %zu-entry vocabulary", n);
    return 0;
}

static struct tok_map_slot *map_slot(const struct tok_map *m, const char *s,
                                     size_t len)
{
    size_t i = (size_t)XXH3_64bits(s, len) & m->mask;
    while (m->slot[i].s &&
           (m->slot[i].len != len || memcmp(m->slot[i].s, s, len) != 0))
        i = (i + 1) & m->mask;
    return &m->slot[i];
}

int32_t tok_map_get(const struct tok_map *m, const char *s, size_t len)
{
    const struct tok_map_slot *sl = map_slot(m, s, len);
    return sl->s ? sl->id : -1;
}

int32_t tok_token_id(const tok *t, const char *s, size_t len)
{
    const struct tok_added_set *sets[2] = {&t->raw, &t->norm};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n; i++) {
            int32_t id = sets[k]->tok[i].id;
            uint32_t a = t->str_off[id], b = t->str_off[id + 1];
            if (b - a == len && memcmp(t->str + a, s, len) == 0)
                return id;
        }
    return tok_map_get(&t->vocab, s, len);
}

/* ------------------------------------------------------ merge table */

static inline uint64_t merge_key(int32_t left, int32_t right)
{
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

const struct tok_merge *tok_merge_find(const tok *t, int32_t left,
                                       int32_t right)
{
    uint64_t key = merge_key(left, right);
    uint64_t i = (key * 0x9e3779b97f4a7c15ull) >> t->merge_shift;
    for (;;) {
        const struct tok_merge *e = &t->merge[i];
        if (e->key == key)
            return e;
        if (e->key == TOK_MERGE_EMPTY)
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
        t->merge[i].key = TOK_MERGE_EMPTY;
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
    while (t->merge[i].key != TOK_MERGE_EMPTY && t->merge[i].key != key)
        i = (i + 1) & t->merge_mask;
    t->merge[i] = (struct tok_merge){.key = key, .rank = rank, .id = id};
}

/* ------------------------------------------------------------- build */

struct id_str {
    const char *s; /* NULL: a hole */
    size_t len;
};

/* The string of each id: model.vocab's entries, then the added tokens (an
 * added token model.vocab already holds must keep its string). */
static int collect_ids(tok *t, const struct tok_src *src, struct id_str *by_id)
{
    for (size_t i = 0; i < src->nv; i++) {
        const struct tok_vocab_entry *e = &src->v[i];
        RETURN_IF(by_id[e->id].s, -EINVAL,
                  "%s: id %d is given to two tokens (one is \"%.*s\"); "
                  "re-download the tokenizer files",
                  src->vocab_name, (int)e->id, (int)e->len, e->s);
        by_id[e->id] = (struct id_str){e->s, e->len};
        t->kind[e->id] = TOK_KIND_OTHER;
    }
    for (size_t i = 0; i < src->na; i++) {
        const struct tok_added_entry *a = &src->a[i];
        const struct id_str *was = &by_id[a->id];
        RETURN_IF(was->s && (was->len != a->len || memcmp(was->s, a->s, a->len)),
                  -EINVAL,
                  "%s: added_tokens gives id %d to \"%.*s\", model.vocab to "
                  "\"%.*s\"; re-download tokenizer.json",
                  src->vocab_name, (int)a->id, (int)a->len, a->s,
                  (int)was->len, was->s);
        by_id[a->id] = (struct id_str){a->s, a->len};
        t->kind[a->id] = a->flags & TOK_ADDED_SPECIAL ? TOK_KIND_SPECIAL
                                                       : TOK_KIND_OTHER;
    }
    return 0;
}

/* Copy the strings into t->str and index model.vocab's in t->vocab. */
static int build_strings(tok *t, const struct tok_src *src,
                         const struct id_str *by_id)
{
    size_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        total += by_id[id].len;
    RETURN_IF(total > UINT32_MAX, -EINVAL, "%s: the tokens are too long",
              src->vocab_name);
    t->str_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->str_off);
    t->str = malloc(total ? total : 1);
    RETURN_IF(!t->str_off || !t->str, -ENOMEM,
              "out of memory for %d token strings", t->n_vocab);
    size_t off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->str_off[id] = (uint32_t)off;
        if (by_id[id].len)
            memcpy(t->str + off, by_id[id].s, by_id[id].len);
        off += by_id[id].len;
    }
    t->str_off[t->n_vocab] = (uint32_t)off;
    FORWARD_IF(map_init(&t->vocab, src->nv));
    for (size_t i = 0; i < src->nv; i++) {
        int32_t id = src->v[i].id;
        const char *s = t->str + t->str_off[id];
        *map_slot(&t->vocab, s, src->v[i].len) =
            (struct tok_map_slot){.s = s, .len = src->v[i].len, .id = id};
    }
    return 0;
}

static int build_vocab(tok *t, const struct tok_src *src)
{
    RETURN_IF(src->nv == 0, -EINVAL,
              "%s: the vocabulary is empty; re-download the tokenizer files",
              src->vocab_name);
    int32_t max_id = -1;
    for (size_t i = 0; i < src->nv; i++)
        max_id = src->v[i].id > max_id ? src->v[i].id : max_id;
    for (size_t i = 0; i < src->na; i++)
        max_id = src->a[i].id > max_id ? src->a[i].id : max_id;
    t->n_vocab = max_id + 1;
    t->kind = calloc((size_t)t->n_vocab, 1);
    struct id_str *by_id = calloc((size_t)t->n_vocab, sizeof *by_id);
    int rc = t->kind && by_id ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory for %d ids", t->n_vocab);
    if (rc == 0)
        rc = collect_ids(t, src, by_id);
    if (rc == 0)
        rc = build_strings(t, src, by_id);
    free(by_id);
    for (size_t i = 0; rc == 0 && i < src->na; i++) {
        const struct tok_added_entry *a = &src->a[i];
        int32_t id = tok_map_get(&t->vocab, a->s, a->len);
        RETURN_IF(id >= 0 && id != a->id, -EINVAL,
                  "%s: added_tokens gives \"%.*s\" id %d, model.vocab id %d; "
                  "re-download tokenizer.json",
                  src->vocab_name, (int)a->len, a->s, (int)a->id, (int)id);
    }
    return rc;
}

/* byte_id: the 256 byte symbols of byte-level BPE (all must be there), or
 * the <0xNN> tokens of byte_fallback (those missing fall to unk). */
static int build_bytes(tok *t, const struct tok_src *src)
{
    for (int i = 0; i < TOK_CP_BYTE_MAX; i++)
        t->cp_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++) {
        t->byte_id[b] = -1;
        t->cp_byte[tok_byte_cp(b)] = (int16_t)b;
    }
    for (unsigned b = 0; b < 256; b++) {
        char u[8];
        size_t n;
        if (t->pipe.pre.byte_level)
            n = cp_to_utf8(tok_byte_cp(b), u);
        else if (t->pipe.byte_fallback)
            n = (size_t)snprintf(u, sizeof u, "<0x%02X>", b);
        else
            break;
        int32_t id = tok_map_get(&t->vocab, u, n);
        RETURN_IF(id < 0 && t->pipe.pre.byte_level, -EINVAL,
                  "%s: no token for byte 0x%02x (\"%.*s\"): not a byte-level "
                  "BPE vocabulary; use the model's own tokenizer files",
                  src->vocab_name, b, (int)n, u);
        t->byte_id[b] = id;
        if (id >= 0 && t->kind[id] != TOK_KIND_SPECIAL)
            t->kind[id] = TOK_KIND_BPE;
    }
    return 0;
}

static int merge_missing(const struct tok_src *src,
                         const struct tok_merge_entry *m, const char *s,
                         size_t len)
{
    char where[512];
    if (src->merges_are_lines)
        snprintf(where, sizeof where, "%s line %d", src->merges_name, m->where);
    else
        snprintf(where, sizeof where, "%s: model.merges[%d]", src->merges_name,
                 m->where);
    err_set(__FILE__, __LINE__,
            "%s: token \"%.*s\" is not in %s; the merges and the vocabulary "
            "are from different tokenizers, re-download both",
            where, (int)len, s, src->vocab_name);
    return -EINVAL;
}

static int build_merges(tok *t, const struct tok_src *src)
{
    RETURN_IF(src->nm > INT32_MAX, -EINVAL, "%s: too many merges (%zu)",
              src->merges_name, src->nm);
    FORWARD_IF(merge_table_init(t, src->nm));
    size_t cat_cap = 0;
    char *cat = NULL;
    int rc = 0;
    for (size_t i = 0; i < src->nm && rc == 0; i++) {
        const struct tok_merge_entry *m = &src->m[i];
        size_t n = m->alen + m->blen;
        if (n > cat_cap) {
            char *nc = realloc(cat, 2 * n);
            if (!nc) {
                err_set(__FILE__, __LINE__, "out of memory loading merges");
                rc = -ENOMEM;
                break;
            }
            cat = nc;
            cat_cap = 2 * n;
        }
        memcpy(cat, m->a, m->alen);
        memcpy(cat + m->alen, m->b, m->blen);
        int32_t a = tok_map_get(&t->vocab, m->a, m->alen);
        int32_t b = tok_map_get(&t->vocab, m->b, m->blen);
        int32_t ab = tok_map_get(&t->vocab, cat, n);
        if (a < 0 || b < 0 || ab < 0) {
            rc = a < 0   ? merge_missing(src, m, m->a, m->alen)
                 : b < 0 ? merge_missing(src, m, m->b, m->blen)
                         : merge_missing(src, m, cat, n);
            break;
        }
        merge_put(t, a, b, (int32_t)i, ab);
        if (t->kind[ab] != TOK_KIND_SPECIAL) /* Mistral's learnt [INST] */
            t->kind[ab] = TOK_KIND_BPE;
    }
    free(cat);
    return rc;
}

/* ------------------------------------------------------ added tokens */

static int is_markup(const char *s, size_t len)
{
    return len >= 3 && s[0] == '<' && s[len - 1] == '>';
}

/* vocab.json has no added_tokens: its specials are the "<...>" entries BPE
 * cannot reach. Fills *out (malloc'd) and *n. */
static int markup_specials(tok *t, struct tok_added_entry **out, size_t *n)
{
    *out = malloc((size_t)t->n_vocab * sizeof **out);
    RETURN_IF(!*out, -ENOMEM, "out of memory for %d ids", t->n_vocab);
    *n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->str + t->str_off[id];
        size_t len = t->str_off[id + 1] - t->str_off[id];
        if (t->kind[id] == TOK_KIND_OTHER && is_markup(s, len)) {
            t->kind[id] = TOK_KIND_SPECIAL;
            (*out)[(*n)++] = (struct tok_added_entry){
                .s = s, .len = len, .id = id, .flags = TOK_ADDED_SPECIAL};
        }
    }
    return 0;
}

static int in_set(const struct tok_added_entry *a, int normalized)
{
    return a->len && ((a->flags & TOK_ADDED_NORMALIZED) != 0) == normalized;
}

/* Append S[0..len) to the set's text, grown as needed. */
static int added_text_put(struct tok_added_set *set, size_t *cap, size_t off,
                          const char *s, size_t len)
{
    if (off + len > *cap) {
        size_t nc = 2 * (off + len) + 64;
        char *nt = realloc(set->text, nc);
        RETURN_IF(!nt, -ENOMEM, "out of memory for the added tokens");
        set->text = nt;
        *cap = nc;
    }
    memcpy(set->text + off, s, len);
    return 0;
}

/* Fill the set of the entries whose normalized flag is NORMALIZED; their
 * text goes through the normalizer first, as `tokenizers` does. */
static int added_set_build(tok *t, const struct tok_added_entry *a, size_t na,
                           int normalized, struct tok_added_set *set)
{
    size_t n = 0;
    for (size_t i = 0; i < na; i++)
        n += (size_t)in_set(&a[i], normalized);
    set->tok = malloc((n ? n : 1) * sizeof *set->tok);
    RETURN_IF(!set->tok, -ENOMEM, "out of memory for %zu added tokens", n);
    char *buf = NULL;
    size_t buf_cap = 0, text_cap = 0, off = 0;
    int rc = 0;
    for (size_t i = 0; i < na && rc == 0; i++) {
        if (!in_set(&a[i], normalized))
            continue;
        const char *s = a[i].s;
        int len = (int)a[i].len;
        if (normalized)
            len = tok_normalize(t, a[i].s, a[i].len, &buf, &buf_cap, &s);
        rc = len < 0 ? len : added_text_put(set, &text_cap, off, s, (size_t)len);
        if (rc < 0 || len == 0)
            continue;
        set->tok[set->n++] = (struct tok_added){
            .off = off, .len = (size_t)len, .id = a[i].id, .flags = a[i].flags};
        set->first[(unsigned char)s[0]] = 1;
        off += (size_t)len;
    }
    free(buf);
    return rc;
}

static int build_added(tok *t, const struct tok_src *src)
{
    struct tok_added_entry *mine = NULL;
    const struct tok_added_entry *a = src->a;
    size_t na = src->na;
    if (src->markup_specials) {
        FORWARD_IF(markup_specials(t, &mine, &na));
        a = mine;
    }
    int rc = added_set_build(t, a, na, 0, &t->raw);
    if (rc == 0)
        rc = added_set_build(t, a, na, 1, &t->norm);
    free(mine);
    if (rc == 0 && src->unk) {
        t->unk_id = tok_map_get(&t->vocab, src->unk, strlen(src->unk));
        RETURN_IF(t->unk_id < 0, -EINVAL,
                  "%s: model.unk_token \"%s\" is not in model.vocab; "
                  "re-download tokenizer.json",
                  src->vocab_name, src->unk);
    }
    return rc;
}

static int tok_build(const struct tok_src *src, tok **out)
{
    tok *t = calloc(1, sizeof *t);
    RETURN_IF(!t, -ENOMEM, "out of memory for the tokenizer");
    t->pipe = src->pipe;
    t->unk_id = -1;
    t->bos_id = -1;
    t->vocab_file = strdup(src->vocab_name);
    int rc = t->vocab_file ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory for the tokenizer");
    if (rc == 0)
        rc = build_vocab(t, src);
    if (rc == 0)
        rc = build_bytes(t, src);
    if (rc == 0)
        rc = build_merges(t, src);
    if (rc == 0)
        rc = build_added(t, src);
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
    free(t->kind);
    free(t->str_off);
    free(t->str);
    free(t->vocab.slot);
    free(t->merge);
    free(t->raw.tok);
    free(t->raw.text);
    free(t->norm.tok);
    free(t->norm.text);
    free(t->eos);
    free(t->chat_template);
    free(t->bos_text);
    free(t->eos_text);
    free(t->vocab_file);
    free(t->bos_file);
    free(t->eos_file);
    free(t);
}

int tok_vocab_size(const tok *t) { return t->n_vocab; }

int tok_bos_id(const tok *t) { return t->bos_id; }

int tok_check_vocab(const tok *t, int vocab_size, const char *model_file)
{
    /* the largest id is a vocabulary entry or an added token: one of the
     * vocabulary file's (and every smaller one is then below vocab_size) */
    int32_t top = t->n_vocab - 1;
    int len = (int)(t->str_off[top + 1] - t->str_off[top]);
    RETURN_IF(top >= vocab_size, -EINVAL,
              "%s: token id %d (\"%.*s\") is past the model's vocabulary (vocab_size %d in "
              "%s); the tokenizer is another model's: copy this model's tokenizer files",
              t->vocab_file, (int)top, len < 40 ? len : 40, t->str + t->str_off[top],
              vocab_size, model_file);
    RETURN_IF(t->bos_id >= vocab_size, -EINVAL,
              "%s: the BOS id %d is past the model's vocabulary (vocab_size %d in %s); fix "
              "it or copy this model's files", t->bos_file ? t->bos_file : t->vocab_file,
              (int)t->bos_id, vocab_size, model_file);
    for (int i = 0; i < t->n_eos; i++)
        RETURN_IF(t->eos[i] >= vocab_size, -EINVAL,
                  "%s: eos_token_id %d is past the model's vocabulary (vocab_size %d in %s); "
                  "fix it or copy this model's files", t->eos_file, (int)t->eos[i],
                  vocab_size, model_file);
    return 0;
}

int tok_eos_ids(const tok *t, const int32_t **ids)
{
    *ids = t->eos;
    return t->n_eos;
}

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
            struct tok_merge_entry *e = &src->m[src->nm];
            RETURN_IF(tok_split_merge(text + i, n, e) < 0, -EINVAL,
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

/* vocab.json + merges.txt: GPT-2's pipeline. */
static void pipe_gpt2(struct tok_pipe *p)
{
    memset(p, 0, sizeof *p);
    p->pre = (struct tok_pretok){.regex = TOK_SPLIT_GPT2, .byte_level = 1};
    p->dec[p->n_dec++] = (struct tok_dec){.kind = TOK_DEC_BYTE_LEVEL};
}

static void src_free(struct tok_src *src)
{
    free(src->v);
    free(src->m);
    free(src->a);
}

/* --------------------------------------------------------------- load */

/* The tok of vocab.json and merges.txt texts (NAMES for messages). */
static int load_pair(const char *vocab, size_t vlen, const char *vname,
                     const char *merges, size_t mlen, const char *mname,
                     tok **out)
{
    struct tok_src src = {.vocab_name = vname, .merges_name = mname,
                          .markup_specials = 1};
    pipe_gpt2(&src.pipe);
    cJSON *root = parse_json(vocab, vlen, vname);
    int rc = root ? tok_json_vocab(root, vname, &src) : -EINVAL;
    if (rc == 0)
        rc = merges_from_txt(merges, mlen, mname, &src);
    if (rc == 0)
        rc = tok_build(&src, out);
    src_free(&src);
    cJSON_Delete(root);
    return rc;
}

int tok_load_mem(const char *vocab_json, size_t vocab_len,
                 const char *merges_txt, size_t merges_len, tok **out)
{
    *out = NULL;
    return load_pair(vocab_json, vocab_len, "vocab.json", merges_txt,
                     merges_len, "merges.txt", out);
}

static int load_tokenizer_json(const char *dir, const char *path, tok **out)
{
    char *text;
    size_t len;
    FORWARD_IF(off_read_file(path, &text, &len)); /* its message names the path */
    struct tok_src src = {.vocab_name = path, .merges_name = path};
    cJSON *root = parse_json(text, len, path);
    int rc = root ? tok_json_read(root, path, &src) : -EINVAL;
    if (rc == 0)
        rc = tok_build(&src, out);
    if (rc == 0) {
        rc = tok_config_load(*out, dir, &src);
        if (rc < 0) {
            tok_destroy(*out);
            *out = NULL;
        }
    }
    src_free(&src);
    cJSON_Delete(root);
    free(text);
    return rc;
}

/* DIR/vocab.json (read, in *vocab) and DIR/merges.txt. */
static int load_vocab_merges(const char *dir, const char *vpath, char *vocab,
                             size_t vlen, const char *mpath, tok **out)
{
    char *merges;
    size_t mlen;
    int rc = off_read_file(mpath, &merges, &mlen);
    if (rc < 0) {
        if (rc == -ENOENT)
            err_clear();
        RETURN_IF(rc == -ENOENT, rc,
                  "%s: not found, but vocab.json is there; copy merges.txt "
                  "of the same tokenizer into %s",
                  mpath, dir);
        return rc;
    }
    rc = load_pair(vocab, vlen, vpath, merges, mlen, mpath, out);
    free(merges);
    if (rc == 0) {
        struct tok_src none = {0};
        rc = tok_config_load(*out, dir, &none);
        if (rc < 0) {
            tok_destroy(*out);
            *out = NULL;
        }
    }
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

    char *vocab;
    size_t vlen;
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
        return load_tokenizer_json(dir, jpath, out);
    }
    FORWARD_IF(rc);
    rc = load_vocab_merges(dir, vpath, vocab, vlen, mpath, out);
    free(vocab);
    return rc;
}
