"""The train state, its sharded initialization, and the jitted train step."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.losses import token_losses
from mla_jax.model import Transformer
from mla_jax.sharding import Partitioner
from mla_jax.training.optimizer import make_optimizer, make_schedule


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue training: step, parameters, optimizer."""

    step: jax.Array  # int32 scalar: number of updates applied so far.
    params: nnx.State
    opt_state: Any


def model_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """Return the static structure of the model, without allocating parameters."""
    return nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def init_params(cfg: ModelConfig, seed: int) -> nnx.State:
    # The key is built from the seed alone, so every mesh initializes the same values.
    return nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(seed))), nnx.Param)


def _new_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    params = init_params(cfg, seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(cfg: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of a train state, for restoring a checkpoint without initializing."""
    return jax.eval_shape(lambda: _new_state(cfg, tx, 0))


def train_state_shardings(cfg, tx, partitioner: Partitioner) -> TrainState:
    return partitioner.shardings(abstract_train_state(cfg, tx))


def create_train_state(
    cfg: ModelConfig,
    tx: optax.GradientTransformation,
    seed: int,
    partitioner: Partitioner | None = None,
) -> TrainState:
    """Initialize under jit, each array created directly in its shards when a mesh is given."""
    shardings = None if partitioner is None else train_state_shardings(cfg, tx, partitioner)
    return jax.jit(
        functools.partial(_new_state, cfg, tx), static_argnums=0, out_shardings=shardings
    )(seed)


def mean_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> jax.Array:
    logits = nnx.merge(graphdef, params)(batch["inputs"])
    return jnp.mean(token_losses(logits, batch["targets"]))


def loss_and_grads(graphdef, params, batch: dict, accum_steps: int):
    """Mean loss and its gradient over the batch, computed in `accum_steps` micro-batches.

    Micro-batch a takes rows a, a + A, a + 2A, ...: every batch shard holds rows of every
    micro-batch, so no rows move between devices. All micro-batches have the same token count,
    so the mean of their means is the batch mean.
    """
    grad_fn = jax.value_and_grad(functools.partial(mean_loss, graphdef))
    if accum_steps == 1:
        return grad_fn(params, batch)

    def split(x):  # [B, T] -> [A, B / A, T]
        return x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)

    def add_micro_batch(carry, micro_batch):
        loss, grads = grad_fn(params, micro_batch)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(add_micro_batch, zeros, jax.tree.map(split, batch))
    return jax.tree.map(lambda x: x / accum_steps, (loss, grads))


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule,
    partitioner: Partitioner,
    state_shardings: TrainState,
    accum_steps: int = 1,
):
    """Return train_step(state, batch) -> (state, metrics), jitted with shardings.

    The old state is donated, so parameters and optimizer moments are updated in place.
    """

    def train_step(state: TrainState, batch: dict):
        with partitioner.activation_rules():
            loss, grads = loss_and_grads(graphdef, state.params, batch, accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            # Checked on the host before any checkpoint is written (see training/guards.py).
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            # The rate applied in this update: optax counts from 0 before the first update.
            "learning_rate": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, partitioner.batch_sharding()),
        out_shardings=(state_shardings, partitioner.replicated()),
        donate_argnums=(0,),
    )


def train_step_for(config, cfg: ModelConfig, partitioner: Partitioner):
    """Return (train_step, state_shardings) for an experiment config on the partitioner's mesh."""
    tx = make_optimizer(config)
    shardings = train_state_shardings(cfg, tx, partitioner)
    step = make_train_step(
        model_graphdef(cfg),
        tx,
        make_schedule(config),
        partitioner,
        shardings,
        config.grad_accum_steps,
    )
    return step, shardings
