"""Convert the latest checkpoint of an MHA, GQA or MQA workdir into an MLA workdir at step 0.

The target workdir contains everything train.py, eval.py and scripts/generate.py need:

- `config.json`: the source's experiment config with the MLA model (see `target_config`);
- `config.py`: a config file that returns that config, for `--config=OUT/config.py`;
- `checkpoints/0/`: the converted parameters, a fresh optimizer state and the model config;
- `conversion.json`: the source, the sizes, the kept RoPE pairs and the factor errors. It is
  written last, so its presence marks a finished conversion.

Training from there starts at step 0 with a fresh optimizer and learning-rate schedule.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mla_jax import data
from mla_jax.config import (
    ModelConfig,
    base_config,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token_per_layer,
    model_config_from,
)
from mla_jax.conversion import rope_pairs
from mla_jax.conversion.factorize import convert_attention, max_kv_lora_rank
from mla_jax.evaluation import write_json_atomic
from mla_jax.model import Transformer
from mla_jax.training import checkpoints
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import TrainState
from mla_jax.training.workdir import write_run_records

RECORD_FILE = "conversion.json"
SOURCE_KINDS = ("mha", "gqa", "mqa")
GQA_WEIGHTS = ("w_q", "w_k", "w_v", "w_o")

# The config.py of a converted workdir; it embeds the config, which train.py never rewrites.
CONFIG_FILE_TEMPLATE = '''"""Experiment config of an MLA model from scripts/convert_to_mla.py.

Source: {source} (step {step}); kv_lora_rank={rank}, qk_rope_head_dim={rope_dim}.
Train from step 0 with
  python train.py --config={out}/config.py --workdir={out} --config.num_train_steps=STEPS
"""

from mla_jax.conversion import experiment_config_from_json

CONFIG_JSON = r"""
{config_json}
"""


def get_config():
    return experiment_config_from_json(CONFIG_JSON)
'''


class ConversionError(ValueError):
    """Invalid conversion input: a missing or unsuitable source, or sizes it cannot take."""


def experiment_config_from_json(values: str | dict) -> ml_collections.ConfigDict:
    """Return base_config() with the fields of a recorded config (a config.json) set over it."""
    if isinstance(values, str):
        values = json.loads(values)
    config = base_config()
    _assign(config, values)
    return config


def _assign(config: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
            _assign(config[key], value)
        else:
            config[key] = _as_tuples(value)


def _as_tuples(value):
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def read_source_config(workdir: str) -> ml_collections.ConfigDict:
    """Return the experiment config that train.py recorded in WORKDIR/config.json."""
    if not os.path.isdir(workdir):
        raise ConversionError(
            f"--workdir={workdir} does not exist; pass the --workdir of a train.py run."
        )
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConversionError(
            f"{path} not found: --workdir={workdir} is not a train.py workdir. Pass the folder "
            "that train.py --workdir wrote (it holds config.json and checkpoints/)."
        )
    with open(path) as f:
        return experiment_config_from_json(json.load(f))


def check_request(source: ModelConfig, rank: int, rope_dim: int, workdir: str) -> None:
    """Raise ConversionError unless the source is MHA/GQA/MQA and can take the requested sizes."""
    if source.attention not in SOURCE_KINDS:
        raise ConversionError(
            f"The model in --workdir={workdir} is already attention={source.attention!r}; "
            f"convert a run with attention in {SOURCE_KINDS}."
        )
    head_dim = source.head_dim
    if rope_dim < 2 or rope_dim % 2 or rope_dim > head_dim:
        nearest = min(max(2, rope_dim - rope_dim % 2), head_dim)
        raise ConversionError(
            f"--qk_rope_head_dim={rope_dim} is invalid: it must be even (RoPE rotates pairs of "
            f"dims) and from 2 to the source head_dim={head_dim}; for example {nearest}."
        )
    limit = max_kv_lora_rank(source.d_model, source.num_kv_heads, head_dim, rope_dim)
    if not 1 <= rank <= limit:
        raise ConversionError(
            f"--kv_lora_rank={rank} is invalid: it must lie in [1, {limit}]. At {limit}, "
            f"min(d_model={source.d_model}, num_kv_heads={source.num_kv_heads} * "
            f"(2 * head_dim={head_dim} - qk_rope_head_dim={rope_dim})), the latent holds the "
            "joint key-value matrix exactly, and a wider one adds nothing."
        )


def calibration_tokens(config: ml_collections.ConfigDict, windows: int) -> np.ndarray:
    """Return the first `windows` training windows of the run's data order: int32 [W, seq_len]."""
    tokenizer = data.make_tokenizer(config.data)
    stream = data.load_token_stream(config.data, "train", tokenizer)
    batches = data.TrainBatches(stream, config.seq_len, windows, config.seed)
    return batches.batch_at(0)["inputs"]


def choose_rope_pairs(
    model: nnx.Module, config, rope_dim: int, criterion: str, calibration_windows: int
) -> tuple[tuple, np.ndarray]:
    """Return the kept pairs [L][K][P/2] and the pair scores [L, K, H/2] they come from."""
    if criterion == "calibration":
        norms = rope_pairs.pair_norms_from_data(
            model, calibration_tokens(config, calibration_windows)
        )
    elif criterion == "weights":
        norms = rope_pairs.pair_norms_from_weights(model)
    elif criterion in rope_pairs.FIXED_CRITERIA:
        cfg = model.cfg
        shape = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim // 2)
        scores = rope_pairs.fixed_pair_scores(shape, criterion)
        return rope_pairs.top_pairs(scores, rope_dim // 2), scores
    else:
        raise ConversionError(
            f"Unknown RoPE pair criterion {criterion!r}; choose one of {rope_pairs.CRITERIA}."
        )
    scores = rope_pairs.pair_scores(*norms)
    return rope_pairs.top_pairs(scores, rope_dim // 2), scores


def target_config(
    source_config: ml_collections.ConfigDict, source: ModelConfig, rank: int, rope_dim: int, pairs
) -> ml_collections.ConfigDict:
    """Return the source's experiment config with the MLA model of the converted weights.

    Checkpoints go to the target workdir (checkpoint_dir None) whatever the source used.
    """
    config = experiment_config_from_json(source_config.to_json())
    config.checkpoint_dir = None
    m = config.model
    m.attention = "mla"
    m.num_kv_heads = source.num_kv_heads
    m.q_lora_rank = None
    m.kv_lora_rank = rank
    m.qk_nope_head_dim = source.head_dim - rope_dim
    m.qk_rope_head_dim = rope_dim
    m.v_head_dim = source.head_dim
    m.mla_latent_norm = False
    m.mla_rope_per_kv_head = True
    m.mla_rope_pairs = pairs
    return config


def converted_params(model: nnx.Module, target: ModelConfig, rank: int):
    """Return the target's parameters (nnx.State) and each layer's JointFactors.

    Every parameter outside attention is copied; attention comes from `convert_attention`.
    All arrays come back to the host first and go to the default device together, so a
    source restored onto several devices does not leave the result on mixed devices.
    """
    values = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    layers = []
    for layer, block in enumerate(model.blocks):
        weights = {name: np.asarray(getattr(block.attention, name)[...]) for name in GQA_WEIGHTS}
        attention, factors = convert_attention(weights, target.mla_rope_pairs[layer], rank)
        values["blocks"][layer]["attention"] = {
            name: value.astype(np.float32) for name, value in attention.items()
        }
        layers.append(factors)
    values = jax.tree.map(jnp.asarray, values)
    abstract = nnx.state(nnx.eval_shape(lambda: Transformer(target, rngs=nnx.Rngs(0))), nnx.Param)
    _check_same_shapes(values, nnx.to_pure_dict(abstract))
    nnx.replace_by_pure_dict(abstract, values)
    return abstract, layers


def _check_same_shapes(values: dict, expected: dict) -> None:
    """Raise AssertionError if the converted tree misses, adds or misshapes a target parameter."""
    got = jax.tree.map(lambda x: tuple(x.shape), values)
    want = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got != want:
        raise AssertionError(f"Converted parameters {got} do not match the target model {want}.")


def save_step_zero(out: str, config, model_cfg: ModelConfig, params: nnx.State) -> None:
    """Write `params` as the checkpoint at step 0 with a fresh optimizer state, then config.json."""
    os.makedirs(out, exist_ok=True)
    tx = make_optimizer(config)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    manager = checkpoints.make_manager(out, config)
    checkpoints.save(manager, state, model_cfg)
    manager.wait_until_finished()
    manager.close()
    write_run_records(out, config)


def host_copy(params: nnx.State) -> nnx.State:
    """Copy parameters to the host and back onto the default device, all on one device."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)


def write_workdir(out: str, config, target: ModelConfig, params: nnx.State, record: dict) -> None:
    """Write the checkpoint at step 0, config.json, config.py and, last, conversion.json."""
    save_step_zero(out, config, target, params)
    config_json = json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
    text = CONFIG_FILE_TEMPLATE.format(
        source=record["source_workdir"],
        step=record["source_step"],
        rank=target.kv_lora_rank,
        rope_dim=target.qk_rope_head_dim,
        out=out,
        config_json=config_json,
    )
    with open(os.path.join(out, "config.py"), "w", encoding="utf-8") as f:
        f.write(text)
    write_json_atomic(os.path.join(out, RECORD_FILE), record)


def _check_out(out: str) -> None:
    taken = [
        name
        for name in ("config.json", "checkpoints", RECORD_FILE)
        if os.path.exists(os.path.join(out, name))
    ]
    if taken:
        raise ConversionError(
            f"--out={out} already contains {taken}; choose an empty or new folder, or delete "
            "that one."
        )


def convert_workdir(
    workdir: str,
    out: str,
    rank: int,
    rope_dim: int,
    criterion: str = "calibration",
    calibration_windows: int = 32,
) -> dict:
    """Convert WORKDIR's latest checkpoint into an MLA workdir OUT; return conversion.json."""
    workdir, out = os.path.abspath(workdir), os.path.abspath(out)
    source_config = read_source_config(workdir)
    source = model_config_from(source_config.model, data.vocab_size(source_config.data))
    check_request(source, rank, rope_dim, workdir)
    _check_out(out)
    model, step = checkpoints.load_model(source_config, workdir)
    logging.info("Loaded %s step %d from %s.", source.attention, step, workdir)

    pairs, scores = choose_rope_pairs(
        model, source_config, rope_dim, criterion, calibration_windows
    )
    config = target_config(source_config, source, rank, rope_dim, pairs)
    target = model_config_from(config.model, source.vocab_size)
    params, factors = converted_params(model, target, rank)
    record = {
        "source_workdir": workdir,
        "source_step": step,
        "source_attention": source.attention,
        "kv_lora_rank": rank,
        "max_kv_lora_rank": max_kv_lora_rank(
            source.d_model, source.num_kv_heads, source.head_dim, rope_dim
        ),
        "qk_rope_head_dim": rope_dim,
        "rope_pair_criterion": criterion,
        "calibration_windows": calibration_windows if criterion == "calibration" else 0,
        "rope_pairs": pairs,
        "rope_pair_scores": scores.tolist(),
        "factor_relative_error": [f.relative_error for f in factors],
        "factor_kept_energy": [f.kept_energy for f in factors],
        "source_kv_cache_elements_per_token_per_layer": kv_cache_elements_per_token_per_layer(
            source
        ),
        "kv_cache_elements_per_token_per_layer": kv_cache_elements_per_token_per_layer(target),
        "source_kv_cache_bytes_per_token": kv_cache_bytes_per_token(source),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(target),
        "kv_cache_dtype": target.cache_dtype,
    }
    write_workdir(out, config, target, params, record)
    logging.info(
        "Wrote MLA (latent %d, %d RoPE keys of %d dims) to %s; max factor error %.3g.",
        rank,
        source.num_kv_heads,
        rope_dim,
        out,
        max(record["factor_relative_error"]),
    )
    return record
