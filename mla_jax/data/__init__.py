"""Data pipeline: documents, tokenizers, token streams, training batches and evaluation windows.

Reads `config.data` (an `ml_collections.ConfigDict`):

- `source`: 'shakespeare' (embedded, fixed split by work), 'text' (local files matched by the globs
  `train_files`, `validation_files`, `test_files`, one document per file) or 'hub'
  (`datasets.load_dataset(hub_name, hub_config, split=<split>_split, data_files=hub_data_files)`,
  one document per row of column `text_field`).
- `tokenizer`: 'byte' (UTF-8 bytes plus BOS and EOS, vocabulary of 258) or the path of a Hugging
  Face tokenizer.json, with `bos_token` and `eos_token` naming tokens of its vocabulary.
- `cache_dir`: optional `datasets` cache folder (None: the `datasets` default).

Each split becomes one stream `[BOS] doc_1 [EOS] ... doc_n [EOS]`. Training packs it into
windows GPT-2 style (`TrainBatches`), and evaluation scores every token after the first once
(`eval_windows`, `eval_batches`). Importing this package sets HF_DATASETS_OFFLINE=1 and
HF_HUB_OFFLINE=1 unless the environment sets them (see `sources`).
"""

# sources comes first so that the offline defaults are set before anything imports `datasets`.
from mla_jax.data.sources import SOURCES, SPLITS, check_utf8, load_documents
from mla_jax.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, make_tokenizer
from mla_jax.data.tokenizers import vocab_size
from mla_jax.data.pipeline import TrainBatches, eval_batches, eval_windows, load_token_stream
from mla_jax.data.pipeline import token_stream, unigram_counts

__all__ = [
    "SOURCES",
    "SPLITS",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TrainBatches",
    "check_utf8",
    "eval_batches",
    "eval_windows",
    "load_documents",
    "load_token_stream",
    "make_tokenizer",
    "token_stream",
    "unigram_counts",
    "vocab_size",
]
