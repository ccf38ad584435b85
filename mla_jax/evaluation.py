"""Perplexity of a trained model on a split, the unigram baseline, and `eval.json`.

Perplexity is exp(sum of token losses / number of scored tokens) over the split's evaluation
windows (`mla_jax.data.eval_windows`): every token after the stream's first is scored once, and
padding never counts. Per-token losses come back to the host and are summed in float64, so the
figure does not depend on the eval batch size.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mla_jax import data
from mla_jax.config import kv_cache_bytes_per_token, kv_cache_elements_per_token_per_layer
from mla_jax.config import model_config_from, validate_evaluation
from mla_jax.decoding import cached_token_losses
from mla_jax.losses import token_losses
from mla_jax.model import count_params
from mla_jax.sharding import Partitioner, make_partitioner


def make_loss_fn(
    graphdef: nnx.GraphDef, partitioner: Partitioner | None = None, param_shardings=None
):
    """Return a jitted fn(params, inputs [B, T], targets [B, T]) -> float32 token losses [B, T].

    On a mesh, the batch is sharded and the losses come back replicated, so every process can
    read them.
    """

    def losses(params, inputs, targets):
        if partitioner is None:
            return token_losses(nnx.merge(graphdef, params)(inputs), targets)
        with partitioner.activation_rules():
            return token_losses(nnx.merge(graphdef, params)(inputs), targets)

    if partitioner is None:
        return jax.jit(losses)
    batch = partitioner.batch_sharding()
    return jax.jit(
        losses, in_shardings=(param_shardings, batch, batch), out_shardings=partitioner.replicated()
    )


def _place(batch: dict, partitioner: Partitioner | None) -> tuple[jax.Array, jax.Array]:
    if partitioner is None:
        return jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    size = len(batch["inputs"])
    rows = partitioner.process_rows(size)
    local = {"inputs": batch["inputs"][rows], "targets": batch["targets"][rows]}
    placed = partitioner.place_batch(local, size)
    return placed["inputs"], placed["targets"]


def score_windows(
    loss_fn,
    params,
    windows: dict,
    batch_size: int,
    max_windows: int | None = None,
    partitioner: Partitioner | None = None,
) -> dict:
    """Sum the weighted token losses of `windows` (optionally only the first `max_windows`)."""
    if max_windows is not None:
        windows = {k: v[:max_windows] for k, v in windows.items()}
    return _sum_losses(
        windows, batch_size, lambda batch: loss_fn(params, *_place(batch, partitioner))
    )


def score_windows_cached(model, windows: dict, batch_size: int) -> dict:
    """Like `score_windows`, but each window streams token by token through the cached decoder.

    Equal to the teacher-forced figure only if cached decoding is exact, which makes it a
    check of the decoder on real data.
    """
    return _sum_losses(
        windows,
        batch_size,
        lambda batch: cached_token_losses(model, batch["inputs"], batch["targets"]),
    )


def _sum_losses(windows: dict, batch_size: int, batch_losses) -> dict:
    """Sum, in float64 on the host, the weighted per-token losses [B, T] of each eval batch."""
    total, count = 0.0, 0.0
    for batch in data.eval_batches(windows, batch_size):
        losses = np.asarray(batch_losses(batch))
        total += float(np.sum(losses.astype(np.float64) * batch["weights"]))
        count += float(np.sum(batch["weights"]))
    return summarize(total, count)


def summarize(total_loss: float, num_tokens: float) -> dict:
    if num_tokens <= 0:
        raise ValueError("No tokens to score: the evaluation split is empty.")
    loss = total_loss / num_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "num_tokens": int(num_tokens)}


def unigram_log_probs(train_stream: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities [V] from the train split's targets."""
    counts = data.unigram_counts(train_stream[1:], vocab_size).astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + vocab_size))


def unigram_perplexity(log_probs: np.ndarray, stream: np.ndarray) -> float:
    """Perplexity of the unigram model on the same targets the model is scored on."""
    return math.exp(-float(np.mean(log_probs[stream[1:]])))


def write_json_atomic(path: str, payload: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change=False) -> dict:
    """Score the workdir's latest checkpoint on the validation and test splits; write eval.json.

    A model or data config that differs from the one recorded by training is rejected unless
    `allow_config_change`, so a checkpoint is never scored on the wrong data by accident.
    """
    # Imported here: training imports this module for periodic validation.
    from mla_jax.training.checkpoints import load_model
    from mla_jax.training.workdir import EVAL_FIELDS, check_saved_config, check_workdir

    workdir = check_workdir(workdir)
    check_saved_config(workdir, config, EVAL_FIELDS, allow_config_change)
    validate_evaluation(config, model_config_from(config.model, data.vocab_size(config.data)))
    partitioner = make_partitioner(config)
    model, step = load_model(config, workdir, partitioner)
    model_cfg = model.cfg
    graphdef, params = nnx.split(model)
    loss_fn = make_loss_fn(graphdef, partitioner, partitioner.shardings(params))
    tokenizer = data.make_tokenizer(config.data)
    streams = {s: data.load_token_stream(config.data, s, tokenizer) for s in data.SPLITS}
    unigram = unigram_log_probs(streams["train"], model_cfg.vocab_size)
    result = {
        "attention": model_cfg.attention,
        "step": step,
        "num_params": count_params(model),
        "kv_cache_elements_per_token_per_layer": kv_cache_elements_per_token_per_layer(model_cfg),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model_cfg),
        "kv_cache_dtype": model_cfg.cache_dtype,
    }
    for split, prefix in (("validation", "val"), ("test", "test")):
        windows = data.eval_windows(streams[split], config.seq_len)
        scores = score_windows(loss_fn, params, windows, config.eval_batch_size, None, partitioner)
        result[f"{prefix}_loss"] = scores["loss"]
        result[f"{prefix}_perplexity"] = scores["perplexity"]
        result[f"{prefix}_unigram_perplexity"] = unigram_perplexity(unigram, streams[split])
        if split == "validation":
            result["num_eval_tokens"] = scores["num_tokens"]
            if config.eval_cached:
                with partitioner.activation_rules():
                    cached = score_windows_cached(model, windows, config.eval_batch_size)
                result["val_perplexity_cached"] = cached["perplexity"]
        else:
            result["num_test_tokens"] = scores["num_tokens"]
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval.json"), result)
    return result
