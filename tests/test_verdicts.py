"""Verdicts you can trust: each way a broken, degenerate, divergent or dominated release used to pass
the gate has a test here that a non-zero exit (or a redone stage) now catches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_DATA, TINY_RECIPE, run_cli, tiny_recipe_dict, write_recipe
from edgeslim.artifacts import atomic_dir, file_digests, integrity_problem, run_lock
from edgeslim.report.gate import evaluate_gate, gate_exit_code
from edgeslim.report.release import choose_release
from edgeslim.stats import better_than_rate, binomial_sf, quantile_interval, ratio_interval, wilson_interval


def _report(run: Path) -> dict:
    return json.loads((run / "report" / "report.json").read_text())


def _save(run: Path, report: dict) -> None:
    (run / "report" / "report.json").write_text(json.dumps(report))


def _record(report: dict, name: str) -> dict:
    return next(r for r in report["artifacts"] if r["name"] == name)


# --- 1. integrity ----------------------------------------------------------------------------------


def test_a_truncated_release_is_rebuilt_on_rerun_and_never_published(copy_run):
    release = _report(copy_run)["release"]
    stage = next(p for p in (copy_run / "stages").iterdir() if p.name == release)
    original = (stage / "model.onnx").read_bytes()
    (stage / "model.onnx").write_bytes(original[: len(original) // 2])
    result = run_cli("run", TINY_RECIPE, "--out", copy_run)
    assert result.returncode == 0, result.stderr
    assert f"] {release[3:]}: the cached output cannot be trusted (model.onnx is" in result.stdout
    assert (stage / "model.onnx").stat().st_size == len(original)
    assert integrity_problem(copy_run / "model", _report(copy_run)["release_files"]) is None


def test_gate_refuses_a_release_changed_after_it_was_measured(copy_run):
    model = copy_run / "model" / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[:-10] + b"0123456789")  # same size, other bytes
    result = run_cli("gate", copy_run / "report" / "report.json")
    assert result.returncode == 2
    assert "does not match its recorded sha256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    model.write_bytes(data[: len(data) // 2])
    result = run_cli("gate", copy_run / "report")
    assert result.returncode == 2 and "truncated or replaced" in result.stderr


def test_integrity_problem_names_the_file_and_why(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12345")
    files = file_digests(tmp_path)
    assert integrity_problem(tmp_path, files) is None
    (tmp_path / "a.bin").write_bytes(b"1234")
    assert integrity_problem(tmp_path, files).startswith("a.bin is 4 bytes, but 5 were recorded")
    (tmp_path / "a.bin").unlink()
    assert integrity_problem(tmp_path, files) == "a.bin is missing"
    assert "records no file hashes" in integrity_problem(tmp_path, {})


# --- 2. one run per output folder ------------------------------------------------------------------


def test_a_second_run_on_a_held_folder_exits_2_with_no_wait(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        result = run_cli("run", write_recipe(tmp_path, tiny_recipe_dict()), "--out", out, "--no-wait")
    assert result.returncode == 2
    assert "is in use by another edgeslim run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (out / "stages").exists()  # nothing half-written


def test_a_second_run_waits_for_the_first_and_says_so(tmp_path):
    out = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from edgeslim.artifacts import run_lock\n"
        f"with run_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(3)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.monotonic()
    with run_lock(out, say=said.append):
        waited = time.monotonic() - started
    holder.wait()
    assert said and "waiting for another edgeslim run" in said[0] and waited > 0.5


def test_temp_folders_of_a_live_owner_are_left_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".stage.tmp-{live.pid}-1"
        theirs.mkdir()
        dead = tmp_path / ".stage.tmp-999999999-1"
        dead.mkdir()
        with atomic_dir(tmp_path / "stage") as tmp:
            (tmp / "x").write_text("x")
        assert theirs.is_dir() and not dead.exists() and (tmp_path / "stage" / "x").is_file()
    finally:
        live.kill()
        live.wait()


# --- 3. floors -------------------------------------------------------------------------------------


def test_a_majority_class_release_fails_the_gate(copy_run):
    report = _report(copy_run)
    floor = report["floor"]
    assert floor["kind"] == "majority-class" and 0 < floor["rate"] < 1
    _record(report, report["release"])["accuracy"] = floor["rate"]  # what always guessing it scores
    _save(copy_run, report)
    result = run_cli("gate", copy_run / "report" / "report.json")
    assert result.returncode == 1
    assert "release accuracy" in result.stdout and "NOT significantly better than always guessing" in result.stdout


def test_binomial_floor_statistics():
    assert binomial_sf(0, 10, 0.3) == 1.0 and binomial_sf(11, 10, 0.3) == 0.0
    assert abs(binomial_sf(7, 10, 0.5) - 176 / 1024) < 1e-12
    assert not better_than_rate(0.69, 1000, 0.69)[0]  # the majority rate itself: p about 0.5
    assert better_than_rate(0.75, 1000, 0.69)[0]
    low, high = wilson_interval(69, 100)
    assert low < 0.69 < high and 0 <= low and high <= 1


def test_labels_absent_from_the_data_are_a_check_error(tmp_path):
    recipe = tiny_recipe_dict()
    recipe["data"]["labels"] = ["negative", "neutral", "positive", "sarcastic"]
    result = run_cli("check", write_recipe(tmp_path, recipe))
    assert result.returncode == 2 and "'sarcastic', which no row of column 'label' has" in result.stderr


def test_a_class_with_no_eval_example_is_a_check_error(tmp_path):
    rows = TINY_DATA.read_text().splitlines()
    header, body = rows[0], rows[1:]
    rare = [row for row in body if row.endswith(",positive")][:1]
    kept = [row for row in body if not row.endswith(",positive")] + rare
    data = tmp_path / "data.csv"
    data.write_text("\n".join([header] + kept) + "\n")
    recipe = tiny_recipe_dict()
    recipe["data"].update(source=str(data), eval_size=2)
    result = run_cli("check", write_recipe(tmp_path, recipe))
    assert result.returncode == 2 and "has no example of class(es)" in result.stderr


# --- 4. dominance ----------------------------------------------------------------------------------


def _dominated(report: dict) -> dict:
    """The report with teacher-int8 made as accurate, smaller and as fast as the release."""
    release = _record(report, report["release"])
    int8 = _record(report, "teacher-int8")
    int8["accuracy"] = release["accuracy"]
    int8["size_bytes"] = release["size_bytes"] - 1
    for table in report["comparisons"].values():
        table[report["release"]]["teacher-int8"] = {"ratio": 1.0, "low": 0.95, "high": 1.05, "noise": 0.05}
    return report


def test_a_release_dominated_by_a_baseline_fails_and_names_it(copy_run):
    _save(copy_run, _dominated(_report(copy_run)))
    result = run_cli("gate", copy_run / "report")
    assert result.returncode == 1
    assert "dominance.teacher-int8" in result.stdout and "teacher-int8 is as accurate" in result.stdout


def test_release_best_publishes_the_dominating_baseline(copy_run):
    report = _dominated(_report(copy_run))
    choice = choose_release(report, "best")
    assert choice["chosen"] != report["release"] and choice["chosen"] in choice["passing"]
    assert "fastest (then smallest) candidate" in choice["reason"]
    assert gate_exit_code(evaluate_gate({**report, "release": choice["chosen"]})) == 0
    assert choose_release(_report(copy_run), "best")["chosen"] == _report(copy_run)["release"]


def test_a_real_run_with_release_best_records_its_choice(tmp_path):
    recipe = tiny_recipe_dict()
    recipe["release"] = "best"
    out = tmp_path / "run"
    result = run_cli("run", write_recipe(tmp_path, recipe), "--out", out, "--quiet")
    report = _report(out)
    assert report["release_choice"]["mode"] == "best" and report["release"] in report["release_choice"]["passing"]
    assert result.returncode == 0, result.stderr


# --- 5. parity -------------------------------------------------------------------------------------


def _with_emulated_device(report: dict, device_accuracy: float, top1: float) -> dict:
    report["devices"].append({"name": "arm-board", "access": "qemu-arm", "threads": 1, "description": ""})
    cell = {"status": "emulated", "latency_ms": None, "device_accuracy": device_accuracy, "host_accuracy": 0.75,
            "top1_agreement": top1, "parity_examples": 64}
    _record(report, report["release"])["devices"]["arm-board"] = cell
    return report


def test_an_emulated_device_that_scores_differently_fails_the_gate(copy_run):
    report = _report(copy_run)
    ok = evaluate_gate(_with_emulated_device(json.loads(json.dumps(report)), 0.75, 1.0))
    assert [c.passed for c in ok if c.budget == "parity"] == [True]
    bad = evaluate_gate(_with_emulated_device(json.loads(json.dumps(report)), 0.72, 0.95))
    parity = [c for c in bad if c.budget == "parity"]
    assert not parity[0].passed and "3.00 points" in parity[0].detail and gate_exit_code(bad) == 1
    unchecked = _with_emulated_device(json.loads(json.dumps(report)), 0.75, 1.0)
    _record(unchecked, unchecked["release"])["devices"]["arm-board"] = {"status": "skipped", "reason": "no qemu"}
    assert not [c for c in evaluate_gate(unchecked) if c.budget == "parity"][0].passed


def test_task_parity_says_which_side_is_off():
    from edgeslim.targets.runners.parity import task_parity

    source = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])]
    host = [np.array([[0.2, 0.9]]), np.array([[0.0, 1.0]])]  # the host side flipped the first example
    device = [np.array([[0.98, 0.0]]), np.array([[0.0, 1.02]])]
    figures = task_parity(host, device, source, labels=[0, 1])
    assert figures["device_accuracy"] == 1.0 and figures["host_accuracy"] == 0.5
    assert figures["host_rel_diff_vs_fp32"] > 0.5 > figures["device_rel_diff_vs_fp32"]


# --- 6. INT8 on every ISA --------------------------------------------------------------------------


@pytest.mark.parametrize("flags, saturates", [
    ("fpu avx avx2 fma", True),                       # AVX2 only (e.g. AMD EPYC Zen 2)
    ("avx2 avx512f avx512bw", True),                  # AVX-512 without VNNI
    ("avx2 avx512f avx512bw avx512_vnni", False),
    ("avx2 avx_vnni", False),
])
def test_reduce_range_follows_the_isa(tmp_path, monkeypatch, flags, saturates):
    from edgeslim.targets import isa
    from edgeslim.targets import harness

    cpuinfo = tmp_path / "cpuinfo"  # what /proc/cpuinfo says on such a host
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    features = tuple(harness.cpu_isa(str(cpuinfo)))
    monkeypatch.setattr(isa, "cpu_features", lambda: features)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert isa.int8_saturates_here() is saturates
    assert isa.resolve_reduce_range(None) is saturates
    assert isa.resolve_reduce_range(False) is False


def test_cells_state_the_isa_and_providers_they_ran_on(tiny_run):
    cell = _record(_report(tiny_run[0]), _report(tiny_run[0])["release"])["devices"]["x86-64-cpu"]
    assert cell["isa"]["arch"] and isinstance(cell["isa"]["features"], list)
    assert cell["providers"][0] == "CPUExecutionProvider"


# --- 7. noise-aware decisions ----------------------------------------------------------------------


def _interleaved(scale: float, n: int = 200, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    load = 1 + 0.3 * np.sin(np.arange(n) / 7)  # the machine's load moves both models alike
    a = 2.0 * load * (1 + 0.02 * rng.standard_normal(n))
    b = 2.0 * scale * load * (1 + 0.02 * rng.standard_normal(n))
    return list(b), list(a)


def test_ratio_interval_calls_a_tie_a_tie_and_catches_15_percent():
    same = ratio_interval(*_interleaved(1.0))
    assert same["low"] <= 1.0 <= same["high"]
    slower = ratio_interval(*_interleaved(1.15))
    assert slower["low"] > 1.05


def test_an_absolute_budget_passes_only_under_the_intervals_upper_end():
    from edgeslim.report.gate import _latency_check

    cell = {"status": "measured", "latency_ms": {"p50": 9.8}, "latency_interval_ms": {"p50": [9.5, 10.4]}}
    check = _latency_check({"devices": {"cpu": cell}}, "cpu", "p50", 10.0, False)
    assert not check.passed and "9.500-10.400" in check.detail
    cell["latency_interval_ms"]["p50"] = [9.5, 9.9]
    assert _latency_check({"devices": {"cpu": cell}}, "cpu", "p50", 10.0, False).passed
    low, high = quantile_interval(list(range(1, 101)), 0.5)
    assert low < 50 < high


def test_quantize_candidates_that_tie_go_to_the_smaller_file():
    from edgeslim.quantize.specs import make_spec
    from edgeslim.quantize.select import Candidate, choose

    fast_big, slow_small = _interleaved(1.0, seed=1)
    big = Candidate("int4", make_spec(mode="weight_only"), None, accuracy=0.9, drop=0.0, size_bytes=3_000_000,
                    latency_ms=float(np.median(fast_big)), latency_samples=fast_big)
    small = Candidate("int8", make_spec(), None, accuracy=0.9, drop=0.0, size_bytes=1_000_000,
                      latency_ms=float(np.median(slow_small)), latency_samples=slow_small)
    chosen, reason = choose([big, small], budget=0.01, baseline=0.9)
    assert chosen is small and "tie" in reason
    much_faster, slow = _interleaved(0.7, seed=2)
    big.latency_samples, big.latency_ms = much_faster, float(np.median(much_faster))
    small.latency_samples, small.latency_ms = slow, float(np.median(slow))
    assert choose([big, small], budget=0.01, baseline=0.9)[0] is big


# --- 8. one scoring path ---------------------------------------------------------------------------


def test_the_quantize_stage_and_the_gate_judge_the_same_accuracy(tiny_run):
    report = _report(tiny_run[0])
    quantized = next(r for r in report["artifacts"] if r["stage"] == "quantize")
    manifest = json.loads((Path(quantized["path"]) / "manifest.json").read_text())
    assert manifest["metrics"]["accuracy"] == quantized["accuracy"]
    export = next(r for r in report["artifacts"] if r["stage"] == "export")
    assert manifest["reference"]["accuracy"] == export["accuracy"]


# --- 9. proven providers ---------------------------------------------------------------------------


def test_a_cell_whose_provider_did_not_run_is_an_error(tiny_run):
    from edgeslim.targets.profile import load_profile
    from edgeslim.targets.runners import local

    profile = load_profile("x86-64-cpu")
    profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(
        update={"execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})})
    model = tiny_run[0] / "model" / "model.onnx"
    feeds = [{"input_ids": np.array([[2, 5, 6, 3]], dtype=np.int64),
              "attention_mask": np.ones((1, 4), dtype=np.int64),
              "token_type_ids": np.zeros((1, 4), dtype=np.int64)}]
    cell = local.measure(profile, {"m": model}, feeds, warmup=1, runs=3, memory=False)["m"]
    assert cell["status"] == "error" and "did not run CUDAExecutionProvider" in cell["reason"]


def test_node_placement_counts_the_nodes_each_provider_ran(tiny_run, tmp_path):
    from edgeslim.targets.harness import node_placement

    model = str(tiny_run[0] / "model" / "model.onnx")
    feed = {"input_ids": np.array([[2, 5, 6, 3]], dtype=np.int64), "attention_mask": np.ones((1, 4), dtype=np.int64),
            "token_type_ids": np.zeros((1, 4), dtype=np.int64)}
    import onnxruntime as ort

    names = {i.name for i in ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()}
    placement = node_placement(model, {"threads": 1}, {k: v for k, v in feed.items() if k in names})
    assert placement["nodes"] > 0 and placement["by_provider"] == {"CPUExecutionProvider": 1.0}
    assert placement["fallback_ops"] == {}


def test_reduce_range_follows_the_recipes_devices(monkeypatch):
    """INT8 built here for a remote AVX2 board needs 7-bit weights even when this host has VNNI."""
    from edgeslim.targets import isa
    from edgeslim.targets.profile import load_profile

    monkeypatch.setattr(isa, "cpu_features", lambda: ("avx2", "avx512f", "avx512_vnni"))
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    local = load_profile("x86-64-cpu")
    arm = load_profile("raspberry-pi-4")

    def remote_x86(isa):
        return local.model_copy(update={"access": local.access.model_copy(update={"kind": "ssh", "host": "board"}),
                                        "target": local.target.model_copy(update={"isa": isa})})

    assert isa.reduce_range_for([local, arm]) is False
    assert isa.reduce_range_for([local, remote_x86(["avx2"])]) is True
    assert isa.reduce_range_for([local, remote_x86(["avx2", "avx512_vnni"])]) is False
    assert isa.reduce_range_for([remote_x86(None)]) is True  # unknown x86: the safe choice


def test_an_emulated_decoder_is_gated_on_its_greedy_tokens(copy_run):
    report = _report(copy_run)
    report["devices"].append({"name": "arm-board", "access": "qemu-arm", "threads": 1, "description": ""})
    cell = {"status": "emulated", "latency_ms": None, "top1_agreement": 0.9, "parity_examples": 8}
    _record(report, report["release"])["devices"]["arm-board"] = cell
    check = [c for c in evaluate_gate(report) if c.budget == "parity"][0]
    assert not check.passed and "greedy tokens agree with x86 at 90.0%" in check.detail
    cell["top1_agreement"] = 1.0
    assert [c for c in evaluate_gate(report) if c.budget == "parity"][0].passed
