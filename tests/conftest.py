"""Shared test set-up: offline Hugging Face libraries, float32 matmuls, config loading."""

import importlib.util
import os
import pathlib

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Eight fake CPU devices, so that sharding runs on real meshes. Set before jax is imported;
# subprocesses started by tests inherit it. Tests that need one device ask for it explicitly.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Exact float32 matmuls, so that tight tolerances hold on every backend.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((REPO / "configs").rglob("*.py"))


def load_config_module(path):
    spec = importlib.util.spec_from_file_location(f"config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CompileCounter:
    """Counts XLA compilations while active, through jax.monitoring."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._record)

    def _record(self, event: str, duration: float, **kwargs):
        self.count += event == self.EVENT


@pytest.fixture(scope="session")
def tiny_config():
    """Return get_config(kind) of configs/tiny.py."""
    return load_config_module(REPO / "configs" / "tiny.py").get_config
