"""Print text sampled from the latest checkpoint of a workdir.

  python scripts/generate.py --config=configs/shakespeare.py:mla --workdir=runs/mla \
      --prompt="ROMEO:" --max_new_tokens=200 [--temperature=0.8 --top_k=40 --top_p=0.95 --seed=0]

The prompt is encoded after a BOS token, as documents start in training. Generation stops at
EOS (unless --nostop_at_eos) or after max_new_tokens tokens. Temperature 0 is greedy.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mla_jax import cli
from mla_jax.data import make_tokenizer
from mla_jax.decoding import generate
from mla_jax.training.checkpoints import load_model

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, optionally with ':KIND' (mha, gqa, mqa or mla).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding the checkpoints.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue; may be empty.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Sample among the likeliest tokens whose probability reaches p; 1 keeps all."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampler.")
_STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", True, "Stop when the model emits the EOS token.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.parse_flags rejects positional arguments.
    config = _CONFIG.value
    tokenizer = make_tokenizer(config.data)
    model, step = load_model(config, _WORKDIR.value)
    logging.info("Loaded the checkpoint of step %d from %s.", step, _WORKDIR.value)
    prompt = [tokenizer.bos_id, *tokenizer.encode(_PROMPT.value).tolist()]
    result = generate(
        model,
        [prompt],
        _MAX_NEW_TOKENS.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        seed=_SEED.value,
        stop_token=tokenizer.eos_id if _STOP_AT_EOS.value else None,
    )
    new_tokens = result.tokens[0, : result.lengths[0]]
    print(_PROMPT.value + tokenizer.decode(new_tokens))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
