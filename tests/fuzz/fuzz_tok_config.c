/* fuzz_tok_config.c: the files beside a tokenizer that set BOS, EOS and
 * the chat template (tok_config.c through tok_load): tokenizer_config.json
 * (add_bos_token, bos_token, eos_token, chat_template as a string, a list
 * or an object, the refused settings), generation_config.json and
 * config.json (eos_token_id, bos_token_id) and chat_template.jinja, next
 * to the embedded vocab.json + merges.txt; then the chat template:
 * recognised (tok_chat_template_detect, tok_chat_fingerprint: a Jinja
 * lexer) and rendered with the BOS and EOS strings the files give.
 *
 * Input: tokenizer_config.json, 0x1e, generation_config.json, 0x1e,
 * config.json, 0x1e, chat_template.jinja; an empty part is an absent file.
 *
 * Checked for any input: BOS is a token of the vocabulary (EOS ids may
 * lie past it, in a model's padded vocabulary), and every template
 * renders or refuses. */
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "tok.h"

static const char *const files[] = {"tokenizer_config.json", "generation_config.json",
                                    "config.json", "chat_template.jinja"};

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    fuzz_write("vocab.json", tok_embedded_vocab_json, tok_embedded_vocab_json_len);
    fuzz_write("merges.txt", tok_embedded_merges_txt, tok_embedded_merges_txt_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    setup();
    fuzz_part p[4];
    fuzz_split(data, size, 0x1e, p, 4);
    for (int i = 0; i < 4; i++) {
        if (p[i].len)
            fuzz_write(files[i], p[i].data, p[i].len);
        else
            fuzz_remove(files[i]);
    }
    uint64_t fp;
    (void)tok_chat_fingerprint((const char *)p[3].data, p[3].len, &fp);
    tok *t = NULL;
    if (tok_load(fuzz_dir(), &t) < 0)
        return 0;
    int nv = tok_vocab_size(t), bos = tok_bos_id(t);
    FUZZ_CHECK(bos >= -1 && bos < nv, "BOS %d of a %d-token vocabulary", bos, nv);
    const int32_t *eos;
    int n_eos = tok_eos_ids(t, &eos);
    FUZZ_CHECK(n_eos >= 0 && (n_eos == 0 || eos), "%d EOS ids", n_eos);
    int kind;
    if (tok_chat_template_detect(tok_chat_template(t), &kind) == 0) {
        FUZZ_CHECK(tok_chat_name(kind) != NULL, "template kind %d has no name", kind);
        tok_chat_msg m[4] = {{"system", "Be terse."}, {"user", "Hi <s>"},
                             {"assistant", "Hello."}, {"user", "Bye"}};
        int32_t *ids = NULL;
        int n = tok_chat_encode(t, kind, m + 1, 3, 1, &ids);
        /* -EILSEQ: a BOS or EOS text of invalid UTF-8 (a lone surrogate, \ud800) */
        FUZZ_CHECK(n >= 0 || n == -EINVAL || n == -EILSEQ, "%s", err_msg());
        free(ids);
    }
    err_clear();
    /* every template with this tokenizer's BOS and EOS text */
    tok_chat_msg m[3] = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}};
    for (int k = 0; k < TOK_CHAT_COUNT; k++) {
        char *out = NULL;
        int n = tok_chat_render(k, m, 3, 1, tok_chat_bos_token(t), tok_chat_eos_token(t), &out);
        FUZZ_CHECK(n >= 0 || n == -EINVAL || n == -EILSEQ, "%s: %s", tok_chat_name(k),
                   err_msg());
        FUZZ_CHECK((n >= 0) == (out != NULL), "%s: output and result disagree",
                   tok_chat_name(k));
        FUZZ_CHECK(n < 0 || strlen(out) == (size_t)n, "%s: length", tok_chat_name(k));
        free(out);
        err_clear();
    }
    tok_destroy(t);
    return 0;
}
