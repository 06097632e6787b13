#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include "kern.h"
#define DECL(v) void v##_h16(float*,const float*,const uint16_t*,kern_h16,int,int,int,float*); void v##_f32(float*,const float*,const float*,int,int,int);
DECL(w512) DECL(old) DECL(pf) DECL(keep)
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){int m=atoi(argv[1]),h=atoi(argv[2]),rounds=atoi(argv[3]);
 /* one OPT layer: qkv+o 4 h*h, fc1 4h*h, fc2 h*4h */
 int shapes[3][2]={{h,h},{4*h,h},{h,4*h}}; int reps[3]={4,1,1};
 size_t maxw=(size_t)16*h*h; uint16_t*w=malloc(2*maxw); float*wf=malloc(4*maxw);
 for(size_t i=0;i<maxw;i++){w[i]=0x3c00^(i%1021);wf[i]=(float)(i%1021)*1e-3f;}
 float*x=malloc(4L*m*4*h),*y=malloc(4L*m*4*h),*ws=malloc(4L*16*h*64);
 for(long i=0;i<(long)m*4*h;i++)x[i]=(i%97)*1e-2f;
 const char*nm[4]={"old","pf","keep","w512"}; double best[2][4],sum[2][4]={{0}};
 for(int a=0;a<2;a++)for(int v=0;v<4;v++)best[a][v]=1e9;
 for(int r=0;r<rounds;r++)for(int a=0;a<2;a++)for(int v=0;v<4;v++){double t=now();
  size_t off=0; for(int s=0;s<3;s++)for(int q=0;q<reps[s];q++){int n=shapes[s][0],k=shapes[s][1]; const uint16_t*w_=w+off; const float*wf_=wf+off; off+=(size_t)n*k;
   if(a==0){ if(v==0)old_h16(y,x,w_,KERN_H16_F16,m,n,k,ws); if(v==1)pf_h16(y,x,w_,KERN_H16_F16,m,n,k,ws); if(v==2)keep_h16(y,x,w_,KERN_H16_F16,m,n,k,ws); if(v==3)w512_h16(y,x,w_,KERN_H16_F16,m,n,k,ws);}
   else { if(v==0)old_f32(y,x,wf_,m,n,k); if(v==1)pf_f32(y,x,wf_,m,n,k); if(v==2)keep_f32(y,x,wf_,m,n,k); if(v==3)w512_f32(y,x,wf_,m,n,k);}}
  t=now()-t; if(t<best[a][v])best[a][v]=t; sum[a][v]+=t;}
 for(int a=0;a<2;a++){printf("%s m %d h %d:",a?"f32":"f16",m,h);for(int v=0;v<4;v++)printf("  %s min %.1f mean %.1f",nm[v],best[a][v]*1e3,sum[a][v]/rounds*1e3);printf("\n");}
}
