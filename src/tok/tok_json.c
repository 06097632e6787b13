/* tok_json.c: reading tokenizer.json (and vocab.json) into a tok_src.
 *
 *   model           BPE: vocab, merges ("a b" or ["a", "b"]), byte_fallback,
 *                   ignore_merges, unk_token, fuse_unk
 *   added_tokens    id, content, special, lstrip, rstrip, single_word,
 *                   normalized
 *   normalizer      NFC, Prepend, Replace (String), Sequence of them
 *   pre_tokenizer   ByteLevel; Split (a known Regex, Isolated) + ByteLevel;
 *                   Metaspace; none
 *   decoder         ByteLevel, Replace (String), ByteFallback, Fuse, Strip,
 *                   Metaspace, Sequence of them; none
 *   post_processor  ByteLevel (offsets only), TemplateProcessing (its
 *                   leading special token is the BOS, see tok_bos_id),
 *                   Sequence of them; none
 *
 * Anything else that changes the ids or the text is refused with -ENOTSUP
 * and a message naming the field, rather than tokenized differently from
 * `tokenizers`. A Split regex is recognised by its exact text: the three
 * there are scanners for (tok_pretok.c) are the ones models ship.
 */
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static const char *const split_regex[] = {
    [TOK_SPLIT_GPT2] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
                       "?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
    [TOK_SPLIT_LLAMA3] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                         "\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    [TOK_SPLIT_QWEN2] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                        "\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                        "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

static const cJSON *item(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *type_of(const cJSON *o)
{
    const cJSON *t = item(o, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static int is_null(const cJSON *o) { return !o || cJSON_IsNull(o); }

static int flag(const cJSON *o, const char *key, int def)
{
    const cJSON *v = item(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* The string O[KEY] into *out. WHERE names O in messages. */
static int get_str(const cJSON *o, const char *key, const char *name,
                   const char *where, struct tok_str *out)
{
    const cJSON *v = item(o, key);
    RETURN_IF(!cJSON_IsString(v), -EINVAL,
              "%s: %s.%s is missing or not a string; re-download "
              "tokenizer.json",
              name, where, key);
    size_t len = strlen(v->valuestring);
    RETURN_IF(len >= TOK_STR_MAX, -ENOTSUP,
              "%s: %s.%s \"%s\" is longer than flexh2o handles (%d bytes)",
              name, where, key, v->valuestring, TOK_STR_MAX - 1);
    memcpy(out->s, v->valuestring, len);
    out->len = len;
    return 0;
}

/* Replace's {"String": s} pattern (a Regex one is refused). */
static int get_pattern(const cJSON *o, const char *name, const char *where,
                       struct tok_str *out)
{
    const cJSON *pat = item(o, "pattern");
    RETURN_IF(!is_null(item(pat, "Regex")), -ENOTSUP,
              "%s: %s: Replace with a Regex pattern is not supported (only "
              "a String pattern)",
              name, where);
    return get_str(pat, "String", name, where, out);
}

/* -------------------------------------------------------------- model */

int tok_json_vocab(const cJSON *obj, const char *name, struct tok_src *src)
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
        src->v[src->nv++] = (struct tok_vocab_entry){
            .s = c->string, .len = strlen(c->string), .id = (int32_t)d};
    }
    return 0;
}

int tok_split_merge(const char *s, size_t len, struct tok_merge_entry *e)
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

/* model.merges: "a b" strings or ["a", "b"] lists. */
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
        struct tok_merge_entry *e = &src->m[src->nm];
        int ok;
        if (cJSON_IsString(c)) {
            ok = tok_split_merge(c->valuestring, strlen(c->valuestring), e) == 0;
        } else {
            const cJSON *a = cJSON_IsArray(c) ? c->child : NULL;
            const cJSON *b = a ? a->next : NULL;
            ok = cJSON_IsString(a) && cJSON_IsString(b) && !b->next;
            if (ok)
                *e = (struct tok_merge_entry){
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

static int read_model(const cJSON *model, const char *name, struct tok_src *src)
{
    RETURN_IF(!cJSON_IsObject(model), -EINVAL,
              "%s: no \"model\" object; re-download tokenizer.json", name);
    const cJSON *type = item(model, "type");
    RETURN_IF(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") != 0,
              -ENOTSUP,
              "%s: model.type is \"%s\"; flexh2o reads only BPE tokenizers "
              "(byte-level, or metaspace with byte fallback)",
              name, type->valuestring);
    static const char *const unset[] = {"continuing_subword_prefix",
                                        "end_of_word_suffix", "dropout"};
    for (size_t i = 0; i < sizeof unset / sizeof *unset; i++) {
        const cJSON *v = item(model, unset[i]);
        int off = is_null(v) || (cJSON_IsString(v) && !v->valuestring[0]) ||
                  (cJSON_IsNumber(v) && v->valuedouble == 0);
        RETURN_IF(!off, -ENOTSUP,
                  "%s: model.%s is set; flexh2o does not run it (use a "
                  "tokenizer without it)",
                  name, unset[i]);
    }
    src->pipe.byte_fallback = flag(model, "byte_fallback", 0);
    src->pipe.ignore_merges = flag(model, "ignore_merges", 0);
    src->pipe.fuse_unk = flag(model, "fuse_unk", 0);
    const cJSON *unk = item(model, "unk_token");
    src->unk = cJSON_IsString(unk) ? unk->valuestring : NULL;
    FORWARD_IF(tok_json_vocab(item(model, "vocab"), name, src));
    return merges_from_json(item(model, "merges"), name, src);
}

/* ------------------------------------------------------- added tokens */

static int read_added(const cJSON *arr, const char *name, struct tok_src *src)
{
    if (is_null(arr))
        return 0;
    RETURN_IF(!cJSON_IsArray(arr), -EINVAL,
              "%s: added_tokens is not an array; re-download tokenizer.json",
              name);
    int n = cJSON_GetArraySize(arr), i = 0;
    src->a = malloc((n > 0 ? (size_t)n : 1) * sizeof *src->a);
    RETURN_IF(!src->a, -ENOMEM, "out of memory for %d added tokens", n);
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        const cJSON *id = item(c, "id"), *content = item(c, "content");
        double d = cJSON_IsNumber(id) ? id->valuedouble : -1;
        RETURN_IF(!(d >= 0 && d < TOK_MAX_ID && d == (double)(int32_t)d) ||
                      !cJSON_IsString(content),
                  -EINVAL,
                  "%s: added_tokens[%d] needs an \"id\" (0..%d) and a "
                  "\"content\" string; re-download tokenizer.json",
                  name, i, TOK_MAX_ID - 1);
        int special = flag(c, "special", 0);
        unsigned f = (special ? TOK_ADDED_SPECIAL : 0) |
                     (flag(c, "lstrip", 0) ? TOK_ADDED_LSTRIP : 0) |
                     (flag(c, "rstrip", 0) ? TOK_ADDED_RSTRIP : 0) |
                     (flag(c, "single_word", 0) ? TOK_ADDED_SINGLE_WORD : 0) |
                     (flag(c, "normalized", !special) ? TOK_ADDED_NORMALIZED : 0);
        src->a[src->na++] = (struct tok_added_entry){
            .s = content->valuestring, .len = strlen(content->valuestring),
            .id = (int32_t)d, .flags = f};
    }
    return 0;
}

/* --------------------------------------------------------- normalizer */

static int read_norm(const cJSON *n, const char *name, const char *where,
                     struct tok_pipe *p)
{
    if (is_null(n))
        return 0;
    const char *type = type_of(n);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = item(n, "normalizers");
        int i = 0;
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next, i++) {
            char w[64];
            snprintf(w, sizeof w, "normalizer.normalizers[%d]", i);
            FORWARD_IF(read_norm(c, name, w, p));
        }
        return 0;
    }
    RETURN_IF(p->n_norm == TOK_MAX_STEPS, -ENOTSUP,
              "%s: %s: more than %d normalizer steps", name, where,
              TOK_MAX_STEPS);
    struct tok_norm *s = &p->norm[p->n_norm];
    if (strcmp(type, "NFC") == 0) {
        s->kind = TOK_NORM_NFC;
    } else if (strcmp(type, "Prepend") == 0) {
        s->kind = TOK_NORM_PREPEND;
        FORWARD_IF(get_str(n, "prepend", name, where, &s->a));
    } else if (strcmp(type, "Replace") == 0) {
        s->kind = TOK_NORM_REPLACE;
        FORWARD_IF(get_pattern(n, name, where, &s->a));
        FORWARD_IF(get_str(n, "content", name, where, &s->b));
        RETURN_IF(s->a.len == 0, -ENOTSUP, "%s: %s: Replace of \"\"", name,
                  where);
    } else {
        RETURN_IF(1, -ENOTSUP,
                  "%s: %s type \"%s\" is not supported; flexh2o runs NFC, "
                  "Prepend and Replace (and a Sequence of them)",
                  name, where, type);
    }
    p->n_norm++;
    return 0;
}

/* ------------------------------------------------------ pre-tokenizer */

static int read_split(const cJSON *s, const char *name, const char *where,
                      struct tok_pretok *pre)
{
    const cJSON *re = item(item(s, "pattern"), "Regex");
    const cJSON *behavior = item(s, "behavior");
    RETURN_IF(!cJSON_IsString(re), -ENOTSUP,
              "%s: %s: Split needs a Regex pattern (a String one is not "
              "supported)",
              name, where);
    RETURN_IF(!cJSON_IsString(behavior) ||
                  strcmp(behavior->valuestring, "Isolated") != 0 ||
                  flag(s, "invert", 0),
              -ENOTSUP,
              "%s: %s: Split behavior \"%s\"%s is not supported (only "
              "Isolated, not inverted)",
              name, where,
              cJSON_IsString(behavior) ? behavior->valuestring : "",
              flag(s, "invert", 0) ? " with invert" : "");
    for (int k = 0; k < (int)(sizeof split_regex / sizeof *split_regex); k++)
        if (strcmp(re->valuestring, split_regex[k]) == 0) {
            pre->regex = k;
            return 0;
        }
    RETURN_IF(1, -ENOTSUP,
              "%s: %s: Split regex \"%.80s\" is not one flexh2o runs (GPT-2's, "
              "Llama-3's, Qwen2's)",
              name, where, re->valuestring);
}

static int read_metaspace(const cJSON *m, const char *name, const char *where,
                          struct tok_str *repl, enum tok_prepend *prepend)
{
    FORWARD_IF(get_str(m, "replacement", name, where, repl));
    RETURN_IF(repl->len == 0, -EINVAL, "%s: %s.replacement is empty", name,
              where);
    const cJSON *ps = item(m, "prepend_scheme");
    if (!cJSON_IsString(ps)) { /* files before `tokenizers` 0.15 */
        *prepend = flag(m, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS
                                                  : TOK_PREPEND_NEVER;
        return 0;
    }
    static const char *const names[] = {[TOK_PREPEND_ALWAYS] = "always",
                                        [TOK_PREPEND_FIRST] = "first",
                                        [TOK_PREPEND_NEVER] = "never"};
    for (int k = 0; k < 3; k++)
        if (strcmp(ps->valuestring, names[k]) == 0) {
            *prepend = (enum tok_prepend)k;
            return 0;
        }
    RETURN_IF(1, -ENOTSUP,
              "%s: %s.prepend_scheme \"%s\" is not first, always or never",
              name, where, ps->valuestring);
}

/* One step I of the N of a pre-tokenizer (a Sequence's, or N = 1). */
static int read_pre_step(const cJSON *s, int i, int n, const char *name,
                         const char *where, struct tok_pretok *pre)
{
    const char *type = type_of(s);
    if (strcmp(type, "ByteLevel") == 0) {
        RETURN_IF(i != n - 1, -ENOTSUP, "%s: %s: ByteLevel must come last",
                  name, where);
        int regex = flag(s, "use_regex", 1), prefix = flag(s, "add_prefix_space", 0);
        RETURN_IF(i > 0 && (regex || prefix), -ENOTSUP,
                  "%s: %s: ByteLevel after Split must have use_regex and "
                  "add_prefix_space false",
                  name, where);
        if (i == 0) {
            pre->regex = regex ? TOK_SPLIT_GPT2 : -1;
            pre->prefix_space = prefix;
        }
        pre->byte_level = 1;
        return 0;
    }
    if (strcmp(type, "Split") == 0) {
        RETURN_IF(i != 0 || n != 2, -ENOTSUP,
                  "%s: %s: a Split must be followed by ByteLevel, nothing "
                  "else",
                  name, where);
        return read_split(s, name, where, pre);
    }
    if (strcmp(type, "Metaspace") == 0) {
        RETURN_IF(n != 1, -ENOTSUP, "%s: %s: Metaspace must be alone", name,
                  where);
        pre->metaspace = 1;
        pre->msplit = flag(s, "split", 1);
        return read_metaspace(s, name, where, &pre->repl, &pre->prepend);
    }
    RETURN_IF(1, -ENOTSUP,
              "%s: %s type \"%s\" is not supported; flexh2o runs ByteLevel, "
              "Split (GPT-2, Llama-3, Qwen2 regex) + ByteLevel, and Metaspace",
              name, where, type);
}

static int read_pre(const cJSON *pre, const char *name, struct tok_pretok *out)
{
    *out = (struct tok_pretok){.regex = -1};
    if (is_null(pre))
        return 0;
    if (strcmp(type_of(pre), "Sequence") != 0)
        return read_pre_step(pre, 0, 1, name, "pre_tokenizer", out);
    const cJSON *list = item(pre, "pretokenizers");
    int n = cJSON_GetArraySize(list), i = 0;
    RETURN_IF(n == 0, -ENOTSUP, "%s: pre_tokenizer is an empty Sequence",
              name);
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        char w[64];
        snprintf(w, sizeof w, "pre_tokenizer.pretokenizers[%d]", i);
        FORWARD_IF(read_pre_step(c, i, n, name, w, out));
    }
    return 0;
}

/* ------------------------------------------------------------ decoder */

static int read_dec_step(const cJSON *d, const char *name, const char *where,
                         struct tok_dec *s)
{
    const char *type = type_of(d);
    *s = (struct tok_dec){0};
    if (strcmp(type, "ByteLevel") == 0) {
        s->kind = TOK_DEC_BYTE_LEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        s->kind = TOK_DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        s->kind = TOK_DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        s->kind = TOK_DEC_REPLACE;
        FORWARD_IF(get_pattern(d, name, where, &s->a));
        FORWARD_IF(get_str(d, "content", name, where, &s->b));
        RETURN_IF(s->a.len == 0, -ENOTSUP, "%s: %s: Replace of \"\"", name,
                  where);
    } else if (strcmp(type, "Strip") == 0) {
        s->kind = TOK_DEC_STRIP;
        FORWARD_IF(get_str(d, "content", name, where, &s->a));
        const cJSON *a = item(d, "start"), *b = item(d, "stop");
        RETURN_IF(!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valueint < 0 ||
                      b->valueint < 0 || s->a.len == 0,
                  -EINVAL, "%s: %s: Strip needs content, start and stop", name,
                  where);
        s->start = a->valueint;
        s->stop = b->valueint;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = TOK_DEC_METASPACE;
        FORWARD_IF(read_metaspace(d, name, where, &s->a, &s->prepend));
    } else {
        RETURN_IF(1, -ENOTSUP,
                  "%s: %s type \"%s\" is not supported; flexh2o runs "
                  "ByteLevel, Replace, ByteFallback, Fuse, Strip and Metaspace",
                  name, where, type);
    }
    return 0;
}

static int read_dec(const cJSON *d, const char *name, const char *where,
                    struct tok_pipe *p)
{
    if (strcmp(type_of(d), "Sequence") != 0) {
        RETURN_IF(p->n_dec == TOK_MAX_STEPS, -ENOTSUP,
                  "%s: %s: more than %d decoder steps", name, where,
                  TOK_MAX_STEPS);
        FORWARD_IF(read_dec_step(d, name, where, &p->dec[p->n_dec]));
        p->n_dec++;
        return 0;
    }
    const cJSON *list = item(d, "decoders");
    int i = 0;
    for (const cJSON *c = list ? list->child : NULL; c; c = c->next, i++) {
        char w[64];
        snprintf(w, sizeof w, "decoder.decoders[%d]", i);
        FORWARD_IF(read_dec(c, name, w, p));
    }
    return 0;
}

/* ----------------------------------------------------- post-processor */

/* TemplateProcessing's "single": [SpecialToken]? Sequence A, nothing after. */
static int read_template(const cJSON *tp, const char *name, struct tok_src *src)
{
    const cJSON *single = item(tp, "single");
    int seen_a = 0, i = 0;
    src->has_template = 1;
    for (const cJSON *c = cJSON_IsArray(single) ? single->child : NULL; c;
         c = c->next, i++) {
        const cJSON *sp = item(c, "SpecialToken");
        const cJSON *id = item(sp, "id");
        if (!is_null(item(c, "Sequence")) && !seen_a) {
            seen_a = 1;
            continue;
        }
        RETURN_IF(seen_a || !cJSON_IsString(id) || src->template_bos, -ENOTSUP,
                  "%s: post_processor.single[%d] adds %s%s%s to the text; "
                  "flexh2o adds no more than one BOS before it",
                  name, i, cJSON_IsString(id) ? "\"" : "a second text",
                  cJSON_IsString(id) ? id->valuestring : "",
                  cJSON_IsString(id) ? "\"" : "");
        src->template_bos = id->valuestring;
    }
    RETURN_IF(!seen_a, -EINVAL,
              "%s: post_processor.single has no $A; re-download tokenizer.json",
              name);
    src->template_bos_id = -1;
    if (src->template_bos) {
        const cJSON *ids = item(item(item(tp, "special_tokens"), src->template_bos),
                                "ids");
        double d = cJSON_GetArraySize(ids) == 1 && cJSON_IsNumber(ids->child)
                       ? ids->child->valuedouble : -1;
        /* checked before the cast: 1e300 as an int is undefined (found by
         * tests/fuzz/fuzz_tok_json.c); past the vocabulary: tok_config.c */
        RETURN_IF(d != -1 && !(d >= 0 && d < TOK_MAX_ID && d == (double)(int32_t)d), -EINVAL,
                  "%s: post_processor.special_tokens[\"%s\"].ids is not a token id; "
                  "re-download tokenizer.json", name, src->template_bos);
        src->template_bos_id = (int32_t)d;
    }
    return 0;
}

static int read_post(const cJSON *pp, const char *name, struct tok_src *src)
{
    if (is_null(pp))
        return 0;
    const char *type = type_of(pp);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = item(pp, "processors");
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next)
            FORWARD_IF(read_post(c, name, src));
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0)
        return 0; /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0)
        return read_template(pp, name, src);
    RETURN_IF(1, -ENOTSUP,
              "%s: post_processor type \"%s\" is not supported; flexh2o "
              "reads ByteLevel and TemplateProcessing",
              name, type);
}

/* --------------------------------------------------------------- all */

int tok_json_read(const cJSON *root, const char *name, struct tok_src *src)
{
    static const char *const unset[] = {"truncation", "padding"};
    for (size_t i = 0; i < 2; i++)
        RETURN_IF(!is_null(item(root, unset[i])), -ENOTSUP,
                  "%s: %s is set; flexh2o does not run it (set it to null)",
                  name, unset[i]);
    FORWARD_IF(read_model(item(root, "model"), name, src));
    FORWARD_IF(read_added(item(root, "added_tokens"), name, src));
    FORWARD_IF(read_norm(item(root, "normalizer"), name, "normalizer",
                         &src->pipe));
    FORWARD_IF(read_pre(item(root, "pre_tokenizer"), name, &src->pipe.pre));
    const cJSON *dec = item(root, "decoder");
    src->pipe.no_decoder = is_null(dec);
    if (!is_null(dec))
        FORWARD_IF(read_dec(dec, name, "decoder", &src->pipe));
    return read_post(item(root, "post_processor"), name, src);
}
