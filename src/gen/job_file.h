/* job_file.h: the line-oriented layer every job file goes through (prompt
 * files, completions, score's requests and results, the eviction trace):
 * plain text, or zstd when the name ends in ".zst" (DESIGN.md "Job files").
 *
 * A record is one or more complete lines written and flushed together. In a
 * .zst file each record is its own zstd frame, so a killed job can only tear
 * the last frame, and a resume cuts the file back to the end of the last
 * complete one (job_file_good_end) as it cuts a plain file back to its last
 * '\n'. Files written by the `zstd` tool (one frame for the whole file, or
 * frames cut anywhere) read the same: a record then ends wherever a frame
 * ends right after a '\n'.
 *
 *   reader:  job_file_rd_open -> job_file_rd_line ... -> job_file_rd_close
 *   writer:  job_file_wr_open -> (job_file_write | job_file_printf)...
 *            -> job_file_flush (ends the record) ... -> job_file_wr_close
 */
#ifndef FH_JOB_FILE_H
#define FH_JOB_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct job_file_rd job_file_rd;
typedef struct job_file_wr job_file_wr;

/* 1 when path names a zstd file (ends in ".zst"), else 0. */
int job_file_is_zst(const char *path);

/* Open path for reading line by line, in bounded memory (a line is held
 * whole; a zstd frame is streamed). what names the file in the message of
 * a failed open ("prompt file": "p.jsonl: cannot open the prompt file
 * (...)"). limit >= 0 reads only the file's first limit bytes (a record
 * end from job_file_good_end), -1 all of it. *r is the caller's to free
 * with job_file_rd_close. @return 0 or -errno with a message. */
int job_file_rd_open(const char *path, const char *what, int64_t limit, job_file_rd **r);
/* The next line, its '\n' included (the last line of a file may lack it),
 * NUL-terminated in *line, which r owns until the next call. *rec_end (may
 * be NULL) gets the byte offset in the file where the record holding the
 * line ends when the line is its record's last (plain: every line ending
 * in '\n'; .zst: a line ending right where its frame ends), else -1.
 * @return the line's length, 0 at the end of the file, or -errno with a
 * message: -EILSEQ the .zst file does not start as a zstd stream, -EBADMSG
 * corrupt or truncated zstd data after its start, or a failed read's
 * -errno (-EIO, ...: "p.jsonl: read failed (Input/output error)"). The
 * file is read through offload/'s off_read, so FLEXH2O_FAULT reaches it. */
ssize_t job_file_rd_line(job_file_rd *r, char **line, int64_t *rec_end);
/* Close and free r. Accepts NULL. */
void job_file_rd_close(job_file_rd *r);

/* Torn-tail detection for --resume: *end gets the byte offset just past the
 * last complete record of path (0 when none; the file's size when nothing
 * is torn). A plain file is complete up to its last '\n'; a .zst file up to
 * the end of the last whole frame whose content ends in '\n' - a truncated
 * frame, bytes after the last frame and a frame not ending in '\n' all lie
 * past *end. The file is not changed. @return 0, or -EILSEQ (a .zst file
 * that is not zstd at all: refuse rather than cut it), or -errno. */
int job_file_good_end(const char *path, int64_t *end);

/* Whole contents of path (decompressed when .zst), NUL-terminated, for a
 * reader that needs every line at once (score counts its requests first).
 * *buf is the caller's to free; *len (may be NULL) its length. A torn
 * .zst file is an error here. @return 0 or -errno with a message. */
int job_file_read_all(const char *path, char **buf, size_t *len);

/* Open path for writing records. mode is fopen's: "ab" appends (a resumed
 * job), "wb" truncates, "wbx" refuses an existing file (-EEXIST). .zst
 * records are compressed at level 3. *w is the caller's to close with
 * job_file_wr_close. @return 0 or -errno with a message. */
int job_file_wr_open(const char *path, const char *mode, job_file_wr **w);
/* Append bytes to the record being written; nothing reaches the file for
 * sure before job_file_flush. Writes go through offload/'s off_write (and
 * so its fault hook); a short write is resumed. The first failed write
 * records a message naming the file, the offset and the errno, and where
 * the intact part of the file ends; after it w writes nothing more, so the
 * file ends at most in one torn record, which a resume cuts.
 * @return 0 or -errno. */
int job_file_write(job_file_wr *w, const void *buf, size_t len);
/* job_file_write of printf-formatted text. @return as job_file_write. */
int job_file_printf(job_file_wr *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* End the record: its bytes, which must end in '\n', go to the file as one
 * zstd frame (.zst) and are flushed, so that a crash after this leaves the
 * record whole. Without pending bytes it only flushes. @return as
 * job_file_write. */
int job_file_flush(job_file_wr *w);
/* End a pending record (unless a write failed), fsync, close and free w.
 * Accepts NULL. @return 0 or -errno with a message (a failed write's
 * again, or the fsync's). */
int job_file_wr_close(job_file_wr *w);

#endif
