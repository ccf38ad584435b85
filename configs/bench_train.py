"""The training-speed benchmark model of scripts/bench_train.py: about 25M parameters.

Usage: --config=configs/bench_train.py:KIND with KIND one of mha, gqa, mqa, mla (default mla).
8 layers of width 512, 8 heads of 64, SwiGLU width 1408, byte vocabulary, 1024-token windows,
4 windows per step. GQA has 2 KV heads. MLA has no query compression, a latent of 256 and a
RoPE key of 32; its attention has as many parameters as MHA's (1.07M against 1.05M per layer).
"""

from mla_jax.config import base_config

KINDS = ("mha", "gqa", "mqa", "mla")


def get_config(kind: str = "mla"):
    if kind not in KINDS:
        raise ValueError(
            f"Unknown attention kind {kind!r} after the config path; use one of {KINDS}."
        )
    c = base_config()
    c.num_train_steps = 50
    c.batch_size = 4
    c.seq_len = 1024
    c.warmup_steps = 10
    c.learning_rate = 1e-3
    c.eval_every = 0
    c.eval_batch_size = 4
    c.checkpoint_every = 0

    m = c.model
    m.attention = kind
    m.num_layers = 8
    m.d_model = 512
    m.num_heads = 8
    m.head_dim = 64
    m.mlp_dim = 1408
    m.max_seq_len = 1024
    if kind == "gqa":
        m.num_kv_heads = 2
    m.q_lora_rank = None
    m.kv_lora_rank = 256
    m.qk_nope_head_dim = 64
    m.qk_rope_head_dim = 32
    m.v_head_dim = 64
    return c
