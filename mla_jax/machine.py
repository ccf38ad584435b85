"""The machine a benchmark runs on: CPU description, idle-CPU waits, and compute ceilings.

The ceilings are what a large jitted matrix product reaches on the default backend, in float32
and in bfloat16 with float32 accumulation, and on GPU and TPU also the vendor's peak for the
device kind (`vendor_peak_flops`).
"""

from __future__ import annotations

import subprocess
import time

import jax
import jax.numpy as jnp

from mla_jax.decoding.roofline import best_seconds

# Dense bfloat16 peaks in FLOP/s from the vendors' datasheets, without structured sparsity.
# Names are matched as substrings of jax.Device.device_kind and the first match counts, so
# the more specific names come first.
VENDOR_BF16_PEAKS = (
    ("TPU v6 lite", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def vendor_peak_flops(device_kind: str) -> float | None:
    """Return the dense bfloat16 peak of a GPU or TPU kind in FLOP/s, or None if not listed."""
    for name, peak in VENDOR_BF16_PEAKS:
        if name in device_kind:
            return peak
    return None


def measure_matmul(dtype, size: int = 4096, repeats: int = 3) -> float:
    """Measure the FLOP/s of a jitted [size, size] @ [size, size] product.

    The operands are of `dtype`; the product accumulates and returns float32.
    """
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)

    def product(x, y):
        return jnp.matmul(x, y, preferred_element_type=jnp.float32)

    return 2 * size**3 / best_seconds(jax.jit(product), a, a, repeats=repeats)


def cpu_description() -> str:
    try:
        lines = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu failed)"
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def cpu_idle_fraction(seconds: float) -> float | None:
    """Return the fraction of CPU time spent idle over `seconds`, or None without /proc/stat."""

    def read_counters() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle_start, total_start = read_counters()
        time.sleep(seconds)
        idle_end, total_end = read_counters()
    except (OSError, ValueError, IndexError):
        return None
    return (idle_end - idle_start) / max(total_end - total_start, 1)


class IdleWaiter:
    """Waits for idle CPUs before measurements, within one time budget for the whole run."""

    def __init__(self, budget_seconds: float, threshold: float = 0.8):
        self.budget, self.threshold = budget_seconds, threshold
        self.idle_starts = self.measurements = 0

    def wait(self) -> None:
        """Sample the CPUs until they are idle, or at most 20 s, or until the budget is spent."""
        self.measurements += 1
        start = time.monotonic()
        while True:
            idle = cpu_idle_fraction(0.5)
            if idle is None:
                return
            if idle >= self.threshold:
                self.idle_starts += 1
                break
            if time.monotonic() - start >= min(self.budget, 20.0):
                break
        self.budget = max(0.0, self.budget - (time.monotonic() - start))
