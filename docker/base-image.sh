#!/usr/bin/env bash
# Make a local base image (default fedvox-base:local) for machines that cannot pull one:
# a minimal Debian bookworm (Python 3.11, venv, CA certificates) made with debootstrap from
# the Debian mirror this machine's apt already uses, then `docker import`ed.
#
#   bash docker/base-image.sh [IMAGE]
#
# The root filesystem tarball is cached in FEDVOX_DOCKER_CACHE, so a rerun (or a new engine)
# only imports it. Build the fedvox images on it with --build-arg BASE_IMAGE=fedvox-base:local
# (or FEDVOX_BASE_IMAGE=fedvox-base:local for docker compose).
set -euo pipefail
image=${1:-fedvox-base:local}
suite=bookworm
cache=${FEDVOX_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedvox-docker}
tarball="$cache/base-$suite-$(dpkg --print-architecture).tar"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image: $image already present" >&2
  exit 0
fi

# the first Debian mirror in the apt sources (deb822 *.sources or one-line *.list) that
# serves the suite itself; read at run time so that no mirror is written into the repo
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
          split(uris, u, " "); print u[1]; found = 1; exit
        }
        types = suites = uris = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
      END { if (!found) flush() }
    ' "$f"
  done
  (cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true) \
    | awk -v suite="$suite" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) print $i }'
}

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    echo "base image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  }
  url=$(mirror | head -n 1 || true)
  [ -n "$url" ] || { echo "base image: no apt source serves $suite" >&2; exit 1; }
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  echo "base image: debootstrap $suite into $rootfs" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$url" >"$cache/debootstrap.log" 2>&1 || {
    tail -20 "$cache/debootstrap.log" >&2
    exit 1
  }
  # a smaller image: no apt lists, caches, docs or man pages
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$image" >/dev/null
echo "base image: $image imported from $tarball" >&2
