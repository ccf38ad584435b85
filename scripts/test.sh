#!/usr/bin/env bash
# Run the test suite (installing .venv first if needed). Extra arguments go to pytest;
# `-m slow` selects the long benchmarks that the default run leaves out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
