# Starts a Docker Engine when none answers, the way this kind of machine allows it: no
# iptables, no bridge (containers use host networking). Sourced by test.sh and demo.sh.
TESSERA_DOCKERD_PIDFILE=${TESSERA_DOCKERD_PIDFILE:-/tmp/tessera-dockerd.pid}
TESSERA_STARTED_DOCKERD=0

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  echo "[docker] starting dockerd (--iptables=false --ip6tables=false --bridge=none)"
  nohup dockerd --iptables=false --ip6tables=false --bridge=none \
    --pidfile "$TESSERA_DOCKERD_PIDFILE" >/tmp/tessera-dockerd.log 2>&1 &
  TESSERA_STARTED_DOCKERD=1
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "[docker] dockerd did not start; see /tmp/tessera-dockerd.log" >&2
  tail -20 /tmp/tessera-dockerd.log >&2 || true
  return 1
}

stop_dockerd_if_started() {
  if [ "$TESSERA_STARTED_DOCKERD" = 1 ] && [ -f "$TESSERA_DOCKERD_PIDFILE" ]; then
    kill "$(cat "$TESSERA_DOCKERD_PIDFILE")" 2>/dev/null || true
  fi
}
