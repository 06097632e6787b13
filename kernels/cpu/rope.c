/* rope.c: rotary position embeddings (Llama, Mistral, Qwen2, GPT-NeoX),
 * plain-C reference: the inverse frequencies and the rotation.
 *
 * Hugging Face's convention, rotate_half: the rotated dimensions of a head
 * are two halves, [x1 | x2] with x1 = x[0, r/2), x2 = x[r/2, r) (r =
 * rot_dims), not interleaved pairs. With angle a_i = pos * inv_freq[i]:
 *
 *   x1'[i] = x1[i] cos a_i - x2[i] sin a_i
 *   x2'[i] = x2[i] cos a_i + x1[i] sin a_i          i in [0, r/2)
 *
 * and dimensions [r, head_dim) pass unchanged (GPT-NeoX's rotary_pct).
 * Everything is fp32 as in transformers: the angle is the fp32 product
 * pos * inv_freq, cos and sin of it in fp32 (attention_scaling is 1 for
 * the default, linear and llama3 types). */
#include "../kern.h"

#include <math.h>

#include "cpu_common.h"

int kern_rope_inv_freq(float *inv_freq, int rot_dims, const kern_rope *r)
{
    RETURN_IF(r->type != KERN_ROPE_DEFAULT && r->type != KERN_ROPE_LINEAR &&
              r->type != KERN_ROPE_LLAMA3, -EINVAL, "rope_scaling type %d is not one flexh2o "
              "knows (default, linear, llama3)", (int)r->type);
    RETURN_IF(rot_dims <= 0 || rot_dims % 2, -EINVAL, "RoPE over %d dimensions: it rotates "
              "pairs of dimensions, so the rotary dimensions must be even and positive; check "
              "head_dim and rotary_pct / partial_rotary_factor of the model's config",
              rot_dims);
    RETURN_IF(!(r->theta > 0.0f) || !isfinite(r->theta), -EINVAL, "rope_theta %g: it must "
              "be a positive finite number (check rope_theta / rotary_emb_base in the model's "
              "config)", (double)r->theta);
    RETURN_IF(r->type != KERN_ROPE_DEFAULT && !(r->factor > 0.0f), -EINVAL, "rope_scaling "
              "factor %g: it must be positive (check rope_scaling in the model's config)",
              (double)r->factor);
    RETURN_IF(r->type == KERN_ROPE_LLAMA3 && (r->orig_max_pos <= 0 ||
              !(r->high_freq_factor > r->low_freq_factor) || !(r->low_freq_factor > 0.0f)),
              -EINVAL, "rope_scaling llama3 with low_freq_factor %g, high_freq_factor %g, "
              "original_max_position_embeddings %d: it needs 0 < low < high and a positive "
              "length (check rope_scaling in the model's config)",
              (double)r->low_freq_factor, (double)r->high_freq_factor, r->orig_max_pos);
    int half = rot_dims / 2;
    /* _compute_default_rope_parameters: 1 / base^(arange(0, dim, 2) / dim), fp32 */
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0f / powf(r->theta, (float)(2 * i) / (float)rot_dims);
    if (r->type == KERN_ROPE_LINEAR) {
        /* _compute_linear_scaling_rope_parameters: inv_freq /= factor */
        for (int i = 0; i < half; i++)
            inv_freq[i] /= r->factor;
    } else if (r->type == KERN_ROPE_LLAMA3) {
        /* _compute_llama3_parameters: wavelengths shorter than
         * orig / high_freq_factor keep their frequency, longer than
         * orig / low_freq_factor are divided by factor, and those between
         * are interpolated, smooth = (orig / wavelen - low) / (high - low).
         * The two bounds are Python floats, compared with the fp32
         * wavelength in fp32 (PyTorch casts the scalar); the rest is fp32
         * in the same order. */
        float orig = (float)r->orig_max_pos, lo = r->low_freq_factor, hi = r->high_freq_factor;
        float low_wavelen = (float)((double)r->orig_max_pos / lo);
        float high_wavelen = (float)((double)r->orig_max_pos / hi);
        float two_pi = (float)(2.0 * M_PI);
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i], wavelen = two_pi / f;
            float fl = wavelen > low_wavelen ? f / r->factor : f;
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (orig / wavelen - lo) / (float)((double)hi - lo);
                fl = (1.0f - smooth) * fl / r->factor + smooth * fl;
            }
            inv_freq[i] = fl;
        }
    }
    return 0;
}

/* Rotate dimensions [i0, i1) of the first half (and their partners in the
 * second) of one head row x, by the angles' cosines c and sines s (indexed
 * from i0). */
static void rope_head(float *x, int half, int i0, int i1, const float *c, const float *s)
{
    for (int i = i0; i < i1; i++) {
        float x1 = x[i], x2 = x[i + half], ci = c[i - i0], si = s[i - i0];
        x[i] = x1 * ci - x2 * si;
        x[i + half] = x2 * ci + x1 * si;
    }
}

/* The angles of a row, ROPE_ANGLES at a time: cos and sin of each once per
 * row (every head of the row turns by the same angles). */
#define ROPE_ANGLES 64

int kern_rope_ref(float *q, float *k, int ld, const int32_t *pos, int n, int n_head,
                  int n_kv_head, int head_dim, int rot_dims, const float *inv_freq)
{
    RETURN_IF(rot_dims <= 0 || rot_dims % 2 || rot_dims > head_dim, -EINVAL, "RoPE over %d "
              "of %d dimensions per head: the rotary dimensions must be even, positive and "
              "at most head_dim; check rotary_pct / partial_rotary_factor", rot_dims,
              head_dim);
    int half = rot_dims / 2;
    #pragma omp parallel for schedule(static) if (n > 1)
    for (int r = 0; r < n; r++) {
        for (int i0 = 0; i0 < half; i0 += ROPE_ANGLES) {
            int i1 = half - i0 < ROPE_ANGLES ? half : i0 + ROPE_ANGLES;
            float c[ROPE_ANGLES], s[ROPE_ANGLES];
            for (int i = i0; i < i1; i++) {
                float a = (float)pos[r] * inv_freq[i];
                c[i - i0] = cosf(a);
                s[i - i0] = sinf(a);
            }
            for (int h = 0; h < n_head; h++)
                rope_head(q + (size_t)r * ld + (size_t)h * head_dim, half, i0, i1, c, s);
            for (int h = 0; k && h < n_kv_head; h++)
                rope_head(k + (size_t)r * ld + (size_t)h * head_dim, half, i0, i1, c, s);
        }
    }
    return 0;
}
