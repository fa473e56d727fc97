#!/usr/bin/env bash
# npm run bench [-- NAME...]: runs the benchmarks under scripts/bench (all by default) and
# prints their tables. Results are also written to .bench/NAME.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/lib/docker.sh
ensure_dockerd
trap stop_dockerd_if_started EXIT
bash scripts/build-images.sh >/dev/null
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(failover scheduler apply autoscale jobs jobs-cpu db fleet)
mkdir -p .bench
for n in "${names[@]}"; do
  echo "=== bench: $n"
  node "dist/scripts/bench/$n.js" | tee ".bench/$n.txt"
done
