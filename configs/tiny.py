"""A tiny model for tests and smoke runs: 2 layers of width 64, 4 heads of 16.

Usage: --config=configs/tiny.py:KIND with KIND one of mha, gqa, mqa, mla (default mla).
"""

from mla_jax.config import base_config

KINDS = ("mha", "gqa", "mqa", "mla")


def get_config(kind: str = "mla"):
    if kind not in KINDS:
        raise ValueError(
            f"Unknown attention kind {kind!r} after the config path; use one of {KINDS}."
        )
    c = base_config()
    c.num_train_steps = 20
    c.batch_size = 8
    c.seq_len = 64
    c.learning_rate = 1e-2
    c.warmup_steps = 2
    c.log_every = 5
    c.eval_every = 10
    c.eval_batch_size = 32
    c.train_eval_max_windows = 32
    c.checkpoint_every = 10

    m = c.model
    m.attention = kind
    m.num_layers = 2
    m.d_model = 64
    m.num_heads = 4
    m.head_dim = 16
    m.mlp_dim = 128
    m.max_seq_len = 128
    if kind == "gqa":
        m.num_kv_heads = 2
    m.q_lora_rank = 32
    m.kv_lora_rank = 32
    m.qk_nope_head_dim = 16
    m.qk_rope_head_dim = 8
    m.v_head_dim = 16
    return c
