"""Train a language model from a config file.

  python train.py --config=configs/shakespeare.py:mla --workdir=runs/mla [--config.FIELD=VALUE ...]

Running the same command again resumes from the latest checkpoint in WORKDIR/checkpoints.
SIGTERM or Ctrl-C saves a checkpoint at the current step first (a second one exits at once).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mla_jax import cli
from mla_jax.sharding import initialize_distributed
from mla_jax.training.loop import train
from mla_jax.training.preemption import TrainingInterrupted
from mla_jax.training.metrics import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, optionally with ':KIND' (mha, gqa, mqa or mla).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
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
    logging.info("Config:\n%s", _CONFIG.value)
    try:
        train(_CONFIG.value, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
    except TrainingInterrupted as stopped:
        logging.warning("%s", stopped)
        sys.exit(128 + stopped.signum)  # The shell's code for a process ended by that signal.


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
