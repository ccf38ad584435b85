"""The markdown table of a sweep: one row per member, with notes that explain how to read it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mla_jax.ablation.stats import (
    GIB,
    MemberSummary,
    bytes_per_token_at,
    max_context_tokens,
    pareto_front,
    reference_summary,
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A KV-cache memory budget: `gib` GiB holding `batch_size` sequences cached in `dtype`."""

    gib: float
    dtype: str
    batch_size: int = 1

    @property
    def nbytes(self) -> int:
        return int(self.gib * GIB)


def format_stat(stat: tuple[float, float | None]) -> str:
    mean, std = stat
    return f"{mean:.4f} ± {'n/a' if std is None else f'{std:.4f}'}"


def _ratio(value: float, reference: float | None, signed: bool = False) -> str:
    if not reference:
        return "n/a"
    if signed:
        return f"{100 * (value / reference - 1):+.1f}%"
    return f"{value / reference:.3f}"


def markdown_table(summaries: Sequence[MemberSummary], budget: Budget) -> str:
    """Format the table and its notes. All runs must share one cache dtype, which sets the bytes."""
    dtypes = sorted({s.cache_dtype for s in summaries})
    if len(dtypes) != 1:
        raise ValueError(
            f"The runs use cache dtypes {dtypes}, but a table compares bytes at one dtype."
        )
    ref = reference_summary(summaries)
    frontier = set(pareto_front([(s.cache_bytes, s.val_perplexity[0]) for s in summaries]))
    header = (
        "| member | kind | params | params vs MHA | seeds | KV elements / token / layer "
        f"| KV bytes / token ({dtypes[0]}, all layers) | KV vs MHA | val perplexity "
        f"| test perplexity | decode tokens/s "
        f"| max context in {budget.gib:g} GiB ({budget.dtype}, batch {budget.batch_size}) | Pareto |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for i, s in enumerate(summaries):
        context = max_context_tokens(
            budget.nbytes, bytes_per_token_at(s, budget.dtype), budget.batch_size
        )
        lines.append(
            f"| {s.member} | {s.kind} | {s.num_params:,} "
            f"| {_ratio(s.num_params, ref and ref.num_params, signed=True)} | {len(s.seeds)} "
            f"| {s.cache_elements:,} | {s.cache_bytes:,} | {_ratio(s.cache_bytes, ref and ref.cache_bytes)} "
            f"| {format_stat(s.val_perplexity)} | {format_stat(s.test_perplexity)} "
            f"| {s.decode_tokens_per_second:,.1f} | {context:,} | {'yes' if i in frontier else ''} |"
        )
    return "\n".join(lines + [""] + _notes(ref, budget)) + "\n"


def _notes(ref: MemberSummary | None, budget: Budget) -> list[str]:
    ref_text = f"member `{ref.member}`" if ref else "no MHA member in these results (n/a)"
    budget_text = (
        f"Max context: the most tokens whose KV cache fits {budget.gib:g} GiB "
        f"({budget.nbytes:,} bytes) at {budget.dtype} for batch {budget.batch_size}, that is "
        "budget // (bytes per token x batch). The model's max_seq_len does not cap it."
    )
    decode_text = (
        "Decode tokens/s: mean over seeds of each run's best timed greedy generation on the "
        "machine that ran it. For small models it reflects per-step overhead more than cache reads."
    )
    return [
        "Perplexities: mean ± sample standard deviation over seeds (ddof=1), or ± n/a for one seed.",
        f"'vs MHA' columns compare with {ref_text}.",
        budget_text,
        "Pareto: no other member is as good on both mean validation perplexity and KV bytes per "
        + "token and better on one.",
        decode_text,
    ]


def conversion_table(lines: Sequence[dict]) -> str:
    """Format conversion.jsonl: one row per converted size, perplexity before and after."""
    header = (
        "| source | RoPE dims per KV head | latent | KV elements / token / layer "
        "| KV bytes / token | val perplexity: source | source fine-tuned | converted | fine-tuned "
        "| fine-tune steps |"
    )
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for line in sorted(lines, key=lambda x: (x["qk_rope_head_dim"], -x["kv_lora_rank"])):
        rows.append(
            f"| {line['source_attention']} | {line['qk_rope_head_dim']} | {line['kv_lora_rank']} "
            f"| {line['kv_cache_elements_per_token_per_layer']:,} "
            f"| {line['kv_cache_bytes_per_token']:,} | {line['source_val_perplexity']:.4f} "
            f"| {line['source_finetuned_val_perplexity']:.4f} "
            f"| {line['converted_val_perplexity']:.4f} | {line['finetuned_val_perplexity']:.4f} "
            f"| {line['finetune_steps']} |"
        )
    note = (
        "Converted to MLA from one trained run (scripts/conversion_sweep.py): 'converted' is "
        "before any training, 'fine-tuned' after the steps listed. 'source fine-tuned' is the "
        "control: the source trained for the same steps without conversion (docs/conversion.md)."
    )
    return "\n".join(["## Converted to MLA", "", *rows, "", note]) + "\n"
