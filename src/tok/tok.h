/* tok.h: BPE tokenizers as Hugging Face `tokenizers` runs them: GPT-2's
 * byte-level BPE (OPT, GPT-NeoX), byte-level BPE behind Llama-3's and
 * Qwen2's Split regexes, and metaspace BPE with byte fallback (Llama-2,
 * Mistral).
 *
 * A tok is built once from a model directory and is read-only afterwards:
 * tok_encode and tok_decode may be called from several threads on the
 * same tok at once.
 *
 *   tok *t;
 *   if (tok_load("models/opt-125m", &t) < 0) { puts(err_msg()); ... }
 *   int32_t *ids;
 *   int n = tok_encode(t, text, strlen(text), &ids);   // no BOS added
 *   char *s;
 *   tok_decode(t, ids, n, &s);
 *   free(ids); free(s); tok_destroy(t);
 *
 * Encoding, step by step (each step matches `tokenizers` exactly, NFC up
 * to Unicode versions: see tok_encode.c):
 *
 *   text --added tokens (normalized: false)--> segments
 *        --normalizer (NFC, Prepend, Replace)--> normalized segments
 *        --added tokens (normalized: true)--> segments
 *        --pre-tokenizer--> pieces --BPE by merge rank--> ids
 *
 *   pre-tokenizers: ByteLevel (the GPT-2 regex, add_prefix_space), Split
 *   (the GPT-2, Llama-3 or Qwen2 regex, Isolated) + ByteLevel, Metaspace
 *   (prepend_scheme first/always/never, split), or none. BPE starts from
 *   the byte symbols of a byte-level piece, else from the vocabulary entry
 *   of each character, its <0xNN> byte tokens (byte_fallback) or unk.
 *
 * Added tokens. tokenizer.json's added_tokens are split out of the text
 * before anything else, leftmost and longest first, as `tokenizers` does:
 * with lstrip/rstrip they take the whitespace on their left/right with
 * them, a single_word one matches only between non-word characters, a
 * normalized one is matched in the normalized text. So "a</s>b" encodes
 * to [id(a), id(</s>), id(b)] and the text between them is tokenized on
 * its own. Without tokenizer.json (vocab.json + merges.txt), the special
 * tokens are the vocabulary entries BPE can never produce that are
 * written like markup, "<...>": OPT's "<s>" "<pad>" "</s>" "<unk>",
 * GPT-2's "<|endoftext|>"; other unreachable entries (fairseq's
 * "madeupword0000" fillers) decode as their text.
 *
 * Decoding runs the decoder of tokenizer.json (ByteLevel; Replace,
 * ByteFallback, Fuse, Strip; Metaspace) on the tokens, special tokens
 * skipped (skip_special_tokens=True), and gives the bytes: where
 * `tokenizers` would put U+FFFD for bytes that are not valid UTF-8 (ids
 * cut mid-character), tok_decode keeps the bytes themselves.
 *
 * BOS and EOS come from the directory's other files: see tok_bos_id and
 * tok_eos_ids.
 */
#ifndef FH_TOK_H
#define FH_TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;

/* Load the tokenizer of model directory DIR: DIR/vocab.json and
 * DIR/merges.txt (GPT-2 byte-level BPE), or, when vocab.json is absent,
 * DIR/tokenizer.json (model BPE with vocab and merges as "a b" strings or
 * [a, b] lists, byte_fallback, ignore_merges, unk_token; added_tokens;
 * normalizer; pre_tokenizer; decoder; post_processor). Then, where they
 * exist, DIR/tokenizer_config.json, DIR/generation_config.json and
 * DIR/config.json for BOS and EOS (tok_bos_id, tok_eos_ids). Anything of
 * tokenizer.json or tokenizer_config.json that would change the ids and
 * is not implemented is refused, naming the field. *out is set on
 * success; free it with tok_destroy.
 * @return 0, or -ENOENT (DIR or a tokenizer file is missing), -ENOTDIR,
 * -EINVAL (a file is not valid), -ENOTSUP (a field names a kind of
 * tokenizer or step flexh2o does not run), -ENOMEM, other -errno from
 * I/O; the message (err_msg) names the file and says what to do. On
 * failure *out is NULL. */
int tok_load(const char *dir, tok **out);

/* Same as tok_load, from the text of vocab.json and merges.txt in memory
 * (need not be NUL-terminated; the caller keeps ownership). Used for the
 * embedded tokenizer below. It has no BOS and no EOS. @return as
 * tok_load. */
int tok_load_mem(const char *vocab_json, size_t vocab_len,
                 const char *merges_txt, size_t merges_len, tok **out);

/* Free everything of T. Accepts NULL. */
void tok_destroy(tok *t);

/* Number of rows an embedding table needs: the largest id + 1. */
int tok_vocab_size(const tok *t);

/* The id to put before the tokens of a prompt (tok_encode adds none), or
 * -1 when the model adds none. Decided by the first of:
 *   1. tokenizer_config.json's add_bos_token: true -> its bos_token (a
 *      string or {"content": ...}) or, without one, config.json's
 *      bos_token_id; false -> none;
 *   2. tokenizer.json's post_processor TemplateProcessing (also inside a
 *      Sequence): the special token its "single" template starts with,
 *      none when it starts with the text (Llama-3 says BOS this way);
 *   3. tokenizer_config.json exists: none (the default of the byte-level
 *      fast tokenizers: GPT-NeoX, Qwen2);
 *   4. config.json's bos_token_id, when given (OPT directories without
 *      tokenizer_config.json, `flexh2o make-model`'s); else none.
 * @return the id, or -1. */
int tok_bos_id(const tok *t);

/* The ids that end generation: generation_config.json's eos_token_id,
 * else config.json's, each an id or a list of ids (Llama-3 instruct stops
 * on any of <|end_of_text|>, <|eom_id|>, <|eot_id|>). *ids points into T
 * (valid until tok_destroy; NULL when none).
 * @return how many, 0 when neither file gives eos_token_id (the caller
 * then uses its own default). */
int tok_eos_ids(const tok *t, const int32_t **ids);

/* Encode LEN bytes of UTF-8 TEXT (no NUL needed). No BOS or EOS is added:
 * the caller prepends tok_bos_id itself. Added and special tokens written
 * in the text are matched (see above). On success *ids is a malloc'd array of the
 * returned count (allocated even when the count is 0); the caller frees it.
 * On failure *ids is NULL.
 * @return the number of ids, or -EILSEQ (TEXT is not valid UTF-8; the
 * message gives the byte offset), -EOVERFLOW (LEN > INT_MAX), -ENOMEM. */
int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids);

/* Decode N ids back to bytes with the tokenizer's decoder (see above).
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

/* The Split regexes tok_split_next runs: GPT-2's (as tok_pretok_next),
 * Llama-3's
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * and Qwen2's, the same with \p{N} for \p{N}{1,3}. */
enum tok_split { TOK_SPLIT_GPT2, TOK_SPLIT_LLAMA3, TOK_SPLIT_QWEN2 };

/* As tok_pretok_next, for the regex RE. @return an offset in (POS, LEN]. */
size_t tok_split_next(enum tok_split re, const char *s, size_t len, size_t pos);

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
