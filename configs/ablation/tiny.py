"""A two-member sweep at the sizes of configs/tiny.py, for tests and smoke runs of the machinery.

Usage: python scripts/run_ablation.py --config=configs/ablation/tiny.py --workdir=DIR

MHA against MLA with query compression, both with mlp_dim 128: the width that
`mla_jax.ablation.match_mlp_dim` picks for MLA (scripts/plan_ablation.py), 0.8% fewer parameters.
"""

import ml_collections

from mla_jax.config import base_config


def get_config():
    c = base_config()
    c.num_train_steps = 20
    c.batch_size = 8
    c.seq_len = 64
    c.learning_rate = 1e-2
    c.warmup_steps = 2
    c.log_every = 5
    c.eval_every = 0
    c.eval_batch_size = 32
    c.checkpoint_every = 10

    m = c.model
    m.num_layers = 2
    m.d_model = 64
    m.num_heads = 4
    m.head_dim = 16
    m.max_seq_len = 128
    m.q_lora_rank = 32
    m.kv_lora_rank = 32
    m.qk_nope_head_dim = 16
    m.qk_rope_head_dim = 8
    m.v_head_dim = 16

    sweep = ml_collections.ConfigDict()
    sweep.base = c
    sweep.seeds = (0, 1, 2)
    sweep.reference = "mha"
    members = {"mha": dict(attention="mha", mlp_dim=128), "mla": dict(attention="mla", mlp_dim=128)}
    sweep.members = ml_collections.ConfigDict(members, sort_keys=False)
    sweep.decode_tokens = 16
    sweep.decode_batch_size = 1
    sweep.decode_repeats = 1
    return sweep
