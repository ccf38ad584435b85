"""The interface every attention kind implements, and the masked softmax they share.

An attention kind implements these methods, so the transformer and the decoder never branch on
the kind:
  * `cache_spec(batch, max_len, dtype)`: what it caches, as named array shapes [B, S, ...].
  * `__call__(x, positions)`: causal attention of x over itself (training, scoring).
  * `project_kv(x, positions)`: what the tokens of x add to the cache (a dict of [B, T, ...]).
  * `project_query(x, positions)`: the query side, in whatever form `attend` needs.
  * `attend(query, kv, mask)`: the output [B, T, D] of attending over cached entries kv.
`__call__` equals `attend(project_query(x), project_kv(x), causal_mask)`, up to the MLA mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Large negative logit for masked scores. A finite value keeps rows without any allowed key
# (padding rows in a cache) free of NaN; their outputs are never used.
MASK_VALUE = -1e30


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Allow key s for query t when key_pos[s] <= query_pos[t]: bool [B, T, S]."""
    return key_positions[:, None, :] <= query_positions[:, :, None]


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis in float32; scores [B, ..., T, S], mask [B, T, S]."""
    mask = mask.reshape(mask.shape[:1] + (1,) * (scores.ndim - 3) + mask.shape[1:])
    scores = jnp.where(mask, scores.astype(jnp.float32), MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)
