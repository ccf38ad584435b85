"""The interface every attention kind implements, and the helpers they share.

An attention kind implements these methods, so the transformer and the decoder never branch on
the kind:
  * `cache_spec(batch, max_len, dtype)`: what it caches, as named array shapes [B, ..., S, F].
  * `__call__(x, positions)`: causal attention of x over itself (training, scoring).
  * `project_kv(x, positions)`: what the tokens of x add to the cache, a dict of arrays
    [B, ..., T, F] laid out like the cache with T in place of S.
  * `project_query(x, positions)`: the query side, in whatever form `attend` needs.
  * `attend(query, kv, mask)`: the output [B, T, D] of attending over cached entries kv.
`__call__` equals `attend(project_query(x), project_kv(x), causal_mask)`, up to the MLA mode and
rounding. With `attention_impl` set to dot_product_attention (`resolve_attention_impl`),
`__call__` attends through `fused_causal_attention` instead.

Cache layout: every cached array has batch first, the sequence axis second to last and features
last. A kind is free to order the axes in between for speed (GQA keeps each KV head's keys
contiguous). Slot s of a row contains the token at position s, so `causal_mask` over slot
numbers also hides slots that nothing has written yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mla_jax.model.layers import einsum

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


def resolve_attention_impl(attention_impl: str, dtype) -> str:
    """Return "einsum", "xla" or "cudnn" for config.model.attention_impl on the default backend.

    cuDNN's fused kernel takes 16-bit or 8-bit floats only (jax 0.10.2 checks this), so
    float32 on GPU uses XLA's implementation.
    """
    on_gpu = jax.default_backend() == "gpu" and jnp.dtype(dtype) == jnp.bfloat16
    if attention_impl == "dot_product_attention":
        return "cudnn" if on_gpu else "xla"
    if attention_impl == "auto" and on_gpu:
        return "cudnn"
    return "einsum"


def einsum_causal_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, scale: float, dtype
) -> jax.Array:
    """Attention as two einsums around a float32 softmax; mask is bool [B, T, S].

    query [B, T, N, Hk], key [B, S, N, Hk], value [B, S, N, Hv] -> [B, T, N, Hv].
    """
    scores = einsum("BTNH,BSNH->BNTS", query, key, dtype) * scale
    probs = masked_softmax(scores, mask[:, None])
    return einsum("BNTS,BSNH->BTNH", probs, value, dtype)


def fused_causal_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    positions: jax.Array,
    scale: float,
    implementation: str,
    dtype,
) -> jax.Array:
    """Causal attention by jax.nn.dot_product_attention, inputs cast to the compute dtype.

    query [B, T, N, Hk], key [B, S, K, Hk], value [B, S, K, Hv] -> [B, T, N, Hv]. The function
    takes one head dim for all three, so the narrower of Hk and Hv is padded with zeros, which
    add nothing to the scores or to the output.
    """
    width = max(query.shape[-1], value.shape[-1])

    def pad(x):
        x = x.astype(dtype)
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])

    if implementation == "cudnn":
        # NOTE: is_causal masks key s > query t by index, which equals causal_mask only when
        # positions increase along T, as in Transformer.__call__.
        out = jax.nn.dot_product_attention(
            pad(query), pad(key), pad(value), scale=scale, is_causal=True, implementation="cudnn"
        )
    else:
        mask = causal_mask(positions, positions)[:, None]  # [B, 1, T, S]
        out = jax.nn.dot_product_attention(
            pad(query), pad(key), pad(value), mask=mask, scale=scale, implementation="xla"
        )
    return out[..., : value.shape[-1]]


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
