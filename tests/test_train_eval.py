"""Training lowers the loss, perplexity is computed honestly, and the CLI runs end to end."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from mla_jax import data, evaluation
from mla_jax.config import ConfigError, model_config_from
from mla_jax.losses import token_losses
from mla_jax.model import Transformer
from mla_jax.training.checkpoints import CheckpointError, load_model
from mla_jax.training.loop import train

KINDS = ("mha", "gqa", "mqa", "mla")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind", KINDS)
def test_short_training_lowers_loss(tiny_config, tmp_path, kind):
    config = tiny_config(kind)
    config.num_train_steps, config.log_every, config.eval_every, config.checkpoint_every = (
        30,
        1,
        0,
        0,
    )
    train(config, str(tmp_path))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in records]
    assert [r["step"] for r in records] == list(range(1, 31))
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["device_count"] == jax.device_count()
    assert info["packages"]["jax"] == jax.__version__
    assert len(info["git_commit"]) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.5
    for key in ("learning_rate", "grad_norm", "tokens_per_second"):
        assert all(math.isfinite(r[key]) for r in records), key


@pytest.fixture(scope="module")
def scored_model(tiny_config):
    """A random tiny model, its jitted loss function and the validation windows."""
    cfg = model_config_from(tiny_config("mla").model, 258)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    stream = data.load_token_stream(tiny_config("mla").data, "validation", data.ByteTokenizer())
    return graphdef, params, evaluation.make_loss_fn(graphdef), stream


def test_perplexity_independent_of_batch_size(scored_model):
    _, params, loss_fn, stream = scored_model
    windows = data.eval_windows(stream[:3000], 64)
    one = evaluation.score_windows(loss_fn, params, windows, batch_size=1)
    sixteen = evaluation.score_windows(loss_fn, params, windows, batch_size=16)
    assert one["num_tokens"] == sixteen["num_tokens"] == 2999
    np.testing.assert_allclose(one["perplexity"], sixteen["perplexity"], rtol=1e-6)


def test_perplexity_excludes_padding(scored_model):
    graphdef, params, loss_fn, stream = scored_model
    stream = stream[:1000]  # 999 targets: 15 full windows of 64 and one of 39.
    got = evaluation.score_windows(loss_fn, params, data.eval_windows(stream, 64), batch_size=4)
    model = nnx.merge(graphdef, params)
    total = 0.0
    for start in range(0, len(stream) - 1, 64):
        piece = jnp.asarray(stream[start : min(start + 65, len(stream))])
        total += float(jnp.sum(token_losses(model(piece[None, :-1]), piece[None, 1:])))
    assert got["num_tokens"] == 999
    np.testing.assert_allclose(got["loss"], total / 999, rtol=1e-6)


def test_zero_logits_give_vocabulary_size(scored_model):
    graphdef, params, loss_fn, stream = scored_model
    zeros = jax.tree.map(jnp.zeros_like, params)  # tied embedding of zeros: every logit is 0
    scores = evaluation.score_windows(
        loss_fn, zeros, data.eval_windows(stream[:2000], 64), batch_size=8
    )
    np.testing.assert_allclose(scores["perplexity"], 258.0, rtol=1e-6)


def test_num_eval_tokens_counted_from_text(tiny_config):
    config = tiny_config("mla")
    documents = data.load_documents(config.data, "validation")
    expected = sum(len(doc.encode("utf-8")) for doc in documents) + len(documents)  # one EOS each
    stream = data.load_token_stream(config.data, "validation", data.ByteTokenizer())
    assert float(data.eval_windows(stream, config.seq_len)["weights"].sum()) == expected


def test_unigram_baseline_matches_counts():
    train_stream = np.array([256, 1, 1, 2, 257], np.int32)
    log_probs = evaluation.unigram_log_probs(train_stream, 258)
    # Targets 1, 1, 2, 257 plus one count for each of the 258 ids.
    np.testing.assert_allclose(np.exp(log_probs[1]), 3 / 262)
    np.testing.assert_allclose(np.exp(log_probs[0]), 1 / 262)
    ppl = evaluation.unigram_perplexity(log_probs, np.array([256, 1, 2], np.int32))
    np.testing.assert_allclose(ppl, math.exp(-(math.log(3 / 262) + math.log(2 / 262)) / 2))


def run_cli(script, workdir, *flags, kind="mha"):
    cmd = [
        sys.executable,
        str(REPO / script),
        f"--config={REPO / 'configs' / 'tiny.py'}:{kind}",
        f"--workdir={workdir}",
        *flags,
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_cli_train_resume_and_eval(tmp_path):
    first = run_cli("train.py", tmp_path, "--config.num_train_steps=10")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli("train.py", tmp_path, "--config.num_train_steps=15")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored checkpoint at step 10" in resumed.stderr
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [5, 10, 15]
    evaluated = run_cli("eval.py", tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["step"] == 15
    assert result["attention"] == "mha"
    assert result["kv_cache_bytes_per_token"] == 2 * 4 * 16 * 2 * 4
    for key in ("val_loss", "val_perplexity", "test_perplexity", "val_unigram_perplexity"):
        assert math.isfinite(result[key]), key
        assert result[key] > 0, key
    assert result["num_eval_tokens"] == 199678
    np.testing.assert_allclose(result["val_perplexity_cached"], result["val_perplexity"], rtol=1e-4)


def test_eval_without_checkpoint(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="train first"):
        evaluation.evaluate(tiny_config("mla"), str(tmp_path))


def test_workdir_that_is_a_file(tiny_config, tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="not_a_dir"):
        train(tiny_config("mla"), str(path))


def test_checkpoint_from_another_model(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.num_train_steps = 3
    train(config, str(tmp_path))
    with pytest.raises(ConfigError, match="model.attention: 'mla' -> 'mha'"):
        evaluation.evaluate(tiny_config("mha"), str(tmp_path))
    # Past the config check, the checkpoint's own record of its model rejects it too.
    with pytest.raises(CheckpointError, match="attention: checkpoint 'mla' vs config 'mha'"):
        evaluation.evaluate(tiny_config("mha"), str(tmp_path), allow_config_change=True)


@pytest.mark.parametrize(
    "field,value,error,needle",
    [
        ("source", "wiki", ValueError, "wiki"),
        ("train_files", "/nonexistent/*.txt", FileNotFoundError, "/nonexistent/*.txt"),
    ],
)
def test_data_errors_before_training(tiny_config, tmp_path, field, value, error, needle):
    config = tiny_config("mla")
    if field == "train_files":
        config.data.source = "text"
    config.data[field] = value
    with pytest.raises(error, match=needle.replace("*", r"\*").replace(".", r"\.")):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_object_store_workdir_rejected(tiny_config):
    with pytest.raises(ValueError, match="checkpoint_dir=gs://"):
        train(tiny_config("mla"), "gs://bucket/run")


def test_checkpoint_dir_override(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.num_train_steps, config.eval_every = 3, 0
    config.checkpoint_dir = str(tmp_path / "elsewhere")
    train(config, str(tmp_path / "run"))
    assert (tmp_path / "elsewhere" / "3").is_dir()
    assert not (tmp_path / "run" / "checkpoints").exists()
    model, step = load_model(config, str(tmp_path / "run"))
    assert step == 3
    assert model.cfg.attention == "mla"


@pytest.mark.parametrize("kind", KINDS)
def test_cached_perplexity_equals_teacher_forced(tiny_config, kind):
    cfg = model_config_from(tiny_config(kind).model, 258)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    stream = data.load_token_stream(tiny_config(kind).data, "validation", data.ByteTokenizer())
    windows = data.eval_windows(stream[:2000], 64)  # 32 windows, the last one padded
    forced = evaluation.score_windows(evaluation.make_loss_fn(graphdef), params, windows, 16)
    cached = evaluation.score_windows_cached(model, windows, 16)
    assert cached["num_tokens"] == forced["num_tokens"] == 1999
    np.testing.assert_allclose(cached["perplexity"], forced["perplexity"], rtol=1e-4)


def test_resume_with_changed_model_rejected(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.num_train_steps, config.eval_every = 3, 0
    train(config, str(tmp_path))
    changed = tiny_config("mla")
    changed.num_train_steps, changed.eval_every = 5, 0
    changed.model.kv_lora_rank = 16
    with pytest.raises(ConfigError, match=r"model.kv_lora_rank: 32 -> 16"):
        train(changed, str(tmp_path))
    with pytest.raises(ConfigError, match="allow_config_change"):
        evaluation.evaluate(changed, str(tmp_path))


def test_eval_on_other_data_rejected(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.num_train_steps, config.eval_every = 3, 0
    train(config, str(tmp_path))
    other = tiny_config("mla")
    other.data.source = "text"
    with pytest.raises(ConfigError, match=r"data.source: 'shakespeare' -> 'text'"):
        evaluation.evaluate(other, str(tmp_path))


def test_eval_workdir_that_is_a_file(tiny_config, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file is a file"):
        evaluation.evaluate(tiny_config("mla"), str(path))


def test_rejected_config_creates_no_workdir(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.seq_len = 4096
    with pytest.raises(ConfigError, match="seq_len=4096"):
        train(config, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
