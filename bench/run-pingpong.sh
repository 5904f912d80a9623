#!/usr/bin/env bash
# Round-trip latency of Fusion's transports beside their floors, measured in one run:
# installs sockperf if it is missing, builds `pingpong` in release mode and runs it.
# Extra arguments go to pingpong (e.g. --transports tcp --modes busy --samples 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sockperf >/dev/null 2>&1; then
  echo "installing sockperf (the TCP floor) ..." >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq sockperf >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq sockperf >/dev/null
  fi
fi
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is needed to pin processes" >&2; exit 1; }
cargo build --release -q -p bench --bin pingpong
exec target/release/pingpong "$@"
