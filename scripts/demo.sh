#!/usr/bin/env bash
# Tessera's main job on one machine: set up, start a local HA cluster (3 etcd members,
# 3 coordinators, 2 agents on loopback ports), show it, kill the leader and watch the cluster
# carry on. The cluster keeps running afterwards; stop it with `scripts/cluster.sh stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TESSERA_COORDINATOR=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
tessera() { node dist/coordinator/cli/main.js "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting a local HA cluster"
TESSERA_LOG_LEVEL=${TESSERA_LOG_LEVEL:-info} bash scripts/cluster.sh start
for _ in $(seq 1 100); do
  n=$(tessera --json nodes 2>/dev/null | grep -c '"NODE_STATE_READY"' || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 0.2
done

step "tessera status"
tessera status
step "tessera nodes"
tessera nodes

leader=$(tessera --json status | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).leader.id))')
step "kill -9 the leader ($leader) and time the failover"
kill -9 "$(cat .tessera/cluster/pids/$leader)"
start=$(date +%s%N)
for _ in $(seq 1 200); do
  now=$(tessera --json status 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{console.log(JSON.parse(s).leader.id)}catch{}})' || true)
  if [ -n "$now" ] && [ "$now" != "$leader" ]; then break; fi
  sleep 0.05
done
echo "new leader: $now after $(( ($(date +%s%N) - start) / 1000000 )) ms"
sleep 1
tessera nodes

step "bring $leader back (it rejoins as a follower)"
bash scripts/cluster.sh start >/dev/null
sleep 2
tessera status | head -8

step "recent events"
tessera events -n 12

cat <<MSG

The cluster is still running. Try:
  node dist/coordinator/cli/main.js -c $TESSERA_COORDINATOR nodes
  node dist/coordinator/cli/main.js -c $TESSERA_COORDINATOR events --follow
Stop it with: scripts/cluster.sh stop
MSG
