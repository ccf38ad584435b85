"""Convert one member of an ablation sweep to MLA at several latent widths; write conversion.jsonl.

  python scripts/conversion_sweep.py --config=configs/ablation/shakespeare.py --workdir=DIR \
      [--member=mha --seed=0 --kv_lora_ranks=full,64,32,16 --qk_rope_head_dims=4 \
       --finetune_steps=100 --finetune_learning_rate=1e-3 --finetune_warmup_steps=10]

The source is DIR/runs/<member>/seed_<seed>/, trained here unless an ablation sweep in DIR has
finished it. Each (qk_rope_head_dim, kv_lora_rank) pair is converted into
DIR/conversion/p<P>_r<R>/, evaluated, fine-tuned and evaluated again, and adds one line to
DIR/conversion.jsonl; `full` is the rank where the conversion is exact. Killed at any point,
the same command resumes. scripts/make_report.py --workdir=DIR then draws the conversions as a
second curve on the Pareto plot. docs/conversion.md describes the method and the results.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mla_jax.ablation import model_config
from mla_jax.ablation.sweep import member_config
from mla_jax.conversion.factorize import max_kv_lora_rank
from mla_jax.conversion.rope_pairs import CRITERIA
from mla_jax.conversion.sweep import Calibration, Finetune, run_conversion_sweep
from mla_jax.training.metrics import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (configs/ablation/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: runs/, conversion/, *.jsonl.")
_MEMBER = flags.DEFINE_string("member", "mha", "Source member; its attention must not be mla.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the source run.")
_RANKS = flags.DEFINE_list(
    "kv_lora_ranks", ["full", "64", "32", "16"], "Latent widths; 'full' is the exact rank."
)
_ROPE_DIMS = flags.DEFINE_list("qk_rope_head_dims", ["4"], "RoPE dims kept per KV head; even.")
_STEPS = flags.DEFINE_integer("finetune_steps", 100, "Fine-tune steps after conversion.")
_LEARNING_RATE = flags.DEFINE_float("finetune_learning_rate", 1e-3, "Peak fine-tune rate.")
_WARMUP = flags.DEFINE_integer("finetune_warmup_steps", 10, "Fine-tune warmup steps.")
_CRITERION = flags.DEFINE_enum(
    "rope_pair_criterion", "calibration", list(CRITERIA), "Source of the RoPE pair norms."
)
_WINDOWS = flags.DEFINE_integer("calibration_windows", 32, "Training windows for calibration.")
flags.mark_flags_as_required(["config", "workdir"])


def _sizes(sweep) -> list[tuple[int, int]]:
    """Return the (qk_rope_head_dim, kv_lora_rank) pairs, with 'full' resolved per RoPE dim."""
    source = model_config(member_config(sweep, _MEMBER.value, _SEED.value))
    sizes = []
    try:
        for rope_dim in (int(p) for p in _ROPE_DIMS.value):
            full = max_kv_lora_rank(source.d_model, source.num_kv_heads, source.head_dim, rope_dim)
            sizes += [(rope_dim, full if r == "full" else int(r)) for r in _RANKS.value]
    except ValueError as err:
        raise app.UsageError(
            f"--kv_lora_ranks={','.join(_RANKS.value)} and --qk_rope_head_dims="
            f"{','.join(_ROPE_DIMS.value)} must be integers ('full' allowed for ranks)."
        ) from err
    return sizes


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _STEPS.value < 1 or not 0 <= _WARMUP.value < _STEPS.value:
        raise app.UsageError(
            f"--finetune_steps={_STEPS.value} must be positive and --finetune_warmup_steps="
            f"{_WARMUP.value} in [0, finetune_steps)."
        )
    quiet_library_logs()
    logging.info(
        "JAX %s on %d %s device(s).", jax.__version__, jax.device_count(), jax.default_backend()
    )
    lines = run_conversion_sweep(
        _CONFIG.value,
        _WORKDIR.value,
        _MEMBER.value,
        _SEED.value,
        _sizes(_CONFIG.value),
        Finetune(_STEPS.value, _LEARNING_RATE.value, _WARMUP.value),
        Calibration(_CRITERION.value, _WINDOWS.value),
    )
    print(
        f"{len(lines)} conversions recorded in {_WORKDIR.value}/conversion.jsonl. "
        f"Report: python scripts/make_report.py --workdir={_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main)
