"""scripts/bench_memory.py: the table it prints, and FSDP dividing the train state per device."""

import os
import subprocess
import sys

from conftest import REPO


def run_bench(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, str(REPO / "scripts" / "bench_memory.py"), *args]
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


def table(stdout: str) -> dict[tuple[str, str], dict[str, float]]:
    """Parse the markdown table into {(kind, mesh): {column: value}}."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[(cells[0], cells[1])] = {
            name: float(value) for name, value in zip(header[2:], cells[2:])
        }
    return rows


def test_fsdp_divides_train_state():
    result = run_bench(
        f"--config={REPO / 'configs' / 'tiny.py'}", "--kinds=mha,mla", "--meshes=8,1,1;1,8,1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 cpu devices" in result.stdout
    rows = table(result.stdout)
    assert set(rows) == {("mha", "8,1,1"), ("mha", "1,8,1"), ("mla", "8,1,1"), ("mla", "1,8,1")}
    data_parallel, fsdp = rows[("mha", "8,1,1")], rows[("mha", "1,8,1")]
    # Every MHA parameter has an `embed` dim, so FSDP over 8 devices keeps an eighth of it.
    assert abs(fsdp["state (MiB)"] - data_parallel["state (MiB)"] / 8) < 0.01
    # MLA's latent up-projections have no `embed` dim; the rules split their latent dim instead.
    assert (
        abs(rows[("mla", "1,8,1")]["state (MiB)"] - rows[("mla", "8,1,1")]["state (MiB)"] / 8)
        < 0.01
    )
    for row in rows.values():
        # The old state is donated, so the new one is written into its buffers.
        assert row["aliased (MiB)"] == row["state (MiB)"]
        assert row["temp (MiB)"] > 0


def test_rejects_mesh_larger_than_devices():
    result = run_bench("--kinds=mha", "--meshes=16,1,1")
    assert result.returncode != 0
    assert "needs 16 devices; there are 8" in result.stderr
