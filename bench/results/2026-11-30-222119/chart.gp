set terminal pngcairo size 1400,900 font ',10'
set output '/work/main/bench/results/2026-11-30-222119/chart.png'
set multiplot layout 2,1 title 'authproxy benchmark 2026-11-30-222119'
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
set ylabel 'requests/s (median)'
plot '/work/main/bench/results/2026-11-30-222119/chart.dat' using 2:xtic(1) title 'direct' lc rgb '#999999', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 3:xtic(1) title 'nginx' lc rgb '#2ca02c', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 4:xtic(1) title 'haproxy' lc rgb '#1f77b4', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 5:xtic(1) title 'floor' lc rgb '#ff7f0e', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 6:xtic(1) title 'authproxy' lc rgb '#d62728'
set ylabel 'proxy CPU us per request (median)'
plot '/work/main/bench/results/2026-11-30-222119/chart.dat' using 8:xtic(1) title 'nginx' lc rgb '#2ca02c', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 9:xtic(1) title 'haproxy' lc rgb '#1f77b4', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 10:xtic(1) title 'floor' lc rgb '#ff7f0e', '/work/main/bench/results/2026-11-30-222119/chart.dat' using 11:xtic(1) title 'authproxy' lc rgb '#d62728'
unset multiplot
