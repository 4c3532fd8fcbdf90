"""The release gate: pass (0), fail (1) with the failing budget named, and how unmeasured cells count."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

from conftest import run_cli, write_recipe
from edgeslim.report.gate import evaluate_gate, gate_exit_code
from edgeslim.report.plots import Point, pareto_front


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
    points = [Point(*p) for p in [(1.0, 0.80, "a"), (2.0, 0.85, "b"), (3.0, 0.84, "c"), (4.0, 0.90, "d"), (0.5, 0.70, "e")]]
    assert [p.name for p in pareto_front(points)] == ["e", "a", "b", "d"]


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


def test_the_html_report_holds_every_section_the_markdown_has(tiny_run, tmp_path):
    """report.md and report.html render the same sections in the same order: the summary (release,
    teacher, best baseline) first, the gate as a coloured table, every artifact, a table per device,
    the quantization candidates and the cells not measured; every column has a legend entry, and the
    HTML tables hold exactly the cells the section's rows have."""
    from html.parser import HTMLParser

    from edgeslim.report.gate import evaluate_gate
    from edgeslim.report.render import ratios
    from edgeslim.report.sections import sections

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headings, self.classes, self.cells, self.tag = [], [], [], None

        def handle_starttag(self, tag, attrs):
            self.tag = tag
            self.classes += [value for name, value in attrs if name == "class"]

        def handle_data(self, data):
            if self.tag in ("h2", "h3") and data.strip():
                self.headings.append(data.strip())
            if self.tag in ("td", "th"):
                self.cells.append(data)

    from edgeslim.report.render import write_all

    report = json.loads((tiny_run[0] / "report" / "report.json").read_text())
    checks = evaluate_gate(report)
    out = tmp_path / "report"
    out.mkdir()
    write_all(report, checks, out)  # what 'edgeslim run' and 'edgeslim report' write
    expected = sections(report, checks, ratios(report))
    page = Collect()
    page.feed((out / "report.html").read_text())
    titles = [section.title for section in expected]
    assert page.headings[: len(titles)] == titles and page.headings[len(titles)] == "Plots"
    assert titles[0] == "Summary" and titles[1] == "Gate: PASS" and "All artifacts" in titles
    assert any(t.startswith("Quantization candidates") for t in titles)
    summary = expected[0].rows
    assert [row[0] for row in summary[1:]] == ["release", "teacher", "best baseline"]
    assert summary[1][1] == report["release"] and summary[2][1] == report["teacher"]
    assert len(summary[0]) <= 8  # a short table; the per-device detail is below it
    table_cells = [cell for section in expected if section.rows for row in section.rows for cell in row]
    assert page.cells == [cell for cell in table_cells if cell]  # (an empty cell has no text to collect)
    assert "release" in page.classes and "verdict pass" in page.classes and "pass" in page.classes
    markdown = (out / "report.md").read_text()
    positions = [markdown.index(("#" * s.level) + " " + s.title) for s in expected]
    assert positions == sorted(positions)
    for section in expected:  # every column named in a header is explained in some legend
        for name, meaning in section.legend:
            assert f"**{name}** {meaning}" in markdown
    legend_names = " ".join(name for s in expected for name, _ in s.legend)
    for column in expected[2].rows[0] + next(s for s in expected if s.level == 3).rows[0]:
        assert column in legend_names or column in ("artifact", "perplexity", "accuracy", "p50 ms", "p90 ms"), column


def test_plot_labels_never_overlap_even_when_points_crowd():
    """Nine artifacts at nearly the same latency and accuracy (export and bundle often coincide):
    every label is placed clear of the others and of every point, or numbered and keyed below."""
    import re

    from edgeslim.report.plots import CHAR_WIDTH, LABEL_HEIGHT, scatter_svg

    points = [Point(1.0 + 0.001 * i, 0.80 + 0.0001 * i, f"0{i}-stage-name", predicted=i % 2 == 0, release=i == 4)
              for i in range(9)] + [Point(5.0, 0.70, "teacher-fp32")]
    svg = scatter_svg(points, "crowded")
    boxes = []
    for x, y, anchor, text in re.findall(r'<text class="label" x="([\d.]+)" y="([\d.]+)"(?: text-anchor="(\w+)")?[^>]*>([^<]+)<', svg):
        width = CHAR_WIDTH * len(text)
        left = float(x) - width if anchor == "end" else float(x)
        boxes.append((left, float(y) - LABEL_HEIGHT + 2, left + width, float(y) + 3))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    keyed = re.findall(r'<text class="key"[^>]*>(\d+): ([^<]+)<', svg)
    named = [t for *_, t in re.findall(r'<text class="label" x="([\d.]+)" y="([\d.]+)"(?: text-anchor="(\w+)")?[^>]*>([^<]+)<', svg)
             if not t.isdigit()]
    assert len(named) + len(keyed) == len(points)  # every point is named, beside it or in the key
    assert "04-stage-name (release) ~" in named  # the release is labelled first, beside its point
    assert svg.count('fill="white"') == 5  # predicted points are hollow


def test_a_device_section_names_the_operators_that_fell_back_from_the_gpu(tiny_run, tmp_path):
    """A release whose GPU cell ran partly on the CPU (what the H200 run measured for the demo's
    dynamic-INT8 release) says so under that device's table, in the markdown too; a cell that ran
    whole on its provider adds nothing."""
    from edgeslim.report.gate import evaluate_gate
    from edgeslim.report.render import ratios, write_all
    from edgeslim.report.sections import placement_lines, sections

    report = json.loads((tiny_run[0] / "report" / "report.json").read_text())
    device = report["devices"][0]["name"]
    assert placement_lines(report, device) == []
    release = next(a for a in report["artifacts"] if a["name"] == report["release"])
    release["devices"][device]["node_placement"] = {
        "nodes": 85, "by_provider": {"CPUExecutionProvider": 0.2471, "CUDAExecutionProvider": 0.7529},
        "fallback_ops": {"DynamicQuantizeLinear": 10, "MatMulInteger": 8}}
    lines = placement_lines(report, device)
    assert lines == [f"{report['release']}: node runs by provider CPUExecutionProvider 25%, CUDAExecutionProvider 75%; "
                     "not on the first provider: DynamicQuantizeLinear x10, MatMulInteger x8"]
    checks = evaluate_gate(report)
    section = next(s for s in sections(report, checks, ratios(report)) if s.title.startswith(device))
    assert section.lines == lines
    write_all(report, checks, tmp_path)
    assert lines[0] in (tmp_path / "report.md").read_text()


def test_a_language_model_release_is_held_to_a_perplexity_ratio_on_its_interval():
    """``budgets.perplexity_ratio``: the upper end of the release's perplexity interval over the
    teacher's perplexity (the smollm2-edge student measured 185.66 against 35.70: 5.48x, FAIL)."""
    def report(interval):
        teacher = {"name": "teacher-fp32", "perplexity": 35.70, "perplexity_interval": [33.7, 37.9],
                   "size_bytes": 2**29, "devices": {}}
        release = {"name": "release", "perplexity": 40.0, "perplexity_interval": interval, "size_bytes": 2**26,
                   "devices": {}}
        return {"schema_version": 1, "teacher": "teacher-fp32", "release": "release", "artifacts": [teacher, release]}

    def check(interval):
        return next(c for c in evaluate_gate(report(interval), {"perplexity_ratio": 1.15})
                    if c.budget == "perplexity_ratio")

    inside, outside = check([38.0, 41.0]), check([38.0, 42.0])
    assert inside.passed and inside.actual == round(41.0 / 35.70, 4)
    assert not outside.passed and "is 1.18x the teacher's 35.70 (limit 1.15x)" in outside.detail
    unscored = evaluate_gate({**report([38.0, 41.0]), "artifacts": [{"name": "teacher-fp32", "size_bytes": 1, "devices": {}},
                                                                    {"name": "release", "size_bytes": 1, "devices": {}}]},
                             {"perplexity_ratio": 1.15})
    assert not next(c for c in unscored if c.budget == "perplexity_ratio").passed


def test_a_perplexity_budget_on_a_classifier_is_refused_in_one_line(tmp_path, recipe_dict):
    recipe_dict["budgets"] = {"perplexity_ratio": 1.1}
    result = run_cli("check", write_recipe(tmp_path, recipe_dict))
    assert result.returncode == 2 and "budgets.perplexity_ratio: only a causal-lm recipe" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
