# raft-kv — see README.md. `make cluster` and `make test` are the two commands
# a newcomer needs.

CARGO ?= cargo
PEERS := 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

.PHONY: build release test lint fmt clean cluster skeleton skeleton-check \
	test-election test-replication test-persistence test-snapshots test-kv test-membership test-e2e test-ui bench bench-etcd bench-compare bench-fastpath \
	bench-scaling

build:
	$(CARGO) build

## Every binary: raft-kv, and beside it raft-kv-bench and raft-kv-skeleton,
## which `raft-kv bench` and `raft-kv skeleton` run.
release:
	$(CARGO) build --release

## Every test: the deterministic cluster tests, storage tests and end-to-end tests.
test:
	$(CARGO) test --release -- --test-threads 2

## One milestone of the course at a time (docs/course.md), in the `course`
## profile (Cargo.toml): optimised dependencies, the crate itself incremental
## and unoptimised, so that a one-line change rebuilds in seconds.
## RAFT_SEEDS_SCALE=N runs N times the seeds.
COURSE := --profile course
test-election:
	$(CARGO) test $(COURSE) --test election
test-replication:
	$(CARGO) test $(COURSE) --test replication
test-persistence:
	$(CARGO) test $(COURSE) --test persistence --test storage --test storage_core
test-snapshots:
	$(CARGO) test $(COURSE) --test snapshots
test-kv:
	$(CARGO) test $(COURSE) --test kv
test-membership:
	$(CARGO) test $(COURSE) --test membership
## e2e_netns runs the cluster in network namespaces of its own: it needs
## root, and passes with a note ("skipping: …") without.
test-e2e:
	$(CARGO) test --release --test e2e_election --test e2e_kv --test e2e_durability --test e2e_config \
		--test e2e_hostile --test e2e_netns --test e2e_operate --test e2e_backup --test e2e_watch --test e2e_transfer --test e2e_membership

## The page of `make cluster` in headless Chromium (Debian's `chromium`; CHROMIUM=path
## names another): it kills the leader, writes, pauses and partitions from the page.
## Screenshots in target/ui-screenshots/. Without Chromium it says so and passes.
test-ui:
	$(CARGO) test --release --test ui -- --ignored

## The student copy: make skeleton DIR=../raft-kv-student [MILESTONE=election]
MILESTONE ?= election
skeleton: release
	@test -n "$(DIR)" || { echo "usage: make skeleton DIR=path [MILESTONE=election|replication|persistence|snapshots|kv|membership]"; exit 2; }
	./target/release/raft-kv skeleton --out "$(DIR)" --milestone $(MILESTONE)

## CI: for each milestone M, its skeleton builds without a warning, M's tests
## fail, and the earlier milestones' (with the walkthroughs, storage and
## paper-map tests) pass. The milestone solved last — where a student who
## finished it stands, later milestones' stand-ins in place — runs
## SEEDS_SCALE times its seeds, so that a milestone test that fails correct
## work on some seeds cannot come back; kv, the last, on the full solution.
## SKELETON_TARGET holds the copies and their build. (Cargo tells the copies
## apart by their files' times only: each is written just before its build,
## and nothing else is built there.)
SEEDS_SCALE ?= 10
SKELETON_TARGET ?= $(CURDIR)/target/skeleton
skeleton-check: release
	@set -e; tmp="$(SKELETON_TARGET)/copies"; rm -rf "$$tmp"; mkdir -p "$$tmp"; done=""; last=""; \
	bin="$(CURDIR)/target/release/raft-kv"; export CARGO_TARGET_DIR="$(SKELETON_TARGET)"; \
	run() { dir=$$1; shift; (cd "$$dir" && $(CARGO) test $(COURSE) -q "$$@"); }; \
	for m in election replication persistence snapshots kv membership; do \
	  "$$bin" skeleton --from "$(CURDIR)" --out "$$tmp/$$m" --milestone $$m > /dev/null; \
	  echo "== skeleton from milestone $$m: build"; \
	  (cd "$$tmp/$$m" && $(CARGO) build $(COURSE) --tests 2> "$$tmp/$$m-build.log") \
	    || { tail -40 "$$tmp/$$m-build.log"; exit 1; }; \
	  if grep -q '^warning' "$$tmp/$$m-build.log"; then \
	    echo "FAIL: the $$m skeleton builds with warnings:"; grep -A8 '^warning' "$$tmp/$$m-build.log" | head -60; exit 1; \
	  fi; \
	  echo "   builds without warnings"; \
	  if run "$$tmp/$$m" --test $$m > "$$tmp/$$m.log" 2>&1; then \
	    echo "FAIL: the $$m tests pass on a skeleton without the $$m solution"; exit 1; \
	  fi; \
	  echo "   $$m tests fail, as they must"; \
	  for e in $$done storage paper_map; do \
	    scale=1; [ "$$e" = "$$last" ] && scale=$(SEEDS_SCALE); \
	    RAFT_SEEDS_SCALE=$$scale run "$$tmp/$$m" --test $$e > "$$tmp/$$m-$$e.log" 2>&1 \
	      || { echo "FAIL: the $$e tests fail on the $$m skeleton (RAFT_SEEDS_SCALE=$$scale):"; tail -60 "$$tmp/$$m-$$e.log"; exit 1; }; \
	    echo "   $$e tests pass (seeds x$$scale)"; \
	  done; \
	  for e in $$done; do \
	    run "$$tmp/$$m" --test walkthrough $$e > "$$tmp/$$m-walk.log" 2>&1 \
	      || { echo "FAIL: the $$e walkthrough fails on the $$m skeleton:"; tail -40 "$$tmp/$$m-walk.log"; exit 1; }; \
	  done; \
	  done="$$done $$m"; last=$$m; \
	done; \
	echo "== the full solution: membership"; \
	unset CARGO_TARGET_DIR; \
	(RAFT_SEEDS_SCALE=$(SEEDS_SCALE) $(CARGO) test --release -q --test membership > "$$tmp/membership-full.log" 2>&1) \
	  || { echo "FAIL: the membership tests fail on the solution (RAFT_SEEDS_SCALE=$(SEEDS_SCALE)):"; tail -60 "$$tmp/membership-full.log"; exit 1; }; \
	echo "   membership tests pass (seeds x$(SEEDS_SCALE))"; \
	echo "skeleton-check: ok"

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
	rm -rf data

## Three nodes on 127.0.0.1:7001-7003, data under ./data/node{1,2,3}; Ctrl-C stops them all.
## The page at http://127.0.0.1:7000 shows them live, with buttons that break them.
## make cluster SLOW=1: slow motion (elections after 1.5-3 s, heartbeats every 0.5 s).
## make cluster TLS=1: the same cluster with mutual TLS (certificates in data/tls;
## clients then need --tls-dir data/tls; docs/api.md "TLS").
cluster: release
	./target/release/raft-kv cluster --peers "$(PEERS)" --data-dir data $(if $(filter 1,$(TLS)),--tls) \
		$(if $(filter 1,$(SLOW)),--slow)

## Benchmarks (docs/performance.md). Extra flags: make bench BENCH_FLAGS="--runs 3".
## TLS=1 (bench, bench-compare): raft-kv's nodes and the bench's clients use
## mutual TLS, with certificates made for the run; etcd stays plaintext.
TLS ?= 0
TLS_FLAG := $(if $(filter 1,$(TLS)),--tls)
## A fresh local 3-node cluster, every workload of `all` and handover (the
## write pause of a leadership transfer beside that of a leader kill), then stopped.
bench: release
	./target/release/raft-kv bench --local --workload all,handover $(TLS_FLAG) $(BENCH_FLAGS)

## The same workloads against a fresh local 3-member etcd (installed if missing).
bench-etcd:
	src/bin/raft-kv-bench/etcd.sh etcd $(BENCH_FLAGS)

## raft-kv, then etcd, in one run: one table with the ratios raft-kv / etcd.
bench-compare:
	src/bin/raft-kv-bench/etcd.sh compare $(TLS_FLAG) $(BENCH_FLAGS)

## Each part of the fast path turned off in turn, and what it costs (docs/performance.md).
bench-fastpath: release
	src/bin/raft-kv-bench/fastpath.sh $(BENCH_FLAGS)

## Scaling and memory: 3 and 5 nodes x 1-256 clients x 128 B / 16 KiB values, and
## grow to 100k and 1M keys; results and plots in docs/perf
## (src/bin/raft-kv-bench/scaling.sh).
## make bench-scaling QUICK=1 tries it with tiny counts; OUT_DIR=dir writes elsewhere.
QUICK ?= 0
OUT_DIR ?= docs/perf
bench-scaling: release
	QUICK=$(QUICK) OUT_DIR=$(OUT_DIR) src/bin/raft-kv-bench/scaling.sh $(BENCH_FLAGS)
