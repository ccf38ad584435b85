"""The Cloud TPU scripts: dry runs print the right gcloud commands, settings fail clearly, and the
remote commands work when a stand-in `gcloud` runs them on this machine as a fake worker.

No test reaches a network: a stand-in `gcloud` comes first on PATH. It records its arguments.
When a test sets FAKE_GCLOUD_HOME, it serves scp from and to that local folder, which stands for
the worker's home directory, and with FAKE_GCLOUD_RUN_SSH=1 it runs ssh commands there.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO

SCRIPTS = REPO / "scripts" / "tpu"
REQUIREMENTS = (REPO / "requirements.txt").read_text()
JAX_VERSION = re.search(r"^jax==(\S+)$", REQUIREMENTS, re.MULTILINE).group(1)

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
home = os.environ.get("FAKE_GCLOUD_HOME")
if home is None or args[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit(0)
command = args[3]
if command == "ssh" and os.environ.get("FAKE_GCLOUD_RUN_SSH") == "1":
    line = next(a for a in args if a.startswith("--command="))[len("--command="):]
    sys.exit(subprocess.run(["bash", "-c", line], cwd=home).returncode)
if command == "scp":
    paths = [a for a in args[4:] if not a.startswith("--")]
    local = lambda p: os.path.join(home, p.split(":", 1)[1]) if ":" in p else p
    *sources, dest = [local(p) for p in paths]
    for source in sources:
        if not os.path.exists(source):
            print("scp: " + source + ": No such file or directory", file=sys.stderr)
            sys.exit(1)
        target = os.path.join(dest, os.path.basename(source)) if dest.endswith("/") else dest
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy(source, target)
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    """PATH with the stand-in gcloud first, and the file where it records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GCLOUD_LOG": str(tmp_path / "calls.jsonl"),
    }


def run_script(name, args, fake_gcloud, cwd=None, timeout=60, **settings):
    """Run scripts/tpu/NAME with only the given TPU_* settings in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "FAKE_GCLOUD_"))}
    env.update(fake_gcloud, **settings)
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def gcloud_calls(fake_gcloud):
    path = fake_gcloud["FAKE_GCLOUD_LOG"]
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


BASE = ["--name", "my-tpu", "--zone", "us-central2-b", "--project", "my-project", "--dry-run"]
EXPECTED = {
    "create.sh": (
        ["--accelerator-type", "v4-8"],
        [
            (
                "gcloud compute tpus tpu-vm create my-tpu --accelerator-type=v4-8"
                " --version=tpu-ubuntu2204-base --zone=us-central2-b --project=my-project"
            ),
        ],
    ),
    "install.sh": (
        [],
        [
            "gcloud compute tpus tpu-vm scp /",
            "my-tpu:mla-jax-my-tpu.tar.gz --worker=all",
            "gcloud compute tpus tpu-vm ssh my-tpu --worker=all",
            f'pip install --python .venv/bin/python "jax[tpu]=={JAX_VERSION}"',
            "-r .venv/requirements-without-jax.txt -c .venv/jax-constraints.txt",
            "--no-deps -e .",
        ],
    ),
    "launch.sh": (
        ["--", "--config.num_train_steps=100"],
        [
            "gcloud compute tpus tpu-vm ssh my-tpu --worker=all",
            (
                ".venv/bin/python train.py --config=configs/tpu_small.py:mla --workdir=runs/my-tpu"
                " --config.distributed.initialize=True --config.num_train_steps=100"
            ),
            ".venv/bin/python eval.py --config=configs/tpu_small.py:mla",
            "> runs/my-tpu/run.log",
        ],
    ),
    "fetch.sh": (
        [],
        [
            (
                "gcloud compute tpus tpu-vm scp my-tpu:mla-jax/runs/my-tpu/eval.json"
                " tpu-results/my-tpu/ --worker=0"
            ),
            "my-tpu:mla-jax/runs/my-tpu/metrics.jsonl",
            "scp --recurse my-tpu:mla-jax/runs/my-tpu/tensorboard tpu-results/my-tpu/",
        ],
    ),
    "logs.sh": (
        [],
        [
            "gcloud compute tpus tpu-vm ssh my-tpu --worker=0",
            "tail -n 100 mla-jax/runs/my-tpu/run.log",
        ],
    ),
    "delete.sh": (
        [],
        [
            "gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --project=my-project",
        ],
    ),
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_dry_run_prints_commands(script, fake_gcloud):
    extra, needles = EXPECTED[script]
    result = run_script(script, BASE + extra, fake_gcloud)
    assert result.returncode == 0, result.stderr
    for needle in needles:
        assert needle in result.stdout, f"{needle!r} not in:\n{result.stdout}"
    assert gcloud_calls(fake_gcloud) == []
    # Every printed line is one valid shell command, and so is each remote command in it.
    for line in result.stdout.splitlines():
        remote = [w[len("--command=") :] for w in shlex.split(line) if w.startswith("--command=")]
        for command in [line, *remote]:
            check = subprocess.run(
                ["bash", "-n", "-c", command], check=False, capture_output=True, text=True
            )
            assert check.returncode == 0, check.stderr


def test_flags_override_environment(fake_gcloud):
    settings = {
        "TPU_NAME": "env-tpu",
        "TPU_ZONE": "us-west4-a",
        "TPU_ACCELERATOR_TYPE": "v5litepod-8",
        "TPU_DRY_RUN": "1",
    }
    result = run_script("create.sh", ["--spot"], fake_gcloud, **settings)
    assert result.returncode == 0, result.stderr
    assert (
        "gcloud compute tpus tpu-vm create env-tpu --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite --spot --zone=us-west4-a"
    ) in result.stdout
    args = ["--name=flag-tpu", "--runtime-version", "custom", "--", "--labels=a=b"]
    result = run_script("create.sh", args, fake_gcloud, **settings)
    expected = "create flag-tpu --accelerator-type=v5litepod-8 --version=custom --labels=a=b"
    assert expected in result.stdout


@pytest.mark.parametrize(
    "script,args,variable,flag",
    [
        ("create.sh", ["--zone", "z", "--accelerator-type", "v4-8"], "TPU_NAME", "--name"),
        ("create.sh", ["--name", "n", "--zone", "z"], "TPU_ACCELERATOR_TYPE", "--accelerator-type"),
        ("install.sh", ["--name", "n"], "TPU_ZONE", "--zone"),
        ("launch.sh", ["--zone", "z"], "TPU_NAME", "--name"),
        ("fetch.sh", ["--name", "n"], "TPU_ZONE", "--zone"),
        ("logs.sh", ["--zone", "z"], "TPU_NAME", "--name"),
        ("delete.sh", ["--name", "n"], "TPU_ZONE", "--zone"),
    ],
)
def test_missing_setting_names_variable(script, args, variable, flag, fake_gcloud):
    result = run_script(script, args + ["--dry-run"], fake_gcloud)
    assert result.returncode == 2
    assert f"{variable} is not set" in result.stderr
    assert flag in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "script,args,needle",
    [
        ("create.sh", ["--accelerator-type", "v3-8"], "TPU_RUNTIME_VERSION"),
        ("delete.sh", ["--spot"], "does not take '--spot'"),
        ("launch.sh", ["--workdir", "gs://bucket/run"], "gs://"),
        ("launch.sh", ["--config"], "--config needs a value"),
    ],
)
def test_invalid_settings_fail_early(script, args, needle, fake_gcloud):
    result = run_script(script, ["--name", "n", "--zone", "z", "--dry-run"] + args, fake_gcloud)
    assert result.returncode == 2
    assert needle in result.stderr
    assert result.stdout == ""


def test_install_copies_checkout(tmp_path, fake_gcloud):
    home = tmp_path / "worker"
    home.mkdir()
    result = run_script(
        "install.sh",
        ["--name", "my-tpu", "--zone", "z"],
        fake_gcloud,
        FAKE_GCLOUD_HOME=str(home),
        TMPDIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    calls = gcloud_calls(fake_gcloud)
    assert [call[3] for call in calls] == ["scp", "ssh"]
    assert all("--worker=all" in call for call in calls)
    with tarfile.open(home / "mla-jax-my-tpu.tar.gz") as archive:
        names = set(archive.getnames())
    expected = {
        "train.py",
        "eval.py",
        "requirements.txt",
        "configs/tpu_small.py",
        "scripts/tpu/common.sh",
    }
    assert expected <= names
    assert not any(name.startswith((".venv/", "runs/", ".git/")) for name in names)
    assert not (tmp_path / "mla-jax-my-tpu.tar.gz").exists()  # the local archive is removed


def fake_worker(tmp_path):
    """A home folder whose mla-jax looks installed: the entry points, configs and this venv."""
    home = tmp_path / "worker"
    project = home / "mla-jax"
    project.mkdir(parents=True)
    for name in ("train.py", "eval.py", "configs"):
        (project / name).symlink_to(REPO / name)
    (project / ".venv").symlink_to(sys.prefix)
    return home, project


def wait_until(condition, seconds: float) -> bool:
    """Poll `condition` until it is true or `seconds` have passed; return its last value."""
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


def worker_runs(script: str) -> bool:
    pattern = f"^[.]venv/bin/python {script}"
    return (
        subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True).returncode == 0
    )


def training_runs() -> bool:
    return worker_runs("train[.]py")


def test_launch_and_fetch_on_fake_worker(tmp_path, fake_gcloud):
    home, project = fake_worker(tmp_path)
    settings = {
        "TPU_NAME": "my-tpu",
        "TPU_ZONE": "z",
        "TPU_CONFIG": "configs/tiny.py:mla",
        "FAKE_GCLOUD_HOME": str(home),
        "FAKE_GCLOUD_RUN_SSH": "1",
    }
    # Cloud TPU finds its coordinator itself; here a single process must not look for one.
    overrides = ["--", "--config.num_train_steps=4", "--config.distributed.initialize=False"]
    result = run_script("launch.sh", ["--offline"] + overrides, fake_gcloud, **settings)
    assert result.returncode == 0, result.stderr
    assert "Started on" in result.stdout

    # A second launch while the first job runs is refused.
    assert wait_until(training_runs, seconds=30)
    again = run_script("launch.sh", ["--offline"] + overrides, fake_gcloud, **settings)
    workdir = project / "runs" / "my-tpu"
    wait_until((workdir / "eval.json").exists, seconds=300)
    # eval.py logs the results after writing eval.json: wait for it to exit.
    wait_until(lambda: not worker_runs("eval[.]py"), seconds=60)
    log = (workdir / "run.log").read_text()
    assert (workdir / "eval.json").exists(), log
    assert again.returncode != 0
    assert "already running" in again.stderr

    dest = tmp_path / "results"
    result = run_script("fetch.sh", ["--dest", str(dest)], fake_gcloud, **settings)
    assert result.returncode == 0, result.stderr
    assert json.loads((dest / "eval.json").read_text())["step"] == 4
    steps = [json.loads(line)["step"] for line in (dest / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4]
    assert (dest / "run.log").read_text() == log
    assert any((dest / "tensorboard").iterdir())


def test_fetch_reports_missing_files(tmp_path, fake_gcloud):
    home, project = fake_worker(tmp_path)
    (project / "runs" / "my-tpu").mkdir(parents=True)
    (project / "runs" / "my-tpu" / "metrics.jsonl").write_text('{"step": 1}\n')
    args = ["--name", "my-tpu", "--zone", "z", "--dest", str(tmp_path / "out")]
    result = run_script("fetch.sh", args, fake_gcloud, FAKE_GCLOUD_HOME=str(home))
    assert result.returncode == 1
    assert "Not fetched: eval.json config.json run.log tensorboard/" in result.stderr
    assert (tmp_path / "out" / "metrics.jsonl").exists()
