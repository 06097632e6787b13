set datafile separator ','
set terminal pngcairo size 900,560
set key top right
set xlabel 'KV budget (% of the 1024-token context)'
set output 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.png'
set ylabel 'perplexity (held-out)'

plot 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:3 with linespoints title 'full', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:4 with linespoints title 'h2o', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:5 with linespoints title 'window', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:6 with linespoints title 'streaming', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:7 with linespoints title 'streaming+4', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:8 with linespoints title 'h2o 4-bit KV'

set output 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/agreement.png'
set ylabel 'top-1 agreement with the full cache'
plot 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:9 with linespoints title 'h2o', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:10 with linespoints title 'window', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:11 with linespoints title 'streaming', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:12 with linespoints title 'streaming+4', 'benchmarks/results/cpu-2026-12-02/quality-kjv-llama/budget.csv' every ::1 using 1:13 with linespoints title 'h2o 4-bit KV'
