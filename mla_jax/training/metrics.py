"""Metric sinks: absl log lines, TensorBoard event files and `metrics.jsonl` in the workdir."""

from __future__ import annotations

import json
import os

from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes one record per logged step to every sink; `metrics.jsonl` gets one JSON object a line."""

    def __init__(self, workdir: str, enabled: bool = True):
        """`enabled=False` (processes other than 0) writes nothing and opens no file."""
        self.enabled = enabled
        if not enabled:
            return
        self._tensorboard = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        # Line-buffered append: a resumed run adds to the file, and a killed one loses no
        # complete line.
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in record.items() if k != "step")
        )
        for name, value in record.items():
            if name != "step":
                self._tensorboard.add_scalar(name, value, int(step))
        self._jsonl.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        self._tensorboard.close()
        self._jsonl.close()


class _DropLibraryInfo(logging.logging.Filter):
    """Drops INFO records from orbax, whose per-save chatter would bury the training log."""

    def filter(self, record) -> bool:
        return record.levelno > logging.logging.INFO or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    """Keep orbax's warnings and errors, but not its INFO lines, in the absl log."""
    logging.get_absl_handler().addFilter(_DropLibraryInfo())
