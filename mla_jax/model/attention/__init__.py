"""Attention kinds behind one interface (see `base`): GQA for mha/gqa/mqa, and MLA."""

from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.model.attention.gqa import GroupedQueryAttention
from mla_jax.model.attention.mla import MultiHeadLatentAttention


def make_attention(
    cfg: ModelConfig, out_std: float, *, rngs: nnx.Rngs, layer: int = 0
) -> nnx.Module:
    """Build the attention layer that `cfg.attention` selects, for block number `layer`."""
    if cfg.attention == "mla":
        return MultiHeadLatentAttention(cfg, out_std, rngs=rngs, layer=layer)
    return GroupedQueryAttention(cfg, out_std, rngs=rngs)
