#!/usr/bin/env bash
# The raft-kv bench against etcd, with the same client settings
# (docs/performance.md):
#
#   src/bin/raft-kv-bench/etcd.sh etcd    [raft-kv bench flags]   # make bench-etcd
#   src/bin/raft-kv-bench/etcd.sh compare [raft-kv bench flags]   # make bench-compare
#
# etcd:    every workload against a fresh 3-member etcd cluster on loopback.
# compare: raft-kv and then etcd, each on a fresh 3-member cluster, and one
#          table with the ratios raft-kv / etcd.
#
# Installs Debian's etcd (etcd-server, etcd-client) if `etcd` is missing.
# The members are started by `raft-kv bench --local`, on free loopback ports
# (never 7001-7003) with their data in a temporary directory and etcd's
# defaults otherwise; the bench owns their pids, so its failover workload can
# kill the leader, and it kills every member and removes the directory at the
# end (on Ctrl-C too).
set -euo pipefail
cd "$(dirname "$0")/../../.."

mode=${1:-}
case "$mode" in
  etcd) target=etcd ;;
  compare) target=both ;;
  *)
    echo "usage: $0 etcd|compare [raft-kv bench flags...]" >&2
    exit 2
    ;;
esac
shift

if ! command -v etcd >/dev/null 2>&1; then
  echo "etcd is not installed; installing Debian's etcd-server and etcd-client" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y etcd-server etcd-client
fi
# Debian's package may start a system etcd; it would take CPU from the run.
if pgrep -x etcd >/dev/null 2>&1; then
  echo "warning: an etcd is already running on this machine (systemctl stop etcd?);" \
    "it takes CPU from the benchmark" >&2
fi

cargo build --release
exec ./target/release/raft-kv bench --local --target "$target" --etcd "$(command -v etcd)" "$@"
