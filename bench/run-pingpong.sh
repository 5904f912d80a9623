#!/usr/bin/env bash
# Round-trip latency of Fusion's transports beside their floors, measured in one run:
# installs sockperf (and perftest when rdma is asked for) if missing, builds `pingpong` in
# release mode and runs it. Extra arguments go to pingpong (e.g. --transports tcp --modes busy
# --samples 50000; --transports rdma [--rdma-device mlx5_0] for RDMA beside ib_write_lat and
# ib_send_lat on the same device; --transports tcp,tcp-mac for rows without and with frame MACs).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool sockperf sockperf "the TCP floor"
ensure_tool taskset util-linux "to pin processes"
if wants_rdma "$@"; then
  ensure_tool ib_write_lat perftest "the RDMA floor"
fi
exec "$(build_bench pingpong)" "$@"
