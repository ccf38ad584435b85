"""Conversion of trained MHA, GQA and MQA checkpoints into MLA.

The method follows MHA2MLA (arXiv 2502.14837): keep RoPE on the query and key dims that
contribute most to the scores, and factor the other key dims and the values through one latent
by a joint SVD of their weights. TransMLA (arXiv 2502.07864) instead ends with one RoPE key
shared by all heads, as in DeepSeek's MLA; that path is not implemented.

- `rope_pairs`: which RoPE pairs of each KV head keep their rotation (the 2-norm criterion).
- `factorize`: the converted weights of one layer, through a joint SVD of keys and values.
- `convert`: a source workdir in, an MLA workdir at step 0 out (`convert_workdir`).
- `sweep`: source, conversion at several latent widths, evaluation before and after a short
  fine-tune, one line per conversion in `conversion.jsonl`.

An exact conversion uses two MLA options that DeepSeek's MLA lacks: no RMSNorm on the latent,
and one RoPE key per KV head (`mla_latent_norm=False`, `mla_rope_per_kv_head=True`).
Not supported: MLA sources, query compression in the target, data-aware (activation) SVD.
"""

from mla_jax.conversion.convert import (
    ConversionError,
    convert_workdir,
    experiment_config_from_json,
)

__all__ = ["ConversionError", "convert_workdir", "experiment_config_from_json"]
