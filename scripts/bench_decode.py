"""Measure decode speed per attention kind against the machine's roofline.

  python scripts/bench_decode.py [--lengths=512,1024,2048,4096,8192 --batch=16 --kinds=...]

For each kind and context length L, every layer's cache is filled with L random entries and only
decode steps are timed: each writes one token per row and attends over all L slots. The run also
measures memory read bandwidth and float32 matmul throughput, and reports each step against its
roofline (`mla_jax.decoding.roofline`): the larger of cache bytes / bandwidth and attention
FLOPs / matmul throughput. Weights and the MLP are outside that bound, so at short contexts the
fraction achieved is low by construction.

Timings on a shared machine vary from second to second. Every measurement, the machine
references included, runs in `--rounds` interleaved rounds and the best counts. Before each
one the script waits for idle CPUs (at most `--idle_wait_seconds` in all) and reports how often
it found them.

The benchmark model: d_model 1024, 4 layers, 16 heads of 64, MLP 2816, byte vocabulary; GQA
with 4 KV heads; MLA with kv_lora_rank 256, qk_rope_head_dim 32, nope and value dims 64 and no
query compression, a cache 7.1 times smaller than MHA's.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from mla_jax.config import ModelConfig, kv_cache_bytes_per_token
from mla_jax.decoding import DecodeCache, decode_step
from mla_jax.decoding.roofline import (
    best_seconds,
    decode_roofline,
    measure_bandwidth,
    measure_matmul,
)
from mla_jax.machine import IdleWaiter, cpu_description
from mla_jax.model import Transformer

_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192"], "Context lengths.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences decoded together.")
_KINDS = flags.DEFINE_list(
    "kinds", ["mha", "gqa", "mqa", "mla_naive", "mla_absorbed"], "Attention kinds to measure."
)
_CACHE_DTYPE = flags.DEFINE_enum(
    "cache_dtype", "float32", ["float32", "bfloat16"], "KV-cache dtype."
)
_MIN_SECONDS = flags.DEFINE_float(
    "min_seconds", 1.0, "Length of each timed decode run, in seconds."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Interleaved repetitions of every measurement; the best counts."
)
_IDLE_WAIT_SECONDS = flags.DEFINE_float(
    "idle_wait_seconds",
    120.0,
    "Time the whole run may spend waiting, before measurements, for "
    "the CPUs to be at least 80% idle (read from /proc/stat on Linux); 0 disables the waits.",
)
_KERNEL_CHECKS = flags.DEFINE_bool(
    "kernel_checks",
    True,
    "Also time, at the longest context: one MHA layer's decode attention "
    "with the cache laid out [B, S, K, H] and [B, K, S, H] (the layout GQA uses), and the "
    "cache-reading matrix products of GQA and MLA absorbed on their own.",
)

KIND_FIELDS = {
    "mha": {"attention": "mha", "num_kv_heads": 16},
    "gqa": {"attention": "gqa", "num_kv_heads": 4},
    "mqa": {"attention": "mqa", "num_kv_heads": 1},
    "mla_naive": {"attention": "mla", "mla_decode": "naive"},
    "mla_absorbed": {"attention": "mla", "mla_decode": "absorbed"},
}


def bench_config(kind: str, max_seq_len: int, cache_dtype: str) -> ModelConfig:
    fields = {
        "vocab_size": 258,
        "num_layers": 4,
        "d_model": 1024,
        "num_heads": 16,
        "num_kv_heads": 16,
        "head_dim": 64,
        "mlp_dim": 2816,
        "q_lora_rank": None,
        "kv_lora_rank": 256,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32,
        "v_head_dim": 64,
        "mla_latent_norm": True,
        "mla_rope_per_kv_head": False,
        "mla_rope_pairs": None,
        "max_seq_len": max_seq_len,
        "tie_embeddings": True,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "dtype": "float32",
        "cache_dtype": cache_dtype,
        "mla_decode": "absorbed",
    }
    fields.update(KIND_FIELDS[kind])
    return ModelConfig(**fields)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _filled_cache(graphdef, state, batch: int, length: int) -> DecodeCache:
    """Build a cache with random entries in all L slots; rows are copies of one row."""
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
    """Run num_steps greedy decode steps in one loop; num_steps is traced (no recompiles)."""
    model = nnx.merge(graphdef, state)

    def step(_, carry):
        cache, tokens = carry
        logits, cache = decode_step(model, tokens, cache)
        return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, num_steps, step, (cache, tokens))


def time_decode(
    model: nnx.Module, batch: int, length: int, min_seconds: float, warm: bool
) -> float:
    """Seconds per decode step with every cache slot in use; `warm` skips the compiling call."""
    graphdef, state = nnx.split(model)
    cache = _filled_cache(graphdef, state, batch, length)
    tokens = jnp.zeros((batch,), jnp.int32)

    def run(num_steps: int) -> float:
        nonlocal cache, tokens
        # Start far enough back that the steps' writes stay inside the cache.
        cache = cache._replace(index=jnp.full((batch,), length - num_steps, jnp.int32))
        start = time.perf_counter()
        cache, tokens = jax.block_until_ready(
            _decode_steps(graphdef, state, cache, tokens, num_steps)
        )
        return time.perf_counter() - start

    if not warm:
        run(1)
    per_step = run(1)
    num_steps = int(np.clip(np.ceil(min_seconds / per_step), 1, min(64, length - 1)))
    return min(per_step, run(num_steps) / num_steps)


def measure_all(kinds: list[str], lengths: list[int], batch: int) -> tuple[dict, dict]:
    """Return the best seconds per step of every (kind, length) and the machine references.

    The references are lists of bandwidths (bytes/s) and matmul throughputs (FLOP/s), one of each
    per round and length, plus the IdleWaiter that counted the measurements started on idle CPUs.
    """
    models = {
        kind: Transformer(bench_config(kind, max(lengths), _CACHE_DTYPE.value), rngs=nnx.Rngs(0))
        for kind in kinds
    }
    waiter = IdleWaiter(_IDLE_WAIT_SECONDS.value)
    seconds, references = {}, {"bandwidth": [], "matmul": [], "idle": waiter}
    for round_index in range(_ROUNDS.value):
        for length in lengths:
            waiter.wait()
            references["bandwidth"].append(measure_bandwidth())
            references["matmul"].append(measure_matmul())
            for kind in kinds:
                waiter.wait()
                step = time_decode(
                    models[kind], batch, length, _MIN_SECONDS.value, warm=round_index > 0
                )
                seconds[kind, length] = min(seconds.get((kind, length), np.inf), step)
                logging.info(
                    "round %d, %s at %d tokens: %.1f ms", round_index, kind, length, step * 1e3
                )
    return seconds, references


def table_row(
    kind: str, length: int, seconds: float, batch: int, bandwidth: float, matmul: float
) -> dict:
    cfg = bench_config(kind, length, _CACHE_DTYPE.value)
    bound = decode_roofline(cfg, batch, length, bandwidth, matmul)
    return {
        "kind": kind,
        "length": length,
        "cache_mib": kv_cache_bytes_per_token(cfg) * batch * length / 2**20,
        "step_ms": seconds * 1e3,
        "tokens_per_s": batch / seconds,
        "bound_ms": bound.seconds * 1e3,
        "bound_by": bound.bound_by,
        "fraction": bound.seconds / seconds,
    }


def print_table(rows: list[dict]) -> None:
    print(
        "| Kind | Context | Cache (MiB) | Step (ms) | Tokens/s | Roofline (ms) | Bound by "
        "| Of roofline |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['length']} | {r['cache_mib']:.0f} | {r['step_ms']:.1f} "
            f"| {r['tokens_per_s']:.0f} | {r['bound_ms']:.1f} | {r['bound_by']} "
            f"| {r['fraction']:.0%} |"
        )


def print_ratios(rows: list[dict]) -> None:
    longest = max(r["length"] for r in rows)
    speed = {r["kind"]: r["tokens_per_s"] for r in rows if r["length"] == longest}
    if "mla_absorbed" not in speed:
        return
    for other in ("mha", "mla_naive"):
        if other in speed:
            ratio = speed["mla_absorbed"] / speed[other]
            print(
                f"At {longest} tokens, mla_absorbed decodes {ratio:.2f}x the tokens/s of {other}."
            )


def compare_gqa_layouts(batch: int, length: int, heads: int = 16, head_dim: int = 64) -> dict:
    """Time one decode attention (scores, softmax, weighted sum) per cache layout, in seconds."""
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


def time_cache_products(batch: int, length: int) -> list[tuple[str, float, float]]:
    """Time the matrix products that read the cache in one layer's decode step, on their own.

    Returns (description, seconds, FLOPs) per product, with the einsums of the model's decode
    path and the benchmark model's sizes.
    """

    def normal(*shape):
        return jax.random.normal(jax.random.key(0), shape, jnp.float32)

    mla_flops = 2.0 * batch * length * 16 * 256
    cases = [
        (
            "GQA scores, [S, 64] @ [64, 4] per KV head",
            "BKSH,BKTGH->BKSTG",
            normal(batch, 4, length, 64),
            normal(batch, 4, 1, 4, 64),
            2.0 * batch * 4 * length * 64 * 4,
        ),
        (
            "MLA absorbed scores, [S, 256] @ [256, 16]",
            "BSC,BTNC->BSTN",
            normal(batch, length, 256),
            normal(batch, 1, 16, 256),
            mla_flops,
        ),
        (
            "MLA absorbed weighted sum, [16, S] @ [S, 256]",
            "BTNS,BSC->BTNC",
            normal(batch, 1, 16, length),
            normal(batch, length, 256),
            mla_flops,
        ),
    ]
    results = []
    for name, equation, left, right, flops in cases:
        product = jax.jit(functools.partial(jnp.einsum, equation))
        results.append((name, best_seconds(product, left, right), flops))
    return results


def print_kernel_checks(batch: int, length: int, matmul: float) -> None:
    layouts = compare_gqa_layouts(batch, length)
    print(
        f"\nOne MHA layer's decode attention at {length} tokens, batch {batch}: "
        f"{layouts['BKSH'] * 1e3:.1f} ms with the cache [B, K, S, H], "
        f"{layouts['BSKH'] * 1e3:.1f} ms with [B, S, K, H]."
    )
    print(f"\nCache-reading products of one layer alone, {length} tokens, batch {batch}:")
    for name, seconds, flops in time_cache_products(batch, length):
        print(
            f"- {name}: {seconds * 1e3:.1f} ms, {flops / seconds / 1e9:.0f} GFLOP/s "
            f"({flops / seconds / matmul:.0%} of the square matmul)"
        )


def format_range(values: list[float], unit: float, spec: str) -> str:
    return f"{min(values) / unit:{spec}} to {max(values) / unit:{spec}}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_KINDS.value) - set(KIND_FIELDS))
    if unknown:
        raise app.UsageError(f"Unknown kinds {unknown}; choose among {sorted(KIND_FIELDS)}.")
    lengths, batch = sorted(int(x) for x in _LENGTHS.value), _BATCH.value
    if lengths[0] < 2:
        raise app.UsageError(f"Context lengths must be at least 2, got {lengths[0]}.")
    seconds, references = measure_all(_KINDS.value, lengths, batch)
    bandwidth, matmul = max(references["bandwidth"]), max(references["matmul"])
    print(f"Machine: {cpu_description()}; JAX {jax.__version__} on {jax.default_backend()}.")
    bandwidth_range = format_range(references["bandwidth"], 1e9, ".1f")
    matmul_range = format_range(references["matmul"], 1e9, ".0f")
    print(
        f"Measured read bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul "
        f"{matmul / 1e9:.0f} GFLOP/s (best of {len(references['bandwidth'])} measurements; "
        f"range {bandwidth_range} GB/s, {matmul_range} GFLOP/s)."
    )
    waiter = references["idle"]
    print(
        f"Batch {batch}, cache dtype {_CACHE_DTYPE.value}, best of {_ROUNDS.value} rounds; "
        f"{waiter.idle_starts} of {waiter.measurements} measurements started on idle CPUs.\n"
    )
    rows = [
        table_row(kind, length, seconds[kind, length], batch, bandwidth, matmul)
        for length in lengths
        for kind in _KINDS.value
    ]
    print_table(rows)
    print()
    print_ratios(rows)
    if _KERNEL_CHECKS.value:
        print_kernel_checks(batch, lengths[-1], matmul)


if __name__ == "__main__":
    app.run(main)
