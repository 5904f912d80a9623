#!/usr/bin/env bash
# The KV service beside its floor, measured in one run: redis-benchmark (SET, GET, INCR,
# MSET, and SET-OWN: SET where each redis-benchmark writes keys of its own prefix, a
# partitioned workload; -P 1 and -P 16; -c 50 clients) against 1 fusiond instance, against 3 fusiond
# instances (the clients spread over them: one redis-benchmark per instance, run at once,
# ops/s summed, p50/p99 the worst of the three), and against redis-server with
# `--appendonly yes --appendfsync always` (every write fsynced, as every fusiond commit is)
# with its files on the same file system. Prints ops/s and p50/p99 side by side with the
# ratio to redis-server. Installs redis-tools and redis-server if missing.
#
# Files go to DIR (default target/kvbench): put it on the file system you want to measure.
# N requests per test (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ensure_tool redis-benchmark redis-tools "the RESP load generator"
ensure_tool redis-server redis-server "the floor"
cargo build --release -q -p fusiond
bin="${CARGO_TARGET_DIR:-target}/release"
dir="$(realpath -m "${DIR:-target/kvbench}")"
n="${N:-10000}"
rm -rf "$dir" && mkdir -p "$dir"
echo "machine: $(uname -r), $(nproc) CPUs; $(redis-benchmark --version); $(redis-server --version | cut -d' ' -f1-3)" >&2
df -T "$dir" 2>/dev/null | tail -1 >&2 || true

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ping() {
  for _ in $(seq 1 600); do
    redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  return 1
}

# start_cluster NAME INSTANCES: formats a shared file and starts the instances; sets PORTS.
start_cluster() {
  local name="$1" count="$2" cdir="$dir/$1" cluster=$((0xB000 + RANDOM % 4096))
  mkdir -p "$cdir"
  "$bin/fusionctl" create --path "$cdir/cluster.fusion" --cluster-id "$cluster" \
    --instances "$count" --size 1GiB --redo-size 64MiB >/dev/null
  local members="" id
  PORTS=()
  for id in $(seq 0 $((count - 1))); do
    PORTS+=("$(free_port)")
    members+="  { id = $id, address = \"127.0.0.1:$(free_port)\", host = \"localhost\", resp = \"127.0.0.1:${PORTS[$id]}\" },"$'\n'
  done
  for id in $(seq 0 $((count - 1))); do
    cat >"$cdir/instance-$id.toml" <<TOML
instance = $id

[cluster]
id = $cluster
secret = "kv-bench-secret-of-at-least-32-bytes"
allow_inline_secret = true
instances = [
$members]

[storage]
path = "$cdir/cluster.fusion"

[cache]
frames = 32768

[serve]
resp = "127.0.0.1:${PORTS[$id]}"
maxclients = 1000
TOML
    "$bin/fusiond" --config "$cdir/instance-$id.toml" 2>"$cdir/instance-$id.log" &
    pids+=($!)
  done
  for id in $(seq 0 $((count - 1))); do wait_ping "${PORTS[$id]}"; done
}

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

# bench TEST PIPELINE PORT...: one redis-benchmark per port at once, 50 clients in all;
# prints "ops/s p50 p99" (ops/s summed, latencies the worst of the runs).
bench() {
  local test="$1" pipeline="$2"; shift 2
  for pid in "${pids[@]}"; do
    # A stopped server: nothing to measure (the row shows 0).
    kill -0 "$pid" 2>/dev/null || { echo "0 0 0"; return; }
  done
  local count=$# clients=$(( (50 + $# - 1) / $# )) outs=() runs=() port part=0
  for port in "$@"; do
    local out; out="$(mktemp "$dir/out.XXXX")"; outs+=("$out")
    # SET-own: each redis-benchmark writes keys of its own prefix (a partitioned workload:
    # each instance's clients change their own leaves).
    local what=(-t "$test")
    [ "$test" = set-own ] && what=(SET "own$part:key:__rand_int__" xxx)
    part=$((part + 1))
    # Bounded: a server that stops leaves redis-benchmark reconnecting for ever.
    timeout $((120 + n / 20)) redis-benchmark -p "$port" -P "$pipeline" \
      -c "$clients" -n $((n / count)) -r 100000 --csv "${what[@]}" >"$out" 2>/dev/null &
    runs+=($!)
  done
  wait "${runs[@]}" || true
  cat "${outs[@]}" | tr -d '"' | awk -F, '$1 != "test" && NF >= 7 {
      rps += $2; if ($5 + 0 > p50) p50 = $5 + 0; if ($7 + 0 > p99) p99 = $7 + 0 }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
  rm -f "${outs[@]}"
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || echo "a server stopped during $test -P $pipeline: see $dir/*/*.log" >&2
  done
}

declare -A result
tests=(set get incr mset set-own)

start_cluster one 1
for t in "${tests[@]}"; do for p in 1 16; do
  result[one,$t,$p]="$(bench "$t" "$p" "${PORTS[@]}")"; done; done
stop_all

start_cluster three 3
for t in "${tests[@]}"; do for p in 1 16; do
  result[three,$t,$p]="$(bench "$t" "$p" "${PORTS[@]}")"; done; done
stop_all

mkdir -p "$dir/redis"
rport="$(free_port)"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes \
  --appendfsync always --save "" --daemonize no >"$dir/redis/redis.log" 2>&1 &
pids+=($!)
wait_ping "$rport"
for t in "${tests[@]}"; do for p in 1 16; do
  result[redis,$t,$p]="$(bench "$t" "$p" "$rport")"; done; done
stop_all

echo
echo "redis-benchmark -c 50 -n $n -r 100000; ops/s, p50/p99 ms; ratio = fusiond ops/s / redis-server ops/s"
echo
echo "| test | -P | fusiond x1 ops/s | p50/p99 | fusiond x3 ops/s | p50/p99 | redis-server aof always ops/s | p50/p99 | x1/redis | x3/redis |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for t in "${tests[@]}"; do for p in 1 16; do
  read -r o1 o50 o99 <<<"${result[one,$t,$p]}"
  read -r t1 t50 t99 <<<"${result[three,$t,$p]}"
  read -r r1 r50 r99 <<<"${result[redis,$t,$p]}"
  awk -v t="${t^^}" -v p="$p" -v o1="$o1" -v o50="$o50" -v o99="$o99" -v t1="$t1" \
      -v t50="$t50" -v t99="$t99" -v r1="$r1" -v r50="$r50" -v r99="$r99" 'BEGIN {
    printf "| %s | %s | %d | %s/%s | %d | %s/%s | %d | %s/%s | %.2f | %.2f |\n",
      t, p, o1, o50, o99, t1, t50, t99, r1, r50, r99,
      (r1 > 0 ? o1 / r1 : 0), (r1 > 0 ? t1 / r1 : 0) }'
done; done
