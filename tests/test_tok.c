/* test_tok.c: the tokenizer against Hugging Face `tokenizers`.
 *
 * tests/fixtures/tok_golden.jsonl (from gen_tok_golden.py, which checks
 * that `tokenizers`, `transformers` and GPT-2's own algorithm agree) gives
 * the exact ids of ~60 texts; every loading path must reproduce them, and
 * decoding must give the text back.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "job.h"
#include "tok.h"

#define TOK_DIR FH_SOURCE_ROOT "/configs/tokenizer"
#define GOLDEN FH_SOURCE_ROOT "/tests/fixtures/tok_golden.jsonl"

/* ------------------------------------------------------------ helpers */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    b[n] = 0;
    if (len)
        *len = (size_t)n;
    return b;
}

static void spit(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s", path);
    cr_assert_eq(fwrite(text, 1, len, f), len);
    fclose(f);
}

struct golden {
    char *text;
    size_t len;
    int32_t *ids;
    int n;
};

static struct golden *gold;
static int n_gold;

static void load_golden(void)
{
    char *all = slurp(GOLDEN, NULL);
    n_gold = 0;
    gold = calloc(256, sizeof *gold);
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        cr_assert_not_null(j, "bad golden line %d", n_gold + 1);
        const cJSON *text = cJSON_GetObjectItem(j, "text");
        const cJSON *ids = cJSON_GetObjectItem(j, "ids");
        cr_assert(cJSON_IsString(text) && cJSON_IsArray(ids));
        cr_assert_lt(n_gold, 256);
        struct golden *g = &gold[n_gold++];
        g->text = strdup(text->valuestring);
        g->len = strlen(g->text);
        g->n = cJSON_GetArraySize(ids);
        g->ids = malloc(((size_t)g->n + 1) * sizeof *g->ids);
        int i = 0;
        for (const cJSON *c = ids->child; c; c = c->next)
            g->ids[i++] = (int32_t)c->valueint;
        cJSON_Delete(j);
    }
    free(all);
    cr_assert_geq(n_gold, 60, "tok_golden.jsonl has %d lines", n_gold);
}

static void free_golden(void)
{
    for (int i = 0; i < n_gold; i++) {
        free(gold[i].text);
        free(gold[i].ids);
    }
    free(gold);
}

static tok *load_ok(const char *dir)
{
    tok *t = NULL;
    err_clear();
    int rc = tok_load(dir, &t);
    cr_assert_eq(rc, 0, "tok_load(%s) = %d: %s", dir, rc, err_msg());
    cr_assert_not_null(t);
    return t;
}

/* Every golden text encodes to exactly its ids; the first difference is
 * printed with its index. */
static void check_golden(const tok *t, const char *how)
{
    for (int k = 0; k < n_gold; k++) {
        const struct golden *g = &gold[k];
        int32_t *ids = NULL;
        int n = tok_encode(t, g->text, g->len, &ids);
        cr_assert_geq(n, 0, "%s: line %d: %s", how, k + 1, err_msg());
        for (int i = 0; i < n && i < g->n; i++)
            cr_assert_eq(ids[i], g->ids[i],
                         "%s: golden line %d (\"%.40s\"): id[%d] = %d, "
                         "expected %d",
                         how, k + 1, g->text, i, ids[i], g->ids[i]);
        cr_assert_eq(n, g->n, "%s: golden line %d (\"%.40s\"): %d ids, "
                     "expected %d", how, k + 1, g->text, n, g->n);
        free(ids);
    }
}

static char *tmpdir(void)
{
    char *d = strdup("/tmp/test_tok_XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void rmtree(char *dir)
{
    static const char *const names[] = {
        "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
        "generation_config.json", "config.json"};
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    cr_assert_eq(rmdir(dir), 0, "cannot remove %s", dir);
    free(dir);
}

static void put(const char *dir, const char *name, const char *text,
                size_t len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    spit(p, text, len);
}

static void putstr(const char *dir, const char *name, const char *text)
{
    put(dir, name, text, strlen(text));
}

static void put_copy(const char *dir, const char *name)
{
    char p[512];
    size_t len;
    snprintf(p, sizeof p, "%s/%s", TOK_DIR, name);
    char *text = slurp(p, &len);
    put(dir, name, text, len);
    free(text);
}

/* ------------------------------------------------------------- golden */

TestSuite(tok, .init = load_golden, .fini = free_golden);

Test(tok, golden_vocab_merges)
{
    tok *t = load_ok(TOK_DIR);
    cr_assert_eq(tok_vocab_size(t), 512);
    check_golden(t, "vocab.json+merges.txt");
    tok_destroy(t);
}

Test(tok, golden_embedded)
{
    cr_assert_eq(tok_embedded_vocab_json[tok_embedded_vocab_json_len], 0);
    cr_assert_eq(tok_embedded_merges_txt[tok_embedded_merges_txt_len], 0);
    /* The embedded copy is byte-identical to the committed files. */
    size_t vlen, mlen;
    char *v = slurp(TOK_DIR "/vocab.json", &vlen);
    char *m = slurp(TOK_DIR "/merges.txt", &mlen);
    cr_assert_eq(vlen, tok_embedded_vocab_json_len);
    cr_assert_eq(mlen, tok_embedded_merges_txt_len);
    cr_assert_eq(memcmp(v, tok_embedded_vocab_json, vlen), 0,
                 "src/tok_embedded.c is stale: run configs/tokenizer/embed.py");
    cr_assert_eq(memcmp(m, tok_embedded_merges_txt, mlen), 0,
                 "src/tok_embedded.c is stale: run configs/tokenizer/embed.py");
    free(v);
    free(m);

    tok *t = NULL;
    int rc = tok_load_mem(tok_embedded_vocab_json, tok_embedded_vocab_json_len,
                          tok_embedded_merges_txt, tok_embedded_merges_txt_len,
                          &t);
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert_eq(tok_vocab_size(t), 512);
    check_golden(t, "embedded");
    tok_destroy(t);
}

Test(tok, golden_tokenizer_json_list_merges)
{
    /* The committed tokenizer.json has merges as ["a", "b"] lists. */
    char *d = tmpdir();
    put_copy(d, "tokenizer.json");
    tok *t = load_ok(d);
    cr_assert_str_empty(err_msg(), "the missing vocab.json left \"%s\"", err_msg());
    cr_assert_eq(tok_vocab_size(t), 512);
    check_golden(t, "tokenizer.json (list merges)");
    tok_destroy(t);
    rmtree(d);
}

Test(tok, golden_tokenizer_json_string_merges)
{
    /* Rewrite the merges in the older "a b" string form. */
    char *text = slurp(TOK_DIR "/tokenizer.json", NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"),
                                        "merges");
    cJSON *strs = cJSON_CreateArray();
    int n = 0;
    for (cJSON *c = merges->child; c; c = c->next, n++) {
        char buf[256];
        cr_assert(cJSON_IsArray(c), "merges[%d] is not a list", n);
        snprintf(buf, sizeof buf, "%s %s", c->child->valuestring,
                 c->child->next->valuestring);
        cJSON_AddItemToArray(strs, cJSON_CreateString(buf));
    }
    cr_assert_eq(n, 252);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(root, "model"), "merges",
                              strs);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cr_assert_not_null(strstr(out, "\"merges\":[\"Ġ t\""),
                       "rewritten merges not in string form");
    char *d = tmpdir();
    put(d, "tokenizer.json", out, strlen(out));
    free(out);
    tok *t = load_ok(d);
    check_golden(t, "tokenizer.json (string merges)");
    tok_destroy(t);
    rmtree(d);
}

/* vocab.json + merges.txt win over tokenizer.json when both exist. */
Test(tok, vocab_json_preferred)
{
    char *d = tmpdir();
    put_copy(d, "vocab.json");
    put_copy(d, "merges.txt");
    putstr(d, "tokenizer.json", "not json");
    tok *t = load_ok(d);
    check_golden(t, "vocab.json beside a broken tokenizer.json");
    tok_destroy(t);
    rmtree(d);
}

/* ---------------------------------------------------------- round trip */

/* TEXT with the special tokens removed, leftmost longest first, as
 * decode(encode(text)) must give it. */
static size_t strip_specials(const char *text, size_t len, char *out)
{
    static const char *const sp[] = {"<s>", "<pad>", "</s>", "<unk>"};
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        size_t best = 0;
        for (int s = 0; s < 4; s++) {
            size_t l = strlen(sp[s]);
            if (l > best && l <= len - i && memcmp(text + i, sp[s], l) == 0)
                best = l;
        }
        if (best) {
            i += best;
        } else {
            out[k++] = text[i++];
        }
    }
    return k;
}

Test(tok, roundtrip_golden)
{
    tok *t = load_ok(TOK_DIR);
    int with_specials = 0;
    for (int k = 0; k < n_gold; k++) {
        const struct golden *g = &gold[k];
        char *want = malloc(g->len + 1);
        size_t wlen = strip_specials(g->text, g->len, want);
        with_specials += wlen != g->len;
        int32_t *ids;
        int n = tok_encode(t, g->text, g->len, &ids);
        cr_assert_geq(n, 0);
        char *s;
        int m = tok_decode(t, ids, (size_t)n, &s);
        cr_assert_eq((size_t)m, wlen, "line %d: decoded %d bytes, want %zu",
                     k + 1, m, wlen);
        cr_assert_eq(memcmp(s, want, wlen), 0, "line %d: \"%s\" != \"%.*s\"",
                     k + 1, s, (int)wlen, want);
        cr_assert_eq(s[m], 0);
        free(s);
        free(ids);
        free(want);
    }
    cr_assert_geq(with_specials, 5, "golden set lost its special-token lines");
    tok_destroy(t);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 11) % n);
}

static size_t put_utf8(uint32_t c, char *o)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xc0 | c >> 6);
        o[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | c >> 12);
        o[1] = (char)(0x80 | (c >> 6 & 0x3f));
        o[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | c >> 18);
    o[1] = (char)(0x80 | (c >> 12 & 0x3f));
    o[2] = (char)(0x80 | (c >> 6 & 0x3f));
    o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* A random code point: ASCII (no '<', so no special token appears by
 * chance), whitespace, and 2-, 3- and 4-byte characters. */
static uint32_t random_cp(void)
{
    uint32_t c;
    switch (rnd(6)) {
    case 0:
    case 1:
        do
            c = 0x20 + rnd(0x5f);
        while (c == '<');
        return c;
    case 2:
        return " \t\n\r\v\f"[rnd(6)];
    case 3:
        return 0x80 + rnd(0x800 - 0x80);
    case 4:
        do
            c = 0x800 + rnd(0x10000 - 0x800);
        while (c >= 0xd800 && c < 0xe000);
        return c;
    default:
        return 0x10000 + rnd(0x110000 - 0x10000);
    }
}

Test(tok, roundtrip_random_utf8)
{
    tok *t = load_ok(TOK_DIR);
    char buf[4 * 300];
    int four_byte = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = 0;
        uint32_t n = rnd(300);
        for (uint32_t i = 0; i < n; i++) {
            size_t w = put_utf8(random_cp(), buf + len);
            four_byte += w == 4;
            len += w;
        }
        int32_t *ids;
        int m = tok_encode(t, buf, len, &ids);
        cr_assert_geq(m, 0, "iteration %d: %s", iter, err_msg());
        cr_assert_leq((size_t)m, len);
        for (int i = 0; i < m; i++)
            cr_assert(ids[i] >= 4 && ids[i] < 512,
                      "iteration %d: id %d out of range", iter, ids[i]);
        char *s;
        int k = tok_decode(t, ids, (size_t)m, &s);
        cr_assert_eq((size_t)k, len, "iteration %d", iter);
        cr_assert_eq(memcmp(s, buf, len), 0, "iteration %d", iter);
        free(s);
        free(ids);
    }
    cr_assert_gt(four_byte, 1000);
    tok_destroy(t);
}

/* One 300 kB word takes the heap BPE path; it must finish, match
 * `tokenizers` (150000 ids, "l igh t ho use" repeated, from
 * Tokenizer.from_file(tokenizer.json).encode("lighthouse" * 30000)) and
 * round-trip. */
Test(tok, long_word, .timeout = 20)
{
    static const int32_t period[5] = {79, 350, 75, 275, 362};
    tok *t = load_ok(TOK_DIR);
    size_t len = 300000;
    char *w = malloc(len);
    for (size_t i = 0; i < len; i++)
        w[i] = "lighthouse"[i % 10];
    int32_t *ids;
    int n = tok_encode(t, w, len, &ids);
    cr_assert_eq(n, 150000);
    for (int i = 0; i < n; i++)
        cr_assert_eq(ids[i], period[i % 5], "id[%d] = %d", i, ids[i]);
    char *s;
    cr_assert_eq(tok_decode(t, ids, (size_t)n, &s), (int)len);
    cr_assert_eq(memcmp(s, w, len), 0);
    free(s);
    free(ids);
    free(w);
    tok_destroy(t);
}

/* --------------------------------------------------- encode and decode */

static int enc(const tok *t, const char *s, int32_t *out, int cap)
{
    int32_t *ids;
    int n = tok_encode(t, s, strlen(s), &ids);
    cr_assert_geq(n, 0, "encode(\"%s\"): %s", s, err_msg());
    cr_assert_leq(n, cap);
    memcpy(out, ids, (size_t)n * sizeof *ids);
    free(ids);
    return n;
}

Test(tok, specials_in_text)
{
    tok *t = load_ok(TOK_DIR);
    int32_t a[16], b[16];
    cr_assert_eq(enc(t, "</s>", a, 16), 1);
    cr_assert_eq(a[0], 2);
    int n = enc(t, "<s><pad></s><unk>", a, 16);
    cr_assert_eq(n, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(a[i], i);
    /* The text around a special is tokenized on its own: "x</s>y" is
     * encode("x"), 2, encode("y"). */
    n = enc(t, "hello</s> world", a, 16);
    int n1 = enc(t, "hello", b, 16);
    int n2 = enc(t, " world", b + n1 + 1, 16 - n1 - 1);
    b[n1] = 2;
    cr_assert_eq(n, n1 + 1 + n2);
    cr_assert_eq(memcmp(a, b, (size_t)n * sizeof *a), 0);
    /* Near misses are plain text. */
    n = enc(t, "< /s>", a, 16);
    for (int i = 0; i < n; i++)
        cr_assert(a[i] >= 4, "\"< /s>\" gave special id %d", a[i]);
    tok_destroy(t);
}

Test(tok, decode_skips)
{
    tok *t = load_ok(TOK_DIR);
    int32_t ids[16];
    int n = enc(t, "Hello", ids, 8);
    int32_t mixed[16] = {0, -1, 2, 512, 1, 99999, 3};
    memcpy(mixed + 7, ids, (size_t)n * sizeof *ids);
    char *s;
    int k = tok_decode(t, mixed, (size_t)(7 + n), &s);
    cr_assert_eq(k, 5);
    cr_assert_str_eq(s, "Hello");
    free(s);
    k = tok_decode(t, NULL, 0, &s);
    cr_assert_eq(k, 0);
    cr_assert_str_eq(s, "");
    free(s);
    /* Ids cut mid-character decode to the bytes they have: 🦀 (U+1F980)
     * takes at least 2 ids here, the first a strict prefix. */
    n = enc(t, "\xf0\x9f\xa6\x80", ids, 8);
    cr_assert_geq(n, 2);
    k = tok_decode(t, ids, 1, &s);
    cr_assert(k >= 1 && k < 4, "first id decodes to %d bytes", k);
    cr_assert_eq(memcmp(s, "\xf0\x9f\xa6\x80", (size_t)k), 0);
    free(s);
    tok_destroy(t);
}

Test(tok, empty_text)
{
    tok *t = load_ok(TOK_DIR);
    int32_t *ids = NULL;
    cr_assert_eq(tok_encode(t, "", 0, &ids), 0);
    cr_assert_not_null(ids, "ids must be allocated even when empty");
    free(ids);
    tok_destroy(t);
}

/* The GPT-2 regex pieces, checked directly. */
static void pieces(const char *s, const char *const *want, int n_want)
{
    size_t len = strlen(s), pos = 0;
    int k = 0;
    while (pos < len) {
        size_t end = tok_pretok_next(s, len, pos);
        cr_assert_gt(end, pos);
        cr_assert_lt(k, n_want, "\"%s\": more pieces than expected", s);
        cr_assert_eq(end - pos, strlen(want[k]), "\"%s\" piece %d: \"%.*s\"",
                     s, k, (int)(end - pos), s + pos);
        cr_assert_eq(memcmp(s + pos, want[k], end - pos), 0);
        pos = end;
        k++;
    }
    cr_assert_eq(k, n_want, "\"%s\": %d pieces, expected %d", s, k, n_want);
}

#define PIECES(s, ...)                                                   \
    do {                                                                 \
        static const char *const w_[] = {__VA_ARGS__};                   \
        pieces(s, w_, (int)(sizeof w_ / sizeof *w_));                    \
    } while (0)

Test(tok, pretok_pieces)
{
    PIECES("Hello world", "Hello", " world");
    PIECES("a   b", "a", "  ", " b");
    PIECES("a\n\nb", "a", "\n", "\n", "b");
    PIECES("end  ", "end", "  ");
    PIECES("I'm we'll 'S", "I", "'m", " we", "'ll", " '", "S");
    PIECES("x!!'s", "x", "!!'", "s");
    PIECES("abc123 456", "abc", "123", " 456");
    PIECES("\xc2\xa0\xc2\xa0x", "\xc2\xa0", "\xc2\xa0", "x"); /* NBSP is \s */
    PIECES("a\xe2\x80\x8b" "b", "a", "\xe2\x80\x8b", "b"); /* ZWSP is not */
    PIECES("e\xcc\x81t\xc3\xa9", "e", "\xcc\x81", "t\xc3\xa9"); /* Mn */
    /* Every contraction, lower case only, and only at a piece start. */
    PIECES("'s't're've'm'll'd", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d");
    PIECES("'D'LL", "'", "D", "'", "LL");
    PIECES("'lx 'r", "'", "lx", " '", "r");
    /* NEL (U+0085) is \s though a control; U+2028 too. */
    PIECES("a\xc2\x85\xc2\x85" "b", "a", "\xc2\x85", "\xc2\x85", "b");
    PIECES("\xe2\x80\xa8\xe2\x80\xa8", "\xe2\x80\xa8\xe2\x80\xa8");
    /* Unicode 16 letters (U+1C89) and digits (U+10D40) as Oniguruma has
     * them, whatever libutf8proc's Unicode version. */
    PIECES("a\xe1\xb2\x89" "b", "a\xe1\xb2\x89" "b");
    PIECES("1\xf0\x90\xb5\x80 x", "1\xf0\x90\xb5\x80", " x");
}

/* GPT-2's bytes_to_unicode, for the synthetic vocabulary below. */
static uint32_t byte_cp(unsigned b)
{
    unsigned n = 0;
    for (unsigned x = 0; x < 256; x++) {
        int keep = (x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) ||
                   x >= 0xae;
        if (x == b)
            return keep ? b : 256 + n;
        n += !keep;
    }
    return 0;
}

/* A vocabulary built here: ids 0..255 the byte symbols (byte b has id
 * b), merges "a b" -> 256, and unreachable tokens: specials of which one
 * is a prefix of another, GPT-2's <|endoftext|>, a fairseq-style filler
 * that is not markup, and a special after a hole in the ids. */
Test(tok, synthetic_specials)
{
    cJSON *v = cJSON_CreateObject();
    for (unsigned b = 0; b < 256; b++) {
        char u[4] = {0};
        put_utf8(byte_cp(b), u);
        cJSON_AddNumberToObject(v, u, b);
    }
    cJSON_AddNumberToObject(v, "ab", 256);
    cJSON_AddNumberToObject(v, "<|endoftext|>", 257);
    cJSON_AddNumberToObject(v, "<s>", 258);
    cJSON_AddNumberToObject(v, "<s>x>", 259);
    cJSON_AddNumberToObject(v, "madeupword", 260);
    cJSON_AddNumberToObject(v, "<hi>", 300);
    cJSON_AddNumberToObject(v, "x\xe4\xb8\xad", 261); /* x中: not bytes */
    cJSON_AddNumberToObject(v, "<b", 262);             /* markup-like, */
    cJSON_AddNumberToObject(v, "<b>", 263);            /* but merged */
    char *vj = cJSON_PrintUnformatted(v);
    cJSON_Delete(v);
    const char *merges = "#version: 0.2\na b\n< b\n<b >\n";
    tok *t = NULL;
    err_clear();
    cr_assert_eq(tok_load_mem(vj, strlen(vj), merges, strlen(merges), &t), 0,
                 "%s", err_msg());
    free(vj);
    cr_assert_eq(tok_vocab_size(t), 301);

    const char *text = "ab<s>x><s><|endoftext|>madeupword<hi>";
    int32_t *ids;
    int n = tok_encode(t, text, strlen(text), &ids);
    static const int32_t want[] = {256, 259, 258, 257, 'm', 'a', 'd', 'e',
                                   'u', 'p', 'w', 'o', 'r', 'd', 300};
    cr_assert_eq(n, 15);
    for (int i = 0; i < n; i++)
        cr_assert_eq(ids[i], want[i], "id[%d] = %d, want %d", i, ids[i],
                     want[i]);
    free(ids);

    /* Specials and holes are skipped; the filler decodes as its text, a
     * token of non-byte characters as its own UTF-8, and "<b>", made by a
     * merge, is no special token. */
    static const int32_t dec[] = {257, 260, 280, 300, 259, 256, 32, 261, 263};
    char *s;
    cr_assert_eq(tok_decode(t, dec, 9, &s), 20);
    cr_assert_str_eq(s, "madeupwordab x\xe4\xb8\xad<b>");
    free(s);
    tok_destroy(t);
}

/* ------------------------------------------------------------- errors */

Test(tok, invalid_utf8)
{
    tok *t = load_ok(TOK_DIR);
    static const struct {
        const char *s;
        size_t len, bad;
    } cases[] = {
        {"ab\xff", 3, 2},            /* never valid */
        {"\xc0\x80", 2, 0},          /* overlong NUL */
        {"x\xe0\x80\xaf", 4, 1},     /* overlong 3-byte */
        {"\xed\xa0\x80", 3, 0},      /* surrogate U+D800 */
        {"ok\xf4\x90\x80\x80", 6, 2}, /* U+110000 */
        {"\xe4\xb8", 2, 0},          /* cut mid-character */
        {"a\x80z", 3, 1},            /* stray continuation */
        {"\xf5\x80\x80\x80", 4, 0},  /* lead byte past U+10FFFF */
        {"x\xf8\x88\x80\x80\x80", 6, 1}, /* 5-byte form */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int32_t *ids = (int32_t *)&ids; /* must be reset to NULL */
        err_clear();
        int rc = tok_encode(t, cases[i].s, cases[i].len, &ids);
        cr_assert_eq(rc, -EILSEQ, "case %zu: rc %d", i, rc);
        cr_assert_null(ids, "case %zu", i);
        char want[64];
        snprintf(want, sizeof want, "not valid UTF-8 at byte %zu",
                 cases[i].bad);
        cr_assert_not_null(strstr(err_msg(), want), "case %zu: \"%s\"", i,
                           err_msg());
    }
    tok_destroy(t);
}

Test(tok, utf8_char_decodes_each_length_and_refuses_a_cut)
{
    static const struct {
        const char *s;
        size_t len;
        int n;
        uint32_t cp;
    } cases[] = {
        {"\x00", 1, 1, 0},
        {"\x7f", 1, 1, 0x7f},
        {"\xc2\x80", 2, 2, 0x80},
        {"\xdf\xbfz", 3, 2, 0x7ff},
        {"\xe0\xa0\x80", 3, 3, 0x800},
        {"\xed\x9f\xbf", 3, 3, 0xd7ff},         /* last before the surrogates */
        {"\xee\x80\x80", 3, 3, 0xe000},         /* first after them */
        {"\xef\xbf\xbf", 3, 3, 0xffff},
        {"\xf0\x90\x80\x80", 4, 4, 0x10000},
        {"\xf4\x8f\xbf\xbf", 4, 4, 0x10ffff},
        {"\xe4\xb8\xad", 2, -EILSEQ, 0},        /* cut by len */
        {"\xc3\xa9", 1, -EILSEQ, 0},
        {"\xc1\xbf", 2, -EILSEQ, 0},             /* overlong U+007F */
        {"\xf0\x8f\xbf\xbf", 4, -EILSEQ, 0},   /* overlong U+FFFF */
        {"\xed\xbf\xbf", 3, -EILSEQ, 0},        /* surrogate U+DFFF */
        {"\xbf", 1, -EILSEQ, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint32_t cp = 0xdead;
        int n = tok_utf8_char(cases[i].s, cases[i].len, &cp);
        cr_assert_eq(n, cases[i].n, "case %zu: %d", i, n);
        cr_assert_eq(cp, n > 0 ? cases[i].cp : 0xdead, "case %zu: U+%04X", i, cp);
    }
}

static void load_fails(const char *dir, int want_rc, const char *want_msg)
{
    tok *t = (tok *)&t;
    err_clear();
    int rc = tok_load(dir, &t);
    cr_assert_eq(rc, want_rc, "tok_load(%s) = %d, want %d: %s", dir, rc,
                 want_rc, err_msg());
    cr_assert_null(t);
    cr_assert_not_null(strstr(err_msg(), want_msg),
                       "message \"%s\" lacks \"%s\"", err_msg(), want_msg);
}

Test(tok, missing_files)
{
    load_fails("/nonexistent/model-dir", -ENOENT, "/nonexistent/model-dir");
    char *d = tmpdir();
    char want[512];
    snprintf(want, sizeof want, "%s/vocab.json: not found", d);
    load_fails(d, -ENOENT, want);
    put_copy(d, "vocab.json");
    snprintf(want, sizeof want, "%s/merges.txt: not found", d);
    load_fails(d, -ENOENT, want);
    /* present but unreadable: the reader's message names the file */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/merges.txt", d);
    cr_assert_eq(mkdir(sub, 0700), 0);
    snprintf(want, sizeof want, "%s/merges.txt: not a regular file but a directory", d);
    load_fails(d, -EINVAL, want);
    cr_assert_eq(rmdir(sub), 0);
    rmtree(d);
    load_fails(TOK_DIR "/vocab.json", -ENOTDIR, "not a directory");
}

Test(tok, corrupt_files)
{
    char *d = tmpdir();
    char want[512];
    put_copy(d, "merges.txt");
    putstr(d, "vocab.json", "{\"a\": 1, \"b\" 2}");
    snprintf(want, sizeof want, "%s/vocab.json: not valid JSON at byte 13", d);
    load_fails(d, -EINVAL, want);

    putstr(d, "vocab.json", "[1, 2]");
    load_fails(d, -EINVAL, "not a JSON object");

    putstr(d, "vocab.json", "{\"a\": -3}");
    load_fails(d, -EINVAL, "token \"a\" has no valid id");

    /* A vocabulary without the byte symbols is not byte-level. */
    putstr(d, "vocab.json", "{\"a\": 0, \"b\": 1}");
    load_fails(d, -EINVAL, "no token for byte 0x00");

    /* Merges naming tokens the vocabulary lacks. */
    put_copy(d, "vocab.json");
    putstr(d, "merges.txt", "#version: 0.2\nh e\nq zz\n");
    snprintf(want, sizeof want, "%s/merges.txt line 3: token \"zz\"", d);
    load_fails(d, -EINVAL, want);
    putstr(d, "merges.txt", "#version: 0.2\nh e x\n");
    load_fails(d, -EINVAL, "line 2: expected two tokens");
    rmtree(d);

    d = tmpdir();
    putstr(d, "tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
    load_fails(d, -ENOTSUP, "model.type is \"Unigram\"");
    putstr(d, "tokenizer.json", "{\"model\": {\"vocab\": {}");
    snprintf(want, sizeof want, "%s/tokenizer.json: not valid JSON", d);
    load_fails(d, -EINVAL, want);
    rmtree(d);

    tok *t = (tok *)&t;
    err_clear();
    cr_assert_eq(tok_load_mem("{", 1, "", 0, &t), -EINVAL);
    cr_assert_null(t);
    cr_assert_not_null(strstr(err_msg(), "vocab.json: not valid JSON"));
    tok_destroy(NULL);
}

/* Pipelines flexh2o does not run are refused by name: here on OPT's
 * tokenizer.json (ByteLevel with add_prefix_space, or no pre-tokenizer at
 * all, it runs: see family_variants and family_llama2). */
Test(tok, tokenizer_json_other_pipelines)
{
    char *text = slurp(TOK_DIR "/tokenizer.json", NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *pre = cJSON_GetObjectItem(root, "pre_tokenizer");
    cJSON_ReplaceItemInObject(pre, "type", cJSON_CreateString("Whitespace"));
    char *out = cJSON_PrintUnformatted(root);
    char *d = tmpdir();
    put(d, "tokenizer.json", out, strlen(out));
    free(out);
    load_fails(d, -ENOTSUP, "pre_tokenizer type \"Whitespace\" is not supported");
    cJSON_Delete(root);
    rmtree(d);
}

/* ------------------------------------------------- families (issue 12) */

/* tests/fixtures/tok-<family>/ from gen_tok_families.py: tokenizers
 * trained with `tokenizers` and given the pipeline of each family, and
 * golden.jsonl, what `tokenizers` makes of every text: ids (no special
 * tokens added), ids_bos (the post-processor's template applied) and the
 * decoded ids (skip_special_tokens=True). */
#define FIX FH_SOURCE_ROOT "/tests/fixtures"

struct fgold {
    const char *text;
    int32_t *ids;
    int n;
    int bos;          /* what the template puts first, or -1 */
    char *decoded;
};

static int32_t *json_ids(const cJSON *a, int *n)
{
    cr_assert(cJSON_IsArray(a));
    *n = cJSON_GetArraySize(a);
    int32_t *ids = malloc(((size_t)*n + 1) * sizeof *ids);
    int i = 0;
    for (const cJSON *c = a->child; c; c = c->next)
        ids[i++] = (int32_t)c->valueint;
    return ids;
}

/* A golden line J; its text is TEXT (J's own when NULL), its BOS J's
 * "bos" (-2: J has none to check). */
static void fgold_parse(const cJSON *j, const char *text, struct fgold *g)
{
    const cJSON *tx = cJSON_GetObjectItem(j, "text");
    const cJSON *dec = cJSON_GetObjectItem(j, "decoded");
    const cJSON *bos = cJSON_GetObjectItem(j, "bos");
    cr_assert((text || cJSON_IsString(tx)) && cJSON_IsString(dec));
    g->text = text ? text : tx->valuestring;
    g->decoded = dec->valuestring;
    g->ids = json_ids(cJSON_GetObjectItem(j, "ids"), &g->n);
    g->bos = cJSON_IsNumber(bos) ? bos->valueint : bos ? -1 : -2;
}

/* Length of the maximal subpart of an ill-formed sequence at S (Unicode's
 * "U+FFFD substitution of maximal subparts", Rust's from_utf8_lossy). */
static size_t bad_len(const unsigned char *s, size_t len)
{
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    size_t need;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if ((c >= 0xe0 && c <= 0xef))
        need = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
        return 1;
    size_t i = 1;
    if (i < len && s[i] >= lo && s[i] <= hi)
        for (i++; i <= need && i < len && (s[i] & 0xc0) == 0x80; i++)
            ;
    return i;
}

/* S as `tokenizers` gives it: invalid UTF-8 as U+FFFD (tok_decode keeps
 * the bytes, see tok.h). The caller frees. */
static char *lossy(const char *s, size_t len)
{
    char *out = malloc(3 * len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        int w = tok_utf8_char(s + i, len - i, &c);
        if (w > 0) {
            memcpy(out + k, s + i, (size_t)w);
            k += (size_t)w;
            i += (size_t)w;
        } else {
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
            i += bad_len((const unsigned char *)s + i, len - i);
        }
    }
    out[k] = 0;
    return out;
}

/* Encode G's text with T: exactly G's ids, BOS + ids = G's ids_bos, and
 * the ids decode to G's decoded text. */
static void check_fgold(const tok *t, const struct fgold *g, const char *how,
                        int line)
{
    int32_t *ids = NULL;
    int n = tok_encode(t, g->text, strlen(g->text), &ids);
    cr_assert_geq(n, 0, "%s line %d: %s", how, line, err_msg());
    for (int i = 0; i < n && i < g->n; i++)
        cr_assert_eq(ids[i], g->ids[i],
                     "%s line %d (\"%.40s\"): id[%d] = %d, expected %d", how,
                     line, g->text, i, ids[i], g->ids[i]);
    cr_assert_eq(n, g->n, "%s line %d (\"%.40s\"): %d ids, expected %d", how,
                 line, g->text, n, g->n);
    cr_assert(g->bos == -2 || tok_bos_id(t) == g->bos,
              "%s line %d: BOS %d, the template puts %d first", how, line,
              tok_bos_id(t), g->bos);
    char *raw;
    int m = tok_decode(t, ids, (size_t)n, &raw);
    cr_assert_geq(m, 0, "%s line %d: %s", how, line, err_msg());
    char *s = lossy(raw, (size_t)m);
    free(raw);
    m = (int)strlen(s);
    cr_assert_eq((size_t)m, strlen(g->decoded),
                 "%s line %d: decoded \"%s\", expected \"%s\"", how, line, s,
                 g->decoded);
    cr_assert_eq(memcmp(s, g->decoded, (size_t)m), 0,
                 "%s line %d: decoded \"%s\", expected \"%s\"", how, line, s,
                 g->decoded);
    free(s);
    free(ids);
}

/* Every line of DIR/golden.jsonl. @return the number of lines. */
static int check_family(const tok *t, const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden.jsonl", dir);
    char *all = slurp(path, NULL);
    int k = 0;
    char *save = NULL;
    for (char *line = strtok_r(all, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        cr_assert_not_null(j, "%s: bad line %d", path, k + 1);
        struct fgold g;
        fgold_parse(j, NULL, &g);
        check_fgold(t, &g, dir, ++k);
        free(g.ids);
        cJSON_Delete(j);
    }
    free(all);
    cr_assert_geq(k, 130, "%s has %d lines", path, k);
    return k;
}

static void eos_is(const tok *t, const int32_t *want, int n)
{
    const int32_t *eos;
    int k = tok_eos_ids(t, &eos);
    cr_assert_eq(k, n, "%d EOS ids, expected %d", k, n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(eos[i], want[i], "eos[%d] = %d, expected %d", i, eos[i],
                     want[i]);
}

/* The id of token S, found by encoding it (it is an added token). */
static int32_t id_of(const tok *t, const char *s)
{
    int32_t a[4];
    cr_assert_eq(enc(t, s, a, 4), 1, "\"%s\" is not one token", s);
    return a[0];
}

Test(tok, family_llama3)
{
    tok *t = load_ok(FIX "/tok-llama3");
    check_family(t, FIX "/tok-llama3");
    /* BOS from the post-processor's template; EOS the list of
     * generation_config.json, not config.json's single id */
    cr_assert_eq(tok_bos_id(t), id_of(t, "<|begin_of_text|>"));
    int32_t want[3] = {id_of(t, "<|end_of_text|>"), id_of(t, "<|eom_id|>"),
                       id_of(t, "<|eot_id|>")};
    eos_is(t, want, 3);
    tok_destroy(t);
}

Test(tok, family_qwen2)
{
    tok *t = load_ok(FIX "/tok-qwen2");
    check_family(t, FIX "/tok-qwen2");
    cr_assert_eq(tok_bos_id(t), -1, "Qwen2 adds no BOS");
    int32_t want[2] = {id_of(t, "<|im_end|>"), id_of(t, "<|endoftext|>")};
    eos_is(t, want, 2);
    tok_destroy(t);
}

Test(tok, family_neox)
{
    tok *t = load_ok(FIX "/tok-neox");
    check_family(t, FIX "/tok-neox");
    cr_assert_eq(tok_bos_id(t), -1, "GPT-NeoX adds no BOS");
    int32_t want[1] = {0};
    eos_is(t, want, 1); /* config.json's: there is no generation_config */
    tok_destroy(t);
}

Test(tok, family_llama2)
{
    tok *t = load_ok(FIX "/tok-llama2");
    check_family(t, FIX "/tok-llama2");
    cr_assert_eq(tok_bos_id(t), 1, "add_bos_token: <s>");
    int32_t want[1] = {2};
    eos_is(t, want, 1);
    tok_destroy(t);
}

Test(tok, family_mistral)
{
    tok *t = load_ok(FIX "/tok-mistral");
    check_family(t, FIX "/tok-mistral");
    cr_assert_eq(tok_bos_id(t), 1, "add_bos_token: <s>");
    int32_t want[1] = {2};
    eos_is(t, want, 1);
    tok_destroy(t);
}

/* ROOT with each "a.b.c": value of SET put in place. */
static void json_set_paths(cJSON *root, const cJSON *set)
{
    for (const cJSON *kv = set->child; kv; kv = kv->next) {
        char path[256];
        snprintf(path, sizeof path, "%s", kv->string);
        cJSON *o = root;
        char *key = path;
        for (char *dot; (dot = strchr(key, '.')); key = dot + 1) {
            *dot = 0;
            o = cJSON_GetObjectItem(o, key);
            cr_assert(cJSON_IsObject(o), "no object at %s", kv->string);
        }
        cJSON *v = cJSON_Duplicate(kv, 1);
        if (cJSON_GetObjectItem(o, key))
            cJSON_ReplaceItemInObject(o, key, v);
        else
            cJSON_AddItemToObject(o, key, v);
    }
}

/* A directory holding tok-FAMILY's tokenizer.json changed by SET. */
static char *variant_dir(const char *family, const cJSON *set)
{
    char path[512];
    snprintf(path, sizeof path, FIX "/tok-%s/tokenizer.json", family);
    char *text = slurp(path, NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(root);
    json_set_paths(root, set);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    char *d = tmpdir();
    putstr(d, "tokenizer.json", out);
    free(out);
    return d;
}

/* The lines of one family's golden.jsonl, read when first asked for. */
struct golden_lines {
    char family[32];
    cJSON *lines; /* free with cJSON_Delete */
};

/* The text of line LINE (from 1) of tok-FAMILY/golden.jsonl. */
static const char *golden_text(struct golden_lines *gl, const char *family,
                               int line)
{
    if (strcmp(gl->family, family) != 0) {
        cJSON_Delete(gl->lines);
        gl->lines = cJSON_CreateArray();
        char path[512], *save = NULL;
        snprintf(path, sizeof path, FIX "/tok-%s/golden.jsonl", family);
        char *all = slurp(path, NULL);
        for (char *l = strtok_r(all, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
            cJSON_AddItemToArray(gl->lines, cJSON_Parse(l));
        free(all);
        snprintf(gl->family, sizeof gl->family, "%s", family);
    }
    const cJSON *j = cJSON_GetArrayItem(gl->lines, line - 1);
    cr_assert_not_null(j, "tok-%s/golden.jsonl has no line %d", family, line);
    return cJSON_GetObjectItem(j, "text")->valuestring;
}

/* tok_variants.jsonl: the pipelines no family fixture uses (Metaspace
 * prepend_scheme always/never and split, ByteLevel add_prefix_space and
 * without its regex, ignore_merges off, no normalizer, the Metaspace
 * decoder), each on a share of the texts. */
Test(tok, family_variants)
{
    char *all = slurp(FIX "/tok_variants.jsonl", NULL);
    char *save = NULL, *key = NULL;
    tok *t = NULL;
    struct golden_lines gl = {{0}, NULL};
    int k = 0, variants = 0;
    for (char *line = strtok_r(all, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        cr_assert_not_null(j, "tok_variants.jsonl: bad line %d", k + 1);
        const cJSON *fam = cJSON_GetObjectItem(j, "family");
        const cJSON *set = cJSON_GetObjectItem(j, "set");
        char *this_key = cJSON_PrintUnformatted(set);
        char how[300];
        snprintf(how, sizeof how, "%s %s", fam->valuestring, this_key);
        if (!key || strcmp(key, this_key) != 0 || !t) {
            tok_destroy(t);
            char *d = variant_dir(fam->valuestring, set);
            t = load_ok(d);
            rmtree(d);
            variants++;
        }
        free(key);
        key = this_key;
        int line_no = cJSON_GetObjectItem(j, "line")->valueint;
        const char *text = golden_text(&gl, fam->valuestring, line_no);
        struct fgold g;
        fgold_parse(j, text, &g);
        check_fgold(t, &g, how, line_no);
        free(g.ids);
        cJSON_Delete(j);
        k++;
    }
    tok_destroy(t);
    cJSON_Delete(gl.lines);
    free(key);
    free(all);
    cr_assert_eq(variants, 10, "%d variants", variants);
    cr_assert_geq(k, 600);
}

/* ------------------------------------------ Llama-3 and Qwen2 regexes */

static void split_pieces(enum tok_split re, const char *s,
                         const char *const *want, int n_want)
{
    size_t len = strlen(s), pos = 0;
    int k = 0;
    while (pos < len) {
        size_t end = tok_split_next(re, s, len, pos);
        cr_assert_gt(end, pos);
        cr_assert_lt(k, n_want, "\"%s\": more pieces than expected", s);
        cr_assert_eq(end - pos, strlen(want[k]), "\"%s\" piece %d: \"%.*s\"",
                     s, k, (int)(end - pos), s + pos);
        cr_assert_eq(memcmp(s + pos, want[k], end - pos), 0);
        pos = end;
        k++;
    }
    cr_assert_eq(k, n_want, "\"%s\": %d pieces, expected %d", s, k, n_want);
}

#define SPLIT(re, s, ...)                                                \
    do {                                                                 \
        static const char *const w_[] = {__VA_ARGS__};                   \
        split_pieces(re, s, w_, (int)(sizeof w_ / sizeof *w_));          \
    } while (0)

/* Pieces as `tokenizers`' Split(Regex(...), "isolated") gives them. */
Test(tok, split_llama3_qwen2)
{
    for (int r = 0; r < 2; r++) {
        enum tok_split re = r ? TOK_SPLIT_QWEN2 : TOK_SPLIT_LLAMA3;
        SPLIT(re, "Hello world", "Hello", " world");
        /* contractions in any case, long s as s, only at a piece start */
        SPLIT(re, "I'M we'LL 'S 'Re", "I", "'M", " we", "'LL", " '", "S",
              " '", "Re");
        SPLIT(re, "x'\xc5\xbfy x'Re x'LLy x'd", "x", "'\xc5\xbf", "y", " x",
              "'Re", " x", "'LL", "y", " x", "'d");
        SPLIT(re, "don't", "don", "'t");
        /* one non-letter, non-digit, non-CR/LF before letters */
        SPLIT(re, "(hello)", "(hello", ")");
        SPLIT(re, "\tword \t!", "\tword", " ", "\t", "!");
        SPLIT(re, "\xf0\x9f\x98\x80" "abc \xf0\x9f\x98\x80\xf0\x9f\x98\x80",
              "\xf0\x9f\x98\x80" "abc", " \xf0\x9f\x98\x80\xf0\x9f\x98\x80");
        SPLIT(re, "e\xcc\x81t", "e", "\xcc\x81t");
        /* whitespace: up to the last CR/LF of a run, else all but one */
        SPLIT(re, "a  b", "a", " ", " b");
        SPLIT(re, "a\n\nb", "a", "\n\n", "b");
        SPLIT(re, "a \n \n  b", "a", " \n \n", " ", " b");
        SPLIT(re, "!!\n\nabc", "!!\n\n", "abc");
        SPLIT(re, "\r\r\n x", "\r\r\n", " x");
        SPLIT(re, "caf\xc3\xa9\r\n", "caf\xc3\xa9", "\r\n");
        SPLIT(re, "end  ", "end", "  ");
        SPLIT(re, "a\xc2\x85\xc2\x85" "b\xe2\x80\xa8", "a", "\xc2\x85",
              "\xc2\x85" "b", "\xe2\x80\xa8");
        SPLIT(re, "x\xc2\xa0y", "x", "\xc2\xa0y");
    }
    /* digits: runs of up to 3 (Llama-3), one each (Qwen2); Unicode 16
     * digits as Oniguruma has them */
    SPLIT(TOK_SPLIT_LLAMA3, "12345 x", "123", "45", " x");
    SPLIT(TOK_SPLIT_QWEN2, "12345 x", "1", "2", "3", "4", "5", " x");
    SPLIT(TOK_SPLIT_LLAMA3, "\xc2\xbd\xc2\xb2\xe2\x91\xa0 1 23",
          "\xc2\xbd\xc2\xb2\xe2\x91\xa0", " ", "1", " ", "23");
    SPLIT(TOK_SPLIT_LLAMA3,
          "1\xf0\x90\xb5\x80\xf0\x90\xb5\x81\xf0\x90\xb5\x82\xf0\x90\xb5\x83 "
          "a\xe1\xb2\x89" "b",
          "1\xf0\x90\xb5\x80\xf0\x90\xb5\x81",
          "\xf0\x90\xb5\x82\xf0\x90\xb5\x83", " a\xe1\xb2\x89" "b");
    SPLIT(TOK_SPLIT_GPT2, "I'M 123", "I", "'", "M", " 123");
}

/* ---------------------------------------------------- BOS and EOS */

static int bos_of(const char *d)
{
    tok *t = load_ok(d);
    int b = tok_bos_id(t);
    tok_destroy(t);
    return b;
}

static void copy_fixture(const char *d, const char *family, const char *name)
{
    char p[512];
    size_t len;
    snprintf(p, sizeof p, FIX "/tok-%s/%s", family, name);
    char *text = slurp(p, &len);
    put(d, name, text, len);
    free(text);
}

/* tok_bos_id's four rules, in order. */
Test(tok, bos_rules)
{
    char *d = tmpdir();
    copy_fixture(d, "llama3", "tokenizer.json"); /* template: begin_of_text */
    tok *t = load_ok(d);
    int32_t begin = id_of(t, "<|begin_of_text|>"), eot = id_of(t, "<|eot_id|>");
    const int32_t *eos;
    cr_assert_eq(tok_eos_ids(t, &eos), 0, "no config: no EOS");
    cr_assert_null(eos);
    tok_destroy(t);
    cr_assert_eq(bos_of(d), begin, "rule 2: the template");
    putstr(d, "tokenizer_config.json", "{\"add_bos_token\": false}");
    cr_assert_eq(bos_of(d), -1, "rule 1: add_bos_token false wins");
    putstr(d, "tokenizer_config.json",
           "{\"add_bos_token\": true, \"bos_token\": {\"content\": "
           "\"<|eot_id|>\", \"__type\": \"AddedToken\"}}");
    cr_assert_eq(bos_of(d), eot, "rule 1: bos_token as an object");
    putstr(d, "tokenizer_config.json", "{\"add_bos_token\": true}");
    putstr(d, "config.json", "{\"bos_token_id\": 5}");
    cr_assert_eq(bos_of(d), 5, "rule 1: config.json's bos_token_id");
    putstr(d, "tokenizer_config.json",
           "{\"add_bos_token\": true, \"bos_token\": \"<nope>\"}");
    load_fails(d, -EINVAL, "bos_token \"<nope>\" is not in");
    rmtree(d);

    d = tmpdir();
    copy_fixture(d, "qwen2", "tokenizer.json"); /* no template */
    putstr(d, "config.json", "{\"bos_token_id\": 7}");
    cr_assert_eq(bos_of(d), 7, "rule 4: config.json without tokenizer_config");
    putstr(d, "tokenizer_config.json", "{\"bos_token\": null}");
    cr_assert_eq(bos_of(d), -1, "rule 3: tokenizer_config.json says nothing");
    rmtree(d);
}

/* EOS: generation_config.json's, else config.json's; an id or a list. */
Test(tok, eos_ids)
{
    char *d = tmpdir();
    copy_fixture(d, "qwen2", "tokenizer.json");
    putstr(d, "config.json", "{\"eos_token_id\": [3, 4]}");
    tok *t = load_ok(d);
    int32_t a[2] = {3, 4}, b[1] = {9};
    eos_is(t, a, 2);
    tok_destroy(t);
    putstr(d, "generation_config.json", "{\"eos_token_id\": 9}");
    t = load_ok(d);
    eos_is(t, b, 1);
    tok_destroy(t);
    putstr(d, "generation_config.json", "{\"eos_token_id\": null}");
    t = load_ok(d);
    eos_is(t, a, 2);
    tok_destroy(t);
    putstr(d, "config.json", "{\"eos_token_id\": [1, -2]}");
    load_fails(d, -EINVAL, "config.json: eos_token_id must be a token id or "
                           "a list of them");
    putstr(d, "config.json", "{\"eos_token_id\": \"</s>\"}");
    load_fails(d, -EINVAL, "eos_token_id must be");
    putstr(d, "config.json", "{\"eos_token_id\": 2");
    load_fails(d, -EINVAL, "config.json: not a valid JSON object");
    rmtree(d);
}

/* tokenizer_config.json settings that would change the ids. */
Test(tok, tokenizer_config_refusals)
{
    char *d = tmpdir();
    copy_fixture(d, "llama2", "tokenizer.json");
    putstr(d, "tokenizer_config.json", "{\"add_eos_token\": true}");
    load_fails(d, -ENOTSUP, "add_eos_token is true");
    putstr(d, "tokenizer_config.json", "{\"split_special_tokens\": true}");
    load_fails(d, -ENOTSUP, "split_special_tokens is true");
    rmtree(d);
}

/* Everything of tokenizer.json flexh2o does not run: -ENOTSUP naming it. */
Test(tok, tokenizer_json_refusals)
{
    static const struct {
        const char *family, *set, *msg;
    } cases[] = {
        {"llama3", "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
         "pre_tokenizer type \"Whitespace\" is not supported"},
        {"llama3", "{\"pre_tokenizer\": {\"type\": \"Sequence\", "
                   "\"pretokenizers\": [{\"type\": \"Digits\"}]}}",
         "pre_tokenizer.pretokenizers[0] type \"Digits\""},
        {"llama3", "{\"pre_tokenizer.pretokenizers\": [{\"type\": \"Split\", "
                   "\"pattern\": {\"Regex\": \"\\\\s+\"}, \"behavior\": "
                   "\"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
                   "\"use_regex\": false}]}",
         "Split regex \"\\s+\" is not one flexh2o runs"},
        {"qwen2", "{\"pre_tokenizer.pretokenizers\": [{\"type\": \"Split\", "
                  "\"pattern\": {\"Regex\": \"\\\\s+\"}, \"behavior\": "
                  "\"Removed\", \"invert\": false}, {\"type\": \"ByteLevel\"}]}",
         "Split behavior \"Removed\" is not supported"},
        {"neox", "{\"normalizer\": {\"type\": \"NFKC\"}}",
         "normalizer type \"NFKC\" is not supported"},
        {"neox", "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": "
                 "[{\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]}}",
         "normalizer.normalizers[1] type \"Lowercase\""},
        {"llama2", "{\"normalizer.normalizers\": [{\"type\": \"Replace\", "
                   "\"pattern\": {\"Regex\": \" +\"}, \"content\": \"x\"}]}",
         "Replace with a Regex pattern is not supported"},
        {"neox", "{\"decoder\": {\"type\": \"WordPiece\"}}",
         "decoder type \"WordPiece\" is not supported"},
        {"llama2", "{\"decoder.decoders\": [{\"type\": \"CTC\"}]}",
         "decoder.decoders[0] type \"CTC\""},
        {"neox", "{\"model.dropout\": 0.1}", "model.dropout is set"},
        {"neox", "{\"truncation\": {\"max_length\": 8}}", "truncation is set"},
        {"neox", "{\"post_processor\": {\"type\": \"RobertaProcessing\"}}",
         "post_processor type \"RobertaProcessing\""},
        {"llama2", "{\"post_processor.single\": [{\"Sequence\": {\"id\": "
                   "\"A\"}}, {\"SpecialToken\": {\"id\": \"</s>\"}}]}",
         "post_processor.single[1] adds \"</s>\""},
        {"mistral", "{\"pre_tokenizer.prepend_scheme\": \"sometimes\"}",
         "prepend_scheme \"sometimes\" is not"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *set = cJSON_Parse(cases[i].set);
        cr_assert_not_null(set, "case %zu", i);
        char *d = variant_dir(cases[i].family, set);
        cJSON_Delete(set);
        load_fails(d, -ENOTSUP, cases[i].msg);
        rmtree(d);
    }
}

/* An added token must keep the id model.vocab gives its text, as
 * `tokenizers` would silently re-number it. */
Test(tok, added_token_id_mismatch)
{
    cJSON *set = cJSON_Parse("{\"added_tokens\": [{\"id\": 5000, \"content\": "
                             "\"<s>\", \"special\": true}]}");
    char *d = variant_dir("llama2", set);
    cJSON_Delete(set);
    load_fails(d, -EINVAL, "added_tokens gives \"<s>\" id 5000, model.vocab id 1");
    rmtree(d);
}

/* ------------------------------------------- the CLI on these directories */

TestSuite(tok_cli, .init = cli_setup, .fini = cli_teardown);

/* `flexh2o tokenize` prints BOS (where the model adds one: HAS_BOS) and
 * the ids of tok_encode for each line. */
static void tokenize_is(const char *family, const char *line, int has_bos)
{
    char cmd[800];
    cli_write("t.txt", line);
    snprintf(cmd, sizeof cmd, "tokenize --model %s/tok-%s < %s/t.txt", FIX,
             family, cli_dir);
    cr_assert_eq(cli_run("%s", cmd), 0, "%s: %s", family, cli_err);
    char *out = cli_read("stdout.txt");
    char dir[512];
    snprintf(dir, sizeof dir, FIX "/tok-%s", family);
    tok *t = load_ok(dir);
    int bos = tok_bos_id(t);
    cr_assert_eq(bos >= 0, has_bos, "%s: BOS %d", family, bos);
    int32_t *ids;
    size_t len = strchr(line, '\n') ? (size_t)(strchr(line, '\n') - line)
                                    : strlen(line);
    int n = tok_encode(t, line, len, &ids);
    char want[4096];
    int k = snprintf(want, sizeof want, "[");
    if (bos >= 0)
        k += snprintf(want + k, sizeof want - (size_t)k, "%d%s", bos,
                      n ? ", " : "");
    for (int i = 0; i < n; i++)
        k += snprintf(want + k, sizeof want - (size_t)k, "%d%s", ids[i],
                      i + 1 < n ? ", " : "");
    snprintf(want + k, sizeof want - (size_t)k, "]\n");
    cr_assert_eq(strncmp(out, want, strlen(want)), 0, "%s: \"%s\", want \"%s\"",
                 family, out, want);
    free(ids);
    free(out);
    tok_destroy(t);
}

/* The fixtures' config.json say model_type llama, qwen2, gpt_neox,
 * mistral: tokenize reads only the tokenizer's files. */
Test(tok_cli, tokenize_families)
{
    tokenize_is("llama3", "Hello world, 12345 <|eot_id|>\n", 1);
    tokenize_is("llama3", "\n", 1);
    tokenize_is("qwen2", "Bonjour ! 你好<|im_end|>\n", 0);
    tokenize_is("qwen2", "\n", 0);
    tokenize_is("neox", "a  b\tcafe\xcc\x81\n", 0);
    tokenize_is("llama2", "<s>[INST] hi \xf0\x9f\x98\x80 [/INST]\n", 1);
    tokenize_is("mistral", "<s>[INST] hi \xf0\x9f\x98\x80 [/INST]\n", 1);
}

/* Generation stops on any id of the set: every id of the tiny model's
 * vocabulary listed as EOS in generation_config.json ends each prompt
 * after one token; --ignore-eos still runs to --max-new-tokens. */
Test(tok_cli, generation_stops_on_any_eos)
{
    cr_assert_eq(cli_run("make-model --config tiny --out m"), 0, "%s", cli_err);
    char list[8192];
    int k = snprintf(list, sizeof list, "{\"eos_token_id\": [");
    for (int i = 0; i < 512; i++)
        k += snprintf(list + k, sizeof list - (size_t)k, "%d%s", i,
                      i < 511 ? ", " : "]}\n");
    cli_write("m/generation_config.json", list);
    cli_write("p.jsonl", "{\"prompt\": \"Once upon a time\"}\n"
                         "{\"prompt\": \"Hello\"}\n");
    cr_assert_eq(cli_run("generate --model m --prompts p.jsonl --out o.jsonl "
                         "--quiet --max-new-tokens 6"), 0, "%s", cli_err);
    char *o = cli_read("o.jsonl");
    int lines = 0;
    for (char *l = strtok(o, "\n"); l; l = strtok(NULL, "\n"), lines++) {
        cJSON *r = cJSON_Parse(l);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(r, "tokens")), 1, "%s", l);
        cr_assert_str_eq(cJSON_GetObjectItem(r, "finish_reason")->valuestring, "eos");
        cJSON_Delete(r);
    }
    free(o);
    cr_assert_eq(lines, 2);
    cr_assert_eq(cli_run("generate --model m --prompts p.jsonl --out o2.jsonl "
                         "--quiet --max-new-tokens 6 --ignore-eos"), 0, "%s", cli_err);
    o = cli_read("o2.jsonl");
    cr_assert(strstr(o, "\"finish_reason\": \"length\"") ||
                  strstr(o, "\"finish_reason\":\"length\""), "%s", o);
    cr_assert_null(strstr(o, "eos"), "%s", o);
    free(o);
}

/* Text prompts get tok_bos_id first, or nothing when the model adds no
 * BOS (Qwen2); an empty text is then no prompt at all. */
Test(tok_cli, prompts_bos_from_tokenizer)
{
    tok *t = load_ok(FIX "/tok-qwen2");
    cli_write("p.jsonl", "{\"id\": 1, \"prompt\": \"hi\"}\n"
                         "{\"id\": 2, \"prompt\": \"\"}\n");
    char path[512];
    snprintf(path, sizeof path, "%s/p.jsonl", cli_dir);
    job_prompts ps;
    err_clear();
    job_load_opts lo = {.t = t, .bos = tok_bos_id(t), .vocab = tok_vocab_size(t), .max_len = 100,
                        .chat_template = -1};
    cr_assert_eq(job_prompts_load(path, &lo, &ps), 0, "%s", err_msg());
    cr_assert_eq(ps.n, 1);
    cr_assert_eq(ps.n_bad, 1);
    int32_t want[8];
    int n = enc(t, "hi", want, 8);
    cr_assert_eq(ps.p[0].n_ids, n);
    cr_assert_eq(memcmp(ps.p[0].ids, want, (size_t)n * sizeof *want), 0);
    job_prompts_free(&ps);
    lo.strict = 1;
    cr_assert_eq(job_prompts_load(path, &lo, &ps), -EINVAL);
    cr_assert(strstr(err_msg(), "p.jsonl:2: the prompt is empty and the model "
                                "adds no BOS"), "%s", err_msg());
    tok_destroy(t);
}

/* tok_check_vocab <- (t, V, "m/config.json") fails, naming want_file and
 * want (the id in its words). */
static void vocab_refused(const tok *t, int V, const char *want_file, const char *want)
{
    err_clear();
    cr_assert_eq(tok_check_vocab(t, V, "m/config.json"), -EINVAL,
                 "a tokenizer giving %s was accepted for a vocabulary of %d", want, V);
    cr_assert(strstr(err_msg(), want_file) && strstr(err_msg(), want) &&
                  strstr(err_msg(), "vocab_size") && strstr(err_msg(), "m/config.json"),
              "unclear message: %s (want %s, %s)", err_msg(), want_file, want);
}

/* Where a tokenizer meets a model, every id it can give (vocabulary,
 * added tokens, BOS, EOS) must be a row of the model's embedding table:
 * one past it is refused, naming the file that gives it and the id. */
Test(tok, ids_past_the_model_vocabulary_are_refused)
{
    char *d = tmpdir();
    /* vocab.json + merges.txt, then tokenizer.json alone */
    put_copy(d, "vocab.json");
    put_copy(d, "merges.txt");
    for (int pass = 0; pass < 2; pass++) {
        if (pass) {
            char p[512];
            snprintf(p, sizeof p, "%s/vocab.json", d);
            unlink(p);
            snprintf(p, sizeof p, "%s/merges.txt", d);
            unlink(p);
            put_copy(d, "tokenizer.json");
        }
        tok *t = load_ok(d);
        int V = tok_vocab_size(t);
        err_clear();
        cr_assert_eq(tok_check_vocab(t, V, "m/config.json"), 0, "%s", err_msg());
        char file[512], want[64];
        snprintf(file, sizeof file, "%s/%s", d, pass ? "tokenizer.json" : "vocab.json");
        snprintf(want, sizeof want, "token id %d (", V - 1);
        vocab_refused(t, V - 1, file, want);
        tok_destroy(t);
    }
    /* BOS from config.json, EOS from generation_config.json */
    /* a BOS past the tokenizer's own ids is refused at load already */
    putstr(d, "config.json", "{\"bos_token_id\": 100000}");
    tok *t = NULL;
    err_clear();
    cr_assert_eq(tok_load(d, &t), -EINVAL);
    cr_assert(strstr(err_msg(), "the BOS id 100000 is past the tokenizer's"), "%s", err_msg());
    char file[512];
    putstr(d, "config.json", "{\"bos_token_id\": 1}");
    t = load_ok(d);
    int V = tok_vocab_size(t);
    tok_destroy(t);
    putstr(d, "generation_config.json", "{\"eos_token_id\": [2, 70000]}");
    t = load_ok(d);
    snprintf(file, sizeof file, "%s/generation_config.json", d);
    vocab_refused(t, V, file, "eos_token_id 70000");
    err_clear();
    cr_assert_eq(tok_check_vocab(t, 70001, "m/config.json"), 0, "%s", err_msg());
    tok_destroy(t);
    rmtree(d);

    /* a post-processor's BOS id that is no id at all */
    d = tmpdir();
    size_t len;
    char *text = slurp(FIX "/tok-llama2/tokenizer.json", &len);
    const char *at = strstr(text, "\"ids\":[1]");
    cr_assert(at, "the fixture's template changed");
    char *bad = malloc(len + 16);
    int n = snprintf(bad, len + 16, "%.*s\"ids\":[-5]%s", (int)(at - text), text, at + 9);
    put(d, "tokenizer.json", bad, (size_t)n);
    free(bad);
    free(text);
    load_fails(d, -EINVAL, "post_processor.special_tokens[\"<s>\"].ids[0] is -5");
    rmtree(d);
}
