/* test_chat.c: chat templates rendered in C against transformers.
 *
 * tests/fixtures/chat-golden.json (from gen_chat_golden.py) holds real
 * chat templates and, for each flexh2o template name, the text and ids
 * apply_chat_template gives over a set of conversations, or the message
 * the template raises. Every case must render byte for byte, encode to the
 * same ids with the fixture tokenizer, and be refused with the same
 * message; every real template must be recognised as its name, or refused
 * when it has none.
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
#include "tok.h"

#define FIX FH_SOURCE_ROOT "/tests/fixtures"
#define GOLDEN FIX "/chat-golden.json"

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

static void spit(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f, "cannot create %s", p);
    cr_assert_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

static cJSON *golden;

static void load_golden(void)
{
    char *text = slurp(GOLDEN, NULL);
    golden = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(golden, "%s is not JSON", GOLDEN);
}

static void free_golden(void)
{
    cJSON_Delete(golden);
}

static const cJSON *gget(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    cr_assert_not_null(v, "golden: no \"%s\"", key);
    return v;
}

/* The string of O[KEY], NULL when it is null. */
static const char *gstr(const cJSON *o, const char *key)
{
    const cJSON *v = gget(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int kind_of(const char *name)
{
    int kind = -1;
    err_clear();
    cr_assert_eq(tok_chat_template_find(name, &kind), 0, "%s: %s", name,
                 err_msg());
    return kind;
}

/* Conversation CONV of the golden as messages (at most 8). */
static int conversation(int conv, tok_chat_msg *m)
{
    const cJSON *c = cJSON_GetArrayItem(gget(golden, "conversations"), conv);
    int n = 0;
    for (const cJSON *e = c->child; e; e = e->next, n++) {
        cr_assert_lt(n, 8);
        m[n].role = cJSON_GetArrayItem(e, 0)->valuestring;
        m[n].content = cJSON_GetArrayItem(e, 1)->valuestring;
    }
    return n;
}

/* Where A and B (the expected) first differ, for the message. */
static size_t first_diff(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i = 0;
    while (i < alen && i < blen && a[i] == b[i])
        i++;
    return i;
}

#define CASE_FMT "%s, conversation %d, add_generation_prompt %d"
#define CASE_ARGS name, conv, agp

TestSuite(chat, .init = load_golden, .fini = free_golden);

/* Every case: the text transformers renders, or its refusal message. */
Test(chat, render_golden)
{
    int n_text = 0, n_err = 0;
    const cJSON *cases = gget(golden, "cases");
    for (const cJSON *cs = cases->child; cs; cs = cs->next) {
        const char *name = gstr(cs, "name");
        int conv = gget(cs, "conv")->valueint;
        const cJSON *names = gget(gget(golden, "names"), name);
        const char *bos = gstr(names, "bos"), *eos = gstr(names, "eos");
        const char *want = cJSON_IsString(cJSON_GetObjectItem(cs, "text"))
                               ? gstr(cs, "text") : NULL;
        tok_chat_msg m[8];
        int n = conversation(conv, m);
        for (const cJSON *a = gget(cs, "agp")->child; a; a = a->next) {
            int agp = cJSON_IsTrue(a);
            char *out = (char *)&out;
            err_clear();
            int len = tok_chat_render(kind_of(name), m, n, agp, bos, eos, &out);
            if (!want) {
                const char *why = gstr(cs, "error");
                cr_assert_eq(len, -EINVAL, CASE_FMT ": rendered, expected "
                             "\"%s\"", CASE_ARGS, why);
                cr_assert_null(out);
                cr_assert_not_null(strstr(err_msg(), why),
                                   CASE_FMT ": message \"%s\" lacks \"%s\"",
                                   CASE_ARGS, err_msg(), why);
                n_err++;
                continue;
            }
            cr_assert_geq(len, 0, CASE_FMT ": %s", CASE_ARGS, err_msg());
            size_t d = first_diff(out, (size_t)len, want, strlen(want));
            cr_assert(d == strlen(want) && (size_t)len == d,
                      CASE_FMT ": differs at byte %zu: got \"%.40s\", "
                      "expected \"%.40s\"", CASE_ARGS, d, out + d, want + d);
            cr_assert_eq(out[len], 0);
            free(out);
            n_text++;
        }
    }
    cr_assert_geq(n_text, 200, "only %d texts compared", n_text);
    cr_assert_geq(n_err, 30, "only %d refusals compared", n_err);
}

/* The tokenizer of fixture directory DIR, kept for the test's run. */
static tok *fixture_tok(const char *dir)
{
    static char names[8][32];
    static tok *toks[8];
    int i = 0;
    for (; i < 8 && toks[i]; i++)
        if (strcmp(names[i], dir) == 0)
            return toks[i];
    cr_assert_lt(i, 8);
    char path[512];
    snprintf(path, sizeof path, FIX "/%s", dir);
    err_clear();
    cr_assert_eq(tok_load(path, &toks[i]), 0, "%s: %s", path, err_msg());
    snprintf(names[i], sizeof names[i], "%s", dir);
    return toks[i];
}

/* Every rendered case encodes (tok_chat_encode, with the tokenizer's own
 * BOS and EOS strings) to apply_chat_template(tokenize=True)'s ids. */
Test(chat, encode_golden)
{
    int n_ids = 0;
    const cJSON *cases = gget(golden, "cases");
    for (const cJSON *cs = cases->child; cs; cs = cs->next) {
        const cJSON *want = cJSON_GetObjectItem(cs, "ids");
        if (!want)
            continue;
        const char *name = gstr(cs, "name");
        int conv = gget(cs, "conv")->valueint;
        const cJSON *names = gget(gget(golden, "names"), name);
        tok *t = fixture_tok(gstr(names, "tokenizer"));
        const char *bos = gstr(names, "bos"), *eos = gstr(names, "eos");
        cr_assert(bos ? tok_chat_bos_token(t) &&
                            strcmp(tok_chat_bos_token(t), bos) == 0
                      : !tok_chat_bos_token(t), "%s: bos_token", name);
        cr_assert_str_eq(tok_chat_eos_token(t), eos, "%s: eos_token", name);
        tok_chat_msg m[8];
        int n = conversation(conv, m);
        for (const cJSON *a = gget(cs, "agp")->child; a; a = a->next) {
            int agp = cJSON_IsTrue(a);
            int32_t *ids = NULL;
            err_clear();
            int k = tok_chat_encode(t, kind_of(name), m, n, agp, &ids);
            cr_assert_geq(k, 0, CASE_FMT ": %s", CASE_ARGS, err_msg());
            int i = 0;
            for (const cJSON *w = want->child; w; w = w->next, i++) {
                cr_assert_lt(i, k, CASE_FMT ": %d ids, expected more",
                             CASE_ARGS, k);
                cr_assert_eq(ids[i], w->valueint,
                             CASE_FMT ": id[%d] = %d, expected %d", CASE_ARGS,
                             i, ids[i], w->valueint);
            }
            cr_assert_eq(k, i, CASE_FMT ": %d ids, expected %d", CASE_ARGS,
                         k, i);
            free(ids);
            n_ids++;
        }
    }
    cr_assert_geq(n_ids, 150, "only %d encodings compared", n_ids);
}

#define NAMES_LIST                                                             \
    "llama3, llama3.1, chatml, qwen1.5, qwen2, qwen2.5, llama2, "              \
    "mistral-legacy, mistral-v1, mistral-v3, gemma, zephyr"

/* Each real template (and its reformatted copies) is recognised as its
 * name; the ones with none are refused, naming the choices. */
Test(chat, detect_real_templates)
{
    int n_known = 0, n_refused = 0;
    const cJSON *ts = gget(golden, "templates");
    for (const cJSON *e = ts->child; e; e = e->next) {
        const char *name = gstr(e, "name"), *src = gstr(e, "source");
        int kind = -1;
        err_clear();
        int rc = tok_chat_template_detect(gstr(e, "text"), &kind);
        if (name) {
            cr_assert_eq(rc, 0, "%s: %s", src, err_msg());
            cr_assert_str_eq(tok_chat_name(kind), name, "%s", src);
            n_known++;
            continue;
        }
        cr_assert_eq(rc, -ENOTSUP, "%s: recognised as %s", src,
                     tok_chat_name(kind));
        cr_assert_eq(kind, -1);
        cr_assert_not_null(
            strstr(err_msg(), "the model's chat template is not one flexh2o "
                              "renders (fingerprint "),
            "%s: %s", src, err_msg());
        cr_assert_not_null(strstr(err_msg(), "; pass --chat-template NAME ("
                                             NAMES_LIST ")"),
                           "%s: %s", src, err_msg());
        n_refused++;
    }
    cr_assert_geq(n_known, 30);
    cr_assert_geq(n_refused, 10);
}

Test(chat, detect_refusals)
{
    int kind = -1;
    err_clear();
    cr_assert_eq(tok_chat_template_detect(NULL, &kind), -ENOENT);
    cr_assert_not_null(strstr(err_msg(), "the model has no chat template"));
    cr_assert_not_null(strstr(err_msg(), "--chat-template NAME (" NAMES_LIST));
    err_clear();
    cr_assert_eq(tok_chat_template_detect("{{ 'x' ", &kind), -ENOTSUP);
    cr_assert_not_null(strstr(err_msg(), "not valid Jinja"), "%s", err_msg());
    err_clear();
    cr_assert_eq(tok_chat_template_detect("", &kind), -ENOTSUP);
    cr_assert_eq(kind, -1);
}

/* The form, not the bytes: what changes the output changes the
 * fingerprint, what does not leaves it. */
Test(chat, fingerprint_form)
{
    static const char *const same[][2] = {
        /* layout absorbed by whitespace control; comments */
        {"{% for m in messages %}{{ m['content'] }}{% endfor %}",
         "{#- one per message #}\n{%- for m in messages %}\n"
         "    {{- m.content }}\n{%- endfor %}\n"},
        /* quotes, escapes, a newline written as such */
        {"{{ 'a\\nb' + \"\\u00e9\" }}", "{{ \"a\nb\" + 'é' }}"},
        /* trim_blocks eats the newline after a block tag, lstrip_blocks the
         * indentation before one; \r\n is \n */
        {"{% if x %}\n  {% endif %}", "{% if x %}{% endif %}"},
        {"{% if x %}\r\n{% endif %}\n", "{% if x %}{% endif %}"},
    };
    static const char *const differ[][2] = {
        {"{{ x }}\n{{ y }}", "{{ x }}{{ y }}"},      /* output newline */
        {"{% if x %} {% endif %}", "{% if x %}{% endif %}"},
        {"{{ 'a' }}", "{{ 'b' }}"},
        {"{{ x['a b'] }}", "{{ x.a_b }}"},
        {"{% if x +%}\n{% endif %}", "{% if x %}\n{% endif %}"},
    };
    uint64_t a, b;
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        cr_assert_eq(tok_chat_fingerprint(same[i][0], strlen(same[i][0]), &a), 0);
        cr_assert_eq(tok_chat_fingerprint(same[i][1], strlen(same[i][1]), &b), 0);
        cr_assert_eq(a, b, "same form %zu: %016llx %016llx", i,
                     (unsigned long long)a, (unsigned long long)b);
    }
    for (size_t i = 0; i < sizeof differ / sizeof *differ; i++) {
        cr_assert_eq(tok_chat_fingerprint(differ[i][0], strlen(differ[i][0]), &a), 0);
        cr_assert_eq(tok_chat_fingerprint(differ[i][1], strlen(differ[i][1]), &b), 0);
        cr_assert_neq(a, b, "forms %zu should differ", i);
    }
    static const char *const bad[] = {"{{ x", "{% if 'a %}", "{# x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(tok_chat_fingerprint(bad[i], strlen(bad[i]), &a), -EINVAL,
                     "%s", bad[i]);
}

/* --chat-template NAME. */
Test(chat, names)
{
    for (int k = 0; k < TOK_CHAT_COUNT; k++) {
        const char *name = tok_chat_name(k);
        cr_assert_not_null(name);
        cr_assert_eq(kind_of(name), k);
    }
    cr_assert_null(tok_chat_name(-1));
    cr_assert_null(tok_chat_name(TOK_CHAT_COUNT));
    int kind = -1;
    err_clear();
    cr_assert_eq(tok_chat_template_find("llama-3", &kind), -EINVAL);
    cr_assert_eq(kind, -1);
    cr_assert_str_eq(err_msg(), "unknown chat template \"llama-3\"; "
                                "--chat-template takes one of: " NAMES_LIST);
}

static void render_fails(int kind, const tok_chat_msg *m, int n, int want_rc,
                         const char *want_msg)
{
    char *out = (char *)&out;
    err_clear();
    int rc = tok_chat_render(kind, m, n, 1, "<s>", "</s>", &out);
    cr_assert_eq(rc, want_rc, "rc %d, want %d: %s", rc, want_rc, err_msg());
    cr_assert_null(out);
    cr_assert_not_null(strstr(err_msg(), want_msg), "message \"%s\" lacks "
                       "\"%s\"", err_msg(), want_msg);
}

/* What flexh2o refuses beyond the templates' own checks, with one line
 * each. */
Test(chat, refusals)
{
    tok_chat_msg tool[2] = {{"user", "hi"}, {"tool", "42"}};
    for (int k = 0; k < TOK_CHAT_COUNT; k++)
        render_fails(k, tool, 2, -EINVAL, "message 2 of 2 has role \"tool\"; "
                     "flexh2o renders system, user and assistant messages");
    tok_chat_msg ok[1] = {{"user", "hi"}};
    render_fails(TOK_CHAT_CHATML, ok, 0, -EINVAL, "no messages to render");
    render_fails(TOK_CHAT_COUNT, ok, 1, -EINVAL, "chat template 12 is not one");
    tok_chat_msg none[1] = {{"user", NULL}};
    render_fails(TOK_CHAT_CHATML, none, 1, -EINVAL,
                 "message 1 of 1 has no content");
    tok_chat_msg bad[1] = {{"user", "caf\xc3"}};
    render_fails(TOK_CHAT_CHATML, bad, 1, -EILSEQ,
                 "message 1 of 1 is not valid UTF-8 at byte 3");
    /* Llama-2's template drops a system message at an odd place */
    tok_chat_msg mid[3] = {{"user", "a"}, {"system", "mid"}, {"assistant", "b"}};
    render_fails(TOK_CHAT_LLAMA2, mid, 3, -EINVAL,
                 "chat template llama2: a system message after the first "
                 "would be dropped by the template without a word; merge it "
                 "into the first (message 2 of 3, role system)");
    /* a template's own check, with where it tripped */
    tok_chat_msg two[2] = {{"user", "a"}, {"user", "b"}};
    render_fails(TOK_CHAT_MISTRAL_V1, two, 2, -EINVAL,
                 "chat template mistral-v1: After the optional system "
                 "message, conversation roles must alternate "
                 "user/assistant/user/assistant/... (message 2 of 2, role "
                 "user)");
}

/* The template a model directory carries: tokenizer_config.json's
 * chat_template (a string, or a list with a "default"), chat_template.jinja
 * before it, bos_token/eos_token as strings or objects. */
Test(chat, template_from_model_dir)
{
    tok *t = NULL;
    err_clear();
    cr_assert_eq(tok_load(FIX "/chat-gemma", &t), 0, "%s", err_msg());
    int kind = -1;
    cr_assert_eq(tok_chat_template_detect(tok_chat_template(t), &kind), 0,
                 "%s", err_msg());
    cr_assert_eq(kind, TOK_CHAT_GEMMA);
    cr_assert_str_eq(tok_chat_bos_token(t), "<bos>");
    tok_destroy(t);

    const char *chatml = NULL, *qwen2 = NULL;
    for (const cJSON *e = gget(golden, "templates")->child; e; e = e->next) {
        const char *name = gstr(e, "name");
        if (!chatml && name && strcmp(name, "chatml") == 0)
            chatml = gstr(e, "text");
        if (!qwen2 && name && strcmp(name, "qwen2") == 0)
            qwen2 = gstr(e, "text");
    }
    cr_assert(chatml && qwen2);

    char dir[] = "/tmp/test_chat_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[512];
    size_t len;
    snprintf(path, sizeof path, FIX "/tok-qwen2/tokenizer.json");
    char *tj = slurp(path, &len);
    spit(dir, "tokenizer.json", tj);
    free(tj);

    spit(dir, "tokenizer_config.json", "{\"bos_token\": null}");
    err_clear();
    cr_assert_eq(tok_load(dir, &t), 0, "%s", err_msg());
    cr_assert_null(tok_chat_template(t));
    cr_assert_null(tok_chat_bos_token(t));
    cr_assert_null(tok_chat_eos_token(t));
    tok_destroy(t);

    cJSON *cfg = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(cfg, "chat_template");
    const char *entries[2][2] = {{"tool_use", chatml}, {"default", qwen2}};
    for (int i = 0; i < 2; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", entries[i][0]);
        cJSON_AddStringToObject(e, "template", entries[i][1]);
        cJSON_AddItemToArray(list, e);
    }
    cJSON *eos = cJSON_AddObjectToObject(cfg, "eos_token");
    cJSON_AddStringToObject(eos, "content", "<|im_end|>");
    cJSON_AddStringToObject(eos, "__type", "AddedToken");
    char *text = cJSON_PrintUnformatted(cfg);
    spit(dir, "tokenizer_config.json", text);
    free(text);
    cJSON_Delete(cfg);
    err_clear();
    cr_assert_eq(tok_load(dir, &t), 0, "%s", err_msg());
    cr_assert_str_eq(tok_chat_template(t), qwen2);
    cr_assert_str_eq(tok_chat_eos_token(t), "<|im_end|>");
    tok_destroy(t);

    spit(dir, "tokenizer_config.json",
         "{\"chat_template\": {\"tool_use\": \"{{ x }}\"}}");
    err_clear();
    cr_assert_eq(tok_load(dir, &t), 0, "%s", err_msg());
    cr_assert_null(tok_chat_template(t), "no \"default\": none");
    tok_destroy(t);

    spit(dir, "chat_template.jinja", chatml);
    err_clear();
    cr_assert_eq(tok_load(dir, &t), 0, "%s", err_msg());
    cr_assert_str_eq(tok_chat_template(t), chatml, "chat_template.jinja wins");
    cr_assert_eq(tok_chat_template_detect(tok_chat_template(t), &kind), 0);
    cr_assert_eq(kind, TOK_CHAT_CHATML);
    tok_destroy(t);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    cr_assert_eq(unlink(path), 0);

    static const char *const broken[] = {
        "{\"chat_template\": 3}",
        "{\"chat_template\": [{\"name\": \"default\"}]}"};
    for (int i = 0; i < 2; i++) {
        spit(dir, "tokenizer_config.json", broken[i]);
        t = (tok *)&t;
        err_clear();
        cr_assert_eq(tok_load(dir, &t), -EINVAL, "%s", broken[i]);
        cr_assert_null(t);
        cr_assert_not_null(strstr(err_msg(), "tokenizer_config.json: "),
                           "%s", err_msg());
        cr_assert_not_null(strstr(err_msg(), "chat_template"), "%s",
                           err_msg());
    }
    cr_assert_eq(scratch_remove(dir), 0);
}
