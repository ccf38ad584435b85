"""The Pareto plot of a sweep: validation perplexity against KV-cache bytes per token."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mla_jax.ablation.stats import MemberSummary, pareto_front

MARKERS = {"mha": "o", "gqa": "s", "mqa": "^", "mla": "D"}
COLORS = {"mha": "tab:blue", "gqa": "tab:orange", "mqa": "tab:green", "mla": "tab:red"}


def plot_pareto(summaries: Sequence[MemberSummary], paths: Sequence[str]) -> None:
    """Plot every member with std-over-seeds error bars and the frontier, and save to `paths`."""
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

    for x, y, s in zip(xs, ys, summaries):
        ax.annotate(s.member, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
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

    ax.set_xscale("log")
    dtype = summaries[0].cache_dtype if summaries else "?"
    ax.set_xlabel(f"KV-cache bytes per token, all layers ({dtype})")
    ax.set_ylabel("validation perplexity (mean over seeds)")
    ax.set_title("Perplexity against KV-cache size (lower left is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=150)
