"""The Pareto plot of a sweep: validation perplexity against KV-cache bytes per token."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mla_jax.ablation.stats import MemberSummary, pareto_front

MARKERS = {"mha": "o", "gqa": "s", "mqa": "^", "mla": "D"}
COLORS = {"mha": "tab:blue", "gqa": "tab:orange", "mqa": "tab:green", "mla": "tab:red"}
CONVERSION_COLORS = ("tab:purple", "tab:brown", "tab:olive")
# The control of a conversion sweep: its source fine-tuned without conversion.
CONTROL_KEY = "source_finetuned_val_perplexity"


def plot_pareto(
    summaries: Sequence[MemberSummary], paths: Sequence[str], conversions: Sequence[dict] = ()
) -> None:
    """Plot every member with std-over-seeds error bars and the frontier, and save to `paths`.

    `conversions` (lines of conversion.jsonl) add one curve per RoPE dim after fine-tuning,
    and one, dotted, before it.
    """
    # A Figure on an Agg canvas rather than pyplot, so no display is needed and no global
    # backend changes.
    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()

    xs = [s.cache_bytes for s in summaries]
    ys = [s.val_perplexity[0] for s in summaries]
    for kind, marker in MARKERS.items():
        members = [i for i, s in enumerate(summaries) if s.kind == kind]
        if not members:
            continue
        ax.errorbar(
            [xs[i] for i in members],
            [ys[i] for i in members],
            yerr=[summaries[i].val_perplexity[1] or 0.0 for i in members],
            fmt=marker,
            color=COLORS[kind],
            capsize=3,
            label=kind.upper(),
        )

    _label_members(ax, xs, ys, [s.member for s in summaries])
    front = pareto_front(list(zip(xs, ys)))
    # Rings mark the frontier's members, so a frontier of one point still shows.
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        "--o",
        color="gray",
        markersize=13,
        markerfacecolor="none",
        drawstyle="steps-post",
        label="Pareto frontier",
    )

    if conversions:
        _plot_conversions(ax, conversions, ys)

    ax.set_xscale("log")
    dtype = summaries[0].cache_dtype if summaries else "?"
    ax.set_xlabel(f"KV-cache bytes per token, all layers ({dtype})")
    ax.set_ylabel("validation perplexity (mean over seeds)")
    ax.set_title("Perplexity against KV-cache size (lower left is better)")
    ax.grid(True, which="both", alpha=0.3)
    if conversions:
        # The conversion curves double the legend, so it goes right of the axes.
        fig.set_size_inches(10.5, 5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    else:
        ax.legend()
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=150)


def _label_members(ax, xs, ys, names) -> None:
    """Label the points, stacking the labels of members that share a cache size in y order."""
    groups: dict[float, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(x, []).append(i)
    for x, members in groups.items():
        members.sort(key=lambda i: ys[i])
        middle = sum(ys[i] for i in members) / len(members)
        for rank, i in enumerate(members):
            offset = 9 * (rank - (len(members) - 1) / 2) + 4
            ax.annotate(
                names[i], (x, middle), textcoords="offset points", xytext=(8, offset), fontsize=7
            )


def _plot_conversions(ax, conversions: Sequence[dict], member_ys: Sequence[float]) -> None:
    """Draw converted models: a solid curve after fine-tuning, a dotted one before, per RoPE dim.

    A star marks the control, the source fine-tuned alike without conversion. Before
    fine-tuning, the smallest latents can be far worse than everything else. The y axis
    therefore stops 25% above the other points, and a point beyond it is drawn at the edge
    with its value written next to it.
    """
    after = [c[k] for c in conversions for k in ("finetuned_val_perplexity", CONTROL_KEY)]
    top = 1.25 * max([*member_ys, *after])
    for index, rope_dim in enumerate(sorted({c["qk_rope_head_dim"] for c in conversions})):
        lines = sorted(
            (c for c in conversions if c["qk_rope_head_dim"] == rope_dim),
            key=lambda c: c["kv_cache_bytes_per_token"],
        )
        _plot_conversion_curves(ax, lines, CONVERSION_COLORS[index % len(CONVERSION_COLORS)], top)
    first = conversions[0]
    ax.plot(
        [first["source_kv_cache_bytes_per_token"]],
        [first[CONTROL_KEY]],
        "*",
        color="black",
        markersize=11,
        label=f"{first['source_attention'].upper()} +{first['finetune_steps']} steps",
    )
    ax.set_ylim(top=top)


def _plot_conversion_curves(ax, lines: Sequence[dict], color: str, top: float) -> None:
    """Draw the conversions of one RoPE dim, sorted by cache size, below y = top."""
    xs = [c["kv_cache_bytes_per_token"] for c in lines]
    name = f"{lines[0]['source_attention'].upper()} to MLA, RoPE {lines[0]['qk_rope_head_dim']}"
    after = [c["finetuned_val_perplexity"] for c in lines]
    before = [c["converted_val_perplexity"] for c in lines]
    ax.plot(xs, after, "-P", color=color, label=f"{name}, +{lines[0]['finetune_steps']} steps")
    ax.plot(
        xs,
        [min(y, top) for y in before],
        ":P",
        color=color,
        markerfacecolor="none",
        label=f"{name}, before fine-tuning",
    )
    for x, y, line in zip(xs, after, lines):
        label = f"R={line['kv_lora_rank']}"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, -9), fontsize=7)
    for x, y in zip(xs, before):
        if y > top:
            ax.annotate(
                f"{y:.1f}", (x, top), textcoords="offset points", xytext=(5, -9), fontsize=7
            )
