/* file.c: whole-file reading and the capacity queries of the host tiers
 * (memory available to the CPU tier, free space for the disk tier). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "err.h"
#include "off.h"

int off_read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    RETURN_IF(!f, -errno, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    int got = fstat(fileno(f), &st) == 0;
    if (!got || !S_ISREG(st.st_mode)) {
        fclose(f);
        RETURN_IF(1, -EINVAL, "%s: not a regular file%s; put the file itself there", path,
                  got && S_ISDIR(st.st_mode) ? " but a directory" : "");
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        RETURN_IF(1, -ENOMEM, "%s: out of memory reading %lld bytes", path,
                  (long long)st.st_size);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(buf);
        RETURN_IF(1, -EIO, "%s: short read (%zu of %lld bytes)", path, n,
                  (long long)st.st_size);
    }
    buf[n] = 0;
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

uint64_t off_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (uint64_t)kb * 1024;
}

int off_disk_free(const char *dir, uint64_t *out)
{
    struct stat st;
    *out = 0;
    RETURN_IF(stat(dir, &st) != 0 || !S_ISDIR(st.st_mode), -ENOENT,
              "--offload-dir %s is not a directory; create it (on a fast local disk)", dir);
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0)
        *out = (uint64_t)vs.f_bavail * vs.f_frsize;
    return 0;
}
