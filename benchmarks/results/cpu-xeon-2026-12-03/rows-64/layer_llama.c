/* layer_llama.c: kern_linear_rows_h16 over a Llama-3.2-1B decode step's
 * matrices (q, k, v, o, gate, up, down, then the 128256-row head; bf16
 * bits), m rows, best of 5 each, the sum: what the rows kernel alone costs a
 * decode step of a block of m against the engine's profile (README.md).
 * Build as README.md builds rows_vs_sgemm.c (the kernel to measure linked
 * ahead of libkern);
 * run: OMP_NUM_THREADS=2 GOMP_SPINCOUNT=1000 ./layer 64 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <stdint.h>
#include "kern.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *al(size_t b){return aligned_alloc(64,(b+63)/64*64);}
int main(int argc,char**argv){
  if (argc < 2) return 2;
  int m=atoi(argv[1]); int sh[][2]={{2048,2048},{512,2048},{512,2048},{2048,2048},{8192,2048},{8192,2048},{2048,8192},{128256,2048}};
  int ns=8; double tot=0, fl=0;
  for(int s=0;s<ns;s++){int n=sh[s][0],k=sh[s][1];
    float *x=al(4*(size_t)m*k),*y=al(4*(size_t)m*n),*ws=al(4*(size_t)n*k); uint16_t *wh=al(2*(size_t)n*k);
    for(size_t i=0;i<(size_t)m*k;i++)x[i]=(float)((i*7919)%1000)/1000.f-0.5f;
    for(size_t i=0;i<(size_t)n*k;i++)wh[i]=(uint16_t)(0x3c00+(i*104729)%512);
    double best=1e9; for(int t=0;t<5;t++){double t0=now(); kern_linear_rows_h16(y,x,wh,KERN_H16_BF16,m,n,k,ws); double dt=now()-t0; if(dt<best)best=dt;}
    printf("n %6d k %5d: %8.3f ms %6.1f GFLOP/s\n",n,k,best*1e3,2.0*m*n*k/best/1e9); tot+=best; fl+=2.0*m*n*k;
    free(x);free(y);free(ws);free(wh);}
  printf("all: %.1f ms %.1f GFLOP/s\n",tot*1e3,fl/tot/1e9);
}
