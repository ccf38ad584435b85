"""Stop requests: on SIGTERM (a preemption notice) or SIGINT the loop saves and stops.

One process: the first signal sets a flag that the loop reads after each step; the loop saves a
checkpoint at that step and raises `TrainingInterrupted`. A second signal exits at once, with the
signal's default action.

Several processes: the notice reaches them at different steps, so each asks JAX's preemption
sync point (`multihost_utils.reached_preemption_sync_point`), which agrees on one step for all.
JAX's distributed client catches SIGTERM itself, so no Python handler replaces its handler;
SIGINT is turned into a SIGTERM to the same process, which takes the same path.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        name = signal.Signals(signum).name
        super().__init__(
            f"Stopped on {name} after saving a checkpoint at step {step}. "
            "Run the same command again to resume."
        )


class StopRequest:
    """Context manager that installs the signal handlers. The loop calls `should_stop` after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._multi_process = jax.process_count() > 1
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not in the main thread: SIGTERM and SIGINT keep their handlers.")
            return self
        signums = [signal.SIGINT] if self._multi_process else [signal.SIGTERM, signal.SIGINT]
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.signum is not None:
            logging.warning("Second %s: exiting now without saving.", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        logging.warning(
            "Received %s: saving a checkpoint after this step, then stopping. "
            "Send it again to exit at once.",
            name,
        )
        if self._multi_process:
            # JAX's preemption notifier catches SIGTERM and propagates the notice to all processes.
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Return whether to save at `step` (the number of updates applied so far) and stop.

        With several processes this must be called at every step by every process.
        """
        if self._multi_process:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return True
            return False
        return self.signum is not None
