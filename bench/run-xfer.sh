#!/usr/bin/env bash
# Block-transfer throughput over tcp loopback with many requests in flight (64 B request ->
# 8 KiB block into an armed frame, the interconnect path the engine ships blocks on) beside
# the raw 8 KiB TCP message rate, measured in one run: a plain-socket request/reply floor with
# the same number in flight and `sockperf throughput -m 8192`. Installs sockperf if it is
# missing, builds `xferbench` in release mode and runs it. Extra arguments go to xferbench
# (e.g. --depths 1,16,64 --modes blocking --rounds 5 --seconds 3).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool sockperf sockperf "the TCP floor"
ensure_tool taskset util-linux "to pin processes"
exec "$(build_bench xferbench)" "$@"
