"""Print a markdown table of KV-cache size per token for the project's configs and published models.

Sizes come from `mla_jax.config.kv_cache_elements_per_token_per_layer` and
`kv_cache_bytes_per_token`, the functions that eval.py reports with, so the table and the
evaluation results cannot disagree.

Usage: python scripts/cache_table.py [--configs_dir=configs]
"""

from __future__ import annotations

import glob
import importlib.util
import os

from absl import app, flags

from mla_jax.config import (
    ModelConfig,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token_per_layer,
    model_config_from,
)

_CONFIGS_DIR = flags.DEFINE_string(
    "configs_dir",
    "configs",
    "Folder of experiment configs (*.py with get_config(kind)); '' skips them.",
)

KINDS = ("mha", "gqa", "mqa", "mla")
BYTE_VOCAB = 258  # vocabulary given to model_config_from; cache sizes do not depend on it


def _published(attention: str, num_layers: int, num_heads: int, **fields) -> ModelConfig:
    """Build the ModelConfig of a published model from its attention fields.

    Fields that do not change the cache size (vocabulary, widths, MLP, context length) are
    placeholders, not the model's real values.
    """
    head_dim = fields.pop("head_dim", 128)
    values = {
        "vocab_size": 32000,
        "attention": attention,
        "num_layers": num_layers,
        "d_model": num_heads * head_dim,
        "num_heads": num_heads,
        "num_kv_heads": fields.pop("num_kv_heads", num_heads),
        "head_dim": head_dim,
        "mlp_dim": 4 * num_heads * head_dim,
        "q_lora_rank": None,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "mla_latent_norm": True,
        "mla_rope_per_kv_head": False,
        "mla_rope_pairs": None,
        "max_seq_len": 4096,
        "tie_embeddings": False,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "dtype": "bfloat16",
        "cache_dtype": "bfloat16",
        "mla_decode": "absorbed",
    }
    values.update(fields)
    return ModelConfig(**values)


def published_models() -> dict[str, ModelConfig]:
    """Return published models by name, with their attention hyperparameters."""
    return {
        "DeepSeek-V2": _published(
            "mla", 60, 128, kv_lora_rank=512, qk_rope_head_dim=64, q_lora_rank=1536
        ),
        "DeepSeek-V2 heads as MHA": _published("mha", 60, 128, head_dim=128),
        "DeepSeek-V2-Lite": _published("mla", 27, 16, kv_lora_rank=512, qk_rope_head_dim=64),
        "DeepSeek-V3": _published(
            "mla", 61, 128, kv_lora_rank=512, qk_rope_head_dim=64, q_lora_rank=1536
        ),
        "Llama-2-7B": _published("mha", 32, 32, head_dim=128),
        "Llama-3-8B": _published("gqa", 32, 32, num_kv_heads=8, head_dim=128),
        "Mistral-7B": _published("gqa", 32, 32, num_kv_heads=8, head_dim=128),
    }


def project_models(configs_dir: str) -> dict[str, ModelConfig]:
    """Load one ModelConfig per config file and attention kind, named 'file:kind'."""
    models = {}
    for path in sorted(glob.glob(os.path.join(configs_dir, "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            continue
        for kind in KINDS:
            config = module.get_config(kind)
            models[f"{name}:{kind}"] = model_config_from(config.model, BYTE_VOCAB)
    return models


def cached_terms(cfg: ModelConfig) -> str:
    """Describe what one layer caches per token, as a formula."""
    if cfg.attention == "mla" and cfg.mla_rope_per_kv_head:
        return f"latent {cfg.kv_lora_rank} + {cfg.num_kv_heads} RoPE keys x {cfg.qk_rope_head_dim}"
    if cfg.attention == "mla":
        return f"latent {cfg.kv_lora_rank} + RoPE key {cfg.qk_rope_head_dim}"
    return f"2 x {cfg.num_kv_heads} x {cfg.head_dim} (key, value per KV head)"


def markdown_table(models: dict[str, ModelConfig]) -> str:
    header = (
        "| Model | Attention | Layers | Cached per layer per token | Elements per layer per token "
        "| Bytes per token, float32 | Bytes per token, bfloat16 |"
    )
    lines = [header, "|---|---|---:|---|---:|---:|---:|"]
    for name, cfg in models.items():
        lines.append(
            f"| {name} | {cfg.attention} | {cfg.num_layers} | {cached_terms(cfg)} "
            f"| {kv_cache_elements_per_token_per_layer(cfg):,} "
            f"| {kv_cache_bytes_per_token(cfg, 'float32'):,} "
            f"| {kv_cache_bytes_per_token(cfg, 'bfloat16'):,} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if _CONFIGS_DIR.value:
        print("Project configs:\n")
        print(markdown_table(project_models(_CONFIGS_DIR.value)))
        print()
    print("Published models:\n")
    print(markdown_table(published_models()))


if __name__ == "__main__":
    app.run(main)
