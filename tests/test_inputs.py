"""Every rejected input of docs/inputs.md: its error type, and a message naming the value and the fix.

One test per row of the table, in its order: command line, config, mesh, data, workdir and
checkpoints. Guards that run after a checkpoint or an eval.json exists also check that those
files are untouched.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO
from mla_jax import cli, data, evaluation
from mla_jax.config import ConfigError, model_config_from, validate_experiment
from mla_jax.sharding import ShardingError, make_partitioner
from mla_jax.training.checkpoints import CheckpointError
from mla_jax.training.loop import train

TINY = str(REPO / "configs" / "tiny.py")
TEXT = "Now is the winter of our discontent made glorious summer by this sun of York.\n"


def message_of(info) -> str:
    return str(info.value)


# Command line.


def command_line_error(*args: str) -> str:
    """Parse `args` like train.py does, on fresh flags, and return the CommandLineError message."""
    argv = ["train.py", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Config file.", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "Workdir.", flag_values=flag_values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    with pytest.raises(cli.CommandLineError) as info:
        cli.parse_command_line(argv, flag_values)
    return message_of(info)


def run_entry_point(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_valid_command_line_parses():
    argv = [
        "train.py",
        f"--config={TINY}:gqa",
        "--workdir=/tmp/run",
        "--config.model.num_kv_heads=1",
    ]
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "Config file.", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "Workdir.", flag_values=flag_values)
    assert cli.parse_command_line(argv, flag_values) == ["train.py"]
    assert holder.value.model.num_kv_heads == 1


def test_unknown_override_field_cli(tmp_path):
    workdir = tmp_path / "run"
    result = run_entry_point(
        "train.py", f"--config={TINY}", f"--workdir={workdir}", "--config.model.num_kv_head=2"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("FATAL")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "FATAL Flags parsing error: Unknown config field --config.model.num_kv_head: "
        "did you mean --config.model.num_kv_heads"
    )
    assert not workdir.exists()


def test_unknown_override_group():
    message = command_line_error(f"--config={TINY}", "--workdir=w", "--config.model.router.top_k=2")
    assert "--config.model.router in --config.model.router.top_k" in message
    assert "valid fields of config.model:" in message
    assert "num_kv_heads" in message


def test_override_of_wrong_type():
    message = command_line_error(f"--config={TINY}", "--workdir=w", "--config.num_train_steps=1.5")
    assert "--config.num_train_steps=1.5" in message
    assert "takes a value of type int, such as the config file's 20" in message


def test_unknown_kind_suffix():
    message = command_line_error(f"--config={TINY}:linear", "--workdir=w")
    assert f"--config={TINY}:linear failed to load" in message
    assert "Unknown attention kind 'linear'" in message
    assert "use one of ('mha', 'gqa', 'mqa', 'mla')" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("override", [(), ("--config.seed=1",)])
def test_config_file_not_found(override):
    message = command_line_error("--config=configs/no_such.py", "--workdir=w", *override)
    assert "No such file or directory: 'configs/no_such.py'" in message
    assert "Pass --config=PATH[:KIND] with an existing config file" in message


def test_extra_positional_arguments_cli(tmp_path):
    result = run_entry_point("eval.py", f"--config={TINY}", f"--workdir={tmp_path}", "mla")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Unexpected positional arguments ['mla']" in result.stderr
    assert "write each option as --name=value" in result.stderr


def test_missing_required_flag():
    message = command_line_error(f"--config={TINY}")
    assert "--workdir" in message
    assert "must have a value other than None" in message


def test_unknown_flag():
    message = command_line_error(f"--config={TINY}", "--workdr=w")
    assert "'workdr'" in message
    assert "Did you mean: workdir" in message


# Config: model fields.


def model_error(tiny_config, kind="mla", **fields) -> str:
    config = tiny_config(kind)
    for name, value in fields.items():
        config.model[name] = value
    with pytest.raises(ConfigError) as info:
        model_config_from(config.model, 258)
    return message_of(info)


def test_unknown_attention_kind(tiny_config):
    message = model_error(tiny_config, attention="linear")
    assert "config.model.attention='linear'" in message
    assert "choose one of ('mha', 'gqa', 'mqa', 'mla')" in message


def test_heads_not_divisible_by_kv_heads(tiny_config):
    message = model_error(tiny_config, "gqa", num_kv_heads=3)
    assert "num_heads=4 is not divisible by num_kv_heads=3" in message
    assert "pick num_kv_heads among the divisors of num_heads" in message


def test_gqa_without_kv_heads(tiny_config):
    message = model_error(tiny_config, "gqa", num_kv_heads=None)
    assert "attention='gqa' needs config.model.num_kv_heads" in message
    assert "a divisor of num_heads" in message


@pytest.mark.parametrize("kind", ["mha", "mqa"])
def test_kv_heads_contradicting_kind(tiny_config, kind):
    message = model_error(tiny_config, kind, num_kv_heads=2)
    assert f"num_kv_heads=2 contradicts attention={kind!r}" in message
    assert "unset num_kv_heads or use attention='gqa'" in message


@pytest.mark.parametrize(
    "kind,field,value",
    [("mha", "num_layers", 0), ("mla", "kv_lora_rank", -8), ("mha", "head_dim", 0)],
)
def test_non_positive_model_size(tiny_config, kind, field, value):
    message = model_error(tiny_config, kind, **{field: value})
    assert f"config.model.{field}={value}" in message
    assert "must be a positive integer" in message


@pytest.mark.parametrize("kind,field", [("mla", "qk_rope_head_dim"), ("gqa", "head_dim")])
def test_odd_rope_dim(tiny_config, kind, field):
    message = model_error(tiny_config, kind, **{field: 7})
    assert f"config.model.{field}=7 must be even" in message
    assert "RoPE rotates pairs of dims" in message


@pytest.mark.parametrize(
    "field,value",
    [
        ("dtype", "float16"),
        ("cache_dtype", "int8"),
        ("mla_decode", "fast"),
        ("attention_impl", "flash"),
        ("remat", "some"),
    ],
)
def test_unsupported_choice(tiny_config, field, value):
    message = model_error(tiny_config, **{field: value})
    assert f"config.model.{field}={value!r} is not supported" in message
    assert "choose one of" in message


def test_vocab_smaller_than_tokenizer(tiny_config):
    message = model_error(tiny_config, vocab_size=100)
    assert "config.model.vocab_size=100 is smaller than the tokenizer's vocabulary (258)" in message
    assert "raise it or leave it unset" in message


# Config: run fields.


def experiment_error(tiny_config, **fields) -> str:
    config = tiny_config("mla")
    for name, value in fields.items():
        config[name] = value
    with pytest.raises(ConfigError) as info:
        validate_experiment(config, model_config_from(config.model, 258))
    return message_of(info)


def test_negative_learning_rate(tiny_config):
    message = experiment_error(tiny_config, learning_rate=-1e-3)
    assert "config.learning_rate=-0.001 must be positive" in message


def test_warmup_longer_than_run(tiny_config):
    message = experiment_error(tiny_config, warmup_steps=30)
    assert "config.warmup_steps=30 leaves no step for the decay (num_train_steps=20)" in message
    assert "make the warmup shorter than the run" in message


def test_seq_len_beyond_max_seq_len_train(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.seq_len = 256
    with pytest.raises(ConfigError) as info:
        train(config, str(tmp_path / "run"))
    message = message_of(info)
    assert "config.seq_len=256 exceeds config.model.max_seq_len=128" in message
    assert "lower seq_len or raise max_seq_len" in message
    assert not (tmp_path / "run").exists()


def test_seq_len_beyond_max_seq_len_eval(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.seq_len = 256
    with pytest.raises(ConfigError) as info:
        evaluation.evaluate(config, str(tmp_path))
    assert "config.seq_len=256 exceeds config.model.max_seq_len=128" in message_of(info)


@pytest.mark.parametrize("field", ["num_train_steps", "batch_size", "seq_len", "log_every"])
def test_non_positive_run_length(tiny_config, field):
    message = experiment_error(tiny_config, **{field: 0})
    assert f"config.{field}=0 must be a positive integer" in message


@pytest.mark.parametrize("field", ["eval_every", "checkpoint_every", "warmup_steps"])
def test_negative_interval(tiny_config, field):
    message = experiment_error(tiny_config, **{field: -1})
    assert f"config.{field}=-1 must be an integer >= 0 (0 disables it)" in message


def test_grad_accum_not_dividing_batch(tiny_config):
    message = experiment_error(tiny_config, grad_accum_steps=3)
    assert "config.grad_accum_steps=3 does not divide config.batch_size=8" in message
    assert "pick a divisor of batch_size" in message


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("min_lr_ratio", 1.5, "config.min_lr_ratio=1.5 must lie in [0, 1]"),
        ("adam_b2", 1.0, "config.adam_b2=1.0 must lie in [0, 1)"),
        ("adam_eps", 0.0, "config.adam_eps=0.0 must be positive"),
        ("weight_decay", -0.1, "config.weight_decay=-0.1 must be >= 0 (0 disables it)"),
        ("grad_clip_norm", -1.0, "config.grad_clip_norm=-1.0 must be >= 0 (0 disables it)"),
    ],
)
def test_optimizer_field_out_of_range(tiny_config, field, value, needle):
    assert needle in experiment_error(tiny_config, **{field: value})


def test_train_eval_max_windows_zero(tiny_config):
    message = experiment_error(tiny_config, train_eval_max_windows=0)
    assert "config.train_eval_max_windows=0 must be a positive integer" in message
    assert "or None to score every validation window" in message


def test_checkpoints_to_keep_zero(tiny_config):
    message = experiment_error(tiny_config, checkpoints_to_keep=0)
    assert "config.checkpoints_to_keep=0 must be a positive integer" in message


# Mesh, on the 8 fake CPU devices that conftest sets up.


def sharding_error(tiny_config, batch_size=8, num_heads=4, **mesh) -> str:
    config = tiny_config("mla")
    config.batch_size = batch_size
    config.model.num_heads = num_heads
    for axis, size in mesh.items():
        config.mesh[axis] = size
    with pytest.raises(ShardingError) as info:
        make_partitioner(config)
    return message_of(info)


def test_mesh_not_matching_devices(tiny_config):
    message = sharding_error(tiny_config, data=2, fsdp=2, tensor=1)
    assert "multiply to 4, but there are 8 devices" in message
    assert "make them multiply to 8 or use -1" in message


def test_mesh_fixed_axes_not_dividing_devices(tiny_config):
    message = sharding_error(tiny_config, data=-1, fsdp=3)
    assert "8 devices do not divide by the fixed axes' product 3" in message
    assert "choose fixed sizes whose product divides 8" in message


def test_mesh_two_fill_axes(tiny_config):
    message = sharding_error(tiny_config, data=-1, fsdp=-1)
    assert "'fsdp': -1" in message
    assert "sizes must be positive, with at most one -1" in message


def test_batch_not_divisible_by_data_parallel(tiny_config):
    message = sharding_error(tiny_config, batch_size=12)
    assert "config.batch_size=12 is not divisible by the 8 batch shards" in message
    assert "use a multiple of 8" in message


def test_heads_not_divisible_by_tensor_axis(tiny_config):
    message = sharding_error(tiny_config, num_heads=6, data=1, tensor=8)
    assert "config.model.num_heads=6 is not divisible by the tensor axis size 8" in message
    assert "choose config.mesh.tensor among the divisors of num_heads" in message


# Data.


def text_data(tmp_path, **files):
    """config.data for source=text with one file per split, written from `files` (bytes)."""
    config_data = {"source": "text", "cache_dir": str(tmp_path / "cache")}
    for split, content in files.items():
        path = tmp_path / f"{split}.txt"
        path.write_bytes(content)
        config_data[f"{split}_files"] = str(path)
    return config_data


def data_error(tiny_config, error, split="train", **fields) -> str:
    config = tiny_config("mla")
    config.data.update(fields)
    with pytest.raises(error) as info:
        data.load_documents(config.data, split)
    return message_of(info)


@pytest.mark.parametrize("pattern", ["nowhere/*.txt", "nowhere/train.txt"])
def test_data_files_matching_nothing(tiny_config, tmp_path, pattern):
    pattern = str(tmp_path / pattern)
    message = data_error(tiny_config, FileNotFoundError, source="text", train_files=pattern)
    assert f"The glob {pattern!r} in data.train_files={pattern!r} matches no file" in message
    assert "fix the pattern or create the files" in message


def test_data_files_unset(tiny_config):
    message = data_error(tiny_config, ValueError, split="test", source="text")
    assert "data.test_files is not set" in message
    assert "set it to a glob of text files" in message


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"], ids=["empty", "whitespace"])
def test_empty_data_file(tiny_config, tmp_path, content):
    fields = text_data(tmp_path, train=content)
    message = data_error(tiny_config, ValueError, **fields)
    assert f"data.train_files={fields['train_files']!r} gives 1 documents" in message
    assert "Set data.train_files to files or rows with text" in message


def test_non_utf8_data_file(tiny_config, tmp_path):
    fields = text_data(tmp_path, train=b"caf\xe9 au lait")
    message = data_error(tiny_config, ValueError, **fields)
    assert f"File {fields['train_files']!r} is not valid UTF-8 text" in message
    assert "invalid byte at offset 3" in message
    assert "Convert it to UTF-8 or remove it from the glob" in message


def test_unknown_data_source(tiny_config):
    message = data_error(tiny_config, ValueError, source="tfds")
    assert "Unknown data.source='tfds'" in message
    assert "expected one of ['shakespeare', 'text', 'hub']" in message


def test_hub_text_field_missing(tiny_config, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"content": "a line of text"}\n')
    message = data_error(
        tiny_config,
        ValueError,
        source="hub",
        hub_name="json",
        hub_data_files=str(rows),
        train_split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert "data.text_field='text' is not a column" in message
    assert "set it to one of ['content']" in message


def test_too_little_data_for_one_batch():
    with pytest.raises(ValueError) as info:
        data.TrainBatches(list(range(100)), seq_len=64, batch_size=8, seed=0)
    message = message_of(info)
    assert "1 windows of seq_len=64, fewer than batch_size=8" in message
    assert "use more data, a shorter seq_len or a smaller batch_size" in message


@pytest.mark.parametrize(
    "content,needle",
    [
        (b'{"version": "1.0", "model": ', "is not valid UTF-8 JSON"),
        (b'{"version": "1.0"}', "is not a valid Hugging Face tokenizer.json"),
    ],
    ids=["truncated", "not-a-tokenizer"],
)
def test_corrupted_tokenizer_file(tiny_config, tmp_path, content, needle):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    config = tiny_config("mla")
    config.data.tokenizer = str(path)
    with pytest.raises(ValueError) as info:
        data.make_tokenizer(config.data)
    message = message_of(info)
    assert f"Tokenizer file {str(path)!r} (data.tokenizer) {needle}" in message
    assert "Point data.tokenizer at an intact tokenizer.json" in message


def test_tokenizer_file_not_found(tiny_config, tmp_path):
    config = tiny_config("mla")
    config.data.tokenizer = str(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError) as info:
        data.make_tokenizer(config.data)
    message = message_of(info)
    assert f"Tokenizer file {config.data.tokenizer!r} (data.tokenizer) not found" in message
    assert "set data.tokenizer to 'byte' or to the path" in message


# Workdir and checkpoints.


def tree_digest(directory) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def trained_config(tiny_config, data_dir, kind="mla"):
    """A 2-step run on small text files, whose validation file is empty."""
    config = tiny_config(kind)
    config.num_train_steps, config.warmup_steps, config.log_every = 2, 1, 1
    config.eval_every, config.checkpoint_every = 0, 0
    config.data.update(
        source="text",
        cache_dir=str(data_dir / "cache"),
        train_files=str(data_dir / "train.txt"),
        validation_files=str(data_dir / "validation.txt"),
        test_files=str(data_dir / "test.txt"),
    )
    return config


@pytest.fixture(scope="module")
def trained_workdir(tiny_config, tmp_path_factory):
    """Data folder and workdir of a finished 2-step MLA run; copy the workdir before changing it."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "train.txt").write_text(TEXT * 20)
    (data_dir / "validation.txt").write_text("")
    (data_dir / "test.txt").write_text(TEXT)
    workdir = tmp_path_factory.mktemp("trained")
    train(trained_config(tiny_config, data_dir), str(workdir))
    (workdir / "eval.json").write_text('{"val_perplexity": 5.0}\n')
    return data_dir, workdir


@pytest.fixture
def run_copy(trained_workdir, tmp_path):
    """(data folder, a copy of the trained workdir, the digests of its files)."""
    data_dir, workdir = trained_workdir
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return data_dir, copy, tree_digest(copy)


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_workdir_is_a_file(tiny_config, tmp_path, entry):
    path = tmp_path / "results.txt"
    path.write_text("earlier results\n")
    run = train if entry == "train" else evaluation.evaluate
    with pytest.raises(NotADirectoryError) as info:
        run(tiny_config("mla"), str(path))
    message = message_of(info)
    assert f"--workdir={path} is a file" in message
    assert "pass a directory path" in message
    assert path.read_text() == "earlier results\n"


def test_workdir_in_object_store(tiny_config):
    with pytest.raises(ValueError) as info:
        train(tiny_config("mla"), "gs://bucket/run")
    message = message_of(info)
    assert "--workdir=gs://bucket/run must be a local directory" in message
    assert "--config.checkpoint_dir=gs://BUCKET/PATH" in message


def test_eval_before_training(tiny_config, tmp_path):
    with pytest.raises(CheckpointError) as info:
        evaluation.evaluate(tiny_config("mla"), str(tmp_path))
    message = message_of(info)
    assert f"No checkpoint directory {tmp_path / 'checkpoints'}" in message
    assert f"train first with train.py --workdir={tmp_path}" in message


def test_eval_checkpoint_of_other_kind(tiny_config, run_copy):
    data_dir, run, before = run_copy
    config = trained_config(tiny_config, data_dir, "mha")
    with pytest.raises(ConfigError) as info:
        evaluation.evaluate(config, str(run))
    assert "model.attention: 'mla' -> 'mha'" in message_of(info)
    assert "pass --allow_config_change to go on" in message_of(info)
    with pytest.raises(CheckpointError) as info:
        evaluation.evaluate(config, str(run), allow_config_change=True)
    assert "attention: checkpoint 'mla' vs config 'mha'" in message_of(info)
    assert "Use the config it was trained with, or another --workdir" in message_of(info)
    assert tree_digest(run) == before


def test_resume_checkpoint_of_other_kind(tiny_config, run_copy):
    data_dir, run, before = run_copy
    config = trained_config(tiny_config, data_dir, "gqa")
    config.num_train_steps = 4
    with pytest.raises(ConfigError) as info:
        train(config, str(run))
    assert "model.attention: 'mla' -> 'gqa'" in message_of(info)
    with pytest.raises(CheckpointError) as info:
        train(config, str(run), allow_config_change=True)
    assert "attention: checkpoint 'mla' vs config 'gqa'" in message_of(info)
    assert "Use the config it was trained with, or another --workdir" in message_of(info)
    assert tree_digest(run) == before


def test_resume_with_changed_model(tiny_config, run_copy):
    data_dir, run, before = run_copy
    config = trained_config(tiny_config, data_dir)
    config.num_train_steps = 4
    config.model.kv_lora_rank = 16
    with pytest.raises(ConfigError) as info:
        train(config, str(run))
    message = message_of(info)
    assert "model.kv_lora_rank: 32 -> 16" in message
    assert "Use the recorded values, another --workdir, or pass --allow_config_change" in message
    assert tree_digest(run) == before


def test_eval_on_other_data(tiny_config, run_copy):
    data_dir, run, before = run_copy
    config = trained_config(tiny_config, data_dir)
    config.data.test_files = str(data_dir / "train.txt")
    with pytest.raises(ConfigError) as info:
        evaluation.evaluate(config, str(run))
    assert f"data.test_files: {str(data_dir / 'test.txt')!r} -> " in message_of(info)
    assert tree_digest(run) == before


def test_eval_on_empty_split(tiny_config, run_copy):
    data_dir, run, before = run_copy
    with pytest.raises(ValueError) as info:
        evaluation.evaluate(trained_config(tiny_config, data_dir), str(run))
    message = message_of(info)
    assert "Split validation of source text is empty" in message
    assert f"data.validation_files={str(data_dir / 'validation.txt')!r}" in message
    assert "Set data.validation_files to files or rows with text" in message
    assert tree_digest(run) == before
