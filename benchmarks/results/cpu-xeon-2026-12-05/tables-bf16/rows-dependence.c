/* rows-dependence.c (session 26): does a row's output of oneDNN's packed bf16
 * matmul (kern_linear_bf16_packed) depend on how many rows the call has? Row
 * 0 of x against a packed 256 x 4096 matrix, at 1 to 256 rows, each compared
 * with the 1-row call. Output on this AMX VM: rows-dependence.txt. From the
 * repository root after `ninja -C build`:
 *   gcc -O2 -std=c11 -Ikernels -Ibuild -Ibuild/kernels rows-dependence.c \
 *       build/kernels/libkern.a -ldnnl -lopenblas -lm -fopenmp -o /tmp/rd && /tmp/rd */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "kern.h"
static uint64_t s = 7;
static float rnd(void){ s = s * 6364136223846793005ULL + 1442695040888963407ULL; return ((s >> 40) / (float)(1 << 24)) * 2 - 1; }
int main(void){
  const int n = 256, k = 4096, ms[] = {1, 2, 3, 4, 8, 16, 24, 64, 256};
  uint16_t *w = malloc(2L*n*k); float *wf = malloc(4L*n*k);
  for (long i = 0; i < (long)n*k; i++) { wf[i] = rnd(); uint32_t u; memcpy(&u, &wf[i], 4); w[i] = u >> 16; }
  printf("amx %d packs %d\n", kern_bf16_matmul_amx(), kern_bf16_pack(w, n, k));
  float *x = malloc(4L*256*k), *y = malloc(4L*256*n), *y1 = malloc(4L*n);
  for (long i = 0; i < 256L*k; i++) x[i] = rnd();
  size_t wsb = 4L*n*k; void *ws = malloc(wsb);
  for (size_t q = 0; q < sizeof ms/sizeof *ms; q++) {
    int m = ms[q];
    if (kern_linear_bf16_packed(y, x, w, m, n, k, ws, wsb)) { printf("fail\n"); return 1; }
    if (q == 0) memcpy(y1, y, 4L*n);
    int d = 0; for (int j = 0; j < n; j++) d += y[j] != y1[j];
    printf("m %3d: row 0 differs from m 1 in %d of %d outputs\n", m, d, n);
  }
}
