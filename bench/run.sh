#!/bin/sh
# bench/run.sh - what `make bench` runs: the side-by-side benchmark (bench/bench.py does the work).
#   bench/run.sh                 full run: 3 interleaved rounds, -c50,200, -d5s, + extra measurements
#   bench/run.sh --smoke         ≈2 s per contender, exit 0 only if every contender answers 2xx
#   bench/run.sh --help          every option (duration, rounds, connections, rows, contenders, ...)
# Needs: build/authproxy (make build/authproxy) and the packages of `make deps-bench`.
set -eu
cd "$(dirname "$0")/.."
mkdir -p build/bench
if [ ! -x build/bench/floor_relay ] || [ bench/floor_relay.c -nt build/bench/floor_relay ]; then
  ${CC:-gcc} -O2 -Wall -Wextra -o build/bench/floor_relay bench/floor_relay.c
fi
# the idle-connection measurement holds 7,000 client connections (and the proxies as many upstream)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/bench.py "$@"
