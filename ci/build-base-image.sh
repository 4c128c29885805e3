#!/usr/bin/env bash
# Builds the local base image that backend/Dockerfile takes through BASE_IMAGE where no image can be
# pulled (air-gapped hosts, this project's CI): a minimal Debian bookworm root file system made by
# debootstrap from the Debian mirror apt already uses, plus Python 3.11, venv and libgomp1 (LightGBM),
# imported with `docker import`.
#
#   bash ci/build-base-image.sh [TAG]     default tag: tpot-local-base:bookworm
#
# The root file system tarball is cached in .cache/base/ (git-ignored), keyed by the package list
# below, so a warm run only imports it (a few seconds) and a run with the image present does nothing.
# Needs root (debootstrap), debootstrap (installed with apt-get when missing) and a Docker engine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-tpot-local-base:bookworm}
SUITE=bookworm
# python3-venv brings ensurepip's bundled pip; libgomp1 is the OpenMP runtime LightGBM links against.
PACKAGES=python3,python3-venv,libgomp1,ca-certificates
CACHE="$ROOT/.cache/base"
KEY=$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-12)
TARBALL="$CACHE/debian-$SUITE-python3-$KEY.tar.gz"

log() { printf 'base-image: %s\n' "$*" >&2; }

debian_mirror() {
  # The first Debian (not security) mirror apt is configured with, deb822 or one-line format.
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{print $2}' | grep -E '/debian/?$' | head -n 1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if docker image inspect "$TAG" --format '{{index .Config.Labels "tpot.base.key"}}' 2>/dev/null \
    | grep -qx "$KEY"; then
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1
  }
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mirror=$(debian_mirror)
  started=$SECONDS
  log "debootstrap --variant=minbase $SUITE from $mirror (first run only, about two minutes)"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" \
      >"$CACHE/debootstrap.log" 2>&1; then
    log "debootstrap failed; see .cache/base/debootstrap.log"
    tail -n 5 "$CACHE/debootstrap.log" >&2
    exit 1
  fi

  # Nothing the image needs at run time: package caches and lists, docs, man pages, locales.
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/info/* \
    "$work/rootfs"/usr/share/locale/* "$work/rootfs"/var/log/*.log "$work/rootfs"/var/cache/debconf/*-old
  # An image must not carry the build host's resolver or host name.
  : >"$work/rootfs/etc/resolv.conf"
  : >"$work/rootfs/etc/hostname"

  tar --numeric-owner -C "$work/rootfs" -czf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  log "root file system cached: $(du -h "$TARBALL" | cut -f1) in $((SECONDS - started))s"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL tpot.base.key=$KEY" \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with Python 3, local base\"" \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$TAG" >/dev/null
log "imported $TAG ($(docker image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%d MB", $1/1000000}'))"
