/* store.c: the weight store file (format in off.h).
 *
 *   0        header: magic, version, dtype, n_seg, config length, config,
 *            n_seg x {name[48], offset, length, xxh64}, xxh64(header so far)
 *   H        segment 0 payload, zero padded to OFF_ALIGN     H = align(header)
 *   ...      segment i at an OFF_ALIGN offset
 *
 * The writer reserves the whole file up front (so a full disk fails before
 * hours of conversion), writes payloads in any order and the header last,
 * to path.tmp; only a complete, fsync'ed file is renamed to path.
 */
#include "off.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"

#define FIXED_BYTES (8 + 4 * 4)              /* magic + 4 x u32 */
#define SEG_BYTES (OFF_SEG_NAME + 3 * 8)      /* one segment entry */
#define MAX_SEGS (1 << 20)                    /* sanity bounds for a corrupt header */
#define MAX_CONFIG (64u << 20)
#define BOUNCE (4u << 20)                     /* writer's aligned copy buffer */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t header_bytes(uint32_t config_len, uint32_t n_seg)
{
    return FIXED_BYTES + (uint64_t)config_len + (uint64_t)n_seg * SEG_BYTES + 8;
}

/* pread/pwrite all of n bytes; a read that meets the end of the file
 * returns -ENODATA. @return 0 or -errno (no message). */
static int full_io(int fd, int write, void *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        /* off_pread / off_pwrite retry EINTR, boundedly (OFF_EINTR_MAX) */
        ssize_t r = write ? off_pwrite(fd, (char *)buf + done, n - done, off + done)
                          : off_pread(fd, (char *)buf + done, n - done, off + done);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return write ? -EIO : -ENODATA;
        done += (size_t)r;
    }
    return 0;
}

/* ------------------------------------------------------------ reading */

int off_store_probe(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char magic[8];
    ssize_t r = off_pread(fd, magic, sizeof magic, 0); /* -EISDIR for a directory */
    close(fd);
    return r == (ssize_t)sizeof magic && memcmp(magic, OFF_STORE_MAGIC, 8) == 0;
}

void off_store_close(off_store *s)
{
    if (!s)
        return;
    if (s->path) /* a zeroed struct has fd 0, which is not ours */
        off_file_close(s->fd);
    free(s->path);
    free(s->config_json);
    free(s->seg);
    memset(s, 0, sizeof *s);
}

/* Validate the header in hdr (hlen bytes, checksum included) into s. */
static int parse_header(off_store *s, const uint8_t *hdr, uint64_t hlen, uint32_t cfg_len,
                        uint32_t n_seg)
{
    const char *path = s->path;
    uint64_t want = get_u64(hdr + hlen - 8), have = XXH64(hdr, (size_t)(hlen - 8), 0);
    RETURN_IF(want != have, -EBADMSG,
              "%s: the header is corrupt (checksum %016" PRIx64 ", expected %016" PRIx64
              "); run `flexh2o convert` again",
              path, have, want);
    s->config_json = malloc((size_t)cfg_len + 1);
    s->seg = calloc(n_seg ? n_seg : 1, sizeof *s->seg);
    RETURN_IF(!s->config_json || !s->seg, -ENOMEM, "%s: out of memory reading the header",
              path);
    memcpy(s->config_json, hdr + FIXED_BYTES, cfg_len);
    s->config_json[cfg_len] = 0;
    s->n_seg = (int)n_seg;
    uint64_t data_start = off_align_up(hlen);
    const uint8_t *p = hdr + FIXED_BYTES + cfg_len;
    for (uint32_t i = 0; i < n_seg; i++, p += SEG_BYTES) {
        off_seg *g = &s->seg[i];
        memcpy(g->name, p, OFF_SEG_NAME);
        g->name[OFF_SEG_NAME - 1] = 0;
        g->offset = get_u64(p + OFF_SEG_NAME);
        g->length = get_u64(p + OFF_SEG_NAME + 8);
        g->xxh = get_u64(p + OFF_SEG_NAME + 16);
        /* offset first: with an offset near 2^64 the length bound wrapped and
         * offset + length came out 0 (found by tests/fuzz/fuzz_store.c) */
        RETURN_IF(g->offset % OFF_ALIGN || g->offset < data_start ||
                      g->offset > UINT64_MAX - OFF_ALIGN ||
                      g->length > UINT64_MAX - OFF_ALIGN - g->offset,
                  -EBADMSG,
                  "%s: segment %s has a bad offset %" PRIu64 "; run `flexh2o convert` again",
                  path, g->name, g->offset);
        /* O_DIRECT reads the padded length: the padding must be there too */
        uint64_t end = g->offset + off_align_up(g->length);
        RETURN_IF(end > s->file_size, -EBADMSG,
                  "%s: the file is truncated (%" PRIu64 " bytes, segment %s needs %" PRIu64
                  "); run `flexh2o convert` again",
                  path, s->file_size, g->name, end);
    }
    return 0;
}

static int store_open(const char *path, off_store *s)
{
    s->path = strdup(path);
    RETURN_IF(!s->path, -ENOMEM, "out of memory opening %s", path);
    int fd = off_file_open(path, 0, 0, &s->direct);
    if (fd < 0) {
        free(s->path);
        s->path = NULL; /* nothing to close */
        return fd;
    }
    s->fd = fd;
    struct stat st;
    RETURN_IF(fstat(fd, &st) < 0, -errno, "%s: cannot stat (%s)", path, strerror(errno));
    RETURN_IF(S_ISDIR(st.st_mode), -EISDIR, "%s is a directory, not a weight store", path);
    s->file_size = (uint64_t)st.st_size;

    /* First block: the fixed fields tell the header's length. */
    uint8_t *hdr = off_alloc_aligned(OFF_ALIGN);
    RETURN_IF(!hdr, -ENOMEM, "out of memory opening %s", path);
    uint64_t first = s->file_size < OFF_ALIGN ? s->file_size : OFF_ALIGN;
    int r = full_io(fd, 0, hdr, s->direct ? OFF_ALIGN : first, 0);
    if (r == -ENODATA)
        r = 0; /* the file is shorter than a block: judged below */
    if (r < 0) {
        free(hdr);
        RETURN_IF(1, r, "%s: cannot read the header (%s)", path, strerror(-r));
    }
    if (first < FIXED_BYTES || memcmp(hdr, OFF_STORE_MAGIC, 8) != 0) {
        free(hdr);
        RETURN_IF(1, -EBADMSG,
                  "%s is not a flexh2o weight store: its first 8 bytes are not the "
                  OFF_STORE_MAGIC " magic (a damaged store, or another file); run `flexh2o "
                  "convert` to make it again",
                  path);
    }
    s->version = get_u32(hdr + 8);
    s->dtype = get_u32(hdr + 12);
    uint32_t n_seg = get_u32(hdr + 16), cfg_len = get_u32(hdr + 20);
    if (s->version != OFF_STORE_VERSION) {
        uint32_t v = s->version;
        free(hdr);
        RETURN_IF(v > OFF_STORE_VERSION, -EPROTONOSUPPORT,
                  "%s was made by a newer flexh2o (store version %u; this build reads %u); "
                  "upgrade flexh2o or run `flexh2o convert` again",
                  path, v, OFF_STORE_VERSION);
        RETURN_IF(1, -EPROTONOSUPPORT,
                  "%s has an unknown version %u (this build reads %u); run `flexh2o "
                  "convert` again",
                  path, v, OFF_STORE_VERSION);
    }
    uint64_t hlen = header_bytes(cfg_len, n_seg);
    if (n_seg > MAX_SEGS || cfg_len > MAX_CONFIG || off_align_up(hlen) > s->file_size) {
        free(hdr);
        RETURN_IF(1, -EBADMSG,
                  "%s: the header is corrupt or the file truncated (%u segments, %u bytes "
                  "of config, file of %" PRIu64 " bytes); run `flexh2o convert` again",
                  path, n_seg, cfg_len, s->file_size);
    }
    if (off_align_up(hlen) > OFF_ALIGN) {
        free(hdr);
        hdr = off_alloc_aligned((size_t)off_align_up(hlen));
        RETURN_IF(!hdr, -ENOMEM, "out of memory reading the header of %s", path);
        r = full_io(fd, 0, hdr, (size_t)off_align_up(hlen), 0);
        if (r < 0) {
            free(hdr);
            RETURN_IF(1, r, "%s: cannot read the header (%s); run `flexh2o convert` again",
                      path, r == -ENODATA ? "the file is truncated" : strerror(-r));
        }
    }
    r = parse_header(s, hdr, hlen, cfg_len, n_seg);
    free(hdr);
    return r;
}

int off_store_open(const char *path, off_store *s)
{
    RETURN_IF(!path || !s, -EINVAL, "off_store_open: no path or store given");
    memset(s, 0, sizeof *s);
    int r = store_open(path, s);
    if (r < 0)
        off_store_close(s);
    return r;
}

int off_store_find(const off_store *s, const char *name)
{
    for (int i = 0; s && name && i < s->n_seg; i++)
        if (strcmp(s->seg[i].name, name) == 0)
            return i;
    return -1;
}

int off_store_read_seg(const off_store *s, off_disk *d, int i, void *buf)
{
    RETURN_IF(!s || !s->path || i < 0 || i >= s->n_seg || !buf, -EINVAL,
              "off_store_read_seg: no segment %d in %s (a bug in the caller)", i,
              s && s->path ? s->path : "an unopened store");
    const off_seg *g = &s->seg[i];
    /* The padded length: what O_DIRECT can read, and what buf holds. */
    size_t n = (size_t)off_align_up(g->length);
    if (n) {
        if (d) {
            char what[OFF_SEG_NAME + 32];
            snprintf(what, sizeof what, "weight segment %s", g->name);
            off_io io = {.fd = s->fd, .write = 0, .buf = buf, .len = n, .offset = g->offset};
            FORWARD_IF(off_disk_rw(d, &io, 1, what));
        } else {
            int r = full_io(s->fd, 0, buf, n, g->offset);
            RETURN_IF(r < 0, r == -ENODATA ? -EIO : r,
                      "%s: cannot read segment %s at offset %" PRIu64 " (%s); run `flexh2o "
                      "convert` again",
                      s->path, g->name, g->offset,
                      r == -ENODATA ? "the file is truncated" : strerror(-r));
        }
    }
    uint64_t have = XXH64(buf, (size_t)g->length, 0);
    RETURN_IF(have != g->xxh, -EBADMSG,
              "%s: segment %s is corrupt (checksum %016" PRIx64 ", expected %016" PRIx64
              "); run flexh2o convert again",
              s->path, g->name, have, g->xxh);
    return 0;
}

/* ------------------------------------------------------------ writing */

struct off_store_writer {
    char *path, *tmp;
    int fd;
    uint32_t dtype;
    char *config;
    uint32_t config_len;
    int n_seg;
    off_seg *seg;     /* (n_seg) */
    uint8_t *put;     /* (n_seg) 1 once written */
    uint64_t header_len, file_size;
    uint8_t *bounce;  /* (BOUNCE) aligned copy buffer for O_DIRECT */
};

static void writer_free(off_store_writer *w)
{
    free(w->path);
    free(w->tmp);
    free(w->config);
    free(w->seg);
    free(w->put);
    free(w->bounce);
    free(w);
}

void off_store_writer_abort(off_store_writer *w)
{
    if (!w)
        return;
    off_file_close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    writer_free(w);
}

static int writer_open(off_store_writer *w, const char *path, uint32_t dtype,
                       const char *config_json, int n_seg, const char *const *names,
                       const uint64_t *lengths)
{
    size_t cfg_len = config_json ? strlen(config_json) : 0;
    RETURN_IF(cfg_len > MAX_CONFIG, -EINVAL, "%s: config.json of %zu bytes is too large",
              path, cfg_len);
    w->path = strdup(path);
    w->tmp = malloc(strlen(path) + 5);
    w->config = malloc(cfg_len + 1);
    w->seg = calloc(n_seg ? (size_t)n_seg : 1, sizeof *w->seg);
    w->put = calloc(n_seg ? (size_t)n_seg : 1, 1);
    w->bounce = off_alloc_aligned(BOUNCE);
    RETURN_IF(!w->path || !w->tmp || !w->config || !w->seg || !w->put || !w->bounce, -ENOMEM,
              "out of memory starting %s", path);
    sprintf(w->tmp, "%s.tmp", path);
    memcpy(w->config, config_json ? config_json : "", cfg_len + 1);
    w->config_len = (uint32_t)cfg_len;
    w->dtype = dtype;
    w->n_seg = n_seg;

    w->header_len = off_align_up(header_bytes(w->config_len, (uint32_t)n_seg));
    uint64_t at = w->header_len;
    for (int i = 0; i < n_seg; i++) {
        RETURN_IF(!names[i] || strlen(names[i]) >= OFF_SEG_NAME, -ENAMETOOLONG,
                  "%s: segment name \"%s\" is longer than %d bytes; shorten it", path,
                  names[i] ? names[i] : "(null)", OFF_SEG_NAME - 1);
        strcpy(w->seg[i].name, names[i]);
        w->seg[i].offset = at;
        w->seg[i].length = lengths[i];
        at += off_align_up(lengths[i]);
    }
    w->file_size = at;
    int fd = off_file_open(w->tmp, 1, w->file_size, NULL);
    if (fd < 0)
        return fd;
    w->fd = fd;
    return 0;
}

int off_store_writer_open(const char *path, uint32_t dtype, const char *config_json, int n_seg,
                          const char *const *names, const uint64_t *lengths,
                          off_store_writer **out)
{
    RETURN_IF(!path || !out || n_seg < 0 || n_seg > MAX_SEGS ||
                  (n_seg > 0 && (!names || !lengths)),
              -EINVAL, "off_store_writer_open: bad arguments for %s (a bug in the caller)",
              path ? path : "(null)");
    RETURN_IF(config_json && strlen(config_json) > MAX_CONFIG, -EINVAL,
              "%s: config.json is larger than %u bytes", path, MAX_CONFIG);
    *out = NULL;
    off_store_writer *w = calloc(1, sizeof *w);
    RETURN_IF(!w, -ENOMEM, "out of memory starting %s", path);
    w->fd = -1;
    int r = writer_open(w, path, dtype, config_json, n_seg, names, lengths);
    if (r < 0) {
        if (w->fd >= 0)
            off_store_writer_abort(w);
        else
            writer_free(w); /* no tmp file made (or off_file_open removed it) */
        return r;
    }
    *out = w;
    return 0;
}

static int write_at(off_store_writer *w, const void *buf, size_t n, uint64_t off,
                    const char *what)
{
    int r = full_io(w->fd, 1, (void *)buf, n, off);
    RETURN_IF(r < 0, r,
              "%s: write of %zu bytes at offset %" PRIu64 " failed (%s) for %s; %s", w->tmp, n,
              off, strerror(-r), what,
              r == -ENOSPC ? "free space or write the store elsewhere"
                           : "check the disk and run `flexh2o convert` again");
    return 0;
}

int off_store_writer_put(off_store_writer *w, int i, const void *data)
{
    RETURN_IF(!w || i < 0 || i >= w->n_seg || (!data && w->seg[i].length), -EINVAL,
              "off_store_writer_put: no segment %d (a bug in the caller)", i);
    off_seg *g = &w->seg[i];
    g->xxh = XXH64(data, (size_t)g->length, 0);
    /* Copy through an aligned buffer: the payload may sit anywhere, and
     * the file may be O_DIRECT. The last block is zero padded. */
    char what[OFF_SEG_NAME + 16];
    snprintf(what, sizeof what, "segment %s", g->name);
    for (uint64_t at = 0; at < g->length; at += BOUNCE) {
        size_t n = g->length - at < BOUNCE ? (size_t)(g->length - at) : BOUNCE;
        size_t padded = (size_t)off_align_up(n);
        memcpy(w->bounce, (const char *)data + at, n);
        memset(w->bounce + n, 0, padded - n);
        FORWARD_IF(write_at(w, w->bounce, padded, g->offset + at, what));
    }
    w->put[i] = 1;
    return 0;
}

static int writer_finish(off_store_writer *w)
{
    for (int i = 0; i < w->n_seg; i++)
        RETURN_IF(!w->put[i], -EINVAL,
                  "%s: segment %s was never written (a bug in convert); run it again", w->path,
                  w->seg[i].name);
    uint8_t *h = off_alloc_aligned((size_t)w->header_len);
    RETURN_IF(!h, -ENOMEM, "out of memory writing the header of %s", w->path);
    memcpy(h, OFF_STORE_MAGIC, 8);
    put_u32(h + 8, OFF_STORE_VERSION);
    put_u32(h + 12, w->dtype);
    put_u32(h + 16, (uint32_t)w->n_seg);
    put_u32(h + 20, w->config_len);
    uint8_t *p = h + FIXED_BYTES;
    memcpy(p, w->config, w->config_len);
    p += w->config_len;
    for (int i = 0; i < w->n_seg; i++, p += SEG_BYTES) {
        memcpy(p, w->seg[i].name, OFF_SEG_NAME); /* NUL padded by calloc + strcpy */
        put_u64(p + OFF_SEG_NAME, w->seg[i].offset);
        put_u64(p + OFF_SEG_NAME + 8, w->seg[i].length);
        put_u64(p + OFF_SEG_NAME + 16, w->seg[i].xxh);
    }
    put_u64(p, XXH64(h, (size_t)(p - h), 0));
    int r = write_at(w, h, (size_t)w->header_len, 0, "the header");
    free(h);
    FORWARD_IF(r);
    r = off_fsync(w->fd);
    RETURN_IF(r < 0, r, "%s: fsync failed (%s); check the disk and run `flexh2o convert` "
              "again", w->tmp, strerror(-r));
    RETURN_IF(rename(w->tmp, w->path) < 0, -errno,
              "cannot rename %s to %s (%s); check the directory's permissions", w->tmp,
              w->path, strerror(errno));
    /* Make the rename itself durable. */
    char *dir = strdup(w->path);
    if (dir) {
        int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            off_fsync(dfd); /* best effort: the file itself is durable */
            close(dfd);
        }
        free(dir);
    }
    return 0;
}

int off_store_writer_finish(off_store_writer *w)
{
    RETURN_IF(!w, -EINVAL, "off_store_writer_finish: no writer (a bug in the caller)");
    int r = writer_finish(w);
    if (r < 0) {
        off_store_writer_abort(w); /* removes path.tmp (gone if the rename happened) */
        return r;
    }
    off_file_close(w->fd);
    writer_free(w);
    return 0;
}
