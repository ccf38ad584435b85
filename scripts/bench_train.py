"""Measure training speed per attention kind: step time, tokens/s and MFU against the machine.

  python scripts/bench_train.py [--kinds=mha,gqa,mqa,mla --dtype=float32,bfloat16 --steps=5
      --batch_size=4 --remat=none --attention_impl=auto --append_docs --profile_dir=DIR]

For each kind and compute dtype the script builds the config's model (configs/bench_train.py:
about 25M parameters, 4 windows of 1024 tokens). It compiles the jitted train step of
`mla_jax.training.state` on random tokens and times `--steps` further steps one by one,
waiting for each, and the median counts. It also times teacher-forced evaluation (the jitted loss
function of `mla_jax.evaluation`) on batches of the same shape.

MFU is model FLOPs per step (`mla_jax.training.flops`) over step time, against the ceilings
measured in the same run (`mla_jax.machine`): a jitted 4096 x 4096 matmul in float32, and in
bfloat16 with float32 accumulation, each before and after the kinds, the best counting. A step
in float32 is compared with the float32 ceiling, one in bfloat16 with the bfloat16 ceiling. On
GPU and TPU the vendor's bfloat16 peak for the device kind is printed as well.

XLA options are taken from the XLA_FLAGS environment variable, as always, and are printed with
the results.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from mla_jax import data, evaluation
from mla_jax.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, model_config_from
from mla_jax.machine import IdleWaiter, cpu_description, measure_matmul, vendor_peak_flops
from mla_jax.model import Transformer, count_params
from mla_jax.sharding import make_partitioner
from mla_jax.training.flops import forward_flops, train_step_flops
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import create_train_state, model_graphdef, train_step_for

_CONFIG = flags.DEFINE_string(
    "config", "configs/bench_train.py", "Config file whose get_config(KIND) gives each model."
)
_KINDS = flags.DEFINE_list("kinds", ["mha", "gqa", "mqa", "mla"], "Attention kinds to measure.")
_DTYPES = flags.DEFINE_list("dtype", ["float32"], "Compute dtypes, comma-separated.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps after the compiling one.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Windows per step; default: the config's.")
_REMAT = flags.DEFINE_enum("remat", None, REMAT_POLICIES, "config.model.remat; default: config's.")
_ATTENTION_IMPL = flags.DEFINE_enum(
    "attention_impl", None, ATTENTION_IMPLS, "config.model.attention_impl; default: config's."
)
_EVAL_BATCHES = flags.DEFINE_integer(
    "eval_batches", 3, "Timed teacher-forced eval batches per kind after the compiling one; 0 skips."
)
_APPEND_DOCS = flags.DEFINE_bool(
    "append_docs", False, "Append the results as a section of docs/benchmarks.md."
)
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Write a jax.profiler trace of 2 train steps per kind and dtype here."
)
_IDLE_WAIT_SECONDS = flags.DEFINE_float(
    "idle_wait_seconds",
    60.0,
    "Time the whole run may spend waiting, before each measurement, for the CPUs to be at "
    "least 80% idle (read from /proc/stat on Linux); 0 disables the waits.",
)

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "benchmarks.md")


def experiment(kind: str, dtype: str):
    """Return the experiment config of one kind and dtype, with the command-line overrides."""
    spec = importlib.util.spec_from_file_location("bench_train_config", _CONFIG.value)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(kind)
    config.model.dtype = dtype
    if _BATCH_SIZE.value is not None:
        config.batch_size = config.eval_batch_size = _BATCH_SIZE.value
    if _REMAT.value is not None:
        config.model.remat = _REMAT.value
    if _ATTENTION_IMPL.value is not None:
        config.model.attention_impl = _ATTENTION_IMPL.value
    return config


def random_batch(config, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(
        0, vocab_size, (config.batch_size, config.seq_len + 1), dtype=np.int32
    )
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def time_calls(fn, count: int) -> list[float]:
    """Seconds of `count` calls of fn(), each waited for."""
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_kind(kind: str, dtype: str, waiter: IdleWaiter) -> dict:
    """Compile and time the train step and the eval loss of one kind and dtype."""
    config = experiment(kind, dtype)
    vocab_size = data.vocab_size(config.data)
    model_cfg = model_config_from(config.model, vocab_size)
    partitioner = make_partitioner(config)
    train_step, _ = train_step_for(config, model_cfg, partitioner)
    state = create_train_state(model_cfg, make_optimizer(config), config.seed, partitioner)
    batch = partitioner.place_batch(random_batch(config, vocab_size), config.batch_size)
    result = {"kind": kind, "dtype": dtype, "config": config, "model_cfg": model_cfg}

    def step():
        nonlocal state
        state, metrics = train_step(state, batch)
        return metrics["loss"]

    waiter.wait()
    result["first_step_s"] = time_calls(step, 1)[0]  # Compilation included.
    waiter.wait()
    result["step_s"] = statistics.median(time_calls(step, _STEPS.value))
    result["compilations"] = train_step._cache_size()
    result["loss"] = float(step())
    if _PROFILE_DIR.value:
        with jax.profiler.trace(
            os.path.join(_PROFILE_DIR.value, f"{kind}_{dtype}"), create_perfetto_trace=True
        ):
            time_calls(step, 2)
    if _EVAL_BATCHES.value:
        loss_fn = evaluation.make_loss_fn(model_graphdef(model_cfg))

        def score():
            return loss_fn(state.params, batch["inputs"], batch["targets"])

        time_calls(score, 1)
        waiter.wait()
        result["eval_s"] = statistics.median(time_calls(score, _EVAL_BATCHES.value))
    return result


def measure_ceilings(ceilings: dict[str, list[float]], waiter: IdleWaiter) -> None:
    for dtype in DTYPES:
        waiter.wait()
        ceilings[dtype].append(measure_matmul(dtype))


def add_figures(result: dict, ceilings: dict[str, float]) -> dict:
    config, cfg = result["config"], result["model_cfg"]
    batch, seq_len = config.batch_size, config.seq_len
    tokens = batch * seq_len
    flops = train_step_flops(cfg, batch, seq_len)
    result.update(
        params=count_params(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))),
        step_gflop=flops / 1e9,
        tokens_per_s=tokens / result["step_s"],
        achieved=flops / result["step_s"],
        mfu=flops / result["step_s"] / ceilings[result["dtype"]],
    )
    if "eval_s" in result:
        result["eval_tokens_per_s"] = tokens / result["eval_s"]
        result["eval_mfu"] = forward_flops(cfg, batch, seq_len) / result["eval_s"] / ceilings[
            result["dtype"]
        ]
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| kind | dtype | params (M) | GFLOP/step | step (s) | tokens/s | GFLOP/s | MFU "
        "| eval tokens/s | eval MFU | compile + 1st step (s) | compilations |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        eval_cells = (
            f"{r['eval_tokens_per_s']:.0f} | {r['eval_mfu']:.0%}" if "eval_s" in r else "- | -"
        )
        lines.append(
            f"| {r['kind']} | {r['dtype']} | {r['params'] / 1e6:.1f} | {r['step_gflop']:.0f} "
            f"| {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {r['achieved'] / 1e9:.0f} "
            f"| {r['mfu']:.0%} | {eval_cells} | {r['first_step_s']:.1f} | {r['compilations']} |"
        )
    return "\n".join(lines)


def machine_lines(ceilings: dict[str, list[float]], waiter: IdleWaiter) -> list[str]:
    device = jax.devices()[0]
    lines = [
        f"Machine: {cpu_description()}; JAX {jax.__version__} on {jax.default_backend()} "
        f"({device.device_kind}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}.",
    ]
    for dtype, values in ceilings.items():
        name = "float32" if dtype == "float32" else f"{dtype} with float32 accumulation"
        lines.append(
            f"Ceiling, 4096 x 4096 matmul in {name}: {max(values) / 1e9:.0f} GFLOP/s "
            f"(best of {len(values)}; range {min(values) / 1e9:.0f} to {max(values) / 1e9:.0f})."
        )
    peak = vendor_peak_flops(device.device_kind)
    if peak is not None:
        lines.append(f"Vendor bfloat16 peak of {device.device_kind}: {peak / 1e12:.0f} TFLOP/s.")
    lines.append(
        f"{waiter.idle_starts} of {waiter.measurements} measurements started with the CPUs at "
        "least 80% idle."
    )
    return lines


def settings_line(results: list[dict]) -> str:
    config = results[0]["config"]
    return (
        f"Config {_CONFIG.value}, batch {config.batch_size} x {config.seq_len} tokens, "
        f"remat={config.model.remat}, attention_impl={config.model.attention_impl}; "
        f"median of {_STEPS.value} steps after the compiling one, eval median of "
        f"{_EVAL_BATCHES.value} batches."
    )


def append_docs(text: str, seconds: float) -> None:
    command = "python " + " ".join(sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n### Run of {date}\n\n```bash\n{command}\n```\n\n{text}\n\n"
        f"The run took {seconds:.0f} s.\n"
    )
    with open(DOCS, "a") as docs:
        docs.write(section)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_DTYPES.value) - set(DTYPES))
    if unknown:
        raise app.UsageError(f"Unknown dtypes {unknown}; choose among {list(DTYPES)}.")
    if _STEPS.value < 1:
        raise app.UsageError(f"--steps={_STEPS.value} must be at least 1.")
    start = time.perf_counter()
    waiter = IdleWaiter(_IDLE_WAIT_SECONDS.value)
    ceilings = {dtype: [] for dtype in DTYPES}
    measure_ceilings(ceilings, waiter)
    results = [measure_kind(kind, dtype, waiter) for dtype in _DTYPES.value for kind in _KINDS.value]
    measure_ceilings(ceilings, waiter)
    best = {dtype: max(values) for dtype, values in ceilings.items()}
    results = [add_figures(r, best) for r in results]
    text = "\n".join(machine_lines(ceilings, waiter) + [settings_line(results), "", table(results)])
    print(text)
    if _APPEND_DOCS.value:
        append_docs(text, time.perf_counter() - start)


if __name__ == "__main__":
    app.run(main)
