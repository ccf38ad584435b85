"""Ablation sweeps: member configs, width matching, the resumable runner, and the report."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_config_module
from mla_jax import ablation
from mla_jax.ablation import results, stats
from mla_jax.ablation.report import write_report
from mla_jax.ablation.runner import run_sweep
from mla_jax.ablation.sweep import config_dict
from mla_jax.ablation.table import Budget
from mla_jax.config import ConfigError

TINY = REPO / "configs" / "ablation" / "tiny.py"
SHAKESPEARE = REPO / "configs" / "ablation" / "shakespeare.py"


def tiny_sweep():
    return load_config_module(TINY).get_config()


def test_member_config_applies_overrides_and_seed():
    sweep = load_config_module(SHAKESPEARE).get_config()
    config = ablation.member_config(sweep, "gqa_2", 7)
    assert (config.model.attention, config.model.num_kv_heads, config.model.mlp_dim) == (
        "gqa",
        2,
        416,
    )
    assert config.seed == 7
    assert config.num_train_steps == sweep.base.num_train_steps
    noq = ablation.member_config(sweep, "mla_56_noq", 0)
    assert noq.model.q_lora_rank is None
    assert noq.model.kv_lora_rank == 56
    # The base config is copied, not changed.
    assert sweep.base.model.attention == "mha"
    assert sweep.base.model.q_lora_rank == 64
    with pytest.raises(ConfigError, match="'gqa_3'"):
        ablation.member_config(sweep, "gqa_3", 0)


def test_member_checkpoint_dir_is_per_run():
    sweep = tiny_sweep()
    assert ablation.member_config(sweep, "mla", 1).checkpoint_dir is None
    sweep.base.checkpoint_dir = "gs://bucket/sweep"
    assert ablation.member_config(sweep, "mla", 1).checkpoint_dir == "gs://bucket/sweep/mla/seed_1"
    assert sweep.base.checkpoint_dir == "gs://bucket/sweep"


def test_member_override_of_unknown_field():
    sweep = tiny_sweep()
    sweep.members.mla.num_experts = 4
    with pytest.raises(ConfigError, match="num_experts"):
        ablation.member_config(sweep, "mla", 0)


def test_match_mlp_dim_is_nearest_multiple():
    sweep = tiny_sweep()
    models = ablation.member_models(sweep)
    target = ablation.num_params(models["mha"]) + 5000
    chosen = ablation.match_mlp_dim(models["mla"], target)
    gaps = {
        f: abs(ablation.num_params(models["mla"].replace(mlp_dim=f)) - target)
        for f in range(64, 264, 8)
    }
    assert chosen == min(gaps, key=gaps.get)
    with pytest.raises(ConfigError, match="within 2%"):
        ablation.match_mlp_dim(models["mla"], 10_000)  # below the model without an MLP


def test_results_file_skips_torn_line_and_rejects_duplicates(tmp_path):
    path = str(tmp_path / "results.jsonl")
    results.append_record(path, {"member": "a", "seed": 0})
    with open(path, "a") as f:
        f.write('{"member": "b", "se')  # a write cut short
    results.append_record(path, {"member": "b", "seed": 0})
    records = results.read_records(path)
    assert [(r["member"], r["seed"]) for r in records] == [("a", 0), ("b", 0)]
    with pytest.raises(ValueError, match="two lines"):
        results.records_by_run(records + [{"member": "a", "seed": 0}])


def test_resume_with_another_config_is_rejected(tmp_path):
    sweep = tiny_sweep()
    record = {
        "member": "mha",
        "seed": 0,
        "config": config_dict(ablation.member_config(sweep, "mha", 0)),
    }
    results.append_record(str(tmp_path / "results.jsonl"), record)
    sweep.base.learning_rate = 1e-3
    with pytest.raises(ValueError, match="learning_rate"):
        run_sweep(sweep, str(tmp_path), members=["mha"], seeds=[0])


def fake_record(member, kind, seed, val, test):
    """A results line as the runner writes it, with chosen perplexities."""
    sweep = tiny_sweep()
    config = ablation.member_config(sweep, member, seed)
    cfg = ablation.model_config(config)
    elements = 2 * 4 * 16 if kind == "mha" else 32 + 8
    return {
        "member": member,
        "seed": seed,
        "attention": kind,
        "num_params": ablation.num_params(cfg),
        "kv_cache_elements_per_token_per_layer": elements,
        "kv_cache_bytes_per_token": elements * 2 * 4,
        "kv_cache_dtype": "float32",
        "val_perplexity": val,
        "test_perplexity": test,
        "decode_tokens_per_second": 100.0 + seed,
        "config": config_dict(config),
    }


def test_table_statistics_match_hand_computation(tmp_path):
    path = str(tmp_path / "results.jsonl")
    for seed, (val, test) in enumerate([(3.0, 2.0), (3.5, 2.0), (4.0, 2.6)]):
        results.append_record(path, fake_record("mha", "mha", seed, val, test))
    results.append_record(path, fake_record("mla", "mla", 0, 3.25, 2.5))
    table, _ = write_report(str(tmp_path), Budget(1.0, "bfloat16"))
    assert (tmp_path / "table.md").read_text() == table
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")
        for line in table.splitlines()
        if line.startswith(("| mha", "| mla"))
    }
    # val: mean 3.5, sample std sqrt((0.25 + 0 + 0.25) / 2) = 0.5.
    # test: mean 2.2, sample std sqrt((0.04 + 0.04 + 0.16) / 2) = sqrt(0.12).
    assert rows["mha"][8] == "3.5000 ± 0.5000"
    assert rows["mha"][9] == f"2.2000 ± {math.sqrt(0.12):.4f}"
    assert rows["mha"][4] == "3"
    assert rows["mla"][4] == "1"
    assert rows["mla"][8] == "3.2500 ± n/a"
    assert rows["mha"][10] == "101.0"  # decode tokens/s, mean of 100, 101, 102
    assert rows["mla"][7] == f"{40 / 128:.3f}"  # cache relative to MHA
    assert "ddof=1" in table
    for ext in ("png", "svg"):
        assert (tmp_path / f"pareto.{ext}").stat().st_size > 1000


def test_mean_std_single_value():
    assert stats.mean_std([2.5]) == (2.5, None)


def test_pareto_front_of_hand_made_points():
    points = [
        (100, 5.0),
        (50, 6.0),
        (200, 4.0),
        (100, 5.5),
        (300, 4.0),
        (25, 7.0),
        (50, 6.0),
        (400, 3.9),
    ]
    # (100, 5.5) loses to (100, 5.0); (300, 4.0) to (200, 4.0); the two (50, 6.0) tie and both stay.
    assert stats.pareto_front(points) == [5, 1, 6, 0, 2, 7]


@pytest.mark.parametrize("gib,dtype,batch", [(1.0, "bfloat16", 1), (1.5, "float32", 4)])
def test_max_context_is_budget_over_bytes_per_token(gib, dtype, batch):
    records = [fake_record("mha", "mha", 0, 3.0, 3.0), fake_record("mla", "mla", 0, 3.0, 3.0)]
    budget, width = int(gib * 2**30), {"bfloat16": 2, "float32": 4}[dtype]
    # Tiny sizes, by hand: 2 layers; MHA caches 2 x 4 heads x 16, MLA latent 32 + RoPE key 8.
    expected = {
        "mha": budget // (2 * 4 * 16 * 2 * width * batch),
        "mla": budget // ((32 + 8) * 2 * width * batch),
    }
    for summary in stats.summarize(records):
        got = stats.max_context_tokens(
            Budget(gib, dtype).nbytes, stats.bytes_per_token_at(summary, dtype), batch
        )
        assert got == expected[summary.member]


def sweep_command(workdir):
    return [
        sys.executable,
        str(REPO / "scripts" / "run_ablation.py"),
        f"--config={TINY}",
        f"--workdir={workdir}",
        "--seeds=0",
        "--config.base.num_train_steps=6",
        "--config.base.checkpoint_every=3",
        "--config.base.log_every=1",
    ]


def sweep_env():
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # one CPU device: the sweep is not about sharding
    return env


def start_and_kill(workdir) -> None:
    """Start the sweep and SIGKILL it once the second run (mla) has saved a checkpoint."""
    proc = subprocess.Popen(
        sweep_command(workdir),
        env=sweep_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = workdir / "runs" / "mla" / "seed_0" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert proc.poll() is None, "the sweep ended before the second run saved a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint of the second run after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sweep_killed_and_resumed_end_to_end(tmp_path):
    start_and_kill(tmp_path)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["member"] for line in lines] == ["mha"]
    mha_eval = tmp_path / "runs" / "mha" / "seed_0" / "eval.json"
    mha_mtime, mla_finished = (
        mha_eval.stat().st_mtime_ns,
        (tmp_path / "runs/mla/seed_0/eval.json").exists(),
    )

    resumed = subprocess.run(
        sweep_command(tmp_path),
        env=sweep_env(),
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[1/2] mha seed 0: finished earlier, skipped." in resumed.stderr
    if not mla_finished:
        assert "[2/2] mla seed 0: training to step 6" in resumed.stderr
    # The interrupted run continued from its checkpoint: step 1 was trained (and logged) once.
    metrics = (tmp_path / "runs" / "mla" / "seed_0" / "metrics.jsonl").read_text().splitlines()
    mla_steps = [json.loads(line)["step"] for line in metrics]
    assert mla_steps.count(1) == 1
    assert max(mla_steps) == 6
    records = results.read_records(str(tmp_path / "results.jsonl"))
    assert [(r["member"], r["seed"]) for r in records] == [("mha", 0), ("mla", 0)]
    assert (tmp_path / "results.jsonl").read_text().splitlines()[0] == lines[0]
    assert mha_eval.stat().st_mtime_ns == mha_mtime
    for record in records:
        assert record["step"] == 6
        assert record["config"]["num_train_steps"] == 6
        assert record["decode_tokens_per_second"] > 0
        assert math.isfinite(record["val_perplexity"])

    check_rerun_repeats_nothing(tmp_path, records, metrics)
    check_report_files(tmp_path)


def check_rerun_repeats_nothing(workdir, records, mla_metrics):
    """Rerun the finished sweep in-process, then again with mla's results line removed."""
    sweep = tiny_sweep()
    sweep.base.num_train_steps, sweep.base.checkpoint_every, sweep.base.log_every = 6, 3, 1
    assert run_sweep(sweep, str(workdir), seeds=[0]) == records
    assert len(results.read_records(str(workdir / "results.jsonl"))) == 2

    # As if killed after mla's eval.json but before its line: only decoding is measured again.
    (workdir / "results.jsonl").write_text(json.dumps(records[0], sort_keys=True) + "\n")
    mla_eval = workdir / "runs" / "mla" / "seed_0" / "eval.json"
    mla_mtime = mla_eval.stat().st_mtime_ns
    again = run_sweep(sweep, str(workdir), seeds=[0])
    assert again[1]["val_perplexity"] == records[1]["val_perplexity"]
    assert mla_eval.stat().st_mtime_ns == mla_mtime
    assert len(results.read_records(str(workdir / "results.jsonl"))) == 2
    assert (
        workdir / "runs" / "mla" / "seed_0" / "metrics.jsonl"
    ).read_text().splitlines() == mla_metrics


def check_report_files(workdir):
    """Run make_report.py on the sweep and check the table rows and both plot files."""
    command = [sys.executable, str(REPO / "scripts" / "make_report.py"), f"--workdir={workdir}"]
    report = subprocess.run(
        command, env=sweep_env(), cwd=REPO, check=False, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr[-3000:]
    table = (workdir / "table.md").read_text()
    assert "| mha | mha |" in table
    assert "| mla | mla |" in table
    assert (workdir / "pareto.png").stat().st_size > 1000
    assert (workdir / "pareto.svg").stat().st_size > 1000
