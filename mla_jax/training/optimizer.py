"""AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate: 0 -> learning_rate over warmup_steps, then cosine to min_lr_ratio * peak."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.num_train_steps,
        end_value=config.learning_rate * config.min_lr_ratio,
    )


def _decay_mask(params):
    # Norm scales and biases are vectors; only matrices and embeddings get weight decay.
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    adamw = optax.adamw(
        make_schedule(config),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=_decay_mask,
    )
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw
