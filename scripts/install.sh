#!/usr/bin/env bash
# Installs a Tessera role (agent or coordinator) on a Debian host as a systemd service:
#   code in  $ROOT/opt/tessera        (dist, protos, production node_modules)
#   config   $ROOT/etc/tessera/<role>.yaml   (written once; a reinstall keeps it)
#   state    $ROOT/var/lib/tessera
#   unit     $ROOT/etc/systemd/system/tessera-<role>.service
#   user     tessera (system user; the agent's is in the docker group)
# --root DIR installs into a folder instead of / (tests do this); then no user is created and
# systemd is not touched. --uninstall removes the unit and the code (config and state stay
# unless --purge).
#   scripts/install.sh agent|coordinator [--root DIR] [--coordinators A,B,C] [--etcd A,B,C]
#                      [--listen HOST:PORT] [--uninstall [--purge]]
set -euo pipefail
cd "$(dirname "$0")/.."
ROLE=${1:-}; shift || true
case "$ROLE" in agent|coordinator) ;; *) echo "usage: $0 agent|coordinator [--root DIR] [...]" >&2; exit 2 ;; esac
ROOT=/ ; COORDINATORS=127.0.0.1:7400 ; ETCD= ; LISTEN=127.0.0.1:7400 ; UNINSTALL=0 ; PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --coordinators) COORDINATORS=$2; shift 2 ;;
    --etcd) ETCD=$2; shift 2 ;;
    --listen) LISTEN=$2; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
ROOT=${ROOT%/}
PREFIX=/opt/tessera
UNIT=tessera-$ROLE.service
UNIT_PATH=$ROOT/etc/systemd/system/$UNIT
live=0; [ -z "$ROOT" ] && [ -d /run/systemd/system ] && live=1
say() { printf '[install] %s\n' "$*"; }

if [ "$UNINSTALL" = 1 ]; then
  if [ "$live" = 1 ]; then systemctl disable --now "$UNIT" 2>/dev/null || true; fi
  rm -f "$UNIT_PATH"
  # The code is shared by both roles: remove it only when no other Tessera unit remains.
  if ! ls "$ROOT"/etc/systemd/system/tessera-*.service >/dev/null 2>&1; then rm -rf "$ROOT$PREFIX"; fi
  if [ "$PURGE" = 1 ]; then rm -f "$ROOT/etc/tessera/$ROLE.yaml"; rmdir "$ROOT/etc/tessera" 2>/dev/null || true; rm -rf "$ROOT/var/lib/tessera"; fi
  [ "$live" = 1 ] && systemctl daemon-reload || true
  say "removed $UNIT$([ "$PURGE" = 1 ] && echo ', its config and state' || echo '; config and state kept')"
  exit 0
fi

[ -f dist/agent/main.js ] || bash scripts/setup.sh
NODE=$(command -v node)
say "installing the $ROLE into ${ROOT:-/}"
mkdir -p "$ROOT$PREFIX" "$ROOT/etc/tessera" "$ROOT/var/lib/tessera" "$ROOT/etc/systemd/system"
rm -rf "$ROOT$PREFIX/dist" "$ROOT$PREFIX/protos"
cp -a dist protos package.json package-lock.json README.md "$ROOT$PREFIX/"
if [ ! -d "$ROOT$PREFIX/node_modules" ] || ! cmp -s package-lock.json "$ROOT$PREFIX/.installed-lock"; then
  # Production dependencies only, from this checkout's lock file.
  rm -rf "$ROOT$PREFIX/node_modules"
  (cd "$ROOT$PREFIX" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
  cp package-lock.json "$ROOT$PREFIX/.installed-lock"
fi
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@NODE@|$NODE|g" "scripts/systemd/$UNIT" > "$UNIT_PATH"
chmod 0644 "$UNIT_PATH"

CONF=$ROOT/etc/tessera/$ROLE.yaml
if [ ! -f "$CONF" ]; then
  if [ "$ROLE" = agent ]; then
    cat > "$CONF" <<CFG
# Tessera agent settings (flags and TESSERA_* environment variables override these).
coordinators: [$(echo "$COORDINATORS" | sed 's/,/, /g')]
stateDir: /var/lib/tessera
logLevel: info
# mTLS (scripts/make-certs.sh): the agent's certificate is its identity (CN = node id).
tlsCa: /etc/tessera/tls/ca.pem
tlsCert: /etc/tessera/tls/agent.pem
tlsKey: /etc/tessera/tls/agent-key.pem
# labels: { rack: r1 }
# portRange: 20000-32000
# Private registries: a Docker config file (what docker login writes), mode 0640 root:tessera.
# registryAuth: /etc/tessera/registry-auth.json
# Image garbage collection: unused images this agent pulled go when the disk is this full (100: off).
# imageGcHighPercent: 85
# imageGcLowPercent: 80
# Disk pressure: no new instances on this node while the disk is fuller than this (100: off).
# diskPressurePercent: 95
CFG
  else
    cat > "$CONF" <<CFG
# Tessera coordinator settings (flags and TESSERA_* environment variables override these).
listen: $LISTEN
etcdEndpoints: [$(echo "$ETCD" | sed 's/,/, /g')]
dataDir: /var/lib/tessera/coordinator
logLevel: info
tlsCa: /etc/tessera/tls/ca.pem
tlsCert: /etc/tessera/tls/coordinator.pem
tlsKey: /etc/tessera/tls/coordinator-key.pem
# etcd over TLS: etcdCa, etcdCert, etcdKey (and https:// endpoints)
# tokensFile: /etc/tessera/tokens.yaml
# Registry passwords sealed at rest: tessera operator keygen k1 > /etc/tessera/secrets.keys,
# mode 0640 root:tessera, the same file on every coordinator (README: Security).
# secretsKeyFile: /etc/tessera/secrets.keys
CFG
  fi
  chmod 0640 "$CONF"
  say "wrote $CONF"
else
  say "kept the existing $CONF"
fi

if [ -z "$ROOT" ]; then
  if ! id tessera >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/tessera --shell /usr/sbin/nologin tessera
    say "created the system user tessera"
  fi
  if [ "$ROLE" = agent ]; then getent group docker >/dev/null && usermod -aG docker tessera; fi
  chown -R tessera:tessera /var/lib/tessera
  chgrp tessera "$CONF"
  if [ -d /etc/tessera/tls ]; then chgrp -R tessera /etc/tessera/tls; chmod 0640 /etc/tessera/tls/*-key.pem 2>/dev/null || true; fi
fi
if [ "$live" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now "$UNIT"
  say "$UNIT enabled and started"
else
  say "installed $UNIT_PATH (systemd is not running here: start it with 'systemctl enable --now $UNIT' on the host)"
fi
