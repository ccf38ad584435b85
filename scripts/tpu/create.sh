#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice.
#
#   scripts/tpu/create.sh --name NAME --zone ZONE --accelerator-type v4-8 [--project P]
#                         [--runtime-version V] [--spot] [--dry-run] [-- GCLOUD_ARGS...]
#
# The runtime version defaults to the image Google documents for JAX on that TPU generation
# (v4: tpu-ubuntu2204-base, v5litepod: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e:
# v2-alpha-tpuv6e). --spot (or TPU_SPOT=1) requests a Spot VM, which costs less and may be
# preempted. Arguments after -- go to `gcloud compute tpus tpu-vm create`.

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --accelerator-type --runtime-version --spot"
TPU_BOOL_FLAGS="--spot:TPU_SPOT"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE TPU_ACCELERATOR_TYPE

version="$(tpu_runtime_version)"
args=("$TPU_NAME" "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--version=$version")
[ "${TPU_SPOT:-0}" != 1 ] || args+=(--spot)
tpu_gcloud create "${args[@]}" ${TPU_EXTRA_ARGS[@]+"${TPU_EXTRA_ARGS[@]}"}
