/* tok_config.c: BOS and EOS from the model directory (see tok.h,
 * tok_bos_id and tok_eos_ids, for the order of the sources), and the chat
 * template (tok_chat_template).
 *
 *   tokenizer_config.json   add_bos_token, bos_token; add_eos_token and
 *                           split_special_tokens are refused when true;
 *                           chat_template, bos_token and eos_token as text
 *   chat_template.jinja     the chat template, before tokenizer_config's
 *   generation_config.json  eos_token_id (an id or a list)
 *   config.json             eos_token_id, bos_token_id
 *
 * Each file is optional; one that exists must be valid JSON.
 */
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "off.h"

/* The parsed DIR/FILE in *out, or NULL when there is no such file.
 * @return 0, -EINVAL (not JSON) or the reader's -errno. */
static int read_optional(const char *dir, const char *file, char *path,
                         size_t cap, cJSON **out)
{
    *out = NULL;
    RETURN_IF(snprintf(path, cap, "%s/%s", dir, file) >= (int)cap,
              -ENAMETOOLONG, "%s: path too long", dir);
    char *text;
    size_t len;
    int rc = off_read_file(path, &text, &len);
    if (rc == -ENOENT) {
        err_clear(); /* absent is fine: drop the reader's message */
        return 0;
    }
    FORWARD_IF(rc);
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    RETURN_IF(!cJSON_IsObject(*out), -EINVAL,
              "%s: not a valid JSON object; re-download it", path);
    return 0;
}

static int dup_into(char **dst, const char *s);

static int valid_id(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 &&
           v->valuedouble < TOK_MAX_ID &&
           v->valuedouble == (double)(int32_t)v->valuedouble;
}

/* eos_token_id of O (PATH for messages), an id or a list of ids, into
 * t->eos. Absent, null or [] leaves t->eos empty. @return 0, -EINVAL or
 * -ENOMEM. */
static int read_eos(tok *t, const cJSON *o, const char *path)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id");
    if (!v || cJSON_IsNull(v))
        return 0;
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    const cJSON *first = cJSON_IsArray(v) ? v->child : v;
    int ok = cJSON_IsArray(v) || valid_id(v);
    for (const cJSON *c = first; ok && cJSON_IsArray(v) && c; c = c->next)
        ok = valid_id(c);
    RETURN_IF(!ok, -EINVAL,
              "%s: eos_token_id must be a token id or a list of them (integers "
              "from 0 to %d); fix or re-download it",
              path, TOK_MAX_ID - 1);
    if (n == 0)
        return 0;
    FORWARD_IF(dup_into(&t->eos_file, path));
    t->eos = malloc((size_t)n * sizeof *t->eos);
    RETURN_IF(!t->eos, -ENOMEM, "out of memory for %d EOS ids", n);
    for (const cJSON *c = first; c && t->n_eos < n; c = c->next)
        t->eos[t->n_eos++] = (int32_t)c->valuedouble;
    return 0;
}

/* tokenizer_config.json's settings flexh2o would not honour. */
static int check_tokenizer_config(const cJSON *tc, const char *path)
{
    static const char *const no[] = {"add_eos_token", "split_special_tokens"};
    static const char *const why[] = {
        "flexh2o does not append EOS to prompts",
        "flexh2o always matches special tokens written in the text"};
    for (int i = 0; i < 2; i++)
        RETURN_IF(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tc, no[i])),
                  -ENOTSUP, "%s: %s is true; %s (set it to false)", path,
                  no[i], why[i]);
    return 0;
}

/* tokenizer_config.json's bos_token or eos_token (KEY): "<s>" or
 * {"content": "<s>", ...}; NULL when absent or null. */
static const char *token_text_of(const cJSON *tc, const char *key)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (cJSON_IsObject(b))
        b = cJSON_GetObjectItemCaseSensitive(b, "content");
    return cJSON_IsString(b) ? b->valuestring : NULL;
}

static const char *bos_token_of(const cJSON *tc)
{
    return token_text_of(tc, "bos_token");
}

static int dup_into(char **dst, const char *s)
{
    if (!s)
        return 0;
    *dst = strdup(s);
    RETURN_IF(!*dst, -ENOMEM, "out of memory for the tokenizer's settings");
    return 0;
}

/* tokenizer_config.json's chat_template: a string, or a list of {"name",
 * "template"} (or an object name -> template) of which transformers uses
 * "default"; NULL when absent, null or without a default. */
static int chat_template_of(const cJSON *tc, const char *path,
                            const char **out)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
    *out = NULL;
    if (!c || cJSON_IsNull(c))
        return 0;
    if (cJSON_IsString(c)) {
        *out = c->valuestring;
        return 0;
    }
    if (cJSON_IsObject(c)) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "default");
        *out = cJSON_IsString(d) ? d->valuestring : NULL;
        return 0;
    }
    RETURN_IF(!cJSON_IsArray(c), -EINVAL,
              "%s: chat_template must be a string or a list of {\"name\", "
              "\"template\"}; fix or re-download it",
              path);
    for (const cJSON *e = c->child; e; e = e->next) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(e, "template");
        RETURN_IF(!cJSON_IsString(name) || !cJSON_IsString(tmpl), -EINVAL,
                  "%s: each chat_template entry needs a \"name\" and a "
                  "\"template\" string; fix or re-download it",
                  path);
        if (strcmp(name->valuestring, "default") == 0)
            *out = tmpl->valuestring;
    }
    return 0;
}

/* The chat template and the BOS/EOS strings it is rendered with: DIR's
 * chat_template.jinja wins over TC's chat_template (transformers reads
 * the file in its place). */
static int read_chat(tok *t, const char *dir, const cJSON *tc,
                     const char *tpath)
{
    char path[4096];
    RETURN_IF(snprintf(path, sizeof path, "%s/chat_template.jinja", dir) >=
                  (int)sizeof path,
              -ENAMETOOLONG, "%s: path too long", dir);
    char *text;
    size_t len;
    int rc = off_read_file(path, &text, &len);
    if (rc == 0) {
        t->chat_template = malloc(len + 1);
        if (t->chat_template) {
            memcpy(t->chat_template, text, len);
            t->chat_template[len] = 0;
        }
        free(text);
        RETURN_IF(!t->chat_template, -ENOMEM,
                  "out of memory for %s (%zu bytes)", path, len);
        RETURN_IF(strlen(t->chat_template) != len, -EINVAL,
                  "%s: has a NUL byte; re-download it", path);
    } else if (rc == -ENOENT) {
        err_clear(); /* absent is fine: drop the reader's message */
    } else {
        return rc;
    }
    if (!tc)
        return 0;
    const char *tmpl;
    FORWARD_IF(chat_template_of(tc, tpath, &tmpl));
    if (!t->chat_template)
        FORWARD_IF(dup_into(&t->chat_template, tmpl));
    FORWARD_IF(dup_into(&t->bos_text, token_text_of(tc, "bos_token")));
    return dup_into(&t->eos_text, token_text_of(tc, "eos_token"));
}

/* Rule 1 of tok_bos_id: add_bos_token true. */
static int bos_from_config(tok *t, const cJSON *tc, const char *tpath,
                           const cJSON *cfg, const char *cpath)
{
    const char *name = bos_token_of(tc);
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token_id");
    if (name) {
        t->bos_id = tok_token_id(t, name, strlen(name));
        RETURN_IF(t->bos_id < 0, -EINVAL,
                  "%s: bos_token \"%s\" is not in the tokenizer's vocabulary; "
                  "the files are from different models",
                  tpath, name);
        return dup_into(&t->bos_file, tpath);
    }
    RETURN_IF(!valid_id(cid), -EINVAL,
              "%s: add_bos_token is true but there is no bos_token, nor a "
              "bos_token_id (0 to %d) in config.json; add one",
              tpath, TOK_MAX_ID - 1);
    t->bos_id = (int32_t)cid->valuedouble;
    return dup_into(&t->bos_file, cpath);
}

/* Rule 2 of tok_bos_id: the post-processor's template. */
static int bos_from_template(tok *t, const struct tok_src *src)
{
    if (!src->template_bos)
        return 0;
    t->bos_id = src->template_bos_id >= 0
                    ? src->template_bos_id
                    : tok_token_id(t, src->template_bos,
                                   strlen(src->template_bos));
    RETURN_IF(t->bos_id < 0, -EINVAL,
              "%s: post_processor's token \"%s\" is not in the vocabulary; "
              "re-download tokenizer.json",
              src->vocab_name, src->template_bos);
    return dup_into(&t->bos_file, src->vocab_name);
}

static int pick_bos(tok *t, const struct tok_src *src, const cJSON *tc,
                    const char *tpath, const cJSON *cfg, const char *cpath)
{
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(tc, "add_bos_token");
    t->bos_id = -1;
    if (cJSON_IsBool(add))
        return cJSON_IsTrue(add) ? bos_from_config(t, tc, tpath, cfg, cpath) : 0;
    if (src->has_template)
        return bos_from_template(t, src);
    if (tc)
        return 0;
    /* config.json's own reader (model_config_parse) refuses an id that is
     * not one; here it only decides whether there is a BOS */
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token_id");
    if (!valid_id(cid))
        return 0;
    t->bos_id = (int32_t)cid->valuedouble;
    return dup_into(&t->bos_file, cpath);
}

int tok_config_load(tok *t, const char *dir, const struct tok_src *src)
{
    char tpath[4096], gpath[4096], cpath[4096];
    cJSON *tc = NULL, *gc = NULL, *cfg = NULL;
    int rc = read_optional(dir, "tokenizer_config.json", tpath, sizeof tpath, &tc);
    if (rc == 0)
        rc = read_optional(dir, "generation_config.json", gpath, sizeof gpath, &gc);
    if (rc == 0)
        rc = read_optional(dir, "config.json", cpath, sizeof cpath, &cfg);
    if (rc == 0 && tc)
        rc = check_tokenizer_config(tc, tpath);
    if (rc == 0)
        rc = read_chat(t, dir, tc, tpath);
    if (rc == 0)
        rc = pick_bos(t, src, tc, tpath, cfg, cpath);
    /* config.json's bos_token_id is a number only: one past the vocabulary
     * would be prepended to every prompt (found by tests/fuzz/fuzz_tok_config.c) */
    if (rc == 0 && t->bos_id >= t->n_vocab) {
        err_set(__FILE__, __LINE__, "%s: the BOS id %d is past the tokenizer's %d ids; the "
                "tokenizer files and config.json are from different models", dir, t->bos_id,
                t->n_vocab);
        rc = -EINVAL;
    }
    if (rc == 0 && gc)
        rc = read_eos(t, gc, gpath);
    if (rc == 0 && t->n_eos == 0 && cfg)
        rc = read_eos(t, cfg, cpath);
    cJSON_Delete(tc);
    cJSON_Delete(gc);
    cJSON_Delete(cfg);
    return rc;
}
