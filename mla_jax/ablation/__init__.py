"""Attention ablation sweeps: configs, a resumable runner, and the report.

A sweep trains every member (an attention kind with its sizes, parameter-matched to the MHA
member) with every seed on one data set, then reports perplexity against KV-cache size:

- `sweep`: the sweep config format, `member_config`, MLP-width matching and FLOP counts.
- `runner`: `run_sweep`, which trains each run in WORKDIR/runs/<member>/seed_<seed>/ and
  appends one line per run to WORKDIR/results.jsonl (`results`).
- `stats`, `table`, `plot`, `report`: statistics over seeds, the Pareto frontier, context
  lengths under a cache memory budget, `table.md` and `pareto.png`/`.svg`.
"""

from mla_jax.ablation.sweep import (
    PARAM_TOLERANCE,
    check_sweep,
    match_mlp_dim,
    member_config,
    member_models,
    model_config,
    num_params,
    train_flops,
)

__all__ = [
    "PARAM_TOLERANCE",
    "check_sweep",
    "match_mlp_dim",
    "member_config",
    "member_models",
    "model_config",
    "num_params",
    "train_flops",
]
