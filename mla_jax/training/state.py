"""The train state and the jitted train step."""

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


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue training: step, parameters, optimizer."""

    step: jax.Array  # int32 scalar: number of updates applied so far.
    params: nnx.State
    opt_state: Any


def model_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The static structure of the model, without allocating parameters."""
    return nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


@functools.partial(jax.jit, static_argnums=(0,))
def init_params(cfg: ModelConfig, seed: int) -> nnx.State:
    """Initialize parameters under jit, so init is one compiled program on any backend."""
    return nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(seed))), nnx.Param)


def create_train_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    params = init_params(cfg, seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(cfg: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of a train state, for restoring a checkpoint without initializing."""
    return jax.eval_shape(lambda: create_train_state(cfg, tx, 0))


def mean_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> jax.Array:
    logits = nnx.merge(graphdef, params)(batch["inputs"])
    return jnp.mean(token_losses(logits, batch["targets"]))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule):
    """Return train_step(state, batch) -> (state, metrics), jitted and donating the old state."""

    def train_step(state: TrainState, batch: dict):
        loss, grads = jax.value_and_grad(functools.partial(mean_loss, graphdef))(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            # The rate applied in this update: optax counts from 0 before the first update.
            "learning_rate": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,))
