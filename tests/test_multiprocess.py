"""Two JAX processes on 127.0.0.1 (4 CPU devices each, gloo) train like one process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO

STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(workdir, *flags):
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO / 'configs' / 'tiny.py'}:gqa",
        f"--workdir={workdir}",
        f"--config.num_train_steps={STEPS}",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.checkpoint_every=0",
        *flags,
    ]


def environment(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"] for line in f])


def test_two_processes_match_one(tmp_path):
    shared = tmp_path / "two_processes"
    port = free_port()
    workers = [
        subprocess.Popen(
            train_command(
                shared,
                "--config.distributed.initialize=True",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={rank}",
                "--config.mesh.data=2",
                "--config.mesh.fsdp=2",
                "--config.mesh.tensor=2",
            ),
            env=environment(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    single = subprocess.run(
        train_command(tmp_path / "one_process"),
        env=environment(1),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for rank, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, f"process {rank}:\n{output[-3000:]}"
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Process 1 of 2; 4 local and 8 global devices." in outputs[1]
    assert len(losses(shared)) == STEPS  # only process 0 writes metrics
    np.testing.assert_allclose(losses(shared), losses(tmp_path / "one_process"), atol=1e-5, rtol=0)
    assert (shared / "checkpoints" / str(STEPS)).is_dir()


def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
    """A preemption notice to process 1 only: both stop at the step the sync point picks."""
    port = free_port()
    distributed = [
        "--config.num_train_steps=200",
        "--config.distributed.initialize=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        "--config.mesh.data=2",
        "--config.mesh.fsdp=4",
    ]
    driver = [str(REPO / "tests" / "interrupt_driver.py"), "sigterm", "3"]
    commands = [
        train_command(tmp_path, *distributed, "--config.distributed.process_id=0"),
        train_command(tmp_path, *distributed, "--config.distributed.process_id=1"),
    ]
    commands[1][1:2] = driver  # Process 1 runs train.py through the driver.
    workers = [
        subprocess.Popen(
            command,
            env=environment(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    stopped = []
    for rank, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 128 + signal.SIGTERM, f"process {rank}:\n{output[-3000:]}"
        found = re.search(r"Stopped on SIGTERM after saving a checkpoint at step (\d+)", output)
        assert found, f"process {rank}:\n{output[-3000:]}"
        stopped.append(int(found.group(1)))
    assert stopped[0] == stopped[1]
    assert stopped[0] < 200
    assert (tmp_path / "checkpoints" / str(stopped[0])).is_dir()
