/* fuzz_tok_bpe.c: vocab.json + merges.txt (tok_load_mem: GPT-2's pair of
 * files, the byte symbols, the merges, the "<...>" specials), then
 * encoding and decoding with what loads.
 *
 * Input: vocab.json, 0x1e, merges.txt, 0x1e, a text to encode (ASCII's
 * record separator: no valid JSON or merges line holds it raw).
 *
 * Checked for any input: every id encoded is in the vocabulary, and a
 * text of ordinary words (no "<...>" special) decodes back to itself. */
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    fuzz_part p[3];
    fuzz_split(data, size, 0x1e, p, 3);
    tok *t = NULL;
    if (tok_load_mem((const char *)p[0].data, p[0].len, (const char *)p[1].data, p[1].len,
                     &t) < 0)
        return 0;
    int nv = tok_vocab_size(t);
    FUZZ_CHECK(nv > 0, "empty vocabulary loaded");
    int32_t *ids = NULL;
    int n = tok_encode(t, (const char *)p[2].data, p[2].len, &ids);
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d of %d", ids[i], nv);
    int special = memchr(p[2].data, '<', p[2].len) != NULL;
    char *back = NULL;
    if (n >= 0) {
        int k = tok_decode(t, ids, (size_t)n, &back);
        FUZZ_CHECK(k >= 0, "decoding what was encoded: %s", err_msg());
        /* byte-level BPE reaches every byte, so a text without specials
         * comes back whole */
        FUZZ_CHECK(special || ((size_t)k == p[2].len && memcmp(back, p[2].data, p[2].len) == 0),
                   "\"%.*s\" decodes to \"%s\"", (int)p[2].len, (const char *)p[2].data, back);
    }
    free(back);
    free(ids);
    /* every id decodes, alone and in a run */
    int32_t run[64];
    int m = 0;
    for (int32_t id = 0; id < nv && id < 4096; id++) {
        run[m++] = id;
        if (m == 64 || id + 1 == nv || id + 1 == 4096) {
            back = NULL;
            FUZZ_CHECK(tok_decode(t, run, (size_t)m, &back) >= 0, "%s", err_msg());
            free(back);
            m = 0;
        }
    }
    tok_destroy(t);
    return 0;
}
