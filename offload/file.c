/* file.c: whole-file reading and the capacity queries of the host tiers
 * (memory available to the CPU tier, free space for the disk tier). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "off.h"

int off_read_file(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    RETURN_IF(fd < 0, -errno, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    int got = fstat(fd, &st) == 0;
    if (!got || !S_ISREG(st.st_mode)) {
        close(fd);
        RETURN_IF(1, -EINVAL, "%s: not a regular file%s; put the file itself there", path,
                  got && S_ISDIR(st.st_mode) ? " but a directory" : "");
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        RETURN_IF(1, -ENOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    /* named for the fault hook's path= while it is read */
    int rc = off_file_name(fd, path);
    size_t n = 0;
    while (rc == 0 && n < size) {
        ssize_t r = off_pread(fd, buf + n, size - n, n);
        if (r < 0)
            rc = (int)r;
        else if (r == 0)
            break; /* shrunk under us: judged below */
        else
            n += (size_t)r;
    }
    off_file_close(fd);
    if (rc == 0 && n != size)
        rc = -EIO;
    if (rc < 0) {
        free(buf);
        RETURN_IF(1, rc, "%s: read failed at offset %zu of %zu bytes (%s)", path, n, size,
                  rc == -EIO && n != size ? "the file shrank while read" : strerror(-rc));
    }
    buf[n] = 0;
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

int off_probe_writable(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return -EISDIR;
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno == EEXIST ? 0 : -errno;
    close(fd);
    unlink(tmp);
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

int off_cpu_sample(off_cpu_load *s)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                       &v[3], &v[4], &v[5], &v[6], &v[7]) : 0;
    if (f)
        fclose(f);
    struct rusage ru;
    struct timespec ts;
    if (n < 4 || getrusage(RUSAGE_SELF, &ru) != 0 || clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -ENOTSUP;
    double hz = (double)sysconf(_SC_CLK_TCK);
    /* busy: user, nice, system, irq, softirq, steal; idle and iowait are not */
    s->busy_s = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz;
    s->self_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    s->wall_s = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    s->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return 0;
}

double off_cpu_others(const off_cpu_load *a, const off_cpu_load *b)
{
    double wall = b->wall_s - a->wall_s;
    if (wall <= 0 || a->cores <= 0)
        return 0;
    double others = (b->busy_s - a->busy_s) - (b->self_s - a->self_s);
    return others > 0 ? others / wall : 0;
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
