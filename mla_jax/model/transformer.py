"""The decoder-only transformer: embedding, pre-norm blocks, final norm, output projection.

Blocks are a Python list, unrolled at trace time. With `cfg.remat` other than none, each
block's forward is wrapped in `nnx.remat` with the matching `jax.checkpoint` policy, so the
backward pass recomputes what the policy does not keep. `forward_cached` is the same computation over
a KV cache, for decoding; `mla_jax.decoding` drives it. The output covers the padded vocabulary
(a multiple of 128, so it shards on any mesh); logits of the padding ids are set to a large
negative value, so a softmax over them sees only the real vocabulary.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.model.attention import make_attention
from mla_jax.model.attention.base import MASK_VALUE, cached_attention
from mla_jax.model.layers import Embedding, RMSNorm, SwiGLU, einsum, make_param
from mla_jax.sharding import constrain

# Logical names of the residual stream [B, T, D] and of the logits [B, T, V]; on a mesh they
# keep activations split by batch (see mla_jax.sharding), elsewhere they change nothing.
RESIDUAL_AXES = ("activation_batch", "activation_length", "activation_embed")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
# config.model.remat -> what jax.checkpoint keeps for the backward pass (None: only the inputs).
REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """x + attention(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, layer: int = 0):
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = make_attention(cfg, out_std, rngs=rngs, layer=layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, out_std, jnp.dtype(cfg.dtype), rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))

    def forward_cached(self, x, positions, cache: dict[str, jax.Array]):
        """Like `__call__`, attending over the cache after writing x's keys and values into it."""
        attention_out, cache = cached_attention(
            self.attention, self.attention_norm(x), positions, cache
        )
        x = x + attention_out
        return x + self.mlp(self.mlp_norm(x)), cache


class Transformer(nnx.Module):
    """Maps tokens [B, T] to float32 logits [B, T, V] over the padded vocabulary."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = Embedding(cfg.padded_vocab_size, cfg.d_model, rngs=rngs)
        self.blocks = nnx.List(
            [Block(cfg, rngs=rngs, layer=layer) for layer in range(cfg.num_layers)]
        )
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.w_out = make_param(rngs, (cfg.d_model, cfg.padded_vocab_size), ("embed", "vocab"))

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Full causal forward pass; positions default to 0..T-1 in every row."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = constrain(self.embedding(tokens, jnp.dtype(self.cfg.dtype)), RESIDUAL_AXES)
        apply_block = _block_forward(self.cfg.remat)
        for block in self.blocks:
            x = constrain(apply_block(block, x, positions), RESIDUAL_AXES)
        return self.output_logits(x)

    def forward_cached(self, tokens: jax.Array, positions: jax.Array, caches: tuple[dict, ...]):
        """Logits [B, T, V] of tokens at positions [B, T], attending over one cache per layer.

        Each layer first writes the tokens' keys and values at slots `positions`, so tokens see
        the cached past and each other causally. Returns the logits and the updated caches.
        """
        x = constrain(self.embedding(tokens, jnp.dtype(self.cfg.dtype)), RESIDUAL_AXES)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x, cache = block.forward_cached(x, positions, cache)
            x = constrain(x, RESIDUAL_AXES)
            new_caches.append(cache)
        return self.output_logits(x), tuple(new_caches)

    def output_logits(self, x: jax.Array) -> jax.Array:
        """Final norm and output projection; logits are float32, padding ids masked."""
        x = self.final_norm(x)
        dtype = jnp.dtype(self.cfg.dtype)
        if self.cfg.tie_embeddings:
            logits = self.embedding.attend(x, dtype)
        else:
            logits = einsum("BTD,DV->BTV", x, self.w_out, dtype)
        is_real = jnp.arange(self.cfg.padded_vocab_size) < self.cfg.vocab_size
        return constrain(jnp.where(is_real, logits.astype(jnp.float32), MASK_VALUE), LOGITS_AXES)


def _apply_block(block: Block, x: jax.Array, positions: jax.Array) -> jax.Array:
    return block(x, positions)


def _block_forward(remat: str):
    """Return fn(block, x, positions) that runs the block under the remat policy `remat`."""
    if remat == "none":
        return _apply_block
    return nnx.remat(_apply_block, policy=REMAT_POLICIES[remat])


def count_params(model: nnx.Module) -> int:
    """Number of parameter elements, padded vocabulary rows included."""
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
