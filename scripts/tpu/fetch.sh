#!/usr/bin/env bash
# Copy a run's results from worker 0 of a TPU VM to a local folder.
#
#   scripts/tpu/fetch.sh --name NAME --zone ZONE [--project P] [--remote-dir mla-jax]
#                        [--workdir runs/NAME] [--dest tpu-results/NAME] [--checkpoints]
#                        [--dry-run]
#
# Fetches eval.json, metrics.jsonl, config.json, run.log and tensorboard/ (worker 0 is process
# 0, the one that writes them), and checkpoints/ too with --checkpoints (a 100M-parameter
# model's checkpoint is about 1.3 GB). Files that do not exist yet are reported and skipped;
# the exit status is then 1. Fetching again overwrites files of the same name and keeps others.

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --remote-dir --workdir --dest --checkpoints"
TPU_BOOL_FLAGS="--checkpoints:TPU_CHECKPOINTS"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE TPU_WORKDIR TPU_DEST

remote="$TPU_NAME:$TPU_REMOTE_DIR/$TPU_WORKDIR"
tpu_run mkdir -p "$TPU_DEST"
missing=()
for file in eval.json metrics.jsonl config.json run.log; do
  tpu_gcloud scp "$remote/$file" "$TPU_DEST/" --worker=0 || missing+=("$file")
done
folders=(tensorboard)
[ "${TPU_CHECKPOINTS:-0}" != 1 ] || folders+=(checkpoints)
for folder in "${folders[@]}"; do
  tpu_gcloud scp --recurse "$remote/$folder" "$TPU_DEST/" --worker=0 || missing+=("$folder/")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Not fetched: ${missing[*]} (has the run written them yet? see logs.sh)." >&2
  exit 1
fi
[ "$TPU_DRY_RUN" = 1 ] || echo "Results in $TPU_DEST" >&2
