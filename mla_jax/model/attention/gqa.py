"""Grouped-query attention, which covers MHA (K = N) and MQA (K = 1).

Query head n attends with KV head n // G, where G = N // K: the N query heads are laid out as K
consecutive groups of G heads.

Caches, per token and layer: the RoPE-rotated key and the value of every KV head, 2 * K * H
elements.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.model.attention.base import causal_mask, masked_softmax
from mla_jax.model.layers import apply_rope, einsum, make_param


class GroupedQueryAttention(nnx.Module):
    """MHA / GQA / MQA with rotary positions on queries and keys."""

    def __init__(self, cfg: ModelConfig, out_std: float, *, rngs: nnx.Rngs):
        n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
        self.w_q = make_param(rngs, (d, n, h), ("embed", "heads", "head_dim"))
        self.w_k = make_param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"))
        self.w_v = make_param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"))
        self.w_o = make_param(rngs, (n, h, d), ("heads", "head_dim", "embed"), std=out_std)
        self.num_kv_heads, self.head_dim = k, h
        self.groups = n // k
        self.scale = 1.0 / math.sqrt(h)
        self.rope_theta = cfg.rope_theta
        self.dtype = jnp.dtype(cfg.dtype)

    def cache_spec(self, batch: int, max_len: int, dtype) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (batch, max_len, self.num_kv_heads, self.head_dim)
        return {"key": jax.ShapeDtypeStruct(shape, dtype), "value": jax.ShapeDtypeStruct(shape, dtype)}

    def project_kv(self, x: jax.Array, positions: jax.Array) -> dict[str, jax.Array]:
        key = einsum("BTD,DKH->BTKH", x, self.w_k, self.dtype)
        value = einsum("BTD,DKH->BTKH", x, self.w_v, self.dtype)
        return {"key": apply_rope(key, positions, self.rope_theta), "value": value}

    def project_query(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        query = einsum("BTD,DNH->BTNH", x, self.w_q, self.dtype)
        return apply_rope(query, positions, self.rope_theta)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Causal attention over x itself."""
        kv = self.project_kv(x, positions)
        return self.attend(self.project_query(x, positions), kv, causal_mask(positions, positions))

    def attend(self, query: jax.Array, kv: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        b, t, n, h = query.shape
        query = query.reshape(b, t, self.num_kv_heads, self.groups, h)  # BTKGH
        key, value = kv["key"].astype(self.dtype), kv["value"].astype(self.dtype)
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", query, key) * self.scale
        probs = masked_softmax(scores, mask).astype(self.dtype)
        out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, value).reshape(b, t, n, h)
        return einsum("BTNH,NHD->BTD", out, self.w_o, self.dtype)
