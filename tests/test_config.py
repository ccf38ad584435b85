"""Config files, parameter counts against a hand formula, KV-cache figures, config errors."""

import jax
import pytest
from flax import nnx

from conftest import CONFIG_FILES, REPO, load_config_module
from mla_jax import config as C
from mla_jax.ablation import member_config
from mla_jax.config import ConfigError, model_config_from
from mla_jax.model import Transformer, count_params

KINDS = ("mha", "gqa", "mqa", "mla")


def expected_params(cfg) -> int:
    """Parameter count from the architecture, written out by hand."""
    d, v, f = cfg.d_model, cfg.padded_vocab_size, cfg.mlp_dim
    if cfg.attention == "mla":
        n, c, dn, dr, dv = (
            cfg.num_heads,
            cfg.kv_lora_rank,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
        )
        if cfg.q_lora_rank is None:
            query = d * n * (dn + dr)
        else:
            query = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * n * (dn + dr)
        attention = query + d * (c + dr) + c + c * n * dn + c * n * dv + n * dv * d
    else:
        n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        attention = d * n * h + 2 * d * k * h + n * h * d
    per_layer = attention + 3 * d * f + 2 * d
    head = 0 if cfg.tie_embeddings else d * v
    return v * d + cfg.num_layers * per_layer + d + head


def config_cases():
    """One case per attention kind of a top-level config, one per member of a sweep config."""
    for path in CONFIG_FILES:
        module = load_config_module(path)
        if path.parent.name == "ablation":
            for member in module.get_config().members:
                yield pytest.param(path, member, id=f"ablation/{path.stem}:{member}")
            continue
        for kind in getattr(module, "KINDS", (None,)):
            yield pytest.param(path, kind, id=f"{path.stem}:{kind}")


def experiment_config(path, name):
    """The experiment config of a case: a kind of a config file, or a member of a sweep."""
    module = load_config_module(path)
    if path.parent.name == "ablation":
        sweep = module.get_config()
        return member_config(sweep, name, sweep.seeds[0])
    return module.get_config(name) if name else module.get_config()


def build_abstractly(config):
    # Byte tokenizer: the vocabulary size is known without loading anything. Configs with
    # another tokenizer set config.model.vocab_size explicitly.
    cfg = model_config_from(config.model, 258)
    C.validate_experiment(config, cfg)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))
    assert count_params(model) == expected_params(cfg)
    return cfg


@pytest.mark.parametrize("path,name", list(config_cases()))
def test_config_file_builds_model_abstractly(path, name):
    cfg = build_abstractly(experiment_config(path, name))
    if path.parent.name == "ablation":
        # Sweep members are parameter-matched to the reference (MHA) member within 2%.
        sweep = load_config_module(path).get_config()
        assert len(sweep.seeds) >= 3
        reference = expected_params(
            model_config_from(experiment_config(path, sweep.reference).model, 258)
        )
        assert abs(expected_params(cfg) - reference) <= 0.02 * reference, (
            name,
            expected_params(cfg),
            reference,
        )


@pytest.mark.parametrize("tie,q_lora", [(False, None), (True, 48)])
def test_param_count_untied_and_query_variants(tiny_config, tie, q_lora):
    config = tiny_config("mla")
    config.model.tie_embeddings = tie
    config.model.q_lora_rank = q_lora
    cfg = model_config_from(config.model, 258)
    assert count_params(
        nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    ) == expected_params(cfg)


@pytest.mark.parametrize(
    "kind,elements",
    [("mha", 2 * 4 * 16), ("gqa", 2 * 2 * 16), ("mqa", 2 * 1 * 16), ("mla", 32 + 8)],
)
def test_kv_cache_figures(tiny_config, kind, elements):
    cfg = model_config_from(tiny_config(kind).model, 258)
    assert C.kv_cache_elements_per_token_per_layer(cfg) == elements
    assert C.kv_cache_bytes_per_token(cfg) == elements * cfg.num_layers * 4
    assert C.kv_cache_bytes_per_token(cfg, "bfloat16") == elements * cfg.num_layers * 2


def test_deepseek_v2_cache_is_576_per_layer():
    config = C.base_config()
    m = config.model
    m.attention, m.num_layers, m.num_heads, m.kv_lora_rank, m.qk_rope_head_dim = (
        "mla",
        60,
        128,
        512,
        64,
    )
    m.qk_nope_head_dim, m.v_head_dim, m.q_lora_rank, m.d_model = 128, 128, 1536, 5120
    assert C.kv_cache_elements_per_token_per_layer(model_config_from(m, 102400)) == 576
    m.attention, m.head_dim = "mha", 128
    assert C.kv_cache_elements_per_token_per_layer(model_config_from(m, 102400)) == 32768


def model_error(tiny_config, kind="mla", **overrides):
    config = tiny_config(kind)
    for name, value in overrides.items():
        config.model[name] = value
    with pytest.raises(ConfigError) as info:
        model_config_from(config.model, 258)
    return str(info.value)


def test_heads_not_divisible_by_kv_heads(tiny_config):
    message = model_error(tiny_config, "gqa", num_kv_heads=3)
    assert "num_heads=4" in message
    assert "num_kv_heads=3" in message


def test_gqa_without_kv_heads(tiny_config):
    assert "num_kv_heads" in model_error(tiny_config, "gqa", num_kv_heads=None)


@pytest.mark.parametrize("kind,kv_heads", [("mha", 2), ("mqa", 2)])
def test_kv_heads_contradicting_kind(tiny_config, kind, kv_heads):
    message = model_error(tiny_config, kind, num_kv_heads=kv_heads)
    assert f"num_kv_heads={kv_heads}" in message
    assert kind in message


@pytest.mark.parametrize(
    "kind,field,value",
    [
        ("mla", "kv_lora_rank", 0),
        ("mla", "qk_nope_head_dim", -4),
        ("mla", "q_lora_rank", 0),
        ("mha", "head_dim", 0),
        ("mha", "num_layers", 0),
        ("mla", "d_model", -1),
    ],
)
def test_non_positive_sizes(tiny_config, kind, field, value):
    assert f"{field}={value}" in model_error(tiny_config, kind, **{field: value})


@pytest.mark.parametrize("kind,field", [("mla", "qk_rope_head_dim"), ("mha", "head_dim")])
def test_odd_rope_dims(tiny_config, kind, field):
    message = model_error(tiny_config, kind, **{field: 7})
    assert f"{field}=7" in message
    assert "even" in message


def test_unknown_attention_kind(tiny_config):
    message = model_error(tiny_config, "mla", attention="linear")
    assert "'linear'" in message
    assert "mha" in message


@pytest.mark.parametrize(
    "field,value", [("dtype", "float16"), ("cache_dtype", "int8"), ("mla_decode", "fast")]
)
def test_unsupported_choices(tiny_config, field, value):
    assert repr(value) in model_error(tiny_config, "mla", **{field: value})


def test_unknown_model_field(tiny_config):
    config = tiny_config("mla")
    with config.unlocked():
        config.model.num_expert = 4
    with pytest.raises(ConfigError, match="num_expert"):
        model_config_from(config.model, 258)


def test_vocab_smaller_than_tokenizer(tiny_config):
    assert "vocab_size=100" in model_error(tiny_config, "mla", vocab_size=100)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("seq_len", 256, "max_seq_len=128"),
        ("learning_rate", -1e-3, "learning_rate=-0.001"),
        ("warmup_steps", 50, "warmup_steps=50"),
        ("batch_size", 0, "batch_size=0"),
    ],
)
def test_experiment_errors(tiny_config, field, value, needle):
    config = tiny_config("mla")
    config[field] = value
    cfg = model_config_from(config.model, 258)
    with pytest.raises(ConfigError) as info:
        C.validate_experiment(config, cfg)
    assert needle in str(info.value)


def test_unknown_kind_in_config_path():
    module = load_config_module(REPO / "configs" / "tiny.py")
    with pytest.raises(ValueError, match="'linear'"):
        module.get_config("linear")
