"""The finiteness guard: a NaN or infinite loss or gradient stops the run before a save.

The train step computes `finite` on the device. The loop hands each step's flag to the guard
without waiting for it, and the guard fetches the flags when the host waits anyway: before a
checkpoint is written, when metrics are logged, and at the end. So a checkpoint never contains
parameters updated by a non-finite step, and the last good one stays the latest.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp


class NonFiniteError(FloatingPointError):
    """A train step produced a NaN or infinite loss or gradient norm."""


class FiniteGuard:
    """Flags of the steps not checked yet, as (step, device bool) pairs in step order."""

    def __init__(self, manager: ocp.CheckpointManager):
        self._pending: list[tuple[int, jax.Array]] = []
        self._manager = manager

    def add(self, step: int, finite: jax.Array) -> None:
        self._pending.append((step, finite))

    def check(self, upto: int | None = None) -> None:
        """Raise NonFiniteError naming the first bad step among those up to `upto` (or all)."""
        ready = [(s, f) for s, f in self._pending if upto is None or s <= upto]
        if not ready:
            return
        flags = jax.device_get([f for _, f in ready])
        self._pending = self._pending[len(ready) :]
        for (step, _), finite in zip(ready, flags):
            if not finite:
                raise NonFiniteError(
                    f"The loss or gradient norm is NaN or infinite at step {step}; no "
                    f"checkpoint was written from it. {self._last_good()} Lower the learning "
                    "rate, tighten grad_clip_norm or check the data, then run the same command "
                    "to resume."
                )

    def _last_good(self) -> str:
        self._manager.wait_until_finished()
        step = self._manager.latest_step()
        if step is None:
            return "There is no checkpoint yet."
        return f"The last good checkpoint is step {step} in {self._manager.directory}."
