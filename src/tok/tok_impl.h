/* tok_impl.h: the inside of a tok, for the files of src/tok/ only.
 *
 *   tok.c         loading: the files -> struct tok_src -> struct tok
 *   tok_json.c    tokenizer.json -> struct tok_src (model, added tokens,
 *                 normalizer, pre-tokenizer, decoder, post-processor)
 *   tok_config.c  BOS and EOS: tokenizer_config.json, generation_config.json,
 *                 config.json; the chat template and its BOS/EOS strings
 *   tok_encode.c  added tokens, normalizer, pre-tokenizer, then BPE
 *   tok_bpe.c     BPE of one piece
 *   tok_pretok.c  UTF-8 and the Split regexes
 *   tok_decode.c  the decoder
 *   tok_chat.c    chat templates: names, rendering, encoding
 *   tok_chat_detect.c  a Jinja text's fingerprint -> the template it is
 */
#ifndef FH_TOK_IMPL_H
#define FH_TOK_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tok.h"

struct cJSON;

/* Largest id accepted: bounds the per-id arrays a corrupt file can ask for
 * (largest real vocabularies are ~256k). Fuzz builds (libFuzzer's macro
 * FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, set by -Dfuzz=enabled) bound
 * it at 2^16: the arrays are dense, so one input naming an id near 2^24
 * costs half a second of per-id loops under ASan, and libFuzzer keeps such
 * inputs; the bound is checked by the same code at either value. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define TOK_MAX_ID (1 << 16)
#else
#define TOK_MAX_ID (1 << 24)
#endif

/* The strings of pipeline steps (Prepend, Replace, Strip, Metaspace's
 * replacement) are short: "▁", " ". Longer ones are refused. */
#define TOK_STR_MAX 16
/* Steps of a normalizer or decoder Sequence (Llama-2's decoder has 4). */
#define TOK_MAX_STEPS 8

struct tok_str {
    char s[TOK_STR_MAX];
    size_t len;
};

enum tok_kind {
    TOK_KIND_HOLE,    /* no token has this id */
    TOK_KIND_BPE,     /* a BPE start symbol or the result of a merge */
    TOK_KIND_OTHER,   /* decoded as its text */
    TOK_KIND_SPECIAL, /* a special token: matched in text, not decoded */
};

/* ------------------------------------------------------------ pipeline */

enum tok_norm_kind { TOK_NORM_NFC, TOK_NORM_PREPEND, TOK_NORM_REPLACE };

struct tok_norm {
    enum tok_norm_kind kind;
    struct tok_str a, b; /* Prepend a; Replace a -> b */
};

enum tok_prepend { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

/* The pre-tokenizer: transform a segment, split it, map it. */
struct tok_pretok {
    int regex;        /* an enum tok_split, or -1: no regex split */
    int byte_level;   /* BPE starts from the byte symbols of each piece */
    int prefix_space; /* ByteLevel add_prefix_space: ' ' before a segment
                       * that does not start with one */
    int metaspace;    /* ' ' -> repl, repl before the segment by prepend */
    enum tok_prepend prepend;
    int msplit;       /* Metaspace split: a piece starts at each repl */
    struct tok_str repl;
};

enum tok_dec_kind {
    TOK_DEC_BYTE_LEVEL,    /* byte symbols -> bytes, all tokens fused */
    TOK_DEC_REPLACE,       /* a -> b in each token */
    TOK_DEC_BYTE_FALLBACK, /* runs of <0xNN> tokens -> their bytes */
    TOK_DEC_FUSE,          /* all tokens into one */
    TOK_DEC_STRIP,         /* up to start/stop a's off each token's ends */
    TOK_DEC_METASPACE,     /* repl a -> ' ' (dropped in the first token) */
};

struct tok_dec {
    enum tok_dec_kind kind;
    struct tok_str a, b;
    int start, stop;          /* Strip */
    enum tok_prepend prepend; /* Metaspace */
};

/* Everything of tokenizer.json past the vocabulary and merges. */
struct tok_pipe {
    struct tok_norm norm[TOK_MAX_STEPS];
    int n_norm;
    struct tok_pretok pre;
    struct tok_dec dec[TOK_MAX_STEPS];
    int n_dec;
    int no_decoder;    /* decoder null: tokens joined by ' ' */
    int byte_fallback; /* model.byte_fallback */
    int ignore_merges; /* model.ignore_merges: a piece in the vocabulary is
                        * one token, merges or not */
    int fuse_unk;      /* model.fuse_unk: a run of unknowns is one unk */
};

/* ---------------------------------------------------------- added tokens */

enum {
    TOK_ADDED_SPECIAL = 1,
    TOK_ADDED_LSTRIP = 2,
    TOK_ADDED_RSTRIP = 4,
    TOK_ADDED_SINGLE_WORD = 8,
    TOK_ADDED_NORMALIZED = 16,
};

struct tok_added {
    size_t off, len; /* matched text at the set's text + off */
    int32_t id;
    unsigned flags;  /* TOK_ADDED_* */
};

/* Added tokens matched in one text: the raw input or normalized text. */
struct tok_added_set {
    struct tok_added *tok; /* (n) */
    int n;
    char *text;
    uint8_t first[256];    /* 1 where some token starts with that byte */
};

/* ------------------------------------------------------------- the tok */

struct tok_map_slot {
    const char *s; /* NULL when free */
    size_t len;
    int32_t id;
};

/* string -> id, open addressing (XXH3, linear probing, half full). */
struct tok_map {
    struct tok_map_slot *slot;
    size_t mask;
};

#define TOK_MERGE_EMPTY UINT64_MAX

struct tok_merge {
    uint64_t key; /* (uint64)left << 32 | right, TOK_MERGE_EMPTY when free */
    int32_t rank; /* place in the merge list: lower merges first */
    int32_t id;   /* id of left + right */
};

/* The inverse of GPT-2's bytes_to_unicode covers code points below 324. */
#define TOK_CP_BYTE_MAX 324

struct tok {
    int32_t n_vocab;          /* max id + 1 */
    uint8_t *kind;            /* (n_vocab) enum tok_kind */
    uint32_t *str_off;        /* (n_vocab + 1): id i is str[off[i]..off[i+1]) */
    char *str;                /* token strings: model.vocab's, else added */
    struct tok_map vocab;     /* model.vocab (not added tokens): -> id */
    int32_t byte_id[256];     /* byte-level: id of each byte's symbol;
                               * byte_fallback: of its <0xNN>; else -1 */
    int32_t unk_id;           /* model.unk_token, or -1 */
    struct tok_merge *merge;  /* (merge_mask + 1), open addressing */
    uint64_t merge_mask;
    int merge_shift;          /* 64 - log2(merge_mask + 1) */
    struct tok_pipe pipe;
    struct tok_added_set raw;  /* added tokens with normalized: false */
    struct tok_added_set norm; /* normalized: true, their text normalized */
    int16_t cp_byte[TOK_CP_BYTE_MAX]; /* byte of each byte symbol, or -1 */
    int32_t bos_id;           /* tok_bos_id */
    int32_t *eos;             /* (n_eos) tok_eos_ids */
    int n_eos;
    char *chat_template;      /* tok_chat_template, or NULL */
    char *bos_text, *eos_text; /* tok_chat_bos_token/eos_token, or NULL */
    /* the files the ids come from, for tok_check_vocab's messages */
    char *vocab_file;         /* the vocabulary's: vocab.json or tokenizer.json */
    char *bos_file, *eos_file; /* where bos_id and eos came from, or NULL */
};

/* ----------------------------------------------------- load-time input */

struct tok_vocab_entry {
    const char *s;
    size_t len;
    int32_t id;
};

struct tok_merge_entry {
    const char *a, *b;
    size_t alen, blen;
    int where; /* line of merges.txt, or index in model.merges */
};

struct tok_added_entry {
    const char *s;
    size_t len;
    int32_t id;
    unsigned flags; /* TOK_ADDED_* */
};

/* What the tokenizer files say, pointing into their parsed text. */
struct tok_src {
    const char *vocab_name;  /* for messages: a path or "vocab.json" */
    const char *merges_name;
    int merges_are_lines;    /* where is a line number (merges.txt) */
    struct tok_vocab_entry *v;
    size_t nv;
    struct tok_merge_entry *m;
    size_t nm;
    struct tok_added_entry *a;
    size_t na;
    int markup_specials;     /* vocab.json: specials are the unreachable
                              * "<...>" entries (there is no added list) */
    const char *unk;         /* model.unk_token, or NULL */
    struct tok_pipe pipe;
    int has_template;        /* post_processor has a TemplateProcessing */
    const char *template_bos; /* the special token it starts with, or NULL */
    int32_t template_bos_id;  /* its id in special_tokens, or -1 */
};

/* tok_json.c: fill SRC from tokenizer.json's ROOT (NAME for messages):
 * the vocabulary, merges, added tokens, pipeline and post-processor;
 * refuse what flexh2o does not run. Entries point into ROOT.
 * @return 0, -EINVAL, -ENOTSUP or -ENOMEM. */
int tok_json_read(const struct cJSON *root, const char *name,
                  struct tok_src *src);

/* tok_json.c: vocab.json, or tokenizer.json's model.vocab: OBJ's
 * "token": id members into src->v. @return 0, -EINVAL or -ENOMEM. */
int tok_json_vocab(const struct cJSON *obj, const char *name,
                   struct tok_src *src);

/* tok_json.c: split the merge "a b" (one space, both sides non-empty)
 * into E. @return 0 or -EINVAL (no message). */
int tok_split_merge(const char *s, size_t len, struct tok_merge_entry *e);

/* tok_config.c: T's bos_id and eos from DIR's tokenizer_config.json,
 * generation_config.json and config.json (each optional), SRC's
 * post-processor template (see tok_bos_id). @return 0, -EINVAL, -ENOTSUP
 * or -ENOMEM. */
int tok_config_load(tok *t, const char *dir, const struct tok_src *src);

/* tok.c: the id of token string S: an added token's, else model.vocab's.
 * @return the id or -1. */
int32_t tok_token_id(const tok *t, const char *s, size_t len);

/* tok.c: the model.vocab id of S, or -1. */
int32_t tok_map_get(const struct tok_map *m, const char *s, size_t len);

/* tok.c: the merge of (LEFT, RIGHT), or NULL. */
const struct tok_merge *tok_merge_find(const tok *t, int32_t left, int32_t right);

/* tok_encode.c: S[0..len) through T's normalizer, into *buf (grown, the
 * caller frees); *out is S itself when there is no normalizer.
 * @return the normalized length, or -ENOMEM. */
int tok_normalize(const tok *t, const char *s, size_t len, char **buf,
                  size_t *cap, const char **out);

/* ------------------------------------------------------------- BPE */

/* Per-call BPE scratch, grown to the longest piece seen. */
struct tok_bpe_scratch {
    int32_t *id, *prev, *next; /* (cap) symbols of the piece */
    uint64_t *heap;            /* (3 * cap) rank << 32 | position */
    size_t cap;
    char *word;                /* (word_cap) a byte-level piece's symbols */
    size_t word_cap;
};

/* tok_bpe.c: BPE of the piece W[0..n) (n >= 1), at most n ids written at
 * OUT. @return the number of ids, or -ENOMEM. */
int tok_bpe_piece(const tok *t, const char *w, size_t n,
                  struct tok_bpe_scratch *sc, int32_t *out);

/* Free SC's buffers (not SC). */
void tok_bpe_scratch_free(struct tok_bpe_scratch *sc);

/* tok_pretok.c: 1 when the code point is in Oniguruma's \s, which is
 * Unicode's White_Space as Rust regex's \s (added tokens' lstrip/rstrip). */
int tok_is_space(uint32_t c);

/* tok_pretok.c: 1 when the code point is in Rust regex's \w (added tokens'
 * single_word): letters, marks, decimal digits, letter numbers, connector
 * punctuation, ZWNJ/ZWJ, and the circled and squared letters. */
int tok_is_word(uint32_t c);

/* tok.c: GPT-2's bytes_to_unicode: the code point standing for byte B in
 * byte-level BPE. */
uint32_t tok_byte_cp(unsigned b);

#endif
