# petcd: `make run` starts a single member like `etcd` with no flags; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .peers/bin
export CGO_ENABLED := 0
export GOFLAGS := -mod=mod

PY_SOURCES := $(shell find server controllers -name '*.py' -not -name '*_pb2*.py' 2>/dev/null)
PROTOS := $(shell find server/api -name '*.proto')
ETCD_PEERS := $(PEERS)/etcd $(PEERS)/etcdctl $(PEERS)/etcdutl $(PEERS)/benchmark $(PEERS)/etcd-dumpdesc
KUBE_PEERS := $(PEERS)/kube-apiserver $(PEERS)/kubectl

.PHONY: all venv run test test-fast test-e2e lint proto peers debian-etcd bench bench-kube cluster raft-cluster clean

all: venv peers

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: venv
	$(BIN)/petcd

proto: venv
	scripts/genproto.sh

# --- real peers: etcd v3.6, etcdctl, etcdutl, etcd's benchmark tool, kube-apiserver, kubectl -------
PORCUPINE := $(PEERS)/porcupine-check
peers: $(ETCD_PEERS) $(KUBE_PEERS) $(PORCUPINE) debian-etcd

$(PORCUPINE): tools/peers/porcupine/go.mod tools/peers/porcupine/go.sum tools/peers/porcupine/main.go
	mkdir -p $(PEERS) && cd tools/peers/porcupine && go build -o $(CURDIR)/$@ .

$(PEERS)/etcd: tools/peers/etcd/go.mod
	mkdir -p $(PEERS) && cd tools/peers/etcd && go build -o $(CURDIR)/$@ go.etcd.io/etcd/server/v3
$(PEERS)/etcdctl: tools/peers/etcd/go.mod
	mkdir -p $(PEERS) && cd tools/peers/etcd && go build -o $(CURDIR)/$@ go.etcd.io/etcd/etcdctl/v3
$(PEERS)/etcdutl: tools/peers/etcd/go.mod
	mkdir -p $(PEERS) && cd tools/peers/etcd && go build -o $(CURDIR)/$@ go.etcd.io/etcd/etcdutl/v3
$(PEERS)/benchmark: tools/peers/etcd/go.mod
	mkdir -p $(PEERS) && cd tools/peers/etcd && go build -o $(CURDIR)/$@ go.etcd.io/etcd/v3/tools/benchmark
$(PEERS)/etcd-dumpdesc: tools/peers/etcd/go.mod tools/peers/etcd/cmd/dumpdesc/main.go
	mkdir -p $(PEERS) && cd tools/peers/etcd && go build -o $(CURDIR)/$@ ./cmd/dumpdesc
$(PEERS)/kube-apiserver: tools/peers/kube/go.mod
	mkdir -p $(PEERS) && cd tools/peers/kube && go build -o $(CURDIR)/$@ k8s.io/kubernetes/cmd/kube-apiserver
$(PEERS)/kubectl: tools/peers/kube/go.mod
	mkdir -p $(PEERS) && cd tools/peers/kube && go build -o $(CURDIR)/$@ k8s.io/kubernetes/cmd/kubectl

# Debian's etcd 3.4 (etcd-server, etcd-client) as a second reference; installed when we may.
debian-etcd:
	@if [ ! -x /usr/bin/etcd ] || [ ! -x /usr/bin/etcdctl ]; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client >/dev/null; \
	  else echo "note: Debian's etcd-server/etcd-client are not installed (need root); tests use etcd v3.6 from $(PEERS)"; fi; \
	fi

# --- checks ------------------------------------------------------------------------------------
lint: venv
	$(BIN)/ruff check server controllers tests bench
	$(BIN)/ruff format --check server controllers tests bench
	$(BIN)/mypy

test: venv peers
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q tests/unit

test-e2e: venv peers
	$(BIN)/pytest -q tests/e2e

bench: venv peers
	$(BIN)/python -m bench.run

bench-kube: venv peers
	$(BIN)/python -m bench.kube_bench

# --- Kubernetes on petcd ----------------------------------------------------------------------
# make cluster                                    petcd + real kube-apiserver; Ctrl-C stops both
# make cluster CLUSTER_FLAGS="--members 3 --tls"  (or --datastore etcd to compare)
CLUSTER_FLAGS ?=
cluster: venv peers
	$(BIN)/python -m tests.harness.kube up $(CLUSTER_FLAGS)

# a 3-member petcd cluster on free ports (no Kubernetes)
raft-cluster: venv peers
	$(BIN)/python -m tests.harness.cluster up

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
