"""DeepSeek-V2/V3 checkpoint import, checked against transformers' PyTorch models on CPU.

Each case builds a tiny DeepseekV2ForCausalLM or DeepseekV3ForCausalLM with random weights
(nothing is downloaded), saves it with `save_pretrained`, imports the folder and compares, in
float32 over 24 positions, every layer's attention output and the final logits. The
transformers-dependent tests skip when torch or transformers is not installed
(`pip install -r requirements-test.txt`).
"""

import copy
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mla_jax.config import ConfigError, ModelConfig
from mla_jax.interop.deepseek_config import (
    UnsupportedCheckpointError,
    model_config_from_hf,
    rope_settings,
)

TOLERANCE = 1e-4
SEQ_LEN = 24
VOCAB = 200  # padded to 256 by the model
BASE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,  # DeepseekV3Config defaults to 128
    "q_lora_rank": 32,
    "kv_lora_rank": 24,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 16,
    "v_head_dim": 12,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 100.0,
    "tie_word_embeddings": False,
    "first_k_dense_replace": 2,  # every layer dense
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "n_shared_experts": 1,
}
# beta_fast=1 and beta_slow=0.1 put the ramp on pairs 1..6 of 8 for theta 100 and
# original_max_position_embeddings 16, so all three YaRN regimes occur. The sequence (24)
# runs past 16, though transformers 5.25's YaRN does not depend on the sequence length.
YARN = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "beta_fast": 1.0,
    "beta_slow": 0.1,
    "mscale": 1.0,
    "mscale_all_dim": 0.8,
}
CASES = {
    "v2": ("DeepseekV2", {}),
    "v2_lite": ("DeepseekV2", {"q_lora_rank": None}),
    "v2_yarn": ("DeepseekV2", {"rope_scaling": YARN}),
    "v3_yarn_lite": ("DeepseekV3", {"rope_scaling": YARN, "q_lora_rank": None}),
    "v3_half_split": ("DeepseekV3", {"rope_interleave": False}),
}


REQUIREMENTS_HINT = "pip install -r requirements-test.txt"


def hf_libraries():
    reason = f"needs torch, transformers and safetensors: {REQUIREMENTS_HINT}"
    torch = pytest.importorskip("torch", reason=reason)
    transformers = pytest.importorskip("transformers", reason=reason)
    pytest.importorskip("safetensors", reason=reason)
    return torch, transformers


def needs_safetensors():
    pytest.importorskip("safetensors", reason=f"needs safetensors: {REQUIREMENTS_HINT}")


def build_hf_model(family: str, fields: dict, seed: int = 0):
    """A transformers model with random weights: std 0.2, norm scales near 1."""
    torch, transformers = hf_libraries()
    # transformers adds keys to the rope_scaling dict it is given, so it gets a copy.
    config = getattr(transformers, f"{family}Config")(
        **copy.deepcopy({**BASE, **fields}), attn_implementation="eager"
    )
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    assert model.config._attn_implementation == "eager"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.2 * noise)
    return model


def run_hf(model, tokens: np.ndarray):
    """Logits [B, T, V] and, per layer, the attention input and output [B, T, D]."""
    torch, _ = hf_libraries()
    captured = {}

    def capture(layer):
        def hook(module, args, kwargs, output):
            captured[layer] = (kwargs["hidden_states"].numpy(), output[0].numpy())

        return hook

    handles = [
        layer.self_attn.register_forward_hook(capture(i), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens)).logits.numpy()
    for handle in handles:
        handle.remove()
    return logits, captured


def import_saved(model, tmp_path, **save_kwargs):
    from mla_jax.interop.deepseek import import_checkpoint

    model.save_pretrained(tmp_path, **save_kwargs)
    return import_checkpoint(str(tmp_path))


def sample_tokens(batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, SEQ_LEN)).astype(np.int64)


def positions_for(tokens: np.ndarray) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def attention_differences(result, captured, tokens) -> list[float]:
    """Max abs difference of each layer's attention output, fed HF's normalized input."""
    model = result.model()
    differences = []
    for layer, (inputs, expected) in sorted(captured.items()):
        attention = model.blocks[layer].attention
        got = attention(jnp.asarray(inputs), positions_for(tokens))
        differences.append(float(np.max(np.abs(np.asarray(got) - expected))))
    return differences


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_transformers(case, tmp_path):
    family, fields = CASES[case]
    hf_model = build_hf_model(family, fields)
    tokens = sample_tokens()
    expected_logits, captured = run_hf(hf_model, tokens)
    # Sharded files with an index for one case, a single model.safetensors for the others.
    save_kwargs = {"max_shard_size": "100KB"} if case == "v2_lite" else {}
    result = import_saved(hf_model, tmp_path, **save_kwargs)
    if case == "v2_lite":
        assert (tmp_path / "model.safetensors.index.json").exists()

    assert result.moe_layers == ()
    attention_errors = attention_differences(result, captured, tokens)
    logits = np.asarray(result.model()(jnp.asarray(tokens, jnp.int32)))
    logit_error = float(np.max(np.abs(logits[..., :VOCAB] - expected_logits)))
    print(f"{case}: attention max abs diff per layer {attention_errors}, logits {logit_error:.2e}")
    for layer, error in enumerate(attention_errors):
        assert error < TOLERANCE, (case, layer, error)
    assert logit_error < TOLERANCE, (case, logit_error)
    assert np.all(logits[..., VOCAB:] < -1e29)
    # The comparison can fail: the logits move far more than the tolerance along the sequence.
    assert np.max(np.abs(expected_logits[:, 1:] - expected_logits[:, :1])) > 0.1


def test_yarn_config_reaches_the_model(tmp_path):
    result = import_saved(build_hf_model("DeepseekV2", {"rope_scaling": YARN}), tmp_path)
    scaling = result.config.rope_scaling
    assert scaling is not None
    assert scaling.factor == YARN["factor"]
    assert scaling.mscale_all_dim == YARN["mscale_all_dim"]
    assert result.config.rope_theta == BASE["rope_theta"]


def test_wrong_rope_order_is_detected(tmp_path, monkeypatch):
    """Importing without the interleave permutation must break the match."""
    from mla_jax.interop import deepseek

    hf_model = build_hf_model("DeepseekV2", {})
    tokens = sample_tokens()
    _, captured = run_hf(hf_model, tokens)
    monkeypatch.setattr(deepseek, "rope_is_interleaved", lambda hf: False)
    result = import_saved(hf_model, tmp_path)
    assert max(attention_differences(result, captured, tokens)) > 100 * TOLERANCE


def test_moe_layers_import_attention_only(tmp_path, caplog):
    fields = {"num_hidden_layers": 3, "first_k_dense_replace": 1}
    hf_model = build_hf_model("DeepseekV2", fields)
    tokens = sample_tokens()
    _, captured = run_hf(hf_model, tokens)
    with caplog.at_level(logging.WARNING):
        result = import_saved(hf_model, tmp_path)

    assert result.moe_layers == (1, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("[1, 2]" in message and "MoE" in message for message in warnings), warnings
    errors = attention_differences(result, captured, tokens)
    print(f"moe: attention max abs diff per layer {errors}")
    for layer, error in enumerate(errors):
        assert error < TOLERANCE, (layer, error)
    model = result.model()
    for layer in (1, 2):
        mlp = model.blocks[layer].mlp
        for weight in (mlp.w_gate, mlp.w_up, mlp.w_down):
            assert not np.any(np.asarray(weight[...]))
    assert np.any(np.asarray(model.blocks[0].mlp.w_gate[...]))


def test_bfloat16_weights_load_exactly(tmp_path):
    torch, _ = hf_libraries()
    hf_model = build_hf_model("DeepseekV2", {"q_lora_rank": None}).to(torch.bfloat16)
    result = import_saved(hf_model, tmp_path)
    expected = hf_model.model.embed_tokens.weight.detach().float().numpy()
    table = np.asarray(result.params["embedding"]["table"][...])
    np.testing.assert_array_equal(table[:VOCAB], expected)
    assert not np.any(table[VOCAB:])


def test_cached_decoding_with_yarn_matches_forward(tmp_path):
    from mla_jax.decoding import cached_token_losses
    from mla_jax.losses import token_losses

    result = import_saved(build_hf_model("DeepseekV2", {"rope_scaling": YARN}), tmp_path)
    tokens = jnp.asarray(sample_tokens(), jnp.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    full = np.asarray(token_losses(result.model()(inputs), targets))
    # Absorbed mode: the default, and the one whose cache path differs most from the forward.
    config = result.config.replace(mla_decode="absorbed")
    model = dataclasses.replace(result, config=config).model()
    cached = np.asarray(cached_token_losses(model, inputs, targets))
    np.testing.assert_allclose(cached, full, atol=1e-5)


def hf_config(**changes) -> dict:
    return {"model_type": "deepseek_v2", **BASE, **changes}


def test_config_fields_map_to_model_config():
    cfg = model_config_from_hf(hf_config(q_lora_rank=None, tie_word_embeddings=True))
    assert cfg.attention == "mla"
    assert cfg.q_lora_rank is None
    assert cfg.tie_embeddings
    assert cfg.padded_vocab_size == 256
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim) == (2, 64, 4, 96)
    assert cfg.rope_scaling is None


def test_rope_parameters_layout_is_read():
    """transformers 5 writes rope_parameters in place of rope_theta and rope_scaling."""
    params = {**YARN, "rope_type": "yarn", "rope_theta": 50.0}
    del params["type"]
    theta, scaling = rope_settings({"rope_parameters": params})
    assert theta == 50.0
    assert scaling["factor"] == 4.0
    assert scaling["beta_slow"] == 0.1


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"model_type": "llama"}, "model_type='llama'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
        ({"rope_scaling": {**YARN, "attention_factor": 0.9}}, "attention_factor"),
        ({"quantization_config": {"quant_method": "fp8"}}, "fp8"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"num_key_value_heads": 2}, "num_key_value_heads=2"),
        ({"kv_lora_rank": None}, "kv_lora_rank"),
    ],
)
def test_unsupported_config_is_rejected(changes, needle):
    with pytest.raises(UnsupportedCheckpointError, match=re.escape(needle)):
        model_config_from_hf(hf_config(**changes))


def test_model_config_round_trips_with_scaling():
    """Checkpoints store the ModelConfig as JSON, and the scaling must come back typed."""
    cfg = model_config_from_hf(hf_config(rope_scaling=YARN))
    restored = ModelConfig(**dataclasses.asdict(cfg))
    assert restored == cfg
    hash(restored)  # nnx keeps the config in the static graph, which must be hashable


def test_rope_scaling_guards():
    cfg = model_config_from_hf(hf_config())
    with pytest.raises(ConfigError, match="'linear' is not supported"):
        cfg.replace(rope_scaling={**YARN, "type": "linear"})
    with pytest.raises(ConfigError, match="Unknown config.model.rope_scaling fields"):
        cfg.replace(rope_scaling={**YARN, "alpha": 1.0})
    with pytest.raises(ConfigError, match="attention='mla' only"):
        cfg.replace(attention="mha", head_dim=16, num_kv_heads=4, rope_scaling=YARN)


def run_import_script(hf_dir, workdir, *flags):
    from conftest import REPO

    command = [sys.executable, str(REPO / "scripts" / "import_deepseek.py")]
    command += [f"--hf_dir={hf_dir}", f"--workdir={workdir}", *flags]
    # Run this checkout's package, whichever one the environment installed, on one CPU device.
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_script_writes_loadable_workdir(tmp_path):
    """The workdir of scripts/import_deepseek.py loads as eval.py and generate.py load it."""
    from conftest import load_config_module

    from mla_jax import decoding
    from mla_jax.interop.deepseek import import_checkpoint
    from mla_jax.training.checkpoints import load_model
    from mla_jax.training.workdir import EVAL_FIELDS, check_saved_config

    # 300 ids leave room for the byte tokenizer's 258, which the workdir uses without a
    # tokenizer.json in the folder.
    hf_model = build_hf_model("DeepseekV2", {"rope_scaling": YARN, "vocab_size": 300})
    hf_model.save_pretrained(tmp_path / "hf")
    workdir = tmp_path / "work"
    completed = run_import_script(tmp_path / "hf", workdir)
    assert completed.returncode == 0, completed.stderr[-3000:]

    config = load_config_module(workdir / "config.py").get_config()
    check_saved_config(str(workdir), config, EVAL_FIELDS)
    model, step = load_model(config, str(workdir))
    assert step == 0
    assert model.cfg == import_checkpoint(str(tmp_path / "hf")).config
    tokens = jnp.asarray(sample_tokens(), jnp.int32)
    expected = import_checkpoint(str(tmp_path / "hf")).model()(tokens)
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(expected))
    generated = decoding.generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    assert generated.tokens.shape == (1, 4)


def test_workdir_rejects_moe_layers(tmp_path):
    from mla_jax.interop.workdir import experiment_config, write_workdir

    fields = {"num_hidden_layers": 2, "first_k_dense_replace": 1, "vocab_size": 300}
    result = import_saved(build_hf_model("DeepseekV2", fields), tmp_path / "hf")
    config = experiment_config(str(tmp_path / "hf"))
    with pytest.raises(UnsupportedCheckpointError, match=re.escape("Layers [1] are MoE layers")):
        write_workdir(result, config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()
    write_workdir(result, config, str(tmp_path / "work"), allow_moe_layers=True)
    assert (tmp_path / "work" / "checkpoints" / "0").is_dir()


def test_experiment_config_uses_tokenizer_files(tmp_path):
    needs_safetensors()
    import tokenizers

    from mla_jax import data
    from mla_jax.interop.workdir import experiment_config

    vocab = {"<bos>": 0, "<eos>": 1, "[UNK]": 2, "hello": 3}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    # tokenizer_config.json stores a special token as text or as a dict with its content.
    special = {"bos_token": {"content": "<bos>"}, "eos_token": "<eos>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(special))
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))

    config = experiment_config(str(tmp_path))
    assert config.data.tokenizer == str(tmp_path / "tokenizer.json")
    assert config.data.bos_token == "<bos>"
    assert config.data.eos_token == "<eos>"
    assert data.vocab_size(config.data) == 4
    assert config.seq_len == BASE["max_position_embeddings"]


def test_experiment_config_without_tokenizer(tmp_path):
    needs_safetensors()
    from mla_jax.interop.workdir import experiment_config

    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(UnsupportedCheckpointError, match="no tokenizer.json"):
        experiment_config(str(tmp_path))  # 200 ids cannot contain the byte tokenizer's 258
    (tmp_path / "config.json").write_text(json.dumps(hf_config(vocab_size=300)))
    assert experiment_config(str(tmp_path)).data.tokenizer == "byte"
