"""`results.jsonl`: one JSON line per finished run, appended whole, read back tolerantly.

A line is the run's eval.json plus `member`, `seed`, `config` and `decode_tokens_per_second`.
It is written with a single `os.write` on a file opened for appending, then fsynced, so a
killed sweep leaves either the whole line or none of it. A torn line (a crash of the machine
mid-write) is skipped with a warning when read, and the next line starts on a fresh line.
"""

from __future__ import annotations

import json
import os

from absl import logging

RESULTS_FILE = "results.jsonl"
# Lines of the conversion sweep (mla_jax.conversion.sweep), in the same format.
CONVERSION_FILE = "conversion.jsonl"


def append_record(path: str, record: dict) -> None:
    """Append `record` as one line: one write call, then fsync (os.write has no buffer to flush)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            line = b"\n" + line  # end a torn line rather than extend it
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"Wrote {written} of {len(line)} bytes of a results line to {path}.")
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_byte(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def read_records(path: str) -> list[dict]:
    """Read the complete records of `path` in file order, or [] when the file does not exist."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning(
                    "Skipping line %d of %s: not complete JSON (a torn write).", number, path
                )
    return records


def records_by_run(records: list[dict]) -> dict[tuple[str, int], dict]:
    """Map (member, seed) -> record. Raise ValueError for a run recorded twice rather than pick one."""
    runs = {}
    for record in records:
        key = (record["member"], int(record["seed"]))
        if key in runs:
            raise ValueError(f"Run {key[0]} seed {key[1]} has two lines in the results file.")
        runs[key] = record
    return runs
