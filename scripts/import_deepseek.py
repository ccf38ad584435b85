"""Import a Hugging Face DeepSeek-V2, V2-Lite or V3 checkpoint folder into a workdir.

  python scripts/import_deepseek.py --hf_dir=PATH/TO/MODEL --workdir=runs/deepseek
  python eval.py --config=runs/deepseek/config.py --workdir=runs/deepseek

The folder needs config.json and the safetensors weights; a tokenizer.json, if present, becomes
the config's tokenizer. Checkpoints with MoE layers are rejected unless --allow_moe_layers is
set, because their MoE MLPs are not imported (see docs/interop.md).
"""

from absl import app, flags, logging

from mla_jax.interop.deepseek import import_checkpoint
from mla_jax.interop.workdir import CONFIG_FILE, experiment_config, write_workdir

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Folder with config.json and *.safetensors.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory to write the checkpoint into.")
_ALLOW_MOE_LAYERS = flags.DEFINE_bool(
    "allow_moe_layers",
    False,
    "Write the checkpoint even if MoE layers were skipped. Their blocks then apply attention "
    "only, so the model's outputs differ from the original's.",
)
flags.mark_flags_as_required(["hf_dir", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = import_checkpoint(_HF_DIR.value)
    config = experiment_config(_HF_DIR.value)
    workdir = write_workdir(result, config, _WORKDIR.value, _ALLOW_MOE_LAYERS.value)
    logging.info(
        "Evaluate with: python eval.py --config=%s/%s --workdir=%s", workdir, CONFIG_FILE, workdir
    )


if __name__ == "__main__":
    app.run(main)
