"""Measure decode speed per attention kind and compare it with the machine's roofline.

  python scripts/bench_decode.py [--lengths=512,1024,2048,4096,8192 --batch=16 --kinds=...]

For each kind and context length L, the cache of every layer is filled with L random entries
and only decode steps are timed: each step writes one token per row and attends over all L
slots. In the same run the script measures the machine's memory read bandwidth (a large sum)
and float32 matmul throughput (a large square matmul), and reports for each kind the roofline
bound of one step, the larger of

  cache bytes read / bandwidth    and    attention FLOPs / matmul throughput,

where attention FLOPs are those that grow with L (scores and weighted sum; for MLA naive also
the up-projection of the cached latent to keys and values), and the fraction of that bound
achieved. Weights, projections and the MLP are left out of the bound, so at short contexts the
fraction is low by construction.

The benchmark model: d_model 1024, 4 layers, 16 heads of 64, MLP 2816, byte vocabulary; GQA
with 4 KV heads; MLA with kv_lora_rank 256, qk_rope_head_dim 32, nope and value dims 64 and no
query compression, a cache 7.1 times smaller than MHA's.
"""

from __future__ import annotations

import functools
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from mla_jax.config import ModelConfig, kv_cache_bytes_per_token
from mla_jax.decoding import DecodeCache, decode_step
from mla_jax.model import Transformer

_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192"], "Context lengths.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences decoded together.")
_KINDS = flags.DEFINE_list(
    "kinds", ["mha", "gqa", "mqa", "mla_naive", "mla_absorbed"], "Attention kinds to measure."
)
_CACHE_DTYPE = flags.DEFINE_enum("cache_dtype", "float32", ["float32", "bfloat16"], "KV-cache dtype.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 1.0, "Timed decode time per measurement, at least.")
_LAYOUT_CHECK = flags.DEFINE_bool(
    "layout_check", True, "Also time one MHA layer's decode attention with the cache laid out "
    "[B, S, K, H] against the [B, K, S, H] that GQA uses, at the longest context."
)

KIND_FIELDS = {
    "mha": dict(attention="mha", num_kv_heads=16),
    "gqa": dict(attention="gqa", num_kv_heads=4),
    "mqa": dict(attention="mqa", num_kv_heads=1),
    "mla_naive": dict(attention="mla", mla_decode="naive"),
    "mla_absorbed": dict(attention="mla", mla_decode="absorbed"),
}


def bench_config(kind: str, max_seq_len: int, cache_dtype: str) -> ModelConfig:
    fields = dict(
        vocab_size=258, num_layers=4, d_model=1024, num_heads=16, num_kv_heads=16, head_dim=64,
        mlp_dim=2816, q_lora_rank=None, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
        v_head_dim=64, max_seq_len=max_seq_len, tie_embeddings=True, rope_theta=10000.0,
        norm_eps=1e-6, dtype="float32", cache_dtype=cache_dtype, mla_decode="absorbed",
    )
    fields.update(KIND_FIELDS[kind])
    return ModelConfig(**fields)


def attention_flops(cfg: ModelConfig, batch: int, length: int) -> float:
    """FLOPs of one decode step that grow with the context length, all layers."""
    n = cfg.num_heads
    if cfg.attention != "mla":
        per_slot = 4 * n * cfg.head_dim  # q.k and p.v
    else:
        c, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        if cfg.mla_decode == "absorbed":
            per_slot = 2 * n * (c + r) + 2 * n * c
        else:
            hn, hv = cfg.qk_nope_head_dim, cfg.v_head_dim
            per_slot = 2 * c * n * (hn + hv) + 2 * n * (hn + r) + 2 * n * hv
    return float(per_slot) * batch * length * cfg.num_layers


def best_seconds(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def measure_bandwidth(num_bytes: int = 1 << 30) -> float:
    """Read bandwidth in bytes/s: a jitted sum over a float32 array far larger than the caches."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    return num_bytes / best_seconds(jax.jit(jnp.sum), x)


def measure_matmul(size: int = 4096) -> float:
    """Float32 matmul throughput in FLOP/s, on square matrices."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    return 2 * size**3 / best_seconds(jax.jit(jnp.matmul), a, a, repeats=3)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _filled_cache(graphdef, state, batch: int, length: int) -> DecodeCache:
    """A cache whose L slots all hold random entries; the rows of a layer are copies of one row."""
    model = nnx.merge(graphdef, state)
    dtype = jnp.dtype(model.cfg.cache_dtype)
    key, layers = jax.random.key(0), []
    for block in model.blocks:
        arrays = {}
        for name, spec in block.attention.cache_spec(batch, length, dtype).items():
            key, sub = jax.random.split(key)
            row = jax.random.normal(sub, (1,) + spec.shape[1:], jnp.float32).astype(dtype)
            arrays[name] = jnp.broadcast_to(row, spec.shape)
        layers.append(arrays)
    return DecodeCache(tuple(layers), jnp.zeros((batch,), jnp.int32))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _decode_steps(graphdef, state, cache: DecodeCache, tokens, num_steps):
    """num_steps greedy decode steps in one loop; num_steps is traced, so it never recompiles."""
    model = nnx.merge(graphdef, state)

    def step(_, carry):
        cache, tokens = carry
        logits, cache = decode_step(model, tokens, cache)
        return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, num_steps, step, (cache, tokens))


def time_decode(cfg: ModelConfig, batch: int, length: int, min_seconds: float) -> float:
    """Seconds per decode step with every cache slot in use."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    cache = _filled_cache(graphdef, state, batch, length)
    tokens = jnp.zeros((batch,), jnp.int32)

    def run(num_steps: int) -> float:
        nonlocal cache, tokens
        # Start far enough back that the steps' writes stay inside the cache.
        cache = cache._replace(index=jnp.full((batch,), length - num_steps, jnp.int32))
        start = time.perf_counter()
        cache, tokens = jax.block_until_ready(_decode_steps(graphdef, state, cache, tokens, num_steps))
        return time.perf_counter() - start

    run(1)  # compiles
    per_step = run(1)
    num_steps = int(np.clip(np.ceil(min_seconds / per_step), 1, min(64, length)))
    return min(run(num_steps), run(num_steps)) / num_steps


def compare_gqa_layouts(batch: int, length: int, heads: int = 16, head_dim: int = 64) -> dict:
    """Seconds of one decode attention (scores, softmax, weighted sum) per cache layout."""
    key = jax.random.key(0)
    query = jax.random.normal(key, (batch, heads, head_dim), jnp.float32)
    head_major = jax.random.normal(key, (batch, heads, length, head_dim), jnp.float32)
    position_major = head_major.transpose(0, 2, 1, 3)

    def attention(query, cache, layout):
        scores = jnp.einsum(f"BKH,{layout}->BKS", query, cache)
        return jnp.einsum(f"BKS,{layout}->BKH", jax.nn.softmax(scores, axis=-1), cache)

    return {
        layout: best_seconds(jax.jit(functools.partial(attention, layout=layout)), query, cache)
        for layout, cache in (("BKSH", head_major), ("BSKH", position_major))
    }


def cpu_description() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu failed)"
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def measure_kind(kind: str, length: int, batch: int, bandwidth: float, matmul: float) -> dict:
    cfg = bench_config(kind, length, _CACHE_DTYPE.value)
    seconds = time_decode(cfg, batch, length, _MIN_SECONDS.value)
    cache_bytes = kv_cache_bytes_per_token(cfg) * batch * length
    memory_bound, compute_bound = cache_bytes / bandwidth, attention_flops(cfg, batch, length) / matmul
    bound = max(memory_bound, compute_bound)
    return dict(
        kind=kind, length=length, cache_mib=cache_bytes / 2**20, step_ms=seconds * 1e3,
        tokens_per_s=batch / seconds, bound_ms=bound * 1e3,
        bound_by="memory" if memory_bound >= compute_bound else "compute", fraction=bound / seconds,
    )


def print_table(rows: list[dict]) -> None:
    print("| Kind | Context | Cache (MiB) | Step (ms) | Tokens/s | Roofline (ms) | Bound by | Of roofline |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['length']} | {r['cache_mib']:.0f} | {r['step_ms']:.1f} "
            f"| {r['tokens_per_s']:.0f} | {r['bound_ms']:.1f} | {r['bound_by']} | {r['fraction']:.0%} |"
        )


def print_ratios(rows: list[dict]) -> None:
    longest = max(r["length"] for r in rows)
    speed = {r["kind"]: r["tokens_per_s"] for r in rows if r["length"] == longest}
    if "mla_absorbed" not in speed:
        return
    for other in ("mha", "mla_naive"):
        if other in speed:
            print(f"At {longest} tokens, mla_absorbed decodes {speed['mla_absorbed'] / speed[other]:.2f}x "
                  f"as many tokens/s as {other}.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_KINDS.value) - set(KIND_FIELDS))
    if unknown:
        raise app.UsageError(f"Unknown kinds {unknown}; choose among {sorted(KIND_FIELDS)}.")
    lengths = [int(x) for x in _LENGTHS.value]
    bandwidth, matmul = measure_bandwidth(), measure_matmul()
    print(f"Machine: {cpu_description()}; JAX {jax.__version__} on {jax.default_backend()}.")
    print(f"Measured read bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul {matmul / 1e9:.0f} GFLOP/s.")
    print(f"Batch {_BATCH.value}, cache dtype {_CACHE_DTYPE.value}.\n")
    rows = []
    for length in lengths:
        for kind in _KINDS.value:
            rows.append(measure_kind(kind, length, _BATCH.value, bandwidth, matmul))
    print_table(rows)
    print()
    print_ratios(rows)
    if _LAYOUT_CHECK.value:
        seconds = compare_gqa_layouts(_BATCH.value, lengths[-1])
        print(f"\nOne MHA layer's decode attention at {lengths[-1]} tokens, batch {_BATCH.value}: "
              f"{seconds['BKSH'] * 1e3:.1f} ms with the cache [B, K, S, H], "
              f"{seconds['BSKH'] * 1e3:.1f} ms with [B, S, K, H].")


if __name__ == "__main__":
    app.run(main)
