#!/usr/bin/env bash
# Round-trip latency of Fusion's transports beside their floors, measured in one run:
# installs sockperf if it is missing, builds `pingpong` in release mode and runs it.
# Extra arguments go to pingpong (e.g. --transports tcp --modes busy --samples 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool sockperf sockperf "the TCP floor"
ensure_tool taskset util-linux "to pin processes"
exec "$(build_bench pingpong)" "$@"
