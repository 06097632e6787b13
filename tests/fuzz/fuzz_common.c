/* fuzz_common.c: the scratch directory and the input helpers of the
 * harnesses (fuzz_common.h). */
#include "fuzz_common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "tok.h"

static char dir[256];

static void quiet(const char *msg, void *ud)
{
    (void)msg;
    (void)ud;
}

struct tok *fuzz_embedded_tok(void)
{
    static tok *t;
    if (!t)
        FUZZ_CHECK(tok_load_mem(tok_embedded_vocab_json, tok_embedded_vocab_json_len,
                                tok_embedded_merges_txt, tok_embedded_merges_txt_len, &t) == 0,
                   "%s", err_msg());
    return t;
}

void fuzz_begin(void)
{
    err_set_log(quiet, NULL);
    err_clear();
}

/* The directory holds plain files only (fuzz_write's): unlink them, then
 * the directory. */
static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(dir);
}

const char *fuzz_dir(void)
{
    if (dir[0])
        return dir;
    /* tmpfs: the harnesses write a file per input, millions of times */
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm"
                       : getenv("TMPDIR")                                ? getenv("TMPDIR")
                                                                          : "/tmp";
    snprintf(dir, sizeof dir, "%s/flexh2o-fuzz-XXXXXX", base);
    FUZZ_CHECK(mkdtemp(dir) != NULL, "cannot create a scratch directory under %s", base);
    atexit(remove_dir);
    return dir;
}

char *fuzz_path(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", fuzz_dir(), name);
    FUZZ_CHECK(n > 0 && (size_t)n < cap, "path of %s too long", name);
    return buf;
}

void fuzz_write(const char *name, const void *data, size_t len)
{
    char p[512];
    FILE *f = fopen(fuzz_path(p, sizeof p, name), "wb");
    FUZZ_CHECK(f != NULL, "cannot create %s", p);
    FUZZ_CHECK(len == 0 || fwrite(data, 1, len, f) == len, "cannot write %s", p);
    FUZZ_CHECK(fclose(f) == 0, "cannot write %s", p);
}

void fuzz_remove(const char *name)
{
    char p[512];
    unlink(fuzz_path(p, sizeof p, name));
}

size_t fuzz_split(const uint8_t *data, size_t size, uint8_t sep, fuzz_part *parts,
                  size_t max)
{
    size_t n = 0, at = 0;
    for (size_t i = 0; i < max; i++)
        parts[i] = (fuzz_part){(const uint8_t *)"", 0};
    while (n < max) {
        const uint8_t *s = n + 1 < max && at < size ? memchr(data + at, sep, size - at) : NULL;
        size_t end = s ? (size_t)(s - data) : size;
        parts[n++] = (fuzz_part){data + at, end - at};
        if (!s)
            break;
        at = end + 1;
    }
    return n;
}

char *fuzz_strndup(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    FUZZ_CHECK(s != NULL, "out of memory for %zu bytes", len);
    if (len)
        memcpy(s, data, len);
    s[len] = 0;
    return s;
}
