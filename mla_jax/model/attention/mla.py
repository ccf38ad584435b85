"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1).

Keys and values are compressed jointly into a latent c_kv [C] per token; per-head keys
k_nope [N, Hn] and values v [N, Hv] are up-projected from it. Position enters through a
decoupled RoPE key k_rope [R], computed from the hidden state and shared by all heads. Queries
come either through a low-rank latent c_q [Q] with its own RMSNorm (q_lora_rank set) or
straight from the hidden state (q_lora_rank None). The softmax scale is 1/sqrt(Hn + R), times
DeepSeek's YaRN correction when cfg.rope_scaling is set.

Caches, per token and layer: the RMS-normalized latent c_kv and the rotated k_rope, C + R
elements, in two arrays `latent` [B, S, C] and `rope_key` [B, S, R]; never per-head keys or
values.

Two options, off by default, make MLA able to hold an MHA or GQA model exactly
(`mla_jax.conversion`): `mla_latent_norm=False` drops the latent's RMSNorm (the latent is cached
as projected), and `mla_rope_per_kv_head=True` gives each of the K KV heads its own RoPE key,
cached as `rope_key` [B, K, S, R], C + K * R elements per token; query head n reads key
n // (N / K). With `mla_rope_pairs`, the R rotated dims of each key turn at the frequencies of
chosen pairs of a head of `head_dim` rather than at those of a head of R dims.

`attend` has two modes. `naive` up-projects the cached latent to per-head keys and values.
`absorbed` folds the key up-projection into the query (q_nope @ W_uk^T lives in latent space)
and the value up-projection into the output, so the scores and the weighted sum run directly
over the latent; the results are equal, and the cost moves from T*S*N*(Hn + Hv) up-projection
work to attention over C-dim vectors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import ModelConfig, mla_rope_keys
from mla_jax.model.attention.base import (
    causal_mask,
    einsum_causal_attention,
    fused_causal_attention,
    masked_softmax,
    resolve_attention_impl,
)
from mla_jax.model.layers import (
    RMSNorm,
    apply_rope,
    apply_rope_at,
    einsum,
    make_param,
    output_projection,
    rope_pair_frequencies,
    softmax_scale_correction,
)


class MultiHeadLatentAttention(nnx.Module):
    """MLA with joint KV compression, decoupled RoPE and optional query compression."""

    def __init__(self, cfg: ModelConfig, out_std: float, *, rngs: nnx.Rngs, layer: int = 0):
        d, n, c = cfg.d_model, cfg.num_heads, cfg.kv_lora_rank
        hn, hr, hv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank is None:
            self.w_q = make_param(rngs, (d, n, hn + hr), ("embed", "heads", "head_dim"))
        else:
            self.w_dq = make_param(rngs, (d, cfg.q_lora_rank), ("embed", "q_latent"))
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps, axis_name="q_latent")
            self.w_uq = make_param(
                rngs, (cfg.q_lora_rank, n, hn + hr), ("q_latent", "heads", "head_dim")
            )
        # One down-projection yields the latent and the RoPE keys: D -> C + K_rope * R.
        self.rope_keys, self.rope_per_kv_head = mla_rope_keys(cfg), cfg.mla_rope_per_kv_head
        self.w_dkv = make_param(rngs, (d, c + self.rope_keys * hr), ("embed", "kv_latent"))
        self.latent_norm = cfg.mla_latent_norm
        if self.latent_norm:
            self.kv_norm = RMSNorm(c, cfg.norm_eps, axis_name="kv_latent")
        self.w_uk = make_param(rngs, (c, n, hn), ("kv_latent", "heads", "head_dim"))
        self.w_uv = make_param(rngs, (c, n, hv), ("kv_latent", "heads", "head_dim"))
        self.w_o = make_param(rngs, (n, hv, d), ("heads", "head_dim", "embed"), std=out_std)
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, c
        self.nope_dim, self.rope_dim = hn, hr
        # YaRN (cfg.rope_scaling) also raises the softmax scale, over all Hn + R dims.
        self.scale = softmax_scale_correction(cfg.rope_scaling) / math.sqrt(hn + hr)
        self.rope_theta, self.rope_scaling = cfg.rope_theta, cfg.rope_scaling
        # Pair indices [K_rope][R/2] into a head of head_dim (a tuple, so the graph stays hashable).
        self.rope_pairs = None if cfg.mla_rope_pairs is None else cfg.mla_rope_pairs[layer]
        self.rope_pairs_head_dim = cfg.head_dim
        if self.rope_pairs is not None and self.rope_scaling is not None:
            raise ValueError(
                "config.model.rope_scaling cannot be combined with mla_rope_pairs (a converted "
                "model); set rope_scaling=None."
            )
        self.mode = cfg.mla_decode
        self.dtype = jnp.dtype(cfg.dtype)
        self.attention_impl = resolve_attention_impl(cfg.attention_impl, cfg.dtype)

    def cache_spec(self, batch: int, max_len: int, dtype) -> dict[str, jax.ShapeDtypeStruct]:
        if self.rope_per_kv_head:
            rope_shape = (batch, self.rope_keys, max_len, self.rope_dim)
        else:
            rope_shape = (batch, max_len, self.rope_dim)
        return {
            "latent": jax.ShapeDtypeStruct((batch, max_len, self.kv_lora_rank), dtype),
            "rope_key": jax.ShapeDtypeStruct(rope_shape, dtype),
        }

    def project_kv(self, x: jax.Array, positions: jax.Array) -> dict[str, jax.Array]:
        """Return the latent [B, T, C] and the rotated RoPE key [B, T, R] (or keys [B, K, T, R])."""
        down = einsum("BTD,DC->BTC", x, self.w_dkv, self.dtype)
        latent = down[..., : self.kv_lora_rank]
        if self.latent_norm:
            latent = self.kv_norm(latent)
        rope_key = down[..., self.kv_lora_rank :]
        if self.rope_per_kv_head:
            rope_key = rope_key.reshape(rope_key.shape[:2] + (self.rope_keys, self.rope_dim))
            rope_key = self._rotate(rope_key, positions).transpose(0, 2, 1, 3)
        else:
            rope_key = self._rotate(rope_key, positions)
        return {"latent": latent, "rope_key": rope_key}

    def _rotate(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Apply RoPE to x [B, T, R] (the shared key), [B, T, K, R] (keys) or [B, T, N, R]."""
        if self.rope_pairs is None:
            return apply_rope(x, positions, self.rope_theta, self.rope_scaling)
        inv_freq = rope_pair_frequencies(
            self.rope_pairs, self.rope_pairs_head_dim, self.rope_theta
        )  # [K_rope, R/2]
        if x.ndim == 3:
            inv_freq = inv_freq[0]
        elif x.shape[2] != inv_freq.shape[0]:
            # Queries: head n turns at the frequencies of the key it reads, n // G.
            inv_freq = jnp.repeat(inv_freq, x.shape[2] // inv_freq.shape[0], axis=0)
        return apply_rope_at(x, positions, inv_freq)

    def project_query(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.q_lora_rank is None:
            query = einsum("BTD,DNH->BTNH", x, self.w_q, self.dtype)
        else:
            q_latent = self.q_norm(einsum("BTD,DQ->BTQ", x, self.w_dq, self.dtype))
            query = einsum("BTQ,QNH->BTNH", q_latent, self.w_uq, self.dtype)
        q_nope, q_rope = query[..., : self.nope_dim], query[..., self.nope_dim :]
        return q_nope, self._rotate(q_rope, positions)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Causal attention over x itself; naive mode, cheaper than absorbed when T is large.

        Nope and RoPE dims enter the scores through one product: the shared RoPE key is
        repeated for every head and appended to the up-projected keys, and q_rope to q_nope.
        """
        kv, (q_nope, q_rope) = self.project_kv(x, positions), self.project_query(x, positions)
        key_nope = einsum("BSC,CNH->BSNH", kv["latent"], self.w_uk, self.dtype)
        if self.rope_per_kv_head:  # [B, K, S, R] -> [B, S, N, R]: head n reads key n // G.
            groups = q_rope.shape[2] // self.rope_keys
            rope_key = jnp.repeat(kv["rope_key"].transpose(0, 2, 1, 3), groups, axis=2)
        else:
            rope_key = jnp.broadcast_to(kv["rope_key"][:, :, None], q_rope.shape)  # BSNR, S = T
        key = jnp.concatenate([key_nope, rope_key.astype(key_nope.dtype)], axis=-1)
        query = jnp.concatenate([q_nope, q_rope], axis=-1)
        value = einsum("BSC,CNH->BSNH", kv["latent"], self.w_uv, self.dtype)
        if self.attention_impl == "einsum":
            mask = causal_mask(positions, positions)
            out = einsum_causal_attention(query, key, value, mask, self.scale, self.dtype)
        else:
            out = fused_causal_attention(
                query, key, value, positions, self.scale, self.attention_impl, self.dtype
            )
        return output_projection(out.reshape(out.shape[:2] + (-1,)), self.w_o, self.dtype)

    def attend(self, query, kv: dict[str, jax.Array], mask: jax.Array, mode: str | None = None):
        """Attend over kv [B, S, ...]; `mode` (naive or absorbed) overrides cfg.mla_decode."""
        q_nope, q_rope = query
        latent, rope_key = kv["latent"].astype(self.dtype), kv["rope_key"].astype(self.dtype)
        if (mode or self.mode) == "naive":
            out = self._attend_naive(q_nope, q_rope, latent, rope_key, mask)
        else:
            out = self._attend_absorbed(q_nope, q_rope, latent, rope_key, mask)
        return output_projection(out.reshape(out.shape[:2] + (-1,)), self.w_o, self.dtype)

    def _attend_naive(self, q_nope, q_rope, latent, rope_key, mask) -> jax.Array:
        """Up-project the latent to per-head keys and values, then attend: out [B, T, N, Hv]."""
        key = einsum("BSC,CNH->BSNH", latent, self.w_uk, self.dtype)
        value = einsum("BSC,CNH->BSNH", latent, self.w_uv, self.dtype)
        scores = einsum("BTNH,BSNH->BNTS", q_nope, key, self.dtype)
        scores += self._rope_scores_naive(q_rope, rope_key)
        probs = masked_softmax(scores * self.scale, mask[:, None])
        return einsum("BNTS,BSNH->BTNH", probs, value, self.dtype)

    def _attend_absorbed(self, q_nope, q_rope, latent, rope_key, mask) -> jax.Array:
        """Attend in latent space: q_nope W_uk^T scores the latent directly, and the latent
        average goes through W_uv afterwards. Out [B, T, N, Hv].

        The cache arrays are the left operand of the scores ([S, C] @ [C, T*N]) and the right one
        of the weighted sum, the two forms XLA's CPU dot reads without a transposed copy. The
        scores are transposed in between (B T N S numbers) so the softmax reduces the last axis.
        """
        q_latent = einsum("BTNH,CNH->BTNC", q_nope, self.w_uk, self.dtype)
        scores = einsum("BSC,BTNC->BSTN", latent, q_latent, self.dtype)
        scores += self._rope_scores_absorbed(q_rope, rope_key)
        scores = scores.transpose(0, 2, 3, 1)  # BTNS
        probs = masked_softmax(scores * self.scale, mask[:, :, None, :])
        out_latent = einsum("BTNS,BSC->BTNC", probs, latent, self.dtype)
        return einsum("BTNC,CNH->BTNH", out_latent, self.w_uv, self.dtype)

    def _group_heads(self, q_rope: jax.Array) -> jax.Array:
        """Split the query heads [B, T, N, R] by the RoPE key they read: [B, T, K, G, R]."""
        b, t, n, r = q_rope.shape
        return q_rope.reshape(b, t, self.rope_keys, n // self.rope_keys, r)

    def _rope_scores_naive(self, q_rope: jax.Array, rope_key: jax.Array) -> jax.Array:
        """Compute the RoPE part of the scores, [B, N, T, S]."""
        if not self.rope_per_kv_head:
            return einsum("BTNR,BSR->BNTS", q_rope, rope_key, self.dtype)
        scores = einsum("BTKGR,BKSR->BKGTS", self._group_heads(q_rope), rope_key, self.dtype)
        b, k, g, t, s = scores.shape
        return scores.reshape(b, k * g, t, s)

    def _rope_scores_absorbed(self, q_rope: jax.Array, rope_key: jax.Array) -> jax.Array:
        """Compute the RoPE part of the scores, [B, S, T, N], with the cache as the left operand."""
        if not self.rope_per_kv_head:
            return einsum("BSR,BTNR->BSTN", rope_key, q_rope, self.dtype)
        scores = einsum("BKSR,BTKGR->BSTKG", rope_key, self._group_heads(q_rope), self.dtype)
        b, s, t, k, g = scores.shape
        return scores.reshape(b, s, t, k * g)
