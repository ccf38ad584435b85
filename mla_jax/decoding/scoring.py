"""Per-token losses computed through the KV cache, for checking cached decoding in evaluation.

Teacher-forced scoring runs the full causal forward pass. This module scores the same tokens
by feeding them one at a time through the decoder and its cache, so the two perplexities agree
only if cached decoding is exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mla_jax.decoding.cache import decode_step, init_cache


def cached_token_losses(model: nnx.Module, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of targets [B, T] after each token of inputs [B, T]: float32 [B, T].

    Every window starts from an empty cache of T slots at position 0, and all T tokens go
    through `decode_step` in one jitted scan; losses come from the cached float32 logits.
    """
    inputs, targets = jnp.asarray(inputs, jnp.int32), jnp.asarray(targets, jnp.int32)
    if inputs.ndim != 2 or inputs.shape != targets.shape:
        raise ValueError(
            f"inputs {inputs.shape} and targets {targets.shape} must have the same shape [B, T]."
        )
    if inputs.shape[1] > model.cfg.max_seq_len:
        raise ValueError(
            f"Windows of {inputs.shape[1]} tokens exceed config.model.max_seq_len="
            f"{model.cfg.max_seq_len}; score shorter windows."
        )
    graphdef, state = nnx.split(model)
    return _token_losses(graphdef, state, inputs, targets)


@functools.partial(jax.jit, static_argnames="graphdef")
def _token_losses(graphdef, state, inputs, targets):
    model = nnx.merge(graphdef, state)
    batch, length = inputs.shape

    def score_one(cache, step_tokens):
        token, target = step_tokens  # [B], [B]
        logits, cache = decode_step(model, token, cache)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return cache, -jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]

    cache = init_cache(model, batch, length)
    _, losses = jax.lax.scan(score_one, cache, (inputs.T, targets.T))  # [T, B]
    return losses.T
