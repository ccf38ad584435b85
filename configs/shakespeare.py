"""Byte-level language models on the embedded Shakespeare corpus, one preset per attention kind.

Usage: --config=configs/shakespeare.py:KIND with KIND one of mha, gqa, mqa, mla (default mla).
All kinds share width, depth and heads; they differ only in attention, so their KV caches per
token per layer are: mha 256, gqa 128, mqa 64, mla 80 elements.
"""

from mla_jax.config import base_config

KINDS = ("mha", "gqa", "mqa", "mla")


def get_config(kind: str = "mla"):
    if kind not in KINDS:
        raise ValueError(
            f"Unknown attention kind {kind!r} after the config path; use one of {KINDS}."
        )
    c = base_config()
    c.num_train_steps = 800
    c.batch_size = 32
    c.seq_len = 128
    c.learning_rate = 3e-3
    c.warmup_steps = 80
    c.eval_every = 200
    c.checkpoint_every = 200
    c.train_eval_max_windows = 128  # 32K validation tokens during training; eval.py scores all.

    m = c.model
    m.attention = kind
    m.num_layers = 4
    m.d_model = 128
    m.num_heads = 4
    m.head_dim = 32
    m.mlp_dim = 352
    if kind == "gqa":
        m.num_kv_heads = 2
    # MLA: latent 64 plus RoPE key 16 per token, against MHA's 2 * 4 * 32 = 256.
    m.q_lora_rank = 64
    m.kv_lora_rank = 64
    m.qk_nope_head_dim = 32
    m.qk_rope_head_dim = 16
    m.v_head_dim = 32
    return c
