/* job_chat.c: the chat messages of a request (an OpenAI "messages"
 * array) rendered with the job's chat template (src/tok/tok_chat.c) and
 * encoded, as transformers' apply_chat_template(add_generation_prompt=True,
 * tokenize=True) gives them. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "job_impl.h"

void job_chat_resolve(job_src *src)
{
    src->chat_kind = src->o->chat_template;
    src->chat_why[0] = 0;
    if (src->chat_kind >= 0 || !src->o->t)
        return;
    int rc = tok_chat_template_detect(tok_chat_template(src->o->t), &src->chat_kind);
    if (rc == -ENOENT)
        snprintf(src->chat_why, sizeof src->chat_why, "the model has no chat template; pass "
                 "--chat-template NAME (llama3, llama3.1, chatml, qwen2.5, llama2, mistral-v1, "
                 "...)");
    else if (rc < 0)
        snprintf(src->chat_why, sizeof src->chat_why, "%s", err_msg());
    if (rc < 0) {
        err_clear();
        src->chat_kind = -1;
    }
}

/* The text of a message's content: a string, or an array of parts of
 * which only {"type": "text", "text"} are available, joined (as the
 * OpenAI API concatenates them). @return the malloc'd text, or NULL with
 * *e set (or -ENOMEM in *rc). */
static char *content_text(const cJSON *c, int i, job_field_err *e, int *rc)
{
    *rc = 0;
    if (cJSON_IsString(c)) {
        char *s = strdup(c->valuestring);
        *rc = s ? 0 : -ENOMEM;
        return s;
    }
    if (!cJSON_IsArray(c)) {
        *rc = job_field_bad(e, "messages", "messages[%d].content must be a string or an array "
                            "of text parts", i);
        return NULL;
    }
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text)) {
            *rc = job_field_bad(e, "messages", "messages[%d].content: only text parts "
                                "({\"type\": \"text\", \"text\": ...}) are available", i);
            return NULL;
        }
        len += strlen(text->valuestring);
    }
    char *s = malloc(len + 1);
    if (!s) {
        *rc = -ENOMEM;
        return NULL;
    }
    s[0] = 0;
    cJSON_ArrayForEach(part, c)
        strcat(s, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    return s;
}

int job_chat_encode(const job_src *src, const cJSON *messages, job_prompt *p, job_field_err *e)
{
    if (!src->o->t)
        return job_field_bad(e, "messages", "chat messages need the model's tokenizer and chat "
                             "template (this model has no tokenizer files)");
    if (src->chat_kind < 0)
        return job_field_bad(e, "messages", "%s", src->chat_why);
    int n = cJSON_IsArray(messages) ? cJSON_GetArraySize(messages) : 0;
    if (n == 0)
        return job_field_bad(e, "messages", "\"messages\" must be a non-empty array of "
                             "{\"role\", \"content\"}");
    tok_chat_msg *m = calloc((size_t)n, sizeof *m);
    char **text = calloc((size_t)n, sizeof *text);
    int rc = m && text ? 0 : -ENOMEM, i = 0;
    const cJSON *msg;
    cJSON_ArrayForEach(msg, messages) {
        if (rc < 0)
            break;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsString(role)) {
            rc = job_field_bad(e, "messages", "messages[%d] needs a \"role\" string", i);
            break;
        }
        const cJSON *f;
        cJSON_ArrayForEach(f, msg) {
            if (strcmp(f->string, "role") && strcmp(f->string, "content") &&
                strcmp(f->string, "name"))
                rc = job_field_bad(e, "messages", "messages[%d].%.40s is not available "
                                   "(tool calls and the like); remove it", i, f->string);
        }
        if (rc < 0)
            break;
        text[i] = content_text(cJSON_GetObjectItemCaseSensitive(msg, "content"), i, e, &rc);
        m[i] = (tok_chat_msg){role->valuestring, text[i]};
        i++;
    }
    int32_t *ids = NULL;
    /* a message refused above keeps its reason in *e: only the renderer's
     * failures are read from err_msg() */
    int k = rc == 0 ? tok_chat_encode(src->o->t, src->chat_kind, m, n, 1, &ids) : 0;
    int bad = -1; /* a tokenizer of another model: ids past the embedding table */
    for (int j = 0; j < k && bad < 0; j++)
        bad = ids[j] >= src->o->vocab ? ids[j] : -1;
    if (rc < 0) {
        /* rc and *e as set */
    } else if (bad >= 0) {
        rc = job_field_bad(e, "messages", "the tokenizer gives token id %d but the model has "
                           "%d (vocab_size); the tokenizer files are not this model's", bad,
                           src->o->vocab);
    } else if (k == -EINVAL || k == -EILSEQ || k == -EOVERFLOW) {
        rc = job_field_bad(e, "messages", "%s", err_msg());
        err_clear();
    } else if (k < 0) {
        rc = k;
    } else if (k == 0 || k > src->o->max_len) {
        rc = job_field_bad(e, "messages", "the rendered conversation has %d tokens but the "
                           "model takes 1 to %d (max_position_embeddings); shorten it", k,
                           src->o->max_len);
    } else {
        free(p->ids);
        p->ids = ids;
        p->n_ids = k;
        ids = NULL;
    }
    free(ids);
    for (int j = 0; text && j < n; j++)
        free(text[j]);
    free(text);
    free(m);
    return rc;
}
