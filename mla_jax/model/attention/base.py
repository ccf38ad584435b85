"""The interface every attention kind implements, and the helpers they share.

An attention kind implements these methods, so the transformer and the decoder never branch on
the kind:
  * `cache_spec(batch, max_len, dtype)`: what it caches, as named array shapes [B, ..., S, F].
  * `__call__(x, positions)`: causal attention of x over itself (training, scoring).
  * `project_kv(x, positions)`: what the tokens of x add to the cache, a dict of arrays
    [B, ..., T, F] laid out like the cache with T in place of S.
  * `project_query(x, positions)`: the query side, in whatever form `attend` needs.
  * `attend(query, kv, mask)`: the output [B, T, D] of attending over cached entries kv.
`__call__` equals `attend(project_query(x), project_kv(x), causal_mask)`, up to the MLA mode.

Cache layout: every cached array has batch first, the sequence axis second to last and features
last. A kind is free to order the axes in between for speed (GQA keeps each KV head's keys
contiguous). Slot s of a row contains the token at position s, so `causal_mask` over slot
numbers also hides slots that nothing has written yet.
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
    """Softmax over the last (key) axis in float32; mask broadcasts against scores."""
    scores = jnp.where(mask, scores.astype(jnp.float32), MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


def write_cache(
    cache: dict[str, jax.Array], kv: dict[str, jax.Array], positions: jax.Array
) -> dict[str, jax.Array]:
    """Store kv entries [B, ..., T, F] in cache [B, ..., S, F] at slots positions [B, T].

    A scatter rather than `dynamic_update_slice`: rows write at different slots, and slots
    outside [0, S) are dropped instead of being clamped onto the last valid ones. Callers check
    capacity beforehand, so a dropped write only ever comes from padding.
    """

    def write_row(row_cache, row_kv, row_slots):  # [..., S, F], [..., T, F], [T]
        return row_cache.at[..., row_slots, :].set(row_kv.astype(row_cache.dtype), mode="drop")

    return {name: jax.vmap(write_row)(cache[name], kv[name], positions) for name in cache}


def cached_attention(attention, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]):
    """Write the keys and values of x [B, T, D] into cache, then attend over the whole cache.

    Returns the attention output [B, T, D] and the updated cache. Slots past a query's position
    are masked, whether they hold stale padding or nothing yet.
    """
    cache = write_cache(cache, attention.project_kv(x, positions), positions)
    num_slots = next(iter(cache.values())).shape[-2]
    slot_positions = jnp.broadcast_to(jnp.arange(num_slots), (x.shape[0], num_slots))
    mask = causal_mask(positions, slot_positions)
    return attention.attend(attention.project_query(x, positions), cache, mask), cache
