"""The choice of the RoPE pairs of an MHA/GQA head that keep their rotation after conversion.

The project's RoPE is half-split: pair i of a head of H dims is dims (i, i + H/2), turning at
theta^(-2i/H). A pair's share of a score q . k is bounded by |q_i| |k_i|, the product of the
2-norms of the pair's two dims in the query and in the key, and a rotation never changes those
norms. MHA2MLA (arXiv 2502.14837) removes RoPE from the query and key dims that contribute
least to the scores. Here each KV head keeps the P/2 pairs with the largest

  score[k, i] = sum over the query heads n that read KV head k of mean|q_{n,i}| * mean|k_{k,i}|,

where the means run over tokens. Two sources for the norms:

- `calibration`: the mean norms of the real projections of training windows, layer by layer
  through the source model (`pair_norms_from_data`).
- `weights`: the Frobenius norm of each pair's columns of W_q and W_k, after folding in the
  attention RMSNorm scale (`pair_norms_from_weights`). It equals the root-mean-square pair norm
  for inputs with identity covariance, and reads no data.

Two baselines ignore the model and keep the same pairs in every head: `high_frequency` keeps
the fastest-turning pairs (i = 0, 1, ...) and `low_frequency` the slowest (i = H/2 - 1, ...).

The other pairs lose their rotation and become the position-free ("nope") dims that the joint
SVD compresses into the latent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FIXED_CRITERIA = ("high_frequency", "low_frequency")
CRITERIA = ("calibration", "weights") + FIXED_CRITERIA


def pair_norm(x: jax.Array) -> jax.Array:
    """Compute the 2-norms of the RoPE pairs of x [..., H]: [..., H/2]."""
    half = x.shape[-1] // 2
    return jnp.sqrt(x[..., :half] ** 2 + x[..., half:] ** 2)


@functools.partial(jax.jit, static_argnums=0)
def _pair_norms_jit(graphdef, state, tokens):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = model.embedding(tokens, jnp.dtype(model.cfg.dtype))
    query_norms, key_norms = [], []
    for block in model.blocks:
        hidden = block.attention_norm(x).astype(jnp.float32)
        attention = block.attention
        query = jnp.einsum("BTD,DNH->BTNH", hidden, attention.w_q[...])
        key = jnp.einsum("BTD,DKH->BTKH", hidden, attention.w_k[...])
        query_norms.append(jnp.mean(pair_norm(query), axis=(0, 1)))  # [N, H/2]
        key_norms.append(jnp.mean(pair_norm(key), axis=(0, 1)))  # [K, H/2]
        x = block(x, positions)
    return jnp.stack(query_norms), jnp.stack(key_norms)


def pair_norms_from_data(model: nnx.Module, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compute the mean pair norms of queries [L, N, H/2] and keys [L, K, H/2] over tokens [B, T].

    Every position of every window counts once. The blocks run in the config's dtype, the
    query and key projections in float32.
    """
    graphdef, state = nnx.split(model)
    query, key = _pair_norms_jit(graphdef, state, jnp.asarray(tokens, jnp.int32))
    return np.asarray(query, np.float64), np.asarray(key, np.float64)


def pair_norms_from_weights(model: nnx.Module) -> tuple[np.ndarray, np.ndarray]:
    """Compute the Frobenius norms of each pair's columns of W_q [L, N, H/2] and W_k [L, K, H/2]."""
    query_norms, key_norms = [], []
    for block in model.blocks:
        scale = np.asarray(block.attention_norm.scale[...], np.float64)[:, None, None]
        for weight, out in ((block.attention.w_q, query_norms), (block.attention.w_k, key_norms)):
            folded = scale * np.asarray(weight[...], np.float64)  # [D, heads, H]
            squared = np.sum(folded**2, axis=0)
            half = squared.shape[-1] // 2
            out.append(np.sqrt(squared[..., :half] + squared[..., half:]))
    return np.stack(query_norms), np.stack(key_norms)


def pair_scores(query_norms: np.ndarray, key_norms: np.ndarray) -> np.ndarray:
    """Score each pair [L, K, H/2]: sum over the group's query heads of |q_i| * |k_i|."""
    layers, heads, half = query_norms.shape
    kv_heads = key_norms.shape[1]
    grouped = query_norms.reshape(layers, kv_heads, heads // kv_heads, half)
    return grouped.sum(axis=2) * key_norms


def fixed_pair_scores(shape: tuple[int, int, int], criterion: str) -> np.ndarray:
    """Return scores [L, K, H/2] that rank pairs by frequency alone, for the baseline criteria."""
    index = np.arange(shape[-1], dtype=np.float64)
    ranking = -index if criterion == "high_frequency" else index
    return np.broadcast_to(ranking, shape).copy()


def top_pairs(scores: np.ndarray, count: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Return the indices of the `count` best pairs per layer and KV head, ascending: [L][K][count].

    Ties go to the lower index (the faster-turning pair), so the choice is deterministic.
    """
    # A stable sort of the negated scores keeps equal scores in index order.
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :count]
    return tuple(tuple(tuple(sorted(int(i) for i in head)) for head in layer) for layer in order)
