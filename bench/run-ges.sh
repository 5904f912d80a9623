#!/usr/bin/env bash
# GES lock acquire+release with a remote master over TCP (two processes) beside sockperf's
# 64 B round trip, measured in one run in both waiting modes: installs sockperf if it is
# missing, builds `gesbench` in release mode and runs it. Extra arguments go to gesbench
# (e.g. --modes busy --samples 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool sockperf sockperf "the TCP floor"
ensure_tool taskset util-linux "to pin processes"
exec "$(build_bench gesbench)" "$@"
