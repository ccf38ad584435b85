"""Roofline of one decode step: what it must read and compute, and what the machine delivers.

A decode step reads every cached entry once and does the attention arithmetic that grows with
the context; no implementation can run faster than the larger of (cache bytes / memory
bandwidth) and (attention FLOPs / matmul throughput). Weights, projections and the MLP are left
out, so the bound is tight only at long contexts. `scripts/bench_decode.py` compares measured
steps with it.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mla_jax.config import ModelConfig, kv_cache_bytes_per_token


class Roofline(NamedTuple):
    """Lower bound on the seconds of one decode step, and whether memory or compute sets it."""

    seconds: float
    bound_by: str


def attention_flops(cfg: ModelConfig, batch: int, length: int) -> float:
    """Count the FLOPs of one decode step that grow with the context length, all layers.

    MHA/GQA/MQA: q.k and p.v per head. MLA absorbed: scores over latent and RoPE key, weighted
    sum over the latent. MLA naive: the up-projection of every cached latent to keys and values,
    then scores and weighted sum per head.
    """
    n = cfg.num_heads
    if cfg.attention != "mla":
        per_slot = 4 * n * cfg.head_dim
    elif cfg.mla_decode == "absorbed":
        c, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        per_slot = 2 * n * (c + r) + 2 * n * c
    else:
        c, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        hn, hv = cfg.qk_nope_head_dim, cfg.v_head_dim
        per_slot = 2 * c * n * (hn + hv) + 2 * n * (hn + r) + 2 * n * hv
    return float(per_slot) * batch * length * cfg.num_layers


def decode_roofline(
    cfg: ModelConfig, batch: int, length: int, bandwidth: float, matmul: float
) -> Roofline:
    """Bound a decode step over `length` cached tokens, given bytes/s and FLOP/s."""
    memory = kv_cache_bytes_per_token(cfg) * batch * length / bandwidth
    compute = attention_flops(cfg, batch, length) / matmul
    return Roofline(max(memory, compute), "memory" if memory >= compute else "compute")


def best_seconds(fn, *args, repeats: int = 5) -> float:
    """Time fn(*args) after one warm-up call; the fastest of `repeats` runs."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def measure_bandwidth(num_bytes: int = 1 << 30) -> float:
    """Measure read bandwidth in bytes/s with a jitted sum over a large float32 array."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    return num_bytes / best_seconds(jax.jit(jnp.sum), x)


def measure_matmul(size: int = 4096) -> float:
    """Measure float32 matmul throughput in FLOP/s on square matrices."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    return 2 * size**3 / best_seconds(jax.jit(jnp.matmul), a, a, repeats=3)
