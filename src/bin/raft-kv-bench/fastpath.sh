#!/usr/bin/env bash
# The fast path, one part at a time (docs/performance.md, `make bench-fastpath`):
# the same workloads on a fresh local raft-kv cluster with everything on, then
# with each part that can still be switched from outside the core turned off
# (`--fast-path-off PART`, `--poll-us 0`), and one table of medians with each
# number relative to "everything on". (The parallel leader write and shared
# read rounds are the core's one path now; docs/performance.md keeps what
# they were measured to be worth.)
#
#   src/bin/raft-kv-bench/fastpath.sh [raft-kv bench flags]     # e.g. --runs 5
#
# RUNS (default 3) sets --runs; the JSON lines go to $OUT (default a
# temporary file) for a second look.
set -euo pipefail
cd "$(dirname "$0")/../../.."

bin=./target/release/raft-kv
[ -x "$bin" ] || { echo "$bin missing: run 'make release' first" >&2; exit 2; }
runs=${RUNS:-3}
out=${OUT:-$(mktemp -t raft-kv-fastpath.XXXXXX)}
: > "$out"

# name | flags for the nodes
configs=(
  "everything on|"
  "no group commit|--fast-path-off group-commit"
  "no batching|--fast-path-off batching"
  "no batching, no group commit|--fast-path-off batching,group-commit"
  "no pipelining|--fast-path-off pipelining"
  "no polling before sleep|--poll-us 0"
)
for config in "${configs[@]}"; do
  name=${config%%|*}
  flags=${config#*|}
  echo "== $name ($runs runs)" >&2
  # shellcheck disable=SC2086 # flags are words
  "$bin" bench --local --runs "$runs" --json \
    --workload write-latency,write-throughput,read-throughput $flags "$@" |
    sed "s/^{/{\"config\":\"$name\",/" >> "$out"
done

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
configs = list(dict.fromkeys(r["config"] for r in rows))
by = {(r["config"], r["workload"]): r for r in rows}
columns = [
    ("write-latency", "p50_ms", "1-client write p50 (ms)"),
    ("write-latency", "p99_ms", "1-client write p99 (ms)"),
    ("write-throughput", "ops_per_sec", "64-client writes/s"),
    ("read-throughput", "ops_per_sec", "64-client reads/s"),
]
print("| | " + " | ".join(c[2] for c in columns) + " |")
print("|---|" + "---:|" * len(columns))
base = configs[0]
for config in configs:
    cells = []
    for workload, field, _ in columns:
        r = by.get((config, workload))
        b = by.get((base, workload))
        if r is None:
            cells.append("–")
            continue
        value = r[field]
        text = f"{value:.2f}" if field.endswith("_ms") else f"{value:.0f}"
        if config != base and b and b[field]:
            text += f" ({value / b[field]:.2f}×)"
        cells.append(text)
    print(f"| {config} | " + " | ".join(cells) + " |")
PY
echo "(JSON lines in $out)" >&2
