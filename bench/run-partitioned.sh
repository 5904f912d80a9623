#!/usr/bin/env bash
# A partitioned workload (each instance reads and changes only its own block ranges) on 1
# and 3 instance processes over tcp loopback, with affinity remastering of block masters on,
# and 3 instances with it off as the control: prints throughput (3 beside 1), the share of
# acquisitions served by a master on the same instance after the warm-up, the objects moved
# and the machine's load average. Builds `partbench` in release mode; extra arguments go to
# it (e.g. --seconds 20 --threads 4 --write-percent 0).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
exec "$(build_bench partbench)" "$@"
