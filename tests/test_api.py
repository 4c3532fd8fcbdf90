"""The Python API does what the command line does, with the same errors."""

from __future__ import annotations

import pytest

import edgeslim
from conftest import TINY_RECIPE, tiny_recipe_dict, write_recipe
from edgeslim.errors import EdgeslimError


def test_run_returns_the_report_the_verdict_and_the_release(copy_run):
    result = edgeslim.run(TINY_RECIPE, out=copy_run)  # everything cached: a rerun of the shared tiny run
    assert isinstance(result, edgeslim.RunResult)
    assert result.exit_code == 0 and result.passed and (result.release_dir / "model.onnx").is_file()
    assert result.report["release"] and {c.budget for c in result.checks} >= {"floor.release", "accuracy_drop"}


def test_load_recipe_and_bad_input_raise_one_line(tmp_path):
    recipe = edgeslim.load_recipe(TINY_RECIPE)
    assert edgeslim.load_recipe(recipe) is recipe and recipe.name == "tiny-test"
    bad = tiny_recipe_dict()
    bad["data"]["labels"] = ["negative", "neutral", "positive", "sarcastic"]
    with pytest.raises(EdgeslimError, match="which no row of column 'label' has"):
        edgeslim.run(write_recipe(tmp_path, bad), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bench_gives_cells_in_the_reports_format(tiny_run):
    cells = edgeslim.bench([tiny_run[0] / "model" / "model.onnx"], runs=10, warmup=1)
    cell = cells["model"]["x86-64-cpu"]
    assert cell["status"] == "measured" and cell["latency_ms"]["n"] == 10 and "latency_interval_ms" in cell
    with pytest.raises(EdgeslimError, match="--seq-len must be at least 1"):
        edgeslim.bench([tiny_run[0] / "model" / "model.onnx"], seq_len=0)
