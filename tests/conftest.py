"""Shared fixtures: recipe variants written to temporary folders, and a CLI runner.

Tests build everything from the tiny recipe (a tiny BERT built from a config, trained on a tiny CSV),
so nothing is fetched from a hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "tiny-test.yaml"
TINY_DATA = REPO / "recipes" / "data" / "tiny-sentiment.csv"


def tiny_recipe_dict() -> dict:
    """The tiny recipe as a dict, its data path made absolute so a copy works from any folder."""
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe["data"]["source"] = str(TINY_DATA)
    return recipe


def write_recipe(folder: Path, recipe: dict | str, name: str = "recipe.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int | None = None) -> subprocess.CompletedProcess:
    """Run the real ``edgeslim`` command in a subprocess (as a user would). No time limit by default:
    a run that is still progressing on a loaded machine must not be killed by a fixed timeout."""
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    """Torch on one thread: the same kernels in every process (bit-identical resume) and no fight
    over the shared cores. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def recipe_dict() -> dict:
    return tiny_recipe_dict()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One end-to-end run of the tiny recipe, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    result = run_cli("run", TINY_RECIPE, "--out", out, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


@pytest.fixture
def copy_run(tiny_run, tmp_path) -> Path:
    """A private copy of the shared tiny run, for tests that change or rerun it."""
    target = tmp_path / "run"
    shutil.copytree(tiny_run[0], target)
    return target
