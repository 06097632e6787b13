/* fuzz_tok_json.c: tokenizer.json (tok_load of a directory holding only
 * it: model BPE with its vocab, merges, byte_fallback, unk_token;
 * added_tokens; normalizer; pre_tokenizer; decoder; post_processor),
 * then encoding a fixed set of texts and decoding ids with what loads.
 *
 * Checked for any input: BOS and every id encoded are in the vocabulary,
 * and every id decodes. */
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "tok.h"

static const char *const texts[] = {
    "Hello world! It's 2024: 12345 apples.",
    "  leading spaces\tand\ttabs\r\nnew lines\n\n",
    "Le caf\xc3\xa9 est tr\xc3\xa8s bon. \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80",
    "<s>[INST] special <|endoftext|></s> <unk> <0x41>",
    "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    fuzz_write("tokenizer.json", data, size);
    tok *t = NULL;
    if (tok_load(fuzz_dir(), &t) < 0)
        return 0;
    int nv = tok_vocab_size(t), bos = tok_bos_id(t);
    FUZZ_CHECK(bos >= -1 && bos < nv, "BOS %d of a %d-token vocabulary", bos, nv);
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *ids = NULL;
        int n = tok_encode(t, texts[i], strlen(texts[i]), &ids);
        FUZZ_CHECK(n >= 0 || n == -ENOMEM, "encoding \"%s\": %s", texts[i], err_msg());
        for (int k = 0; k < n; k++)
            FUZZ_CHECK(ids[k] >= 0 && ids[k] < nv, "id %d of %d", ids[k], nv);
        char *back = NULL;
        if (n > 0)
            FUZZ_CHECK(tok_decode(t, ids, (size_t)n, &back) >= 0, "%s", err_msg());
        free(back);
        free(ids);
        err_clear();
    }
    int32_t run[64];
    int m = 0;
    for (int32_t id = 0; id < nv && id < 4096; id++) {
        run[m++] = id;
        if (m == 64 || id + 1 == nv || id + 1 == 4096) {
            char *back = NULL;
            FUZZ_CHECK(tok_decode(t, run, (size_t)m, &back) >= 0, "%s", err_msg());
            free(back);
            m = 0;
        }
    }
    tok_destroy(t);
    return 0;
}
