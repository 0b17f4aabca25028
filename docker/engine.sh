#!/usr/bin/env bash
# Start, stop or query a private Docker engine for CI on a machine where none runs.
#
#   bash docker/engine.sh start    # prints `export DOCKER_HOST=unix://...` on stdout
#   bash docker/engine.sh stop     # stops the dockerd that `start` recorded, by its PID
#   bash docker/engine.sh status
#
# The engine leaves the host's network set-up alone (no iptables rules, no forwarding, no
# docker0 bridge); Compose's user-defined bridge networks still work, with service-name DNS.
# Its images live in FEDVOX_DOCKER_ROOT, which persists, so a rerun reuses the layer cache.
set -euo pipefail
root=${FEDVOX_DOCKER_ROOT:-/var/lib/fedvox-docker}
run=${FEDVOX_DOCKER_RUN:-/run/fedvox-docker}
sock="$run/docker.sock"
pidfile="$run/dockerd.pid"
log="$root/dockerd.log"
export DOCKER_HOST="unix://$sock"

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

case "${1:-}" in
  start)
    if pid=$(running_pid); then
      echo "engine: already running (pid $pid)" >&2
    else
      command -v dockerd >/dev/null || { echo "engine: dockerd not installed" >&2; exit 1; }
      mkdir -p "$root/data" "$run/exec"
      # setsid: the engine is not in the caller's process group, so ^C in a test run
      # does not kill it half-way; `stop` ends it by PID.
      setsid dockerd \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
        --data-root "$root/data" --exec-root "$run/exec" --pidfile "$pidfile" \
        -H "unix://$sock" >>"$log" 2>&1 </dev/null &
      for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
      done
      docker info >/dev/null 2>&1 || {
        echo "engine: dockerd did not come up; last lines of $log:" >&2
        tail -20 "$log" >&2
        exit 1
      }
      echo "engine: started (pid $(cat "$pidfile"), socket $sock)" >&2
    fi
    echo "export DOCKER_HOST=unix://$sock"
    ;;
  stop)
    if pid=$(running_pid); then
      kill -TERM "$pid"
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "engine: pid $pid ignored SIGTERM for 30s; sending SIGKILL" >&2
        kill -KILL "$pid"
      fi
      echo "engine: stopped (pid $pid)" >&2
    else
      echo "engine: not running" >&2
    fi
    ;;
  status)
    if pid=$(running_pid); then
      echo "engine: running (pid $pid, socket $sock)"
    else
      echo "engine: not running"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
