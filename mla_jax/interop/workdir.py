"""Write an imported checkpoint as a workdir that eval.py and scripts/generate.py can load.

The workdir contains `checkpoints/0/` (orbax: parameters, a fresh AdamW state and the ModelConfig,
the layout `mla_jax.training.checkpoints` restores), `config.json` and `run_info.json` like a
training run, and `config.py`, an experiment config file that sets the imported model's fields:

    python eval.py --config=WORKDIR/config.py --workdir=WORKDIR
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
from absl import logging

from mla_jax.config import base_config, validate_experiment
from mla_jax.data.tokenizers import ByteTokenizer
from mla_jax.interop.deepseek import ImportResult
from mla_jax.interop.deepseek_config import (
    UnsupportedCheckpointError,
    model_fields_from_hf,
    read_hf_config,
)
from mla_jax.training import checkpoints
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import TrainState
from mla_jax.training.workdir import check_workdir, write_run_records

CONFIG_FILE = "config.py"


def experiment_config(hf_dir: str) -> ml_collections.ConfigDict:
    """Return base_config() with the checkpoint's model fields and its tokenizer, if it has one."""
    config = base_config()
    config.model = model_fields_from_hf(read_hf_config(hf_dir))
    config.seq_len = min(config.seq_len, config.model.max_seq_len)
    tokenizer = os.path.join(os.path.abspath(hf_dir), "tokenizer.json")
    if os.path.isfile(tokenizer):
        config.data.tokenizer = tokenizer
        config.data.bos_token, config.data.eos_token = _special_tokens(hf_dir)
        return config
    if config.model.vocab_size < ByteTokenizer.vocab_size:
        raise UnsupportedCheckpointError(
            f"{hf_dir} has no tokenizer.json, and its vocab_size={config.model.vocab_size} is "
            f"smaller than the byte tokenizer's {ByteTokenizer.vocab_size} ids; add the "
            "checkpoint's tokenizer.json to the folder."
        )
    logging.warning(
        "%s has no tokenizer.json, so the workdir's config uses the byte tokenizer, which is not "
        "the vocabulary the checkpoint was trained with.",
        hf_dir,
    )
    return config


def _special_tokens(hf_dir: str) -> tuple[str | None, str | None]:
    """BOS and EOS strings from tokenizer_config.json, which stores each as text or a dict."""
    path = os.path.join(hf_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None, None
    with open(path) as f:
        settings = json.load(f)
    tokens = []
    for name in ("bos_token", "eos_token"):
        token = settings.get(name)
        tokens.append(token.get("content") if isinstance(token, dict) else token)
    return tokens[0], tokens[1]


def write_workdir(
    result: ImportResult,
    config: ml_collections.ConfigDict,
    workdir: str,
    allow_moe_layers: bool = False,
) -> str:
    """Save result as step 0 of a checkpoint in workdir, with the records eval.py checks.

    Raises UnsupportedCheckpointError, before writing anything, if MoE layers were skipped and
    `allow_moe_layers` is False.
    """
    if result.moe_layers and not allow_moe_layers:
        raise UnsupportedCheckpointError(
            f"Layers {list(result.moe_layers)} are MoE layers, whose MLPs cannot be imported. "
            "Pass --allow_moe_layers to write a model whose MoE blocks apply attention only."
        )
    workdir = check_workdir(workdir)
    validate_experiment(config, result.config)
    os.makedirs(workdir, exist_ok=True)
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=result.params, opt_state=tx.init(result.params)
    )
    manager = checkpoints.make_manager(workdir, config)
    checkpoints.save(manager, state, result.config)
    manager.wait_until_finished()
    manager.close()
    write_run_records(workdir, config)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config_file_text(config))
    logging.info("Wrote the imported model to %s.", workdir)
    return workdir


def config_file_text(config: ml_collections.ConfigDict) -> str:
    """Python source of a config file that rebuilds `config` from base_config()."""
    defaults = _flatten(base_config().to_dict())
    lines = [
        '"""Config of a model imported by scripts/import_deepseek.py."""',
        "",
        "from mla_jax.config import base_config",
        "",
        "",
        "def get_config():",
        "    c = base_config()",
    ]
    for name, value in _flatten(config.to_dict()).items():
        if name not in defaults or defaults[name] != value:
            lines.append(f"    c.{name} = {value!r}")
    lines.append("    return c")
    return "\n".join(lines) + "\n"


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Flatten nested ConfigDict sections, but keep model.rope_scaling as one dict value."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.rope_scaling":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
