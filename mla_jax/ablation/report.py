"""Write a sweep's report into its workdir: `table.md`, `pareto.png` and `pareto.svg`.

When the workdir also contains `conversion.jsonl` (scripts/conversion_sweep.py), the table gets a
section on the converted models and the plot a second curve.
"""

from __future__ import annotations

import os

from mla_jax.ablation import results
from mla_jax.ablation.plot import plot_pareto
from mla_jax.ablation.stats import MemberSummary, summarize
from mla_jax.ablation.table import Budget, conversion_table, markdown_table


def write_report(workdir: str, budget: Budget) -> tuple[str, list[MemberSummary]]:
    """Write table.md and the plots from WORKDIR/results.jsonl, and return the table text."""
    path = os.path.join(workdir, results.RESULTS_FILE)
    records = results.read_records(path)
    if not records:
        raise FileNotFoundError(f"No results found in {path}. Run scripts/run_ablation.py first.")
    results.records_by_run(records)  # raises ValueError on a run recorded twice
    summaries = summarize(records)
    table = markdown_table(summaries, budget)
    conversions = results.read_records(os.path.join(workdir, results.CONVERSION_FILE))
    if conversions:
        _check_same_dtype(summaries, conversions)
        table += "\n" + conversion_table(conversions)
    _write_text(os.path.join(workdir, "table.md"), table)
    paths = [os.path.join(workdir, f"pareto.{ext}") for ext in ("png", "svg")]
    plot_pareto(summaries, paths, conversions)
    return table, summaries


def _check_same_dtype(summaries: list[MemberSummary], conversions: list[dict]) -> None:
    dtypes = {s.cache_dtype for s in summaries} | {c["kv_cache_dtype"] for c in conversions}
    if len(dtypes) > 1:
        raise ValueError(
            f"{results.CONVERSION_FILE} and {results.RESULTS_FILE} use cache dtypes "
            f"{sorted(dtypes)}, but one plot compares bytes at one dtype. Rerun the conversion "
            "sweep with the ablation's cache_dtype."
        )


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
