# raft-kv — see README.md. `make cluster` and `make test` are the two commands
# a newcomer needs.

CARGO ?= cargo
PEERS := 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

.PHONY: build release test lint fmt clean cluster

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
