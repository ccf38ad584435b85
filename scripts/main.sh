#!/usr/bin/env bash
# Install everything, train the default MLA model on the embedded Shakespeare corpus (about
# 5 minutes on 2 CPU cores), then evaluate it. Extra arguments go to train.py, e.g.
# --config.num_train_steps=200. WORKDIR defaults to runs/shakespeare_mla.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
WORKDIR="${WORKDIR:-runs/shakespeare_mla}"
.venv/bin/python train.py --config=configs/shakespeare.py:mla --workdir="$WORKDIR" "$@"
.venv/bin/python eval.py --config=configs/shakespeare.py:mla --workdir="$WORKDIR" --alsologtostderr
echo "Results: $WORKDIR/eval.json"
