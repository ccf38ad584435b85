"""Evaluate the latest checkpoint of a workdir and write WORKDIR/eval.json.

python eval.py --config=configs/shakespeare.py:mla --workdir=runs/mla
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mla_jax import cli
from mla_jax.evaluation import evaluate
from mla_jax.sharding import initialize_distributed
from mla_jax.training.metrics import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, optionally with ':KIND' (mha, gqa, mqa or mla).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding the checkpoints to evaluate.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Go on although the model or data config differs from the run recorded in the workdir.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.parse_flags rejects positional arguments.
    quiet_library_logs()
    initialize_distributed(_CONFIG.value.distributed)
    logging.info(
        "JAX %s on %d %s device(s).", jax.__version__, jax.device_count(), jax.default_backend()
    )
    result = evaluate(_CONFIG.value, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
    logging.info("eval.json:\n%s", json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
