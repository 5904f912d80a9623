#!/usr/bin/env bash
# Latency of a remote block acquisition through the whole instance path (two instance
# processes over tcp loopback, a clean block taken in X back and forth) beside the transport
# alone (pingpong's tcp 64B->8KiB row) and the sockperf floor, measured in one run: installs
# sockperf if it is missing, builds `blockbench` and `pingpong` in release mode and runs
# blockbench. Extra arguments go to blockbench (e.g. --modes default,park --samples 50000;
# --transport rdma [--rdma-device mlx5_0]: over RDMA beside ib_write_lat -s 8192, installing
# perftest; --instances 3: 3-way transfers, three instance processes, beside two sockperf
# round trips).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool sockperf sockperf "the TCP floor"
ensure_tool taskset util-linux "to pin processes"
if wants_rdma "$@"; then
  ensure_tool ib_write_lat perftest "the RDMA floor"
fi
build_bench pingpong >/dev/null
exec "$(build_bench blockbench)" "$@"
