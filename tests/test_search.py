"""Hardware-aware search through the real CLI on the tiny recipe: trials share their stages, each
device gets a front, a measured release and a gate; a search killed with SIGKILL resumes; bad input
gets one line and exit 2; the choice rules hold on hand-made fronts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from edgeslim.search.config import SearchConfig, trial_stages
from edgeslim.search.front import budget_misses, choose_release

TINY = yaml.safe_load((REPO / "recipes" / "tiny-test.yaml").read_text())


def search_recipe(folder: Path, trials: int = 3, epochs: int = 3, **search) -> Path:
    """The tiny recipe with a search over student depth and INT8 on/off, for two devices (this
    host, measured; graviton2, predicted)."""
    recipe = json.loads(json.dumps(TINY))
    recipe["name"] = "tiny-search"
    recipe["data"]["source"] = str(REPO / "recipes" / "data" / "tiny-sentiment.csv")
    recipe["stages"][0]["distill"]["epochs"] = epochs
    recipe["devices"] = ["x86-64-cpu", "graviton2"]
    recipe["budgets"]["allow_predicted"] = True  # graviton2 is predicted only
    recipe["search"] = {"trials": trials, "space": {"distill.layers": [{"every": 2}, {"every": 4}],
                                                    "quantize.skip": [False, True]}, **search}
    path = folder / "recipe.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# --- pure parts --------------------------------------------------------------------------------------


def test_trial_values_land_at_their_key_paths_and_skip_drops_a_stage():
    stages = [{"distill": {"layers": {"every": 2}}}, {"export": {}}, {"quantize": {"mode": "dynamic"}}]
    trial = trial_stages(stages, {"distill.layers": [0, 3], "quantize.skip": True, "export.fixed_shape.seq_len": 16})
    assert trial == [{"distill": {"layers": [0, 3]}}, {"export": {"fixed_shape": {"seq_len": 16}}}]
    assert stages[0]["distill"]["layers"] == {"every": 2}  # the recipe's own stages are left alone


def _trials(**quality_size):
    return {n: {"evaluation": {"quality": q, "teacher_quality": 0.9, "size_mb": s,
                               "latency_ms": {"d": {"p50": 1.0, "how": "predicted"}}}}
            for n, (q, s) in quality_size.items()}


def test_release_is_the_most_accurate_front_trial_within_budgets_else_the_fastest():
    trials = {int(k[1:]): v for k, v in _trials(t0=(0.80, 1.0), t1=(0.88, 2.0), t2=(0.90, 4.0)).items()}
    measured = {0: 1.0, 1: 2.0, 2: 5.0}
    chosen = choose_release([0, 1, 2], trials, measured, {"p50": 3.0, "size_mb": None, "accuracy_drop": 0.05})
    assert chosen["trial"] == 1  # trial 2 is more accurate but 5 ms > 3 ms; trial 0 drops 0.10 > 0.05
    none_fit = choose_release([0, 1, 2], trials, measured, {"p50": 0.5, "size_mb": None, "accuracy_drop": None})
    assert none_fit["trial"] == 0 and "p50 1.000 ms > 0.5 ms" in none_fit["reason"]
    assert budget_misses(trials[2]["evaluation"], 5.0, {"p50": 3.0, "size_mb": 3.0, "accuracy_drop": 0.0}) == [
        "p50 5.000 ms > 3.0 ms", "size 4.00 MB > 3.0 MB"]


@pytest.mark.parametrize("space,message", [
    ({}, "space is empty"),
    ({"layers": [1]}, "must be STAGE.KEY"),
    ({"prune.ffn": []}, "non-empty list"),
    ({"quantize.skip": ["no"]}, "skip takes true/false"),
])
def test_bad_search_sections_are_refused(space, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(space=space)


@pytest.mark.parametrize("space,message", [
    ({"prune.ffn": [0.5]}, "stage 'prune' is not in the recipe's stages"),
    ({"distill.layers": ["all"]}, r"space.distill.layers\[0\] = 'all'"),
    ({"quantize.mode": ["int3"]}, r"space.quantize.mode\[0\] = 'int3'"),
])
def test_a_space_that_does_not_fit_the_stages_exits_2_with_one_line(tmp_path, space, message):
    path = search_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["search"]["space"] = space
    path.write_text(yaml.safe_dump(recipe))
    result = run_cli("check", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "search" in lines[0], result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]


def test_bad_search_commands_exit_2_and_write_nothing(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text((REPO / "recipes" / "tiny-test.yaml").read_text().replace(
        "source: data/tiny-sentiment.csv", f"source: {REPO / 'recipes' / 'data' / 'tiny-sentiment.csv'}"))
    cases = [
        (("search", plain, "--out", tmp_path / "a"), "has no search section"),
        (("search", search_recipe(tmp_path / "r"), "--trials", "0", "--out", tmp_path / "b"), "--trials must be at least 1"),
        (("search", search_recipe(tmp_path / "r"), "--storage", "nosuchdb://x", "--out", tmp_path / "c"),
         "cannot open the study"),
        (("search-worker", search_recipe(tmp_path / "r"), "--storage", "postgresql://u:secret@127.0.0.1:1/none",
          "--out", tmp_path / "d"), "u:***@127.0.0.1:1"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
        assert "secret" not in result.stderr
        assert not (Path(args[-1]) / "model").exists() and not (Path(args[-1]) / "trials").exists()


# --- the search end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    result = run_cli("search", search_recipe(folder), "--out", folder / "run", "--quiet")
    assert result.returncode in (0, 1), result.stderr
    return folder / "run", result


def test_search_releases_one_gated_model_per_device(searched):
    out, result = searched
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["kind"] == "search" and len(report["trials"]) == 3
    assert len({json.dumps(t["params"], sort_keys=True) for t in report["trials"]}) == 3  # no trial ran twice
    assert set(report["devices"]) == {"x86-64-cpu", "graviton2"}
    for device, entry in report["devices"].items():
        assert entry["front"] and entry["trial"] in entry["front"]
        assert (out / "model" / device / "model.onnx").is_file()
        device_report = json.loads(Path(entry["report"]).read_text())
        assert [d["name"] for d in device_report["devices"]] == [device]  # gated on its own device
        assert entry["gate"] in ("PASS", "FAIL") and entry["checks"]
    expected = 0 if all(e["gate"] == "PASS" for e in report["devices"].values()) else 1
    assert result.returncode == expected
    for device, how in (("x86-64-cpu", "measured"), ("graviton2", "predicted")):  # graviton2 has no runner here
        front_p50 = report["devices"][device]["front_p50_ms"]
        assert set(front_p50) == {str(n) for n in report["devices"][device]["front"]}
        assert all(v["how"] == how and v["p50"] > 0 for v in front_p50.values()), front_p50
    gated = run_cli("gate", out / "report" / "report.json")  # the search's own report is not a release's
    assert gated.returncode == 2 and "each device's release has its own report" in gated.stderr
    assert run_cli("gate", report["devices"]["x86-64-cpu"]["report"]).returncode == expected_of(report, "x86-64-cpu")
    html = (out / "report" / "report.html").read_text()
    assert html.count("<svg") == 2 and "search front" in html
    assert "## Releases, one per device" in (out / "report" / "report.md").read_text()


def expected_of(report: dict, device: str) -> int:
    return 0 if report["devices"][device]["gate"] == "PASS" else 1


def test_a_device_no_trial_fits_gets_the_fastest_release_and_the_search_exits_1(tmp_path):
    """A p50 budget no trial can meet on x86: the fastest front trial is released there, its gate
    fails and says why, and the search's exit code is 1."""
    path = search_recipe(tmp_path, trials=2)
    recipe = yaml.safe_load(path.read_text())
    recipe["budgets"]["latency_ms"] = {"x86-64-cpu": {"p50": 0.0001}}
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = run_cli("search", path, "--out", out, "--quiet")
    assert result.returncode == 1, result.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    x86 = report["devices"]["x86-64-cpu"]
    assert x86["gate"] == "FAIL" and "no front trial is within the device's budgets" in x86["reason"]
    fastest = min(x86["front"], key=lambda n: x86["front_p50_ms"][str(n)]["p50"])
    assert x86["trial"] == fastest
    assert any(c["budget"] == "latency_ms.p50" and not c["passed"] for c in x86["checks"]), x86["checks"]


def test_trials_share_the_teacher_and_their_common_stages(searched):
    out, _ = searched
    stored = sorted(p.name.rsplit("-", 1)[0] for p in (out / ".stages").iterdir() if not p.name.startswith("."))
    assert stored.count("teacher") == 1 and stored.count("teacher-fp32") == 1
    assert stored.count("distill") <= 2  # two depths in the space: at most two distillations for three trials
    for trial in (out / "trials").iterdir():
        teacher = trial / "stages" / "00-teacher"
        assert teacher.is_symlink() and teacher.resolve().parent == (out / ".stages").resolve()


def test_a_search_killed_with_sigkill_resumes_and_finishes(tmp_path):
    recipe = search_recipe(tmp_path, trials=3, epochs=12)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "edgeslim.cli", "search", str(recipe), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    database = out / "search" / "study.db"
    running = False
    while proc.poll() is None and not running:
        time.sleep(0.1)
        running = database.is_file() and _states(database).get("RUNNING", 0) > 0 and _states(database).get("COMPLETE", 0) >= 1
    assert running, "the search ended before a second trial was running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _states(database).get("RUNNING") == 1  # the killed trial is left running in the study
    result = run_cli("search", recipe, "--out", out)
    assert result.returncode in (0, 1), result.stderr
    assert "resuming: 1 trial(s)" in result.stderr
    assert "[teacher]: cached" in result.stdout  # the teacher (and finished stages) are not run again
    states = _states(database)
    assert states.get("COMPLETE") == 3 and states.get("FAIL") == 1 and not states.get("RUNNING")
    assert len(json.loads((out / "report" / "report.json").read_text())["trials"]) == 3


def test_a_search_asked_for_more_trials_than_its_space_holds_runs_each_once(tmp_path):
    """Four combinations, six trials asked: four distinct trials (a value set the sampler proposes
    again is pruned, not run and not counted)."""
    out = tmp_path / "run"
    result = run_cli("search", search_recipe(tmp_path, trials=6), "--out", out, "--quiet")
    assert result.returncode in (0, 1), result.stderr
    trials = json.loads((out / "report" / "report.json").read_text())["trials"]
    values = [json.dumps(t["params"], sort_keys=True) for t in trials]
    assert len(values) == 4 and len(set(values)) == 4
    assert _states(out / "search" / "study.db").get("COMPLETE") == 4


def _states(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        try:
            return dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        except sqlite3.OperationalError:  # the tables are not created yet
            return {}
