"""Write DIR/table.md, DIR/pareto.png and DIR/pareto.svg from a sweep's DIR/results.jsonl.

  python scripts/make_report.py --workdir=DIR [--memory_budget_gib=1 --budget_dtype=bfloat16]

The table has one row per member: parameters, KV-cache size, perplexity over seeds, decode
speed, and the longest context whose cache fits the memory budget. The plot shows validation
perplexity against KV-cache bytes per token, with the Pareto frontier.
"""

from absl import app, flags

from mla_jax.ablation.report import write_report
from mla_jax.ablation.table import Budget
from mla_jax.config import DTYPES

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory holding results.jsonl.")
_BUDGET_GIB = flags.DEFINE_float("memory_budget_gib", 1.0, "KV-cache memory budget in GiB.")
_BUDGET_DTYPE = flags.DEFINE_enum(
    "budget_dtype", "bfloat16", list(DTYPES), "Cache dtype for the budget."
)
_BUDGET_BATCH = flags.DEFINE_integer("budget_batch_size", 1, "Sequences sharing the budget.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _BUDGET_GIB.value <= 0 or _BUDGET_BATCH.value < 1:
        raise app.UsageError(
            "--memory_budget_gib must be positive and --budget_batch_size at least 1."
        )
    table, _ = write_report(
        _WORKDIR.value, Budget(_BUDGET_GIB.value, _BUDGET_DTYPE.value, _BUDGET_BATCH.value)
    )
    print(table)
    print(f"Wrote {_WORKDIR.value}/table.md, pareto.png and pareto.svg.")


if __name__ == "__main__":
    app.run(main)
