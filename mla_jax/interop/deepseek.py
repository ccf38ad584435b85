"""Import the weights of a DeepSeek-V2, V2-Lite or V3 checkpoint into this project's MLA model.

`import_checkpoint(hf_dir)` reads a Hugging Face model folder (config.json plus one or several
safetensors files, float32, float16 or bfloat16) and returns the ModelConfig and the nnx
parameters of a `Transformer` whose outputs match transformers 5.25's DeepseekV2/V3 models
(tests/test_deepseek_import.py compares them in float32).

Imported: token embedding, lm_head (or tied embeddings), every RMSNorm, MLA attention with or
without query compression, and the SwiGLU MLPs of dense layers. The vocabulary is padded to a
multiple of 128 with zero rows, whose logits the model masks.

Not imported: the MLPs of MoE layers (router, routed and shared experts). Those blocks get an
all-zero MLP, so they apply attention only; `ImportResult.moe_layers` lists them and a warning
names them. The imported model matches DeepSeek's logits only when that list is empty. V3's
multi-token-prediction layers (indices past num_hidden_layers) are skipped as well.

RoPE layout: DeepSeek's q_pe and k_pe rotate adjacent pairs (2i, 2i + 1) by frequency i, while
`mla_jax.model.layers.apply_rope` rotates the half-split pairs (i, i + R/2). Import therefore
reorders the RoPE output dims of the query projection and of kv_a_proj_with_mqa as
[0, 2, 4, ..., 1, 3, 5, ...], which moves pair i to (i, i + R/2). Queries and keys move alike,
so the scores are unchanged. V3 checkpoints with rope_interleave=false are already half-split.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  # registers bfloat16 with numpy, so safetensors can read it
import numpy as np
from absl import logging
from flax import nnx
from safetensors import safe_open

from mla_jax.config import ModelConfig
from mla_jax.interop.deepseek_config import (
    UnsupportedCheckpointError,
    model_config_from_hf,
    read_hf_config,
    rope_is_interleaved,
)
from mla_jax.model import Transformer

_FLOAT_DTYPES = ("F32", "F16", "BF16")
_INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """An imported checkpoint: config, parameters, and the MoE layers whose MLPs are zero."""

    config: ModelConfig
    params: nnx.State
    moe_layers: tuple[int, ...]

    def model(self) -> Transformer:
        return nnx.merge(_abstract_model(self.config)[0], self.params)


class SafetensorsCheckpoint:
    """The tensors of a checkpoint folder by name, read one at a time as float32 numpy arrays."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        self.files = _tensor_files(hf_dir)  # tensor name -> file name
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise UnsupportedCheckpointError(
                f"Tensor {name} is missing from the safetensors files in {self.hf_dir}."
            )
        with safe_open(os.path.join(self.hf_dir, self.files[name]), framework="np") as f:
            dtype = f.get_slice(name).get_dtype()
            if dtype not in _FLOAT_DTYPES:
                raise UnsupportedCheckpointError(
                    f"Tensor {name} has dtype {dtype}; only {_FLOAT_DTYPES} can be imported."
                )
            value = f.get_tensor(name)
        self.used.add(name)
        return np.asarray(value, dtype=np.float32)

    def has(self, name: str) -> bool:
        return name in self.files


def _tensor_files(hf_dir: str) -> dict[str, str]:
    index = os.path.join(hf_dir, _INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            return dict(json.load(f)["weight_map"])
    paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not paths:
        raise FileNotFoundError(f"No *.safetensors file and no {_INDEX_FILE} in {hf_dir}.")
    files = {}
    for path in paths:
        with safe_open(path, framework="np") as f:
            files.update(dict.fromkeys(f.keys(), os.path.basename(path)))
    return files


def import_checkpoint(hf_dir: str) -> ImportResult:
    """Read config.json and the weights in hf_dir into this project's model."""
    hf = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf)
    weights = SafetensorsCheckpoint(hf_dir)
    rope_order = _rope_order(cfg.qk_rope_head_dim, rope_is_interleaved(hf))
    blocks, moe_layers = {}, []
    for layer in range(cfg.num_layers):
        blocks[layer], is_moe = _block_params(weights, layer, cfg, rope_order)
        if is_moe:
            moe_layers.append(layer)
    values = {"blocks": blocks, **_outer_params(weights, cfg)}
    _, abstract = _abstract_model(cfg)
    _check_shapes(nnx.to_pure_dict(abstract), values)
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, values))
    _log_skipped(weights, cfg, moe_layers)
    return ImportResult(cfg, abstract, tuple(moe_layers))


def _abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.graphdef(model), nnx.state(model, nnx.Param)


def _rope_order(rope_dim: int, interleaved: bool) -> np.ndarray:
    """Return the source dim of each half-split RoPE dim: [0, 2, ..., 1, 3, ...] if interleaved."""
    if not interleaved:
        return np.arange(rope_dim)
    return np.concatenate([np.arange(0, rope_dim, 2), np.arange(1, rope_dim, 2)])


def _outer_params(weights: SafetensorsCheckpoint, cfg: ModelConfig) -> dict:
    """Embedding, final norm and lm_head, with the vocabulary padded by zero rows."""
    pad = cfg.padded_vocab_size - cfg.vocab_size
    table = weights.get("model.embed_tokens.weight")  # [V, D]
    params = {
        "embedding": {"table": np.pad(table, ((0, pad), (0, 0)))},
        "final_norm": {"scale": weights.get("model.norm.weight")},
    }
    if not cfg.tie_embeddings:
        lm_head = weights.get("lm_head.weight")  # [V, D]
        params["w_out"] = np.pad(np.einsum("VD->DV", lm_head), ((0, 0), (0, pad)))
    return params


def _block_params(weights, layer: int, cfg: ModelConfig, rope_order: np.ndarray):
    """Return the parameters of block `layer` and whether its MLP is an MoE (left at zero)."""
    prefix = f"model.layers.{layer}."
    mlp, is_moe = _mlp_params(weights, prefix + "mlp.", cfg)
    params = {
        "attention_norm": {"scale": weights.get(prefix + "input_layernorm.weight")},
        "attention": _attention_params(weights, prefix + "self_attn.", cfg, rope_order),
        "mlp_norm": {"scale": weights.get(prefix + "post_attention_layernorm.weight")},
        "mlp": mlp,
    }
    return params, is_moe


def _attention_params(weights, prefix: str, cfg: ModelConfig, rope_order: np.ndarray) -> dict:
    """Map the MLA weights: torch Linear stores [out, in], this project [in, ...out]."""
    n, c = cfg.num_heads, cfg.kv_lora_rank
    hn, hv = cfg.qk_nope_head_dim, cfg.v_head_dim
    params = {}
    if cfg.q_lora_rank is None:
        w_q = weights.get(prefix + "q_proj.weight").reshape(n, hn + cfg.qk_rope_head_dim, -1)
        params["w_q"] = _reorder_query_rope(np.einsum("NHD->DNH", w_q), hn, rope_order)
    else:
        params["w_dq"] = np.einsum("QD->DQ", weights.get(prefix + "q_a_proj.weight"))
        params["q_norm"] = {"scale": weights.get(prefix + "q_a_layernorm.weight")}
        w_uq = weights.get(prefix + "q_b_proj.weight").reshape(n, hn + cfg.qk_rope_head_dim, -1)
        params["w_uq"] = _reorder_query_rope(np.einsum("NHQ->QNH", w_uq), hn, rope_order)
    w_dkv = np.einsum("CD->DC", weights.get(prefix + "kv_a_proj_with_mqa.weight"))  # [D, C + R]
    params["w_dkv"] = np.concatenate([w_dkv[:, :c], w_dkv[:, c:][:, rope_order]], axis=1)
    params["kv_norm"] = {"scale": weights.get(prefix + "kv_a_layernorm.weight")}
    # kv_b_proj's output holds, per head, the Hn key dims followed by the Hv value dims.
    w_ukv = weights.get(prefix + "kv_b_proj.weight").reshape(n, hn + hv, c)
    params["w_uk"] = np.einsum("NHC->CNH", w_ukv[:, :hn])
    params["w_uv"] = np.einsum("NHC->CNH", w_ukv[:, hn:])
    w_o = weights.get(prefix + "o_proj.weight").reshape(-1, n, hv)  # [D, N, Hv]
    params["w_o"] = np.einsum("DNH->NHD", w_o)
    return params


def _reorder_query_rope(w: np.ndarray, nope_dim: int, rope_order: np.ndarray) -> np.ndarray:
    """Reorder the RoPE dims of a query projection [..., N, Hn + R], keeping the Hn dims."""
    return np.concatenate([w[..., :nope_dim], w[..., nope_dim:][..., rope_order]], axis=-1)


def _mlp_params(weights, prefix: str, cfg: ModelConfig) -> tuple[dict, bool]:
    """SwiGLU weights of a dense layer, or zeros (and True) for an MoE layer."""
    if weights.has(prefix + "gate_proj.weight"):
        return {
            "w_gate": np.einsum("FD->DF", weights.get(prefix + "gate_proj.weight")),
            "w_up": np.einsum("FD->DF", weights.get(prefix + "up_proj.weight")),
            "w_down": np.einsum("DF->FD", weights.get(prefix + "down_proj.weight")),
        }, False
    if not any(name.startswith(prefix) for name in weights.files):
        raise UnsupportedCheckpointError(
            f"No tensor under {prefix} in {weights.hf_dir}: neither a dense MLP nor an MoE."
        )
    d, f = cfg.d_model, cfg.mlp_dim
    zeros = {
        "w_gate": np.zeros((d, f), np.float32),
        "w_up": np.zeros((d, f), np.float32),
        "w_down": np.zeros((f, d), np.float32),
    }
    return zeros, True


def _check_shapes(expected: dict, values: dict, path: str = "") -> None:
    """Raise on any parameter missing from values or shaped unlike the model's."""
    for key, want in expected.items():
        name = f"{path}{key}"
        if key not in values:
            raise UnsupportedCheckpointError(f"The import produced no value for parameter {name}.")
        if isinstance(want, dict):
            _check_shapes(want, values[key], name + ".")
        elif tuple(values[key].shape) != tuple(want.shape):
            raise UnsupportedCheckpointError(
                f"Parameter {name} came out with shape {values[key].shape}, but the model built "
                f"from config.json expects {want.shape}; the weights and config.json disagree."
            )


def _log_skipped(weights: SafetensorsCheckpoint, cfg: ModelConfig, moe_layers: list[int]) -> None:
    if moe_layers:
        logging.warning(
            "Layers %s have MoE MLPs, which were not imported: their blocks apply attention only "
            "(zero MLP), so the model's logits differ from the checkpoint's. Attention, norms and "
            "the other layers were imported.",
            moe_layers,
        )
    unused = sorted(set(weights.files) - weights.used)
    moe_prefixes = tuple(f"model.layers.{layer}.mlp." for layer in moe_layers)
    extra_layers = sorted(
        {_layer_index(name) for name in unused} - {None} - set(range(cfg.num_layers))
    )
    if extra_layers:
        logging.info(
            "Skipped layers %s past num_hidden_layers (multi-token prediction).", extra_layers
        )
    other = [
        name
        for name in unused
        if not name.startswith(moe_prefixes) and _layer_index(name) not in extra_layers
    ]
    if other:
        logging.warning("%d tensors were not imported: %s", len(other), other[:20])


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        return int(parts[2])
    return None
