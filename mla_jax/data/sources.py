"""Document sources: the embedded Shakespeare corpus, local text files, or a Hugging Face data set.

`load_documents(data_config, split)` returns the documents of one split as a list of strings.
All three sources go through Hugging Face `datasets`:

- 'shakespeare': the fixed split by work of `shakespeare.py`, one document per work.
- 'text': the files matched by the globs in `data.<split>_files` (a comma-separated string or a
  list), one document per file, in sorted path order. Files must be UTF-8, and line endings
  become '\\n' because the `datasets` text builder reads in Python's universal-newline mode.
- 'hub': `datasets.load_dataset(data.hub_name, data.hub_config, split=data.<split>_split,
  data_files=data.hub_data_files)`, one document per row, taken from column `data.text_field`.
  Data sets that store one line per row (wikitext) therefore get one document per line.

Empty documents ('') are dropped in every source, because they would only add an EOS token.
Streaming data sets are not supported: every split is loaded into memory.

Importing this module sets HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 unless the environment
already sets them, because training machines may have no network and `datasets` would otherwise
wait on connection attempts. Set them to 0 to download from the Hub.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=wrong-import-position
import codecs
import glob
import logging
from typing import Sequence

import datasets
import ml_collections

from mla_jax.data import shakespeare

SOURCES = ("shakespeare", "text", "hub")
SPLITS = ("train", "validation", "test")
_UTF8_CHUNK_BYTES = 1 << 24


def load_documents(data_config: ml_collections.ConfigDict, split: str) -> list[str]:
    """Loads the non-empty documents of `split` from the source that `data_config.source` names."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: expected one of {list(SPLITS)}.")
    source = data_config.get("source", "shakespeare")
    if source == "shakespeare":
        dataset = _load_shakespeare(split)
        text_field = "text"
    elif source == "text":
        dataset = _load_text_files(data_config, split)
        text_field = "text"
    elif source == "hub":
        dataset = _load_hub(data_config, split)
        text_field = _checked_text_field(data_config, dataset)
    else:
        raise ValueError(f"Unknown data.source={source!r}: expected one of {list(SOURCES)}.")
    documents = _checked_documents(
        list(dataset[text_field]), split, source, _split_origin(data_config, split)
    )
    logging.info(
        "Loaded split %s from source %s: %d documents, %d characters",
        split,
        source,
        len(documents),
        sum(len(doc) for doc in documents),
    )
    return documents


def _load_shakespeare(split: str) -> datasets.Dataset:
    names, texts = shakespeare.load_works(split)
    return datasets.Dataset.from_dict({"name": list(names), "text": texts})


def _load_text_files(data_config: ml_collections.ConfigDict, split: str) -> datasets.Dataset:
    field = f"{split}_files"
    paths = _match_files(data_config.get(field, None), field)
    for path in paths:
        check_utf8(path)
    return datasets.load_dataset(
        "text",
        data_files=paths,
        sample_by="document",
        split="train",
        cache_dir=data_config.get("cache_dir", None),
    )


def _match_files(patterns: str | Sequence[str] | None, field: str) -> list[str]:
    """Returns the sorted files matched by a comma-separated string or a sequence of globs."""
    if not patterns:
        raise ValueError(
            f'data.{field} is not set: set it to a glob of text files, e.g. "/data/train/*.txt".'
        )
    pattern_list = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    paths = set()
    for pattern in pattern_list:
        pattern = os.path.expanduser(pattern.strip())
        matched = [path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path)]
        if not matched:
            raise FileNotFoundError(
                f"The glob {pattern!r} in data.{field}={patterns!r} matches no file: "
                "fix the pattern or create the files."
            )
        paths.update(os.path.abspath(path) for path in matched)
    return sorted(paths)


def check_utf8(path: str, chunk_bytes: int = _UTF8_CHUNK_BYTES) -> None:
    """Raises ValueError naming the byte offset of the first invalid UTF-8 byte in `path`.

    `datasets` would fail on such a file with an error that names neither the file nor the offset.
    The file is read in chunks so that large files do not need to fit in memory twice.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed_bytes = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            # The decoder keeps the bytes of a character cut at the chunk end and prepends them
            # to the next chunk, so an error offset counts from the start of those kept bytes.
            kept_bytes = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                offset = fed_bytes - kept_bytes + err.start
                raise ValueError(
                    f"File {path!r} is not valid UTF-8 text: invalid byte at offset {offset} "
                    f"({err.reason}). Convert it to UTF-8 or remove it from the glob."
                ) from err
            if not chunk:
                return
            fed_bytes += len(chunk)


def _load_hub(data_config: ml_collections.ConfigDict, split: str) -> datasets.Dataset:
    name = data_config.get("hub_name", None)
    if not name:
        raise ValueError(
            "data.hub_name is not set: set it to a data set name, a builder "
            "such as 'json' or 'parquet' with data.hub_data_files, or a local folder."
        )
    hub_config = data_config.get("hub_config", None)
    split_field = f"{split}_split"
    split_name = data_config.get(split_field, split)
    data_files = data_config.get("hub_data_files", None)
    if isinstance(data_files, ml_collections.ConfigDict):
        data_files = data_files.to_dict()
    try:
        return datasets.load_dataset(
            name,
            hub_config,
            split=split_name,
            data_files=data_files,
            cache_dir=data_config.get("cache_dir", None),
        )
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        context = (
            f"Failed to load split {split_name!r} (data.{split_field}) of data set {name!r} "
            f"(data.hub_name, data.hub_config={hub_config!r}, "
            f"data.hub_data_files={data_files!r}): {err}"
        )
        if isinstance(err, ConnectionError):
            raise ConnectionError(
                f"{context}. The data set is not in the local cache and HF_DATASETS_OFFLINE="
                f"{os.environ.get('HF_DATASETS_OFFLINE')}: download it once with "
                "HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0, or point data.hub_name at local files."
            ) from err
        # The base class, because subclasses of `datasets` may take other constructor arguments.
        base = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise base(context) from err


def _checked_text_field(data_config: ml_collections.ConfigDict, dataset: datasets.Dataset) -> str:
    text_field = data_config.get("text_field", "text")
    if text_field not in dataset.column_names:
        raise ValueError(
            f"data.text_field={text_field!r} is not a column of data set "
            f"{data_config.get('hub_name', None)!r}: set it to one of {dataset.column_names}."
        )
    return text_field


def _split_origin(data_config: ml_collections.ConfigDict, split: str) -> tuple[str, str]:
    """Return the config fields that choose the documents of `split`, bare and with values."""
    source = data_config.get("source", "shakespeare")
    if source == "text":
        field = f"data.{split}_files"
        return field, f"{field}={data_config.get(f'{split}_files', None)!r}"
    if source == "hub":
        split_name = data_config.get(f"{split}_split", split)
        return (
            f"data.hub_name or data.{split}_split",
            f"data.hub_name={data_config.get('hub_name', None)!r}, "
            f"data.{split}_split={split_name!r}",
        )
    return "data.source", f"data.source={source!r}"


def _checked_documents(texts: list, split: str, source: str, origin: tuple[str, str]) -> list[str]:
    """Drops empty documents and raises if none with visible text remains.

    `origin` contains the config fields that chose the documents, bare and with their values.
    """
    documents = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"Row {row} of split {split} (source {source}) is {type(text).__name__}, "
                "not a string: choose a text column with data.text_field."
            )
        if text:
            documents.append(text)
    dropped = len(texts) - len(documents)
    if dropped:
        logging.info("Dropped %d empty documents from split %s (source %s)", dropped, split, source)
    if not any(doc.strip() for doc in documents):
        raise ValueError(
            f"Split {split} of source {source} is empty: {origin[1]} gives {len(texts)} "
            f"documents, and none contains text other than whitespace. Set {origin[0]} to "
            "files or rows with text."
        )
    return documents
