#!/usr/bin/env bash
# Installs what Tessera needs on a fresh Debian machine and builds it. Idempotent: re-running
# only does what is missing. Needs root for apt (CI and the dev machines run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v dockerd >/dev/null || need_apt+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx wget || need_apt+=(busybox-static)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)   # to verify the unit files
command -v openssl >/dev/null || need_apt+=(openssl)           # scripts/make-certs.sh
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || need_apt+=(libfaketime)  # tests: step a process's system clock
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need_apt[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  say "installing ${need_apt[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# npm packages: only when the lock file changed since the last install. Their install scripts
# run by name: better-sqlite3 compiles SQLite (about a minute: its prebuilt binaries are on
# GitHub, out of reach here), in the background while tsc builds; ssh2's and cpu-features'
# optional native speed-ups for ssh are not built (Tessera never talks ssh; about 9 s).
stamp=node_modules/.tessera-lock-stamp
native=
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  say "installing npm packages (npm ci; better-sqlite3 compiles beside the build)"
  rm -f "$stamp"
  npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
  npm rebuild --loglevel=error esbuild protobufjs >/dev/null
  native_log=$(mktemp)
  npm rebuild --loglevel=error better-sqlite3 >"$native_log" 2>&1 &
  native=$!
fi

say "building (protos -> types, tsc)"
npm run --silent build

if [ -n "$native" ]; then
  if ! wait "$native"; then
    cat "$native_log" >&2
    echo "setup: building better-sqlite3 failed (above)" >&2
    exit 1
  fi
  rm -f "$native_log"
  cp package-lock.json "$stamp"
fi
