/* job_merge.c: the completions files of the shards of one job (generate
 * --shard I/N, each its requests' records in the prompt file's order) joined
 * into one file in the prompt file's order, byte for byte what one run over
 * the whole file writes (`flexh2o merge`, job_merge in job.h).
 *
 *   the prompt file opened; every shard opened, checked for a torn last
 *     record (job_file_good_end), its first record read (its head)
 *   -> OUT created ("wbx": never over an existing file)
 *   -> per line of the prompt file, its key (job_line_key; none: a line
 *      generate skipped; a repeated key: skipped, as generate skips it):
 *        the shard whose head has the key: the head's bytes to OUT, flushed;
 *        that shard reads its next head
 *        no shard: the request is missing (counted)
 *   -> every shard consumed
 *
 * The record of a key is at the first line with the key (the reader takes
 * a bad line's key too, so a later line with it is a repeat), which is
 * where it is taken here. A shard is a subsequence of the prompt file, so
 * its head is always a key the prompt file has yet to reach. A head whose
 * key the file has passed (or never holds: then the shard is not consumed
 * at the end) is out of order, an error. Memory: one line per shard, and
 * the prompt file's keys (a job_idset, for the repeats); O(shards) work
 * per request.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "job.h"

/* One shard being read. */
typedef struct merge_shard {
    const char *path;    /* the caller's */
    job_file_rd *f;
    char *line;          /* the head record as read, '\n' included; f's */
    size_t len;
    int lineno;          /* the head's 1-based line */
    char *key;           /* the head's key (compact JSON), owned; NULL: consumed */
} merge_shard;

/* The merge of one job. */
typedef struct merge {
    const char *prompts, *out;
    merge_shard *sh;     /* (n_sh) */
    int n_sh;
    job_idset seen;      /* the keys of the prompt file read so far */
    job_file_wr *w;      /* OUT once created */
} merge;

/* The error of a record out of the prompt file's order: sh's head.
 * @return -EINVAL. */
static int out_of_order(const merge *m, const merge_shard *sh)
{
    err_set(__FILE__, __LINE__, "%s:%d: record %.80s is not in the order of %s (or not in %s "
            "at all): was it written for this prompt file?", sh->path, sh->lineno, sh->key,
            m->prompts, m->prompts);
    return -EINVAL;
}

/* Read sh's next record into its head (key NULL at the end), keyed as
 * --resume keys it (job_record_key). A key the prompt file has passed is
 * out of order. @return 0 or -errno with a message. */
static int shard_next(merge *m, merge_shard *sh)
{
    free(sh->key);
    sh->key = NULL;
    ssize_t len = job_file_rd_line(sh->f, &sh->line, NULL);
    FORWARD_IF((int)len);
    if (len == 0)
        return 0;
    sh->len = (size_t)len;
    sh->lineno++;
    int rc = job_record_key(sh->line, sh->len, &sh->key);
    FORWARD_IF(rc);
    RETURN_IF(rc == 1, -EINVAL, "%s:%d: not a flexh2o completion record (no \"id\" or "
              "\"custom_id\"); give the --out files of generate --shard I/N", sh->path,
              sh->lineno);
    if (job_idset_has(&m->seen, sh->key))
        return out_of_order(m, sh);
    return 0;
}

/* Open shard sh, refuse it when its last record is torn, and read its
 * head. @return 0 or -errno with a message. */
static int shard_open(merge *m, merge_shard *sh)
{
    int64_t good;
    struct stat st;
    /* opened first: a missing shard's message names it as one */
    FORWARD_IF(job_file_rd_open(sh->path, "shard", -1, &sh->f));
    FORWARD_IF(job_file_good_end(sh->path, &good));
    RETURN_IF(stat(sh->path, &st) != 0, -errno, "%s: cannot read the shard (%s)",
              sh->path, strerror(errno));
    RETURN_IF(good < (int64_t)st.st_size, -EINVAL, "%s: its last record is torn (an "
              "interrupted shard); finish it with generate --shard I/N --resume", sh->path);
    return shard_next(m, sh);
}

/* Create OUT. @return 0 or -errno with a message. */
static int out_open(merge *m)
{
    int rc = job_file_wr_open(m->out, "wbx", &m->w);
    if (rc == -EEXIST) { /* job_file_wr_open's message does not name the flag */
        err_clear();
        err_set(__FILE__, __LINE__, "%s already exists; remove it or choose another --out",
                m->out);
    }
    return rc;
}

/* The record of key, if a shard's head has it, to OUT; that shard moves
 * on. @return 1 written, 0 no shard has it, or -errno with a message. */
static int take(merge *m, const char *key)
{
    for (int i = 0; i < m->n_sh; i++) {
        merge_shard *sh = &m->sh[i];
        if (!sh->key || strcmp(sh->key, key) != 0)
            continue;
        /* the message of a failed write is job_file_write's */
        FORWARD_IF(job_file_write(m->w, sh->line, sh->len));
        FORWARD_IF(job_file_flush(m->w));
        FORWARD_IF(shard_next(m, sh));
        return 1;
    }
    return 0;
}

/* The pass over the prompt file, in. @return 0 or -errno with a message. */
static int merge_run(merge *m, job_file_rd *in, job_merge_stats *st)
{
    char *line;
    ssize_t len;
    int lineno = 0, rc = 0;
    while (rc == 0 && (len = job_file_rd_line(in, &line, NULL)) > 0) {
        char *key;
        rc = job_line_key(line, (size_t)len, ++lineno, &key);
        if (rc == 1) { /* no request: generate wrote nothing for it */
            rc = 0;
            continue;
        }
        /* a repeated key is a bad line for generate, which keeps the first */
        if (rc == 0 && !job_idset_has(&m->seen, key)) {
            rc = job_idset_add(&m->seen, key);
            if (rc == 0)
                rc = take(m, key);
            if (rc >= 0) {
                st->records += rc;
                st->missing += !rc;
                rc = 0;
            }
        }
        free(key);
    }
    if (rc == 0 && len < 0)
        rc = (int)len;
    FORWARD_IF(rc);
    for (int i = 0; i < m->n_sh; i++)
        if (m->sh[i].key)
            return out_of_order(m, &m->sh[i]);
    return 0;
}

int job_merge(const char *prompts, const char *const *shards, int n_shards, const char *out,
              job_merge_stats *st_out)
{
    job_merge_stats st = {0};
    merge m = {.prompts = prompts, .out = out, .n_sh = n_shards};
    m.sh = calloc((size_t)(n_shards > 0 ? n_shards : 1), sizeof *m.sh);
    RETURN_IF(!m.sh, -ENOMEM, "out of memory for %d shards", n_shards);
    /* every input opened before OUT is created: a failure here leaves
     * nothing behind */
    job_file_rd *in = NULL;
    int rc = job_file_rd_open(prompts, "prompt file", -1, &in);
    for (int i = 0; rc == 0 && i < n_shards; i++) {
        m.sh[i].path = shards[i];
        rc = shard_open(&m, &m.sh[i]);
    }
    if (rc == 0)
        rc = out_open(&m);
    if (rc == 0)
        rc = merge_run(&m, in, &st);
    job_file_rd_close(in);
    if (m.w) {
        int crc = job_file_wr_close(m.w); /* its message, when it fails */
        if (rc == 0)
            rc = crc;
        if (rc < 0)
            unlink(out); /* ours ("wbx"), and no use half joined */
    }
    for (int i = 0; i < n_shards; i++) {
        job_file_rd_close(m.sh[i].f);
        free(m.sh[i].key);
    }
    free(m.sh);
    job_idset_free(&m.seen);
    if (st_out)
        *st_out = st;
    return rc;
}
