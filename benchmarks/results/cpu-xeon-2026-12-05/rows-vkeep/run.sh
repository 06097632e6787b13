#!/bin/sh
# The interleaved A/B of kernels/cpu/linear_rows.c (session 26): four
# variants of the file compiled into one binary under renamed symbols, each
# round running every variant once over one OPT layer (ab.c), min and mean
# over the rounds. Run from the repository root after `ninja -C build`
# (run.sh M HIDDEN ROUNDS). The variants are made from the current file:
#   old  : VKEEP off, no prefetch           (the kernel before 2026-12-05 18:00)
#   pf   : VKEEP off, the next chunk's stored rows prefetched into L2
#   keep : VKEEP on                         (the kernel committed)
#   w512 : VKEEP on, fp16 widened 16 lanes at a time
# The pf and w512 variants patch in code that is not in the tree: see
# pf.patch and w512.patch beside this script.
set -e
D=$(mktemp -d)
S=kernels/cpu/linear_rows.c
H=$(dirname "$0")
INC="-Ikernels -Ibuild -Ibuild/kernels"
sed 's|#include "../kern.h"|#include "kern.h"|' $S > $D/keep.c
sed 's/__asm__("" : "+v"(u))/(void)(u)/' $D/keep.c > $D/old.c
patch -s -o $D/pf.c $D/old.c $H/pf.patch
patch -s -o $D/w512.c $D/keep.c $H/w512.patch
for v in old pf keep w512; do
  gcc -O3 -march=native -std=c11 -D_GNU_SOURCE -fopenmp $INC -c $D/$v.c -o $D/$v.o \
      -Dkern_linear_rows_h16=${v}_h16 -Dkern_linear_rows=${v}_f32 -Dkern_linear_rows_q4=${v}_q4
done
gcc -O2 -fopenmp $INC $H/ab.c $D/*.o build/kernels/libkern.a -lm -o $D/ab
$D/ab "${1:-24}" "${2:-4096}" "${3:-5}"
rm -rf "$D"
