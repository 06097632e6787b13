/* job_file.c: job files read and written line by line, plain or zstd.
 *
 * Reading: the file's bytes come into ibuf through off_read - offload/'s
 * wrapper, so that the fault hook reaches job files' reads too (the fd is
 * named for its path=) - and a plain file's lines are cut from there. A
 * .zst file streams through ZSTD_decompressStream, which stops at the end
 * of each frame; so the decoded bytes held at any time belong to one frame,
 * and a line whose '\n' is the last byte held ends its record exactly when
 * the next decode step yields nothing but the frame's end:
 *
 *   file ─off_read─► ibuf ─memchr '\n'─► line                      (plain)
 *   file ─off_read─► ibuf ─ZSTD_decompressStream─► obuf ─memchr '\n'─► line
 *                          (stops at each frame end: frame_end, frame_at)
 *
 * Writing: records go through ZSTD_compressStream2 with one reused CCtx,
 * ZSTD_e_continue as bytes come and ZSTD_e_end at job_file_flush, so each
 * record is one frame (with its checksum: a frame torn or damaged by a crash
 * never decodes as a complete one) and memory stays bounded by the CCtx's
 * window however long a record is.
 */
#include "job_file.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "err.h"
#include "off.h"

#define JOB_FILE_ZSTD_LEVEL 3 /* zstd's own default: fast, and most of the gain on JSONL */
#define JOB_FILE_PLAIN_IN (64 << 10) /* bytes asked of each read of a plain file */

int job_file_is_zst(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".zst") == 0;
}

/* ------------------------------------------------------------ reader */

struct job_file_rd {
    int fd;              /* named (off_file_name) for the fault hook's path= */
    char *path;
    int64_t limit;       /* bytes of the file to read, -1: all */
    int64_t nread;       /* bytes read from fd so far */
    char *line;          /* (cap) the line returned last, NUL-terminated */
    size_t cap;
    int err;             /* sticky: the first failure, returned again */
    char why[512];       /* its message, recorded by job_file_rd_line */
    char *ibuf;          /* (icap) the file's bytes as read */
    ZSTD_inBuffer in;    /* over ibuf: in.pos of the in.size bytes used (cut or decoded) */
    size_t icap;
    /* .zst only */
    ZSTD_DCtx *dctx;
    char *obuf;          /* (ocap) decoded bytes, [opos, olen) not yet returned */
    size_t ocap, opos, olen;
    int more_out;        /* the last decode filled obuf: the decoder may hold more */
    int in_frame;        /* a frame has begun and not ended */
    int frame_end;       /* obuf's bytes end where a frame ends */
    int magic_ok;        /* the file starts with a zstd (or skippable) frame's magic */
    int64_t frame_at;    /* where the last complete frame ends (0: none yet) */
};

/* Fail r with -code and the message fmt (kept in r->why). @return -code. */
__attribute__((format(printf, 3, 4)))
static int rd_fail(job_file_rd *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->err = -code;
    return -code;
}

/* Append src[0..k) to r->line, which holds n bytes. @return 0 or -ENOMEM. */
static int line_put(job_file_rd *r, size_t n, const char *src, size_t k)
{
    if (n + k + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < n + k + 1)
            cap *= 2;
        char *nl = realloc(r->line, cap);
        if (!nl)
            return rd_fail(r, ENOMEM, "%s: out of memory for a line of %zu bytes", r->path,
                           n + k);
        r->line = nl;
        r->cap = cap;
    }
    memcpy(r->line + n, src, k);
    r->line[n + k] = 0;
    return 0;
}

/* Read the file's next bytes into ibuf (r->in). @return 1, 0 at the end
 * of the file (or of limit), or -errno. */
static int rd_input(job_file_rd *r)
{
    size_t want = r->icap;
    if (r->limit >= 0 && (int64_t)want > r->limit - r->nread)
        want = (size_t)(r->limit - r->nread);
    ssize_t got = want ? off_read(r->fd, r->ibuf, want) : 0;
    if (got < 0)
        return rd_fail(r, (int)-got, "%s: read failed (%s)", r->path, strerror((int)-got));
    if (r->nread == 0 && got >= 4) {
        uint32_t m = (uint32_t)(unsigned char)r->ibuf[0] |
                     (uint32_t)(unsigned char)r->ibuf[1] << 8 |
                     (uint32_t)(unsigned char)r->ibuf[2] << 16 |
                     (uint32_t)(unsigned char)r->ibuf[3] << 24;
        r->magic_ok = m == ZSTD_MAGICNUMBER ||
                      (m & ZSTD_MAGIC_SKIPPABLE_MASK) == ZSTD_MAGIC_SKIPPABLE_START;
    }
    r->nread += (int64_t)got;
    r->in = (ZSTD_inBuffer){r->ibuf, (size_t)got, 0};
    return got > 0;
}

/* A plain file's next line, cut from ibuf (refilled as it empties); the
 * line ends its record when it ends in '\n'. */
static ssize_t plain_line(job_file_rd *r, int64_t *rec_end)
{
    size_t n = 0;
    for (;;) {
        if (r->in.pos == r->in.size) {
            int got = rd_input(r);
            if (got < 0)
                return got;
            if (got == 0)
                return (ssize_t)n; /* the end; a last line without '\n' has no record end */
        }
        const char *src = r->ibuf + r->in.pos;
        const char *nl = memchr(src, '\n', r->in.size - r->in.pos);
        size_t take = nl ? (size_t)(nl - src) + 1 : r->in.size - r->in.pos;
        FORWARD_IF(line_put(r, n, src, take));
        n += take;
        r->in.pos += take;
        if (nl) {
            *rec_end = r->nread - (int64_t)(r->in.size - r->in.pos);
            return (ssize_t)n;
        }
    }
}

/* A damaged .zst file: not zstd from its first byte (-EILSEQ), or damaged
 * after the last complete frame, at r->frame_at (-EBADMSG). */
static int zst_bad(job_file_rd *r, const char *what)
{
    if (!r->magic_ok)
        return rd_fail(r, EILSEQ, "%s: not a zstd file (or corrupt at byte 0); a name ending "
                       "in .zst is read as zstd: compress it with `zstd`, or drop .zst from "
                       "the name of a plain file", r->path);
    return rd_fail(r, EBADMSG, "%s: not a zstd file (or corrupt at byte %lld: %s); check it "
                   "with `zstd -t %s` and write it again", r->path, (long long)r->frame_at,
                   what, r->path);
}

/* Decode more into obuf once all of it has been returned. The decoder
 * stops at each frame's end, so obuf then holds bytes of one frame only.
 * @return the bytes decoded (0 with r->frame_end set: a frame ended and
 * gave no more), 0 at the end of the file, or -errno. */
static ssize_t zst_fill(job_file_rd *r)
{
    r->opos = r->olen = 0;
    r->frame_end = 0;
    for (;;) {
        if (r->in.pos == r->in.size && !r->more_out) {
            int got = rd_input(r);
            if (got < 0)
                return got;
            if (got == 0)
                return r->in_frame ? zst_bad(r, "the file ends inside this frame") : 0;
        }
        ZSTD_outBuffer out = {r->obuf, r->ocap, 0};
        size_t left = ZSTD_decompressStream(r->dctx, &out, &r->in);
        if (ZSTD_isError(left))
            return zst_bad(r, ZSTD_getErrorName(left));
        r->olen = out.pos;
        r->more_out = out.pos == out.size;
        r->in_frame = left != 0;
        if (left == 0) {
            r->more_out = 0;
            r->frame_end = 1;
            r->frame_at = r->nread - (int64_t)(r->in.size - r->in.pos);
            return (ssize_t)r->olen;
        }
        if (r->olen > 0)
            return (ssize_t)r->olen;
    }
}

static ssize_t zst_line(job_file_rd *r, int64_t *rec_end)
{
    size_t n = 0;
    for (;;) {
        if (r->opos == r->olen) {
            ssize_t k = zst_fill(r);
            if (k < 0)
                return k;
            if (k == 0 && !r->frame_end)
                return (ssize_t)n; /* the end; a last line without '\n' has no record end */
            continue;
        }
        const char *src = r->obuf + r->opos;
        const char *nl = memchr(src, '\n', r->olen - r->opos);
        size_t take = nl ? (size_t)(nl - src) + 1 : r->olen - r->opos;
        FORWARD_IF(line_put(r, n, src, take));
        n += take;
        r->opos += take;
        if (!nl)
            continue; /* the line goes on, in this frame or the next */
        if (r->opos < r->olen)
            return (ssize_t)n; /* more of the same frame follows */
        if (!r->frame_end) {
            /* the '\n' is the last byte decoded: look ahead, the frame may
             * end right here */
            ssize_t k = zst_fill(r);
            if (k < 0)
                return k; /* this line's frame is torn: so is its record */
            if (k > 0 || !r->frame_end)
                return (ssize_t)n;
        }
        *rec_end = r->frame_at;
        return (ssize_t)n;
    }
}

int job_file_rd_open(const char *path, const char *what, int64_t limit, job_file_rd **out)
{
    *out = NULL;
    job_file_rd *r = calloc(1, sizeof *r);
    RETURN_IF(!r, -ENOMEM, "out of memory");
    r->limit = limit;
    r->path = strdup(path);
    r->fd = r->path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    int rc = r->path && r->fd >= 0 ? 0 : r->path ? -errno : -ENOMEM;
    struct stat st;
    if (rc == 0 && fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode))
        rc = -EISDIR; /* opens, and fails only at the first read */
    if (rc == 0)
        rc = off_file_name(r->fd, path); /* the fault hook's path= */
    int zst = job_file_is_zst(path);
    if (rc == 0) {
        r->icap = zst ? ZSTD_DStreamInSize() : JOB_FILE_PLAIN_IN;
        r->ibuf = malloc(r->icap);
        rc = r->ibuf ? 0 : -ENOMEM;
    }
    if (rc == 0 && zst) {
        r->ocap = ZSTD_DStreamOutSize();
        r->dctx = ZSTD_createDCtx();
        r->obuf = malloc(r->ocap);
        rc = r->dctx && r->obuf ? 0 : -ENOMEM;
    }
    if (rc < 0) {
        if (rc == -ENOMEM)
            err_set(__FILE__, __LINE__, "out of memory opening %s", path);
        else if (rc == -EISDIR)
            err_set(__FILE__, __LINE__, "%s: a directory, not the %s; give the file itself",
                    path, what);
        else
            err_set(__FILE__, __LINE__, "%s: cannot open the %s (%s)", path, what,
                    strerror(-rc));
        job_file_rd_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* job_file_rd_line without recording the failure's message. */
static ssize_t rd_next(job_file_rd *r, char **line, int64_t *rec_end)
{
    int64_t end;
    if (!rec_end)
        rec_end = &end;
    *rec_end = -1;
    *line = r->line;
    if (r->err)
        return r->err;
    ssize_t n = r->dctx ? zst_line(r, rec_end) : plain_line(r, rec_end);
    *line = r->line;
    return n;
}

ssize_t job_file_rd_line(job_file_rd *r, char **line, int64_t *rec_end)
{
    ssize_t n = rd_next(r, line, rec_end);
    if (n < 0)
        err_set(__FILE__, __LINE__, "%s", r->why);
    return n;
}

void job_file_rd_close(job_file_rd *r)
{
    if (!r)
        return;
    off_file_close(r->fd);
    ZSTD_freeDCtx(r->dctx);
    free(r->ibuf);
    free(r->obuf);
    free(r->line);
    free(r->path);
    free(r);
}

int job_file_good_end(const char *path, int64_t *end)
{
    *end = 0;
    job_file_rd *r;
    FORWARD_IF(job_file_rd_open(path, "job file", -1, &r));
    char *line;
    int64_t at;
    ssize_t n;
    while ((n = rd_next(r, &line, &at)) > 0)
        if (at >= 0)
            *end = at;
    if (n < 0 && n != -EBADMSG) /* -EBADMSG: torn after *end, which is the answer */
        err_set(__FILE__, __LINE__, "%s", r->why);
    job_file_rd_close(r);
    return n < 0 && n != -EBADMSG ? (int)n : 0;
}

int job_file_read_all(const char *path, char **buf, size_t *len)
{
    if (!job_file_is_zst(path))
        return off_read_file(path, buf, len);
    job_file_rd *r;
    FORWARD_IF(job_file_rd_open(path, "file", -1, &r));
    char *all = NULL, *line;
    size_t n = 0, cap = 0;
    ssize_t k;
    int rc = 0;
    while (rc == 0 && (k = job_file_rd_line(r, &line, NULL)) > 0) {
        if (n + (size_t)k + 1 > cap) {
            size_t nc = cap ? cap : 4096;
            while (nc < n + (size_t)k + 1)
                nc *= 2;
            char *na = realloc(all, nc);
            if (!na) {
                err_set(__FILE__, __LINE__, "%s: out of memory for %zu bytes", path, nc);
                rc = -ENOMEM;
                break;
            }
            all = na;
            cap = nc;
        }
        memcpy(all + n, line, (size_t)k);
        n += (size_t)k;
    }
    if (rc == 0 && k < 0)
        rc = (int)k;
    job_file_rd_close(r);
    if (rc == 0 && !all)
        all = malloc(1);
    if (rc == 0 && !all) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    if (rc < 0) {
        free(all);
        return rc;
    }
    all[n] = 0;
    *buf = all;
    if (len)
        *len = n;
    return 0;
}

/* ------------------------------------------------------------ writer
 *
 * Bytes (plain, or zstd's output, which is compressed straight into obuf)
 * collect in obuf and go to the file with off_write - offload/'s wrapper,
 * so that the fault hook reaches job files too - when it fills and at
 * each record's end; a short write is resumed. The first failed write is
 * sticky: its message names the file, the offset and the errno, and
 * nothing more is written, so the file ends at most in one torn record,
 * which a resume cuts (job_file_good_end). */

struct job_file_wr {
    int fd;
    char *path;
    int append;          /* opened "ab": a job that --resume continues */
    ZSTD_CCtx *cctx;     /* NULL: a plain file */
    char *obuf;          /* (ocap) bytes on their way to the file */
    size_t ocap, olen;
    int64_t at;          /* file offset of obuf[0] */
    int64_t rec_at;      /* file offset where the record being written starts */
    char *text;          /* (text_cap) job_file_printf's formatted text */
    size_t text_cap;
    size_t pending;      /* bytes of the record not yet flushed */
    char last;           /* the last byte of the record so far */
    int err;             /* the first failed write's -errno: the file takes no more */
};

int job_file_wr_open(const char *path, const char *mode, job_file_wr **out)
{
    *out = NULL;
    job_file_wr *w = calloc(1, sizeof *w);
    RETURN_IF(!w, -ENOMEM, "out of memory");
    w->fd = -1;
    w->append = mode[0] == 'a';
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (w->append ? O_APPEND : O_TRUNC) |
                (strchr(mode, 'x') ? O_EXCL : 0);
    w->path = strdup(path);
    w->ocap = ZSTD_CStreamOutSize(); /* a whole zstd block fits: no partial output */
    w->obuf = malloc(w->ocap);
    int rc = w->path && w->obuf ? 0 : -ENOMEM;
    if (rc == 0) {
        w->fd = open(path, flags, 0666);
        rc = w->fd >= 0 ? 0 : -errno;
    }
    struct stat st;
    if (rc == 0 && w->append && fstat(w->fd, &st) == 0 && S_ISREG(st.st_mode))
        w->at = w->rec_at = (int64_t)st.st_size;
    if (rc == 0) {
        rc = off_file_name(w->fd, path); /* messages and the fault hook's path= */
        if (rc < 0) {
            close(w->fd);
            w->fd = -1;
        }
    }
    if (rc == 0 && job_file_is_zst(path)) {
        w->cctx = ZSTD_createCCtx();
        rc = w->cctx ? 0 : -ENOMEM;
        if (rc == 0 &&
            (ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel,
                                                 JOB_FILE_ZSTD_LEVEL)) ||
             ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1))))
            rc = -EINVAL;
    }
    if (rc < 0) {
        if (rc == -EEXIST)
            err_set(__FILE__, __LINE__, "%s already exists; remove it or choose another name",
                    path);
        else
            err_set(__FILE__, __LINE__, "%s: cannot open for writing (%s)", path,
                    strerror(-rc));
        w->err = rc; /* close writes nothing */
        job_file_wr_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* Write obuf to the file. @return 0 or the sticky -errno (its message
 * recorded here, once). */
static int wr_drain(job_file_wr *w)
{
    if (w->err)
        return w->err;
    size_t done = 0;
    while (done < w->olen) {
        ssize_t r = off_write(w->fd, w->obuf + done, w->olen - done);
        if (r <= 0) {
            w->err = r < 0 ? (int)r : -EIO; /* 0: nothing written, and no reason given */
            int e = -w->err;
            err_set(__FILE__, __LINE__, "%s: write of %zu bytes at offset %lld failed (%s); the "
                    "file is intact up to offset %lld, where the record being written "
                    "starts: %s and rerun%s", w->path, w->olen - done,
                    (long long)(w->at + (int64_t)done), strerror(e), (long long)w->rec_at,
                    e == ENOSPC || e == EDQUOT ? "free space" : "check the disk",
                    w->append ? " with --resume" : "");
            errno = e; /* for callers that say strerror(errno) */
            return w->err;
        }
        done += (size_t)r; /* a short write goes on from where it stopped */
    }
    w->at += (int64_t)w->olen;
    w->olen = 0;
    return 0;
}

/* Compress in[0..len) with end (ZSTD_e_continue: take it all;
 * ZSTD_e_end: also end the frame) into obuf, draining it as it fills. */
static int wr_zstd(job_file_wr *w, const void *buf, size_t len, ZSTD_EndDirective end)
{
    ZSTD_inBuffer in = {buf, len, 0};
    for (;;) {
        if (w->olen == w->ocap)
            FORWARD_IF(wr_drain(w));
        ZSTD_outBuffer out = {w->obuf, w->ocap, w->olen};
        size_t left = ZSTD_compressStream2(w->cctx, &out, &in, end);
        RETURN_IF(ZSTD_isError(left), -ENOMEM, "zstd compression failed (%s)",
                  ZSTD_getErrorName(left));
        w->olen = out.pos;
        if (end == ZSTD_e_continue ? in.pos == in.size : left == 0)
            return 0;
    }
}

int job_file_write(job_file_wr *w, const void *buf, size_t len)
{
    if (w->err)
        return w->err;
    if (len == 0)
        return 0;
    if (w->cctx) {
        FORWARD_IF(wr_zstd(w, buf, len, ZSTD_e_continue));
    } else {
        for (size_t at = 0; at < len;) {
            if (w->olen == w->ocap)
                FORWARD_IF(wr_drain(w));
            size_t k = len - at < w->ocap - w->olen ? len - at : w->ocap - w->olen;
            memcpy(w->obuf + w->olen, (const char *)buf + at, k);
            w->olen += k;
            at += k;
        }
    }
    w->pending += len;
    w->last = ((const char *)buf)[len - 1];
    return 0;
}

int job_file_printf(job_file_wr *w, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(w->text, w->text_cap, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= w->text_cap) {
        size_t cap = (size_t)n + 1 > 256 ? (size_t)n + 1 : 256;
        char *t = realloc(w->text, cap);
        if (t) {
            w->text = t;
            w->text_cap = cap;
            n = vsnprintf(w->text, w->text_cap, fmt, again);
        } else {
            n = -1;
            errno = ENOMEM;
        }
    }
    va_end(again);
    if (n < 0)
        return -errno;
    return job_file_write(w, w->text, (size_t)n);
}

/* End the pending record (its frame, in a .zst file) and write it out. */
static int wr_end(job_file_wr *w)
{
    if (w->pending && w->cctx)
        FORWARD_IF(wr_zstd(w, NULL, 0, ZSTD_e_end));
    FORWARD_IF(wr_drain(w));
    w->pending = 0;
    w->rec_at = w->at;
    return 0;
}

int job_file_flush(job_file_wr *w)
{
    assert(w->err || !w->pending || w->last == '\n'); /* a record is whole lines */
    return wr_end(w);
}

int job_file_wr_close(job_file_wr *w)
{
    if (!w)
        return 0;
    int rc = 0;
    if (w->fd >= 0) {
        /* a record left without its '\n' by a caller that failed halfway
         * still ends its frame: a resume then finds it torn and cuts it
         * (after a failed write nothing more is written: w->err) */
        rc = wr_end(w);
        if (rc == 0) {
            rc = off_fsync(w->fd);
            if (rc == -EINVAL) /* a pipe: nothing to sync */
                rc = 0;
            if (rc < 0)
                err_set(__FILE__, __LINE__, "%s: fsync failed (%s) after %lld bytes; the "
                        "records may not all be on the disk: check it and rerun%s", w->path,
                        strerror(-rc), (long long)w->at, w->append ? " with --resume" : "");
        }
        off_file_close(w->fd);
    }
    ZSTD_freeCCtx(w->cctx);
    free(w->obuf);
    free(w->text);
    free(w->path);
    free(w);
    return rc;
}
