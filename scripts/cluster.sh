#!/usr/bin/env bash
# A local HA cluster on loopback ports, the same layout as production:
#   3 etcd members       127.0.0.1:23791-23793 (peers 23801-23803)
#   3 coordinators       127.0.0.1:7401-7403 (Prometheus /metrics on 127.0.0.1:9401-9403)
#   N agents (AGENTS=2)  state under $DIR/agent-N
# Logs and pids live under one folder ($TESSERA_CLUSTER_DIR, default .tessera/cluster).
# It runs plaintext (--insecure-dev, loopback only; the logs warn), or with TESSERA_SECURE=1 with
# mutual TLS (a local CA under $DIR/certs) and an operator token ($DIR/token).
#   scripts/cluster.sh start|stop|status|restart|clean
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${TESSERA_CLUSTER_DIR:-$PWD/.tessera/cluster}
AGENTS=${AGENTS:-2}
LOG_LEVEL=${TESSERA_LOG_LEVEL:-info}
ETCD_ENDPOINTS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
COORDINATORS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
mkdir -p "$DIR/logs" "$DIR/pids"

running() { [ -f "$DIR/pids/$1" ] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

launch() { # name cmd...
  local name=$1; shift
  if running "$name"; then echo "  $name already running (pid $(cat "$DIR/pids/$name"))"; return; fi
  nohup "$@" >>"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
  echo "  $name started (pid $!), log $DIR/logs/$name.log"
}

secure_flags() {
  # TESSERA_SECURE=1: certificates from a local CA and an operator token, as on a real fleet.
  local certs=$DIR/certs nodes=""
  for i in $(seq 1 "$AGENTS"); do nodes+="node-$i,"; done
  [ -f "$certs/ca.pem" ] || bash scripts/make-certs.sh "$certs" --nodes "${nodes%,}" >/dev/null
  if [ ! -f "$DIR/token" ]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/token"
    printf 'tokens:\n  - { name: local-operator, role: operator, token: %s }\n' "$(cat "$DIR/token")" > "$DIR/tokens.yaml"
  fi
  COORDINATOR_TLS="--tls-ca $certs/ca.pem --tls-cert $certs/coordinator.pem --tls-key $certs/coordinator-key.pem --tokens-file $DIR/tokens.yaml"
}

start() {
  [ -f dist/coordinator/main.js ] || { echo "not built: run scripts/setup.sh first" >&2; exit 1; }
  COORDINATOR_TLS="--insecure-dev"
  [ "${TESSERA_SECURE:-0}" = 1 ] && secure_flags
  echo "etcd members:"
  local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for i in 1 2 3; do
    launch "etcd-$i" etcd --name "e$i" --data-dir "$DIR/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --logger zap
  done
  for _ in $(seq 1 100); do ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  echo "coordinators:"
  for i in 1 2 3; do
    launch "coordinator-$i" node dist/coordinator/main.js --id "coordinator-$i" --listen "127.0.0.1:740$i" \
      --etcd-endpoints "$ETCD_ENDPOINTS" --data-dir "$DIR/coordinator-$i" --log-level "$LOG_LEVEL" \
      --metrics-listen "127.0.0.1:940$i" $COORDINATOR_TLS ${COORDINATOR_FLAGS:-}
  done
  echo "agents:"
  for i in $(seq 1 "$AGENTS"); do
    local agent_tls="--insecure-dev"
    [ "${TESSERA_SECURE:-0}" = 1 ] && agent_tls="--tls-ca $DIR/certs/ca.pem --tls-cert $DIR/certs/agent-node-$i.pem --tls-key $DIR/certs/agent-node-$i-key.pem"
    launch "agent-$i" node dist/agent/main.js --coordinators "$COORDINATORS" --state-dir "$DIR/agent-$i" \
      --node-id "node-$i" --labels "rack=r$(( (i - 1) % 2 + 1 ))" --log-level "$LOG_LEVEL" \
      --port-range "$(( 20000 + i * 1000 ))-$(( 20999 + i * 1000 ))" --task-listen "127.0.0.1:748$i" --relay-listen "127.0.0.1:749$i" $agent_tls ${AGENT_FLAGS:-}
  done
  echo
  if [ "${TESSERA_SECURE:-0}" = 1 ]; then
    echo "cluster up with mTLS and tokens. try:"
    echo "  export TESSERA_CA=$DIR/certs/ca.pem TESSERA_CERT=$DIR/certs/admin.pem TESSERA_KEY=$DIR/certs/admin-key.pem TESSERA_TOKEN=\$(cat $DIR/token)"
    echo "  node dist/coordinator/cli/main.js -c $COORDINATORS status"
  else
    echo "cluster up (plaintext on loopback: --insecure-dev). try:  node dist/coordinator/cli/main.js -c $COORDINATORS status"
  fi
}

stop() {
  for f in "$DIR"/pids/agent-* "$DIR"/pids/coordinator-* "$DIR"/pids/etcd-*; do
    [ -f "$f" ] || continue
    local name; name=$(basename "$f")
    if running "$name"; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  for f in "$DIR"/pids/*; do
    [ -f "$f" ] || continue
    for _ in $(seq 1 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "cluster stopped (data and logs kept in $DIR). Containers keep running without their agents;"
  echo "'$0 clean' removes them and the data."
}

clean() {
  stop
  local ids; ids=$(docker ps -aq --filter label=tessera.managed=true 2>/dev/null | while read -r id; do
    node=$(docker inspect -f '{{index .Config.Labels "tessera.node"}}' "$id"); case "$node" in node-[0-9]*) echo "$id";; esac; done)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null && echo "removed $(echo "$ids" | wc -w) container(s)"
  rm -rf "$DIR"
  echo "removed $DIR"
}

status() {
  for f in "$DIR"/pids/*; do
    [ -f "$f" ] || continue
    local name; name=$(basename "$f")
    if running "$name"; then echo "  $name  up    pid $(cat "$f")"; else echo "  $name  DOWN"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  clean) clean ;;
  *) echo "usage: $0 start|stop|status|restart|clean" >&2; exit 2 ;;
esac
