"""The training loop: data, state (fresh or restored), jitted steps, logging, eval, checkpoints.

Metrics of step s are fetched from the device after step s + 1 is dispatched, so the host never
waits for the device inside the loop. Running the same command again resumes from the latest
checkpoint; the data order is a function of the step alone, so no batch is replayed or skipped.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import tqdm
from absl import logging

from mla_jax import data, evaluation
from mla_jax.config import ModelConfig, model_config_from, validate_experiment
from mla_jax.sharding import Partitioner, make_partitioner
from mla_jax.training import checkpoints
from mla_jax.training.guards import FiniteGuard
from mla_jax.training.metrics import MetricWriter
from mla_jax.training.optimizer import make_optimizer
from mla_jax.training.preemption import StopRequest, TrainingInterrupted
from mla_jax.training.workdir import check_saved_config, check_workdir, write_run_records
from mla_jax.training.state import TrainState, create_train_state, model_graphdef, train_step_for


class _Throughput:
    """Tokens per second between two logged steps."""

    def __init__(self, step: int, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.reset(step)

    def reset(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps, elapsed = max(step - self.step, 1), max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return {
            "tokens_per_second": steps * self.tokens_per_step / elapsed,
            "step_time_seconds": elapsed / steps,
        }


def _start_state(
    config, model_cfg: ModelConfig, tx, manager, partitioner: Partitioner
) -> TrainState:
    if manager.latest_step() is None:
        logging.info("Starting from scratch with seed %d.", config.seed)
        return create_train_state(model_cfg, tx, config.seed, partitioner)
    target = checkpoints.sharded_abstract_state(model_cfg, tx, partitioner)
    return checkpoints.restore(manager, target, model_cfg)


def _log(
    writer: MetricWriter, step: int, metrics: dict, throughput: _Throughput, extra=None
) -> None:
    """Fetch the metrics of `step` (blocking until it is done) and write them with throughput.

    `extra` scalars are added to the record; throughput figures in it replace the measured ones.
    """
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    scalars.update(throughput.measure(step))
    scalars.update(extra or {})
    scalars["tokens_seen"] = step * throughput.tokens_per_step
    writer.write(step, scalars)


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change=False) -> TrainState:
    """Train the model of `config` in `workdir` up to `config.num_train_steps`.

    Everything is checked before the workdir is created. Resuming with other model, data, seed,
    sequence length or batch settings than the workdir's run is rejected unless
    `allow_config_change`.
    """
    workdir = check_workdir(workdir)
    check_saved_config(workdir, config, allow_change=allow_config_change)
    tokenizer = data.make_tokenizer(config.data)
    model_cfg = model_config_from(config.model, tokenizer.vocab_size)
    validate_experiment(config, model_cfg)
    batches = data.TrainBatches(
        data.load_token_stream(config.data, "train", tokenizer),
        config.seq_len,
        config.batch_size,
        config.seed,
    )
    val_windows = None
    if config.eval_every:
        val_stream = data.load_token_stream(config.data, "validation", tokenizer)
        val_windows = data.eval_windows(val_stream, config.seq_len)

    partitioner = make_partitioner(config)
    os.makedirs(workdir, exist_ok=True)
    tx = make_optimizer(config)
    manager = checkpoints.make_manager(workdir, config, for_training=True)
    state = _start_state(config, model_cfg, tx, manager, partitioner)
    if jax.process_index() == 0:
        write_run_records(workdir, config, int(state.step))
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    loop = _Loop(config, model_cfg, partitioner, manager, writer)
    try:
        with StopRequest() as stop:
            state = loop.run(state, batches, val_windows, stop)
    finally:
        writer.close()
        manager.wait_until_finished()
        manager.close()
    return state


class _Loop:
    """The steps of one run, with what they share: compiled functions, sinks, checkpoints."""

    def __init__(self, config, model_cfg, partitioner, manager, writer):
        self.config, self.model_cfg, self.partitioner = config, model_cfg, partitioner
        self.manager, self.writer = manager, writer
        self.train_step, shardings = train_step_for(config, model_cfg, partitioner)
        graphdef = model_graphdef(model_cfg)
        self.eval_loss_fn = evaluation.make_loss_fn(graphdef, partitioner, shardings.params)
        self.rows = partitioner.process_rows(config.batch_size)
        self.guard = FiniteGuard(manager)

    def save(self, state: TrainState) -> None:
        self.guard.check()
        checkpoints.save(self.manager, state, self.model_cfg)

    def log(self, step: int, metrics: dict, throughput: _Throughput, extra=None) -> None:
        self.guard.check(upto=step)
        _log(self.writer, step, metrics, throughput, extra)

    def batch(self, batches: data.TrainBatches, step: int) -> dict:
        local = batches.batch_at(step, self.rows)
        return self.partitioner.place_batch(local, self.config.batch_size)

    def validate(self, params, val_windows) -> dict:
        config = self.config
        scores = evaluation.score_windows(
            self.eval_loss_fn,
            params,
            val_windows,
            config.eval_batch_size,
            config.train_eval_max_windows,
            self.partitioner,
        )
        return {"val_loss": scores["loss"], "val_perplexity": scores["perplexity"]}

    def run(self, state: TrainState, batches, val_windows, stop: StopRequest) -> TrainState:
        """Train from state.step to num_train_steps; on a stop request, save and raise."""
        config = self.config
        total, first = config.num_train_steps, int(state.step)
        if first >= total:
            logging.info("Step %d reached num_train_steps=%d: nothing to train.", first, total)
        throughput = _Throughput(first, config.batch_size * config.seq_len)
        pending = None
        progress = tqdm.tqdm(
            total=total, initial=first, desc="train", unit="step", disable=jax.process_index() != 0
        )
        for step in range(first, total):
            state, metrics = self.train_step(state, self.batch(batches, step))
            done = step + 1
            self.guard.add(done, metrics.pop("finite"))
            if step == first:
                # Wait once, so that compilation time stays out of the throughput figures.
                jax.block_until_ready(metrics)
                throughput.reset(done)
            if pending is not None:
                self.log(*pending, throughput)
            pending = (done, metrics) if done % config.log_every == 0 or done == total else None
            progress.update(1)
            evaluate_now = val_windows is not None and done % config.eval_every == 0
            save_now = config.checkpoint_every and done % config.checkpoint_every == 0
            if evaluate_now or save_now:
                # Both wait for the device anyway: this step's record is written now, with the
                # validation scores, and its timing excludes the evaluation and the save.
                extra = {}
                if evaluate_now:
                    jax.block_until_ready(metrics)
                    extra = {**throughput.measure(done), **self.validate(state.params, val_windows)}
                if evaluate_now or pending is not None:
                    self.log(done, metrics, throughput, extra)
                    pending = None
                if save_now:
                    self.save(state)
                throughput.reset(done)
            if stop.should_stop(done):
                self.stop(state, pending, throughput, stop.signum)
        if pending is not None:
            self.log(*pending, throughput)
        progress.close()
        if self.manager.latest_step() != int(state.step):
            self.save(state)
        return state

    def stop(self, state: TrainState, pending, throughput, signum: int):
        """Log what is pending, save the current step (unless just saved) and raise."""
        if pending is not None:
            self.log(*pending, throughput)
        step = int(state.step)
        if self.manager.latest_step() != step:
            self.save(state)
        self.manager.wait_until_finished()
        raise TrainingInterrupted(step, signum)
