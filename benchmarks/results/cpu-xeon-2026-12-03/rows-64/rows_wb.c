/* rows_wb.c: session 11's microbenchmark behind rows-64/README.md (kept with its
 * output, not a benchmarks/ program): for m rows against an n x k matrix, best
 * of 5 x reps, 2 threads: OpenBLAS sgemm over fp32 weights, kern_linear_rows
 * over them, whole-matrix 4-bit expansion + sgemm against kern_linear_rows_q4,
 * and fp16 (kern_widen_par + sgemm) against kern_linear_rows_h16. The kernel
 * file is compiled separately with -DWB=4 (the 6 x 4 blocks of 29e64d0) or
 * -DWB=8 (5ec7bbe's 3 x 8) and linked ahead of libkern.
 *
 * Link the OpenMP build of OpenBLAS, as flexh2o does (meson.build):
 * libopenblas.so.0 resolves to the pthread build by default on Debian, whose
 * own thread pool then fights libgomp's spinning threads (session 10's
 * rows_vs_sgemm.c was linked that way: its sgemm numbers are 1.5-2x low).
 *
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -std=c11 -D_GNU_SOURCE -O3 -march=native -fopenmp -DWB=8 -Ikernels \
 *       -c kernels/cpu/linear_rows.c -o lr8.o
 *   gcc -std=c11 -D_GNU_SOURCE -O3 -march=native -fopenmp -Ikernels \
 *       -I/usr/include/x86_64-linux-gnu/openblas-openmp rows_wb.c lr8.o -o rvs8 \
 *       -Lbuild/kernels -lkern -L$B -Wl,-rpath,$B -lopenblas -lm
 *   OMP_NUM_THREADS=2 GOMP_SPINCOUNT=1000 ./rvs8 M N K REPS
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <stdint.h>
#include "kern.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *al(size_t b){return aligned_alloc(64,(b+63)/64*64);}
int main(int argc,char**argv){
  int m=atoi(argv[1]), n=atoi(argv[2]), k=atoi(argv[3]), reps=atoi(argv[4]);
  float *x=al(4*(size_t)m*k),*w=al(4*(size_t)n*k),*y=al(4*(size_t)m*n),*ws=al(4*(size_t)n*k);
  uint8_t *wq=al(kern_q4_row_bytes(k)*(size_t)n); uint16_t *wh=al(2*(size_t)n*k);
  for(size_t i=0;i<(size_t)m*k;i++)x[i]=(float)((i*7919)%1000)/1000.f-0.5f;
  for(size_t i=0;i<(size_t)n*k;i++)w[i]=(float)((i*104729)%1000)/1000.f-0.5f;
  kern_q4_quantize_ref(wq,w,n,k); for(size_t i=0;i<(size_t)n*k;i++)wh[i]=kern_f32_to_f16(w[i]);
  const char *nm[6]={"sgemm fp32","rows fp32","deq+sgemm q4","rows q4","wid+sgemm h16","rows h16"};
  for(int v=0;v<6;v++){double best=1e9;
    for(int t=0;t<5;t++){double t0=now();for(int r=0;r<reps;r++){
      if(v==0)cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,m,n,k,1,x,k,w,k,0,y,n);
      else if(v==1)kern_linear_rows(y,x,w,m,n,k);
      else if(v==2){kern_q4_dequant_par(ws,wq,n,k);cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,m,n,k,1,x,k,ws,k,0,y,n);}
      else if(v==3)kern_linear_rows_q4(y,x,wq,m,n,k,ws);
      else if(v==4){kern_widen_par(ws,wh,(size_t)n*k,KERN_H16_F16);cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,m,n,k,1,x,k,ws,k,0,y,n);}
      else kern_linear_rows_h16(y,x,wh,KERN_H16_F16,m,n,k,ws);}
      double dt=(now()-t0)/reps;if(dt<best)best=dt;}
    printf("%-13s m %d n %d k %d: %.3f ms %.1f GFLOP/s\n",nm[v],m,n,k,best*1e3,2.0*m*n*k/best/1e9);}
}
