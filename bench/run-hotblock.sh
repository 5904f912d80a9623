#!/usr/bin/env bash
# One hot block changed by every thread of 3 instances (in one process, tcp on loopback),
# under both ship policies in the same run, each with and without a ship hold (--holds,
# default 0,1000 µs of cache.ship_hold_us): log-force (a changed block leaves once its redo
# is durable) and commit-dependency (it leaves while the redo write is in flight). Prints
# changes/s and p50/p99 of a change (begin to acknowledged commit). Files go to --dir
# (default target/hotblock): its file system decides the fsync cost. Extra arguments go to
# hotblock (e.g. --threads 8 --seconds 10, or --instances 1 [--until-durable] for early
# lock release alone).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bin="$(build_bench hotblock)"
echo "machine: $(uname -r), $(nproc) CPUs" >&2
df -T . 2>/dev/null | tail -1 >&2 || true
exec "$bin" "$@"
