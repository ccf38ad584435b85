"""Run train.py, interrupting it at a chosen point: for the resume tests in test_resume.py.

  python tests/interrupt_driver.py MODE STEP [train.py flags ...]

MODE is what happens when step STEP is about to start: sigkill, sigterm, sigint (the process
sends itself that signal), sigterm_twice (two SIGTERMs at once), exception (a RuntimeError), or
kill_in_save (SIGKILL while the checkpoint of step STEP is being committed: its files are
written, its folder is not yet renamed to the step's name).
"""

import os
import pathlib
import runpy
import signal
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # This checkout's package, as train.py itself would import it.

from orbax.checkpoint._src.path import atomicity  # noqa: E402

from mla_jax.training import loop  # noqa: E402

SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def _at_step(mode: str):
    def interrupt():
        if mode == "exception":
            raise RuntimeError("Interrupted by the test driver.")
        if mode == "sigterm_twice":
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os.kill(os.getpid(), SIGNALS[mode])

    return interrupt


def _patch_batch(step: int, interrupt) -> None:
    original = loop._Loop.batch

    def batch(self, batches, index):
        if index == step:
            interrupt()
        return original(self, batches, index)

    loop._Loop.batch = batch


def _patch_commit(step: int) -> None:
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if self.get_final().name == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main() -> None:
    mode, step, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if mode == "kill_in_save":
        _patch_commit(step)
    else:
        _patch_batch(step, _at_step(mode))
    sys.argv = [str(REPO / "train.py"), *flags]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
