#!/usr/bin/env bash
# Start train.py and then eval.py on every worker of a TPU VM, as one background job per worker.
#
#   scripts/tpu/launch.sh --name NAME --zone ZONE [--project P] [--remote-dir mla-jax]
#                         [--config configs/tpu_small.py:mla] [--workdir runs/NAME]
#                         [--foreground] [--no-eval] [--offline] [--dry-run] [-- ARGS...]
#
# Both programs get --config.distributed.initialize=True (on Cloud TPU, JAX finds the other
# workers itself) and ARGS, e.g. --config.num_train_steps=100. Their output goes to
# WORKDIR/run.log on each worker; logs.sh shows it. The job survives the end of the SSH
# session; --foreground instead keeps the session open and prints the output as well.
# Hugging Face downloads are allowed (HF_DATASETS_OFFLINE=0, HF_HUB_OFFLINE=0) unless --offline.
# A worker that already runs train.py or eval.py from the remote dir's .venv refuses to start.
# The workdir must be a path on the workers (train.py appends metrics.jsonl line by line);
# put checkpoints in a bucket with -- --config.checkpoint_dir=gs://BUCKET/PATH.

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --remote-dir --config --workdir --foreground --no-eval --offline"
TPU_BOOL_FLAGS="--foreground:TPU_FOREGROUND --no-eval:TPU_NO_EVAL --offline:TPU_OFFLINE"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE TPU_CONFIG TPU_WORKDIR
case "$TPU_WORKDIR" in
  *://*) tpu_die "TPU_WORKDIR=$TPU_WORKDIR must be a path on the workers, because train.py appends metrics.jsonl line by line; put checkpoints in a bucket with -- --config.checkpoint_dir=gs://BUCKET/PATH." ;;
esac

q=tpu_quote_inner
workdir="$($q "$TPU_WORKDIR")"
program_args=("--config=$TPU_CONFIG" "--workdir=$TPU_WORKDIR" --config.distributed.initialize=True)
program_args+=(${TPU_EXTRA_ARGS[@]+"${TPU_EXTRA_ARGS[@]}"})
job=".venv/bin/python train.py $(tpu_quote "${program_args[@]}")"
if [ "${TPU_NO_EVAL:-0}" != 1 ]; then
  job="$job && .venv/bin/python eval.py $(tpu_quote "${program_args[@]}")"
fi
offline=0
[ "${TPU_OFFLINE:-0}" != 1 ] || offline=1
environment="HF_DATASETS_OFFLINE=$offline HF_HUB_OFFLINE=$offline"
if [ "${TPU_FOREGROUND:-0}" = 1 ]; then
  start="set -o pipefail; $environment bash -c $($q "$job") 2>&1 | tee $workdir/run.log"
else
  start="$environment setsid nohup bash -c $($q "$job") > $workdir/run.log 2>&1 < /dev/null & echo \"Started on \$(hostname); log: $TPU_REMOTE_DIR/$TPU_WORKDIR/run.log\""
fi
# Anchored, so that it matches the Python processes and not the shells whose command lines
# contain the same text.
busy="if pgrep -f \"^[.]venv/bin/python (train|eval)[.]py\" > /dev/null; then echo \"\$(hostname) is already running train.py or eval.py; stop it first.\" >&2; exit 1; fi"
tpu_ssh all "$(tpu_join "cd $($q "$TPU_REMOTE_DIR")" "$busy" "mkdir -p $workdir" "{ $start; }")"
