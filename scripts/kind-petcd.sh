#!/usr/bin/env bash
# A kind cluster on petcd, on your own machine (needs docker, kind and this repository's venv):
#   1. finds the address kind nodes reach the host at (the gateway of the docker network "kind",
#      which it creates the way kind would if it does not exist yet),
#   2. makes certificates for that address (scripts/kind-etcd-certs.sh),
#   3. starts petcd on https://0.0.0.0:2379 with client-certificate authentication,
#   4. runs `kind create cluster` with kind-config.yaml, the endpoint and hostPath rewritten.
# Stop with `kind delete cluster --name petcd` and kill the petcd pid it prints.
#
# usage: scripts/kind-petcd.sh [CERT_DIR] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

certs=${1:-/tmp/petcd-kind-certs}
data=${2:-/tmp/petcd-kind.etcd}
port=${PETCD_PORT:-2379}

docker network inspect kind >/dev/null 2>&1 || docker network create kind >/dev/null
gw=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | awk '{print $1}')
[ -n "$gw" ] || { echo "cannot find the gateway of the docker network kind" >&2; exit 1; }

scripts/kind-etcd-certs.sh "$certs" "$gw" >/dev/null
echo "certificates in $certs (server SANs include $gw)"

petcd=${PETCD:-.venv/bin/petcd}
nohup "$petcd" --data-dir="$data" \
  --listen-client-urls="https://0.0.0.0:$port" --advertise-client-urls="https://$gw:$port" \
  --cert-file="$certs/server.crt" --key-file="$certs/server.key" \
  --trusted-ca-file="$certs/ca.crt" --client-cert-auth >"$data.log" 2>&1 &
echo "petcd pid $! (log $data.log)"
for _ in $(seq 50); do
  if .peers/bin/etcdctl --endpoints="https://127.0.0.1:$port" --cacert="$certs/ca.crt" \
      --cert="$certs/client.crt" --key="$certs/client.key" endpoint health >/dev/null 2>&1; then break; fi
  sleep 0.2
done

config=$(mktemp --suffix=.yaml)
sed -e "s#https://172.18.0.1:2379#https://$gw:$port#" -e "s#/tmp/petcd-kind-certs#$certs#" kind-config.yaml >"$config"
kind create cluster --config "$config"
echo "kubectl --context kind-petcd get ns   # the cluster's state is in petcd ($data)"
