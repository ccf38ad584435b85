"""About 100M-parameter models on TinyStories with GPT-2's tokenizer, sized for a v4-8 TPU.

Usage: --config=configs/tpu_small.py:KIND with KIND one of mha, gqa, mqa, mla (default mla),
and --config.data.tokenizer=PATH if GPT-2's tokenizer.json is not at the default path below
(docs/tpu.md explains how to get it).

Model: 10 layers of width 768, 12 heads of 64, SwiGLU width 2048, tied embeddings over GPT-2's
50257 ids (padded to 50304). Parameters: mha 109.4M, gqa 101.6M, mqa 98.6M, mla 106.7M. KV cache
per token per layer: mha 1536, gqa 512, mqa 128, mla 288 elements.

Data: `roneneldan/TinyStories` from the Hugging Face Hub (column `text`, splits `train` and
`validation` only). It has no test split, so validation serves as both the validation and the
test split, and eval.py's test figures repeat the validation ones. NOTE: loading it has not
been tried, because the machines this config was written on have no network.

Run: 5000 steps of 128 sequences of 1024 tokens (131,072 tokens a step, 655M in all), in 4
micro-batches of 32 sequences to bound activation memory. Each device processes 8 sequences
of a micro-batch on a v4-8 (4 devices) and 4 on a v5litepod-8 (8 devices). Expected step
time: not measured yet. Memory per device as the XLA CPU compiler plans it
(scripts/bench_memory.py, a rough guide only: TPU compilation differs and was not run): about
21 GiB with 4 devices and 12 GiB with 8. If a TPU runs out of memory, raise
--config.grad_accum_steps to 8.

Mesh: pure data parallelism (data=-1, fsdp=1). Parameters and both AdamW moments take about
1.3 GB per device in float32, little next to a v4 chip's 32 GiB or a v5e chip's 16 GiB of HBM.
FSDP (--config.mesh.data=1 --config.mesh.fsdp=-1) divides those 1.3 GB; the CPU compiler plans
about 20 GiB per device for fsdp=4 against 21 GiB for data=4 (docs/benchmarks.md).

`config.model.vocab_size` is set explicitly, so the model builds abstractly (tests, memory
benchmarks) without reading the tokenizer file.
"""

from mla_jax.config import base_config

KINDS = ("mha", "gqa", "mqa", "mla")
GPT2_VOCAB_SIZE = 50257


def get_config(kind: str = "mla"):
    if kind not in KINDS:
        raise ValueError(
            f"Unknown attention kind {kind!r} after the config path; use one of {KINDS}."
        )
    c = base_config()
    c.num_train_steps = 5000
    c.batch_size = 128
    c.grad_accum_steps = 4
    c.seq_len = 1024
    c.learning_rate = 6e-4
    c.warmup_steps = 250
    c.log_every = 50
    c.eval_every = 500
    c.eval_batch_size = 32
    c.train_eval_max_windows = 512  # 0.5M validation tokens during training; eval.py scores all.
    c.checkpoint_every = 1000

    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    d = c.data
    d.source = "hub"
    d.hub_name = "roneneldan/TinyStories"
    d.train_split = "train"
    d.validation_split = "validation"
    d.test_split = "validation"  # TinyStories has no test split.
    d.text_field = "text"
    # Path of GPT-2's tokenizer.json, relative to the directory train.py runs in.
    d.tokenizer = "tokenizers/gpt2/tokenizer.json"
    d.bos_token = "<|endoftext|>"
    d.eos_token = "<|endoftext|>"

    m = c.model
    m.attention = kind
    m.vocab_size = GPT2_VOCAB_SIZE
    m.num_layers = 10
    m.d_model = 768
    m.num_heads = 12
    m.head_dim = 64
    m.mlp_dim = 2048
    m.max_seq_len = 1024
    if kind == "gqa":
        m.num_kv_heads = 4
    # MLA without query compression (as DeepSeek-V2-Lite), latent 256 plus RoPE key 32.
    m.q_lora_rank = None
    m.kv_lora_rank = 256
    m.qk_nope_head_dim = 64
    m.qk_rope_head_dim = 32
    m.v_head_dim = 64
    return c
