"""Print a sweep's members before running it: sizes, parameter matching, cache, training cost.

  python scripts/plan_ablation.py --config=configs/ablation/shakespeare.py [--peak_tflops=197 --mfu=0.35]

For each member, the table lists the MLP width in the config and the width that
`match_mlp_dim` picks to meet the reference member's parameter count. It also lists the
parameter count and its gap to the reference, the KV cache per token per layer, and the
training FLOPs of one run. With --peak_tflops and --mfu,
also the chip-hours of the whole sweep at that assumed utilization. Models are built
abstractly, so this runs in seconds on any machine. Exits with status 1 when a member is more
than PARAM_TOLERANCE away from the reference, so the widths to freeze are printed next to it.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from mla_jax import cli
from mla_jax.ablation import sweep as S
from mla_jax.config import kv_cache_elements_per_token_per_layer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
_PEAK = flags.DEFINE_float(
    "peak_tflops", 0.0, "Peak chip throughput in TFLOP/s at the compute dtype."
)
_MFU = flags.DEFINE_float("mfu", 0.0, "Assumed model FLOP utilization, in (0, 1].")
flags.mark_flags_as_required(["config"])


def member_rows(sweep) -> list[dict]:
    models = S.member_models(sweep)
    target = S.num_params(models[sweep.reference])
    ref_cache = kv_cache_elements_per_token_per_layer(models[sweep.reference])
    rows = []
    for name, cfg in models.items():
        params = S.num_params(cfg)
        cache = kv_cache_elements_per_token_per_layer(cfg)
        config = S.member_config(sweep, name, sweep.seeds[0])
        rows.append(
            {
                "name": name,
                "kind": cfg.attention,
                "mlp_dim": cfg.mlp_dim,
                "matched": S.match_mlp_dim(cfg, target),
                "params": params,
                "gap": params / target - 1,
                "cache": cache,
                "cache_ratio": cache / ref_cache,
                "flops": S.train_flops(config, cfg, params),
            }
        )
    return rows


def main(argv):
    del argv  # cli.parse_flags rejects positional arguments.
    sweep = _CONFIG.value
    S.check_sweep(sweep)
    rows = member_rows(sweep)
    print(f"Reference member: {sweep.reference}; seeds {tuple(sweep.seeds)}.\n")
    print(
        "| member | kind | mlp_dim | matched mlp_dim | params | vs reference | KV elements / token / layer "
        "| KV vs reference | train FLOPs per run |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['kind']} | {r['mlp_dim']} | {r['matched']} | {r['params']:,} "
            f"| {100 * r['gap']:+.2f}% | {r['cache']:,} | {r['cache_ratio']:.3f} | {r['flops']:.3e} |"
        )
    runs = len(rows) * len(sweep.seeds)
    total = sum(r["flops"] for r in rows) * len(sweep.seeds)
    print(f"\n{runs} runs, {total:.3e} training FLOPs in all.")
    if _PEAK.value > 0 and 0 < _MFU.value <= 1:
        hours = total / (_PEAK.value * 1e12 * _MFU.value) / 3600
        print(
            f"At {_PEAK.value:g} TFLOP/s peak and {_MFU.value:.0%} MFU: {hours:,.1f} chip-hours "
            f"({hours / runs:,.2f} per run)."
        )
    off = [r["name"] for r in rows if abs(r["gap"]) > S.PARAM_TOLERANCE]
    if off:
        print(
            f"\nOff by more than {S.PARAM_TOLERANCE:.0%}: {off}; set their mlp_dim to the matched width."
        )
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
