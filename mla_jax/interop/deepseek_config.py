"""Translate the config.json of a DeepSeek-V2, V2-Lite or V3 checkpoint into a ModelConfig.

Both the field names of DeepSeek's released configs (`rope_theta` plus `rope_scaling`) and those
that transformers 5 writes (`rope_parameters`) are read. Fields this project cannot reproduce
raise `UnsupportedCheckpointError`, which names the field and its value. Fields that only
concern MoE layers (router, experts) are ignored, because MoE MLPs are not imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import ml_collections
from absl import logging

from mla_jax.config import ModelConfig, base_config, model_config_from

MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
# transformers 5.25 builds DeepseekV2/V3's q_a_layernorm and kv_a_layernorm with this eps,
# whatever rms_norm_eps is. This project uses norm_eps for every RMSNorm.
LATENT_NORM_EPS = 1e-6
_REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "max_position_embeddings",
)
_YARN_FIELDS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow")
_YARN_OPTIONAL = ("mscale", "mscale_all_dim")


class UnsupportedCheckpointError(ValueError):
    """A checkpoint field or tensor that this project cannot import, named in the message."""


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config.json in {hf_dir}; pass a Hugging Face model folder.")
    with open(path) as f:
        return json.load(f)


def model_fields_from_hf(hf: Mapping) -> ml_collections.ConfigDict:
    """Return `config.model` (base_config's fields) for the checkpoint described by hf."""
    _check_supported(hf)
    theta, scaling = rope_settings(hf)
    fields = base_config().model
    fields.attention = "mla"
    fields.vocab_size = hf["vocab_size"]
    fields.num_layers = hf["num_hidden_layers"]
    fields.d_model = hf["hidden_size"]
    fields.num_heads = hf["num_attention_heads"]
    fields.mlp_dim = hf["intermediate_size"]
    fields.q_lora_rank = hf.get("q_lora_rank")
    for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        fields[name] = hf[name]
    fields.max_seq_len = hf["max_position_embeddings"]
    fields.tie_embeddings = bool(hf.get("tie_word_embeddings", False))
    fields.rope_theta = float(theta)
    fields.rope_scaling = scaling
    fields.norm_eps = float(hf.get("rms_norm_eps", LATENT_NORM_EPS))
    return fields


def model_config_from_hf(hf: Mapping) -> ModelConfig:
    return model_config_from(model_fields_from_hf(hf), hf["vocab_size"])


def rope_is_interleaved(hf: Mapping) -> bool:
    """True when q_pe and k_pe pair adjacent dims (2i, 2i + 1), DeepSeek's layout.

    DeepSeek-V2 configs have no switch and are always interleaved; V3 has `rope_interleave`
    (default true in transformers 5.25).
    """
    return bool(hf.get("rope_interleave", True))


def rope_settings(hf: Mapping) -> tuple[float, dict | None]:
    """Return (rope_theta, rope_scaling fields or None) from either config.json layout."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedCheckpointError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported: MLA "
            "rotates all qk_rope_head_dim dims."
        )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise UnsupportedCheckpointError(
            f"RoPE scaling type {kind!r} is not supported; only 'yarn' and plain RoPE are."
        )
    return theta, _yarn_fields(params)


def _yarn_fields(params: Mapping) -> dict:
    if params.get("attention_factor") is not None:
        raise UnsupportedCheckpointError(
            f"YaRN attention_factor={params['attention_factor']} is not supported; this project "
            "derives the factor from mscale and mscale_all_dim, as DeepSeek does."
        )
    if params.get("truncate", True) is not True:
        raise UnsupportedCheckpointError(
            "YaRN truncate=false is not supported; DeepSeek rounds the ramp bounds to integers."
        )
    if params.get("factor") is None or params.get("original_max_position_embeddings") is None:
        raise UnsupportedCheckpointError(
            f"YaRN scaling needs factor and original_max_position_embeddings, got {dict(params)}."
        )
    fields = {"type": "yarn"}
    # transformers 5.25 treats a missing or null beta as its default (32 and 1), as done here.
    defaults = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}
    for name in _YARN_FIELDS + _YARN_OPTIONAL:
        value = params.get(name)
        fields[name] = defaults[name] if value is None else value
    fields["factor"] = float(fields["factor"])
    fields["original_max_position_embeddings"] = int(fields["original_max_position_embeddings"])
    return fields


def _check_supported(hf: Mapping) -> None:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedCheckpointError(
            f"config.json model_type={model_type!r} is not supported; expected one of "
            f"{MODEL_TYPES}."
        )
    missing = [name for name in _REQUIRED_FIELDS if hf.get(name) is None]
    if missing:
        raise UnsupportedCheckpointError(f"config.json lacks the fields {missing}.")
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "unknown")
        raise UnsupportedCheckpointError(
            f"Quantized checkpoints ({method}) are not supported; convert the weights to "
            "bfloat16 or float32 first."
        )
    for name, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(name, supported) != supported:
            raise UnsupportedCheckpointError(
                f"config.json {name}={hf[name]!r} is not supported; this project needs "
                f"{supported!r}."
            )
    kv_heads = hf.get("num_key_value_heads")
    if kv_heads is not None and kv_heads != hf["num_attention_heads"]:
        raise UnsupportedCheckpointError(
            f"num_key_value_heads={kv_heads} differs from num_attention_heads="
            f"{hf['num_attention_heads']}; MLA up-projects one key and value per query head."
        )
    eps = hf.get("rms_norm_eps", LATENT_NORM_EPS)
    if eps != LATENT_NORM_EPS:
        logging.warning(
            "rms_norm_eps=%g: DeepSeek's q_a_layernorm and kv_a_layernorm use %g, but the imported "
            "model uses %g for every RMSNorm, so latent norms differ slightly.",
            eps,
            LATENT_NORM_EPS,
            eps,
        )
