"""Autoregressive generation from a batch of prompts of different lengths.

Prompts are right-padded to a common width (the longest, rounded up to a multiple of
PROMPT_WIDTH_MULTIPLE), prefilled in one forward pass, then extended one token per step inside
a single jitted `while_loop`. A new compilation happens only for a new (batch, prompt width,
max_new_tokens, cache length) shape or a new model structure, never for new prompts of similar
length, seeds or sampling settings. The loop exits once every row has produced
`stop_token` or `max_new_tokens` tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.decoding.cache import decode_step, init_cache, prefill
from mla_jax.decoding.sampling import (
    SamplingParams,
    as_arrays,
    check_sampling_params,
    sample_tokens,
)

# Prompt widths are rounded up to this, so that prompts of similar length share a compilation.
PROMPT_WIDTH_MULTIPLE = 16


class Generation(NamedTuple):
    """tokens int32 [B, max_new_tokens], padded with the stop token after it; lengths [B]
    counts each row's tokens up to and including its stop token."""

    tokens: np.ndarray
    lengths: np.ndarray


def pad_prompts(
    prompts: Sequence[Sequence[int]], vocab_size: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompts (non-empty id sequences) with zeros into int32 [B, P]; also lengths [B].

    P is `width`, or the longest prompt when width is None.
    """
    if len(prompts) == 0:
        raise ValueError("No prompts given; pass at least one non-empty sequence of token ids.")
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    for i, row in enumerate(rows):
        if row.size == 0:
            raise ValueError(f"Prompt {i} is empty; start it with at least one token, such as BOS.")
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(
                f"Prompt {i} has token ids in [{row.min()}, {row.max()}], outside the "
                f"vocabulary [0, {vocab_size})."
            )
    lengths = np.array([row.size for row in rows], dtype=np.int32)
    width = int(lengths.max()) if width is None else width
    if width < lengths.max():
        raise ValueError(
            f"width={width} is shorter than the longest prompt ({lengths.max()} tokens)."
        )
    tokens = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : row.size] = row
    return tokens, lengths


def check_capacity(
    cfg: ModelConfig, longest_prompt: int, max_new_tokens: int, cache_len: int
) -> None:
    """Raise ValueError unless the longest prompt plus max_new_tokens fits the cache and the model.

    Checked on the host before anything runs: inside the decoder an out-of-range write would be
    dropped (or, with `dynamic_update_slice`, clamped onto the last slot), corrupting the output
    without an error.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    if cache_len > cfg.max_seq_len:
        raise ValueError(
            f"cache_len={cache_len} exceeds config.model.max_seq_len={cfg.max_seq_len}; pass "
            f"cache_len <= {cfg.max_seq_len}."
        )
    needed = longest_prompt + max_new_tokens
    if needed <= cache_len:
        return
    if needed > cfg.max_seq_len:
        limit, fix = f"config.model.max_seq_len={cfg.max_seq_len}", "shorten the prompt"
    else:
        limit, fix = f"the cache length ({cache_len})", f"pass cache_len >= {needed}"
    raise ValueError(
        f"The longest prompt ({longest_prompt} tokens) plus max_new_tokens={max_new_tokens} needs "
        f"{needed} positions, more than {limit}; lower max_new_tokens to at most "
        f"{max(cache_len - longest_prompt, 0)} or {fix}."
    )


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_token: int | None = None,
    cache_len: int | None = None,
) -> Generation:
    """Continue each prompt by up to max_new_tokens sampled tokens.

    Sampling is greedy at temperature 0 (see `sample_tokens`). The cache has cache_len slots
    per row (default: the prompt width plus max_new_tokens, at most config.model.max_seq_len).
    """
    cfg: ModelConfig = model.cfg
    longest = max((len(p) for p in prompts), default=0)
    width = -(-longest // PROMPT_WIDTH_MULTIPLE) * PROMPT_WIDTH_MULTIPLE
    if cache_len is None:
        cache_len = min(width + max_new_tokens, cfg.max_seq_len)
    check_capacity(cfg, longest, max_new_tokens, cache_len)
    # Padding past the cache is dropped by the cache writes; real tokens fit (checked above).
    tokens, lengths = pad_prompts(prompts, cfg.vocab_size, min(width, cache_len))
    sampling = SamplingParams(temperature, top_k, top_p)
    check_sampling_params(sampling)
    if stop_token is not None and not 0 <= stop_token < cfg.vocab_size:
        raise ValueError(
            f"stop_token={stop_token} is outside the vocabulary [0, {cfg.vocab_size})."
        )

    graphdef, state = nnx.split(model)
    out, out_lengths = _generate_jit(
        graphdef,
        state,
        jnp.asarray(tokens),
        jnp.asarray(lengths),
        as_arrays(sampling),
        jax.random.key(seed),
        jnp.int32(-1 if stop_token is None else stop_token),
        max_new_tokens=max_new_tokens,
        cache_len=cache_len,
    )
    return Generation(np.asarray(out), np.asarray(out_lengths))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "cache_len"))
def _generate_jit(
    graphdef, state, prompts, lengths, sampling, key, stop_token, *, max_new_tokens, cache_len
):
    """Prefill, sample the first token, then decode in a while_loop; see `generate`."""
    model = nnx.merge(graphdef, state)
    batch = prompts.shape[0]
    fill = jnp.maximum(stop_token, 0)
    logits, cache = prefill(model, prompts, lengths, init_cache(model, batch, cache_len))
    first = sample_tokens(logits, jax.random.fold_in(key, 0), sampling)
    out = jnp.full((batch, max_new_tokens), fill, jnp.int32).at[:, 0].set(first)

    def keep_going(carry):
        step, _, _, _, done = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_one(carry):
        step, token, cache, out, done = carry
        logits, cache = decode_step(model, token, cache)
        token = sample_tokens(logits, jax.random.fold_in(key, step), sampling)
        token = jnp.where(done, fill, token)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, out, done | (token == stop_token)

    carry = (jnp.int32(1), first, cache, out, first == stop_token)
    out = jax.lax.while_loop(keep_going, decode_one, carry)[3]
    is_stop = out == stop_token
    out_lengths = jnp.where(
        jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, max_new_tokens
    )
    return out, out_lengths.astype(jnp.int32)
