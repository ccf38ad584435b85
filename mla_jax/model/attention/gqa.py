"""Grouped-query attention, which covers MHA (K = N) and MQA (K = 1).

Query head n attends with KV head n // G, where G = N // K: the N query heads are laid out as K
consecutive groups of G heads.

Caches, per token and layer: the RoPE-rotated key and the value of every KV head, 2 * K * H
elements, in two arrays `key` and `value` of [B, K, S, H]. Each KV head's keys are contiguous,
so a decode step reads the cache as K plain matrix products. With [B, S, K, H], XLA on CPU
copied the whole cache into head-major order first, about ten times slower
(`scripts/bench_decode.py` prints both timings).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.model.attention.base import (
    causal_mask,
    fused_causal_attention,
    masked_softmax,
    resolve_attention_impl,
)
from mla_jax.model.layers import apply_rope, einsum, make_param, output_projection


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
        self.attention_impl = resolve_attention_impl(cfg.attention_impl, cfg.dtype)

    def cache_spec(self, batch: int, max_len: int, dtype) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (batch, self.num_kv_heads, max_len, self.head_dim)
        return {
            "key": jax.ShapeDtypeStruct(shape, dtype),
            "value": jax.ShapeDtypeStruct(shape, dtype),
        }

    def project_kv(self, x: jax.Array, positions: jax.Array) -> dict[str, jax.Array]:
        """Keys and values [B, K, T, H], in the cache layout."""
        key = einsum("BTD,DKH->BTKH", x, self.w_k, self.dtype)
        key = apply_rope(key, positions, self.rope_theta).transpose(0, 2, 1, 3)
        value = einsum("BTD,DKH->BTKH", x, self.w_v, self.dtype).transpose(0, 2, 1, 3)
        return {"key": key, "value": value}

    def project_query(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        query = einsum("BTD,DNH->BTNH", x, self.w_q, self.dtype)
        return apply_rope(query, positions, self.rope_theta)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Causal attention over x itself."""
        kv, query = self.project_kv(x, positions), self.project_query(x, positions)
        if self.attention_impl == "einsum":
            return self.attend(query, kv, causal_mask(positions, positions))
        key, value = kv["key"].transpose(0, 2, 1, 3), kv["value"].transpose(0, 2, 1, 3)  # BSKH
        out = fused_causal_attention(
            query, key, value, positions, self.scale, self.attention_impl, self.dtype
        )
        return output_projection(out.reshape(out.shape[:2] + (-1,)), self.w_o, self.dtype)

    def attend(self, query: jax.Array, kv: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        """Attend with query [B, T, N, H] over kv [B, K, S, H]; mask is bool [B, T, S]."""
        b, t, n, h = query.shape
        query = query.reshape(b, t, self.num_kv_heads, self.groups, h).transpose(0, 2, 1, 3, 4)
        key, value = kv["key"].astype(self.dtype), kv["value"].astype(self.dtype)
        if t == 1 and self.groups > 1:
            out = self._attend_one_position(query, key, value, mask)
        else:
            scores = einsum("BKTGH,BKSH->BKTGS", query, key, self.dtype) * self.scale
            probs = masked_softmax(scores, mask[:, None, :, None, :])
            out = einsum("BKTGS,BKSH->BKTGH", probs, value, self.dtype)
        out = out.transpose(0, 2, 1, 3, 4).reshape(b, t, n * h)
        return output_projection(out, self.w_o, self.dtype)

    def _attend_one_position(self, query, key, value, mask) -> jax.Array:
        """Decode-step attention (T = 1, G > 1) with query BKTGH: out BKTGH.

        The cached keys are the left operand, [S, H] @ [H, G], which XLA's CPU dot reads in
        place. With q @ k^T instead, XLA copied MQA's keys transposed at every step, and GQA's
        steps measured slower too. The scores are then transposed (B K G S numbers, small) so
        the softmax reduces the contiguous last axis.
        """
        scores = einsum("BKSH,BKTGH->BKSTG", key, query, self.dtype) * self.scale
        scores = scores.transpose(0, 1, 3, 4, 2)  # BKTGS
        probs = masked_softmax(scores, mask[:, None, :, None, :])
        return einsum("BKTGS,BKSH->BKTGH", probs, value, self.dtype)
