#!/usr/bin/env bash
# Regenerates backend/requirements.lock from a clean resolve of backend/pyproject.toml.
# The CUDA-only NCCL wheel that xgboost pulls in is dropped: CPU workers never load it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q "$ROOT/backend[postgres]" bokeh
{
  sed -n '1,/^# Regenerate/p' "$ROOT/backend/requirements.lock"
  "$work/venv/bin/pip" freeze --exclude tpot-backend | grep -v -i '^nvidia-'
} > "$work/lock"
mv "$work/lock" "$ROOT/backend/requirements.lock"
echo "lock: $(grep -c '==' "$ROOT/backend/requirements.lock") pins written to backend/requirements.lock"
