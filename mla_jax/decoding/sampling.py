"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus).

The settings are traced arrays, not static arguments, so one compiled decoder serves every
combination of them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Divisor used in place of a zero temperature, whose samples are then replaced by the argmax.
_MIN_TEMPERATURE = 1e-6


class SamplingParams(NamedTuple):
    """temperature 0 means greedy; top_k 0 keeps every id; top_p 1 keeps every id."""

    temperature: float | jax.Array = 0.0
    top_k: int | jax.Array = 0
    top_p: float | jax.Array = 1.0


def check_sampling_params(params: SamplingParams) -> None:
    """Raise ValueError on settings that would sample from an empty or undefined distribution."""
    if not params.temperature >= 0:
        raise ValueError(f"temperature={params.temperature} must be >= 0 (0 means greedy).")
    if not params.top_k >= 0:
        raise ValueError(f"top_k={params.top_k} must be >= 0 (0 keeps every token).")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p={params.top_p} must lie in (0, 1] (1 keeps every token).")


def as_arrays(params: SamplingParams) -> SamplingParams:
    """Convert the settings to arrays of fixed dtypes, so any Python values share one jit entry."""
    return SamplingParams(
        jnp.asarray(params.temperature, jnp.float32),
        jnp.asarray(params.top_k, jnp.int32),
        jnp.asarray(params.top_p, jnp.float32),
    )


def sample_tokens(logits: jax.Array, key: jax.Array, params: SamplingParams) -> jax.Array:
    """Pick one id per row of logits [B, V]: int32 [B].

    Samples from softmax(logits / temperature) restricted to the top_k largest logits and then
    to the smallest prefix of them whose probability reaches top_p. Ids tied with the last one
    kept are kept too. Masked padding ids (logit -1e30) have probability 0.
    """
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(params.temperature, _MIN_TEMPERATURE)
    allowed = _top_k_top_p_mask(scaled, params.top_k, params.top_p)
    sampled = jax.random.categorical(key, jnp.where(allowed, scaled, -jnp.inf), axis=-1)
    return jnp.where(params.temperature > 0, sampled, greedy).astype(jnp.int32)


def _top_k_top_p_mask(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Bool [B, V]: the ids that survive top-k, then top-p, on temperature-scaled logits."""
    vocab = scaled.shape[-1]
    rank = jnp.arange(vocab)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    descending = jnp.where(rank < k, -jnp.sort(-scaled, axis=-1), -jnp.inf)  # [B, V]
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The top id always stays: its mass_before is 0 and top_p > 0.
    kept = (rank < k) & (mass_before < top_p)
    threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return scaled >= threshold
