#!/usr/bin/env bash
# The test command: sets up a fresh Debian machine (apt, npm, build), starts what the tests
# need, runs the unit and integration suites, and cleans up. Tests start their own etcd
# processes on free loopback ports; Docker is started here when a test needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib/docker.sh
ensure_dockerd
trap stop_dockerd_if_started EXIT
bash scripts/build-images.sh
# Two files at a time (TESSERA_TEST_JOBS, default 2; 1 runs them one by one): each worker process
# keeps to a lane of host ports and node ids (test/helpers/lane.ts). The slowest files go first so
# that the two lanes end together.
jobs="${TESSERA_TEST_JOBS:-2}"
if ! [[ "$jobs" =~ ^[12]$ ]]; then
  echo "TESSERA_TEST_JOBS must be 1 or 2 (test/helpers/lane.ts has two lanes of ports and node ids), got '$jobs'" >&2
  exit 2
fi
rm -f "${TMPDIR:-/tmp}"/tessera-test-lane-*.lock
slowest=(deployments jobs logs etcd-ha scaling db canary fleet-scale node-conditions rollout-failover fencing hung-coordinator partition)
files=()
for f in "${slowest[@]}"; do files+=("dist/test/integration/$f.test.js"); done
for f in dist/test/integration/*.test.js; do
  [[ " ${slowest[*]} " == *" $(basename "$f" .test.js) "* ]] || files+=("$f")
done
echo "[test] running unit and integration tests, $jobs at a time"
if [ "$jobs" -gt 1 ]; then
  npx mocha --parallel --jobs "$jobs" "${files[@]}" "dist/test/unit/**/*.test.js" "$@"
else
  npx mocha "dist/test/unit/**/*.test.js" "dist/test/integration/**/*.test.js" "$@"
fi
