"""A run from scratch repeats exactly: two runs of the same recipe into empty folders give
byte-identical stage outputs, baselines and release, except files a stage declares nondeterministic
(with the reason) in its manifest."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli, tiny_recipe_dict, write_recipe


def _folders(run: Path) -> list[Path]:
    return [*sorted((run / "stages").glob("[0-9]*")), *sorted((run / "baselines").iterdir()), run / "model"]


def test_two_runs_from_scratch_are_byte_identical(tmp_path):
    recipe = tiny_recipe_dict()
    recipe["stages"] = [{"distill": {"layers": {"every": 2}, "epochs": 1, "lr": 0.001}},
                        {"vocab": {"sources": ["train"]}}, {"export": {}}, {"quantize": {"mode": "dynamic"}},
                        {"bundle": {}}]
    path = write_recipe(tmp_path, recipe)
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        result = run_cli("run", path, "--out", run, "--quiet")
        assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    compared = 0
    for first, second in zip(_folders(runs[0]), _folders(runs[1])):
        manifest = json.loads((first / "manifest.json").read_text())
        other = json.loads((second / "manifest.json").read_text())
        excluded = set(manifest.get("nondeterministic_files") or {})
        for name, digest in manifest["files"].items():
            if name not in excluded and name != "README.md":  # the card carries the run's own timings
                assert other["files"][name]["sha256"] == digest["sha256"], f"{first.name}/{name} differs"
                compared += 1
    assert compared > 20
    bundle = json.loads((runs[0] / "model" / "manifest.json").read_text())
    assert "model.ort" in bundle["nondeterministic_files"] and bundle["nondeterministic_files"]["model.ort"]
