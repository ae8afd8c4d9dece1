#!/usr/bin/env bash
# Certificates for petcd as kind's external etcd (mutual TLS), made with openssl:
#   ca.crt ca.key          a throwaway CA
#   server.crt server.key  petcd's serving certificate: SANs 127.0.0.1, ::1, localhost and every
#                          ADDRESS given (the address kind nodes reach petcd at)
#   client.crt client.key  kube-apiserver's client certificate (CN kube-apiserver-etcd-client)
#
# usage: scripts/kind-etcd-certs.sh [OUTDIR] [ADDRESS ...]
#   OUTDIR   default /tmp/petcd-kind-certs (the hostPath in kind-config.yaml)
#   ADDRESS  default: the gateway of the docker network "kind" if it exists, else 172.18.0.1
set -euo pipefail

out=${1:-/tmp/petcd-kind-certs}
shift || true
addrs=("$@")
if [ ${#addrs[@]} -eq 0 ]; then
  gw=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null | awk '{print $1}' || true)
  addrs=("${gw:-172.18.0.1}")
fi
days=${CERT_DAYS:-365}

mkdir -p "$out"
cd "$out"
umask 077

san="IP:127.0.0.1,IP:::1,DNS:localhost"
for a in "${addrs[@]}"; do
  if [[ $a =~ ^[0-9.]+$ || $a == *:* ]]; then entry="IP:$a"; else entry="DNS:$a"; fi
  case ",$san," in *",$entry,"*) ;; *) san="$san,$entry" ;; esac
done

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=petcd-kind-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

issue() { # name cn extendedKeyUsage [subjectAltName]
  local name=$1 cn=$2 eku=$3 alt=${4:-}
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    if [ -n "$alt" ]; then echo "subjectAltName=$alt"; fi
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue server petcd-server serverAuth,clientAuth "$san"
issue client kube-apiserver-etcd-client clientAuth
rm -f ca.srl
chmod 0644 ca.crt server.crt client.crt

openssl verify -CAfile ca.crt server.crt client.crt >/dev/null
dir=$(pwd)
first=${addrs[0]}
case $first in *:*) host="[$first]" ;; *) host=$first ;; esac
cat <<MSG
wrote $dir/{ca.crt,ca.key,server.crt,server.key,client.crt,client.key}
server certificate SANs: $san

start petcd with them (it must listen on an address the kind node reaches):

  petcd --data-dir=/tmp/petcd-kind.etcd \\
    --listen-client-urls=https://0.0.0.0:2379 --advertise-client-urls=https://$host:2379 \\
    --cert-file=$dir/server.crt --key-file=$dir/server.key \\
    --trusted-ca-file=$dir/ca.crt --client-cert-auth

check it:

  etcdctl --endpoints=https://$host:2379 --cacert=$dir/ca.crt \\
    --cert=$dir/client.crt --key=$dir/client.key endpoint health

then: kind create cluster --config kind-config.yaml   (endpoint https://$host:2379, hostPath $dir)
MSG
