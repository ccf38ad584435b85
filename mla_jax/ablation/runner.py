"""Run a sweep: train, evaluate and time decoding of every member with every seed, resumably.

Runs go in `WORKDIR/runs/<member>/seed_<seed>/` and run in this process, one after another.
With `base.checkpoint_dir` set (for example a gs:// bucket), each run checkpoints to
`<checkpoint_dir>/<member>/seed_<seed>/` instead of its run folder.
Resuming relies only on what is on disk, so a sweep killed at any point continues where it
stopped:

- A run with a line in `results.jsonl` is finished. It is never run or recorded again.
- A run with an eval.json at the last step skips training and evaluation. Only its decode speed
  is measured before its line is written, and its eval.json is left as it is.
- Any other run calls `train()`, which continues from the run's latest checkpoint.

When a run's saved config (its results line or config.json) differs from the sweep's config for
it, the sweep stops and names the differing fields, so one table never mixes two settings.

Runs are ordered seed by seed (every member with the first seed, then the second seed, and so
on), so a sweep stopped early still covers every member.

Runs execute in this process rather than in subprocesses. JAX then starts once per sweep
instead of once per run, and resuming loses nothing: a killed process leaves the same files on
disk as a killed subprocess would, and those files are all that resuming reads.

Not supported: running members in parallel. NOTE: multi-process sweeps have never run. Only
process 0 writes the results file, and decode speed is timed on one device.
"""

from __future__ import annotations

import gc
import json
import os
import time

import jax
import ml_collections
from absl import logging

from mla_jax import data
from mla_jax.ablation import results
from mla_jax.ablation.sweep import check_sweep, config_dict, member_config, member_path
from mla_jax.decoding import generate
from mla_jax.evaluation import evaluate
from mla_jax.training.checkpoints import load_model
from mla_jax.training.loop import train

# Decoding starts from BOS and this text.
DECODE_PROMPT = "ROMEO:"


def run_directory(workdir: str, member: str, seed: int) -> str:
    return os.path.join(workdir, "runs", *member_path(member, seed).split("/"))


def run_plan(sweep: ml_collections.ConfigDict, members=None, seeds=None) -> list[tuple[str, int]]:
    """Return the (member, seed) pairs in run order: seed-major, members in the given order."""
    check_sweep(sweep)
    members = list(sweep.members) if not members else list(members)
    seeds = list(sweep.seeds) if not seeds else [int(s) for s in seeds]
    unknown = sorted(set(members) - set(sweep.members))
    if unknown:
        raise ValueError(f"Unknown members {unknown}. The sweep has {list(sweep.members)}.")
    return [(member, seed) for seed in seeds for member in members]


def run_sweep(
    sweep: ml_collections.ConfigDict, workdir: str, members=None, seeds=None
) -> list[dict]:
    """Run every (member, seed) of the plan that results.jsonl lacks, and return the plan's records."""
    plan = run_plan(sweep, members, seeds)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, results.RESULTS_FILE)
    done = results.records_by_run(results.read_records(path))
    for index, (member, seed) in enumerate(plan, 1):
        tag = f"[{index}/{len(plan)}] {member} seed {seed}"
        config = member_config(sweep, member, seed)
        if (member, seed) in done:
            check_same_config(
                done[member, seed]["config"], config, f"the results line of {member} seed {seed}"
            )
            logging.info("%s: finished earlier, skipped.", tag)
            continue
        record = run_member(sweep, config, run_directory(workdir, member, seed), tag)
        record.update(member=member, seed=seed)
        if jax.process_index() == 0:
            results.append_record(path, record)
        done[member, seed] = record
        logging.info(
            "%s: done, val perplexity %.4f, %.1f decode tokens/s.",
            tag,
            record["val_perplexity"],
            record["decode_tokens_per_second"],
        )
        # Each run compiles its own functions. Drop them so that they do not pile up over a sweep.
        jax.clear_caches()
        gc.collect()
    return [done[key] for key in plan]


def run_member(sweep, config: ml_collections.ConfigDict, run_dir: str, tag: str) -> dict:
    """Train (or resume) and evaluate one run unless its eval.json is final, then time decoding."""
    saved = os.path.join(run_dir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            check_same_config(json.load(f), config, saved)
    result = _final_eval(run_dir, config.num_train_steps)
    if result is None:
        logging.info("%s: training to step %d in %s", tag, config.num_train_steps, run_dir)
        train(config, run_dir)
        logging.info("%s: evaluating", tag)
        result = evaluate(config, run_dir)
    else:
        logging.info("%s: eval.json is at the last step, so only decode speed is measured.", tag)
    logging.info("%s: timing %d decode tokens", tag, sweep.decode_tokens)
    speed = decode_tokens_per_second(
        config, run_dir, sweep.decode_tokens, sweep.decode_batch_size, sweep.decode_repeats
    )
    return {**result, "config": config_dict(config), "decode_tokens_per_second": speed}


def _final_eval(run_dir: str, num_train_steps: int) -> dict | None:
    path = os.path.join(run_dir, "eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get("step") == num_train_steps else None


def check_same_config(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
    """Raise ValueError naming the fields where `saved` differs from `config`."""
    current = config_dict(config)
    differ = sorted(_diff(saved, current))
    if differ:
        raise ValueError(
            f"The config in {where} differs from this sweep's config for that run in {differ}. "
            "Resume with the same config and flags, or start the sweep in another --workdir."
        )


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def decode_tokens_per_second(
    config, run_dir: str, new_tokens: int, batch_size: int, repeats: int
) -> float:
    """Measure greedy decoding of `new_tokens` per row from a short prompt, best of `repeats` calls.

    One untimed call first compiles. The timed span includes the prefill of the short prompt,
    which is small next to the decode steps. Best-of rather than mean, because other work on a
    shared machine only ever slows a call down.
    """
    model, _ = load_model(config, run_dir)
    tokenizer = data.make_tokenizer(config.data)
    prompt = [tokenizer.bos_id, *tokenizer.encode(DECODE_PROMPT).tolist()]
    prompts = [prompt] * batch_size
    generate(model, prompts, new_tokens)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, prompts, new_tokens)  # returns NumPy arrays, so all device work is timed
        best = min(best, time.perf_counter() - start)
    return batch_size * new_tokens / best
