/* bias_act.c: bias add with optional ReLU, and residual add; references. */
#include "../kern.h"

void kern_bias_act_ref(float *x, const float *b, int n, int d, int relu)
{
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * d;
        if (!b) {
            if (relu)
                for (int j = 0; j < d; j++)
                    xi[j] = xi[j] > 0.0f ? xi[j] : 0.0f;
        } else if (relu) {
            for (int j = 0; j < d; j++) {
                float t = xi[j] + b[j];
                xi[j] = t > 0.0f ? t : 0.0f;
            }
        } else {
            for (int j = 0; j < d; j++)
                xi[j] += b[j];
        }
    }
}

void kern_add_ref(float *y, const float *x, size_t count)
{
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] += x[i];
}
