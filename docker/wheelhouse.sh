#!/usr/bin/env bash
# Fill a wheelhouse for the offline ("air-gapped") image builds:
#
#   bash docker/wheelhouse.sh [DIR]      # default: ./wheelhouse (git-ignored)
#
# then build with the wheelhouse in the build context: the Dockerfiles install from it with
# `pip install --no-index --find-links` whenever it holds wheels, and from the package index
# otherwise. Run this on a machine that reaches the index, carry the folder to the hospital.
#
# It downloads binary wheels for the image's Python (FEDVOX_WHEEL_PYTHON, default 3.11, the
# Python of Debian bookworm and of python:3.11-slim-bookworm) and this machine's CPU
# architecture, whatever Python runs the script: every dependency of the proto, server and
# client distributions, the build backend (setuptools) for installing them, and torch as
# FEDVOX_TORCH names it (default torch==2.13.0). For a GPU site put a CUDA build of torch here
# (e.g. FEDVOX_TORCH="torch==2.13.0" on a machine whose pip resolves it to a CUDA wheel);
# torch's own dependencies (the nvidia-* wheels of a CUDA build) come along.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wheelhouse}
python=${FEDVOX_PYTHON:-python3}
pyver=${FEDVOX_WHEEL_PYTHON:-3.11}
torch=${FEDVOX_TORCH:-torch==2.13.0}
arch=$(uname -m)

requirements=$(echo "$torch" && "$python" docker/requirements.py proto server client)
stamp="$out/.fedvox-wheelhouse"
want=$(printf '%s\n%s %s\n' "$requirements" "$pyver" "$arch" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "wheelhouse: $out is current ($(find "$out" -name '*.whl' | wc -l) wheels)" >&2
  exit 0
fi
mkdir -p "$out"
req_file=$(mktemp)
trap 'rm -f "$req_file"' EXIT
printf '%s\n' "$requirements" >"$req_file"
platforms=()
for glibc in 2_17 2_28 2_34 2_36; do platforms+=(--platform "manylinux_${glibc}_${arch}"); done
platforms+=(--platform "manylinux2014_${arch}" --platform linux_"${arch}")
"$python" -m pip download --disable-pip-version-check -q -d "$out" \
  --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" \
  -r "$req_file"
echo "$want" >"$stamp"
echo "wheelhouse: $out holds $(find "$out" -name '*.whl' | wc -l) wheels," \
  "$(du -sh "$out" | cut -f1)" >&2
