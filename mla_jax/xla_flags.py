"""Default XLA options of this project, added to XLA_FLAGS before JAX starts its backend.

`--xla_cpu_experimental_ynn_fusion_type=individual_dot` lets XLA on CPU (jaxlib 0.10.2) hand
each matrix product to YNNPACK on its own. By default YNNPACK also fuses reductions, and then
the softmax sums of attention share fusions with the score products. Those fusions ran at
15 to 90 GFLOP/s against 440 for a plain float32 product, and a train step of
configs/bench_train.py:mha took 5.4 s instead of 3.5 s (scripts/bench_train.py, 2-core AMD
EPYC, docs/benchmarks.md). bfloat16 products stay native bfloat16 with the option.
"""

from __future__ import annotations

import os

DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)


def add_default_xla_flags() -> None:
    """Append DEFAULT_FLAGS to XLA_FLAGS, except options that XLA_FLAGS already sets.

    It takes effect only if JAX has not created its CPU backend yet.
    """
    current = os.environ.get("XLA_FLAGS", "")
    names = {flag.split("=")[0] for flag in current.split()}
    missing = [flag for flag in DEFAULT_FLAGS if flag.split("=")[0] not in names]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
