"""scripts/cache_table.py: published cache sizes and the project's configs."""

import importlib.util
import os
import pathlib

import pytest

from mla_jax.config import kv_cache_bytes_per_token, kv_cache_elements_per_token_per_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache_table():
    spec = importlib.util.spec_from_file_location(
        "cache_table", os.path.join(ROOT, "scripts", "cache_table.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deepseek_v2_caches_576_elements_against_32768(cache_table):
    models = cache_table.published_models()
    assert kv_cache_elements_per_token_per_layer(models["DeepSeek-V2"]) == 576
    assert kv_cache_elements_per_token_per_layer(models["DeepSeek-V2 heads as MHA"]) == 32768


@pytest.mark.parametrize(
    "name, elements",
    [
        ("DeepSeek-V2-Lite", 576),
        ("DeepSeek-V3", 576),
        ("Llama-2-7B", 8192),
        ("Llama-3-8B", 2048),
        ("Mistral-7B", 2048),
    ],
)
def test_published_models_elements(cache_table, name, elements):
    assert kv_cache_elements_per_token_per_layer(cache_table.published_models()[name]) == elements


def test_bytes_cover_every_layer(cache_table):
    cfg = cache_table.published_models()["DeepSeek-V2"]
    assert kv_cache_bytes_per_token(cfg, "bfloat16") == 576 * 60 * 2


def test_table_lists_every_project_config(cache_table):
    configs_dir = os.path.join(ROOT, "configs")
    models = cache_table.project_models(configs_dir)
    paths = sorted(pathlib.Path(configs_dir).glob("*.py"))
    with_get_config = [path for path in paths if "def get_config" in path.read_text()]
    assert len(models) == 4 * len(with_get_config)
    table = cache_table.markdown_table(models)
    assert all(f"| {name} |" in table for name in models)
