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

/* Where a tokenizer meets its model: check every id T can give (its
 * vocabulary and added tokens, BOS, EOS) against vocab_size, the rows of
 * the model's embedding table (model_file names where it comes from, for
 * the message). The tokenizer alone is loaded without a model (flexh2o
 * tokenize), so tok_load cannot check this itself.
 * @return 0, or -EINVAL with a message naming the file that gives the id
 * and the id. */
int tok_check_vocab(const tok *t, int vocab_size, const char *model_file);

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

/* ---------------------------------------------------- chat templates */

/* A model's chat template turns a list of messages into the prompt text.
 * Templates are Jinja (tokenizer_config.json's chat_template, or
 * chat_template.jinja beside it); flexh2o runs no Jinja: it recognises the
 * common templates (tok_chat_template_detect) and renders them in C,
 * giving the text transformers' apply_chat_template(tokenize=False) gives,
 * byte for byte:
 *
 *   llama3          Meta-Llama-3-8B/70B-Instruct
 *   llama3.1        Llama-3.1-*-Instruct, Llama-3.3-70B-Instruct: a system
 *                   block with "Cutting Knowledge Date: December 2023" and
 *                   "Today Date: 26 Jul 2024" always (the template's
 *                   default date)
 *   chatml          plain ChatML (OpenHermes-2.5, Mistral-7B-OpenOrca)
 *   qwen1.5         ChatML, default system "You are a helpful assistant"
 *   qwen2           ChatML, default system "You are a helpful assistant."
 *   qwen2.5         ChatML, default system "You are Qwen, created by Alibaba
 *                   Cloud. You are a helpful assistant."
 *   llama2          Llama-2-*-chat: [INST] with <<SYS>>, BOS per turn
 *                   (CodeLlama-Instruct the same)
 *   mistral-legacy  Mixtral-8x7B-Instruct-v0.1 / Mistral-7B-Instruct-v0.2 as
 *                   released: "[INST] a [/INST]", no system message
 *   mistral-v1      the same models' template since mid 2024 (mistral-common
 *                   tokenizer V1): " [INST] a [/INST]", system message
 *                   before the first user message
 *   mistral-v3      mistral-common V3 (Mistral-Large-Instruct-2407,
 *                   Mistral-7B-Instruct-v0.3): "[INST] a[/INST]", system
 *                   message before the last user message
 *   gemma           gemma-7b-it, gemma-2-*-it: <start_of_turn>, no system
 *   zephyr          zephyr-7b-beta, TinyLlama-1.1B-Chat-v1.0: <|user|>
 *
 *   int kind;
 *   if (tok_chat_template_detect(tok_chat_template(t), &kind) < 0) ...
 *   tok_chat_msg m[2] = {{"system", "Be terse."}, {"user", "Hi"}};
 *   int32_t *ids;
 *   int n = tok_chat_encode(t, kind, m, 2, 1, &ids);  // BOS as written
 *
 * The rendered text holds the BOS text where the template writes it
 * (llama2, mistral-*, llama3*, gemma): encode it as it is, adding no BOS
 * (apply_chat_template(tokenize=True) encodes with
 * add_special_tokens=False), which is what tok_chat_encode does. */
enum tok_chat_kind {
    TOK_CHAT_LLAMA3,
    TOK_CHAT_LLAMA3_1,
    TOK_CHAT_CHATML,
    TOK_CHAT_QWEN1_5,
    TOK_CHAT_QWEN2,
    TOK_CHAT_QWEN2_5,
    TOK_CHAT_LLAMA2,
    TOK_CHAT_MISTRAL_LEGACY,
    TOK_CHAT_MISTRAL_V1,
    TOK_CHAT_MISTRAL_V3,
    TOK_CHAT_GEMMA,
    TOK_CHAT_ZEPHYR,
    TOK_CHAT_COUNT
};

/* One message. ROLE is "system", "user" or "assistant"; CONTENT UTF-8. */
typedef struct {
    const char *role, *content;
} tok_chat_msg;

/* The name of template KIND ("llama3", ...: the table above), or NULL
 * when KIND is not an enum tok_chat_kind. Static storage. */
const char *tok_chat_name(int kind);

/* The template --chat-template NAME chooses, in *kind.
 * @return 0, or -EINVAL when NAME is none of the names (the message lists
 * them). */
int tok_chat_template_find(const char *name, int *kind);

/* Recognise the Jinja text JINJA (NUL-terminated; NULL when the model has
 * none) as one of the templates, in *kind. Recognised are the texts of
 * the models above in each revision flexh2o knows, and any text that is
 * one of those up to form: layout and whitespace control that leave the
 * output alike, quotes, escapes (\n or a newline), comments,
 * message['role'] for message.role. Anything else would render otherwise
 * somewhere and is refused; the message gives the text's fingerprint
 * (tok_chat_fingerprint), which is what a new revision adds to the table
 * in tok_chat_detect.c.
 * @return 0, -ENOENT (JINJA is NULL) or -ENOTSUP (not recognised); both
 * messages say to pass --chat-template NAME and list the names. */
int tok_chat_template_detect(const char *jinja, int *kind);

/* Render the N messages MSGS with template KIND into *out (malloc'd,
 * NUL-terminated; the caller frees it), as transformers'
 * apply_chat_template(messages, tokenize=False, add_generation_prompt=
 * ADD_GENERATION_PROMPT) renders the template with the tokenizer's
 * BOS_TOKEN and EOS_TOKEN strings (NULL: the tokenizer has none; the
 * template then writes ""). The order of messages is checked as the
 * template checks it, with its message (Llama-2, Mistral and Gemma:
 * "Conversation roles must alternate user/assistant/user/assistant/...",
 * "System role not supported", ...). flexh2o also refuses what a template
 * would render silently wrong: a role other than system, user, assistant;
 * no messages; for llama2, a system message after the first (the
 * template drops it). On failure *out is NULL.
 * @return the byte length of *out, or -EINVAL (KIND unknown, the messages
 * refused: the message says why and which), -EILSEQ (a content is not
 * UTF-8), -EOVERFLOW (over INT32_MAX bytes), -ENOMEM. */
int tok_chat_render(int kind, const tok_chat_msg *msgs, int n,
                    int add_generation_prompt, const char *bos_token,
                    const char *eos_token, char **out);

/* tok_chat_render with T's BOS and EOS strings (tok_chat_bos_token,
 * tok_chat_eos_token), then tok_encode of the text: the ids of
 * apply_chat_template(tokenize=True). No BOS is added beyond the one the
 * template writes. *ids as tok_encode's (the caller frees it).
 * @return the number of ids, or as tok_chat_render and tok_encode. */
int tok_chat_encode(const tok *t, int kind, const tok_chat_msg *msgs, int n,
                    int add_generation_prompt, int32_t **ids);

/* The model's chat template: DIR/chat_template.jinja when it exists, else
 * tokenizer_config.json's chat_template (a string, or of a list of
 * {"name", "template"} the one named "default"). NULL when there is none
 * (nor a "default").
 * Points into T (valid until tok_destroy). */
const char *tok_chat_template(const tok *t);

/* tokenizer_config.json's bos_token and eos_token strings (each a string
 * or {"content": ...}), as the template sees them; NULL when absent.
 * Point into T. */
const char *tok_chat_bos_token(const tok *t);
const char *tok_chat_eos_token(const tok *t);

/* The fingerprint of a Jinja text's form (LEN bytes, no NUL needed): a
 * 64-bit hash of its tokens as Jinja's lexer (trim_blocks and
 * lstrip_blocks, as transformers sets them) yields them, output text
 * after whitespace control, string literals by value, comments dropped,
 * x['name'] as x.name. Two texts with one fingerprint render alike.
 * @return 0, or -EINVAL (not valid Jinja: an unclosed tag or string; no
 * message). */
int tok_chat_fingerprint(const char *jinja, size_t len, uint64_t *fp);

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
