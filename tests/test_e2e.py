"""The tiny recipe end to end through the real CLI: teacher -> distill -> export -> quantize ->
report -> gate; a second run reuses every stage; a run killed mid-stage resumes correctly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import TINY_RECIPE, run_cli

STAGE_DIRS = ["00-teacher", "01-distill", "02-export", "03-quantize"]


def test_run_writes_stages_reports_and_passes_the_gate(tiny_run):
    out, result = tiny_run
    for name in STAGE_DIRS:
        manifest = json.loads((out / "stages" / name / "manifest.json").read_text())
        assert manifest["complete"] is True and manifest["key"]
    for name in ("report.json", "report.md", "report.html", "junit.xml"):
        assert (out / "report" / name).stat().st_size > 0
    release = json.loads((out / "model" / "manifest.json").read_text())
    assert release["stage"] == "quantize" and (out / "model" / "model.onnx").is_file()
    assert "gate: PASS" in result.stdout


def test_report_has_the_contract_fields(tiny_run):
    report = json.loads((tiny_run[0] / "report" / "report.json").read_text())
    names = [a["name"] for a in report["artifacts"]]
    assert report["teacher"] == "teacher-fp32" and "teacher-int8" in names
    assert report["release"] == "03-quantize"
    for artifact in report["artifacts"]:
        assert artifact["size_bytes"] > 0 and 0.0 <= artifact["accuracy"] <= 1.0
        cell = artifact["devices"]["x86-64-cpu"]
        if artifact["kind"] == "onnx":
            assert cell["status"] == "measured"
            lat = cell["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["n"] == 20
        else:
            assert cell["status"] == "skipped" and cell["reason"]
    # INT8 weights are about a quarter of fp32 ones
    sizes = {a["name"]: a["size_bytes"] for a in report["artifacts"]}
    assert sizes["teacher-int8"] < 0.5 * sizes["teacher-fp32"]
    assert sizes["03-quantize"] < sizes["teacher-int8"]


def test_second_run_skips_every_cached_stage(copy_run):
    started = time.time()
    result = run_cli("run", TINY_RECIPE, "--out", copy_run)
    assert result.returncode == 0, result.stderr
    cached = [line for line in result.stdout.splitlines() if ": cached" in line]
    assert len(cached) == 6, result.stdout  # teacher, two baselines, three stages
    assert ": running" not in result.stdout
    assert time.time() - started < 60


def test_killed_stage_is_never_reused_and_the_rerun_finishes(copy_run, tmp_path):
    """SIGKILL the run while distill is writing into its temporary folder: no 01-distill folder may
    look finished; a rerun reuses the cached teacher and completes."""
    import shutil

    import yaml

    from conftest import TINY_DATA, write_recipe

    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe["data"]["source"] = str(TINY_DATA)
    recipe["stages"][0]["distill"]["epochs"] = 40  # long enough to be caught mid-stage on a fast machine
    path = write_recipe(tmp_path, recipe)
    for name in STAGE_DIRS[1:]:
        shutil.rmtree(copy_run / "stages" / name)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "run", str(path), "--out", str(copy_run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not list((copy_run / "stages").glob(".01-distill.tmp-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (copy_run / "stages" / "01-distill").exists(), "the stage finished before it could be killed"
    rerun = run_cli("run", path, "--out", copy_run)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "[teacher]: cached" in rerun.stdout
    # progress: stage N of M, and an overall ETA from the times the first run measured in this folder
    distill = next(line for line in rerun.stdout.splitlines() if line.startswith("[stage 1 of 3] distill: running"))
    assert "ETA " in distill and "for the rest of the run (last times here" in distill, distill
    assert "[baseline] teacher-int8: cached" in rerun.stdout and "[report] measuring" in rerun.stdout
    assert json.loads((copy_run / "stages" / "01-distill" / "manifest.json").read_text())["complete"]
    leftovers = [p.name for p in (copy_run / "stages").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_every_stage_composes_into_a_bundle(tmp_path):
    """distill -> prune -> lowrank -> vocab -> export -> quantize -> bundle on the tiny model: each stage
    shrinks the model, the low-rank student exports, and DIR/model is a complete bundle."""
    from conftest import REPO

    out = tmp_path / "run"
    result = run_cli("run", REPO / "tests" / "recipes" / "tiny-all-stages.yaml", "--out", out, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    params = {a["name"]: a["params"] for a in report["artifacts"]}
    assert params["01-distill"] > params["02-prune"] > params["03-lowrank"] > params["04-vocab"]
    release = next(a for a in report["artifacts"] if a["name"] == report["release"])
    assert release["kind"] == "bundle" and "mobile_usability" in release
    assert release["devices"]["raspberry-pi-5"]["status"] == "predicted"
    # predicted (deterministic) cells are kept for the next run; measured latency never is
    assert list((out / "report" / ".cache").glob("cells-raspberry-pi-5-*.json"))
    assert not list((out / "report" / ".cache").glob("cells-x86-64-cpu-*.json"))
    for name in ("model.onnx", "model.ort", "required_operators.config", "edgeslim.json", "README.md", "tokenizer.json"):
        assert (out / "model" / name).is_file(), name
    assert "p50" in (out / "model" / "README.md").read_text()
    assert [c["name"] for c in next(a for a in report["artifacts"] if a["name"] == "06-quantize")["quantize"]["candidates"]] \
        == ["dynamic-int8", "static-int8"]
    assert "Quantization candidates" in (out / "report" / "report.md").read_text()
