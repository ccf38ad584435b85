"""The KV cache of a whole model, and forward passes that read and extend it.

The cache stores, per layer, the arrays that the layer's attention kind lists in `cache_spec`
(see `mla_jax.model.attention`), plus one write index per sequence. Slot s of a row contains the
token at position s, so a row's index is both its next write slot and its next RoPE position.
Rows of a batch may be at different positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.sharding import constrain


class DecodeCache(NamedTuple):
    """Per-layer cached arrays [B, ..., S, F] and index int32 [B], the tokens stored per row."""

    layers: tuple[dict[str, jax.Array], ...]
    index: jax.Array


def init_cache(
    model: nnx.Module, batch: int, max_len: int, dtype: str | None = None
) -> DecodeCache:
    """Allocate an empty cache of `max_len` slots per row, in `dtype` (default cfg.cache_dtype)."""
    cfg: ModelConfig = model.cfg
    if max_len > cfg.max_seq_len:
        raise ValueError(
            f"A KV cache of {max_len} slots exceeds config.model.max_seq_len={cfg.max_seq_len}; "
            f"use at most {cfg.max_seq_len} slots or raise max_seq_len."
        )
    dtype = jnp.dtype(dtype or cfg.cache_dtype)
    layers = []
    for block in model.blocks:
        spec = block.attention.cache_spec(batch, max_len, dtype)
        layers.append({name: jnp.zeros(s.shape, s.dtype) for name, s in spec.items()})
    return DecodeCache(_constrain_layers(layers), jnp.zeros((batch,), jnp.int32))


def _constrain_layers(layers) -> tuple[dict[str, jax.Array], ...]:
    """Shard cached arrays [B, ..., S, F] by batch, and by KV heads where they divide.

    Every cache layout has batch first and slots and features last; axes in between are KV
    heads (GQA's K; MLA has none). Outside `mla_jax.sharding.use_mesh_rules` nothing changes.
    """

    def names(x):
        return ("cache_batch",) + ("cache_heads",) * (x.ndim - 3) + (None, None)

    return tuple({k: constrain(v, names(v)) for k, v in layer.items()} for layer in layers)


def cache_nbytes(cache: DecodeCache) -> int:
    """Bytes of the cached keys, values or latents; the index adds 4 bytes per row on top."""
    return sum(x.nbytes for layer in cache.layers for x in layer.values())


def cache_capacity(cache: DecodeCache) -> int:
    """Slots per row."""
    return next(iter(cache.layers[0].values())).shape[-2]


def forward_cached(
    model: nnx.Module, tokens: jax.Array, cache: DecodeCache, lengths: jax.Array | None = None
) -> tuple[jax.Array, DecodeCache]:
    """Run tokens [B, T] at positions index + 0..T-1, writing them into the cache.

    Returns float32 logits [B, T, V] and the cache with each index advanced by `lengths` [B]
    (default T). With right-padded rows, `lengths` excludes the padding: its entries land in
    slots that the row's next tokens overwrite before anything attends to them.
    The caller keeps index + T within the capacity; a write past it is dropped.
    """
    steps = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    positions = cache.index[:, None] + steps  # [B, T]
    logits, layers = model.forward_cached(tokens, positions, cache.layers)
    layers = _constrain_layers(layers)
    advance = tokens.shape[1] if lengths is None else lengths.astype(jnp.int32)
    return logits, DecodeCache(layers, cache.index + advance)


def prefill(
    model: nnx.Module, prompts: jax.Array, lengths: jax.Array, cache: DecodeCache
) -> tuple[jax.Array, DecodeCache]:
    """Write right-padded prompts [B, P] of `lengths` [B] into the cache.

    Returns the logits [B, V] after each row's last prompt token, and the cache.
    """
    logits, cache = forward_cached(model, prompts, cache, lengths)
    last = (lengths - 1).astype(jnp.int32)[:, None, None]
    return jnp.take_along_axis(logits, last, axis=1)[:, 0], cache


def decode_step(
    model: nnx.Module, tokens: jax.Array, cache: DecodeCache
) -> tuple[jax.Array, DecodeCache]:
    """Feed one token [B] per row; returns the next-token logits [B, V] and the cache."""
    logits, cache = forward_cached(model, tokens[:, None], cache)
    return logits[:, 0], cache
