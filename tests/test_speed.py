"""Speed options change no result: one compilation per train step shape, remat and attention
implementations equal to the default, bfloat16 training close to float32, exact einsum
gradients, and the FLOP count that MFU divides by."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CompileCounter

from mla_jax import data
from mla_jax.config import model_config_from
from mla_jax.machine import vendor_peak_flops
from mla_jax.model import matmul
from mla_jax.sharding import make_partitioner
from mla_jax.training import flops
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import (
    create_train_state,
    init_params,
    mean_loss,
    model_graphdef,
    train_step_for,
)


def train_batches(config, steps):
    """The first `steps` batches of the tiny config's Shakespeare training stream."""
    stream = data.load_token_stream(config.data, "train", data.ByteTokenizer())
    batches = data.TrainBatches(stream, config.seq_len, config.batch_size, config.seed)
    return [batches.batch_at(step) for step in range(steps)]


def run_steps(config, steps):
    """Train `steps` steps of the tiny config; return the losses and the jitted step."""
    cfg = model_config_from(config.model, 258)
    partitioner = make_partitioner(config)
    train_step, _ = train_step_for(config, cfg, partitioner)
    state = create_train_state(cfg, make_optimizer(config), config.seed, partitioner)
    losses = []
    for batch in train_batches(config, steps):
        state, metrics = train_step(state, partitioner.place_batch(batch, config.batch_size))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses)), train_step


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_train_step_compiles_once(tiny_config, kind):
    config = tiny_config(kind)
    cfg = model_config_from(config.model, 258)
    partitioner = make_partitioner(config)
    train_step, _ = train_step_for(config, cfg, partitioner)
    state = create_train_state(cfg, make_optimizer(config), config.seed, partitioner)
    batches = [partitioner.place_batch(b, config.batch_size) for b in train_batches(config, 4)]
    state, metrics = train_step(state, batches[0])  # compiles
    with CompileCounter() as counter:
        for batch in batches[1:]:
            state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
    assert counter.count == 0
    assert train_step._cache_size() == 1
    assert np.isfinite(float(metrics["loss"]))


def loss_and_grads(tiny_config, kind, **model_fields):
    config = tiny_config(kind)
    for name, value in model_fields.items():
        config.model[name] = value
    cfg = model_config_from(config.model, 258)
    tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 258)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    graphdef = model_graphdef(cfg)
    return jax.jit(jax.value_and_grad(lambda p: mean_loss(graphdef, p, batch)))(init_params(cfg, 0))


OPTIONS = [
    {"attention_impl": "dot_product_attention"},
    {"attention_impl": "einsum"},
    {"remat": "full"},
    {"remat": "dots_saveable"},
    {"remat": "dots_with_no_batch_dims_saveable"},
    {"remat": "full", "attention_impl": "dot_product_attention"},
]


@pytest.mark.parametrize("kind", ["mha", "gqa", "mla"])
@pytest.mark.parametrize(
    "fields", OPTIONS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())
)
def test_options_keep_loss_and_gradients(tiny_config, kind, fields):
    loss, grads = loss_and_grads(tiny_config, kind)
    other_loss, other_grads = loss_and_grads(tiny_config, kind, **fields)
    np.testing.assert_allclose(float(other_loss), float(loss), rtol=1e-6)
    for name, (a, b) in enumerate(zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=name)


# NOTE: in a process that has imported torch 2.13 (tests/test_deepseek_import.py does), the
# bfloat16 train step aborted inside XLA's CPU runtime ("Fatal Python error: Aborted"), seen once
# with both files in one pytest process; the cause was not isolated.
@pytest.mark.skipif("torch" in sys.modules, reason="torch is loaded in this process")
@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_bfloat16_loss_follows_float32(tiny_config, kind):
    config = tiny_config(kind)
    config.num_train_steps, config.warmup_steps = 50, 5
    float32_losses, _ = run_steps(config, 50)
    config.model.dtype = "bfloat16"
    bfloat16_losses, _ = run_steps(config, 50)
    # Measured on this config: at most 0.014 (MHA) and 0.048 (MLA) apart over the 50 steps,
    # while the loss falls from 5.5 to about 3.2.
    np.testing.assert_allclose(bfloat16_losses, float32_losses, atol=0.1)
    assert bfloat16_losses[-5:].mean() < bfloat16_losses[:5].mean() - 1.0


EQUATIONS = [
    ("BTD,DF->BTF", (2, 5, 8), (8, 6)),
    ("BTD,VD->BTV", (2, 5, 8), (7, 8)),
    ("BTNH,BSNH->BNTS", (2, 5, 3, 4), (2, 5, 3, 4)),
    ("BNTS,BSNH->BTNH", (2, 3, 5, 5), (2, 5, 3, 4)),
    ("BTNH,CNH->BTNC", (2, 5, 3, 4), (6, 3, 4)),
    ("BKSH,BKTGH->BKSTG", (2, 2, 5, 4), (2, 2, 1, 3, 4)),
]


@pytest.mark.parametrize("equation,x_shape,y_shape", EQUATIONS, ids=[e[0] for e in EQUATIONS])
def test_einsum_gradients_match_jax(equation, x_shape, y_shape):
    x = jax.random.normal(jax.random.key(0), x_shape)
    y = jax.random.normal(jax.random.key(1), y_shape)
    weights = jax.random.normal(jax.random.key(2), jnp.einsum(equation, x, y).shape)

    def loss(einsum, x, y):
        return jnp.sum(jnp.tanh(einsum(x, y)) * weights)

    def ours(a, b):
        return matmul.einsum(equation, a, b, "float32")

    def theirs(a, b):
        return jnp.einsum(equation, a, b)

    expected = jax.grad(lambda x, y: loss(theirs, x, y), (0, 1))(x, y)
    actual = jax.grad(lambda x, y: loss(ours, x, y), (0, 1))(x, y)
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bfloat16_einsum_accumulates_in_float32():
    x = jnp.full((1, 4095), 1.0 + 2.0**-7, jnp.float32)  # exact in bfloat16
    y = jnp.ones((4095, 1), jnp.float32)
    out = matmul.einsum("TD,DF->TF", x, y, "bfloat16")
    assert out.dtype == jnp.float32
    # The exact sum is 4126.99...; bfloat16 holds only multiples of 32 between 4096 and 8192.
    assert float(out[0, 0]) == pytest.approx(4095 * (1.0 + 2.0**-7), rel=1e-6)


def test_einsum_rejects_other_equations():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="not a plain contraction"):
        matmul.einsum("TD,EF->TF", x, x, "float32")
    with pytest.raises(ValueError, match="must have the form"):
        matmul.einsum("TD->T", x, x, "float32")


def test_train_step_flops_by_hand(tiny_config):
    cfg = model_config_from(tiny_config("mha").model, 258)
    d, f, v, t, b = 64, 128, 384, 64, 8
    per_layer = 4 * d * d + 3 * d * f  # attention (4 heads of 16) and SwiGLU
    matmul_params = 2 * per_layer + v * d  # tied embedding: the logits product
    attention = 2 * t * 4 * (16 + 16) * 2  # per query token: scores and values, 2 layers
    expected = 3 * (2 * matmul_params + attention) * b * t
    assert flops.matmul_params(cfg) == matmul_params
    assert flops.train_step_flops(cfg, b, t) == expected


def test_mla_attention_flops_count_nope_and_rope_dims(tiny_config):
    cfg = model_config_from(tiny_config("mla").model, 258)
    # 4 heads, key dims 16 + 8, value dims 16, 2 layers.
    assert flops.attention_flops_per_token(cfg, 64) == 2 * 64 * 4 * (16 + 8 + 16) * 2


def test_vendor_peaks():
    assert vendor_peak_flops("TPU v5 lite") == 197e12
    assert vendor_peak_flops("TPU v5") == 459e12
    assert vendor_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert vendor_peak_flops("cpu") is None
