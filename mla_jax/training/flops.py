"""Model FLOPs of a train step and of a teacher-forced forward pass, for MFU.

A train step costs 3 forward passes: the forward itself, and a backward that computes two
products for each forward product (the gradients of both operands). Per token and forward pass:

- 2 FLOPs for every parameter that multiplies an activation: all parameters but the norm
  scales, and with untied embeddings the input table, which is only indexed. The logits use
  the padded vocabulary, because the product computes it.
- Attention: 2 * S * N * (Hk + Hv) per query token and layer, for the scores (query-key dim
  Hk) and the weighted sum (value dim Hv), with S = T keys. The causal mask is applied to the
  full T x S scores, so the masked half is computed too and counted. MHA/GQA/MQA: Hk = Hv =
  head_dim for each of the N query heads. MLA in training (naive mode, what `__call__`
  computes): Hk = qk_nope_head_dim + qk_rope_head_dim, Hv = v_head_dim; the up-projections
  of the latent to per-head keys and values are parameter products, counted above.

Rematerialization recomputes parts of the forward pass; like MFU in the PaLM paper
(arXiv 2204.02311, appendix B), these counts leave recomputation out.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from mla_jax.config import ModelConfig
from mla_jax.model import Transformer


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that multiply an activation once per token in a forward pass."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(abstract, nnx.Param)):
        name = jax.tree_util.keystr(path)  # e.g. "['blocks'][0]['mlp_norm']['scale']"
        is_norm = "norm'" in name
        is_input_table = "'embedding'" in name and not cfg.tie_embeddings
        if not is_norm and not is_input_table:
            total += math.prod(leaf.shape)
    return total


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward attention FLOPs (scores and weighted sum) of one query token over all layers."""
    if cfg.attention == "mla":
        key_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        value_dim = cfg.v_head_dim
    else:
        key_dim = value_dim = cfg.head_dim
    return 2 * seq_len * cfg.num_heads * (key_dim + value_dim) * cfg.num_layers


def forward_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Model FLOPs of a teacher-forced forward pass over batch_size windows of seq_len tokens."""
    per_token = 2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)
    return float(per_token) * batch_size * seq_len


def train_step_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Model FLOPs of one train step: 3 forward passes (6 * parameters * tokens + attention)."""
    return 3 * forward_flops(cfg, batch_size, seq_len)
