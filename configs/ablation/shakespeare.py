"""CPU attention ablation on the embedded Shakespeare corpus (bytes): MHA, GQA, MQA and MLA.

Usage: python scripts/run_ablation.py --config=configs/ablation/shakespeare.py --workdir=DIR
(docs/results.md describes the sweep and how to report it).

Model: 4 layers of width 128, 8 heads, byte vocabulary, float32. The members are MHA (8 KV
heads of 16), GQA with 4 and 2 KV heads, and MQA. Four MLA members compress queries (rank 64),
use key and value dims of 16 per head and a shared RoPE key of 8, and have latent ranks 24, 56,
120 and 232. Their caches of 32, 64, 128 and 240 elements per token per layer equal those of
mqa, gqa_2 and gqa_4, and 94% of MHA's 256. Two more MLA members vary one choice at gqa_2's
cache: mla_56_noq has no query compression, and mla_48_rope16 has a RoPE key of 16.
Rank 232 exceeds the model width of 128, so that latent cannot compress the hidden state. It is
there to reach MHA's cache size.

Parameter matching: every member has MHA's 853,120 parameters (embeddings included) within
0.6%, because its `mlp_dim` below is the width `mla_jax.ablation.match_mlp_dim` picks for it
(printed by scripts/plan_ablation.py, which exits with an error if a member drifts past 2%).

Cost, an estimate: about 3 minutes per run and 1.6 hours for the 30 runs (10 members x 3 seeds)
on 2 CPU cores. Measured on a 2-core machine (JAX 0.10.2, one CPU device) by calling train(),
evaluate() and decode_tokens_per_second() on 60-step runs of eight members and of
configs/shakespeare.py:mha, while other jobs kept the load average at 3 to 4. Median step times
over 5-step windows were 0.30 to 0.49 s for MHA, GQA and MQA members and 0.31 to 0.57 s for MLA
members, against 0.38 to 0.53 s for configs/shakespeare.py:mha in the same session. The load
changed from minute to minute, so these are upper bounds rather than unloaded figures. Outside
training a run spends 20 to 30 s, which 4-step runs of four members through
scripts/run_ablation.py confirmed. That time covers start-up and compilation, the final
evaluation on the full validation and test splits (5 to 13 s), decode timing (about 3 s), and
validation and checkpoints during training. Taking 0.40 s per step for MHA, GQA and MQA and 0.50 s for MLA
(0.46 s on average), 350 steps plus 25 s make 3.1 minutes a run and 1.6 hours in all. A
machine as loaded as during the measurement may take up to 1.25 times longer.
"""

import ml_collections

from mla_jax.config import base_config


def _members() -> dict:
    """Member name -> overrides of base.model, with mlp_dim matched to MHA (see the docstring)."""
    mla = dict(attention="mla")
    return {
        "mha": dict(attention="mha", mlp_dim=352),
        "gqa_4": dict(attention="gqa", num_kv_heads=4, mlp_dim=392),
        "gqa_2": dict(attention="gqa", num_kv_heads=2, mlp_dim=416),
        "mqa": dict(attention="mqa", mlp_dim=424),
        "mla_24": dict(mla, kv_lora_rank=24, mlp_dim=400),
        "mla_56": dict(mla, kv_lora_rank=56, mlp_dim=368),
        "mla_120": dict(mla, kv_lora_rank=120, mlp_dim=304),
        "mla_232": dict(mla, kv_lora_rank=232, mlp_dim=192),
        "mla_56_noq": dict(mla, kv_lora_rank=56, q_lora_rank=None, mlp_dim=360),
        "mla_48_rope16": dict(mla, kv_lora_rank=48, qk_rope_head_dim=16, mlp_dim=360),
    }


def get_config():
    c = base_config()
    c.num_train_steps = 350  # 1.4M training tokens
    c.batch_size = 32
    c.seq_len = 128
    c.learning_rate = 3e-3
    c.warmup_steps = 35
    c.eval_every = 175
    c.train_eval_max_windows = 64
    c.checkpoint_every = 50  # so a killed sweep repeats at most 50 steps (about 25 s)

    m = c.model
    m.attention = "mha"
    m.num_layers = 4
    m.d_model = 128
    m.num_heads = 8
    m.head_dim = 16
    # MLA sizes shared by the MLA members (DeepSeek-V2 ratios: RoPE dims half the head dim).
    m.q_lora_rank = 64
    m.qk_nope_head_dim = 16
    m.qk_rope_head_dim = 8
    m.v_head_dim = 16

    sweep = ml_collections.ConfigDict()
    sweep.base = c
    sweep.seeds = (0, 1, 2)
    sweep.reference = "mha"
    sweep.members = ml_collections.ConfigDict(_members(), sort_keys=False)
    sweep.decode_tokens = 256
    sweep.decode_batch_size = 1
    sweep.decode_repeats = 3
    return sweep
