#!/usr/bin/env bash
# Scaling and memory (docs/performance.md, "Scaling and memory: how to run"):
# `raft-kv bench --local --json` over
#
#   write-throughput: nodes {3,5} x clients {1,8,64,256} x values {128 B, 16 KiB}
#   read-throughput:  nodes {3,5} x clients {1,8,64,256}, 128 B values
#   grow:             3 nodes, 64 clients, 128 B values, to 100k and to 1M keys
#                     (the default snapshot threshold, 10000 entries)
#
# each point on a fresh cluster, every JSON object appended to
# $OUT_DIR/scaling.jsonl, then src/bin/raft-kv-bench/plot.py draws scaling.svg and
# growth.svg and writes scaling.md beside it.
#
#   make bench-scaling                      # builds the release binary first
#   src/bin/raft-kv-bench/scaling.sh [--out DIR] [raft-kv bench flags...]
#
# It builds nothing: it runs ./target/release/raft-kv (or $RAFT_KV) as it is.
# Environment:
#   OUT_DIR=DIR   where to write (default docs/perf); --out DIR does the same
#   QUICK=1       tiny counts and grow to 20k / 50k keys: about a minute, to try it
#   RUNS=N        each point N times on fresh clusters, medians (default 1)
#   SECONDS_PER_POINT=S   aim of each throughput point (default 7)
#   NODES="3 5" CLIENTS="1 8 64 256" VALUES="128 16384" GROW_KEYS="100000 1000000"
#   PARTS="write read grow"   which parts to run
#   APPEND=1      add to an existing scaling.jsonl (default: it is moved to
#                 scaling.jsonl.prev and a new one started)
#   NO_PLOT=1     do not run plot.py at the end
# Extra arguments go to every bench run (e.g. --poll-us 0).
#
# A failed point is reported at the end (exit code 1); the others still run.
set -uo pipefail
cd "$(dirname "$0")/../../.."

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

out_dir=${OUT_DIR:-docs/perf}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out_dir=${1#--out=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done

bin=${RAFT_KV:-./target/release/raft-kv}
if [ ! -x "$bin" ]; then
  echo "scaling.sh: no $bin: build it first (make release), or run make bench-scaling" >&2
  exit 2
fi
quick=${QUICK:-0}
runs=${RUNS:-1}
per_point=${SECONDS_PER_POINT:-7}
nodes_list=${NODES:-3 5}
clients_list=${CLIENTS:-1 8 64 256}
values_list=${VALUES:-128 16384}
parts=${PARTS:-write read grow}
if [ "$quick" = 1 ]; then
  grow_keys=${GROW_KEYS:-20000 50000}
else
  grow_keys=${GROW_KEYS:-100000 1000000}
fi

# Expected ops/s of one point on a 3-node cluster on the project's 2-core
# machine (docs/performance.md), so that each point takes about
# $per_point seconds; 5 nodes are slower, and get proportionally fewer.
rate() { # workload clients value_size
  case "$1:$3:$2" in
    write:128:1) echo 1400 ;;
    write:128:8) echo 5000 ;;
    write:128:64) echo 19000 ;;
    write:128:*) echo 30000 ;;
    write:*:1) echo 750 ;;
    write:*:8) echo 2500 ;;
    write:*:64) echo 4500 ;;
    write:*:*) echo 3500 ;;
    read:*:1) echo 2800 ;;
    read:*:8) echo 10000 ;;
    read:*:64) echo 24000 ;;
    read:*:*) echo 30000 ;;
  esac
}

count() { # workload clients value_size nodes
  local n
  n=$(( $(rate "$1" "$2" "$3") * per_point * 3 / $4 ))
  if [ "$quick" = 1 ]; then n=$(( n / 50 )); fi
  if [ "$n" -lt 200 ]; then n=200; fi
  echo "$n"
}

mkdir -p "$out_dir" || exit 2
jsonl=$out_dir/scaling.jsonl
if [ "${APPEND:-0}" != 1 ] && [ -s "$jsonl" ]; then
  mv "$jsonl" "$jsonl.prev"
  echo "scaling.sh: the previous results are now $jsonl.prev" >&2
fi

# One line describing the run, for the report's header.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+changes"; fi
printf '{"workload":"meta","commit":"%s","date":"%s","cores":%s,"loadavg":"%s","quick":%s,"runs":%s,"extra_flags":"%s"}\n' \
  "$commit" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$([ "$quick" = 1 ] && echo true || echo false)" "$runs" "${extra[*]:-}" >>"$jsonl"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
trap 'echo "scaling.sh: interrupted" >&2; exit 130' INT TERM
failed=()
points=0

run() { # label, then bench flags
  local label=$1
  shift
  points=$((points + 1))
  echo "== $label" >&2
  if "$bin" bench --local --json --runs "$runs" "$@" "${extra[@]}" >"$tmp"; then
    cat "$tmp" >>"$jsonl"
  else
    echo "scaling.sh: FAILED: $label" >&2
    failed+=("$label")
  fi
}

for part in $parts; do
  case "$part" in
    write)
      for nodes in $nodes_list; do
        for value in $values_list; do
          for clients in $clients_list; do
            n=$(count write "$clients" "$value" "$nodes")
            run "write-throughput: $nodes nodes, $clients clients, $value B values, $n writes" \
              --workload write-throughput --nodes "$nodes" --clients "$clients" \
              --value-size "$value" --count "$n"
          done
        done
      done
      ;;
    read)
      for nodes in $nodes_list; do
        for clients in $clients_list; do
          n=$(count read "$clients" 128 "$nodes")
          run "read-throughput: $nodes nodes, $clients clients, 128 B values, $n reads" \
            --workload read-throughput --nodes "$nodes" --clients "$clients" \
            --value-size 128 --count "$n"
        done
      done
      ;;
    grow)
      for keys in $grow_keys; do
        run "grow: 3 nodes, 64 clients, 128 B values, to $keys keys" \
          --workload grow --nodes 3 --clients 64 --value-size 128 --keyspace "$keys"
      done
      ;;
    *)
      echo "scaling.sh: unknown part '$part' in PARTS (write, read, grow)" >&2
      exit 2
      ;;
  esac
done

echo "scaling.sh: $points points in ${SECONDS} s, results in $jsonl" >&2
status=0
if [ "${#failed[@]}" -gt 0 ]; then
  echo "scaling.sh: ${#failed[@]} point(s) failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  status=1
fi
if [ "${NO_PLOT:-0}" != 1 ]; then
  python3 src/bin/raft-kv-bench/plot.py "$jsonl" --out "$out_dir" || status=1
fi
exit "$status"
