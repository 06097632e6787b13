/* fuzz_replay.c: the main of a harness outside libFuzzer: runs
 * LLVMFuzzerTestOneInput over each file named, or each file of each
 * directory named (in name order), as libFuzzer does with a corpus.
 * The fuzz_replay tests run every harness over its seed corpus and its
 * regressions (tests/fuzz/regressions/<target>/) in every build, gcc and
 * sanitizers alike, so a fixed finding stays fixed without clang.
 * A path that does not exist is skipped (a target without regressions);
 * exits 1 when no input was found at all (a replay that ran nothing
 * proves nothing); a failing input aborts. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_replay: cannot open %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* an exact-size heap buffer: ASan sees a read past the input */
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "fuzz_replay: cannot read %s\n", path);
        fclose(f);
        free(buf);
        return -1;
    }
    fclose(f);
    fprintf(stderr, "fuzz_replay: %s (%ld bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    int n = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { /* a target without regressions (yet) */
            fprintf(stderr, "fuzz_replay: %s: none\n", argv[i]);
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= run_file(argv[i]) < 0;
            n++;
            continue;
        }
        struct dirent **e;
        int k = scandir(argv[i], &e, NULL, by_name);
        for (int j = 0; j < k; j++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], e[j]->d_name);
            if (e[j]->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
                bad |= run_file(p) < 0;
                n++;
            }
            free(e[j]);
        }
        free(e);
    }
    printf("fuzz_replay: %d inputs replayed\n", n);
    return bad || n == 0;
}
