"""mla-jax: small decoder-only language models with MHA, GQA, MQA and MLA attention.

The package trains and evaluates models that differ only in their attention kind, so that
perplexity can be compared against KV-cache size per token.

Shape alphabet, used in einsum strings and shape comments across the package:

  B  batch                        N  query heads
  T  query length                 K  KV heads
  S  key length                   G  query heads per KV head (N // K)
  D  model width (d_model)        H  head dim (for MLA: the per-head key or value dim)
  F  MLP hidden width             C  MLA KV latent dim (kv_lora_rank)
  V  vocabulary (padded)          Q  MLA query latent dim (q_lora_rank)
  R  MLA decoupled RoPE dim (qk_rope_head_dim)

Importing the package stays light: submodules are imported where they are used. It adds this
project's default XLA options to XLA_FLAGS (`mla_jax.xla_flags`), which take effect when JAX
creates its backend afterwards.
"""

from mla_jax.xla_flags import add_default_xla_flags

__version__ = "0.1.0"

add_default_xla_flags()
