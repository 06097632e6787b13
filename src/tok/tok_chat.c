/* tok_chat.c: chat templates rendered in C (see tok.h for the names and
 * what each covers).
 *
 * Each render_* function is its Jinja template written out: the same
 * pieces of text in the same order, the same checks raising the same
 * messages at the same message. Two things of Jinja matter for exactness:
 *
 *   - `| trim` and `.strip()` are Python's str.strip(): they take off the
 *     characters str.isspace() calls space, which are Unicode's White_Space
 *     and U+001C..U+001F (py_space);
 *   - `system_message is defined` and `system_message != false` are true
 *     for an empty system message too: a system message counts when it is
 *     there, whatever it says.
 *
 * tests/test_chat.c compares every template with transformers' rendering
 * (tests/fixtures/chat-golden.json).
 */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static const char *const names[TOK_CHAT_COUNT] = {
    [TOK_CHAT_LLAMA3] = "llama3",
    [TOK_CHAT_LLAMA3_1] = "llama3.1",
    [TOK_CHAT_CHATML] = "chatml",
    [TOK_CHAT_QWEN1_5] = "qwen1.5",
    [TOK_CHAT_QWEN2] = "qwen2",
    [TOK_CHAT_QWEN2_5] = "qwen2.5",
    [TOK_CHAT_LLAMA2] = "llama2",
    [TOK_CHAT_MISTRAL_LEGACY] = "mistral-legacy",
    [TOK_CHAT_MISTRAL_V1] = "mistral-v1",
    [TOK_CHAT_MISTRAL_V3] = "mistral-v3",
    [TOK_CHAT_GEMMA] = "gemma",
    [TOK_CHAT_ZEPHYR] = "zephyr",
};

const char *tok_chat_name(int kind)
{
    return kind >= 0 && kind < TOK_CHAT_COUNT ? names[kind] : NULL;
}

int tok_chat_template_find(const char *name, int *kind)
{
    for (int k = 0; name && k < TOK_CHAT_COUNT; k++)
        if (strcmp(name, names[k]) == 0) {
            *kind = k;
            return 0;
        }
    char list[256];
    size_t o = 0;
    for (int k = 0; k < TOK_CHAT_COUNT; k++) {
        size_t l = strlen(names[k]);
        memcpy(list + o, ", ", k ? 2 : 0);
        o += k ? 2 : 0;
        memcpy(list + o, names[k], l);
        o += l;
    }
    list[o] = 0;
    err_set(__FILE__, __LINE__,
            "unknown chat template \"%s\"; --chat-template takes one of: %s",
            name ? name : "", list);
    return -EINVAL;
}

/* ----------------------------------------------------------- the text */

struct sb {
    char *p;
    size_t n, cap;
    int oom;
};

static void add(struct sb *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = 2 * (b->n + len + 1) + 256;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void put(struct sb *b, const char *s)
{
    if (s)
        add(b, s, strlen(s));
}

/* Python's str.isspace(). */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) ||
           c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* S[0..len) (valid UTF-8) as str.strip() leaves it: *off, *out_len. */
static void py_strip(const char *s, size_t len, size_t *off, size_t *out_len)
{
    size_t a = 0, b = len;
    uint32_t c;
    int k;
    while (a < b && (k = tok_utf8_char(s + a, b - a, &c)) > 0 && py_space(c))
        a += (size_t)k;
    while (b > a) {
        size_t i = b - 1;
        while (i > a && ((unsigned char)s[i] & 0xc0) == 0x80)
            i--;
        if (tok_utf8_char(s + i, b - i, &c) <= 0 || !py_space(c))
            break;
        b = i;
    }
    *off = a;
    *out_len = b - a;
}

static void put_trim(struct sb *b, const char *s)
{
    size_t off, len;
    py_strip(s, strlen(s), &off, &len);
    add(b, s + off, len);
}

/* ------------------------------------------------------- the messages */

struct chat {
    int kind;
    const tok_chat_msg *m;
    int n;
    int agp;                  /* add_generation_prompt */
    const char *bos, *eos;    /* NULL renders as "" */
    struct sb out;
};

static int is(const struct chat *c, int i, const char *role)
{
    return strcmp(c->m[i].role, role) == 0;
}

/* The template's raise_exception(WHY) at message I (0-based). */
static int refuse(const struct chat *c, int i, const char *why)
{
    err_set(__FILE__, __LINE__, "chat template %s: %s (message %d of %d, "
            "role %s)", names[c->kind], why, i + 1, c->n, c->m[i].role);
    return -EINVAL;
}

static const char *const ALTERNATE =
    "Conversation roles must alternate user/assistant/user/assistant/...";
static const char *const ALTERNATE_AFTER_SYSTEM =
    "After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...";
static const char *const ONLY_USER_ASSISTANT =
    "Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!";

/* Llama-3's turns from message `from` on: a header per message, the
 * content trimmed; then the assistant's header when asked. */
static void llama3_turns(struct chat *c, int from)
{
    for (int i = from; i < c->n; i++) {
        put(&c->out, "<|start_header_id|>");
        put(&c->out, c->m[i].role);
        put(&c->out, "<|end_header_id|>\n\n");
        put_trim(&c->out, c->m[i].content);
        put(&c->out, "<|eot_id|>");
    }
    if (c->agp)
        put(&c->out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Meta-Llama-3-Instruct: BOS, then the turns. */
static int render_llama3(struct chat *c)
{
    if (c->n > 0)
        put(&c->out, c->bos);
    llama3_turns(c, 0);
    return 0;
}

/* Llama-3.1: a system block always, with the knowledge cutoff and the
 * template's default date (no tools, no date_string given). */
static int render_llama3_1(struct chat *c)
{
    int first = is(c, 0, "system");
    put(&c->out, c->bos);
    put(&c->out, "<|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\n"
                 "Today Date: 26 Jul 2024\n\n");
    if (first)
        put_trim(&c->out, c->m[0].content);
    put(&c->out, "<|eot_id|>");
    llama3_turns(c, first);
    return 0;
}

/* ChatML; Qwen's put a default system message first when the first is
 * not one. */
static int render_chatml(struct chat *c, const char *default_system)
{
    if (default_system && !is(c, 0, "system")) {
        put(&c->out, "<|im_start|>system\n");
        put(&c->out, default_system);
        put(&c->out, "<|im_end|>\n");
    }
    for (int i = 0; i < c->n; i++) {
        put(&c->out, "<|im_start|>");
        put(&c->out, c->m[i].role);
        put(&c->out, "\n");
        put(&c->out, c->m[i].content);
        put(&c->out, "<|im_end|>\n");
    }
    if (c->agp)
        put(&c->out, "<|im_start|>assistant\n");
    return 0;
}

/* Llama-2-chat: the system message inside the first [INST] in <<SYS>>,
 * BOS before every [INST], " answer </s>" after it; content (with the
 * <<SYS>> block) stripped. */
static int render_llama2(struct chat *c)
{
    int first = is(c, 0, "system");
    struct sb turn = {0};
    for (int i = first; i < c->n; i++) {
        int j = i - first;
        if (is(c, i, "user") != (j % 2 == 0)) {
            free(turn.p);
            return refuse(c, i, ALTERNATE);
        }
        if (is(c, i, "system")) {
            free(turn.p);
            return refuse(c, i, "a system message after the first would "
                                "be dropped by the template without a "
                                "word; merge it into the first");
        }
        turn.n = 0;
        if (j == 0 && first) {
            put(&turn, "<<SYS>>\n");
            put(&turn, c->m[0].content);
            put(&turn, "\n<</SYS>>\n\n");
        }
        put(&turn, c->m[i].content);
        if (turn.oom)
            break;
        if (is(c, i, "user")) {
            put(&c->out, c->bos);
            put(&c->out, "[INST] ");
            put_trim(&c->out, turn.p);
            put(&c->out, " [/INST]");
        } else {
            put(&c->out, " ");
            put_trim(&c->out, turn.p);
            put(&c->out, " ");
            put(&c->out, c->eos);
        }
    }
    c->out.oom |= turn.oom;
    free(turn.p);
    return 0;
}

/* Mixtral-8x7B-Instruct-v0.1 / Mistral-7B-Instruct-v0.2 as released. */
static int render_mistral_legacy(struct chat *c)
{
    put(&c->out, c->bos);
    for (int i = 0; i < c->n; i++) {
        if (is(c, i, "user") != (i % 2 == 0))
            return refuse(c, i, ALTERNATE);
        if (is(c, i, "user")) {
            put(&c->out, "[INST] ");
            put(&c->out, c->m[i].content);
            put(&c->out, " [/INST]");
        } else if (is(c, i, "assistant")) {
            put(&c->out, c->m[i].content);
            put(&c->out, c->eos);
        } else {
            return refuse(c, i, "Only user and assistant roles are supported!");
        }
    }
    return 0;
}

/* mistral-common V1 (v1) and V3 (v3): the optional system message goes
 * into the first (v1) or the last (v3) user message. V1 checks the order
 * as it goes, V3 before it writes anything; V3 trims answers. */
static int render_mistral(struct chat *c, int v3)
{
    int first = is(c, 0, "system");
    for (int i = first; v3 && i < c->n; i++)
        if (is(c, i, "user") != ((i - first) % 2 == 0))
            return refuse(c, i, ALTERNATE_AFTER_SYSTEM);
    put(&c->out, c->bos);
    for (int i = first; i < c->n; i++) {
        int j = i - first;
        if (is(c, i, "user") != (j % 2 == 0))
            return refuse(c, i, ALTERNATE_AFTER_SYSTEM);
        if (is(c, i, "user")) {
            put(&c->out, v3 ? "[INST] " : " [INST] ");
            if (first && (v3 ? i == c->n - 1 : j == 0)) {
                put(&c->out, c->m[0].content);
                put(&c->out, "\n\n");
            }
            put(&c->out, c->m[i].content);
            put(&c->out, v3 ? "[/INST]" : " [/INST]");
        } else if (is(c, i, "assistant")) {
            put(&c->out, " ");
            if (v3)
                put_trim(&c->out, c->m[i].content);
            else
                put(&c->out, c->m[i].content);
            put(&c->out, c->eos);
        } else {
            return refuse(c, i, ONLY_USER_ASSISTANT);
        }
    }
    return 0;
}

/* gemma-it: no system message; the assistant is "model". */
static int render_gemma(struct chat *c)
{
    put(&c->out, c->bos);
    if (is(c, 0, "system"))
        return refuse(c, 0, "System role not supported");
    for (int i = 0; i < c->n; i++) {
        if (is(c, i, "user") != (i % 2 == 0))
            return refuse(c, i, ALTERNATE);
        put(&c->out, "<start_of_turn>");
        put(&c->out, is(c, i, "assistant") ? "model" : c->m[i].role);
        put(&c->out, "\n");
        put_trim(&c->out, c->m[i].content);
        put(&c->out, "<end_of_turn>\n");
    }
    if (c->agp)
        put(&c->out, "<start_of_turn>model\n");
    return 0;
}

/* zephyr: the newline after each {{ }} of the template is output. */
static int render_zephyr(struct chat *c)
{
    for (int i = 0; i < c->n; i++) {
        put(&c->out, "<|");
        put(&c->out, c->m[i].role);
        put(&c->out, "|>\n");
        put(&c->out, c->m[i].content);
        put(&c->out, c->eos);
        put(&c->out, "\n");
        if (i == c->n - 1 && c->agp)
            put(&c->out, "<|assistant|>\n");
    }
    return 0;
}

static int render(struct chat *c)
{
    switch (c->kind) {
    case TOK_CHAT_LLAMA3:
        return render_llama3(c);
    case TOK_CHAT_LLAMA3_1:
        return render_llama3_1(c);
    case TOK_CHAT_CHATML:
        return render_chatml(c, NULL);
    case TOK_CHAT_QWEN1_5:
        return render_chatml(c, "You are a helpful assistant");
    case TOK_CHAT_QWEN2:
        return render_chatml(c, "You are a helpful assistant.");
    case TOK_CHAT_QWEN2_5:
        return render_chatml(c, "You are Qwen, created by Alibaba Cloud. You "
                                "are a helpful assistant.");
    case TOK_CHAT_LLAMA2:
        return render_llama2(c);
    case TOK_CHAT_MISTRAL_LEGACY:
        return render_mistral_legacy(c);
    case TOK_CHAT_MISTRAL_V1:
        return render_mistral(c, 0);
    case TOK_CHAT_MISTRAL_V3:
        return render_mistral(c, 1);
    case TOK_CHAT_GEMMA:
        return render_gemma(c);
    default:
        return render_zephyr(c);
    }
}

/* What every template needs of the messages. */
static int check_messages(const tok_chat_msg *m, int n)
{
    RETURN_IF(n < 1 || !m, -EINVAL,
              "no messages to render; a chat needs at least one");
    for (int i = 0; i < n; i++) {
        RETURN_IF(!m[i].role || !m[i].content, -EINVAL,
                  "message %d of %d has no %s", i + 1, n,
                  m[i].role ? "content" : "role");
        RETURN_IF(strcmp(m[i].role, "system") && strcmp(m[i].role, "user") &&
                      strcmp(m[i].role, "assistant"),
                  -EINVAL,
                  "message %d of %d has role \"%s\"; flexh2o renders system, "
                  "user and assistant messages",
                  i + 1, n, m[i].role);
        size_t bad;
        RETURN_IF(tok_utf8_check(m[i].content, strlen(m[i].content), &bad) < 0,
                  -EILSEQ,
                  "message %d of %d is not valid UTF-8 at byte %zu; convert "
                  "it to UTF-8",
                  i + 1, n, bad);
    }
    return 0;
}

int tok_chat_render(int kind, const tok_chat_msg *msgs, int n,
                    int add_generation_prompt, const char *bos_token,
                    const char *eos_token, char **out)
{
    *out = NULL;
    RETURN_IF(!tok_chat_name(kind), -EINVAL,
              "chat template %d is not one flexh2o renders", kind);
    FORWARD_IF(check_messages(msgs, n));
    struct chat c = {.kind = kind, .m = msgs, .n = n,
                     .agp = add_generation_prompt, .bos = bos_token,
                     .eos = eos_token};
    add(&c.out, "", 0); /* allocated even when the rendering is "" */
    int rc = render(&c);
    if (rc == 0 && c.out.oom) {
        err_set(__FILE__, __LINE__, "out of memory rendering %d messages", n);
        rc = -ENOMEM;
    }
    if (rc == 0 && c.out.n > INT32_MAX) {
        err_set(__FILE__, __LINE__, "the chat renders to %zu bytes, too many",
                c.out.n);
        rc = -EOVERFLOW;
    }
    if (rc < 0) {
        free(c.out.p);
        return rc;
    }
    *out = c.out.p;
    return (int)c.out.n;
}

int tok_chat_encode(const tok *t, int kind, const tok_chat_msg *msgs, int n,
                    int add_generation_prompt, int32_t **ids)
{
    *ids = NULL;
    char *text;
    int len = tok_chat_render(kind, msgs, n, add_generation_prompt,
                              t->bos_text, t->eos_text, &text);
    FORWARD_IF(len);
    int rc = tok_encode(t, text, (size_t)len, ids);
    free(text);
    return rc;
}

const char *tok_chat_template(const tok *t)
{
    return t->chat_template;
}

const char *tok_chat_bos_token(const tok *t)
{
    return t->bos_text;
}

const char *tok_chat_eos_token(const tok *t)
{
    return t->eos_text;
}
