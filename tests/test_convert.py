"""MHA/GQA/MQA to MLA conversion: exact factors and logits at full rank, cached decoding, a
trained checkpoint before and after fine-tuning, the report, and errors on bad input.

Models held in memory use attention weights of std 0.2 and an embedding of std 0.125, as in
test_decoding.py. Attention is then far from uniform, so a wrong rotation, pair or factor moves
the logits by far more than the tolerances. The reference for the converted logits is
the source's own attention written here in jnp, with RoPE switched off (frequency 0) on the
pairs that the conversion drops.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, load_config_module
from test_ablation import fake_record
from mla_jax import data, decoding, evaluation
from mla_jax.ablation import results
from mla_jax.ablation.report import write_report
from mla_jax.ablation.table import Budget
from mla_jax.config import (
    ConfigError,
    base_config,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token_per_layer,
    model_config_from,
)
from mla_jax.conversion import ConversionError, convert_workdir, rope_pairs
from mla_jax.conversion.convert import converted_params, read_source_config, target_config
from mla_jax.conversion.factorize import convert_attention, max_kv_lora_rank, nope_dims
from mla_jax.conversion.sweep import Finetune, run_conversion_sweep
from mla_jax.model import Transformer
from mla_jax.training import checkpoints
from mla_jax.training.loop import train
from mla_jax.training.state import model_graphdef
from mla_jax.training.workdir import check_saved_config

VOCAB = 258
ATTENTION_STD = 0.2
EMBEDDING_STD = 0.125
ROPE_DIM = 8  # 4 of the 8 pairs of a head of 16 keep RoPE
# Max abs error of the full-rank factors against the source columns, in float64 before they
# are stored as float32. Measured: at most 2.9e-15.
FACTOR_TOL = 1e-5
# Max abs logit difference (logits of std 1), converted model vs the partial-RoPE reference,
# float32. Measured: at most 4.6e-6.
LOGIT_TOL = 1e-4
# Max abs logit difference, cached decoding vs the full forward pass, as in test_decoding.py.
# Measured: at most 4.3e-6.
DECODE_TOL = 1e-5
SOURCE_KINDS = ("mha", "gqa", "mqa")
TOKENS = np.random.default_rng(3).integers(0, VOCAB, size=(2, 24), dtype=np.int32)


def tiny_experiment(kind: str):
    return load_config_module(REPO / "configs" / "tiny.py").get_config(kind)


@functools.cache
def source_model(kind: str) -> Transformer:
    """A tiny source model with large attention weights and embedding."""
    cfg = model_config_from(tiny_experiment(kind).model, VOCAB)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    for block in model.blocks:
        for name in ("w_q", "w_k", "w_v", "w_o"):
            key, sub = jax.random.split(key)
            param = getattr(block.attention, name)
            param[...] = ATTENTION_STD * jax.random.normal(sub, param.shape)
    model.embedding.table[...] = EMBEDDING_STD * jax.random.normal(key, model.embedding.table.shape)
    return model


def chosen_pairs(kind: str) -> tuple:
    """Pairs [L][K][P/2] drawn at random, so that no layer or head keeps the same ones."""
    cfg = source_model(kind).cfg
    rng = np.random.default_rng(5)
    half = cfg.head_dim // 2
    return tuple(
        tuple(
            tuple(sorted(int(i) for i in rng.choice(half, ROPE_DIM // 2, replace=False)))
            for _ in range(cfg.num_kv_heads)
        )
        for _ in range(cfg.num_layers)
    )


def full_rank(kind: str) -> int:
    cfg = source_model(kind).cfg
    return max_kv_lora_rank(cfg.d_model, cfg.num_kv_heads, cfg.head_dim, ROPE_DIM)


@functools.cache
def converted_model(kind: str, mode: str = "absorbed", rank: int | None = None) -> Transformer:
    """The source converted in memory with `chosen_pairs`, at full rank unless `rank`."""
    source = source_model(kind)
    rank = rank or full_rank(kind)
    config = target_config(tiny_experiment(kind), source.cfg, rank, ROPE_DIM, chosen_pairs(kind))
    target = model_config_from(config.model, VOCAB).replace(mla_decode=mode)
    params, _ = converted_params(source, target, rank)
    return nnx.merge(model_graphdef(target), params)


def layer_weights(block) -> dict[str, np.ndarray]:
    return {n: np.asarray(getattr(block.attention, n)[...]) for n in ("w_q", "w_k", "w_v", "w_o")}


# The reference: the source's attention with RoPE on the kept pairs only.
def rotate(x: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Half-split rotation of x [B, T, N, H] at position t by t * inv_freq [N, H/2]."""
    half = x.shape[-1] // 2
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[None, :, None, None] * inv_freq[None, None]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def partial_rope_attention(attention, x: jax.Array, kept: np.ndarray, theta: float) -> jax.Array:
    """Causal attention of x [B, T, D] where only the kept pairs [K, H/2] of each KV head turn."""
    w_q, w_k, w_v, w_o = (getattr(attention, n)[...] for n in ("w_q", "w_k", "w_v", "w_o"))
    batch, length, _ = x.shape
    _, heads, head_dim = w_q.shape
    group = heads // w_k.shape[1]
    freqs = theta ** (-2.0 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim)
    key_freqs = jnp.where(kept, freqs, 0.0)  # a dropped pair turns at frequency 0
    query = rotate(jnp.einsum("BTD,DNH->BTNH", x, w_q), jnp.repeat(key_freqs, group, axis=0))
    key = rotate(jnp.einsum("BTD,DKH->BTKH", x, w_k), key_freqs)
    key = jnp.repeat(key, group, axis=2)
    value = jnp.repeat(jnp.einsum("BTD,DKH->BTKH", x, w_v), group, axis=2)
    scores = jnp.einsum("BTNH,BSNH->BNTS", query, key) / math.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((length, length), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("BNTS,BSNH->BTNH", probs, value).reshape(batch, length, heads * head_dim)
    return out @ w_o.reshape(heads * head_dim, -1)


def kept_mask(pairs_per_key, head_dim: int) -> np.ndarray:
    kept = np.zeros((len(pairs_per_key), head_dim // 2), bool)
    for key, pairs in enumerate(pairs_per_key):
        kept[key, list(pairs)] = True
    return kept


def reference_logits(kind: str, pairs) -> np.ndarray:
    """Logits of the source with partial RoPE; pairs None keeps every pair (the source itself)."""
    source = source_model(kind)
    cfg = source.cfg
    x = source.embedding(jnp.asarray(TOKENS), jnp.float32)
    for layer, block in enumerate(source.blocks):
        if pairs is None:
            kept = np.ones((cfg.num_kv_heads, cfg.head_dim // 2), bool)
        else:
            kept = kept_mask(pairs[layer], cfg.head_dim)
        attention = partial_rope_attention(
            block.attention, block.attention_norm(x), kept, cfg.rope_theta
        )
        x = x + attention
        x = x + block.mlp(block.mlp_norm(x))
    return np.asarray(source.output_logits(x))


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a)[..., :VOCAB] - np.asarray(b)[..., :VOCAB])))


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_full_rank_factors_reproduce_projections(kind):
    source = source_model(kind)
    cfg, pairs = source.cfg, chosen_pairs(kind)
    group = cfg.num_heads // cfg.num_kv_heads
    for layer, block in enumerate(source.blocks):
        weights = layer_weights(block)
        converted, factors = convert_attention(weights, pairs[layer], full_rank(kind))
        assert factors.relative_error < 1e-12
        for k in range(cfg.num_kv_heads):
            nope = nope_dims(pairs[layer][k], cfg.head_dim)
            key_nope = factors.down @ factors.up_key[:, k]
            value = factors.down @ factors.up_value[:, k]
            assert np.max(np.abs(key_nope - weights["w_k"][:, k, nope])) <= FACTOR_TOL
            assert np.max(np.abs(value - weights["w_v"][:, k])) <= FACTOR_TOL
            # Query heads of KV head k share its up-projections.
            for n in range(k * group, (k + 1) * group):
                np.testing.assert_array_equal(converted["w_uk"][:, n], factors.up_key[:, k])
                np.testing.assert_array_equal(converted["w_uv"][:, n], factors.up_value[:, k])


def test_truncated_factors_have_eckart_young_error():
    block = source_model("mha").blocks[0]
    pairs = chosen_pairs("mha")[0]
    _, full = convert_attention(layer_weights(block), pairs, full_rank("mha"))
    _, truncated = convert_attention(layer_weights(block), pairs, 8)
    squared = full.singular_values**2
    expected = math.sqrt(squared[8:].sum() / squared.sum())
    assert truncated.relative_error == pytest.approx(expected, rel=1e-9)
    assert truncated.kept_energy == pytest.approx(1 - expected**2, rel=1e-9)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_reference_with_every_pair_is_source(kind):
    """Checks the reference itself: keeping every pair gives the source's own logits."""
    source_logits = source_model(kind)(jnp.asarray(TOKENS))
    assert max_abs_diff(reference_logits(kind, None), source_logits) <= DECODE_TOL


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_converted_logits_match_partial_rope_reference(kind):
    converted = converted_model(kind)(jnp.asarray(TOKENS))
    assert max_abs_diff(converted, reference_logits(kind, chosen_pairs(kind))) <= LOGIT_TOL
    # Dropping RoPE from half the pairs does change the model, by far more than the tolerance.
    assert max_abs_diff(converted, source_model(kind)(jnp.asarray(TOKENS))) > 100 * LOGIT_TOL


@functools.partial(jax.jit, static_argnames="graphdef")
def _decode_all(graphdef, state, tokens):
    """Logits [B, T, V] from feeding tokens [B, T] one at a time through an empty cache."""
    model = nnx.merge(graphdef, state)

    def step(cache, column):
        logits, cache = decoding.decode_step(model, column, cache)
        return cache, logits

    cache = decoding.init_cache(model, tokens.shape[0], tokens.shape[1])
    _, logits = jax.lax.scan(step, cache, tokens.T)
    return logits.transpose(1, 0, 2)


@pytest.mark.parametrize("mode", ["absorbed", "naive"])
@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_converted_cached_decode_matches_forward(kind, mode):
    model = converted_model(kind, mode)
    cached = _decode_all(*nnx.split(model), jnp.asarray(TOKENS))
    assert max_abs_diff(cached, model(jnp.asarray(TOKENS))) <= DECODE_TOL


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_converted_cache_bytes_match_arrays(kind):
    model = converted_model(kind, rank=8)
    cfg = model.cfg
    assert kv_cache_elements_per_token_per_layer(cfg) == 8 + cfg.num_kv_heads * ROPE_DIM
    cache = decoding.init_cache(model, 3, 20)
    assert decoding.cache_nbytes(cache) == kv_cache_bytes_per_token(cfg) * 3 * 20
    for layer in cache.layers:
        assert layer["latent"].shape == (3, 20, 8)
        assert layer["rope_key"].shape == (3, cfg.num_kv_heads, 20, ROPE_DIM)


# The choice of RoPE pairs.
@pytest.mark.parametrize("criterion", rope_pairs.CRITERIA)
def test_pair_choice_follows_norms(criterion):
    """Pair 1 of KV head 0 in layer 0, scaled up in queries and keys, is always kept."""
    model = source_model("gqa")
    cfg = model.cfg
    half, group = cfg.head_dim // 2, cfg.num_heads // cfg.num_kv_heads
    graphdef, state = nnx.split(model)
    boosted = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    attention = boosted.blocks[0].attention
    for dim in (1, 1 + half):
        attention.w_k[:, 0, dim] *= 10.0
        attention.w_q[:, :group, dim] *= 10.0
    if criterion == "weights":
        norms = rope_pairs.pair_norms_from_weights(boosted)
    else:
        norms = rope_pairs.pair_norms_from_data(boosted, TOKENS)
    scores = rope_pairs.pair_scores(*norms)
    assert scores.shape == (cfg.num_layers, cfg.num_kv_heads, half)
    assert int(np.argmax(scores[0, 0])) == 1
    assert 1 in rope_pairs.top_pairs(scores, 1)[0][0]


def test_pair_scores_sum_over_query_group():
    query = np.arange(1.0, 9.0).reshape(1, 4, 2)  # 4 query heads, 2 pairs
    key = np.array([[[1.0, 10.0], [2.0, 0.5]]])  # 2 KV heads
    expected = np.array([[[(1 + 3) * 1.0, (2 + 4) * 10.0], [(5 + 7) * 2.0, (6 + 8) * 0.5]]])
    np.testing.assert_allclose(rope_pairs.pair_scores(query, key), expected)


def test_top_pairs_ties_prefer_low_index():
    scores = np.array([[[1.0, 3.0, 3.0, 3.0, 0.5]]])
    assert rope_pairs.top_pairs(scores, 2) == (((1, 2),),)


def test_pair_norms_from_data_match_numpy():
    model = source_model("mha")
    query_norms, key_norms = rope_pairs.pair_norms_from_data(model, TOKENS)
    block = model.blocks[0]
    hidden = np.asarray(block.attention_norm(model.embedding(jnp.asarray(TOKENS), jnp.float32)))
    key = np.einsum("btd,dkh->btkh", hidden, np.asarray(block.attention.w_k[...]))
    half = key.shape[-1] // 2
    expected = np.sqrt(key[..., :half] ** 2 + key[..., half:] ** 2).mean(axis=(0, 1))
    np.testing.assert_allclose(key_norms[0], expected, rtol=1e-5)
    assert query_norms.shape == (2, 4, half)


# MLA options in the config, and runs recorded before they existed.
def mla_config(**fields):
    config = tiny_experiment("mla")
    config.model.q_lora_rank = None
    for name, value in fields.items():
        config.model[name] = value
    return config


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"mla_rope_pairs": ((0, 1, 2, 3),)},
            r"mla_rope_pairs must have the shape \[num_layers=2\]",
        ),
        (
            {"mla_rope_pairs": (((0, 1, 2, 8),), ((0, 1, 2, 3),))},
            r"mla_rope_pairs\[0\]\[0\]=\(0, 1, 2, 8\) must hold 4 distinct pair indices in "
            r"\[0, 8\)",
        ),
        (
            {"mla_rope_pairs": (((0, 1, 2, 3),), ((0, 1, 1, 3),))},
            r"mla_rope_pairs\[1\]\[0\]=\(0, 1, 1, 3\) must hold 4 distinct",
        ),
        (
            {"mla_rope_per_kv_head": True, "num_kv_heads": 3},
            r"num_heads=4 is not divisible by num_kv_heads=3, the number of RoPE keys",
        ),
        ({"qk_nope_head_dim": -2}, r"qk_nope_head_dim=-2 must be an integer >= 0"),
        ({"mla_latent_norm": 1}, r"mla_latent_norm=1 must be True or False"),
    ],
)
def test_invalid_mla_options_rejected(fields, message):
    valid = model_config_from(mla_config().model, VOCAB)
    with pytest.raises(ConfigError, match=message):
        valid.replace(**fields)


def test_rope_pairs_from_json_lists_accepted():
    config = mla_config(mla_rope_per_kv_head=True, num_kv_heads=2)
    config.model.mla_rope_pairs = [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 2, 4, 6], [1, 3, 5, 7]]]
    cfg = model_config_from(config.model, VOCAB)
    assert cfg.mla_rope_pairs[1][0] == (0, 2, 4, 6)
    assert hash(cfg)


def test_config_json_older_than_options_accepted(tmp_path):
    recorded = json.loads(tiny_experiment("mla").to_json())
    for name in ("mla_latent_norm", "mla_rope_per_kv_head", "mla_rope_pairs"):
        del recorded["model"][name]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    check_saved_config(str(tmp_path), tiny_experiment("mla"))
    with pytest.raises(ConfigError, match=r"model.mla_latent_norm: True -> False"):
        check_saved_config(str(tmp_path), mla_config(q_lora_rank=32, mla_latent_norm=False))


def test_model_config_older_than_options_accepted():
    recorded = json.loads(tiny_experiment("mla").to_json())["model"]
    for name in ("mla_latent_norm", "mla_rope_per_kv_head", "mla_rope_pairs"):
        del recorded[name]
    cfg = model_config_from(ml_collections.ConfigDict(recorded), VOCAB)
    assert cfg == model_config_from(tiny_experiment("mla").model, VOCAB)


def test_checkpoint_older_than_options_accepted():
    cfg = model_config_from(tiny_experiment("mla").model, VOCAB)
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name in ("mla_latent_norm", "mla_rope_per_kv_head", "mla_rope_pairs"):
        del saved[name]
    checkpoints._check_model_config(saved, cfg, "old", 20)
    with pytest.raises(checkpoints.CheckpointError, match="mla_latent_norm: checkpoint True"):
        checkpoints._check_model_config(saved, cfg.replace(mla_latent_norm=False), "old", 20)


# A trained checkpoint, converted through workdirs.
# At 300 steps the tiny MHA reaches a validation perplexity of about 16, against 28 for the
# unigram baseline, so its attention matters. After 40 steps it had not got below the baseline,
# and every latent width scored the same.
TRAIN_STEPS = 300
SMALL_RANK = 4
EVAL_WINDOWS = 32


@pytest.fixture(scope="module")
def trained_source(tmp_path_factory):
    """A tiny MHA trained for TRAIN_STEPS steps; returns its workdir."""
    config = tiny_experiment("mha")
    config.num_train_steps = TRAIN_STEPS
    config.learning_rate, config.warmup_steps = 3e-3, 10
    config.eval_every = 0
    config.checkpoint_every = TRAIN_STEPS
    workdir = tmp_path_factory.mktemp("source")
    train(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def conversions(trained_source, tmp_path_factory):
    """Full-rank and rank-SMALL_RANK conversions of the trained source: {rank: workdir}."""
    root = tmp_path_factory.mktemp("converted")
    rank_full = max_kv_lora_rank(64, 4, 16, ROPE_DIM)
    out = {}
    for rank in (rank_full, SMALL_RANK):
        out[rank] = root / f"r{rank}"
        convert_workdir(str(trained_source), str(out[rank]), rank, ROPE_DIM)
    return out


def val_windows(config) -> dict:
    tokenizer = data.make_tokenizer(config.data)
    stream = data.load_token_stream(config.data, "validation", tokenizer)
    windows = data.eval_windows(stream, config.seq_len)
    return {k: v[:EVAL_WINDOWS] for k, v in windows.items()}


def val_perplexity(workdir, cached: bool = False) -> float:
    """Perplexity of the first EVAL_WINDOWS validation windows at the latest checkpoint."""
    config = read_source_config(str(workdir))
    model, _ = checkpoints.load_model(config, str(workdir))
    windows = val_windows(config)
    if cached:
        return evaluation.score_windows_cached(model, windows, EVAL_WINDOWS)["perplexity"]
    loss_fn = evaluation.make_loss_fn(nnx.graphdef(model))
    scores = evaluation.score_windows(loss_fn, nnx.state(model), windows, EVAL_WINDOWS)
    return scores["perplexity"]


def test_converted_workdir_contents(conversions):
    full = max(conversions)
    record = json.loads((conversions[full] / "conversion.json").read_text())
    assert record["kv_lora_rank"] == full == record["max_kv_lora_rank"] == 64
    assert record["source_step"] == TRAIN_STEPS
    assert max(record["factor_relative_error"]) < 1e-12
    assert record["kv_cache_elements_per_token_per_layer"] == 64 + 4 * ROPE_DIM
    assert record["source_kv_cache_elements_per_token_per_layer"] == 2 * 4 * 16
    assert np.asarray(record["rope_pairs"]).shape == (2, 4, ROPE_DIM // 2)
    config = read_source_config(str(conversions[full]))
    assert config.model.attention == "mla"
    assert config.model.mla_latent_norm is False
    assert config.model.mla_rope_per_kv_head is True
    assert config.model.qk_nope_head_dim == 16 - ROPE_DIM
    assert sorted(p.name for p in (conversions[full] / "checkpoints").iterdir()) == ["0"]


def test_cached_perplexity_of_converted_model(conversions):
    workdir = conversions[SMALL_RANK]
    cached, forward = val_perplexity(workdir, cached=True), val_perplexity(workdir)
    assert abs(cached / forward - 1) <= 1e-4


def test_small_latent_worse_before_finetune(conversions):
    assert val_perplexity(conversions[SMALL_RANK]) > val_perplexity(conversions[max(conversions)])


def test_finetune_from_step_zero_lowers_perplexity(conversions, tmp_path):
    """Trains a converted workdir through its config.py, as train.py --config=OUT/config.py."""
    workdir = tmp_path / "finetuned"
    shutil.copytree(conversions[SMALL_RANK], workdir)
    before = val_perplexity(workdir)
    config = load_config_module(workdir / "config.py").get_config()
    config.num_train_steps, config.warmup_steps, config.learning_rate = 20, 2, 3e-3
    train(config, str(workdir))
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == config.log_every
    assert metrics[0]["tokens_seen"] == config.log_every * config.batch_size * config.seq_len
    assert val_perplexity(workdir) < before


# Bad input: each error names the value and the fix, and nothing is written.
@pytest.mark.parametrize(
    "rank, rope_dim, message",
    [
        (65, ROPE_DIM, r"--kv_lora_rank=65 is invalid: it must lie in \[1, 64\]"),
        (0, ROPE_DIM, r"--kv_lora_rank=0 is invalid"),
        (16, 7, r"--qk_rope_head_dim=7 is invalid: it must be even .* for example 6"),
        (16, 18, r"--qk_rope_head_dim=18 is invalid: .* head_dim=16; for example 16"),
        (16, 0, r"--qk_rope_head_dim=0 is invalid"),
    ],
)
def test_bad_sizes_rejected(trained_source, tmp_path, rank, rope_dim, message):
    with pytest.raises(ConversionError, match=message):
        convert_workdir(str(trained_source), str(tmp_path / "out"), rank, rope_dim)
    assert not (tmp_path / "out").exists()


def test_mla_source_rejected(tmp_path):
    (tmp_path / "config.json").write_text(tiny_experiment("mla").to_json())
    with pytest.raises(ConversionError, match=r"already attention='mla'; convert a run with"):
        convert_workdir(str(tmp_path), str(tmp_path / "out"), 16, ROPE_DIM)


def test_missing_workdir_rejected(tmp_path):
    with pytest.raises(ConversionError, match=r"--workdir=.*nowhere does not exist"):
        convert_workdir(str(tmp_path / "nowhere"), str(tmp_path / "out"), 16, ROPE_DIM)
    with pytest.raises(ConversionError, match=r"config.json not found: .* is not a train.py"):
        convert_workdir(str(tmp_path), str(tmp_path / "out"), 16, ROPE_DIM)


def test_out_holding_a_run_rejected(trained_source):
    with pytest.raises(ConversionError, match=r"already contains \['config.json', 'checkpoints'\]"):
        convert_workdir(str(trained_source), str(trained_source), 16, ROPE_DIM)


def test_unknown_criterion_rejected(trained_source, tmp_path):
    with pytest.raises(ConversionError, match="Unknown RoPE pair criterion 'random'"):
        convert_workdir(str(trained_source), str(tmp_path / "out"), 16, ROPE_DIM, "random")


# The report: conversion.jsonl as a second curve next to an ablation's results.
def conversion_line(rank: int, converted: float, finetuned: float, dtype="float32") -> dict:
    elements = rank + 4 * ROPE_DIM
    return {
        "source_attention": "mha",
        "kv_lora_rank": rank,
        "qk_rope_head_dim": ROPE_DIM,
        "kv_cache_elements_per_token_per_layer": elements,
        "kv_cache_bytes_per_token": elements * 2 * 4,
        "kv_cache_dtype": dtype,
        "source_kv_cache_bytes_per_token": 2 * 4 * 16 * 2 * 4,
        "source_val_perplexity": 3.0,
        "converted_val_perplexity": converted,
        "finetuned_val_perplexity": finetuned,
        "source_finetuned_val_perplexity": 2.9,
        "finetune_steps": 10,
    }


def test_report_adds_conversions(tmp_path):
    results.append_record(str(tmp_path / "results.jsonl"), fake_record("mha", "mha", 0, 3.0, 2.0))
    for rank, converted, finetuned in ((64, 3.2, 3.1), (8, 40.0, 3.6)):
        line = conversion_line(rank, converted, finetuned)
        results.append_record(str(tmp_path / results.CONVERSION_FILE), line)
    table, _ = write_report(str(tmp_path), Budget(1.0, "bfloat16"))
    assert "## Converted to MLA" in table
    assert "| mha | 8 | 64 | 96 | 768 | 3.0000 | 2.9000 | 3.2000 | 3.1000 | 10 |" in table
    assert "| mha | 8 | 8 | 40 | 320 | 3.0000 | 2.9000 | 40.0000 | 3.6000 | 10 |" in table
    for ext in ("png", "svg"):
        assert (tmp_path / f"pareto.{ext}").stat().st_size > 1000


def test_report_rejects_mixed_cache_dtypes(tmp_path):
    results.append_record(str(tmp_path / "results.jsonl"), fake_record("mha", "mha", 0, 3.0, 2.0))
    line = conversion_line(8, 4.0, 3.5, dtype="bfloat16")
    results.append_record(str(tmp_path / results.CONVERSION_FILE), line)
    with pytest.raises(ValueError, match=r"cache dtypes \['bfloat16', 'float32'\]"):
        write_report(str(tmp_path), Budget(1.0, "bfloat16"))


def test_base_config_defaults_are_deepseek():
    model = base_config().model
    assert model.mla_latent_norm is True
    assert model.mla_rope_per_kv_head is False
    assert model.mla_rope_pairs is None


# The sweep: source, conversions, fine-tunes and conversion.jsonl, resumable.
def test_conversion_sweep_runs_and_resumes(tmp_path):
    sweep = load_config_module(REPO / "configs" / "ablation" / "tiny.py").get_config()
    sweep.base.num_train_steps, sweep.base.checkpoint_every = 6, 6
    finetune = Finetune(steps=4, learning_rate=1e-3, warmup_steps=1)
    sizes = [(ROPE_DIM, 8)]
    lines = run_conversion_sweep(sweep, str(tmp_path), "mha", 0, sizes, finetune)
    assert len(lines) == 1
    line = lines[0]
    assert line["kv_lora_rank"] == 8
    assert line["kv_cache_elements_per_token_per_layer"] == 8 + 4 * ROPE_DIM
    assert line["source_kv_cache_elements_per_token_per_layer"] == 2 * 4 * 16
    assert line["finetune_steps"] == 4
    for prefix in ("source", "converted", "finetuned"):
        assert math.isfinite(line[f"{prefix}_val_perplexity"])
    # Cached decoding of the converted model scores the validation split like the forward pass.
    cached = line["converted_val_perplexity_cached"]
    assert abs(cached / line["converted_val_perplexity"] - 1) <= 1e-4
    out = tmp_path / "conversion" / f"p{ROPE_DIM}_r8"
    assert json.loads((out / "eval_before_finetune.json").read_text())["step"] == 0
    assert json.loads((out / "eval.json").read_text())["step"] == 4
    # The control: the source fine-tuned alike, without conversion.
    control = tmp_path / "conversion" / "source_finetuned"
    assert json.loads((control / "eval.json").read_text())["attention"] == "mha"
    assert json.loads((control / "eval.json").read_text())["step"] == 4
    assert math.isfinite(line["source_finetuned_val_perplexity"])

    assert run_conversion_sweep(sweep, str(tmp_path), "mha", 0, sizes, finetune) == lines
    assert len(results.read_records(str(tmp_path / results.CONVERSION_FILE))) == 1
    with pytest.raises(ValueError, match="Resume with the same fine-tune flags"):
        run_conversion_sweep(sweep, str(tmp_path), "mha", 0, sizes, Finetune(5, 1e-3, 1))


@pytest.mark.parametrize(
    "criterion, expected", [("high_frequency", (0, 1)), ("low_frequency", (6, 7))]
)
def test_fixed_criteria_keep_same_pairs(criterion, expected):
    scores = rope_pairs.fixed_pair_scores((2, 4, 8), criterion)
    chosen = rope_pairs.top_pairs(scores, 2)
    assert all(head == expected for layer in chosen for head in layer)
