"""The workdir of a run: checks before anything is written, and the records of what ran."""

from __future__ import annotations

import json
import os

import ml_collections

from mla_jax.config import ConfigError, base_config
from mla_jax.evaluation import write_json_atomic
from mla_jax.training.run_info import run_info

# Fields that decide a run's results: changing them between a checkpoint and its resume would
# silently mix two experiments. Step counts, logging and eval settings may change.
TRAIN_FIELDS = ("model.", "data.", "seed", "seq_len", "batch_size")
EVAL_FIELDS = ("model.", "data.")


def check_workdir(workdir: str) -> str:
    """Return the absolute workdir path after rejecting files and object-store URLs."""
    if "://" in workdir:
        raise ValueError(
            f"--workdir={workdir} must be a local directory: metrics.jsonl is appended line by "
            "line, which object stores do not support. Put checkpoints in a bucket with "
            "--config.checkpoint_dir=gs://BUCKET/PATH instead."
        )
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir={workdir} is a file; pass a directory path.")
    return workdir


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_saved_config(
    workdir: str, config: ml_collections.ConfigDict, fields=TRAIN_FIELDS, allow_change=False
) -> None:
    """Reject a config whose `fields` differ from the run recorded in WORKDIR/config.json."""
    path = os.path.join(workdir, "config.json")
    if allow_change or not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flatten(json.load(f))
    # A field added after the run was recorded counts as its default.
    saved = {**_flatten(json.loads(base_config().to_json())), **saved}
    current = _flatten(json.loads(config.to_json()))
    keys = sorted(k for k in set(saved) | set(current) if k.startswith(fields))
    differ = [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    if differ:
        raise ConfigError(
            f"The config differs from the run recorded in {path} in: {'; '.join(differ)}. "
            "Use the recorded values, another --workdir, or pass --allow_config_change to go on."
        )


def write_run_records(workdir: str, config: ml_collections.ConfigDict, step: int = 0) -> None:
    """Record the exact config, and what the run ran on (both rewritten at each resume).

    A recorded config that differs from this one (a resume with --allow_config_change, or a
    changed step count) is kept as config.before_step_<step>.json, so the history stays.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != current:
                os.replace(path, os.path.join(workdir, f"config.before_step_{step}.json"))
    write_json_atomic(path, current)
    write_json_atomic(os.path.join(workdir, "run_info.json"), run_info())
