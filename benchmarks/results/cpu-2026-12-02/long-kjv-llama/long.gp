set datafile separator ','
set terminal pngcairo size 900,500
set output 'benchmarks/results/cpu-2026-12-02/long-kjv-llama/long.png'
set xlabel 'generated tokens'
set ylabel 'decode tokens/s'
set y2label 'peak memory, GPU tier (MiB)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot '< grep ^h2o benchmarks/results/cpu-2026-12-02/long-kjv-llama/long.csv' using 2:3 with linespoints title 'decode tok/s (h2o)', \
     '< grep ^h2o benchmarks/results/cpu-2026-12-02/long-kjv-llama/long.csv' using 2:4 axes x1y2 with linespoints title 'peak MiB (h2o)'
