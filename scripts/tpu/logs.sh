#!/usr/bin/env bash
# Show the end of a run's log (train.py and eval.py output) on one worker of a TPU VM.
#
#   scripts/tpu/logs.sh --name NAME --zone ZONE [--project P] [--remote-dir mla-jax]
#                       [--workdir runs/NAME] [--worker 0] [--follow] [--dry-run]
#
# Prints the last 100 lines of WORKDIR/run.log; --follow keeps printing new lines until Ctrl-C
# (which stops only the printing, not the run).

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --remote-dir --workdir --worker --follow"
TPU_BOOL_FLAGS="--follow:TPU_FOLLOW"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE TPU_WORKDIR

follow=""
[ "${TPU_FOLLOW:-0}" != 1 ] || follow=" -f"
tpu_ssh "$TPU_WORKER" "tail -n 100$follow $(tpu_quote_inner "$TPU_REMOTE_DIR/$TPU_WORKDIR/run.log")"
