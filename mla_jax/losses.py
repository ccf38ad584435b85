"""Token-level cross-entropy, always in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy per token: logits [B, T, V], targets [B, T] -> float32 [B, T].

    The model already masks the padded vocabulary ids, so the log-softmax runs over the real
    vocabulary only.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
