"""Device meshes, logical-axis rules and the shardings they give parameters, batches and caches.

The mesh has three named axes: `data` (batch only), `fsdp` (batch, and parameters split along
their `embed` dim) and `tensor` (heads, MLP width and vocabulary). A rules table in the config
maps each logical axis name that the model uses to mesh axes, so the model never names one.

A dimension whose size is not divisible by its mesh axes is replicated instead, with one log
line: this is how MQA and small GQA keep their few KV heads whole on every tensor shard. MLA's
latent dims (`kv_latent`, `q_latent`) are never split over tensor: the KV latent is shared by all
heads and normalized over its full width, so splitting it would add an all-gather in every
layer. They go to fsdp, like `embed`, so that under FSDP the latent up-projections, which have
no `embed` dim, are stored in shards too (FSDP gathers every weight before its matmul).

Activations are constrained through `constrain(x, names)`, which is a no-op outside
`use_mesh_rules(...)`, so the same model code runs unsharded.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
_ACTIVE = contextvars.ContextVar("mla_jax_mesh_rules", default=None)
_LOGGED = set()


class ShardingError(ValueError):
    """A mesh that does not fit the devices, the batch or the model."""


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """Resolve the axis sizes of config.mesh; one -1 takes the devices left over."""
    sizes = [mesh_config[name] for name in MESH_AXES]
    fills = [i for i, size in enumerate(sizes) if size == -1]
    if len(fills) > 1 or any(size == 0 or size < -1 for size in sizes):
        raise ShardingError(
            f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be positive, with at most one -1."
        )
    fixed = math.prod(size for size in sizes if size != -1)
    if fills:
        if num_devices % fixed:
            raise ShardingError(
                f"config.mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices do not divide by "
                f"the fixed axes' product {fixed}; choose fixed sizes whose product divides "
                f"{num_devices}."
            )
        sizes[fills[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ShardingError(
            f"config.mesh axis sizes {dict(zip(MESH_AXES, sizes))} multiply to {math.prod(sizes)}, "
            f"but there are {num_devices} devices; make them multiply to {num_devices} or use -1."
        )
    return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """Build a mesh over all devices (or `devices`) with Auto axis types.

    jax 0.10's `make_mesh` defaults to Explicit axes, under which sharding constraints and
    NNX's Linear fail, so every axis is set to Auto.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _rules_dict(rules) -> dict[str, tuple[str, ...]]:
    table = {}
    for name, axes in rules:
        if axes is None:
            table[name] = ()
        else:
            table[name] = (axes,) if isinstance(axes, str) else tuple(axes)
    return table


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh
) -> PartitionSpec:
    """Return the PartitionSpec of an array of `shape` whose dims have logical `names`.

    A dim keeps its mesh axes only if its size divides by their product and no earlier dim
    already uses one of them. Otherwise it is replicated.
    """
    table, used, spec = _rules_dict(rules), set(), []
    for name, size in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if mesh.shape[a] > 1 and a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes):
            _log_once(
                f"Replicating logical axis {name!r} of size {size}: not divisible by mesh axes "
                f"{axes} of size {math.prod(mesh.shape[a] for a in axes)}."
            )
            axes = ()
        used.update(axes)
        spec.append(_spec_entry(axes))
    return PartitionSpec(*spec)


def _spec_entry(axes: tuple[str, ...]):
    """One PartitionSpec entry: None for no axis, the name for one, the tuple for several."""
    if not axes:
        return None
    if len(axes) == 1:
        return axes[0]
    return axes


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.info(message)


def state_shardings(abstract_tree, rules, mesh: Mesh):
    """NamedShardings for every leaf of a tree of nnx Variables and arrays.

    Variables with `logical_axes` metadata (parameters and the optimizer moments that mirror
    them) follow the rules; every other leaf (step counters) is replicated.
    """

    def leaf_sharding(leaf):
        if not isinstance(leaf, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        names = leaf.get_metadata().get("logical_axes")
        shape = leaf.get_value().shape
        spec = PartitionSpec() if names is None else logical_to_spec(names, shape, rules, mesh)
        return leaf.replace(NamedSharding(mesh, spec))

    return jax.tree.map(leaf_sharding, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(rules, mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch [B, T, ...]: B over the `batch` rule's axes, the rest replicated."""
    batch_axes = tuple(a for a in _rules_dict(rules).get("batch", ()) if mesh.shape[a] > 1)
    return NamedSharding(mesh, PartitionSpec(_spec_entry(batch_axes), *([None] * (ndim - 1))))


@contextlib.contextmanager
def use_mesh_rules(mesh: Mesh, rules):
    """Within this context, `constrain` applies the rules on `mesh` to activations."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain activation x to the sharding of its logical dim names; no-op without rules."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(names, x.shape, rules, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """A mesh with its rules: shardings for state trees and batches, and batch placement."""

    mesh: Mesh
    rules: tuple

    @property
    def batch_shards(self) -> int:
        """Number of batch shards: the product of the mesh axes the `batch` rule uses."""
        return math.prod(self.mesh.shape[a] for a in _rules_dict(self.rules).get("batch", ()))

    def shardings(self, abstract_tree):
        return state_shardings(abstract_tree, self.rules, self.mesh)

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        return batch_sharding(self.rules, self.mesh, ndim)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def activation_rules(self):
        return use_mesh_rules(self.mesh, self.rules)

    def process_rows(self, global_batch: int) -> slice:
        """Return the slice of a global batch's rows that this process loads."""
        if global_batch % jax.process_count():
            raise ShardingError(
                f"Batch size {global_batch} does not divide among {jax.process_count()} processes."
            )
        per_process = global_batch // jax.process_count()
        return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)

    def place_batch(
        self, local_batch: dict[str, np.ndarray], global_batch: int
    ) -> dict[str, jax.Array]:
        """Assemble each process's rows [B / processes, ...] into global arrays [B, ...]."""

        def place(array):
            sharding = self.batch_sharding(array.ndim)
            return jax.make_array_from_process_local_data(
                sharding, array, (global_batch,) + array.shape[1:]
            )

        return {name: place(array) for name, array in local_batch.items()}


def make_partitioner(config: ml_collections.ConfigDict, devices=None) -> Partitioner:
    """Build the mesh of `config.mesh` and check the batch and the model against it."""
    mesh = make_mesh(config.mesh, devices)
    partitioner = Partitioner(mesh, tuple(tuple(rule) for rule in config.sharding_rules))
    shards = partitioner.batch_shards
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % shards:
            raise ShardingError(
                f"config.{field}={config[field]} is not divisible by the {shards} batch shards of "
                f"mesh {dict(mesh.shape)}; use a multiple of {shards}."
            )
    tensor = mesh.shape["tensor"]
    if config.model.num_heads % tensor:
        raise ShardingError(
            f"config.model.num_heads={config.model.num_heads} is not divisible by the tensor axis "
            f"size {tensor}; choose config.mesh.tensor among the divisors of num_heads."
        )
    logging.info("Mesh %s over %d devices.", dict(mesh.shape), mesh.size)
    return partitioner


def initialize_distributed(distributed: ml_collections.ConfigDict) -> None:
    """Join a multi-process run when `distributed.initialize` is set; call before using devices.

    On Cloud TPU, JAX finds the coordinator, process count and id itself. Elsewhere pass
    coordinator_address, num_processes and process_id. CPU processes use gloo collectives.
    """
    if not distributed.initialize:
        return
    # Only CPU collectives read this flag; setting it before initialize is harmless elsewhere.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=distributed.coordinator_address,
        num_processes=distributed.num_processes,
        process_id=distributed.process_id,
    )
    logging.info(
        "Process %d of %d; %d local and %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
