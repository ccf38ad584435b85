"""The weights of one converted attention layer: partial RoPE and a joint key-value SVD.

For each KV head k, the kept RoPE pairs I_k give the rotated dims [I_k, I_k + H/2], so pair j
of the P rotated dims is (j, j + P/2), the half-split layout. The other H - P dims are
position-free ("nope") dims. Query head n is permuted the same way as the KV head it reads,
n // G, so q . k is unchanged. Then:

- The nope key columns and the value columns of every KV head form one matrix
  M = [W_k_nope | W_v] of [D, K (H - P) + K H], factored by SVD, M = U S V^T. The latent
  down-projection is U_C S_C^(1/2) [D, C] and the up-projections are S_C^(1/2) V_C^T, split back
  into keys [C, K, H - P] and values [C, K, H]. Splitting S evenly gives both factors the same
  Frobenius norm; where S goes changes nothing before training, only how fine-tuning moves
  them. At C = rank(M) the product is M up to rounding. At smaller C it is the best rank-C
  approximation of M in the Frobenius norm (Eckart-Young).
  The SVD reads only weights, so it minimizes the weight error, not the error on real inputs.
- The RoPE key columns [D, K, P] are copied into the down-projection after the latent columns,
  so MLA caches one RoPE key per KV head (config mla_rope_per_kv_head).
- MLA's up-projections are per query head: head n gets the columns of KV head n // G.
- W_q is permuted and kept in full (no query compression); W_o is copied.

Computed in float64 with NumPy, returned in float64; callers cast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def rope_dims(pairs: Sequence[int], head_dim: int) -> np.ndarray:
    """Dims of the kept pairs in half-split order, [i_1..i_m, i_1 + H/2..i_m + H/2]."""
    pairs = np.asarray(sorted(pairs), dtype=np.int64)
    return np.concatenate([pairs, pairs + head_dim // 2])


def nope_dims(pairs: Sequence[int], head_dim: int) -> np.ndarray:
    """Return the dims outside the kept pairs, ascending."""
    return np.setdiff1d(np.arange(head_dim), rope_dims(pairs, head_dim))


def max_kv_lora_rank(d_model: int, kv_heads: int, head_dim: int, rope_dim: int) -> int:
    """Largest useful latent width: the rank bound of M [D, K (2H - P)]."""
    return min(d_model, kv_heads * (2 * head_dim - rope_dim))


@dataclasses.dataclass(frozen=True)
class JointFactors:
    """M = [W_k_nope | W_v] ~ down @ [up_key | up_value], at rank C."""

    down: np.ndarray  # [D, C]
    up_key: np.ndarray  # [C, K, H - P]
    up_value: np.ndarray  # [C, K, H]
    singular_values: np.ndarray  # all of M's, descending
    relative_error: float  # ||M - down @ up||_F / ||M||_F

    @property
    def kept_energy(self) -> float:
        """Share of ||M||_F^2 that the first C singular values hold."""
        squared = self.singular_values**2
        return float(squared[: self.down.shape[1]].sum() / squared.sum())


def joint_factors(key_nope: np.ndarray, value: np.ndarray, rank: int) -> JointFactors:
    """Factor key_nope [D, K, H - P] and value [D, K, H] through one latent of width `rank`."""
    d_model, kv_heads, nope = key_nope.shape
    joint = np.concatenate(
        [key_nope.reshape(d_model, -1), value.reshape(d_model, -1)], axis=1
    ).astype(np.float64)
    u, s, vt = np.linalg.svd(joint, full_matrices=False)
    root = np.sqrt(s[:rank])
    down = u[:, :rank] * root  # [D, C]
    up = root[:, None] * vt[:rank]  # [C, K (H - P) + K H]
    error = np.linalg.norm(joint - down @ up) / max(np.linalg.norm(joint), np.finfo(float).tiny)
    split = kv_heads * nope
    return JointFactors(
        down=down,
        up_key=up[:, :split].reshape(rank, kv_heads, nope),
        up_value=up[:, split:].reshape(rank, kv_heads, value.shape[-1]),
        singular_values=s,
        relative_error=float(error),
    )


def convert_attention(
    weights: dict[str, np.ndarray], pairs: Sequence[Sequence[int]], rank: int
) -> tuple[dict[str, np.ndarray], JointFactors]:
    """Compute MLA weights (w_q, w_dkv, w_uk, w_uv, w_o) from GQA weights, keeping `pairs`.

    `pairs` is [K][P/2]. `weights` contains w_q [D, N, H], w_k and w_v [D, K, H] and w_o [N, H, D].
    """
    w_q, w_k, w_v = (np.asarray(weights[name], np.float64) for name in ("w_q", "w_k", "w_v"))
    d_model, num_heads, head_dim = w_q.shape
    kv_heads = w_k.shape[1]
    rope = [rope_dims(p, head_dim) for p in pairs]  # K x [P]
    nope = [nope_dims(p, head_dim) for p in pairs]  # K x [H - P]
    key_nope = np.stack([w_k[:, k, nope[k]] for k in range(kv_heads)], axis=1)  # [D, K, H - P]
    key_rope = np.stack([w_k[:, k, rope[k]] for k in range(kv_heads)], axis=1)  # [D, K, P]
    factors = joint_factors(key_nope, w_v, rank)

    kv_of_head = np.arange(num_heads) // (num_heads // kv_heads)
    query = [
        np.concatenate([w_q[:, n, nope[k]], w_q[:, n, rope[k]]], axis=-1)
        for n, k in enumerate(kv_of_head)
    ]
    converted = {
        "w_q": np.stack(query, axis=1),  # [D, N, H], nope dims first
        "w_dkv": np.concatenate([factors.down, key_rope.reshape(d_model, -1)], axis=1),
        "w_uk": factors.up_key[:, kv_of_head, :],  # [C, N, H - P]
        "w_uv": factors.up_value[:, kv_of_head, :],  # [C, N, H]
        "w_o": np.asarray(weights["w_o"], np.float64),
    }
    return converted, factors
