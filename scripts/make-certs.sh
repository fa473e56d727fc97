#!/usr/bin/env bash
# Makes a local CA and the certificates a Tessera cluster uses (openssl), into DIR:
#   ca.pem / ca-key.pem                  the cluster CA (keep ca-key.pem offline on a real fleet)
#   coordinator.pem / -key.pem           OU=coordinator; server and client (forwarding, etcd)
#   agent-<node>.pem / -key.pem          OU=agent, CN=<node id>: an agent's identity is its cert; server (step relay) and client
#   admin.pem / -key.pem                 OU=admin: for grpcurl and the tessera CLI
#   etcd.pem / -key.pem                  etcd's server and peer certificate
#   scripts/make-certs.sh DIR [--nodes node-1,node-2] [--hosts 127.0.0.1,localhost,10.0.0.11] [--days 825]
# A CA already in DIR is kept, so running it again renews the certificates under the same CA
# (then restart each process: see the README, Security).
set -euo pipefail
DIR=${1:?usage: $0 DIR [--nodes a,b] [--hosts h1,h2] [--days N]}; shift
NODES=node-1,node-2 ; HOSTS=127.0.0.1,localhost ; DAYS=825
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --hosts) HOSTS=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;   # how long the certificates (not the CA) are valid
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"
cd "$DIR"
umask 077
san() {
  local out="" h
  for h in ${HOSTS//,/ }; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then out+="IP:$h,"; else out+="DNS:$h,"; fi
  done
  echo "${out%,}"
}
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/O=tessera/CN=tessera-ca" -keyout ca-key.pem -out ca.pem 2>/dev/null
fi
issue() { # name subject extended-key-usage [san]
  local name=$1 subj=$2 eku=$3 alt=${4:-}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$alt" ] && echo "subjectAltName=$alt"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$DAYS" -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue coordinator "/O=tessera/OU=coordinator/CN=coordinator" serverAuth,clientAuth "$(san)"
issue etcd "/O=tessera/OU=etcd/CN=etcd" serverAuth,clientAuth "$(san)"
issue admin "/O=tessera/OU=admin/CN=admin" clientAuth
# Agents serve the step relay too (job steps flow agent to agent), so their certificates are
# servers as well as clients.
for n in ${NODES//,/ }; do issue "agent-$n" "/O=tessera/OU=agent/CN=$n" serverAuth,clientAuth "DNS:$n,$(san)"; done
chmod 0644 ./*.pem
chmod 0600 ./*-key.pem
echo "certificates in $DIR: ca, coordinator, etcd, admin, agent-{${NODES}}"
