"""Exact resume: runs killed at a step and started again log the losses of an unbroken run.

Each run is a real `train.py` process (tests/interrupt_driver.py interrupts it). Eight steps,
a checkpoint every two, a loss logged at every step; the losses of the interrupted and resumed
runs must equal the unbroken run's bit for bit.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import REPO
from mla_jax.training import loop
from mla_jax.training.checkpoints import CheckpointError, load_model
from mla_jax.training.guards import NonFiniteError

STEPS = 8
MESH = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def _run(workdir, *flags, driver=()):
    cmd = [
        sys.executable,
        *(
            [str(REPO / "tests" / "interrupt_driver.py"), *driver]
            if driver
            else [str(REPO / "train.py")]
        ),
        f"--config={REPO / 'configs' / 'tiny.py'}:gqa",
        f"--workdir={workdir}",
        f"--config.num_train_steps={STEPS}",
        "--config.log_every=1",
        "--config.checkpoint_every=2",
        "--config.eval_every=0",
        *flags,
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def _losses(workdir) -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def _checkpoint_steps(workdir) -> list[int]:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """Step -> loss of uninterrupted runs, on one device and on the (2, 2, 2) mesh."""
    losses = {}
    for name, flags in (("single", ()), ("mesh", MESH)):
        workdir = tmp_path_factory.mktemp(f"unbroken_{name}")
        done = _run(workdir, *flags)
        assert done.returncode == 0, done.stderr[-3000:]
        losses[name] = dict(_losses(workdir))
        assert sorted(losses[name]) == list(range(1, STEPS + 1))
    return losses


def _assert_same_losses(workdir, reference):
    logged = _losses(workdir)
    assert {step for step, _ in logged} == set(range(1, STEPS + 1))
    for step, loss in logged:  # Steps replayed after a kill are logged twice: both must match.
        assert loss == reference[step], step


# (mode, mesh, exit code, checkpoint the resumed run starts from). The interruption comes as
# step index 4 is about to start, after the checkpoint of step 4 was written. A signal lets
# that step finish and saves step 5.
CASES = [
    ("sigkill", False, -signal.SIGKILL, (2, 4)),
    ("sigterm", False, 128 + signal.SIGTERM, (5,)),
    ("sigint", False, 128 + signal.SIGINT, (5,)),
    ("exception", False, 1, (4,)),
    ("sigterm", True, 128 + signal.SIGTERM, (5,)),
]


@pytest.mark.parametrize("mode,mesh,code,restored", CASES)
def test_interrupted_run_resumes_exactly(unbroken, tmp_path, mode, mesh, code, restored):
    flags = MESH if mesh else ()
    killed = _run(tmp_path, *flags, driver=(mode, "4"))
    assert killed.returncode == code, killed.stderr[-3000:]
    if code > 128:
        assert max(_checkpoint_steps(tmp_path)) == 5
        assert "Run the same command again to resume" in killed.stderr
    resumed = _run(tmp_path, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert any(f"Restored checkpoint at step {s} " in resumed.stderr for s in restored)
    _assert_same_losses(tmp_path, unbroken["mesh" if mesh else "single"])


def test_kill_during_save_resumes_from_previous(unbroken, tmp_path):
    killed = _run(tmp_path, driver=("kill_in_save", "4"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = [n for n in os.listdir(tmp_path / "checkpoints") if "tmp" in n]
    assert [n.split(".")[0] for n in partial] == ["4"]
    assert _checkpoint_steps(tmp_path) == [2]
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "a checkpoint cut off during its save" in resumed.stderr
    assert "Restored checkpoint at step 2 " in resumed.stderr
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if "tmp" in n]
    _assert_same_losses(tmp_path, unbroken["single"])


def test_second_signal_exits_without_saving(tmp_path):
    killed = _run(tmp_path, driver=("sigterm_twice", "4"))
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    assert "Second SIGTERM: exiting now without saving" in killed.stderr
    assert max(_checkpoint_steps(tmp_path)) <= 4


def _short_run(tiny_config, steps):
    config = tiny_config("mha")
    config.num_train_steps, config.checkpoint_every = steps, 2
    config.log_every, config.eval_every = 1, 0
    return config


def test_nonfinite_step_stops_before_checkpoint(tiny_config, tmp_path, monkeypatch):
    real = loop.train_step_for

    def poisoned(*args):
        train_step, shardings = real(*args)

        def step(state, batch):
            if int(state.step) == 4:  # The update that makes step 5 reads NaN weights.
                state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
            return train_step(state, batch)

        return step, shardings

    monkeypatch.setattr(loop, "train_step_for", poisoned)
    config = _short_run(tiny_config, 8)
    with pytest.raises(NonFiniteError, match=r"at step 5; .* last good checkpoint is step 4 "):
        loop.train(config, str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [2, 4]
    model, step = load_model(config, str(tmp_path))
    assert step == 4
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(bool(jnp.isfinite(p).all()) for p in params)
    assert [r[0] for r in _losses(tmp_path)] == [1, 2, 3, 4]


def test_resume_keeps_the_earlier_config(tiny_config, tmp_path):
    loop.train(_short_run(tiny_config, 4), str(tmp_path))
    loop.train(_short_run(tiny_config, 6), str(tmp_path))
    with open(tmp_path / "config.before_step_4.json") as f:
        assert json.load(f)["num_train_steps"] == 4
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["num_train_steps"] == 6


def test_checkpoint_dir_that_is_a_file(tiny_config, tmp_path):
    config = _short_run(tiny_config, 4)
    config.checkpoint_dir = str(tmp_path / "file")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CheckpointError, match="is a file; set --config.checkpoint_dir"):
        loop.train(config, str(tmp_path / "run"))
    assert (tmp_path / "file").read_text() == "not a directory"


def test_unreadable_checkpoint_names_the_fallback(tiny_config, tmp_path):
    loop.train(_short_run(tiny_config, 4), str(tmp_path))
    manifest = tmp_path / "checkpoints" / "4" / "state" / "manifest.ocdbt"
    manifest.write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="at step 4 .* to resume from step 2"):
        loop.train(_short_run(tiny_config, 6), str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [2, 4]


def test_empty_checkpoint_directory_says_train_first(tiny_config, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(
        CheckpointError, match="No checkpoint found in .* Train first with train.py"
    ):
        load_model(_short_run(tiny_config, 4), str(tmp_path))
