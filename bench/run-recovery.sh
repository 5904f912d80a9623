#!/usr/bin/env bash
# Instance recovery after a kill -9: a three-instance cluster of fusiond processes (tcp on
# loopback, one shared file) whose instance 2 dies holding about 10,000 dirty blocks (10,000
# keys of 7,000 bytes); reports, per round and as medians, the time from the kill to the
# first access of an unaffected key and to recovery complete against BENCHMARKS.md's targets (< 500 ms,
# < 1 s), and reads every key of the victim back.
# Builds `fusiond` and `recoverybench` in release mode and runs it; extra arguments go to it
# (e.g. --rounds 5 --keys 20000 --probe-interval-us 500; --profiles default,fast-failover
# measures the configuration's default failure timings and its fast-failover profile, rounds
# taken in turn, a table each).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
cargo build --release -q -p fusiond --bin fusiond
exec "$(build_bench recoverybench)" "$@"
