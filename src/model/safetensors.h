/* safetensors.h: read (mmap) and write Hugging Face safetensors files,
 * single files or shards listed by model.safetensors.index.json. */
#ifndef FH_SAFETENSORS_H
#define FH_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_dtype { ST_F32, ST_F16, ST_BF16 } st_dtype;

typedef struct st_tensor {
    const char *name;   /* owned by the st_set */
    st_dtype dtype;
    int n_dim;
    int64_t shape[4];
    const void *data;   /* into the mmap'd file */
    size_t bytes;
    const char *file;   /* the file it lives in, for messages */
} st_tensor;

typedef struct st_set st_set;

/* Open a model directory: model.safetensors, or the shards named by
 * model.safetensors.index.json. Headers are validated against the file
 * sizes, so a truncated file is reported with its name and what to do.
 * @return 0 or -errno; *out freed with st_close(). */
int st_open_dir(const char *dir, st_set **out);
/* 1 when dir holds the file st_open_dir reads (model.safetensors or
 * model.safetensors.index.json), else 0. */
int st_dir_has(const char *dir);
/* 1 when NAME, a shard file of the index's weight_map, stays inside the
 * model directory (not empty, not absolute, no ".." component), else 0. */
int st_shard_name_ok(const char *name);
/* Open one file. */
int st_open_file(const char *path, st_set **out);
void st_close(st_set *s); /* accepts NULL */

/* Find a tensor by name. @return NULL when absent. */
const st_tensor *st_find(const st_set *s, const char *name);

/* Convert n elements of a tensor to fp32. */
void st_to_f32(const st_tensor *t, float *dst, size_t n);

/* Writer: tensors given as fp32 and stored as `dtype`.
 * @return 0 or -errno with a message naming the path. */
typedef struct st_out {
    const char *name;
    int n_dim;
    int64_t shape[4];
    const float *data;
} st_out;
int st_write(const char *path, const st_out *tensors, int n, st_dtype dtype);

/* bf16 conversions (round to nearest even; fp16: kern_f32_to_f16 and
 * kern_f16_to_f32 of kern.h). */
uint16_t st_f32_to_bf16(float f);
float st_bf16_to_f32(uint16_t h);

#endif
