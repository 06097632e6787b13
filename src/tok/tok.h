/* tok.h: GPT-2 byte-level BPE, as Hugging Face `tokenizers` runs it for OPT.
 *
 * A tok is built once from a model directory (vocab.json + merges.txt, or
 * tokenizer.json) and is read-only afterwards: tok_encode and tok_decode
 * may be called from several threads on the same tok at once.
 *
 *   tok *t;
 *   if (tok_load("models/opt-125m", &t) < 0) { puts(err_msg()); ... }
 *   int32_t *ids;
 *   int n = tok_encode(t, text, strlen(text), &ids);   // no BOS added
 *   char *s;
 *   tok_decode(t, ids, n, &s);
 *   free(ids); free(s); tok_destroy(t);
 *
 * Encoding, step by step (each step matches `tokenizers` exactly):
 *
 *   text --special tokens--> segments --GPT-2 regex--> pieces
 *        --bytes_to_unicode--> byte symbols --BPE by merge rank--> ids
 *
 * Special tokens. A special token is a vocabulary entry that BPE can never
 * produce (neither one of the 256 byte symbols nor the result of a merge)
 * and that is written like markup, "<...>": OPT's "<s>" "<pad>" "</s>"
 * "<unk>", GPT-2's "<|endoftext|>". As `tokenizers` does with added special
 * tokens, tok_encode splits them out of the text where they occur
 * literally (leftmost, longest first), so "a</s>b" encodes to
 * [id(a), 2, id(b)], and the text between them is tokenized on its own.
 * Other unreachable entries (fairseq's "madeupword0000" fillers) are
 * neither matched nor skipped: they decode as their text. tok_decode skips
 * special tokens (skip_special_tokens=True) and ids not in the vocabulary.
 */
#ifndef FH_TOK_H
#define FH_TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;

/* Load the tokenizer of model directory DIR: DIR/vocab.json and
 * DIR/merges.txt, or, when vocab.json is absent, DIR/tokenizer.json
 * (model.vocab and model.merges; merges as "a b" strings or [a, b] lists).
 * Reads no other file. *out is set on success; free it with tok_destroy.
 * @return 0, or -ENOENT (DIR or a file is missing), -ENOTDIR, -EINVAL (a
 * file is not valid), -ENOTSUP (tokenizer.json describes another kind of
 * tokenizer), -ENOMEM, other -errno from I/O; the message (err_msg) names
 * the file and says what to do. On failure *out is NULL. */
int tok_load(const char *dir, tok **out);

/* Same as tok_load, from the text of vocab.json and merges.txt in memory
 * (need not be NUL-terminated; the caller keeps ownership). Used for the
 * embedded tokenizer below. @return as tok_load. */
int tok_load_mem(const char *vocab_json, size_t vocab_len,
                 const char *merges_txt, size_t merges_len, tok **out);

/* Free everything of T. Accepts NULL. */
void tok_destroy(tok *t);

/* Number of rows an embedding table needs: the largest id + 1. */
int tok_vocab_size(const tok *t);

/* Encode LEN bytes of UTF-8 TEXT (no NUL needed). No BOS or EOS is added:
 * the caller prepends OPT's "</s>" itself. Special tokens written in the
 * text are matched (see above). On success *ids is a malloc'd array of the
 * returned count (allocated even when the count is 0); the caller frees it.
 * On failure *ids is NULL.
 * @return the number of ids, or -EILSEQ (TEXT is not valid UTF-8; the
 * message gives the byte offset), -EOVERFLOW (LEN > INT_MAX), -ENOMEM. */
int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids);

/* Decode N ids back to bytes: the byte-level inverse of tok_encode.
 * Special tokens and ids outside the vocabulary are skipped. On success
 * *out is malloc'd and NUL-terminated (the caller frees it); it may end in
 * a partial UTF-8 character when the ids were cut mid-character, so treat
 * it as bytes. On failure *out is NULL.
 * @return the byte length of *out (without the NUL), or -EOVERFLOW,
 * -ENOMEM. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out);

/* ------------------------------------------------------- lower level */

/* The pre-tokenizer alone, exposed for tests and tools: the end offset of
 * the GPT-2 regex piece that starts at byte POS of S,
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * S[0..LEN) must be valid UTF-8 (see tok_utf8_check) and POS < LEN must
 * start a character. @return an offset in (POS, LEN]. */
size_t tok_pretok_next(const char *s, size_t len, size_t pos);

/* The one UTF-8 decoder of flexh2o (libutf8proc's utf8proc_iterate): the
 * character that starts S[0..LEN), LEN > 0, with its code point in *CP.
 * Overlong forms, surrogates, code points past U+10FFFF, stray
 * continuation bytes and a sequence cut by LEN are invalid. @return its
 * byte length (1 to 4), or -EILSEQ (*CP untouched). Records no message. */
int tok_utf8_char(const char *s, size_t len, uint32_t *cp);

/* @return 0 when S[0..LEN) is valid UTF-8 (every character passes
 * tok_utf8_char), else -EILSEQ with *bad (may be NULL) set to the offset
 * of the first byte of the first invalid sequence. Records no message. */
int tok_utf8_check(const char *s, size_t len, size_t *bad);

/* ---------------------------------------------------------- embedded */

/* vocab.json and merges.txt of configs/tokenizer (512 ids), compiled in
 * by src/tok_embedded.c (generated by configs/tokenizer/embed.py). The
 * arrays are NUL-terminated; the lengths exclude the NUL. Pass them to
 * tok_load_mem. This is the tokenizer of `flexh2o make-model` models. */
extern const char tok_embedded_vocab_json[];
extern const size_t tok_embedded_vocab_json_len;
extern const char tok_embedded_merges_txt[];
extern const size_t tok_embedded_merges_txt_len;

#endif
