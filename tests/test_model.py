"""Model numerics against independent references written here in NumPy (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mla_jax.config import model_config_from
from mla_jax.model import Transformer
from mla_jax.model.attention import GroupedQueryAttention, MultiHeadLatentAttention

KINDS = ("mha", "gqa", "mqa", "mla")


def model_cfg(get_config, kind, **model_overrides):
    config = get_config(kind)
    for name, value in model_overrides.items():
        config.model[name] = value
    return model_config_from(config.model, 258)


def ref_rope(x, positions, theta):
    """Rotate pairs (i, i + H/2) of x [T, ..., H] by positions [T] * theta^(-2i/H)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) * 2.0 / x.shape[-1])
    angle = positions[:, None] * freqs[None, :]
    angle = angle.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (half,))
    a, b = x[..., :half], x[..., half:]
    return np.concatenate(
        [a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)], -1
    )


def ref_rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def ref_causal_softmax(scores):
    """Softmax over the last axis of scores [T, S] with s > t masked."""
    t = scores.shape[-1]
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(-1, keepdims=True)


def as_np(param):
    return np.asarray(param[...], dtype=np.float64)


def ref_mla(layer, cfg, x):
    """DeepSeek-V2 MLA, equations (9)-(19) of arXiv 2405.04434, one head at a time, x [T, D]."""
    t = x.shape[0]
    pos = np.arange(t, dtype=np.float64)
    c, dn, dr = cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
    if cfg.q_lora_rank is None:
        q = np.einsum("td,dnh->tnh", x, as_np(layer.w_q))
    else:
        c_q = ref_rms_norm(x @ as_np(layer.w_dq), as_np(layer.q_norm.scale), cfg.norm_eps)
        q = np.einsum("tq,qnh->tnh", c_q, as_np(layer.w_uq))
    down = x @ as_np(layer.w_dkv)
    c_kv = ref_rms_norm(down[:, :c], as_np(layer.kv_norm.scale), cfg.norm_eps)
    k_rope = ref_rope(down[:, c:], pos, cfg.rope_theta)  # [T, R], shared by all heads
    heads = []
    for n in range(cfg.num_heads):
        q_n = np.concatenate([q[:, n, :dn], ref_rope(q[:, n, dn:], pos, cfg.rope_theta)], -1)
        k_n = np.concatenate([c_kv @ as_np(layer.w_uk)[:, n, :], k_rope], -1)
        v_n = c_kv @ as_np(layer.w_uv)[:, n, :]
        probs = ref_causal_softmax(q_n @ k_n.T / np.sqrt(dn + dr))
        heads.append(probs @ v_n)
    return np.concatenate(heads, -1) @ as_np(layer.w_o).reshape(-1, cfg.d_model)


def ref_gqa(layer, cfg, x):
    """Per-head attention where query head n reads KV head n // (N / K), x [T, D]."""
    t = x.shape[0]
    pos = np.arange(t, dtype=np.float64)
    group = cfg.num_heads // cfg.num_kv_heads
    heads = []
    for n in range(cfg.num_heads):
        kv = n // group
        q_n = ref_rope(x @ as_np(layer.w_q)[:, n, :], pos, cfg.rope_theta)
        k_n = ref_rope(x @ as_np(layer.w_k)[:, kv, :], pos, cfg.rope_theta)
        v_n = x @ as_np(layer.w_v)[:, kv, :]
        heads.append(ref_causal_softmax(q_n @ k_n.T / np.sqrt(cfg.head_dim)) @ v_n)
    return np.concatenate(heads, -1) @ as_np(layer.w_o).reshape(-1, cfg.d_model)


def scaled_layer(layer_cls, cfg, seed):
    """A layer with weights large enough that attention is far from uniform."""
    layer = layer_cls(cfg, 0.02, rngs=nnx.Rngs(seed))
    for path, param in nnx.iter_graph(layer):
        if isinstance(param, nnx.Param) and param.ndim >= 2:
            param[...] = param[...] * 15.0
    return layer


def random_input(cfg, t=12, seed=1):
    return np.random.default_rng(seed).normal(size=(t, cfg.d_model))


@pytest.mark.parametrize("q_lora_rank", [32, None], ids=["q_lora", "no_q_lora"])
def test_mla_matches_deepseek_equations(tiny_config, q_lora_rank):
    cfg = model_cfg(tiny_config, "mla", q_lora_rank=q_lora_rank)
    layer = scaled_layer(MultiHeadLatentAttention, cfg, seed=3)
    x = random_input(cfg)
    positions = jnp.arange(x.shape[0])[None]
    got = np.asarray(layer(jnp.asarray(x[None], jnp.float32), positions)[0])
    want = ref_mla(layer, cfg, x)
    assert np.max(np.abs(want)) > 1e-2  # The check below must not pass on near-zero outputs.
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa"])
def test_gqa_grouping_matches_per_head_reference(tiny_config, kind):
    cfg = model_cfg(tiny_config, kind)
    layer = scaled_layer(GroupedQueryAttention, cfg, seed=4)
    x = random_input(cfg)
    positions = jnp.arange(x.shape[0])[None]
    got = np.asarray(layer(jnp.asarray(x[None], jnp.float32), positions)[0])
    np.testing.assert_allclose(got, ref_gqa(layer, cfg, x), atol=1e-5, rtol=1e-4)


def test_gqa_wrong_grouping_is_detected(tiny_config):
    """The reference distinguishes n // G from the interleaved n % K grouping."""
    cfg = model_cfg(tiny_config, "gqa")
    layer = scaled_layer(GroupedQueryAttention, cfg, seed=4)
    x = random_input(cfg)
    got = np.asarray(layer(jnp.asarray(x[None], jnp.float32), jnp.arange(x.shape[0])[None])[0])
    swapped = np.asarray(layer.w_k[...])[:, ::-1, :]
    layer.w_k[...] = jnp.asarray(swapped)
    assert not np.allclose(got, ref_gqa(layer, cfg, x), atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_future_tokens_do_not_change_past_logits(tiny_config, kind):
    cfg = model_cfg(tiny_config, kind)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 258)
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 7) % 258)
    before, after = model(tokens), model(changed)
    np.testing.assert_array_equal(np.asarray(before[:, :10]), np.asarray(after[:, :10]))
    assert not np.allclose(np.asarray(before[:, 10:]), np.asarray(after[:, 10:]))


@pytest.mark.parametrize("tie", [True, False])
def test_padded_vocab_logits_are_masked(tiny_config, tie):
    cfg = model_cfg(tiny_config, "mla", tie_embeddings=tie)
    assert cfg.padded_vocab_size == 384
    logits = Transformer(cfg, rngs=nnx.Rngs(0))(jnp.zeros((1, 4), jnp.int32))
    probs = jax.nn.softmax(logits, axis=-1)
    assert logits.dtype == jnp.float32
    assert float(jnp.max(probs[..., 258:])) == 0.0
    np.testing.assert_allclose(np.asarray(probs[..., :258].sum(-1)), 1.0, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_config):
    cfg = model_cfg(tiny_config, "mla", dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    tokens = jnp.arange(8)[None]
    low = model(tokens)
    high = Transformer(cfg.replace(dtype="float32"), rngs=nnx.Rngs(0))(tokens)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low[..., :258]), np.asarray(high[..., :258]), atol=0.05)
