/* gen_trace.c: what generation reads back from the KV cache after a pass,
 * and only when asked: the --trace-evictions file (its format, its lines
 * and its rewrite on resume) and the --stats kept attention mass.
 *
 *   pass ─► sched_read_kv / sched_read_evicted ─► trace lines (prefill:
 *           the prompt tokens not kept; decode: the evicted position)
 *                                              └► kept-mass sums per layer
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "gen_impl.h"

/* One line of the trace; gen.h (gen_run) documents the fields ("sample"
 * only for a request of several completions). */
static int trace_line(job_file_wr *f, const gen_seq *s, int l, int h, int step, int pos)
{
    if (s->p->par.n > 1)
        return job_file_printf(f, "{\"id\": %s, \"sample\": %d, \"layer\": %d, \"head\": %d, "
                               "\"step\": %d, \"pos\": %d}\n", s->p->id, s->sample, l, h, step,
                               pos);
    return job_file_printf(f, "{\"id\": %s, \"layer\": %d, \"head\": %d, \"step\": %d, "
                           "\"pos\": %d}\n", s->p->id, l, h, step, pos);
}

/* End the pass's lines (one zstd frame in a .zst trace). rc: how the
 * lines were written. */
static int trace_flush(job_file_wr *f, int rc)
{
    RETURN_IF(rc < 0 || job_file_flush(f) < 0, -EIO,
              "cannot write the --trace-evictions file (%s); free space and rerun",
              strerror(errno));
    return 0;
}

int gen_trace_prefill(gen_ctx *gc, gen_buf *bb, const gen_seq *s, int k, job_file_wr *f)
{
    const model_config *c = gc->c;
    int n = s->p->n_ids, rc = 0;
    for (int l = 0; l < c->n_layer; l++) {
        FORWARD_IF(sched_read_kv(gc->sc, l, k, 0, bb->slot_pos));
        for (int h = 0; h < c->n_kv_head; h++) { /* the cache is per KV head */
            memset(bb->kept, 0, (size_t)n);
            for (int t = 0; t < s->budget; t++)
                bb->kept[bb->slot_pos[(size_t)h * gc->cap + t]] = 1;
            for (int j = 0; rc == 0 && j < n; j++)
                if (!bb->kept[j])
                    rc = trace_line(f, s, l, h, 0, j);
        }
    }
    return trace_flush(f, rc);
}

int gen_trace_decode(gen_ctx *gc, gen_buf *bb, const gen_seq *ss, int n, job_file_wr *f)
{
    const model_config *c = gc->c;
    int H = c->n_kv_head, rc = 0; /* evictions are per KV head */
    FORWARD_IF(sched_read_evicted(gc->sc, bb->ev));
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < n; k++) {
            if (bb->seqs[k].n_new == 0)
                continue;
            int step = bb->seqs[k].n_past - ss[k].p->n_ids + 1;
            for (int h = 0; rc == 0 && h < H; h++) {
                int32_t e = bb->ev[((size_t)l * gc->block + k) * H + h];
                if (e >= 0)
                    rc = trace_line(f, &ss[k], l, h, step, e);
            }
        }
    return trace_flush(f, rc);
}

/* Copy to w the lines of r whose prompt id has a record in out (the
 * others are generated again). @return 0, -EIO (w could not be written) or
 * the reader's -errno. */
static int trace_keep_done(job_file_rd *r, const job_out *out, job_file_wr *w)
{
    char *line;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (len = job_file_rd_line(r, &line, NULL)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *idv = o ? cJSON_GetObjectItem(o, "id") : NULL;
        char *id = idv ? cJSON_PrintUnformatted(idv) : NULL;
        if (id && job_out_has(out, id))
            rc = job_file_write(w, line, (size_t)len);
        free(id);
        cJSON_Delete(o);
    }
    return rc < 0 ? rc : len < 0 ? (int)len : 0;
}

/* Resume: rewrite the trace at path through a temporary file, keeping
 * only the complete lines (up to job_file_good_end: a torn tail goes) of
 * prompts already in out. @return 0 or -errno. */
static int trace_rewrite(const char *path, const job_out *out)
{
    int64_t good;
    FORWARD_IF(job_file_good_end(path, &good));
    char tmp[4096]; /* ends in .zst when path does: written the same way */
    snprintf(tmp, sizeof tmp, "%s.tmp%s", path, job_file_is_zst(path) ? ".zst" : "");
    job_file_rd *r;
    FORWARD_IF(job_file_rd_open(path, "eviction trace", good, &r));
    job_file_wr *w;
    int rc = job_file_wr_open(tmp, "wb", &w);
    if (rc == 0) {
        rc = trace_keep_done(r, out, w);
        if (job_file_wr_close(w) < 0 && rc == 0)
            rc = -EIO;
        if (rc == -EIO)
            err_set(__FILE__, __LINE__, "%s: cannot rewrite the eviction trace (%s); free "
                    "space and rerun", tmp, strerror(errno));
    }
    job_file_rd_close(r);
    FORWARD_IF(rc);
    RETURN_IF(rename(tmp, path) != 0, -errno, "%s: cannot rewrite the eviction trace (%s)",
              path, strerror(errno));
    return 0;
}

int gen_trace_open(const char *path, int resume, const job_out *out, job_file_wr **f)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || sb.st_size == 0)
        return job_file_wr_open(path, "wb", f);
    RETURN_IF(!resume, -EEXIST, "%s already exists; pass --resume to continue it, or "
              "remove it", path);
    FORWARD_IF(trace_rewrite(path, out));
    return job_file_wr_open(path, "ab", f);
}

/* ------------------------------------------------------------- --stats */

/* Per (sequence, KV head): kept = (sum of the H2O scores of the tokens
 * still in the cache) / (queries so far x query heads of the group). Each
 * query head hands out probability 1 per query, so this is the share of all
 * attention paid so far that went to tokens the cache still holds. */
int gen_stats_pass(gen_ctx *gc, gen_buf *bb, const gen_seq *ss, int n_out, gen_stats *st)
{
    const model_config *c = gc->c;
    int H = c->n_kv_head, group = c->n_head / c->n_kv_head;
    for (int l = 0; l < c->n_layer; l++) {
        for (int i = 0; i < n_out; i++) {
            int k = bb->members[i];
            const gen_seq *s = &ss[k];
            FORWARD_IF(sched_read_kv(gc->sc, l, k, 1, bb->scores));
            for (int h = 0; h < H; h++) {
                const float *sc = bb->scores + (size_t)h * gc->cap;
                double kept = 0;
                for (int t = 0; t < s->n_slots; t++)
                    kept += sc[t];
                st->kept_mass[l] += kept / ((double)s->n_past * group);
            }
        }
    }
    st->kept_samples += (long)n_out * H;
    return 0;
}

void gen_stats_mean(gen_stats *st)
{
    if (st->kept_mass && st->kept_samples > 0)
        for (int l = 0; l < st->n_layer; l++)
            st->kept_mass[l] /= (double)st->kept_samples;
}

void gen_stats_free(gen_stats *st)
{
    free(st->kept_mass);
    st->kept_mass = NULL;
}

void gen_stats_print(FILE *f, const gen_stats *st, const gen_opts *o)
{
    fprintf(f, "[flexh2o] --stats, --kv-policy %s: kept attention mass per layer, mean of "
            "%ld (sequence, head, pass) samples\n", kv_policy_name(o->kv.kind),
            st->kept_samples);
    for (int l = 0; st->kept_mass && st->kept_samples > 0 && l < st->n_layer; l++)
        fprintf(f, "layer %d: %.6f\n", l, st->kept_mass[l]);
}
