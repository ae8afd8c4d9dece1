# petcd: `make run` starts a single member like `etcd` with no flags; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .peers/bin
export CGO_ENABLED := 0
# go.mod and go.sum are the Go lock: a build that would change them fails instead (`make go-lock` updates them)
export GOFLAGS := -mod=readonly -trimpath
export GOTOOLCHAIN := local

PY_SOURCES := $(shell find server controllers -name '*.py' -not -name '*_pb2*.py' 2>/dev/null)
PROTOS := $(shell find server/api -name '*.proto')
# server.embed._bidi (Rust, built by setuptools-rust in `pip install -e .`)
BIDI_SOURCES := native/bidi/Cargo.toml native/bidi/Cargo.lock $(shell find native/bidi/src -name '*.rs' 2>/dev/null)

.PHONY: all venv check-lock lock go-lock FORCE run test test-grpcio test-fast test-e2e test-envtest lint proto peers raft-testdata bench-peers debian-etcd bench bench-kube bench-snapshot bench-cluster bench-scale bench-ab cluster raft-cluster clean

all: venv peers

venv: $(VENV)/.installed

# requirements.lock pins every Python package (with hashes), the generators and pip itself. `make lock`
# adds what pyproject.toml gained; `make lock UPGRADE=1` moves every pin to the newest, on purpose.
# The venv is built from the lock alone, then checked against it.
$(VENV)/.installed: requirements.lock pyproject.toml server/embed/_relay.c $(BIDI_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/check_lock.py
	$(BIN)/python -m pip check -q
	touch $@

check-lock: venv
	$(BIN)/python scripts/check_lock.py

LOCKVENV := $(CURDIR)/.lockvenv
lock:
	test -x $(LOCKVENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKVENV) && $(LOCKVENV)/bin/pip install -q pip-tools==7.7.0; }
	$(LOCKVENV)/bin/pip-compile -q --extra dev --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) -o requirements.lock pyproject.toml lock.in

run: venv
	$(BIN)/petcd

proto: venv
	scripts/genproto.sh

# --- real peers, built from the Go module proxy into .peers/bin (git-ignored) ------------------
# Each tools/peers/<module> pins its versions in go.mod and go.sum (GOFLAGS=-mod=readonly above).
# A binary is rebuilt when its module's stamp changes: the hash of go.mod, go.sum and the module's
# own .go files (not their mtimes, so a fresh checkout or a git worktree reuses the same binaries).
#   NAME:MODULE:PACKAGE
GO_PEERS := \
  etcd:etcd:go.etcd.io/etcd/server/v3 \
  etcdctl:etcd:go.etcd.io/etcd/etcdctl/v3 \
  etcdutl:etcd:go.etcd.io/etcd/etcdutl/v3 \
  benchmark:etcd:go.etcd.io/etcd/v3/tools/benchmark \
  etcd-dumpdesc:etcd:./cmd/dumpdesc \
  bbolt:etcd:go.etcd.io/bbolt/cmd/bbolt \
  kube-apiserver:kube:k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager:kube:k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler:kube:k8s.io/kubernetes/cmd/kube-scheduler \
  kubectl:kube:k8s.io/kubernetes/cmd/kubectl \
  kwok:kwok:sigs.k8s.io/kwok/cmd/kwok \
  porcupine-check:porcupine:.
peer-field = $(word $(2),$(subst :, ,$(1)))
PEER_BINS := $(foreach p,$(GO_PEERS),$(PEERS)/$(call peer-field,$(p),1))
# kwok's own stage files (node Ready and heartbeat, pod Ready/Complete/Delete), as kwokctl uses them
KWOK_STAGES := $(PEERS)/../kwok/stages.yaml

# controller-runtime's envtest with petcd as its etcd: a Go test binary (tools/envtest)
ENVTEST := $(PEERS)/envtest.test

peers: $(PEER_BINS) $(KWOK_STAGES) $(ENVTEST) raft-testdata debian-etcd

# etcd-io/raft's interaction scenarios, at the version etcd builds with, into the module cache
# (go env GOMODCACHE): tests/unit/raft/test_reference_scenarios.py reads them there
raft-testdata:
	cd tools/peers/etcd && go mod download go.etcd.io/raft/v3

define go-peer
$(PEERS)/$(call peer-field,$(1),1): $(PEERS)/.$(call peer-field,$(1),2).stamp
	cd tools/peers/$(call peer-field,$(1),2) && go build -o $(CURDIR)/$$@ $(call peer-field,$(1),3)
endef
$(foreach p,$(GO_PEERS),$(eval $(call go-peer,$(p))))

go-stamp = @mkdir -p $(PEERS); s=$$(cd $(1) && cat go.mod go.sum $$(find . -name '*.go' | sort) | sha256sum); \
	  [ "$$(cat $@ 2>/dev/null)" = "$$s" ] || echo "$$s" > $@
$(PEERS)/.%.stamp: FORCE
	$(call go-stamp,tools/peers/$*)
$(PEERS)/.envtest-module.stamp: FORCE
	$(call go-stamp,tools/envtest)

$(ENVTEST): $(PEERS)/.envtest-module.stamp
	cd tools/envtest && go test -c -o $(CURDIR)/$@ .

$(KWOK_STAGES): $(PEERS)/.kwok.stamp
	mkdir -p $(@D)
	d=$$(cd tools/peers/kwok && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage; \
	for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
	         pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do \
	  echo "---"; cat "$$d/$$f.yaml"; done > $@.tmp && mv $@.tmp $@

# kine (k3s-io/kine) for bench/ only: cgo SQLite (mattn/go-sqlite3, as k3s builds it) with the sqlite
# tags of kine's own scripts/build
KINE_TAGS := sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,sqlite_dbstat,sqlite_column_metadata
$(PEERS)/kine: $(PEERS)/.kine.stamp
	cd tools/peers/kine && CGO_ENABLED=1 go build -tags $(KINE_TAGS) -o $(CURDIR)/$@ github.com/k3s-io/kine
bench-peers: peers $(PEERS)/kine

# `make go-lock` re-resolves the Go modules on purpose (the builds never change go.mod or go.sum)
go-lock:
	for m in tools/peers/*/ tools/envtest/; do (cd $$m && GOFLAGS=-mod=mod go mod tidy) || exit 1; done

# Debian's etcd 3.4 (etcd-server, etcd-client) as a second reference; installed at this version
# when we may (root).
DEBIAN_ETCD := 3.4.23-4+b4
debian-etcd:
	@if [ "$$(dpkg-query -W -f '$${Version}' etcd-server 2>/dev/null)" != "$(DEBIAN_ETCD)" ] || \
	    [ "$$(dpkg-query -W -f '$${Version}' etcd-client 2>/dev/null)" != "$(DEBIAN_ETCD)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    etcd-server=$(DEBIAN_ETCD) etcd-client=$(DEBIAN_ETCD) >/dev/null; \
	  else echo "note: Debian's etcd-server/etcd-client $(DEBIAN_ETCD) are not installed (need root); tests use etcd v3.6 from $(PEERS)"; fi; \
	fi

FORCE:

# --- checks ------------------------------------------------------------------------------------
lint: venv
	$(BIN)/ruff check server controllers petcd_harness tests bench scripts
	$(BIN)/ruff format --check server controllers petcd_harness tests bench scripts
	$(BIN)/mypy
	$(BIN)/mypy tests bench
	$(BIN)/lint-imports

test: venv peers
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-envtest

# envtest (controller-runtime) starting petcd as its etcd and a real kube-apiserver
test-envtest: venv peers
	TEST_ASSET_ETCD=$(CURDIR)/$(BIN)/petcd TEST_ASSET_KUBE_APISERVER=$(CURDIR)/$(PEERS)/kube-apiserver \
	  TEST_ASSET_KUBECTL=$(CURDIR)/$(PEERS)/kubectl $(ENVTEST) -test.v -test.count=1

# the integration tier with http:// client ports on grpcio instead of the native front (https:// ports are
# grpcio's on both): the suite's second transport
test-grpcio: venv peers
	ETCD_GRPC_SERVER=grpcio $(BIN)/pytest -q tests/integration

test-fast: venv raft-testdata
	$(BIN)/pytest -q tests/unit

test-e2e: venv peers
	$(BIN)/pytest -q tests/e2e

bench: venv bench-peers
	$(BIN)/python -m bench.run

bench-kube: venv bench-peers
	$(BIN)/python -m bench.kube_bench

bench-snapshot: venv peers
	$(BIN)/python -m bench.snapshot_bench

bench-scale: venv peers
	$(BIN)/python -m bench.scale_bench

# before/after: BENCH_AB="main HEAD" (git revisions; REV:FLAGS adds petcd flags), WORKLOADS as bench.ab takes
bench-ab: venv peers
	$(BIN)/python -m bench.ab $(if $(WORKLOADS),--workloads $(WORKLOADS)) $(or $(BENCH_AB),main HEAD)

bench-cluster: venv peers
	$(BIN)/python -m bench.cluster_bench

# --- Kubernetes on petcd ----------------------------------------------------------------------
# make cluster      petcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with 3
#                   fake nodes; .cluster/kubeconfig once ready; Ctrl-C stops everything
# make cluster CLUSTER_FLAGS="--members 3 --tls --nodes 5"  (or --datastore etcd to compare;
#                   `.venv/bin/petcd-harness up --help` lists the options)
CLUSTER_FLAGS ?=
cluster: venv peers
	$(BIN)/petcd-harness up $(CLUSTER_FLAGS)

# a 3-member petcd cluster on free ports (no Kubernetes)
raft-cluster: venv peers
	$(BIN)/python -m petcd_harness.raft_cluster up

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache build *.egg-info
