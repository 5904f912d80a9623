# Shared by the bench/run-*.sh scripts: install a floor tool from the distribution when it
# is missing, and build one bench binary in release mode. Sourced, never run.

# ensure_tool COMMAND PACKAGE WHAT: installs PACKAGE with apt-get if COMMAND is missing.
ensure_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ($3) ..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$2" >/dev/null
}

# wants_rdma ARGS...: whether the arguments ask for an rdma row (--transports ...rdma...,
# --transport rdma).
wants_rdma() {
  local previous=""
  for arg in "$@"; do
    case "$previous" in
      --transports | --transport) [[ ",$arg," == *",rdma,"* ]] && return 0 ;;
    esac
    previous="$arg"
  done
  return 1
}

# build_bench BIN: builds bench's BIN in release mode and prints its path.
build_bench() {
  cargo build --release -q -p bench --bin "$1"
  echo "${CARGO_TARGET_DIR:-target}/release/$1"
}
