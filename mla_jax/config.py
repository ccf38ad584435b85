"""Experiment defaults, the typed model config, validation and the KV-cache size formula.

An experiment is an `ml_collections.ConfigDict` that starts from `base_config()`: every field and
its default is defined there, once. The model never reads that dict. It receives a frozen
`ModelConfig`, built and validated by `model_config_from()` before any array is allocated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_collections
from ml_collections import config_dict

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")
DTYPES = ("float32", "bfloat16")
MLA_DECODE_MODES = ("absorbed", "naive")
# Implementations of full-sequence attention (training, teacher-forced scoring); see base_config().
ATTENTION_IMPLS = ("auto", "einsum", "dot_product_attention")
# Activation rematerialization per block in the backward pass; see base_config().
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ROPE_SCALING_TYPES = ("yarn",)
# The vocabulary dimension is padded to a multiple of this so that it shards on any mesh.
VOCAB_PAD_MULTIPLE = 128
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
# Parameters shard their `embed` dim (else their MLA latent dim) over fsdp and their head, MLP
# and vocabulary dims over tensor (see mla_jax.sharding). `activation_*` names are for
# sharding constraints on activations, `cache_*` for the KV cache.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("q_latent", "fsdp"),
    ("kv_latent", "fsdp"),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_batch", ("data", "fsdp")),
    ("cache_heads", "tensor"),
)


class ConfigError(ValueError):
    """An invalid config field or field combination, raised before any training starts."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """YaRN RoPE scaling with DeepSeek-V2/V3's field names (`rope_scaling` in their config.json).

    RoPE frequencies between the beta_fast and beta_slow rotation counts (over
    original_max_position_embeddings) are interpolated by `factor`. cos and sin are multiplied by
    m(mscale) / m(mscale_all_dim) and the softmax scale by m(mscale_all_dim)^2, where
    m(x) = 0.1 * x * ln(factor) + 1 (1 when factor <= 1); see `mla_jax.model.layers`.
    """

    type: str
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one transformer; fields are documented in `base_config()`."""

    vocab_size: int
    attention: str
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    mla_latent_norm: bool
    mla_rope_per_kv_head: bool
    mla_rope_pairs: tuple[tuple[tuple[int, ...], ...], ...] | None
    max_seq_len: int
    tie_embeddings: bool
    rope_theta: float
    norm_eps: float
    dtype: str
    cache_dtype: str
    mla_decode: str
    # None: plain RoPE. The default here lets configs saved before this field existed load.
    rope_scaling: RopeScaling | None = None
    # Execution choices that change no parameter and no result beyond rounding; the defaults
    # let configs saved before these fields existed load.
    attention_impl: str = "auto"
    remat: str = "none"

    def __post_init__(self):
        if isinstance(self.rope_scaling, Mapping):
            # ConfigDicts and checkpoint JSON carry the scaling as a dict.
            object.__setattr__(self, "rope_scaling", _rope_scaling_from(self.rope_scaling))
        _validate(self)

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def base_config() -> ml_collections.ConfigDict:
    """Return the experiment config with every field at its default."""
    c = ml_collections.ConfigDict()
    # Run.
    c.seed = 0  # Seeds parameter init and data order.
    c.num_train_steps = 1000
    c.batch_size = 32  # Global batch, in sequences.
    c.seq_len = 256  # Training and evaluation window, in tokens.
    # Optimizer: AdamW, linear warmup then cosine decay to min_lr_ratio * learning_rate.
    c.learning_rate = 3e-3
    c.warmup_steps = 50
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.1  # Not applied to norms and biases.
    c.adam_b1 = 0.9
    c.adam_b2 = 0.95
    c.adam_eps = 1e-8
    c.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables it.
    # Logging, evaluation, checkpoints (intervals in steps).
    c.log_every = 10
    c.eval_every = 200  # Validation perplexity during training; 0 disables it.
    c.eval_batch_size = 16  # Windows per eval batch; results do not depend on it.
    # eval.py also scores validation token by token through the KV cache (val_perplexity_cached).
    c.eval_cached = True
    # Validation windows scored during training (the first ones of the split); None: all.
    c.train_eval_max_windows = config_dict.placeholder(int)
    c.checkpoint_every = 200
    c.checkpoints_to_keep = 3
    # Where orbax writes checkpoints; None: WORKDIR/checkpoints. May be a gs:// path, which orbax
    # writes directly; metrics and eval.json stay in the local workdir.
    c.checkpoint_dir = config_dict.placeholder(str)

    c.grad_accum_steps = 1  # Micro-batches per step; batch_size must divide by it.

    # Device mesh. Sizes of the data, fsdp and tensor axes; one -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical axis name -> mesh axes (None: replicated). Dims that do not divide are replicated.
    c.sharding_rules = DEFAULT_SHARDING_RULES
    # Multi-process runs: jax.distributed.initialize arguments. On Cloud TPU, leave them None
    # and set distributed.initialize=True; JAX finds the coordinator itself.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = False
    c.distributed.coordinator_address = config_dict.placeholder(str)  # host:port of process 0
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)

    c.data = ml_collections.ConfigDict()
    c.data.source = "shakespeare"  # shakespeare (embedded), text (local globs) or hub.
    c.data.tokenizer = "byte"  # byte, or the path of a Hugging Face tokenizer.json.
    c.data.bos_token = config_dict.placeholder(str)  # Only with a tokenizer.json.
    c.data.eos_token = config_dict.placeholder(str)  # Only with a tokenizer.json.
    # source=text: comma-separated globs; each matched file is one document.
    c.data.train_files = config_dict.placeholder(str)
    c.data.validation_files = config_dict.placeholder(str)
    c.data.test_files = config_dict.placeholder(str)
    # source=hub: datasets.load_dataset(hub_name, hub_config, data_files=hub_data_files).
    c.data.hub_name = config_dict.placeholder(str)
    c.data.hub_config = config_dict.placeholder(str)
    c.data.hub_data_files = config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.validation_split = "validation"
    c.data.test_split = "test"
    c.data.text_field = "text"
    c.data.cache_dir = config_dict.placeholder(str)  # datasets cache folder; None: its default.

    c.model = ml_collections.ConfigDict()
    m = c.model
    m.attention = "mla"  # mha, gqa, mqa or mla.
    # Real vocabulary size; None: taken from the tokenizer (258 for bytes).
    m.vocab_size = config_dict.placeholder(int)
    m.num_layers = 4
    m.d_model = 256
    m.num_heads = 4
    # KV heads of mha/gqa/mqa; None lets mha (num_heads) and mqa (1) set it. Required for gqa.
    # MLA with mla_rope_per_kv_head: the number of RoPE keys (None: num_heads).
    m.num_kv_heads = config_dict.placeholder(int)
    # Per-head dim of mha/gqa/mqa; must be even for RoPE. MLA with mla_rope_pairs: the head dim
    # whose RoPE frequencies those pairs index.
    m.head_dim = 64
    m.mlp_dim = 704  # SwiGLU hidden width.
    # MLA (DeepSeek-V2 names). q_lora_rank None: queries come straight from the hidden state.
    m.q_lora_rank = config_dict.placeholder(int)
    m.kv_lora_rank = 128  # Width of the cached KV latent.
    # Per-head key/query dims without RoPE, up-projected from the latent; may be 0.
    m.qk_nope_head_dim = 64
    m.qk_rope_head_dim = 32  # Decoupled RoPE key dims, shared by all heads; must be even.
    m.v_head_dim = 64
    # MLA options that an exact conversion from MHA/GQA needs (scripts/convert_to_mla.py). The
    # defaults are DeepSeek's. mla_latent_norm: RMSNorm on the KV latent before it is cached.
    m.mla_latent_norm = True
    # False: one RoPE key shared by all heads. True: one per KV head (num_kv_heads of them), and
    # query head n reads key n // (num_heads / num_kv_heads); the cache grows by that factor.
    m.mla_rope_per_kv_head = False
    # Per layer and RoPE key, the indices i < head_dim / 2 of the RoPE pairs whose frequencies
    # theta^(-2i / head_dim) the qk_rope_head_dim / 2 rotated pairs use, as in a head of
    # head_dim that keeps RoPE on those pairs only. None: the frequencies of a head of
    # qk_rope_head_dim.
    m.mla_rope_pairs = config_dict.placeholder(tuple)
    m.max_seq_len = 1024  # Maximum sequence length in tokens, for training and for the KV cache.
    m.tie_embeddings = True  # Output projection reuses the token embedding.
    m.rope_theta = 10000.0
    # MLA only. None: plain RoPE. Else a dict of RopeScaling fields, e.g. {"type": "yarn",
    # "factor": 40.0, "original_max_position_embeddings": 4096, "mscale_all_dim": 0.707}.
    m.rope_scaling = None
    m.norm_eps = 1e-6
    # Compute dtype of matrix products. With bfloat16, products take bfloat16 operands and
    # accumulate and return float32, and the embedding rows are rounded to bfloat16. Parameters,
    # norms, softmax, log-softmax and loss stay float32.
    m.dtype = "float32"
    m.cache_dtype = "float32"  # KV-cache dtype at decode time.
    m.mla_decode = "absorbed"  # MLA decode: absorbed (attend over the latent) or naive.
    # Full-sequence attention: einsum (scores, masked softmax, weighted sum as einsums),
    # dot_product_attention (jax.nn.dot_product_attention, cuDNN's fused kernel on GPU with
    # bfloat16) or auto (dot_product_attention on GPU with bfloat16, einsum elsewhere).
    m.attention_impl = "auto"
    # Rematerialization of each block in the backward pass, trading compute for memory:
    # none (keep every activation), full (keep only the block inputs, recompute the rest),
    # dots_saveable (keep matrix-product outputs) or dots_with_no_batch_dims_saveable (keep
    # projection outputs, recompute attention scores and probabilities).
    m.remat = "none"
    return c


def model_config_from(model_fields: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """Build and validate a ModelConfig from `config.model`.

    `vocab_size` is the tokenizer's; an explicit `config.model.vocab_size` overrides it and must
    be at least as large. A field missing from `model_fields` (a config recorded before the
    field existed) takes its default.
    """
    fields = {**base_config().model.to_dict(), **model_fields.to_dict()}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"Unknown config.model fields {unknown}; valid fields: {sorted(known)}.")
    explicit_vocab = fields.pop("vocab_size")
    if explicit_vocab is not None and explicit_vocab < vocab_size:
        raise ConfigError(
            f"config.model.vocab_size={explicit_vocab} is smaller than the tokenizer's vocabulary "
            f"({vocab_size}); raise it or leave it unset."
        )
    fields["vocab_size"] = explicit_vocab if explicit_vocab is not None else vocab_size
    fields["num_kv_heads"] = _resolve_num_kv_heads(fields)
    fields["mla_rope_pairs"] = _nested_tuples(fields["mla_rope_pairs"])
    return ModelConfig(**fields)


def _nested_tuples(value):
    """Turn nested lists (as JSON stores them) into nested tuples, so the config stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_nested_tuples(v) for v in value)
    return value


def _resolve_num_kv_heads(fields: dict) -> int:
    kind, heads, kv_heads = fields["attention"], fields["num_heads"], fields["num_kv_heads"]
    implied = {"mha": heads, "mqa": 1}
    if kind in implied:
        if kv_heads is not None and kv_heads != implied[kind]:
            raise ConfigError(
                f"config.model.num_kv_heads={kv_heads} contradicts attention={kind!r}, which uses "
                f"{implied[kind]}; unset num_kv_heads or use attention='gqa'."
            )
        return implied[kind]
    if kind == "gqa" and kv_heads is None:
        raise ConfigError(
            "attention='gqa' needs config.model.num_kv_heads (a divisor of num_heads)."
        )
    # MLA has no KV heads; record num_heads so the field is never None.
    return heads if kv_heads is None else kv_heads


def _rope_scaling_from(fields: Mapping) -> RopeScaling:
    fields = dict(fields)
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"Unknown config.model.rope_scaling fields {unknown}; valid fields: {sorted(known)}."
        )
    required = [f.name for f in dataclasses.fields(RopeScaling) if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in fields]
    if missing:
        raise ConfigError(f"config.model.rope_scaling lacks the fields {missing}.")
    return RopeScaling(**fields)


def _validate_rope_scaling(cfg: ModelConfig) -> None:
    scaling = cfg.rope_scaling
    if scaling is None:
        return
    if not isinstance(scaling, RopeScaling):
        raise ConfigError(
            f"config.model.rope_scaling={scaling!r} must be None or a dict of RopeScaling fields."
        )
    if scaling.type not in ROPE_SCALING_TYPES:
        raise ConfigError(
            f"config.model.rope_scaling type {scaling.type!r} is not supported; choose one of "
            f"{ROPE_SCALING_TYPES} or None."
        )
    if cfg.attention != "mla":
        raise ConfigError(
            f"config.model.rope_scaling is implemented for attention='mla' only, not "
            f"{cfg.attention!r}; set it to None."
        )
    if not scaling.factor > 0 or not scaling.original_max_position_embeddings > 0:
        raise ConfigError(
            f"config.model.rope_scaling needs a positive factor and "
            f"original_max_position_embeddings, got {scaling}."
        )


def _validate(cfg: ModelConfig) -> None:
    if cfg.attention not in ATTENTION_KINDS:
        raise ConfigError(
            f"Unknown config.model.attention={cfg.attention!r}; choose one of {ATTENTION_KINDS}."
        )
    positive = ["vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim", "max_seq_len"]
    even = []
    if cfg.attention == "mla":
        positive += ["kv_lora_rank", "qk_rope_head_dim", "v_head_dim"]
        even += ["qk_rope_head_dim"]
        if cfg.q_lora_rank is not None:
            positive.append("q_lora_rank")
        _validate_mla_options(cfg)
    else:
        positive += ["num_kv_heads", "head_dim"]
        even += ["head_dim"]
    for name in positive:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config.model.{name}={value!r} must be a positive integer.")
    for name in even:
        if getattr(cfg, name) % 2:
            raise ConfigError(
                f"config.model.{name}={getattr(cfg, name)} must be even: RoPE rotates pairs of dims."
            )
    if cfg.attention != "mla" and cfg.num_heads % cfg.num_kv_heads:
        raise ConfigError(
            f"config.model.num_heads={cfg.num_heads} is not divisible by "
            f"num_kv_heads={cfg.num_kv_heads}; pick num_kv_heads among the divisors of num_heads."
        )
    _validate_choices(cfg)


def _validate_mla_options(cfg: ModelConfig) -> None:
    nope = cfg.qk_nope_head_dim
    if not isinstance(nope, int) or isinstance(nope, bool) or nope < 0:
        raise ConfigError(f"config.model.qk_nope_head_dim={nope!r} must be an integer >= 0.")
    for name in ("mla_latent_norm", "mla_rope_per_kv_head"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"config.model.{name}={getattr(cfg, name)!r} must be True or False.")
    if cfg.mla_rope_per_kv_head and (cfg.num_kv_heads < 1 or cfg.num_heads % cfg.num_kv_heads):
        raise ConfigError(
            f"config.model.num_heads={cfg.num_heads} is not divisible by num_kv_heads="
            f"{cfg.num_kv_heads}, the number of RoPE keys with mla_rope_per_kv_head=True; pick "
            "num_kv_heads among the divisors of num_heads."
        )
    if cfg.mla_rope_pairs is not None:
        _validate_rope_pairs(cfg)


def _validate_rope_pairs(cfg: ModelConfig) -> None:
    """Check mla_rope_pairs: [num_layers][RoPE keys][qk_rope_head_dim / 2] distinct indices."""
    keys, count, half = mla_rope_keys(cfg), cfg.qk_rope_head_dim // 2, cfg.head_dim // 2
    shape = f"[num_layers={cfg.num_layers}][RoPE keys={keys}][qk_rope_head_dim/2={count}]"
    pairs = cfg.mla_rope_pairs
    if len(pairs) != cfg.num_layers or any(len(layer) != keys for layer in pairs):
        raise ConfigError(
            f"config.model.mla_rope_pairs must have the shape {shape}; rebuild it with "
            "scripts/convert_to_mla.py or set it to None."
        )
    if cfg.head_dim % 2:
        raise ConfigError(
            f"config.model.head_dim={cfg.head_dim} must be even: mla_rope_pairs index its RoPE "
            "pairs (dims i and i + head_dim/2)."
        )
    for layer, key_pairs in enumerate(pairs):
        for key, indices in enumerate(key_pairs):
            in_range = all(isinstance(i, int) and 0 <= i < half for i in indices)
            if not in_range or len(set(indices)) != len(indices) or len(indices) != count:
                raise ConfigError(
                    f"config.model.mla_rope_pairs[{layer}][{key}]={indices!r} must hold {count} "
                    f"distinct pair indices in [0, {half}) (head_dim={cfg.head_dim})."
                )


def _validate_choices(cfg: ModelConfig) -> None:
    for name, choices in (
        ("dtype", DTYPES),
        ("cache_dtype", DTYPES),
        ("mla_decode", MLA_DECODE_MODES),
        ("attention_impl", ATTENTION_IMPLS),
        ("remat", REMAT_POLICIES),
    ):
        if getattr(cfg, name) not in choices:
            raise ConfigError(
                f"config.model.{name}={getattr(cfg, name)!r} is not supported; choose one of {choices}."
            )
    if not cfg.rope_theta > 0:
        raise ConfigError(f"config.model.rope_theta={cfg.rope_theta} must be positive.")
    if not cfg.norm_eps > 0:
        raise ConfigError(f"config.model.norm_eps={cfg.norm_eps} must be positive.")
    _validate_rope_scaling(cfg)


def mla_rope_keys(cfg: ModelConfig) -> int:
    """Number of RoPE keys an MLA layer caches per token: one per KV head, or one shared."""
    return cfg.num_kv_heads if cfg.mla_rope_per_kv_head else 1


def kv_cache_elements_per_token_per_layer(cfg: ModelConfig) -> int:
    """Cached elements per token in one layer.

    MHA/GQA/MQA cache a key and a value per KV head (2 * K * H). MLA caches the KV latent,
    RMS-normalized or not (C either way), and its RoPE keys: C + R with one shared key (DeepSeek),
    C + K * R with one per KV head (mla_rope_per_kv_head).
    """
    if cfg.attention == "mla":
        return cfg.kv_lora_rank + mla_rope_keys(cfg) * cfg.qk_rope_head_dim
    return 2 * cfg.num_kv_heads * cfg.head_dim


def kv_cache_bytes_per_token(cfg: ModelConfig, cache_dtype: str | None = None) -> int:
    """KV-cache bytes per token for the whole model, at `cache_dtype` (default: the config's)."""
    dtype = cache_dtype or cfg.cache_dtype
    if dtype not in _DTYPE_BYTES:
        raise ConfigError(f"cache dtype {dtype!r} is not supported; choose one of {DTYPES}.")
    return kv_cache_elements_per_token_per_layer(cfg) * cfg.num_layers * _DTYPE_BYTES[dtype]


def validate_experiment(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    """Check the run-level fields of an experiment config against each other and the model."""
    validate_evaluation(config, model_cfg)
    _validate_steps(config)
    _validate_optimizer(config)


def validate_evaluation(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    """Check the fields that evaluation reads: the window length and the batch sizes."""
    for name in ("batch_size", "seq_len", "eval_batch_size"):
        _check_int(config, name, minimum=1)
    if config.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"config.seq_len={config.seq_len} exceeds config.model.max_seq_len="
            f"{model_cfg.max_seq_len}; lower seq_len or raise max_seq_len."
        )


def _check_int(config: ml_collections.ConfigDict, name: str, minimum: int) -> None:
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        meaning = "a positive integer" if minimum == 1 else "an integer >= 0 (0 disables it)"
        raise ConfigError(f"config.{name}={value!r} must be {meaning}.")


def _validate_steps(config: ml_collections.ConfigDict) -> None:
    for name in ("num_train_steps", "log_every", "checkpoints_to_keep", "grad_accum_steps"):
        _check_int(config, name, minimum=1)
    for name in ("eval_every", "checkpoint_every", "warmup_steps"):
        _check_int(config, name, minimum=0)
    if config.warmup_steps >= config.num_train_steps:
        raise ConfigError(
            f"config.warmup_steps={config.warmup_steps} leaves no step for the decay "
            f"(num_train_steps={config.num_train_steps}); make the warmup shorter than the run."
        )
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"config.grad_accum_steps={config.grad_accum_steps} does not divide "
            f"config.batch_size={config.batch_size}; pick a divisor of batch_size."
        )
    max_windows = config.train_eval_max_windows
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ConfigError(
            f"config.train_eval_max_windows={max_windows!r} must be a positive integer, or None "
            "to score every validation window during training."
        )


def _validate_optimizer(config: ml_collections.ConfigDict) -> None:
    # `not x > 0` rather than `x <= 0`, so that NaN is rejected too.
    for name in ("learning_rate", "adam_eps"):
        if not config[name] > 0:
            raise ConfigError(f"config.{name}={config[name]} must be positive.")
    for name in ("weight_decay", "grad_clip_norm"):
        if not config[name] >= 0:
            raise ConfigError(f"config.{name}={config[name]} must be >= 0 (0 disables it).")
    if not 0 <= config.min_lr_ratio <= 1:
        raise ConfigError(f"config.min_lr_ratio={config.min_lr_ratio} must lie in [0, 1].")
    for name in ("adam_b1", "adam_b2"):
        if not 0 <= config[name] < 1:
            raise ConfigError(
                f"config.{name}={config[name]} must lie in [0, 1); AdamW commonly uses 0.9 to "
                "0.999."
            )
