"""Cached decoding against the full forward pass, for every attention kind, in float32 on CPU.

The tiny models get attention weights of std 0.2 (against 0.02 at init), so attention is far
from uniform and a wrong position, mask or cache slot changes the logits by far more than the
tolerance (`test_position_gap_changes_logits`). Compiled functions are shared through
module-level caches, one compilation per kind and shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CompileCounter
from flax import nnx

from mla_jax import decoding
from mla_jax.config import ModelConfig, kv_cache_bytes_per_token
from mla_jax.decoding import roofline
from mla_jax.model import Transformer

VOCAB = 258
ATTENTION_STD = 0.2
EMBEDDING_STD = 0.125  # 1/sqrt(d_model): logits of std 1
# Max abs logit difference, float32 compute and cache. Measured: at most 1.0e-5 (MLA with RoPE
# keys per KV head, naive decoding, against the full pass's single fused product), 4.2e-6 for
# the other kinds: rounding of float32 sums taken in another order. Larger weights raise both.
F32_TOL = 2e-5
# Same with a bfloat16 cache (8 significant bits). Measured: at most 0.034, mean 0.003.
BF16_TOL = 0.05

CONVERTED = {
    "attention": "mla",
    "q_lora_rank": None,
    "mla_latent_norm": False,
    "mla_rope_per_kv_head": True,
    "num_kv_heads": 2,
    "mla_rope_pairs": (((0, 2, 5, 7), (1, 3, 4, 6)), ((7, 6, 0, 1), (2, 3, 4, 5))),
}
KINDS = {
    "mha": {"attention": "mha"},
    "gqa": {"attention": "gqa", "num_kv_heads": 2},
    "mqa": {"attention": "mqa", "num_kv_heads": 1},
    "mla_absorbed": {"attention": "mla", "mla_decode": "absorbed"},
    "mla_naive": {"attention": "mla", "mla_decode": "naive"},
    "mla_no_q_lora": {"attention": "mla", "q_lora_rank": None},
    # The layout of a model converted from GQA: no latent norm, a RoPE key per KV head turning
    # at chosen pairs of a head of 16 dims.
    "mla_per_kv_head": CONVERTED,
    "mla_per_kv_head_naive": {**CONVERTED, "mla_decode": "naive"},
    # Every key dim rotated, so the latent holds only values.
    "mla_no_nope": {**CONVERTED, "qk_nope_head_dim": 0, "num_kv_heads": 4, "mla_rope_pairs": None},
}
# Teacher-forced cases: prompt lengths of the rows of one batch of TOKENS, right-padded to the
# longest. The rest of each row is fed one token per decode step.
CASES = {"mixed_lengths": (1, 6, 13), "prefill_of_one": (1, 1, 1)}
TOKENS = np.random.default_rng(7).integers(0, VOCAB, size=(3, 24), dtype=np.int32)
CACHE_LEN = 40  # longer than any case needs, so never-written slots are present and masked


def tiny_config(**overrides) -> ModelConfig:
    fields = {
        "vocab_size": VOCAB,
        "attention": "mha",
        "num_layers": 2,
        "d_model": 64,
        "num_heads": 4,
        "num_kv_heads": 4,
        "head_dim": 16,
        "mlp_dim": 128,
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "mla_latent_norm": True,
        "mla_rope_per_kv_head": False,
        "mla_rope_pairs": None,
        "max_seq_len": 64,
        "tie_embeddings": True,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "dtype": "float32",
        "cache_dtype": "float32",
        "mla_decode": "absorbed",
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def make_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Build a model with large attention weights and embedding; equal seeds give equal weights."""
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1000)
    for block in model.blocks:
        for name, param in sorted(vars(block.attention).items()):
            if isinstance(param, nnx.Param) and name.startswith("w_"):
                key, sub = jax.random.split(key)
                param[...] = ATTENTION_STD * jax.random.normal(sub, param.shape)
    model.embedding.table[...] = EMBEDDING_STD * jax.random.normal(key, model.embedding.table.shape)
    return model


@functools.cache
def model_for(kind: str, cache_dtype: str = "float32") -> Transformer:
    return make_model(tiny_config(cache_dtype=cache_dtype, **KINDS[kind]))


@functools.partial(jax.jit, static_argnames="graphdef")
def _prefill_then_steps(graphdef, state, prompts, lengths, continuations):
    """Prefill right-padded prompts [B, P], then feed continuations [B, J] one column at a time."""
    model = nnx.merge(graphdef, state)
    cache = decoding.init_cache(model, prompts.shape[0], CACHE_LEN)
    prompt_logits, cache = decoding.forward_cached(model, prompts, cache, lengths)

    def step(cache, tokens):
        logits, cache = decoding.decode_step(model, tokens, cache)
        return cache, logits

    _, step_logits = jax.lax.scan(step, cache, continuations.T)
    return prompt_logits, step_logits.transpose(1, 0, 2)


@functools.cache
def cached_logits(kind: str, case: str, cache_dtype: str = "float32") -> np.ndarray:
    """Logits [B, T, V] of every position, from the prefill up to each prompt length, then from
    single decode steps fed the true next tokens."""
    tokens, lengths = TOKENS, np.array(CASES[case], np.int32)
    batch, total = tokens.shape
    steps = total - lengths.min()
    continuations = np.zeros((batch, steps), np.int32)  # zero past a row's end; never compared
    for b, length in enumerate(lengths):
        continuations[b, : total - length] = tokens[b, length:]
    graphdef, state = nnx.split(model_for(kind, cache_dtype))
    prompts = tokens[:, : lengths.max()]
    prompt_logits, step_logits = map(
        np.asarray, _prefill_then_steps(graphdef, state, prompts, lengths, continuations)
    )
    out = np.zeros((batch, total, prompt_logits.shape[-1]), np.float32)
    for b, length in enumerate(lengths):
        out[b, :length] = prompt_logits[b, :length]
        out[b, length:] = step_logits[b, : total - length]
    return out


@functools.cache
def full_logits(kind: str) -> np.ndarray:
    """Teacher-forced logits of TOKENS from the full causal forward pass."""
    return np.asarray(jax.jit(lambda model, tokens: model(tokens))(model_for(kind), TOKENS))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a[..., :VOCAB] - b[..., :VOCAB])))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_decode_matches_full_forward(kind, case):
    assert max_abs_diff(cached_logits(kind, case), full_logits(kind)) <= F32_TOL


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bfloat16_cache_within_tolerance(kind):
    error = max_abs_diff(cached_logits(kind, "mixed_lengths", "bfloat16"), full_logits(kind))
    assert error <= BF16_TOL


@pytest.mark.parametrize(
    "absorbed_kind, naive_kind",
    [("mla_absorbed", "mla_naive"), ("mla_per_kv_head", "mla_per_kv_head_naive")],
)
def test_mla_absorbed_equals_naive(absorbed_kind, naive_kind):
    absorbed = cached_logits(absorbed_kind, "mixed_lengths")
    naive = cached_logits(naive_kind, "mixed_lengths")
    assert max_abs_diff(absorbed, naive) <= F32_TOL


@pytest.mark.parametrize("kind", ["mha", "mla_absorbed"])
def test_position_gap_changes_logits(kind):
    """Guards the premise of the tolerances: one skipped position moves every later logit row."""
    model = model_for(kind)
    positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape).copy()
    positions[:, :12] -= 1  # positions 11 and 12 now lie two apart
    moved = np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(positions)))
    change = np.abs(moved - full_logits(kind))[:, 12:, :VOCAB].max(axis=-1)
    assert change.min() > 2 * BF16_TOL


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cache_bytes_match_formula(kind, cache_dtype):
    model = model_for(kind)
    cache = decoding.init_cache(model, 3, CACHE_LEN, cache_dtype)
    per_token = kv_cache_bytes_per_token(model.cfg, cache_dtype)
    assert decoding.cache_nbytes(cache) == per_token * 3 * CACHE_LEN
    assert all(x.dtype == jnp.dtype(cache_dtype) for layer in cache.layers for x in layer.values())


def test_mla_caches_only_latent_and_rope_key():
    cfg = model_for("mla_absorbed").cfg
    cache = decoding.init_cache(model_for("mla_absorbed"), 3, CACHE_LEN)
    for layer in cache.layers:
        assert set(layer) == {"latent", "rope_key"}
        assert layer["latent"].shape == (3, CACHE_LEN, cfg.kv_lora_rank)
        assert layer["rope_key"].shape == (3, CACHE_LEN, cfg.qk_rope_head_dim)


def test_rope_key_cache_per_kv_head():
    cache = decoding.init_cache(model_for("mla_per_kv_head"), 3, CACHE_LEN)
    for layer in cache.layers:
        assert set(layer) == {"latent", "rope_key"}
        assert layer["latent"].shape == (3, CACHE_LEN, 32)
        assert layer["rope_key"].shape == (3, 2, CACHE_LEN, 8)


def test_gqa_caches_key_and_value_per_kv_head():
    cache = decoding.init_cache(model_for("gqa"), 3, CACHE_LEN)
    for layer in cache.layers:
        assert set(layer) == {"key", "value"}
        assert layer["key"].shape == layer["value"].shape == (3, 2, CACHE_LEN, 16)


def test_cache_dtype_defaults_to_config():
    cache = decoding.init_cache(model_for("mqa", "bfloat16"), 2, 8)
    assert {x.dtype for layer in cache.layers for x in layer.values()} == {jnp.dtype(jnp.bfloat16)}


# Generation. Prompts of 3, 7 and 12 tokens share one padded width (16), so the single-prompt
# runs share one compilation per kind, and so do all batch runs.
PROMPTS = [TOKENS[0, :3], TOKENS[1, :7], TOKENS[2, :12]]
NEW_TOKENS = 10
GENERATE_CACHE_LEN = 32


def generate(kind: str, prompts, **kwargs) -> decoding.Generation:
    kwargs.setdefault("cache_len", GENERATE_CACHE_LEN)
    return decoding.generate(model_for(kind), prompts, NEW_TOKENS, **kwargs)


@pytest.mark.parametrize("kind", ["gqa", "mla_absorbed"])
def test_batch_generates_like_single_prompts(kind):
    batch = generate(kind, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(kind, [prompt])
        np.testing.assert_array_equal(batch.tokens[row], alone.tokens[0])
    assert batch.tokens.shape == (3, NEW_TOKENS)
    np.testing.assert_array_equal(batch.lengths, [NEW_TOKENS] * 3)


def test_generate_compiles_once_per_shape():
    generate("gqa", PROMPTS)  # compiles, unless an earlier test did
    other_prompts = [TOKENS[2, 5:9], TOKENS[0, :16], TOKENS[1, 3:14]]  # same padded width, 16
    with CompileCounter() as counter:
        generate("gqa", other_prompts, temperature=0.8, top_k=20, top_p=0.9, seed=3)
        generate("gqa", PROMPTS, temperature=1.3, seed=4, stop_token=5)
    assert counter.count == 0


def test_stop_token_ends_rows():
    free = generate("gqa", PROMPTS)
    stop = int(free.tokens[0, 2])
    first_stop = [int(np.argmax(row == stop)) if stop in row else None for row in free.tokens]
    stopped = generate("gqa", PROMPTS, stop_token=stop)
    for row, index in enumerate(first_stop):
        if index is None:
            assert stopped.lengths[row] == NEW_TOKENS
            np.testing.assert_array_equal(stopped.tokens[row], free.tokens[row])
        else:
            assert stopped.lengths[row] == index + 1
            np.testing.assert_array_equal(
                stopped.tokens[row, : index + 1], free.tokens[row, : index + 1]
            )
            assert np.all(stopped.tokens[row, index:] == stop)
    assert first_stop[0] <= 2


def test_sampling_with_seed_is_reproducible():
    first = generate("gqa", PROMPTS, temperature=1.0, seed=11)
    again = generate("gqa", PROMPTS, temperature=1.0, seed=11)
    other = generate("gqa", PROMPTS, temperature=1.0, seed=12)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert not np.array_equal(first.tokens, other.tokens)


def test_top_k_of_one_is_greedy():
    greedy = generate("gqa", PROMPTS)
    top_one = generate("gqa", PROMPTS, temperature=1.0, top_k=1, seed=5)
    np.testing.assert_array_equal(top_one.tokens, greedy.tokens)


# Overflow and bad input are rejected on the host, before anything is compiled or run.
@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        (
            PROMPTS,
            {"cache_len": 20},
            (
                r"12 tokens\) plus max_new_tokens=10 needs 22 positions, "
                r"more than the cache length \(20\)"
            ),
        ),
        (
            [np.zeros(60, np.int32)],
            {"cache_len": None},
            r"needs 70 positions, more than config.model.max_seq_len=64",
        ),
        (PROMPTS, {"cache_len": 65}, r"cache_len=65 exceeds config.model.max_seq_len=64"),
        ([TOKENS[0, :3], []], {}, r"Prompt 1 is empty"),
        ([[1, 2, VOCAB]], {}, r"outside the vocabulary \[0, 258\)"),
        (PROMPTS, {"top_p": 0.0}, r"top_p=0.0 must lie in \(0, 1\]"),
        (PROMPTS, {"temperature": -1.0}, r"temperature=-1.0 must be >= 0"),
        (PROMPTS, {"stop_token": -2}, r"stop_token=-2 is outside the vocabulary"),
    ],
)
def test_generate_rejects_bad_requests(prompts, kwargs, message):
    model_for("mqa")  # builds the model outside the counter
    with CompileCounter() as counter, pytest.raises(ValueError, match=message):
        generate("mqa", prompts, **kwargs)
    assert counter.count == 0


def test_max_new_tokens_must_be_positive():
    with pytest.raises(ValueError, match="max_new_tokens=0 must be at least 1"):
        decoding.generate(model_for("mqa"), PROMPTS, 0)


# Sampling rules, on fixed logits. Ids 0..4 have probabilities 0.4, 0.3, 0.2, 0.1 and 0; ids
# 5..7 are vocabulary padding.
SAMPLE_LOGITS = np.log(np.array([[0.4, 0.3, 0.2, 0.1, 1e-30, 1e-30, 1e-30, 1e-30]], np.float32))
SAMPLE_LOGITS[:, 5:] = -1e30


@functools.cache
def draw_counts(temperature: float, top_k: int, top_p: float, draws: int = 4000) -> np.ndarray:
    """How often each id comes up in `draws` independent samples."""
    logits = jnp.broadcast_to(jnp.asarray(SAMPLE_LOGITS), (draws, SAMPLE_LOGITS.shape[1]))
    params = decoding.SamplingParams(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    ids = jax.jit(decoding.sample_tokens)(logits, jax.random.key(0), params)
    return np.bincount(np.asarray(ids), minlength=SAMPLE_LOGITS.shape[1])


def test_sampling_at_temperature_zero_is_argmax():
    assert draw_counts(0.0, 0, 1.0)[0] == 4000


def test_sampling_follows_probabilities():
    frequencies = draw_counts(1.0, 0, 1.0) / 4000
    np.testing.assert_allclose(frequencies[:4], [0.4, 0.3, 0.2, 0.1], atol=0.03)
    assert frequencies[4:].sum() == 0


def test_top_k_keeps_the_k_likeliest():
    counts = draw_counts(1.0, 2, 1.0)
    assert counts[2:].sum() == 0
    np.testing.assert_allclose(counts[0] / counts[:2].sum(), 0.4 / 0.7, atol=0.03)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    counts = draw_counts(1.0, 0, 0.75)  # 0.4 + 0.3 < 0.75, so id 2 is needed too
    assert counts[:3].min() > 0
    assert counts[3:].sum() == 0


def test_temperature_divides_logits():
    frequencies = draw_counts(4.0, 0, 1.0) / 4000
    scaled = np.exp(SAMPLE_LOGITS[0, :5] / 4.0)
    np.testing.assert_allclose(frequencies[:5], scaled / scaled.sum(), atol=0.03)
    assert frequencies[5:].sum() == 0


# Per-token losses through the cache, for evaluation.
@pytest.mark.parametrize("kind", ["mha", "mla_absorbed", "mla_naive"])
def test_cached_token_losses_match_teacher_forced(kind):
    targets = np.roll(TOKENS, -1, axis=1)
    losses = np.asarray(decoding.cached_token_losses(model_for(kind), TOKENS, targets))
    log_probs = np.asarray(jax.nn.log_softmax(full_logits(kind), axis=-1))
    expected = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    assert losses.dtype == np.float32
    assert losses.shape == TOKENS.shape
    assert np.max(np.abs(losses - expected)) <= F32_TOL
    perplexity, expected_perplexity = np.exp(losses.mean()), np.exp(expected.mean())
    assert abs(perplexity / expected_perplexity - 1) <= 1e-4


def test_cached_token_losses_rejects_long_windows():
    tokens = np.zeros((1, 65), np.int32)
    with pytest.raises(ValueError, match="Windows of 65 tokens exceed config.model.max_seq_len=64"):
        decoding.cached_token_losses(model_for("mha"), tokens, tokens)


# Roofline bookkeeping of scripts/bench_decode.py.
@pytest.mark.parametrize(
    "overrides, flops_per_slot",
    [
        ({"attention": "mha"}, 4 * 4 * 16),  # q.k and p.v, 4 heads of 16
        ({"attention": "mla", "mla_decode": "absorbed"}, 2 * 4 * (32 + 8) + 2 * 4 * 32),
        ({"attention": "mla", "mla_decode": "naive"}, 2 * 32 * 4 * 32 + 2 * 4 * 24 + 2 * 4 * 16),
    ],
)
def test_attention_flops_per_slot(overrides, flops_per_slot):
    cfg = tiny_config(**overrides)
    assert roofline.attention_flops(cfg, batch=3, length=10) == flops_per_slot * 3 * 10 * 2


def test_roofline_picks_the_slower_bound():
    cfg = tiny_config(attention="mha")
    cache_bytes = kv_cache_bytes_per_token(cfg) * 3 * 10
    slow_memory = roofline.decode_roofline(cfg, 3, 10, bandwidth=1.0, matmul=1e12)
    assert slow_memory == (cache_bytes, "memory")
    slow_compute = roofline.decode_roofline(cfg, 3, 10, bandwidth=1e12, matmul=1.0)
    assert slow_compute == (roofline.attention_flops(cfg, 3, 10), "compute")
