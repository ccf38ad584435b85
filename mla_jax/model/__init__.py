"""Model code: layers, attention kinds and the transformer. Reads only a ModelConfig."""

from mla_jax.model.transformer import Block, Transformer, count_params

__all__ = ["Block", "Transformer", "count_params"]
