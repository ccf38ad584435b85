"""Tokenizers: UTF-8 bytes, or a Hugging Face `tokenizer.json`.

Both tokenizers share one interface: `encode(text)` returns int32 ids without special tokens,
`encode_batch(texts)` does the same for a list, `decode(ids)` drops special ids, and `bos_id`,
`eos_id` and `vocab_size` are plain ints. Special tokens are added only by the pipeline
(`pipeline.token_stream`), so the stream format does not depend on a tokenizer's post-processor.

Not supported: tokenizers from other libraries (SentencePiece `.model` files, tiktoken) and
downloading a tokenizer from the Hub by name.
"""

import json
import logging
import os
from typing import Protocol, Sequence

import ml_collections
import numpy as np
import tokenizers

BYTE_TOKENIZER = "byte"
_TOKENIZER_FIX = (
    "Point data.tokenizer at an intact tokenizer.json, as the tokenizers library's "
    "Tokenizer.save writes it, or set data.tokenizer='byte'."
)


class Tokenizer(Protocol):
    """Interface that the data pipeline needs from a tokenizer."""

    bos_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 byte tokenizer: ids 0..255 are byte values, 256 is BOS and 257 is EOS."""

    bos_id = 256
    eos_id = 257
    vocab_size = 258

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decodes byte ids, dropping BOS, EOS and out-of-range ids.

        Invalid UTF-8, such as a multi-byte character cut at the end of a model sample, becomes
        U+FFFD, so decoding a sample does not raise.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        byte_values = ids[(ids >= 0) & (ids < 256)].astype(np.uint8)
        return byte_values.tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """Hugging Face `tokenizers` tokenizer loaded from a `tokenizer.json` file.

    `bos_token` and `eos_token` are token strings of that vocabulary (for GPT-2 both can be
    '<|endoftext|>'). Encoding never adds the file's own special tokens.
    """

    def __init__(self, path: str, bos_token: str | None, eos_token: str | None):
        self.path = path
        self._tokenizer = _load_tokenizer_file(path)
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.bos_id = self._lookup_special(bos_token, "bos_token")
        self.eos_id = self._lookup_special(eos_token, "eos_token")

    def _lookup_special(self, token: str | None, field: str) -> int:
        if token is None:
            raise ValueError(
                f"data.{field} is not set, but tokenizer {self.path!r} needs it: set data.{field} "
                "to a token string of that vocabulary (BOS and EOS may be the same token)."
            )
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"data.{field}={token!r} is not in the vocabulary of tokenizer {self.path!r}: "
                "set it to a token string that the file defines."
            )
        return token_id

    def encode(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # encode_batch runs in parallel in the Rust library, which matters for large corpora.
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decodes ids, dropping BOS, EOS, the file's special tokens and out-of-range ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = (ids >= 0) & (ids < self.vocab_size) & (ids != self.bos_id) & (ids != self.eos_id)
        return self._tokenizer.decode(ids[keep].tolist(), skip_special_tokens=True)


def _load_tokenizer_file(path: str) -> tokenizers.Tokenizer:
    """Loads a tokenizer.json, turning the library's generic errors into errors naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Tokenizer file {path!r} (data.tokenizer) not found: set data.tokenizer to "
            f"{BYTE_TOKENIZER!r} or to the path of a Hugging Face tokenizer.json."
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        json.loads(text)
    # UnicodeDecodeError and json.JSONDecodeError are both ValueErrors.
    except ValueError as err:
        raise ValueError(
            f"Tokenizer file {path!r} (data.tokenizer) is not valid UTF-8 JSON: {err}. "
            f"{_TOKENIZER_FIX}"
        ) from err
    try:
        return tokenizers.Tokenizer.from_str(text)
    # The Rust library raises a bare Exception for every parse error.
    except Exception as err:  # pylint: disable=broad-exception-caught
        raise ValueError(
            f"Tokenizer file {path!r} (data.tokenizer) is not a valid Hugging Face "
            f"tokenizer.json: {err}. {_TOKENIZER_FIX}"
        ) from err


def make_tokenizer(data_config: ml_collections.ConfigDict) -> Tokenizer:
    """Builds the tokenizer that `data_config.tokenizer` names."""
    name = data_config.get("tokenizer", BYTE_TOKENIZER)
    if name == BYTE_TOKENIZER:
        return ByteTokenizer()
    tokenizer = HFTokenizer(
        name, data_config.get("bos_token", None), data_config.get("eos_token", None)
    )
    logging.info(
        "Loaded tokenizer %s: vocab_size=%d bos_id=%d eos_id=%d",
        name,
        tokenizer.vocab_size,
        tokenizer.bos_id,
        tokenizer.eos_id,
    )
    return tokenizer


def vocab_size(data_config: ml_collections.ConfigDict) -> int:
    """Returns the vocabulary size, without reading any file for the byte tokenizer.

    Model code calls this to build parameters abstractly, where reading files would be wasted.
    """
    if data_config.get("tokenizer", BYTE_TOKENIZER) == BYTE_TOKENIZER:
        return ByteTokenizer.vocab_size
    return make_tokenizer(data_config).vocab_size
