"""Sweep configs: the experiment config of one run, parameter matching, and a training FLOP count.

A sweep config (`configs/ablation/*.py`) is a ConfigDict with these fields:

- `base`: a full experiment config (`mla_jax.config.base_config()` with the run settings).
- `seeds`: the seeds that every member is trained with.
- `members`: member name -> overrides of `base.model`, for example
  `{'attention': 'gqa', 'num_kv_heads': 2, 'mlp_dim': 600}`. Build it with `sort_keys=False`,
  because its order is the run order and the table order.
- `reference`: the member that the others are parameter-matched to (the MHA member).
- `decode_tokens`, `decode_batch_size`, `decode_repeats`: the decode-speed measurement
  (`mla_jax.ablation.runner.decode_tokens_per_second`).

Members are parameter-matched by their MLP width alone: the parameter count is linear in
`mlp_dim`, so two abstract counts give the slope and the width that meets the reference.
"""

from __future__ import annotations

import json
import posixpath
import re

import ml_collections
from flax import nnx

from mla_jax import data
from mla_jax.config import ConfigError, ModelConfig, model_config_from
from mla_jax.model import Transformer, count_params

# Members must have at most this relative parameter gap to the reference member.
PARAM_TOLERANCE = 0.02
# MLP widths are rounded to a multiple of this.
MLP_MULTIPLE = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DECODE_FIELDS = ("decode_tokens", "decode_batch_size", "decode_repeats")


def check_sweep(sweep: ml_collections.ConfigDict) -> None:
    """Check the sweep's fields (listed in the module docstring); raise ConfigError if one is invalid."""
    for field in ("base", "seeds", "members", "reference") + DECODE_FIELDS:
        if field not in sweep:
            raise ConfigError(
                f"The sweep config is missing field {field!r}. See mla_jax.ablation.sweep."
            )
    for field in DECODE_FIELDS:
        if not isinstance(sweep[field], int) or sweep[field] < 1:
            raise ConfigError(f"sweep.{field}={sweep[field]!r} must be a positive integer.")
    if not sweep.members:
        raise ConfigError("The sweep config lists no members.")
    for name in sweep.members:
        if not _NAME.match(name):
            raise ConfigError(
                f"Invalid member name {name!r}: it names a folder, so use letters, digits, _ . -"
            )
    seeds = list(sweep.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"sweep.seeds={sweep.seeds!r} must be distinct integers, at least one.")
    if sweep.reference not in sweep.members:
        raise ConfigError(
            f"sweep.reference={sweep.reference!r} is not a member: {list(sweep.members)}."
        )


def member_config(
    sweep: ml_collections.ConfigDict, name: str, seed: int
) -> ml_collections.ConfigDict:
    """Build the experiment config of member `name` with `seed`: a copy of base plus overrides."""
    if name not in sweep.members:
        raise ConfigError(f"Unknown member {name!r}. The sweep has {list(sweep.members)}.")
    config = sweep.base.copy_and_resolve_references()
    for field, value in sweep.members[name].items():
        if field not in config.model:
            raise ConfigError(
                f"Member {name!r} overrides config.model.{field}, which does not exist."
            )
        config.model[field] = value
    config.seed = seed
    if config.get("checkpoint_dir"):
        # One checkpoint folder per run: a shared one would resume each run from another's state.
        # posixpath, because the folder may be a URL such as gs://bucket/path.
        config.checkpoint_dir = posixpath.join(config.checkpoint_dir, member_path(name, seed))
    return config


def member_path(name: str, seed: int) -> str:
    """Return the relative folder of one run, under WORKDIR/runs/ and under a shared checkpoint_dir."""
    return posixpath.join(name, f"seed_{seed}")


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """Convert the config to plain JSON values, as train() writes it to config.json."""
    return json.loads(config.to_json())


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """Build the run's ModelConfig, loading the tokenizer only if `model.vocab_size` is unset."""
    vocab = config.model.vocab_size
    return model_config_from(
        config.model, vocab if vocab is not None else data.vocab_size(config.data)
    )


def num_params(cfg: ModelConfig) -> int:
    """Count parameters (embeddings included) of a model built abstractly, without memory or FLOPs."""
    return count_params(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def match_mlp_dim(cfg: ModelConfig, target: int, multiple: int = MLP_MULTIPLE) -> int:
    """Pick the `mlp_dim` (a multiple of `multiple`) whose parameter count is nearest `target`.

    Raises ConfigError when no positive width comes within PARAM_TOLERANCE of the target.
    """
    low = num_params(cfg.replace(mlp_dim=multiple))
    slope = (num_params(cfg.replace(mlp_dim=2 * multiple)) - low) / multiple
    width = max(multiple, multiple * round((multiple + (target - low) / slope) / multiple))
    got = num_params(cfg.replace(mlp_dim=width))
    if abs(got - target) > PARAM_TOLERANCE * target:
        raise ConfigError(
            f"No MLP width brings {cfg.attention} within {PARAM_TOLERANCE:.0%} of {target:,} "
            f"parameters (best: mlp_dim={width}, {got:,}). Shrink the attention or widen the reference."
        )
    return width


def member_models(sweep: ml_collections.ConfigDict) -> dict[str, ModelConfig]:
    """Build each member's ModelConfig, in the sweep's order."""
    return {
        name: model_config(member_config(sweep, name, sweep.seeds[0])) for name in sweep.members
    }


def train_flops(config: ml_collections.ConfigDict, cfg: ModelConfig, params: int) -> float:
    """Estimate a run's training FLOPs: 6 per parameter per token, plus the attention matmuls.

    Counting every parameter includes the embedding, which is right for tied embeddings (the
    output projection multiplies by it). The attention term counts full T x T score and value
    matmuls (forward 2 * T * (qk + v) per head and token, backward twice that), as a dense kernel
    computes them before masking.
    """
    tokens = config.num_train_steps * config.batch_size * config.seq_len
    if cfg.attention == "mla":
        qk, v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        qk, v = cfg.head_dim, cfg.head_dim
    attention = 6 * cfg.num_layers * cfg.num_heads * config.seq_len * (qk + v)
    return float(tokens) * (6 * params + attention)
