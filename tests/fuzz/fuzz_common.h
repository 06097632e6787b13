/* fuzz_common.h: what the libFuzzer harnesses of tests/fuzz/ share.
 *
 * Each harness (fuzz_<target>.c) defines LLVMFuzzerTestOneInput and is
 * linked twice: with libFuzzer (-Dfuzz=enabled, clang), and with
 * fuzz_replay.c's main, which feeds it the committed corpus and the
 * regressions in every build (the fuzz_replay tests). A harness checks
 * what must hold for any input (FUZZ_CHECK) besides what the sanitizers
 * catch; a failed check aborts, which both drivers report as a crash.
 *
 * Parsers that read a path get the input through a file in a private
 * scratch directory on tmpfs (fuzz_dir), made once per process and
 * removed at exit.
 */
#ifndef FH_FUZZ_COMMON_H
#define FH_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort with a message when cond is false: an input broke a property. */
#define FUZZ_CHECK(cond, ...)                                                 \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: fuzz check failed: %s: ", __FILE__,       \
                    __LINE__, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* Start of every input: silences err_log (progress and warnings) and
 * clears the last error message, so that one input's message never
 * shows in the next. */
void fuzz_begin(void);

/* The embedded GPT-2 tokenizer (src/tok_embedded.c), loaded once per
 * process: the tokenizer of the harnesses that parse text. */
struct tok;
struct tok *fuzz_embedded_tok(void);

/* The scratch directory (created on the first call under /dev/shm, else
 * $TMPDIR or /tmp; removed with its files at exit). Static storage. */
const char *fuzz_dir(void);
/* dir/name into buf (aborts when it does not fit). @return buf. */
char *fuzz_path(char *buf, size_t cap, const char *name);
/* Write len bytes of data to fuzz_dir()/name (created or truncated);
 * aborts on failure, which is the machine's, not the input's. */
void fuzz_write(const char *name, const void *data, size_t len);
/* Remove fuzz_dir()/name if it exists. */
void fuzz_remove(const char *name);

/* One part of an input split at a separator byte. */
typedef struct fuzz_part {
    const uint8_t *data;
    size_t len;
} fuzz_part;
/* Split data[0..size) at each byte sep into at most max parts (the last
 * one keeps any further separators); missing parts are empty.
 * @return the parts found (1 .. max). */
size_t fuzz_split(const uint8_t *data, size_t size, uint8_t sep, fuzz_part *parts,
                  size_t max);

/* A NUL-terminated malloc'd copy of data[0..len) (aborts when out of
 * memory); the caller frees it. */
char *fuzz_strndup(const uint8_t *data, size_t len);

#endif
