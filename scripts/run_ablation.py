"""Train, evaluate and time every member of an attention ablation sweep with every seed.

  python scripts/run_ablation.py --config=configs/ablation/shakespeare.py --workdir=DIR \
      [--members=mha,gqa_2 --seeds=0,1 --config.base.FIELD=VALUE ...]

Each run lives in DIR/runs/<member>/seed_<seed>/ and adds one line to DIR/results.jsonl.
Killed at any point, the same command resumes: finished runs are skipped, interrupted ones
continue from their checkpoints. Then write the table and the plot with scripts/make_report.py.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mla_jax import cli
from mla_jax.ablation.runner import run_sweep
from mla_jax.sharding import initialize_distributed
from mla_jax.training.metrics import quiet_library_logs
from mla_jax.training.preemption import TrainingInterrupted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (configs/ablation/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep: runs/, results.jsonl.")
_MEMBERS = flags.DEFINE_list("members", [], "Members to run, in this order (default: all).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds to run (default: the sweep's seeds).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.parse_flags rejects positional arguments.
    quiet_library_logs()
    sweep = _CONFIG.value
    initialize_distributed(sweep.base.distributed)
    logging.info(
        "JAX %s on %d %s device(s).", jax.__version__, jax.device_count(), jax.default_backend()
    )
    try:
        seeds = [int(s) for s in _SEEDS.value]
    except ValueError as err:
        raise app.UsageError(f"--seeds={','.join(_SEEDS.value)} must be integers.") from err
    try:
        records = run_sweep(sweep, _WORKDIR.value, _MEMBERS.value, seeds)
    except TrainingInterrupted as stopped:
        logging.warning("%s", stopped)
        sys.exit(128 + stopped.signum)
    print(
        f"{len(records)} runs recorded in {_WORKDIR.value}/results.jsonl. "
        f"Report: python scripts/make_report.py --workdir={_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
