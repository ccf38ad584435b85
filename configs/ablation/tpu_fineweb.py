"""TPU attention ablation at about 124M parameters on FineWeb-Edu, with GPT-2's tokenizer.

Usage: python scripts/run_ablation.py --config=configs/ablation/tpu_fineweb.py --workdir=DIR
(docs/tpu.md sets up a TPU VM and GPT-2's tokenizer.json, docs/results.md describes the sweep).

Model: 12 layers of width 768, 12 heads of 64, tied embeddings over GPT-2's 50257 ids (padded to
50304), bfloat16 compute with float32 parameters, bfloat16 KV cache. The members mirror
configs/ablation/shakespeare.py. They are MHA, GQA with 6 and 3 KV heads, and MQA. Four MLA
members compress queries (rank 384), use key and value dims of 64 per head and a shared RoPE key
of 32, and have latent ranks 96, 352, 736 and 1408. Their caches of 128, 384, 768 and 1440
elements per token per layer equal those of mqa, gqa_3 and gqa_6, and 94% of MHA's 1536. Two
more MLA members vary one choice at gqa_3's cache: no query compression, and a RoPE key of 64.
The MLP widths were picked by `mla_jax.ablation.match_mlp_dim` (scripts/plan_ablation.py), so
every member has MHA's 123.59M parameters within 0.1%.

Data: FineWeb-Edu `sample-10BT`, a single train split of about 9.67M documents and 10B GPT-2
tokens, so about 1,030 tokens per document. Rows are cut into disjoint slices. Validation is the
first 10,000 documents and test the next 10,000. Train is the 3M after them, about 3.1B tokens,
more than the 2.6B that a run reads, so no document repeats. `datasets` downloads and prepares
the whole sample (tens of GB) once, with HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0. The pipeline
then keeps a run's train slice in host memory, about 12 GB of int32 ids.

Run: 10,000 steps of 256 sequences of 1024 tokens (2.6B tokens, 21 per parameter, about
Chinchilla's ratio), in 8 micro-batches of 32 sequences as configs/tpu_small.py does to bound
activation memory. AdamW at 6e-4 after 500 warmup steps, then cosine decay.

Expected cost, an estimate and not a measurement: no step time of this code on a TPU exists yet.
Training FLOPs per run, 6 per parameter per token plus the attention score and value matmuls
(`mla_jax.ablation.train_flops`), are 2.24e18 for MHA, GQA and MQA, 2.32e18 for MLA (query-key
dim 96 against 64) and 2.39e18 for the RoPE-64 member, 6.9e19 for all 30 runs. ASSUMING 35% MFU
on TPU v5e (197 TFLOP/s bfloat16 peak per chip, Google's published figure), that is about 9
chip-hours per run and 280 chip-hours for the sweep. On v4 (275 TFLOP/s peak) it is about 200.
The MFU is a guess: at 124M parameters per-step overheads weigh more than in large models, and
attention runs as plain einsums without a fused kernel. The estimate leaves out evaluation,
checkpoint saves and data loading, which every run repeats. The pipeline keeps no token cache,
so each run tokenizes its ~3B tokens again, which takes minutes to tens of minutes of host time
while the chips wait. To recompute:
  python scripts/plan_ablation.py --config=configs/ablation/tpu_fineweb.py --peak_tflops=197 --mfu=0.35
"""

import ml_collections

from mla_jax.config import base_config


def _members() -> dict:
    """Member name -> overrides of base.model, with mlp_dim matched to MHA (see the docstring)."""
    mla = dict(attention="mla")
    return {
        "mha": dict(attention="mha", mlp_dim=2048),
        "gqa_6": dict(attention="gqa", num_kv_heads=6, mlp_dim=2304),
        "gqa_3": dict(attention="gqa", num_kv_heads=3, mlp_dim=2432),
        "mqa": dict(attention="mqa", mlp_dim=2520),
        "mla_96": dict(mla, kv_lora_rank=96, mlp_dim=2392),
        "mla_352": dict(mla, kv_lora_rank=352, mlp_dim=2136),
        "mla_736": dict(mla, kv_lora_rank=736, mlp_dim=1752),
        "mla_1408": dict(mla, kv_lora_rank=1408, mlp_dim=1080),
        "mla_352_noq": dict(mla, kv_lora_rank=352, q_lora_rank=None, mlp_dim=2072),
        "mla_320_rope64": dict(mla, kv_lora_rank=320, qk_rope_head_dim=64, mlp_dim=2088),
    }


def get_config():
    c = base_config()
    c.num_train_steps = 10_000
    c.batch_size = 256
    c.grad_accum_steps = 8
    c.seq_len = 1024
    c.learning_rate = 6e-4
    c.warmup_steps = 500
    c.log_every = 50
    c.eval_every = 1000
    c.eval_batch_size = 64
    c.train_eval_max_windows = 512
    c.checkpoint_every = 1000

    d = c.data
    d.source = "hub"
    d.hub_name = "HuggingFaceFW/fineweb-edu"
    d.hub_config = "sample-10BT"
    d.validation_split = "train[:10000]"
    d.test_split = "train[10000:20000]"
    d.train_split = "train[20000:3020000]"
    d.tokenizer = "tokenizers/gpt2/tokenizer.json"
    d.bos_token = "<|endoftext|>"
    d.eos_token = "<|endoftext|>"

    m = c.model
    m.attention = "mha"
    m.vocab_size = 50257  # GPT-2's, set explicitly so the model builds without the tokenizer file
    m.num_layers = 12
    m.d_model = 768
    m.num_heads = 12
    m.head_dim = 64
    m.max_seq_len = 1024
    m.dtype = "bfloat16"
    m.cache_dtype = "bfloat16"
    m.q_lora_rank = 384
    m.qk_nope_head_dim = 64
    m.qk_rope_head_dim = 32
    m.v_head_dim = 64

    sweep = ml_collections.ConfigDict()
    sweep.base = c
    sweep.seeds = (0, 1, 2)
    sweep.reference = "mha"
    sweep.members = ml_collections.ConfigDict(_members(), sort_keys=False)
    sweep.decode_tokens = 512
    sweep.decode_batch_size = 8
    sweep.decode_repeats = 3
    return sweep
