"""Training on device meshes equals training on one device; specs, init and restore across meshes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mla_jax import data
from mla_jax.config import model_config_from
from mla_jax.sharding import ShardingError, make_partitioner
from mla_jax.training import checkpoints
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.state import create_train_state, train_step_for

KINDS = ("mha", "gqa", "mqa", "mla")
MESHES = ((8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4))
NUM_STEPS = 3

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (see conftest)")


def with_mesh(config, shape):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = shape
    return config


def partitioner_for(config, shape):
    devices = jax.devices()[: int(np.prod(shape))]
    return make_partitioner(with_mesh(config, shape), devices)


@pytest.fixture(scope="module")
def batches(tiny_config):
    config = tiny_config("mla")
    stream = data.load_token_stream(config.data, "train", data.ByteTokenizer())
    return data.TrainBatches(stream, config.seq_len, config.batch_size, config.seed)


def run_steps(config, shape, batches, num_steps=NUM_STEPS):
    """Train num_steps on the mesh `shape`; return (losses, final state, partitioner)."""
    partitioner = partitioner_for(config, shape)
    cfg = model_config_from(config.model, 258)
    state = create_train_state(cfg, make_optimizer(config), config.seed, partitioner)
    step_fn, _ = train_step_for(config, cfg, partitioner)
    losses = []
    for step in range(num_steps):
        batch = partitioner.place_batch(batches.batch_at(step), config.batch_size)
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), state, partitioner


@pytest.fixture(scope="module")
def single_device_runs(tiny_config, batches):
    return {kind: run_steps(tiny_config(kind), (1, 1, 1), batches) for kind in KINDS}


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
def test_mesh_losses_equal_single_device(tiny_config, batches, single_device_runs, kind, shape):
    losses, state, _ = run_steps(tiny_config(kind), shape, batches)
    reference, reference_state, _ = single_device_runs[kind]
    np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
    assert losses[-1] < losses[0]
    got = jax.tree.leaves(jax.device_get(state.params))
    want = jax.tree.leaves(jax.device_get(reference_state.params))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)


def spec_of(state, *path):
    node = state.params
    for key in path:
        node = node[key]
    return node.get_value().sharding.spec


@pytest.mark.parametrize(
    "kind,path,spec",
    [
        ("mha", ("embedding", "table"), P("tensor", "fsdp")),
        ("mha", ("blocks", 0, "attention", "w_q"), P("fsdp", "tensor", None)),
        ("mha", ("blocks", 0, "attention", "w_k"), P("fsdp", "tensor", None)),
        ("mha", ("blocks", 1, "attention", "w_o"), P("tensor", None, "fsdp")),
        ("mha", ("blocks", 0, "mlp", "w_down"), P("tensor", "fsdp")),
        ("mha", ("blocks", 0, "mlp_norm", "scale"), P("fsdp")),
        ("mqa", ("blocks", 0, "attention", "w_k"), P("fsdp", None, None)),  # 1 KV head: replicated
        ("mla", ("blocks", 0, "attention", "w_dkv"), P("fsdp", None)),
        ("mla", ("blocks", 0, "attention", "w_uk"), P("fsdp", "tensor", None)),
        ("mla", ("blocks", 0, "attention", "w_dq"), P("fsdp", None)),  # embed takes fsdp first
        ("mla", ("blocks", 0, "attention", "w_uq"), P("fsdp", "tensor", None)),
        ("mla", ("blocks", 0, "attention", "kv_norm", "scale"), P("fsdp")),
    ],
)
def test_param_specs_follow_rules(tiny_config, kind, path, spec):
    config = with_mesh(tiny_config(kind), (2, 2, 2))
    partitioner = make_partitioner(config)
    cfg = model_config_from(config.model, 258)
    state = create_train_state(cfg, make_optimizer(config), config.seed, partitioner)
    assert spec_of(state, *path) == spec


def test_gqa_kv_heads_replicated_when_tensor_exceeds_them(tiny_config):
    config = with_mesh(tiny_config("gqa"), (1, 2, 4))  # 2 KV heads, tensor axis of 4
    state = create_train_state(
        model_config_from(config.model, 258), make_optimizer(config), 0, make_partitioner(config)
    )
    assert spec_of(state, "blocks", 0, "attention", "w_k") == P("fsdp", None, None)
    assert spec_of(state, "blocks", 0, "attention", "w_q") == P("fsdp", "tensor", None)


def test_same_seed_same_init_on_any_mesh(tiny_config):
    config = tiny_config("mla")
    cfg, tx = model_config_from(config.model, 258), make_optimizer(config)
    reference = jax.device_get(
        create_train_state(cfg, tx, 7, partitioner_for(config, (1, 1, 1))).params
    )
    for shape in ((2, 2, 2), (1, 2, 4)):
        params = jax.device_get(
            create_train_state(cfg, tx, 7, partitioner_for(config, shape)).params
        )
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
            np.testing.assert_array_equal(a, b)


def test_grad_accumulation_matches_plain_step(tiny_config, batches, single_device_runs):
    config = tiny_config("mla")
    config.grad_accum_steps = 4
    losses, state, _ = run_steps(config, (2, 2, 2), batches)
    reference, reference_state, _ = single_device_runs["mla"]
    np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
    for a, b in zip(
        jax.tree.leaves(jax.device_get(state.params)),
        jax.tree.leaves(jax.device_get(reference_state.params)),
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("source,target", [((2, 2, 2), (1, 1, 1)), ((1, 1, 1), (8, 1, 1))])
def test_checkpoint_restores_on_another_mesh(tiny_config, batches, tmp_path, source, target):
    config = tiny_config("gqa")
    _, state, _ = run_steps(with_mesh(config, source), source, batches, num_steps=1)
    cfg, tx = model_config_from(config.model, 258), make_optimizer(config)
    manager = checkpoints.make_manager(str(tmp_path), config, for_training=True)
    checkpoints.save(manager, state, cfg)
    manager.wait_until_finished()
    partitioner = partitioner_for(config, target)
    restored = checkpoints.restore(
        manager, checkpoints.sharded_abstract_state(cfg, tx, partitioner), cfg
    )
    manager.close()
    assert int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(jax.device_get(a)), np.asarray(jax.device_get(b)))
    table = restored.params["embedding"]["table"].get_value()
    assert len(table.sharding.device_set) == int(np.prod(target))


def mesh_config(data, fsdp, tensor):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


@pytest.mark.parametrize(
    "shape,needle",
    [((2, 2, 3), "multiply to 12"), ((-1, -1, 1), "at most one -1"), ((3, -1, 1), "do not divide")],
)
def test_mesh_shape_errors(tiny_config, shape, needle):
    with pytest.raises(ShardingError, match=needle):
        make_partitioner(with_mesh(tiny_config("mla"), shape))


def test_heads_not_divisible_by_tensor(tiny_config):
    config = with_mesh(tiny_config("mla"), (1, 1, 8))  # 4 heads
    with pytest.raises(
        ShardingError, match="num_heads=4 is not divisible by the tensor axis size 8"
    ):
        make_partitioner(config)


def test_batch_not_divisible_by_batch_shards(tiny_config):
    config = with_mesh(tiny_config("mla"), (4, 2, 1))
    config.batch_size = 12
    with pytest.raises(ShardingError, match="batch_size=12 is not divisible by the 8 batch shards"):
        make_partitioner(config)


@pytest.mark.parametrize("kind", ["gqa", "mla"])
def test_cached_decoding_on_mesh_matches_one_device(tiny_config, batches, kind):
    from mla_jax.decoding import cached_token_losses
    from mla_jax.training.state import model_graphdef as graphdef_of
    from flax import nnx

    config = tiny_config(kind)
    cfg = model_config_from(config.model, 258)
    _, state, _ = run_steps(config, (2, 2, 2), batches, num_steps=1)
    sharded = nnx.merge(graphdef_of(cfg), state.params)
    single = nnx.merge(
        graphdef_of(cfg), jax.device_put(jax.device_get(state.params), jax.devices()[0])
    )
    assert len(state.params["embedding"]["table"].get_value().sharding.device_set) == 8
    batch = batches.batch_at(5)
    got = np.asarray(cached_token_losses(sharded, batch["inputs"][:4], batch["targets"][:4]))
    want = np.asarray(cached_token_losses(single, batch["inputs"][:4], batch["targets"][:4]))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "kind,spec",
    [
        ("gqa", P(("data", "fsdp"), "tensor", None, None)),  # 2 KV heads over tensor 2
        ("mqa", P(("data", "fsdp"), None, None, None)),  # 1 KV head: replicated
        ("mla", P(("data", "fsdp"), None, None)),  # latent [B, S, C]: by batch only
    ],
)
def test_kv_cache_sharded_by_batch_and_heads(tiny_config, kind, spec):
    from flax import nnx

    from mla_jax.decoding import forward_cached, init_cache
    from mla_jax.training.state import model_graphdef as graphdef_of

    config = with_mesh(tiny_config(kind), (2, 2, 2))
    partitioner = make_partitioner(config)
    cfg = model_config_from(config.model, 258)
    state = create_train_state(cfg, make_optimizer(config), 0, partitioner)
    model = nnx.merge(graphdef_of(cfg), state.params)

    @jax.jit
    def prefill(tokens):
        with partitioner.activation_rules():
            return forward_cached(model, tokens, init_cache(model, 8, 32))[1]

    cache = prefill(jnp.ones((8, 4), jnp.int32))
    for layer in cache.layers:
        for array in layer.values():
            expected = jax.sharding.NamedSharding(partitioner.mesh, spec)
            assert array.sharding.is_equivalent_to(expected, array.ndim), array.sharding
