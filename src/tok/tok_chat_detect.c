/* tok_chat_detect.c: which template a Jinja text is, by the fingerprint of
 * its form.
 *
 * Feature tests ("has <|im_start|>") would take templates that differ in
 * one space or one default system message for each other, and render them
 * wrong without a word. So a text is recognised when its form equals that
 * of a revision flexh2o renders: the token stream Jinja's lexer makes of
 * it, with what does not change the output taken out.
 *
 *   text --newlines to \n, one trailing \n dropped (Jinja's lexer)-->
 *        --tags {{ }} {% %} {# #}, whitespace control -/+, trim_blocks,
 *          lstrip_blocks (transformers sets both)--> output text between
 *          tags ("D"), tag opens ("B", "V") and closes ("E"), and inside
 *          tags names ("N"), string literals by value ("S"), numbers
 *          ("I") and operator characters ("O"); comments dropped;
 *          ['name'] after an expression as .name
 *        --XXH3 of the stream--> fingerprint
 *
 * So layout, indentation absorbed by {%- / -%}, quotes, \n written as an
 * escape or as a newline, and message['role'] for message.role leave the
 * fingerprint alone; any other change gives another one.
 */
#include "tok_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"

/* The canonical token stream: each token a type byte, its text, a NUL. */
struct canon {
    char *p;
    size_t n, cap;
    int oom;
};

static void emit(struct canon *c, char type, const char *s, size_t len)
{
    if (c->oom)
        return;
    if (c->n + len + 2 > c->cap) {
        size_t cap = 2 * (c->n + len + 2) + 256;
        char *p = realloc(c->p, cap);
        if (!p) {
            c->oom = 1;
            return;
        }
        c->p = p;
        c->cap = cap;
    }
    c->p[c->n++] = type;
    memcpy(c->p + c->n, s, len);
    c->n += len;
    c->p[c->n++] = 0;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

static int is_name0(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_name(char c)
{
    return is_name0(c) || (c >= '0' && c <= '9');
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The string literal at S[i] (its quote): its end (past the closing
 * quote) in *end and its value, with Python's unicode-escape escapes
 * undone as Jinja does, into OUT (at least as long as the literal).
 * @return the value's length, or -1 when the literal is not closed. */
static long string_at(const char *s, size_t n, size_t i, size_t *end,
                      char *out)
{
    char q = s[i];
    size_t o = 0, k = i + 1;
    for (; k < n && s[k] != q; k++) {
        if (s[k] != '\\' || k + 1 >= n) {
            out[o++] = s[k];
            continue;
        }
        char e = s[++k];
        static const char from[] = "ntrabfv\\'\"\n";
        static const char to[] = "\n\t\r\a\b\f\v\\'\"";
        const char *f = e ? strchr(from, e) : NULL;
        int digits = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (f && e == '\n') {
            continue; /* a backslash-newline is nothing */
        } else if (f) {
            out[o++] = to[f - from];
        } else if (digits && k + (size_t)digits < n) {
            uint32_t cp = 0;
            int ok = 1;
            for (int d = 1; d <= digits; d++) {
                int h = hexval(s[k + (size_t)d]);
                ok &= h >= 0;
                cp = cp * 16 + (uint32_t)(h < 0 ? 0 : h);
            }
            if (ok && cp <= 0x10ffff) {
                o += put_utf8(cp, out + o); /* never longer than the escape */
                k += (size_t)digits;
            } else {
                out[o++] = '\\';
                out[o++] = e;
            }
        } else {
            out[o++] = '\\'; /* unknown escapes stay as written */
            out[o++] = e;
        }
    }
    if (k >= n)
        return -1;
    *end = k + 1;
    return (long)o;
}

/* Output text between tags, S[a..b): Jinja's whitespace control on it.
 * OPEN is the tag that ends it ('{', '%', '#', or 0 at the end), SIGN the
 * '-' or '+' after the opener; LINE_STARTING that the text starts a line
 * (lstrip_blocks looks at that when the text has no newline). */
static void emit_data(struct canon *c, const char *s, size_t a, size_t b,
                      char open, char sign, int line_starting)
{
    if (sign == '-') {
        while (b > a && is_ws(s[b - 1]))
            b--;
    } else if (sign != '+' && (open == '%' || open == '#')) {
        size_t l = b;
        while (l > a && s[l - 1] != '\n')
            l--;
        int all_ws = l < b;
        for (size_t k = l; k < b; k++)
            all_ws &= is_ws(s[k]);
        if (all_ws && (l > a || line_starting))
            b = l;
    }
    if (b > a)
        emit(c, 'D', s + a, b - a);
}

/* The tokens inside the tag that starts at S[*pos] (past its opener and
 * sign), up to its close, which sets *pos past it and past what the close
 * swallows (-%} all whitespace, %} and #} one newline: trim_blocks).
 * @return 0, or -1 when the tag is not closed. */
static int tag(struct canon *c, const char *s, size_t n, size_t *pos,
               char open, char *vbuf, int *line_starting)
{
    size_t i = *pos;
    int depth = 0;
    char close = open == '{' ? '}' : open;
    while (i < n) {
        char ch = s[i];
        if (depth == 0 &&
            (ch == '-' || (ch == '+' && open == '%') || ch == close) &&
            (ch == close ? i + 1 < n && s[i + 1] == '}'
                         : i + 2 < n && s[i + 1] == close && s[i + 2] == '}')) {
            size_t e = i + (ch == close ? 2 : 3);
            if (ch == '-')
                while (e < n && is_ws(s[e]))
                    e++;
            else if (ch == close && open != '{' && e < n && s[e] == '\n')
                e++;
            *line_starting = s[e - 1] == '\n';
            emit(c, 'E', "", 0);
            *pos = e;
            return 0;
        }
        if (is_ws(ch)) {
            i++;
        } else if (is_name0(ch)) {
            size_t a = i;
            while (i < n && is_name(s[i]))
                i++;
            emit(c, 'N', s + a, i - a);
        } else if (ch >= '0' && ch <= '9') {
            size_t a = i;
            while (i < n && (is_name(s[i]) || s[i] == '.'))
                i++;
            emit(c, 'I', s + a, i - a);
        } else if (ch == '\'' || ch == '"') {
            size_t end;
            long len = string_at(s, n, i, &end, vbuf);
            if (len < 0)
                return -1;
            emit(c, 'S', vbuf, (size_t)len);
            i = end;
        } else {
            /* x['name'] is x.name: the same lookup */
            size_t j = i + 1, end;
            while (ch == '[' && j < n && is_ws(s[j]))
                j++;
            if (ch == '[' && j < n && (s[j] == '\'' || s[j] == '"')) {
                long len = string_at(s, n, j, &end, vbuf);
                size_t k = end;
                while (len > 0 && k < n && is_ws(s[k]))
                    k++;
                int ident = len > 0 && is_name0(vbuf[0]);
                for (long m = 1; ident && m < len; m++)
                    ident = is_name(vbuf[m]);
                if (ident && k < n && s[k] == ']') {
                    emit(c, 'O', ".", 1);
                    emit(c, 'N', vbuf, (size_t)len);
                    i = k + 1;
                    continue;
                }
            }
            if (ch == '(' || ch == '[' || ch == '{')
                depth++;
            else if ((ch == ')' || ch == ']' || ch == '}') && depth > 0)
                depth--;
            emit(c, 'O', s + i, 1);
            i++;
        }
    }
    return -1;
}

/* S (N bytes) as Jinja's lexer sees it: \r\n and \r as \n, one trailing
 * newline dropped. */
static char *normalize(const char *jinja, size_t len, size_t *n)
{
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (jinja[i] == '\r') {
            s[o++] = '\n';
            if (i + 1 < len && jinja[i + 1] == '\n')
                i++;
        } else {
            s[o++] = jinja[i];
        }
    }
    if (o > 0 && s[o - 1] == '\n')
        o--;
    *n = o;
    return s;
}

int tok_chat_fingerprint(const char *jinja, size_t len, uint64_t *fp)
{
    size_t n = 0;
    char *s = normalize(jinja, len, &n);
    char *vbuf = malloc(n + 1);
    struct canon c = {0};
    int rc = s && vbuf ? 0 : -ENOMEM;
    int line_starting = 1;
    for (size_t pos = 0; rc == 0 && pos < n;) {
        size_t t = pos;
        while (t + 1 < n && !(s[t] == '{' && (s[t + 1] == '{' ||
                                               s[t + 1] == '%' ||
                                               s[t + 1] == '#')))
            t++;
        if (t + 1 >= n) {
            emit_data(&c, s, pos, n, 0, 0, line_starting);
            break;
        }
        char open = s[t + 1];
        char sign = t + 2 < n && (s[t + 2] == '-' || s[t + 2] == '+')
                        ? s[t + 2] : 0;
        emit_data(&c, s, pos, t, open, sign, line_starting);
        pos = t + 2 + (sign ? 1 : 0);
        if (open == '#') {
            /* a comment: up to the first #}, with its - or + */
            size_t e = pos;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}'))
                e++;
            if (e + 1 >= n) {
                rc = -EINVAL;
                break;
            }
            char before = e > pos ? s[e - 1] : 0;
            pos = e + 2;
            if (before == '-')
                while (pos < n && is_ws(s[pos]))
                    pos++;
            else if (before != '+' && pos < n && s[pos] == '\n')
                pos++;
            line_starting = s[pos - 1] == '\n';
            continue;
        }
        emit(&c, open == '%' ? 'B' : 'V', "", 0);
        if (tag(&c, s, n, &pos, open, vbuf, &line_starting) < 0)
            rc = -EINVAL;
    }
    if (rc == 0 && c.oom)
        rc = -ENOMEM;
    if (rc == 0)
        *fp = XXH3_64bits(c.p, c.n);
    free(c.p);
    free(vbuf);
    free(s);
    return rc;
}

/* The revisions flexh2o renders, by fingerprint. A new revision whose
 * rendering tok_chat.c already matches (check it against transformers:
 * tests/fixtures/chat_templates.py, gen_chat_golden.py) is one line here;
 * the refusal message gives its fingerprint. */
static const struct {
    uint64_t fp;
    enum tok_chat_kind kind;
    const char *source;
} known[] = {
    {0x524dda26797ccbbbULL, TOK_CHAT_LLAMA3,
     "meta-llama/Meta-Llama-3-8B-Instruct (May 2024)"},
    {0x4309b7cea39d4e2cULL, TOK_CHAT_LLAMA3_1,
     "meta-llama/Meta-Llama-3.1-8B-Instruct, Llama-3.3-70B-Instruct"},
    {0x773a1c4531168b86ULL, TOK_CHAT_CHATML,
     "teknium/OpenHermes-2.5-Mistral-7B"},
    {0xa12068cabba1a9b2ULL, TOK_CHAT_CHATML,
     "Open-Orca/Mistral-7B-OpenOrca (add_generation_prompt defaulted)"},
    {0xc8157a901511a7ddULL, TOK_CHAT_QWEN1_5, "Qwen/Qwen1.5-*"},
    {0x41fe35dcd5645a13ULL, TOK_CHAT_QWEN2, "Qwen/Qwen2-*-Instruct"},
    {0xa8ac5b86bcf3d809ULL, TOK_CHAT_QWEN2_5, "Qwen/Qwen2.5-*-Instruct"},
    {0x7d8554963f6cff1aULL, TOK_CHAT_LLAMA2, "meta-llama/Llama-2-*-chat-hf"},
    {0xda9c74fd07f38815ULL, TOK_CHAT_LLAMA2,
     "codellama/CodeLlama-*-Instruct-hf (| trim for .strip())"},
    {0xa35aaa4aba906549ULL, TOK_CHAT_MISTRAL_LEGACY,
     "mistralai/Mixtral-8x7B-Instruct-v0.1, Mistral-7B-Instruct-v0.2 (2023)"},
    {0x8f85cf7c696ae696ULL, TOK_CHAT_MISTRAL_V1,
     "mistralai/Mistral-7B-Instruct-v0.1, -v0.2 (2024)"},
    {0xb2cfec3d81c241daULL, TOK_CHAT_MISTRAL_V3,
     "mistralai/Mistral-Large-Instruct-2407"},
    {0xb39a21410663d826ULL, TOK_CHAT_GEMMA, "google/gemma-7b-it"},
    {0xac1f8fb36a42901cULL, TOK_CHAT_ZEPHYR,
     "HuggingFaceH4/zephyr-7b-beta, TinyLlama-1.1B-Chat-v1.0"},
};

int tok_chat_template_detect(const char *jinja, int *kind)
{
    char names[256];
    size_t o = 0;
    for (int k = 0; k < TOK_CHAT_COUNT; k++)
        o += (size_t)snprintf(names + o, sizeof names - o, "%s%s",
                              k ? ", " : "", tok_chat_name(k));
    RETURN_IF(!jinja, -ENOENT,
              "the model has no chat template (tokenizer_config.json's "
              "chat_template, chat_template.jinja); pass --chat-template "
              "NAME (%s)",
              names);
    uint64_t fp = 0;
    int rc = tok_chat_fingerprint(jinja, strlen(jinja), &fp);
    RETURN_IF(rc == -ENOMEM, rc, "out of memory reading the chat template");
    for (size_t i = 0; rc == 0 && i < sizeof known / sizeof *known; i++)
        if (known[i].fp == fp) {
            *kind = (int)known[i].kind;
            return 0;
        }
    RETURN_IF(rc < 0, -ENOTSUP,
              "the model's chat template is not valid Jinja (a tag or a "
              "string is not closed); pass --chat-template NAME (%s)",
              names);
    err_set(__FILE__, __LINE__,
            "the model's chat template is not one flexh2o renders "
            "(fingerprint %016llx); pass --chat-template NAME (%s)",
            (unsigned long long)fp, names);
    return -ENOTSUP;
}
