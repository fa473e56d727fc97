#!/usr/bin/env bash
# Tessera's main job on one machine: set up, start a local HA cluster (3 etcd members,
# 3 coordinators, 2 agents on loopback ports), deploy the example app (3 web instances in
# Docker containers, each answering on a loopback port), roll out a new version, deploy the
# example pipeline's components and run jobs through them, kill the leader and watch the
# cluster, the app and the jobs carry on. The cluster keeps running afterwards:
# `scripts/cluster.sh stop` stops it, `scripts/cluster.sh clean` also removes its containers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib/docker.sh
ensure_dockerd
bash scripts/build-images.sh
export TESSERA_COORDINATOR=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
tessera() { node dist/coordinator/cli/main.js "$@"; }
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const v=JSON.parse(s);console.log(eval(process.argv[1]))}catch{}})' "$1"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_healthy() { # app count
  for _ in $(seq 1 300); do
    n=$(tessera --json ps "$1" 2>/dev/null | json 'v.filter(i=>i.desired==="run"&&i.health==="healthy").length' || true)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 0.2
  done
  echo "timed out waiting for $2 healthy instances of $1" >&2; return 1
}
curl_all() {
  for p in $(tessera --json ps hello | json 'v.filter(i=>i.desired==="run").map(i=>i.ports.http).join(" ")'); do
    printf '  127.0.0.1:%s -> %s\n' "$p" "$(wget -qO- "http://127.0.0.1:$p/" 2>/dev/null || busybox wget -qO- "http://127.0.0.1:$p/")"
  done
}

step "starting a local HA cluster"
TESSERA_LOG_LEVEL=${TESSERA_LOG_LEVEL:-info} bash scripts/cluster.sh start
for _ in $(seq 1 100); do
  n=$(tessera --json nodes 2>/dev/null | grep -c '"NODE_STATE_READY"' || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 0.2
done
tessera status
tessera nodes

step "deploying examples/hello/app.yaml"
cat examples/hello/app.yaml | grep -v '^#'
tessera apply -f examples/hello/app.yaml
wait_healthy hello 3
tessera ps hello
step "each instance answers on its own loopback port"
curl_all

step "rolling out version 2 with a canary: one new instance beside the three old ones, nothing replaced until it is promoted"
sed -e 's/hello from/hi again from/' -e 's/^      autoRevert: true$/      autoRevert: true\n      canary: 1/' examples/hello/app.yaml | tessera apply -f - --wait 60
curl_all
step "promoting version 2 (as nomad deployment promote): the old instances replaced one at a time, each new one healthy before the next"
tessera app promote hello
for _ in $(seq 1 300); do
  s=$(tessera --json app get hello | json 'v.stableVersion')
  [ "${s:-0}" -ge 2 ] && break
  sleep 0.2
done
tessera apps
curl_all
step "an instance's output, as kubectl logs shows a pod's (httpd -v: a line per request, health checks included)"
first=$(tessera --json ps hello | json 'v.filter(i=>i.desired==="run")[0].id')
tessera logs "$first" --tail 3 2>&1
step "a command in that instance, as kubectl exec runs one in a pod (recorded as an instance.exec event)"
tessera exec "$first" -- sh -c 'echo "$TESSERA_INSTANCE_ID serves $(cat /tmp/www/index.html)"' 2>&1

step "components and jobs: examples/pipeline (split -> count -> format; 2 splitters, 2 counters, 1 formatter)"
tessera apply -f examples/pipeline/app.yaml
tessera pipeline apply -f examples/pipeline/pipeline.yaml
for _ in $(seq 1 300); do
  n=$(tessera --json component list 2>/dev/null | json 'v.length' || true)
  [ "${n:-0}" -ge 5 ] && break
  sleep 0.2
done
tessera component list
step "a job: the README's words through the pipeline, with the path it took (EXPLAIN)"
tessera job submit words --data @README.md -H top=6
tessera job submit words --data "the quick brown fox jumps over the lazy dog" -H top=3 >/dev/null
tessera job list -n 5

step "the flagship: a database split into components (examples/db): catalog, 2 storage shards, parsers, planners, row executors"
tessera apply -f examples/db/app.yaml
tessera pipeline apply -f examples/db/pipeline.yaml
for _ in $(seq 1 300); do
  n=$(tessera --json component list storage 2>/dev/null | json 'v.length' || true)
  e=$(tessera --json component list executor-row 2>/dev/null | json 'v.length' || true)
  [ "${n:-0}" -ge 2 ] && [ "${e:-0}" -ge 2 ] && break
  sleep 0.2
done
# Once both shards have registered with the catalog, start from an empty table (a second demo run
# finds the first one's data on the shards' volumes).
for _ in $(seq 1 100); do
  out=$(tessera sql "DROP TABLE sales" 2>&1 || true)
  case "$out" in OK*|*"no such table"*) break ;; esac
  sleep 0.3
done
tessera sql "CREATE TABLE sales (id INTEGER PRIMARY KEY, region TEXT, product TEXT, qty INTEGER, price REAL)"
tessera policy set -f examples/db/policy.yaml     # the row executors scale on their queue depth (2..4)
echo "loading 5,000 generated rows (10 INSERT jobs of 500 rows)"
for b in $(seq 0 9); do
  node -e 'const b=+process.argv[1];const R=["north","south","east","west"],P=["tea","coffee","cocoa","mate","chai"];let v=[];for(let i=b*500;i<b*500+500;i++)v.push(`(${i}, '"'"'${R[i%4]}'"'"', '"'"'${P[(i*7)%5]}'"'"', ${1+(i*13)%9}, ${(2+((i*37)%300)/100).toFixed(2)})`);console.log("INSERT INTO sales VALUES "+v.join(", "))' "$b" | xargs -0 node dist/coordinator/cli/main.js sql >/dev/null
done
tessera sql --explain "SELECT region, COUNT(*) AS orders, SUM(qty) AS units, AVG(price) AS avg_price FROM sales GROUP BY region ORDER BY units DESC"
tessera sql --explain "SELECT product, qty, price FROM sales WHERE id = 4242"
tessera sql "SELECT product, SUM(qty * price) AS revenue FROM sales WHERE region = 'north' GROUP BY product ORDER BY revenue DESC LIMIT 3"
tessera sql "SELECT nme FROM sales" || true
tessera sql "SELECT * FORM sales" || true
step "adding executor-vector while the database runs: the planner's scans and aggregates move to it"
cat examples/db/app.yaml examples/db/executor-vector.yaml | tessera apply -f -
for _ in $(seq 1 300); do
  n=$(tessera --json component list executor-vector 2>/dev/null | json 'v.length' || true)
  [ "${n:-0}" -ge 1 ] && break
  sleep 0.2
done
tessera sql --explain "SELECT region, COUNT(*) AS orders, SUM(qty) AS units FROM sales GROUP BY region ORDER BY units DESC"

leader=$(tessera --json status | json 'v.leader.id')
step "kill -9 the leader ($leader)"
kill -9 "$(cat .tessera/cluster/pids/$leader)"
start=$(date +%s%N)
for _ in $(seq 1 200); do
  now=$(tessera --json status 2>/dev/null | json 'v.leader.id' || true)
  if [ -n "$now" ] && [ "$now" != "$leader" ]; then break; fi
  sleep 0.05
done
echo "new leader: $now after $(( ($(date +%s%N) - start) / 1000000 )) ms; the app never stopped answering:"
curl_all
tessera nodes
step "jobs run under the new leader"
tessera job submit words --data "a new leader routes the job through the same instances" -H top=3
tessera sql "SELECT COUNT(*) AS rows, SUM(qty) AS units FROM sales"
echo "the jobs that ended under the old leader are still listed (from their records in etcd):"
tessera job list -n 5

step "a backup of the whole cluster state (an etcd snapshot, through any coordinator)"
tessera operator snapshot save .tessera/backup.db

step "bring $leader back (it rejoins as a follower)"
bash scripts/cluster.sh start >/dev/null
for _ in $(seq 1 20); do
  tessera status 2>/dev/null | grep -q "^$leader .*follower" && break
  sleep 0.5
done
tessera status

step "recent events"
tessera events -n 15

cat <<MSG

The cluster and the app are still running. Try:
  node dist/coordinator/cli/main.js ps              (TESSERA_COORDINATOR=$TESSERA_COORDINATOR)
  node dist/coordinator/cli/main.js app history hello
  node dist/coordinator/cli/main.js instance replace $first --reason "try it"
  node dist/coordinator/cli/main.js exec -it $first -- sh      (a shell in the instance, as kubectl exec -it)
  node dist/coordinator/cli/main.js events --for hello
  node dist/coordinator/cli/main.js rollback hello
  node dist/coordinator/cli/main.js node drain node-1       (the database's shards move with their data)
  node dist/coordinator/cli/main.js events --follow
  node dist/coordinator/cli/main.js job submit words --data @somefile.txt
  node dist/coordinator/cli/main.js component list
  node dist/coordinator/cli/main.js sql                 (a REPL on the database; end statements with ;)
Stop it with scripts/cluster.sh stop, or scripts/cluster.sh clean to remove its containers too.
MSG
