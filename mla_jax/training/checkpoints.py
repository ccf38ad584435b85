"""Checkpoints with orbax: the train state plus the model config that produced it.

Checkpoints live in `WORKDIR/checkpoints/<step>/`. Each holds the `TrainState` and, as JSON, the
`ModelConfig`, so that restoring into a different model is rejected with the fields that differ
instead of an opaque shape error.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from mla_jax import data
from mla_jax.config import ModelConfig, base_config, model_config_from
from mla_jax.sharding import Partitioner
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import TrainState, abstract_train_state, model_graphdef


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not belong to the configured model."""


def checkpoint_directory(workdir: str, config: ml_collections.ConfigDict) -> str:
    """config.checkpoint_dir if set (local or a URL such as gs://), else WORKDIR/checkpoints."""
    directory = config.get("checkpoint_dir") or os.path.join(workdir, "checkpoints")
    return directory if "://" in directory else os.path.abspath(directory)


def make_manager(
    workdir: str, config: ml_collections.ConfigDict, for_training: bool = False
) -> ocp.CheckpointManager:
    """Orbax manager of the run's checkpoints, keeping the last `config.checkpoints_to_keep`.

    A checkpoint cut off during its save stays a temporary folder that orbax never lists as a
    step, so restoring falls back to the previous complete one. The trainer logs a warning for
    each and lets orbax remove them; readers (eval, generate) leave them, since a training run
    may be writing one at that moment.
    """
    directory = checkpoint_directory(workdir, config)
    if os.path.isfile(directory):
        raise CheckpointError(
            f"The checkpoint directory {directory} is a file; set --config.checkpoint_dir to a "
            "directory path, or leave it empty for WORKDIR/checkpoints."
        )
    if for_training:
        _warn_cut_off(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoints_to_keep,
        create=for_training,
        cleanup_tmp_directories=for_training,
        read_only=not for_training,
    )
    return ocp.CheckpointManager(directory, options=options)


def _warn_cut_off(directory: str) -> None:
    if "://" not in directory and not os.path.isdir(directory):
        return
    for path in ocp.step.all_temporary_paths(directory):
        logging.warning(
            "Ignoring %s: a checkpoint cut off during its save. Training resumes from the "
            "latest complete checkpoint; the partial folder is removed.",
            path.get(),
        )


def save(manager: ocp.CheckpointManager, state: TrainState, model_cfg: ModelConfig) -> None:
    step = int(state.step)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        model_config=ocp.args.JsonSave(dataclasses.asdict(model_cfg)),
    )
    manager.save(step, args=args, force=True)
    logging.info("Saved checkpoint at step %d in %s", step, manager.directory)


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: TrainState,
    model_cfg: ModelConfig,
    step: int | None = None,
) -> TrainState:
    """Restore `step` (default: the latest) after checking that it was saved by this model."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(
            f"No checkpoint found in {manager.directory}. Train first with train.py: a run "
            "saves every checkpoint_every steps and at its end."
        )
    saved = manager.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))
    _check_model_config(saved["model_config"], model_cfg, manager.directory, step)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
    except Exception as error:  # orbax and tensorstore raise several types for bad files.
        older = [s for s in manager.all_steps() if s < step]
        fallback = f"step {max(older)}" if older else "scratch"
        raise CheckpointError(
            f"Cannot read the checkpoint at step {step} in {manager.directory} ({error}). "
            f"Move its folder out of that directory to resume from {fallback}."
        ) from error
    logging.info("Restored checkpoint at step %d from %s", step, manager.directory)
    return restored["state"]


def _check_model_config(saved: dict, model_cfg: ModelConfig, directory, step: int) -> None:
    # Fields that change no parameter shape and may differ between training and evaluation.
    free = {
        "dtype",
        "cache_dtype",
        "mla_decode",
        "max_seq_len",
        "rope_theta",
        "norm_eps",
        "attention_impl",
        "remat",
    }
    # Compared as JSON stores them (tuples as lists). A field that the checkpoint predates
    # counts as its default.
    current = json.loads(json.dumps(dataclasses.asdict(model_cfg)))
    saved = {**base_config().model.to_dict(), **saved}
    differ = {
        k: (saved.get(k), v) for k, v in current.items() if k not in free and saved.get(k) != v
    }
    if differ:
        listing = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(differ.items())
        )
        raise CheckpointError(
            f"The checkpoint at step {step} in {directory} belongs to another model ({listing}). "
            "Use the config it was trained with, or another --workdir."
        )


def sharded_abstract_state(
    model_cfg: ModelConfig, tx, partitioner: Partitioner | None
) -> TrainState:
    """Abstract train state whose leaves carry the target shardings of a restore."""
    abstract = abstract_train_state(model_cfg, tx)
    if partitioner is None:
        return abstract
    shardings = partitioner.shardings(abstract)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def load_model(
    config: ml_collections.ConfigDict,
    workdir: str,
    partitioner: Partitioner | None = None,
    step: int | None = None,
):
    """Return (model, step): the model of `config` with parameters from the workdir's checkpoint.

    With a partitioner, parameters are restored directly into their shards on its mesh.
    """
    model_cfg = model_config_from(config.model, data.vocab_size(config.data))
    directory = checkpoint_directory(workdir, config)
    if "://" not in directory and not os.path.isdir(directory):
        raise CheckpointError(
            f"No checkpoint directory {directory}; train first with train.py --workdir={workdir}."
        )
    manager = make_manager(workdir, config)
    target = sharded_abstract_state(model_cfg, make_optimizer(config), partitioner)
    state = restore(manager, target, model_cfg, step)
    manager.close()
    return nnx.merge(model_graphdef(model_cfg), state.params), int(state.step)
