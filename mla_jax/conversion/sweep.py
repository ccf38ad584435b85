"""The conversion sweep: one trained MHA/GQA run, converted to MLA at several sizes, each scored
before and after a short fine-tune.

WORKDIR layout:

- `runs/<member>/seed_<seed>/`: the source run of an ablation sweep member, laid out as
  `scripts/run_ablation.py` lays it out. In an ablation workdir the sweep reuses that run when
  its eval.json is at the last step; otherwise it trains and evaluates it here.
- `conversion/p<P>_r<R>/`: one converted workdir per (qk_rope_head_dim P, kv_lora_rank R).
  `eval_before_finetune.json` is its evaluation at step 0, `eval.json` the one after fine-tuning.
- `conversion/source_finetuned/`: the control, the source itself restarted at step 0 with a
  fresh optimizer and fine-tuned the same way. It separates what conversion costs from what
  the extra training steps gain.
- `conversion.jsonl`: one line per finished conversion (`mla_jax.ablation.results` appends it
  whole), which `scripts/make_report.py` draws as a second curve on the Pareto plot.

Killed at any point, the same call resumes: finished conversions (a line in conversion.jsonl)
are skipped, a conversion folder without conversion.json is converted again, and a fine-tune
continues from its latest checkpoint (so does the control). Fine-tuning uses the source's run settings except the
step count, the peak learning rate and the warmup, which `Finetune` sets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import ml_collections
from absl import logging
from flax import nnx

from mla_jax.ablation import results
from mla_jax.ablation.runner import run_directory
from mla_jax.ablation.sweep import member_config
from mla_jax.conversion.convert import (
    RECORD_FILE,
    convert_workdir,
    host_copy,
    read_source_config,
    save_step_zero,
)
from mla_jax.evaluation import evaluate, write_json_atomic
from mla_jax.training import checkpoints
from mla_jax.training.loop import train

BEFORE_FINETUNE_FILE = "eval_before_finetune.json"
CONTROL_DIR = "source_finetuned"


@dataclasses.dataclass(frozen=True)
class Finetune:
    """The schedule of the short fine-tune after conversion (AdamW state starts fresh)."""

    steps: int
    learning_rate: float
    warmup_steps: int


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The criterion and data that choose the kept RoPE pairs (`mla_jax.conversion.rope_pairs`)."""

    criterion: str = "calibration"
    windows: int = 32


def _read_eval(path: str, step: int) -> dict | None:
    """Return the eval.json at `path` if it exists and was computed at `step`."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get("step") == step else None


def source_run(sweep: ml_collections.ConfigDict, workdir: str, member: str, seed: int):
    """Return (run directory, eval.json) of the source, training and evaluating it if needed."""
    config = member_config(sweep, member, seed)
    run_dir = run_directory(workdir, member, seed)
    result = _read_eval(os.path.join(run_dir, "eval.json"), config.num_train_steps)
    if result is None:
        logging.info("Training the source %s seed %d in %s.", member, seed, run_dir)
        train(config, run_dir)
        result = evaluate(config, run_dir)
    return run_dir, result


def finetune_config(out: str, finetune: Finetune) -> ml_collections.ConfigDict:
    """Return the converted workdir's config with the fine-tune schedule."""
    config = read_source_config(out)
    config.num_train_steps = finetune.steps
    config.learning_rate = finetune.learning_rate
    config.warmup_steps = finetune.warmup_steps
    return config


def _start_fresh(out: str, marker: str, create) -> None:
    """Call create() unless `out` is finished (contains `marker`); remove an unfinished one first."""
    if os.path.isdir(out) and not os.path.exists(os.path.join(out, marker)):
        logging.info("Removing the unfinished %s.", out)
        shutil.rmtree(out)
    if not os.path.isdir(out):
        create()


def finetune_and_score(out: str, finetune: Finetune) -> tuple[dict, dict]:
    """Evaluate `out` at step 0, fine-tune it and evaluate again; return both eval.json dicts.

    Each step is skipped when its output exists, so a killed call resumes.
    """
    config = finetune_config(out, finetune)
    before_path = os.path.join(out, BEFORE_FINETUNE_FILE)
    before = _read_eval(before_path, 0)
    if before is None:
        # Written before fine-tuning starts, so the latest checkpoint is still step 0.
        before = evaluate(config, out)
        write_json_atomic(before_path, before)
    after = _read_eval(os.path.join(out, "eval.json"), finetune.steps)
    if after is None:
        train(config, out)
        after = evaluate(config, out)
    return before, after


def restart_source(source_dir: str, out: str) -> None:
    """Write the source's latest parameters into `out` at step 0, with a fresh optimizer."""
    config = read_source_config(source_dir)
    model, _ = checkpoints.load_model(config, source_dir)
    save_step_zero(out, config, model.cfg, host_copy(nnx.state(model, nnx.Param)))


def control_run(source_dir: str, workdir: str, finetune: Finetune) -> dict:
    """Fine-tune the unconverted source like the conversions; return its final eval.json."""
    out = os.path.join(workdir, "conversion", CONTROL_DIR)
    _start_fresh(out, "config.json", lambda: restart_source(source_dir, out))
    return finetune_and_score(out, finetune)[1]


def convert_and_finetune(
    source_dir: str, out: str, rank: int, rope_dim: int, finetune: Finetune, calib: Calibration
) -> tuple[dict, dict, dict]:
    """Convert, then score before and after fine-tuning; return conversion.json and both evals."""
    _start_fresh(
        out,
        RECORD_FILE,
        lambda: convert_workdir(source_dir, out, rank, rope_dim, calib.criterion, calib.windows),
    )
    with open(os.path.join(out, RECORD_FILE)) as f:
        record = json.load(f)
    return (record, *finetune_and_score(out, finetune))


def conversion_line(
    source: dict, control: dict, record: dict, converted: dict, finetuned: dict, finetune
) -> dict:
    """Build one line of conversion.jsonl: sizes, cache, and perplexities before and after.

    `control` is the eval.json of the source fine-tuned without conversion (`control_run`).
    """
    line = {
        "source_workdir": record["source_workdir"],
        "source_attention": record["source_attention"],
        "kv_lora_rank": record["kv_lora_rank"],
        "max_kv_lora_rank": record["max_kv_lora_rank"],
        "qk_rope_head_dim": record["qk_rope_head_dim"],
        "rope_pair_criterion": record["rope_pair_criterion"],
        "factor_relative_error": max(record["factor_relative_error"]),
        "factor_kept_energy": min(record["factor_kept_energy"]),
        "num_params": finetuned["num_params"],
        "source_num_params": source["num_params"],
        "finetune_steps": finetune.steps,
        "finetune_learning_rate": finetune.learning_rate,
        "finetune_warmup_steps": finetune.warmup_steps,
    }
    for key in ("kv_cache_elements_per_token_per_layer", "kv_cache_bytes_per_token"):
        line[key] = finetuned[key]
        line[f"source_{key}"] = source[key]
    line["kv_cache_dtype"] = finetuned["kv_cache_dtype"]
    evals = (
        ("source", source),
        ("source_finetuned", control),
        ("converted", converted),
        ("finetuned", finetuned),
    )
    for prefix, result in evals:
        for key in ("val_perplexity", "test_perplexity", "val_perplexity_cached"):
            if key in result:
                line[f"{prefix}_{key}"] = result[key]
    return line


def _check_same_finetune(line: dict, finetune: Finetune, path: str) -> None:
    recorded = {f.name: line[f"finetune_{f.name}"] for f in dataclasses.fields(Finetune)}
    if recorded != dataclasses.asdict(finetune):
        raise ValueError(
            f"{path} contains P={line['qk_rope_head_dim']} R={line['kv_lora_rank']} "
            f"fine-tuned with {recorded}, not {dataclasses.asdict(finetune)}. Resume with the "
            "same fine-tune flags or use another --workdir."
        )


def run_conversion_sweep(
    sweep: ml_collections.ConfigDict,
    workdir: str,
    member: str,
    seed: int,
    sizes: list[tuple[int, int]],
    finetune: Finetune,
    calib: Calibration = Calibration(),
) -> list[dict]:
    """Convert the source at every (qk_rope_head_dim, kv_lora_rank) in `sizes`; return the lines."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, results.CONVERSION_FILE)
    done = {(r["qk_rope_head_dim"], r["kv_lora_rank"]): r for r in results.read_records(path)}
    source_dir, source = source_run(sweep, workdir, member, seed)
    control = None
    lines = []
    for index, (rope_dim, rank) in enumerate(sizes, 1):
        tag = f"[{index}/{len(sizes)}] P={rope_dim} R={rank}"
        if (rope_dim, rank) in done:
            _check_same_finetune(done[rope_dim, rank], finetune, path)
            logging.info("%s: finished earlier, skipped.", tag)
            lines.append(done[rope_dim, rank])
            continue
        if control is None:
            logging.info("Fine-tuning the source without conversion, the control.")
            control = control_run(source_dir, workdir, finetune)
        out = os.path.join(workdir, "conversion", f"p{rope_dim}_r{rank}")
        parts = convert_and_finetune(source_dir, out, rank, rope_dim, finetune, calib)
        line = conversion_line(source, control, *parts, finetune)
        if jax.process_index() == 0:
            results.append_record(path, line)
        lines.append(line)
        logging.info(
            "%s: val perplexity %.4f (source) -> %.4f (converted) -> %.4f (fine-tuned); "
            "%.4f for the source fine-tuned alike.",
            tag,
            line["source_val_perplexity"],
            line["converted_val_perplexity"],
            line["finetuned_val_perplexity"],
            line["source_finetuned_val_perplexity"],
        )
    return lines
