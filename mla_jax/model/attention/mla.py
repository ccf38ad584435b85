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

from mla_jax.config import ModelConfig
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
    einsum,
    make_param,
    output_projection,
    softmax_scale_correction,
)


class MultiHeadLatentAttention(nnx.Module):
    """MLA with joint KV compression, decoupled RoPE and optional query compression."""

    def __init__(self, cfg: ModelConfig, out_std: float, *, rngs: nnx.Rngs):
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
        # One down-projection yields the latent and the RoPE key: D -> C + R.
        self.w_dkv = make_param(rngs, (d, c + hr), ("embed", "kv_latent"))
        self.kv_norm = RMSNorm(c, cfg.norm_eps, axis_name="kv_latent")
        self.w_uk = make_param(rngs, (c, n, hn), ("kv_latent", "heads", "head_dim"))
        self.w_uv = make_param(rngs, (c, n, hv), ("kv_latent", "heads", "head_dim"))
        self.w_o = make_param(rngs, (n, hv, d), ("heads", "head_dim", "embed"), std=out_std)
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, c
        self.nope_dim, self.rope_dim = hn, hr
        # YaRN (cfg.rope_scaling) also raises the softmax scale, over all Hn + R dims.
        self.scale = softmax_scale_correction(cfg.rope_scaling) / math.sqrt(hn + hr)
        self.rope_theta, self.rope_scaling = cfg.rope_theta, cfg.rope_scaling
        self.mode = cfg.mla_decode
        self.dtype = jnp.dtype(cfg.dtype)
        self.attention_impl = resolve_attention_impl(cfg.attention_impl, cfg.dtype)

    def cache_spec(self, batch: int, max_len: int, dtype) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            "latent": jax.ShapeDtypeStruct((batch, max_len, self.kv_lora_rank), dtype),
            "rope_key": jax.ShapeDtypeStruct((batch, max_len, self.rope_dim), dtype),
        }

    def project_kv(self, x: jax.Array, positions: jax.Array) -> dict[str, jax.Array]:
        down = einsum("BTD,DC->BTC", x, self.w_dkv, self.dtype)
        latent = self.kv_norm(down[..., : self.kv_lora_rank])
        rope_key = apply_rope(
            down[..., self.kv_lora_rank :], positions, self.rope_theta, self.rope_scaling
        )
        return {"latent": latent, "rope_key": rope_key}

    def project_query(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.q_lora_rank is None:
            query = einsum("BTD,DNH->BTNH", x, self.w_q, self.dtype)
        else:
            q_latent = self.q_norm(einsum("BTD,DQ->BTQ", x, self.w_dq, self.dtype))
            query = einsum("BTQ,QNH->BTNH", q_latent, self.w_uq, self.dtype)
        q_nope, q_rope = query[..., : self.nope_dim], query[..., self.nope_dim :]
        return q_nope, apply_rope(q_rope, positions, self.rope_theta, self.rope_scaling)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Causal attention over x itself; naive mode, cheaper than absorbed when T is large.

        Nope and RoPE dims enter the scores through one product: the shared RoPE key is
        repeated for every head and appended to the up-projected keys, and q_rope to q_nope.
        """
        kv, (q_nope, q_rope) = self.project_kv(x, positions), self.project_query(x, positions)
        key_nope = einsum("BSC,CNH->BSNH", kv["latent"], self.w_uk, self.dtype)
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
        scores += einsum("BTNR,BSR->BNTS", q_rope, rope_key, self.dtype)
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
        scores += einsum("BSR,BTNR->BSTN", rope_key, q_rope, self.dtype)
        scores = scores.transpose(0, 2, 3, 1)  # BTNS
        probs = masked_softmax(scores * self.scale, mask[:, :, None, :])
        out_latent = einsum("BTNS,BSC->BTNC", probs, latent, self.dtype)
        return einsum("BTNC,CNH->BTNH", out_latent, self.w_uv, self.dtype)
