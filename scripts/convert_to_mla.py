"""Convert a trained MHA, GQA or MQA workdir into an MLA workdir that train.py continues.

  python scripts/convert_to_mla.py --workdir=SRC --out=DST --kv_lora_rank=R --qk_rope_head_dim=P \
      [--rope_pair_criterion=calibration --calibration_windows=32]

Each KV head keeps RoPE on the P/2 pairs of its dims with the largest query and key 2-norms
(mla_jax.conversion.rope_pairs). Its other key dims and its values are factored jointly by SVD
through a latent of R. DST then contains a checkpoint at step 0 and its config. Continue with

  python train.py --config=DST/config.py --workdir=DST --config.num_train_steps=STEPS
  python eval.py  --config=DST/config.py --workdir=DST

docs/conversion.md describes the method and the results.
"""

from absl import app, flags, logging

from mla_jax.conversion import convert_workdir
from mla_jax.conversion.rope_pairs import CRITERIA
from mla_jax.training.metrics import quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", None, "Source workdir: a finished train.py run.")
_OUT = flags.DEFINE_string("out", None, "Target workdir for the MLA model; must not hold a run.")
_RANK = flags.DEFINE_integer("kv_lora_rank", None, "Width of the cached KV latent.")
_ROPE_DIM = flags.DEFINE_integer(
    "qk_rope_head_dim", None, "Dims per KV head that keep RoPE; even, at most the head dim."
)
_CRITERION = flags.DEFINE_enum(
    "rope_pair_criterion",
    "calibration",
    list(CRITERIA),
    "Where the pair norms come from: training windows through the model, or the weights alone.",
)
_WINDOWS = flags.DEFINE_integer(
    "calibration_windows", 32, "Training windows (of the run's seq_len) for the calibration."
)
flags.mark_flags_as_required(["workdir", "out", "kv_lora_rank", "qk_rope_head_dim"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _WINDOWS.value < 1:
        raise app.UsageError(f"--calibration_windows={_WINDOWS.value} must be at least 1.")
    quiet_library_logs()
    record = convert_workdir(
        _WORKDIR.value,
        _OUT.value,
        _RANK.value,
        _ROPE_DIM.value,
        _CRITERION.value,
        _WINDOWS.value,
    )
    logging.info(
        "KV cache per token and layer: %d elements in the source, %d after conversion.",
        record["source_kv_cache_elements_per_token_per_layer"],
        record["kv_cache_elements_per_token_per_layer"],
    )


if __name__ == "__main__":
    app.run(main)
