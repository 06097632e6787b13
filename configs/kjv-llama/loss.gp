# gnuplot configs/kjv-llama/loss.gp  (from the repository root): loss.png
set datafile separator ','
set terminal pngcairo size 800,480
set output 'configs/kjv-llama/loss.png'
set xlabel 'training tokens (millions)'
set ylabel 'cross-entropy (nats/token)'
set key top right
plot 'configs/kjv-llama/loss.csv' every ::1 using ($2/1e6):3 with lines title 'train (batch)', \
     '< grep -v nan configs/kjv-llama/loss.csv' every ::1 using ($2/1e6):4 with linespoints title 'held out'
