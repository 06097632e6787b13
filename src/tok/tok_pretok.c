/* tok_pretok.c: UTF-8 validation and the Split regexes of the
 * pre-tokenizers: GPT-2's (ByteLevel's own), Llama-3's and Qwen2's.
 *
 * `tokenizers` (ByteLevel, use_regex=true) splits text with Oniguruma and
 *
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * The pattern needs no general regex engine: every code point falls in
 * exactly one of four classes (whitespace, letter, number, other), the
 * alternatives are tried in order at the start of a piece, and each one is
 * decided by the first one or two code points:
 *
 *   '  + s t m d / re ve ll  -> the contraction (lower case only)
 *   [space] + L / N / other   -> the run of that class (space only U+0020)
 *   whitespace run w1..wk     -> k if it ends the text, else k-1 (the last
 *                                one is left to prefix the next piece:
 *                                (?!\S) backtracks one code point), or 1
 *                                when k == 1 (the plain \s+ branch)
 *
 * so one left-to-right scan finds each piece in time linear in its length.
 *
 * Classes follow Oniguruma's Unicode definitions: \p{L} is general category
 * L* (Lu Ll Lt Lm Lo), \p{N} is N* (Nd Nl No), both from libutf8proc, and
 * \s is U+0009..U+000D, U+0085 and the categories Zs Zl Zp, listed below
 * (Oniguruma's ONIGENC_CTYPE_SPACE; this is also Unicode's White_Space).
 */
#include "tok_impl.h"

#include <errno.h>
#include <utf8proc.h>

enum { CLS_WS, CLS_L, CLS_N, CLS_O };

/* Letters and numbers new in Unicode 16.0, which Oniguruma in `tokenizers`
 * 0.23 knows and libutf8proc before 2.10 (Unicode <= 15.1) leaves
 * unassigned (Cn). Consulted only for Cn, so a newer libutf8proc changes
 * nothing. Found by running every code point, in letter/number/space/
 * punctuation contexts, through this file and through `tokenizers`'
 * ByteLevel pre-tokenizer: with this table all 1,112,064 agree. Sorted,
 * for binary search. */
static const struct {
    uint32_t lo, hi;
    int cls;
} unicode16[] = {
    {0x1C89, 0x1C8A, CLS_L}, {0xA7CB, 0xA7CD, CLS_L}, {0xA7DA, 0xA7DC, CLS_L},
    {0x105C0, 0x105F3, CLS_L}, {0x10D40, 0x10D49, CLS_N},
    {0x10D4A, 0x10D65, CLS_L}, {0x10D6F, 0x10D85, CLS_L},
    {0x10EC2, 0x10EC4, CLS_L}, {0x11380, 0x11389, CLS_L},
    {0x1138B, 0x1138B, CLS_L}, {0x1138E, 0x1138E, CLS_L},
    {0x11390, 0x113B5, CLS_L}, {0x113B7, 0x113B7, CLS_L},
    {0x113D1, 0x113D1, CLS_L}, {0x113D3, 0x113D3, CLS_L},
    {0x116D0, 0x116E3, CLS_N}, {0x11BC0, 0x11BE0, CLS_L},
    {0x11BF0, 0x11BF9, CLS_N}, {0x13460, 0x143FA, CLS_L},
    {0x16100, 0x1611D, CLS_L}, {0x16130, 0x16139, CLS_N},
    {0x16D40, 0x16D6C, CLS_L}, {0x16D70, 0x16D79, CLS_N},
    {0x18CFF, 0x18CFF, CLS_L}, {0x1CCF0, 0x1CCF9, CLS_N},
    {0x1E5D0, 0x1E5ED, CLS_L}, {0x1E5F0, 0x1E5F0, CLS_L},
    {0x1E5F1, 0x1E5FA, CLS_N}, {0x2EBF0, 0x2EE5D, CLS_L},
};

static int unicode16_cls(uint32_t c)
{
    size_t lo = 0, hi = sizeof unicode16 / sizeof *unicode16;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < unicode16[mid].lo)
            hi = mid;
        else if (c > unicode16[mid].hi)
            lo = mid + 1;
        else
            return unicode16[mid].cls;
    }
    return CLS_O;
}

int tok_utf8_char(const char *s, size_t len, uint32_t *cp)
{
    const unsigned char *p = (const unsigned char *)s;
    if (len > 0 && p[0] < 0x80) { /* ASCII without the library call */
        *cp = p[0];
        return 1;
    }
    /* a character has at most 4 bytes; a larger len could turn negative,
     * which utf8proc reads as "NUL-terminated" */
    utf8proc_int32_t c;
    utf8proc_ssize_t n = utf8proc_iterate(p, len < 4 ? (utf8proc_ssize_t)len : 4, &c);
    if (n <= 0)
        return -EILSEQ;
    *cp = (uint32_t)c;
    return (int)n;
}

int tok_utf8_check(const char *s, size_t len, size_t *bad)
{
    uint32_t c;
    for (size_t i = 0; i < len;) {
        int n = tok_utf8_char(s + i, len - i, &c);
        if (n < 0) {
            if (bad)
                *bad = i;
            return -EILSEQ;
        }
        i += (size_t)n;
    }
    return 0;
}

/* Decode the character at *i of the valid text p[0..len) and advance *i
 * past it (an invalid byte, which a caller breaking the contract could
 * pass, is read as U+FFFD and skipped). */
static inline uint32_t utf8_next(const unsigned char *p, size_t len, size_t *i)
{
    uint32_t c;
    int n = tok_utf8_char((const char *)p + *i, len - *i, &c);
    *i += n > 0 ? (size_t)n : 1;
    return n > 0 ? c : 0xfffd;
}

static int cls_of(uint32_t c)
{
    if (c < 0x80) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return CLS_L;
        if (c >= '0' && c <= '9')
            return CLS_N;
        if (c == ' ' || (c >= 0x09 && c <= 0x0d))
            return CLS_WS;
        return CLS_O;
    }
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CLS_L;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CLS_N;
    case UTF8PROC_CATEGORY_ZS: /* U+00A0, U+1680, U+2000..200A, ... */
    case UTF8PROC_CATEGORY_ZL: /* U+2028 */
    case UTF8PROC_CATEGORY_ZP: /* U+2029 */
        return CLS_WS;
    case UTF8PROC_CATEGORY_CN:
        return unicode16_cls(c);
    default:
        return c == 0x85 ? CLS_WS : CLS_O; /* NEL is Cc but \s */
    }
}

size_t tok_pretok_next(const char *s, size_t len, size_t pos)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = pos;
    uint32_t c0 = utf8_next(p, len, &i);

    /* 's|'t|'re|'ve|'m|'ll|'d */
    if (c0 == '\'' && i < len) {
        unsigned char a = p[i];
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 1;
        if (i + 1 < len) {
            unsigned char b = p[i + 1];
            if ((b == 'e' && (a == 'r' || a == 'v')) || (a == 'l' && b == 'l'))
                return i + 2;
        }
    }

    /* ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': the class of the first code
     * point after an optional U+0020 picks the branch. */
    size_t j = i;
    uint32_t c = c0;
    if (c0 == ' ' && i < len)
        c = utf8_next(p, len, &j);
    int k = cls_of(c);
    if (k != CLS_WS) {
        size_t e = j;
        while (e < len) {
            size_t e2 = e;
            if (cls_of(utf8_next(p, len, &e2)) != k)
                break;
            e = e2;
        }
        return e;
    }

    /* '\s+(?!\S)|\s+' from pos (c0 is whitespace here: either c0 itself
     * was classed above, or c0 is U+0020 followed by whitespace). */
    size_t e = i, last = pos;
    while (e < len) {
        size_t e2 = e;
        if (cls_of(utf8_next(p, len, &e2)) != CLS_WS)
            break;
        last = e;
        e = e2;
    }
    if (e == len)
        return len;
    return last > pos ? last : e;
}

/* ----------------------------------------------------- Llama-3, Qwen2 */

/* Llama-3's pattern (Qwen2's has \p{N} for \p{N}{1,3}):
 *
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *
 * Tried in order at the start of a piece, each alternative is again
 * decided by the first one or two code points:
 *
 *   ' + s t m d / re ve ll    the contraction, any case; Oniguruma's case
 *                             folding also matches U+017F (long s) as s
 *   c0 letter, or c0 neither CR, LF, letter nor number and c1 a letter
 *                             the letter run (c0 included)
 *   c0 number                 up to MAX_DIGITS numbers
 *   [space] + other           the run of "other", then any CR/LF
 *   whitespace run w1..wk     up to and including its last CR/LF when it
 *                             has one ([\r\n]+ after a backtracking \s*);
 *                             else k if it ends the text, k-1 when k > 1
 *                             ((?!\S) backtracks one), or 1
 *
 * (as GPT-2's, "other" is neither whitespace, letter nor number). Checked
 * against `tokenizers`' Split(Regex(...), "isolated"): every code point in
 * ten contexts (after a letter, a space, an apostrophe, a newline, ...)
 * and 200,000 random strings of the characters that matter here agree.
 */

static int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

/* The end of the run of class K from I. */
static size_t run_end(const unsigned char *p, size_t len, size_t i, int k)
{
    while (i < len) {
        size_t j = i;
        if (cls_of(utf8_next(p, len, &j)) != k)
            break;
        i = j;
    }
    return i;
}

/* The contraction at P[i..) after an apostrophe, or 0. */
static size_t contraction(const unsigned char *p, size_t len, size_t i)
{
    size_t j = i;
    uint32_t a = utf8_next(p, len, &j);
    if (a == 's' || a == 'S' || a == 0x17f || a == 't' || a == 'T' ||
        a == 'm' || a == 'M' || a == 'd' || a == 'D')
        return j;
    if (j >= len || a >= 0x80)
        return 0;
    uint32_t b = p[j] | 0x20u, al = a | 0x20u;
    if (((al == 'r' || al == 'v') && b == 'e') || (al == 'l' && b == 'l'))
        return j + 1;
    return 0;
}

/* '\s*[\r\n]+|\s+(?!\S)|\s+' from POS, a whitespace code point. */
static size_t space_piece(const unsigned char *p, size_t len, size_t pos)
{
    size_t e = pos, last = pos, after_nl = 0;
    int k = 0;
    while (e < len) {
        size_t e2 = e;
        uint32_t c = utf8_next(p, len, &e2);
        if (cls_of(c) != CLS_WS)
            break;
        if (is_crlf(c))
            after_nl = e2;
        last = e;
        e = e2;
        k++;
    }
    if (after_nl)
        return after_nl;
    if (e == len || k == 1)
        return e;
    return last;
}

static size_t llama3_next(const unsigned char *p, size_t len, size_t pos,
                          int max_digits)
{
    size_t i = pos, e;
    uint32_t c0 = utf8_next(p, len, &i);
    if (c0 == '\'' && i < len && (e = contraction(p, len, i)))
        return e;
    int k0 = cls_of(c0);
    if (k0 == CLS_L)
        return run_end(p, len, i, CLS_L);
    size_t j = i;
    uint32_t c1 = i < len ? utf8_next(p, len, &j) : 0;
    int k1 = i < len ? cls_of(c1) : -1;
    if (k0 != CLS_N && !is_crlf(c0) && k1 == CLS_L)
        return run_end(p, len, j, CLS_L);
    if (k0 == CLS_N) {
        for (int d = 1; d < max_digits && i < len; d++) {
            size_t i2 = i;
            if (cls_of(utf8_next(p, len, &i2)) != CLS_N)
                break;
            i = i2;
        }
        return i;
    }
    if (k0 == CLS_O || (c0 == ' ' && k1 == CLS_O)) {
        e = run_end(p, len, k0 == CLS_O ? i : j, CLS_O);
        while (e < len && (p[e] == '\r' || p[e] == '\n'))
            e++;
        return e;
    }
    return space_piece(p, len, pos);
}

size_t tok_split_next(enum tok_split re, const char *s, size_t len, size_t pos)
{
    const unsigned char *p = (const unsigned char *)s;
    switch (re) {
    case TOK_SPLIT_LLAMA3:
        return llama3_next(p, len, pos, 3);
    case TOK_SPLIT_QWEN2:
        return llama3_next(p, len, pos, 1);
    case TOK_SPLIT_GPT2:
        break;
    }
    return tok_pretok_next(s, len, pos);
}

int tok_is_space(uint32_t c) { return cls_of(c) == CLS_WS; }

int tok_is_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') || c == '_';
    if (c == 0x200c || c == 0x200d || (c >= 0x24b6 && c <= 0x24e9) ||
        (c >= 0x1f130 && c <= 0x1f149) || (c >= 0x1f150 && c <= 0x1f169) ||
        (c >= 0x1f170 && c <= 0x1f189))
        return 1; /* Join_Control; circled and squared letters (So) */
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return 1;
    case UTF8PROC_CATEGORY_CN:
        return unicode16_cls(c) != CLS_O;
    default:
        return 0;
    }
}
