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
echo "[test] running unit and integration tests"
npx mocha "dist/test/unit/**/*.test.js" "dist/test/integration/**/*.test.js" "$@"
