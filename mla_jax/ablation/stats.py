"""Statistics of a sweep's results: per-member summaries, the Pareto frontier, context budgets.

Statistics are over seeds: the mean and the sample standard deviation (ddof=1), which is
undefined, and shown as n/a, for a member with one seed. The Pareto frontier is taken on
(KV-cache bytes per token, mean validation perplexity), where smaller is better on both axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import ml_collections

from mla_jax.config import kv_cache_bytes_per_token, model_config_from

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MemberSummary:
    """Statistics of one member over its seeds. Cache figures are per token, as in eval.json."""

    member: str
    kind: str
    num_params: int
    cache_elements: int  # per token per layer
    cache_bytes: int  # per token, all layers, at cache_dtype
    cache_dtype: str
    model: dict  # config.model of the runs, for cache sizes at other dtypes
    seeds: tuple[int, ...]
    val_perplexity: tuple[float, float | None]  # mean, std (None with one seed)
    test_perplexity: tuple[float, float | None]
    decode_tokens_per_second: float  # mean over seeds


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Compute the mean and sample standard deviation (ddof=1), which is None for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value.")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(records: Sequence[dict]) -> list[MemberSummary]:
    """Summarize each member of `records`, in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["member"], []).append(record)
    return [_summarize_member(name, runs) for name, runs in groups.items()]


def _summarize_member(name: str, runs: list[dict]) -> MemberSummary:
    fixed = (
        "attention",
        "num_params",
        "kv_cache_elements_per_token_per_layer",
        "kv_cache_bytes_per_token",
        "kv_cache_dtype",
    )
    for key in fixed:
        if len({run[key] for run in runs}) > 1:
            raise ValueError(
                f"Member {name!r} has runs with different {key}. Were two sweeps mixed?"
            )
    first = runs[0]
    return MemberSummary(
        member=name,
        kind=first["attention"],
        num_params=first["num_params"],
        cache_elements=first["kv_cache_elements_per_token_per_layer"],
        cache_bytes=first["kv_cache_bytes_per_token"],
        cache_dtype=first["kv_cache_dtype"],
        model=first["config"]["model"],
        seeds=tuple(sorted(int(run["seed"]) for run in runs)),
        val_perplexity=mean_std([run["val_perplexity"] for run in runs]),
        test_perplexity=mean_std([run["test_perplexity"] for run in runs]),
        decode_tokens_per_second=mean_std([run["decode_tokens_per_second"] for run in runs])[0],
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Return the indices of the points that no other point dominates, by increasing x.

    A point dominates another when it is no worse on both coordinates and better on at least
    one. Equal points do not dominate each other, so both stay on the frontier.
    """

    def dominated(i):
        xi, yi = points[i]
        return any(x <= xi and y <= yi and (x < xi or y < yi) for x, y in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


def bytes_per_token_at(summary: MemberSummary, dtype: str) -> int:
    """Compute the member's KV-cache bytes per token, all layers, for a cache stored in `dtype`."""
    fields = ml_collections.ConfigDict(summary.model)
    # The vocabulary size does not change the cache size, so 1 is passed when the tokenizer sets it.
    cfg = model_config_from(fields, fields.vocab_size or 1)
    return kv_cache_bytes_per_token(cfg, dtype)


def max_context_tokens(budget_bytes: int, bytes_per_token: int, batch_size: int = 1) -> int:
    """Return the max context length whose KV cache for `batch_size` sequences fits the budget."""
    if bytes_per_token <= 0 or batch_size <= 0:
        raise ValueError(
            f"bytes_per_token={bytes_per_token} and batch_size={batch_size} must be positive."
        )
    return int(budget_bytes) // (bytes_per_token * batch_size)


def reference_summary(summaries: Sequence[MemberSummary]) -> MemberSummary | None:
    """Return the first MHA member, the reference for relative sizes, or None if there is none."""
    return next((s for s in summaries if s.kind == "mha"), None)
