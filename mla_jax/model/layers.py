"""Building blocks shared by every attention kind: parameters, RMSNorm, RoPE, SwiGLU, embedding.

Parameters are float32 and carry logical axis names in the `logical_axes` metadata field, which
`mla_jax.sharding` maps to mesh axes; model code never names a mesh axis. Initialization follows
GPT-2: normal(0.02) everywhere, with projections back into the residual stream scaled down by
1/sqrt(2 * num_layers) so that the residual variance does not grow with depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.config import RopeScaling
from mla_jax.model import matmul

INIT_STD = 0.02


def make_param(
    rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], std: float = INIT_STD
) -> nnx.Param:
    """Create a float32 normal(std) parameter annotated with one logical axis name per dim."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and logical axes {tuple(axes)} differ in rank")
    value = std * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value, logical_axes=tuple(axes))


def ones_param(shape: Sequence[int], axes: Sequence[str]) -> nnx.Param:
    return nnx.Param(jnp.ones(tuple(shape), jnp.float32), logical_axes=tuple(axes))


def einsum(equation: str, x: jax.Array, w: jax.Array | nnx.Param, dtype: jnp.dtype) -> jax.Array:
    """Einsum of operands cast to the compute dtype; float32 sums and output (see `matmul`)."""
    w = w[...] if isinstance(w, nnx.Variable) else w
    return matmul.einsum(equation, x, w, dtype)


def output_projection(x: jax.Array, w_o: nnx.Param, dtype: jnp.dtype) -> jax.Array:
    """Project heads back to the model width: x [B, T, N*H] @ w_o [N, H, D] -> [B, T, D].

    The heads are flattened into one contracting axis: contracting N and H as two axes made
    XLA on CPU copy w_o transposed at every decode step.
    """
    w_o = w_o[...]
    return einsum("BTF,FD->BTD", x, w_o.reshape(-1, w_o.shape[-1]), dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm over the last axis, computed in float32."""

    def __init__(self, dim: int, eps: float, axis_name: str = "embed"):
        self.scale = ones_param((dim,), (axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv_rms * self.scale[...]).astype(x.dtype)


def apply_rope(
    x: jax.Array, positions: jax.Array, theta: float, scaling: RopeScaling | None = None
) -> jax.Array:
    """Rotate x [B, T, ..., H] by the angles of positions [B, T].

    Uses the half-split layout (dim i pairs with dim i + H/2), the convention of GPT-NeoX and
    Llama; DeepSeek's checkpoints pair adjacent dims instead and need their weights permuted
    (see `mla_jax.interop.deepseek`).
    """
    half = x.shape[-1] // 2
    inv_freq, attenuation = rope_frequencies(half, theta, scaling)  # [H/2], scalar
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    # Broadcast over any head axes that sit between T and H.
    angles = angles.reshape(angles.shape[:2] + (1,) * (x.ndim - 3) + (half,))
    cos, sin = attenuation * jnp.cos(angles), attenuation * jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def rope_frequencies(
    half: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[jax.Array, float]:
    """Return the inverse frequencies [H/2] of the RoPE pairs and the factor on cos and sin.

    Without scaling, pair i turns at theta^(-i / (H/2)) and the factor is 1. With YaRN, pairs
    that turn fewer than beta_slow times over original_max_position_embeddings are slowed by
    `factor`, pairs that turn more than beta_fast times are kept, and a linear ramp blends the
    pairs in between. The factor on cos and sin is yarn_mscale(mscale) divided by
    yarn_mscale(mscale_all_dim), as in DeepSeek's own modeling code.

    NOTE: transformers 5.25 (`_compute_yarn_parameters`) uses that ratio only when mscale and
    mscale_all_dim are both nonzero, and yarn_mscale(factor, 1) otherwise. The two disagree
    when exactly one of them is 0 and mscale is not 1. DeepSeek's released configs set both.
    """
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if scaling is None:
        return inv_freq, 1.0
    low, high = _yarn_ramp_bounds(2 * half, theta, scaling)
    ramp = jnp.clip((jnp.arange(half, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    inv_freq = inv_freq / scaling.factor * ramp + inv_freq * (1.0 - ramp)
    attenuation = yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(
        scaling.factor, scaling.mscale_all_dim
    )
    return inv_freq, attenuation


def _yarn_ramp_bounds(dim: int, theta: float, scaling: RopeScaling) -> tuple[float, float]:
    """Pair indices where the YaRN ramp starts and ends (beta_fast and beta_slow rotations)."""

    def pair_index(rotations: float) -> float:
        # The pair whose wavelength fits `rotations` times into the original context.
        wavelength = scaling.original_max_position_embeddings / (rotations * 2 * math.pi)
        return dim * math.log(wavelength) / (2 * math.log(theta))

    low = max(math.floor(pair_index(scaling.beta_fast)), 0)
    high = min(math.ceil(pair_index(scaling.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # An empty ramp would divide by zero, so widen it as transformers does.
    return low, high


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature 0.1 * mscale * ln(factor) + 1, or 1 when factor <= 1."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def softmax_scale_correction(scaling: RopeScaling | None) -> float:
    """Return the factor DeepSeek's YaRN puts on the softmax scale: yarn_mscale(mscale_all_dim)^2.

    It applies to all query-key dims, not only the rotated ones. It is 1 without scaling or
    when mscale_all_dim is 0.
    """
    if scaling is None or not scaling.mscale_all_dim:
        return 1.0
    return yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2


def rope_pair_frequencies(pairs, head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies float32 [..., P/2] of RoPE pairs [..., P/2] of a head of head_dim.

    Pair i (dims i and i + head_dim/2) turns at theta^(-2i/head_dim), computed with the same
    float32 operations as in `apply_rope`, so a model that keeps only some pairs of a head
    rotates them exactly as the full head did.
    """
    half = head_dim // 2
    return theta ** (-jnp.asarray(pairs, jnp.float32) / half)


def apply_rope_at(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x [B, T, ..., P] by positions [B, T] at inverse frequencies inv_freq [..., P/2].

    The half-split rotation of `apply_rope`, with the frequencies given: inv_freq broadcasts
    against the axes of x after T, so each head may turn at its own frequencies.
    """
    half = x.shape[-1] // 2
    positions = positions.astype(jnp.float32).reshape(positions.shape + (1,) * (x.ndim - 2))
    angles = positions * inv_freq  # [B, T, ..., P/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class SwiGLU(nnx.Module):
    """Gated MLP: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, d_model: int, mlp_dim: int, out_std: float, dtype, *, rngs: nnx.Rngs):
        self.w_gate = make_param(rngs, (d_model, mlp_dim), ("embed", "mlp"))
        self.w_up = make_param(rngs, (d_model, mlp_dim), ("embed", "mlp"))
        self.w_down = make_param(rngs, (mlp_dim, d_model), ("mlp", "embed"), std=out_std)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = einsum("BTD,DF->BTF", x, self.w_gate, self.dtype)
        up = einsum("BTD,DF->BTF", x, self.w_up, self.dtype)
        return einsum("BTF,FD->BTD", jax.nn.silu(gate) * up, self.w_down, self.dtype)


class Embedding(nnx.Module):
    """Token embedding table [V, D]; `attend` gives the tied output projection."""

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs):
        self.table = make_param(rngs, (vocab_size, d_model), ("vocab", "embed"))

    def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.table[...], tokens, axis=0).astype(dtype)

    def attend(self, x: jax.Array, dtype) -> jax.Array:
        return einsum("BTD,VD->BTV", x, self.table, dtype)
