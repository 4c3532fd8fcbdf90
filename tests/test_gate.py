"""The release gate: pass (0), fail (1) with the failing budget named, and how unmeasured cells count."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

from conftest import run_cli, write_recipe
from edgeslim.report.gate import evaluate_gate, gate_exit_code
from edgeslim.report.render import pareto_front


def _report(release_cell: dict) -> dict:
    """A minimal report: teacher 0.90 accuracy, 10 MiB; release 0.88, 1 MiB, the given cell."""
    teacher = {"name": "teacher-fp32", "accuracy": 0.90, "size_bytes": 10 * 2**20,
               "devices": {"cpu": {"status": "measured", "latency_ms": {"p50": 10.0, "p90": 12.0, "p99": 15.0}}}}
    release = {"name": "release", "accuracy": 0.88, "size_bytes": 2**20, "devices": {"cpu": release_cell}}
    return {"schema_version": 1, "teacher": "teacher-fp32", "release": "release", "artifacts": [teacher, release]}


MEASURED = {"status": "measured", "latency_ms": {"p50": 2.0, "p90": 3.0, "p99": 4.0}, "peak_memory_mb": 50.0}


def test_all_budgets_hold():
    budgets = {"accuracy_drop": 0.03, "size_mb": 2, "latency_ms": {"cpu": {"p50": 2.5, "p90": 3.5}},
               "peak_memory_mb": {"cpu": 64}}
    checks = [c for c in evaluate_gate(_report(MEASURED), budgets) if not c.budget.startswith("dominance")]
    assert len(checks) == 5 and gate_exit_code(checks) == 0


def test_each_budget_can_fail_and_says_by_how_much():
    budgets = {"accuracy_drop": 0.01, "size_mb": 0.5, "latency_ms": {"cpu": {"p90": 2.5}}, "peak_memory_mb": {"cpu": 10}}
    checks = evaluate_gate(_report(MEASURED), budgets)
    assert gate_exit_code(checks) == 1
    failed = {c.budget: c for c in checks if not c.passed}
    assert set(failed) == {"accuracy_drop", "size_mb", "latency_ms.p90", "peak_memory_mb"}
    assert abs(failed["accuracy_drop"].actual - 0.02) < 1e-9
    assert failed["latency_ms.p90"].actual == 3.0


def test_unmeasured_latency_fails_unless_predicted_is_allowed():
    predicted = {"status": "predicted", "latency_ms": {"p50": 2.0, "p90": 3.0, "p99": 4.0}}
    budgets = {"latency_ms": {"cpu": {"p50": 5}}}
    checks = evaluate_gate(_report(predicted), budgets)
    assert gate_exit_code(checks) == 1 and "not measured (status predicted" in checks[0].detail
    assert gate_exit_code(evaluate_gate(_report(predicted), {**budgets, "allow_predicted": True})) == 0
    skipped = {"status": "skipped", "latency_ms": None, "reason": "no CUDA provider"}
    check = evaluate_gate(_report(skipped), budgets)[0]
    assert not check.passed and "no CUDA provider" in check.detail


def test_instruction_budget_uses_the_callgrind_count():
    cell = {**MEASURED, "instructions": 9_000_000}
    budget_checks = lambda report, budgets: [c for c in evaluate_gate(report, budgets)  # noqa: E731
                                             if not c.budget.startswith("dominance")]
    assert gate_exit_code(evaluate_gate(_report(cell), {"instructions": {"cpu": 10_000_000}})) == 0
    over = budget_checks(_report(cell), {"instructions": {"cpu": 8_000_000}})
    assert gate_exit_code(over) == 1 and over[0].actual == 9_000_000
    unmeasured = budget_checks(_report(MEASURED), {"instructions": {"cpu": 8_000_000}})
    assert not unmeasured[0].passed and "not measured" in unmeasured[0].detail


def test_budget_for_a_device_not_in_the_matrix_fails():
    checks = evaluate_gate(_report(MEASURED), {"latency_ms": {"phone": {"p50": 5}}})
    assert gate_exit_code(checks) == 1 and "not in the report" in checks[0].detail


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(1.0, 0.80, "a"), (2.0, 0.85, "b"), (3.0, 0.84, "c"), (4.0, 0.90, "d"), (0.5, 0.70, "e")]
    assert [p[2] for p in pareto_front(points)] == ["e", "a", "b", "d"]


def test_gate_cli_fails_a_tight_budget_and_writes_junit(tiny_run, tmp_path, recipe_dict):
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text((tiny_run[0] / "report" / "report.json").read_text())
    shutil.copytree(tiny_run[0] / "model", tmp_path / "model")  # the gate checks the release beside the report
    ok = run_cli("gate", report_dir / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    recipe_dict["budgets"] = {"latency_ms": {"x86-64-cpu": {"p50": 0.000001}}, "size_mb": 100}
    tight = write_recipe(tmp_path, recipe_dict)
    failed = run_cli("gate", report_dir / "report.json", "--recipe", tight)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "latency_ms.p50" in failed.stdout and "FAIL" in failed.stdout
    suite = ET.parse(report_dir / "junit.xml").getroot()
    assert suite.get("failures") == "1" and int(suite.get("tests")) >= 2
    assert "FAIL" in (report_dir / "report.md").read_text()


def test_bench_baseline_catches_a_slower_model_and_passes_the_same_one(tmp_path):
    from _target_models import token_model

    fast = token_model(tmp_path / "fast.onnx", hidden=256, layers=2)
    slow = token_model(tmp_path / "slow.onnx", hidden=256, layers=10)  # 5x the matmul work
    caught = run_cli("bench", slow, "--baseline", fast, "--runs", "100", "--quiet")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "baseline.latency_p50" in caught.stdout and "FAIL" in caught.stdout
    same = run_cli("bench", fast, "--baseline", fast, "--runs", "100", "--quiet")
    assert same.returncode == 0, same.stdout + same.stderr
    missing = run_cli("bench", fast, "--baseline", tmp_path / "nope.onnx")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_gate_baseline_against_the_same_release_passes(tiny_run):
    report = tiny_run[0] / "report" / "report.json"
    release = json.loads(report.read_text())
    model = next(a["path"] for a in release["artifacts"] if a["name"] == release["release"])
    result = run_cli("gate", report, "--baseline", model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "baseline.latency_p50" in result.stdout


def test_the_html_report_holds_what_the_markdown_has_and_colours_the_verdict(tiny_run):
    """report.html: the summary with the release highlighted and a legend, the gate as a coloured
    table, the quantization candidates and the cells not measured, as report.md has them."""
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headings, self.classes, self.current = [], [], None

        def handle_starttag(self, tag, attrs):
            self.current = tag
            self.classes += [value for name, value in attrs if name == "class"]

        def handle_data(self, data):
            if self.current in ("h2", "h3") and data.strip():
                self.headings.append(data.strip())

    out = tiny_run[0] / "report"
    page = Collect()
    page.feed((out / "report.html").read_text())
    assert "Gate" in page.headings and "Columns" in page.headings
    assert any(h.startswith("Quantization candidates") for h in page.headings)
    assert "release" in page.classes and "verdict pass" in page.classes and "pass" in page.classes
    markdown = (out / "report.md").read_text()
    assert "## Quantization candidates" in markdown and "Columns: **accuracy / perplexity**" in markdown
