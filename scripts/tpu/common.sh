# shellcheck shell=bash
# Shared parts of the Cloud TPU scripts in this folder: settings, flag parsing, command runner.
# Sourced by each script, never run on its own. It avoids bash 4 features (associative arrays,
# case conversion) so that the bash 3.2 of macOS can run it.
# NOTE: tried with bash 5.2 only.
#
# Every setting comes from a flag or an environment variable; a flag wins over the variable.
#
#   flag                 variable              default
#   --name               TPU_NAME              (required)
#   --zone               TPU_ZONE              (required)
#   --project            TPU_PROJECT           gcloud's configured project
#   --accelerator-type   TPU_ACCELERATOR_TYPE  (required by create.sh), e.g. v4-8, v5litepod-8
#   --runtime-version    TPU_RUNTIME_VERSION   chosen from the accelerator type
#   --remote-dir         TPU_REMOTE_DIR        mla-jax (the project on each worker; relative
#                                              paths start at the home directory)
#   --workdir            TPU_WORKDIR           runs/NAME (relative to the remote dir)
#   --config             TPU_CONFIG            configs/tpu_small.py:mla
#   --jax                TPU_JAX_SPEC          jax[tpu]==VERSION, VERSION from requirements.txt
#   --python             TPU_PYTHON_VERSION    3.11
#   --dest               TPU_DEST              tpu-results/NAME (local folder for fetch.sh)
#   --worker             TPU_WORKER            0 (the worker logs.sh reads)
#   --dry-run            TPU_DRY_RUN=1         print the commands, run nothing
#
# Arguments after `--` go to the inner command: gcloud for create.sh, train.py and eval.py for
# launch.sh.

set -euo pipefail

TPU_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TPU_EXTRA_ARGS=()

tpu_die() {
  echo "error: $*" >&2
  exit 2
}

# Print the variable behind a value flag, or fail for any other word.
_tpu_flag_variable() {
  case "$1" in
    --name) echo TPU_NAME ;;
    --zone) echo TPU_ZONE ;;
    --project) echo TPU_PROJECT ;;
    --accelerator-type) echo TPU_ACCELERATOR_TYPE ;;
    --runtime-version) echo TPU_RUNTIME_VERSION ;;
    --remote-dir) echo TPU_REMOTE_DIR ;;
    --workdir) echo TPU_WORKDIR ;;
    --config) echo TPU_CONFIG ;;
    --jax) echo TPU_JAX_SPEC ;;
    --python) echo TPU_PYTHON_VERSION ;;
    --dest) echo TPU_DEST ;;
    --worker) echo TPU_WORKER ;;
    *) return 1 ;;
  esac
}

_tpu_usage() {
  # The calling script's header comment (from line 2 to the first blank line) is its help.
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  echo "Flags: $TPU_FLAGS --dry-run. Settings and defaults: scripts/tpu/common.sh."
}

_tpu_accepts() {
  case " $TPU_FLAGS --dry-run " in
    *" $1 "*) return 0 ;;
    *) return 1 ;;
  esac
}

# Parse the command line. The calling script sets TPU_FLAGS (the flags it takes, value flags
# and its own boolean flags) and TPU_BOOL_FLAGS ("--flag:VARIABLE" pairs) before calling this.
tpu_parse_args() {
  local arg flag value variable pair
  while [ $# -gt 0 ]; do
    arg="$1"
    shift
    case "$arg" in
      -h | --help)
        _tpu_usage
        exit 0
        ;;
      --)
        # shellcheck disable=SC2034  # read by the calling script
        TPU_EXTRA_ARGS=("$@")
        return 0
        ;;
      --dry-run)
        TPU_DRY_RUN=1
        continue
        ;;
    esac
    flag="${arg%%=*}"
    _tpu_accepts "$flag" || tpu_die "$(basename "$0") does not take '$arg'; see --help."
    for pair in ${TPU_BOOL_FLAGS:-}; do
      if [ "${pair%%:*}" = "$flag" ]; then
        [ "$flag" = "$arg" ] || tpu_die "$flag takes no value."
        eval "${pair#*:}=1"
        continue 2
      fi
    done
    variable="$(_tpu_flag_variable "$flag")" || tpu_die "unknown flag '$arg'; see --help."
    if [ "$flag" != "$arg" ]; then
      value="${arg#*=}"
    else
      [ $# -gt 0 ] || tpu_die "$flag needs a value."
      # shellcheck disable=SC2034  # read by the eval below
      value="$1"
      shift
    fi
    eval "$variable=\$value"
  done
}

# Fail, naming the flag and the variable, when a required setting is empty.
tpu_require() {
  local variable flag
  for variable in "$@"; do
    if [ -z "${!variable:-}" ]; then
      flag="$(echo "${variable#TPU_}" | tr '[:upper:]' '[:lower:]' | tr _ -)"
      [ "$variable" = TPU_JAX_SPEC ] && flag=jax
      [ "$variable" = TPU_PYTHON_VERSION ] && flag=python
      tpu_die "$variable is not set: pass --$flag VALUE or export $variable."
    fi
  done
}

# Defaults that depend on other settings, filled in after parsing.
tpu_defaults() {
  TPU_DRY_RUN="${TPU_DRY_RUN:-0}"
  TPU_PROJECT="${TPU_PROJECT:-}"
  TPU_REMOTE_DIR="${TPU_REMOTE_DIR:-mla-jax}"
  # Remote commands quote every path, so '~' would not expand there; a relative path starts
  # at the home directory anyway.
  TPU_REMOTE_DIR="${TPU_REMOTE_DIR#\~/}"
  TPU_WORKER="${TPU_WORKER:-0}"
  TPU_CONFIG="${TPU_CONFIG:-configs/tpu_small.py:mla}"
  TPU_PYTHON_VERSION="${TPU_PYTHON_VERSION:-3.11}"
  if [ -n "${TPU_NAME:-}" ]; then
    TPU_WORKDIR="${TPU_WORKDIR:-runs/$TPU_NAME}"
    TPU_DEST="${TPU_DEST:-tpu-results/$TPU_NAME}"
  fi
  if [ -z "${TPU_JAX_SPEC:-}" ]; then
    local version
    version="$(sed -n 's/^jax==\([^ ;]*\).*/\1/p' "$TPU_REPO/requirements.txt")"
    TPU_JAX_SPEC="jax[tpu]${version:+==$version}"
  fi
}

# The runtime version (VM image) that Google documents for JAX on each TPU generation.
tpu_runtime_version() {
  if [ -n "${TPU_RUNTIME_VERSION:-}" ]; then
    echo "$TPU_RUNTIME_VERSION"
    return
  fi
  case "$TPU_ACCELERATOR_TYPE" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) tpu_die "no default runtime version for accelerator type '$TPU_ACCELERATOR_TYPE': pass --runtime-version VERSION or export TPU_RUNTIME_VERSION." ;;
  esac
}

# Quote one word for a POSIX shell, readably: bare when safe, else in single or double quotes.
tpu_quote_word() {
  local word="$1"
  case "$word" in
    "" ) printf "''" ;;
    *[!A-Za-z0-9_./:=@%+,-]*)
      case "$word" in
        *"'"*)
          case "$word" in
            *[\"\$\`\\!]*) printf "'%s'" "$(printf '%s' "$word" | sed "s/'/'\\\\''/g")" ;;
            *) printf '"%s"' "$word" ;;
          esac
          ;;
        *) printf "'%s'" "$word" ;;
      esac
      ;;
    *) printf '%s' "$word" ;;
  esac
}

# Quote one word for a command line that will itself be quoted again: double quotes where they
# are safe, so that the outer single quotes need no escapes.
tpu_quote_inner() {
  case "$1" in
    *[!A-Za-z0-9_./:=@%+,-]*)
      case "$1" in
        *[\"\$\`\\!]*) tpu_quote_word "$1" ;;
        *) printf '"%s"' "$1" ;;
      esac
      ;;
    *) tpu_quote_word "$1" ;;
  esac
}

# Quote every argument and join them with spaces: one shell command line.
tpu_quote() {
  local out="" word
  for word in "$@"; do
    out="${out:+$out }$(tpu_quote_word "$word")"
  done
  printf '%s' "$out"
}

# Run one command, or print it under --dry-run. Commands that run are echoed to stderr first.
tpu_run() {
  if [ "$TPU_DRY_RUN" = 1 ]; then
    printf '%s\n' "$(tpu_quote "$@")"
  else
    printf '+ %s\n' "$(tpu_quote "$@")" >&2
    "$@"
  fi
}

# gcloud compute tpus tpu-vm SUBCOMMAND ARGS..., with the zone and project flags added.
tpu_gcloud() {
  local subcommand="$1"
  shift
  local scope=("--zone=$TPU_ZONE")
  [ -z "$TPU_PROJECT" ] || scope+=("--project=$TPU_PROJECT")
  tpu_run gcloud compute tpus tpu-vm "$subcommand" "$@" "${scope[@]}"
}

# Run a shell command line on every worker (--worker=all) or one worker (--worker=N).
tpu_ssh() {
  local worker="$1" command="$2"
  tpu_gcloud ssh "$TPU_NAME" "--worker=$worker" "--command=$command"
}

# Join shell command lines with ' && ', so that a remote command stops at the first failure.
tpu_join() {
  local out="" part
  for part in "$@"; do
    out="${out:+$out && }$part"
  done
  printf '%s' "$out"
}

# Run a local shell command line with bash, or print it under --dry-run.
tpu_run_local() {
  if [ "$TPU_DRY_RUN" = 1 ]; then
    printf '%s\n' "$1"
  else
    printf '+ %s\n' "$1" >&2
    bash -c "set -euo pipefail; $1"
  fi
}
