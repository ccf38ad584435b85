"""Token streams, packed training batches and evaluation windows.

One stream format serves training and evaluation: `[BOS] doc_1 [EOS] doc_2 [EOS] ... doc_n [EOS]`.
Training packs the stream GPT-2 style: fixed windows of T+1 tokens cut from the stream, so a
window may span a document boundary, attention crosses it, and positions do not reset at EOS.
Evaluation scores every token after the first exactly once with non-overlapping windows.

Shapes: B batch size, T sequence length, W number of evaluation windows.

Not supported: per-document attention masks or position resets, and sharding a batch across
hosts (`TrainBatches.batch_at` returns the global batch and the caller slices it).
"""

import logging
from typing import Iterator, Sequence

import ml_collections
import numpy as np

from mla_jax.data import sources
from mla_jax.data import tokenizers

Batch = dict[str, np.ndarray]


def token_stream(documents: Sequence[str], tokenizer: tokenizers.Tokenizer) -> np.ndarray:
    """Encodes documents into one int32 stream: BOS, then each document followed by EOS."""
    if not documents:
        raise ValueError("token_stream needs at least one document, got none.")
    pieces = [np.array([tokenizer.bos_id], dtype=np.int32)]
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    for ids in tokenizer.encode_batch(documents):
        pieces.append(ids.astype(np.int32, copy=False))
        pieces.append(eos)
    return np.concatenate(pieces)


def load_token_stream(
    data_config: ml_collections.ConfigDict, split: str, tokenizer: tokenizers.Tokenizer
) -> np.ndarray:
    """Loads the documents of `split` and encodes them with `token_stream`."""
    documents = sources.load_documents(data_config, split)
    stream = token_stream(documents, tokenizer)
    logging.info(
        "Split %s: %d documents, %d tokens (including BOS and EOS)",
        split,
        len(documents),
        len(stream),
    )
    return stream


class TrainBatches:
    """Deterministic packed training batches, addressed by step number.

    The stream is cut into `num_windows = (len(stream) - 1) // T` windows, and window i is
    `stream[i*T : i*T + T + 1]`: inputs are its first T tokens, targets its last T. The tail
    that does not fill a window is never trained on. Each epoch visits every window once, in
    the permutation from `np.random.default_rng([seed, epoch])`. Step k contains examples
    k*B ... k*B + B - 1 of the sequence of all epochs one after another, so a batch may
    span two epochs, and resuming at step k needs nothing but k.
    """

    def __init__(
        self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int, start_step: int = 0
    ):
        self.stream = _checked_stream(stream)
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be positive.")
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.num_windows = (len(self.stream) - 1) // seq_len
        if self.num_windows < batch_size:
            raise ValueError(
                f"The token stream of {len(self.stream)} tokens has {self.num_windows} windows of "
                f"seq_len={seq_len}, fewer than batch_size={batch_size}: use more data, a shorter "
                "seq_len or a smaller batch_size."
            )
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            # Keep two epochs at most: a batch spans one or two epochs.
            if len(self._permutations) >= 2:
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations[epoch] = rng.permutation(self.num_windows)
        return self._permutations[epoch]

    def window_ids(self, step: int) -> np.ndarray:
        """Returns the window indices [B] of the batch at `step`."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative.")
        examples = step * self.batch_size + np.arange(self.batch_size)
        epochs, positions = np.divmod(examples, self.num_windows)
        windows = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            windows[in_epoch] = self._permutation(int(epoch))[positions[in_epoch]]
        return windows

    def batch_at(self, step: int, rows: slice | None = None) -> Batch:
        """Returns the batch of `step`: int32 `inputs` [B, T] and `targets` [B, T].

        `rows` selects part of the global batch (one process's share) without gathering the rest.
        """
        starts = self.window_ids(step)[rows if rows is not None else slice(None)] * self.seq_len
        tokens = self.stream[starts[:, None] + np.arange(self.seq_len + 1)]  # [B, T+1]
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    def iter_from(self, step: int) -> Iterator[Batch]:
        """Yields the batches of `step`, `step + 1`, ... without end."""
        while True:
            yield self.batch_at(step)
            step += 1

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(self.start_step)


def eval_windows(stream: np.ndarray, seq_len: int) -> Batch:
    """Cuts a stream into non-overlapping windows that score each token after the first once.

    Window w has inputs `stream[w*T : w*T + T]` and targets `stream[w*T + 1 : w*T + T + 1]`, so
    the context never reaches into an earlier window. The last window is padded with id 0 and
    weight 0. Returns int32 `inputs` [W, T], int32 `targets` [W, T] and float32 `weights` [W, T],
    and `weights.sum() == len(stream) - 1`.
    """
    stream = _checked_stream(stream)
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be positive.")
    num_targets = len(stream) - 1
    num_windows = -(-num_targets // seq_len)
    padded = np.zeros(num_windows * seq_len + 1, dtype=np.int32)
    padded[: len(stream)] = stream
    mask = (np.arange(num_windows * seq_len) < num_targets).reshape(num_windows, seq_len)
    inputs = np.where(mask, padded[:-1].reshape(num_windows, seq_len), 0)
    targets = np.where(mask, padded[1:].reshape(num_windows, seq_len), 0)
    return {
        "inputs": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "weights": mask.astype(np.float32),
    }


def eval_batches(windows: Batch, batch_size: int) -> Iterator[Batch]:
    """Yields batches of `batch_size` windows, padding the last one with zero-weight rows.

    Every batch has the same shape, so a jitted evaluation step compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive.")
    num_windows = len(windows["weights"])
    for start in range(0, num_windows, batch_size):
        batch = {name: array[start : start + batch_size] for name, array in windows.items()}
        missing = batch_size - len(batch["weights"])
        if missing:
            batch = {
                name: np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])
                for name, array in batch.items()
            }
        yield batch


def unigram_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts each token id in `tokens` into an int64 array [V]."""
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"Token ids span [{tokens.min()}, {tokens.max()}], outside the "
            f"vocabulary [0, {vocab_size})."
        )
    return np.bincount(tokens, minlength=vocab_size).astype(np.int64)


def _checked_stream(stream: np.ndarray) -> np.ndarray:
    stream = np.asarray(stream)
    if stream.ndim != 1 or len(stream) < 2:
        raise ValueError(
            f"A token stream must be 1-D with at least 2 tokens, got shape {stream.shape}."
        )
    return stream.astype(np.int32, copy=False)
