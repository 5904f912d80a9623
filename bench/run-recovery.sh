#!/usr/bin/env bash
# Instance recovery after a kill -9: a three-instance cluster (processes, tcp on loopback,
# one shared file) whose instance 2 dies holding 10,000 dirty blocks; reports, per round and
# as medians, the time from the kill to the first access of an unaffected block and to
# recovery complete against the targets (< 1 s, < 3 s), and checks every recovered block.
# Builds `recoverybench` in release mode and runs it; extra arguments go to it (e.g.
# --rounds 5 --blocks 20000 --probe-interval-us 500).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
exec "$(build_bench recoverybench)" "$@"
