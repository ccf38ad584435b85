"""Compiled per-device memory of the train step, per attention kind and device mesh.

  python scripts/bench_memory.py [--config=configs/shakespeare.py] [--config.FIELD=VALUE ...]
                                 [--kinds=mha,gqa,mqa,mla] [--meshes=8,1,1;1,8,1;2,2,2]

The train step is lowered on abstract inputs (shapes, dtypes and shardings, nothing allocated)
and compiled by XLA; `memory_analysis()` of the compiled step gives per-device byte counts:

- arguments: the train state shards and the batch shard the step reads;
- outputs: the new state shards and the metrics;
- aliased: output bytes that reuse donated argument buffers (the state is donated);
- temp: XLA's scratch space (activations kept for the backward pass, gradients, collectives);
- code: the generated program.

`peak` is arguments + outputs - aliased + temp, the usual estimate of the step's footprint.
`state` is computed from the shardings alone: the sum over train-state leaves (parameters,
both AdamW moments, step counters) of the bytes of one shard. It shows how FSDP divides
parameter and optimizer memory while data parallelism keeps a full copy on every device.

Without a device count in XLA_FLAGS the script requests 8 fake CPU devices, and without
JAX_PLATFORMS it runs on CPU, so it needs no accelerator. Figures are the CPU compiler's: a TPU
or GPU compiler schedules and fuses differently, so its temp sizes differ.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position
import importlib.util
import math
import pathlib
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mla_jax import data
from mla_jax.config import ATTENTION_KINDS, model_config_from, validate_experiment
from mla_jax.sharding import make_partitioner
from mla_jax.training.checkpoints import sharded_abstract_state
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import train_step_for

REPO = pathlib.Path(__file__).resolve().parent.parent
MIB = 1 << 20

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(REPO / "configs" / "shakespeare.py"),
    "Config file; each kind's model comes from its get_config(KIND), then the overrides.",
)
_KINDS = flags.DEFINE_list("kinds", list(ATTENTION_KINDS), "Attention kinds to compile.")
_MESHES = flags.DEFINE_string(
    "meshes", "8,1,1;1,8,1;2,2,2", "Meshes as data,fsdp,tensor sizes, separated by ';'."
)


def parse_meshes(text: str) -> list[tuple[int, int, int]]:
    meshes = []
    for item in text.split(";"):
        try:
            sizes = tuple(int(size) for size in item.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 3 or min(sizes) < 1:
            raise app.UsageError(
                f"--meshes item {item!r} must be three positive sizes: data,fsdp,tensor."
            )
        if math.prod(sizes) > jax.device_count():
            raise app.UsageError(
                f"Mesh {sizes} needs {math.prod(sizes)} devices; there are {jax.device_count()}."
            )
        meshes.append(sizes)
    return meshes


def load_kind_config(kind: str):
    """get_config(kind) of the --config file, with the command line's --config.* overrides."""
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    spec = importlib.util.spec_from_file_location("bench_memory_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "KINDS"):
        config = module.get_config(kind)
    else:
        config = module.get_config()
        config.model.attention = kind
    for dotted, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
        *parents, name = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def shard_bytes(shardings, abstract) -> int:
    """Bytes of one device's shards, summed over the leaves of a state tree."""
    total = 0
    for sharding, leaf in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract), strict=True):
        total += math.prod(sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def measure(config, mesh: tuple[int, int, int]) -> dict[str, float]:
    """Compile the train step of `config` on `mesh` and return its per-device memory figures."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    vocab = config.model.vocab_size or data.vocab_size(config.data)
    cfg = model_config_from(config.model, vocab)
    validate_experiment(config, cfg)
    partitioner = make_partitioner(config, jax.devices()[: math.prod(mesh)])
    step, shardings = train_step_for(config, cfg, partitioner)
    state = sharded_abstract_state(cfg, make_optimizer(config), partitioner)
    tokens = jax.ShapeDtypeStruct(
        (config.batch_size, config.seq_len), jnp.int32, sharding=partitioner.batch_sharding()
    )
    start = time.perf_counter()
    stats = step.lower(state, {"inputs": tokens, "targets": tokens}).compile().memory_analysis()
    return {
        "params": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
        "state": shard_bytes(shardings, state),
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
        "peak": stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes,
        "compile_s": time.perf_counter() - start,
    }


COLUMNS = ("state", "arguments", "outputs", "aliased", "temp", "code", "peak")


def table_rows(results) -> list[str]:
    header = ["kind", "mesh (d,f,t)", "params (M)", *[f"{c} (MiB)" for c in COLUMNS], "compile (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, mesh, r in results:
        cells = [kind, ",".join(map(str, mesh)), f"{r['params'] / 1e6:.2f}"]
        cells += [f"{r[c] / MIB:.2f}" for c in COLUMNS] + [f"{r['compile_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    meshes = parse_meshes(_MESHES.value)
    unknown = sorted(set(_KINDS.value) - set(ATTENTION_KINDS))
    if unknown:
        raise app.UsageError(f"Unknown --kinds {unknown}; choose among {ATTENTION_KINDS}.")
    results = []
    for kind in _KINDS.value:
        for mesh in meshes:
            results.append((kind, mesh, measure(load_kind_config(kind), mesh)))
    first = load_kind_config(_KINDS.value[0])
    print(
        f"JAX {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices; "
        f"batch {first.batch_size} x {first.seq_len} tokens, grad_accum_steps "
        f"{first.grad_accum_steps}, model dtype {first.model.dtype}.\n"
    )
    print("\n".join(table_rows(results)))


if __name__ == "__main__":
    app.run(main)
