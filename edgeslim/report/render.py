"""Renders a report: the terminal summary, ``report.md`` (for a pull request), ``report.html`` (the same
sections, plus an accuracy-vs-latency plot per device and the size of every artifact) and
``junit.xml`` (one test case per budget and device, so CI systems show the gate like a test suite).
What the reports say, and in which order, is :func:`edgeslim.report.sections.sections`.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from edgeslim.artifacts import atomic_write_text
from edgeslim.report.gate import MIB, Check, gate_exit_code
from edgeslim.report.plots import Point, scatter_svg, size_svg
from edgeslim.report.sections import Section, sections


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def ratios(report: dict[str, Any]) -> list[str]:
    """Release vs fp32 teacher: size and per-device p50 ratios measured in the same run."""
    from edgeslim.report.gate import find_artifact

    teacher = find_artifact(report, report["teacher"])
    release = find_artifact(report, report["release"])
    lines = [f"size: {teacher['size_bytes'] / release['size_bytes']:.1f}x smaller than the fp32 teacher ONNX"]
    if teacher.get("accuracy") and release.get("accuracy") is not None:
        lines.append(f"accuracy: {100 * release['accuracy'] / teacher['accuracy']:.1f}% of the teacher's")
    for device in [d["name"] for d in report["devices"]]:
        t, r = teacher["devices"].get(device) or {}, release["devices"].get(device) or {}
        if t.get("status") == "measured" and r.get("status") == "measured":
            prefill = t["latency_ms"]["p50"] / r["latency_ms"]["p50"]
            if t.get("decode_tokens_per_s") and r.get("decode_tokens_per_s"):
                lines.append(f"{device}: decode {r['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x the fp32 "
                             f"teacher's tokens/s (prompt p50 {prefill:.1f}x lower)")
            else:
                lines.append(f"{device}: p50 {prefill:.1f}x lower than the fp32 teacher")
    return lines


def card_figures(report: dict[str, Any], checks: list[Check]) -> dict[str, Any]:
    """The measured figures a bundle's model card shows (from the same run's report)."""
    from edgeslim.report.gate import find_artifact

    release = find_artifact(report, report["release"])
    teacher = find_artifact(report, report["teacher"])
    figures: dict[str, Any] = {
        "size (MiB)": round(release["size_bytes"] / MIB, 3),
        "accuracy on the eval split": release.get("accuracy"),
        "fp32 teacher accuracy": teacher.get("accuracy"),
        "agreement with the teacher": release.get("agreement"),
        "eval examples": report.get("eval_examples"),
        "gate": "PASS" if gate_exit_code(checks) == 0 else "FAIL",
    }
    latency = {}
    for device, cell in release["devices"].items():
        if cell.get("status") == "measured" and cell.get("latency_ms"):
            latency[device] = f"p50 {cell['latency_ms']['p50']:.3f} ms, p90 {cell['latency_ms']['p90']:.3f} ms (batch 1)"
        else:
            latency[device] = f"{cell.get('status')}: {cell.get('reason') or ''}".strip()
    figures["latency per device"] = latency
    figures["compared with the fp32 teacher"] = {str(i): line for i, line in enumerate(ratios(report), 1)}
    return {k: v for k, v in figures.items() if v is not None}


def render_markdown(report: dict[str, Any], checks: list[Check]) -> str:
    verdict = "PASS" if gate_exit_code(checks) == 0 else "FAIL"
    parts = [f"# edgeslim report: {report['recipe']['name']}", "",
             f"Release: `{report['release']}`, gate **{verdict}**. Eval examples: {report.get('eval_examples')}; "
             f"latency at batch 1 on real eval lengths, {report['measure']['runs']} runs after "
             f"{report['measure']['warmup']} warm-up."]
    for section in sections(report, checks, ratios(report)):
        parts += ["", "#" * section.level + " " + section.title]
        if section.rows:
            parts += ["", markdown_table(section.rows)]
        if section.lines:
            parts += [""] + [f"- {line}" for line in section.lines]
        if section.legend:
            parts += ["", "Columns: " + "; ".join(f"**{name}** {meaning}" for name, meaning in section.legend) + "."]
    return "\n".join(parts) + "\n"


def _html_table(section: Section) -> str:
    rows = section.rows

    def row_class(row: list[str]) -> str:
        if section.highlight_column is not None:
            return " class='pass'" if row[section.highlight_column] == "pass" else " class='fail'"
        return " class='release'" if section.release_row is not None and row[0] == section.release_row else ""

    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
    body = "".join(f"<tr{row_class(row)}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows[1:])
    return f"<table>{head}{body}</table>"


def _html_section(section: Section) -> str:
    verdict = ""
    if section.title.startswith("Gate: "):  # the verdict, coloured
        verdict = f" class='verdict {'pass' if section.title.endswith('PASS') else 'fail'}'"
    parts = [f"<h{section.level}{verdict}>{html.escape(section.title)}</h{section.level}>"]
    if section.rows:
        parts.append(_html_table(section))
    if section.lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in section.lines) + "</ul>")
    if section.legend:
        parts.append("<p class='legend'>Columns:</p><ul class='legend'>" + "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(meaning)}</li>" for name, meaning in section.legend) + "</ul>")
    return "".join(parts)


def plot_points(report: dict[str, Any], device: str) -> list[Point]:
    """Every artifact with an accuracy and a latency on ``device``: measured, predicted, or the
    prediction an emulated cell carries (plotted as predicted)."""
    points = []
    for record in report["artifacts"]:
        cell = record["devices"].get(device) or {}
        if record.get("accuracy") is None:
            continue
        measured = cell.get("status") in ("measured", "predicted") and cell.get("latency_ms")
        latency = cell["latency_ms"]["p50"] if measured else cell.get("predicted_latency_ms")
        if latency is not None:
            points.append(Point(latency, record["accuracy"], record["name"], predicted=cell.get("status") != "measured",
                                release=record["name"] == report["release"]))
    return points


def render_html(report: dict[str, Any], checks: list[Check]) -> str:
    """report.html: the sections report.md has (the verdict coloured, the release highlighted, every
    column explained), then one accuracy-vs-latency plot per device and the sizes."""
    plots = [scatter_svg(plot_points(report, d["name"]), f"accuracy vs p50 latency on {d['name']}")
             for d in report["devices"]]
    body = "".join(_html_section(s) for s in sections(report, checks, ratios(report)))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeslim report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "tr.release td{font-weight:bold;background:#fff6d5}tr.pass td{background:#eaf7ea}tr.fail td{background:#fbe3e3}"
        "ul.legend{font-size:.9em;color:#444}p.legend{margin-bottom:0;font-size:.9em;color:#444}"
        ".verdict{font-size:1.4em;font-weight:bold;padding:.3em .6em;display:inline-block}"
        ".verdict.pass{background:#2e7d32;color:#fff}.verdict.fail{background:#c62828;color:#fff}</style></head><body>"
        f"<h1>edgeslim report: {html.escape(report['recipe']['name'])}</h1>"
        f"<p>Release: <code>{html.escape(report['release'])}</code> (highlighted). Created "
        f"{html.escape(report['created'])}. Eval examples: {report.get('eval_examples')}.</p>"
        f"{body}<h2 id='plots'>Plots</h2>{''.join(plots)}{size_svg(report)}</body></html>\n"
    )


def render_junit(report: dict[str, Any], checks: list[Check]) -> str:
    suite = ET.Element("testsuite", name=f"edgeslim-gate-{report['recipe']['name']}", tests=str(len(checks)),
                       failures=str(sum(not c.passed for c in checks)))
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname=f"edgeslim.gate.{check.device or 'model'}",
                             name=f"{check.budget}[{check.device or 'model'}]")
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=check.detail)
            failure.text = check.detail
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"


def write_all(report: dict[str, Any], checks: list[Check], report_dir: Path) -> None:
    """Write report.md, report.html and junit.xml beside report.json."""
    report_dir = Path(report_dir)
    atomic_write_text(report_dir / "report.md", render_markdown(report, checks))
    atomic_write_text(report_dir / "report.html", render_html(report, checks))
    atomic_write_text(report_dir / "junit.xml", render_junit(report, checks))
