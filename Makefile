# raft-kv — see README.md. `make cluster` and `make test` are the two commands
# a newcomer needs.

CARGO ?= cargo
PEERS := 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

.PHONY: build release test lint fmt clean cluster bench bench-etcd bench-compare

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## Every test: the deterministic cluster tests, storage tests and end-to-end tests.
test:
	$(CARGO) test --release -- --test-threads 2

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
	rm -rf data

## Three nodes on 127.0.0.1:7001-7003, data under ./data/node{1,2,3}; Ctrl-C stops them all.
cluster: release
	./target/release/raft-kv cluster --peers "$(PEERS)" --data-dir data

## Benchmarks (docs/performance.md). Extra flags: make bench BENCH_FLAGS="--runs 3".
## A fresh local 3-node cluster, every workload, then stopped.
bench: release
	./target/release/raft-kv bench --local --workload all $(BENCH_FLAGS)

## The same workloads against a fresh local 3-member etcd (installed if missing).
bench-etcd:
	src/bench/etcd.sh etcd $(BENCH_FLAGS)

## raft-kv, then etcd, in one run: one table with the ratios raft-kv / etcd.
bench-compare:
	src/bench/etcd.sh compare $(BENCH_FLAGS)
