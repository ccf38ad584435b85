"""Autoregressive decoding with a KV cache, shared by every attention kind.

Each attention kind only states what it caches (`cache_spec`, `project_kv`). Everything else
is shared: allocating the cache (`init_cache`), prefill and single steps (`prefill`,
`decode_step`, `forward_cached`), sampling (`sample_tokens`), generation with a stop token and
a length limit (`generate`), and per-token losses through the cache (`cached_token_losses`).
The submodule `roofline` bounds the time of a decode step, for benchmarks.

Not supported: left-padded prompts, paged or sliding-window caches, speculative decoding.
"""

from mla_jax.decoding.cache import (
    DecodeCache,
    cache_capacity,
    cache_nbytes,
    decode_step,
    forward_cached,
    init_cache,
    prefill,
)
from mla_jax.decoding.generation import Generation, check_capacity, generate, pad_prompts
from mla_jax.decoding.sampling import SamplingParams, sample_tokens
from mla_jax.decoding.scoring import cached_token_losses

__all__ = [
    "DecodeCache",
    "Generation",
    "SamplingParams",
    "cache_capacity",
    "cache_nbytes",
    "cached_token_losses",
    "check_capacity",
    "decode_step",
    "forward_cached",
    "generate",
    "init_cache",
    "pad_prompts",
    "prefill",
    "sample_tokens",
]
