"""Write a sweep's report into its workdir: `table.md`, `pareto.png` and `pareto.svg`."""

from __future__ import annotations

import os

from mla_jax.ablation import results
from mla_jax.ablation.plot import plot_pareto
from mla_jax.ablation.stats import MemberSummary, summarize
from mla_jax.ablation.table import Budget, markdown_table


def write_report(workdir: str, budget: Budget) -> tuple[str, list[MemberSummary]]:
    """Write table.md and the plots from WORKDIR/results.jsonl, and return the table text."""
    path = os.path.join(workdir, results.RESULTS_FILE)
    records = results.read_records(path)
    if not records:
        raise FileNotFoundError(f"No results found in {path}. Run scripts/run_ablation.py first.")
    results.records_by_run(records)  # raises ValueError on a run recorded twice
    summaries = summarize(records)
    table = markdown_table(summaries, budget)
    _write_text(os.path.join(workdir, "table.md"), table)
    plot_pareto(summaries, [os.path.join(workdir, f"pareto.{ext}") for ext in ("png", "svg")])
    return table, summaries


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
