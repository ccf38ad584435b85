#!/usr/bin/env bash
# Delete a Cloud TPU VM or pod slice, with everything on its disks (local checkpoints too).
#
#   scripts/tpu/delete.sh --name NAME --zone ZONE [--project P] [--yes] [--dry-run]
#
# gcloud prompts for confirmation unless --yes (or TPU_YES=1) is given. Fetch results first
# (fetch.sh).

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --yes"
TPU_BOOL_FLAGS="--yes:TPU_YES"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE

args=("$TPU_NAME")
[ "${TPU_YES:-0}" != 1 ] || args+=(--quiet)
tpu_gcloud delete "${args[@]}"
