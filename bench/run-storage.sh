#!/usr/bin/env bash
# Storage figures beside their fio floors, measured in one run: redo commit (1 and 32
# committers vs fio write+fdatasync, the fastest of its psync and io_uring engines) and 8 KiB
# O_DIRECT random reads via io_uring (depth 1 and 32 vs fio io_uring). Installs fio if it is
# missing, builds `storagebench` in release mode and runs it. Files go to --dir (default
# target/storagebench): put it on the file system you want to measure. Extra arguments go to
# storagebench (e.g. --seconds 10 --data-size 2GiB --dir /mnt/nvme/fusion-bench; --only
# commit|read).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool fio fio "the storage floor"
bin="$(build_bench storagebench)"
echo "machine: $(uname -r), $(nproc) CPUs; fio $(fio --version)" >&2
df -T . 2>/dev/null | tail -1 >&2 || true
exec "$bin" "$@"
