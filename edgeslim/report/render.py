"""Renders a report: the terminal summary, ``report.md`` (for a pull request), ``report.html`` (with an
accuracy-vs-latency plot and its Pareto front per device, and size per stage) and ``junit.xml`` (one
test case per budget and device, so CI systems show the gate like a test suite).
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from edgeslim.artifacts import atomic_write_text
from edgeslim.report.gate import MIB, Check, gate_exit_code


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _latency(cell: dict[str, Any] | None, quantile: str) -> str:
    if not cell:
        return "-"
    if cell.get("latency_ms") and cell.get("status") in ("measured", "predicted"):
        mark = "~" if cell["status"] == "predicted" else ""
        return f"{mark}{cell['latency_ms'][quantile]:.2f}"
    return cell.get("status", "-")


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header plus one row per artifact: accuracy, agreement, size, params, p50/p90 per device."""
    devices = [d["name"] for d in report["devices"]]
    language_model = any(r.get("perplexity") is not None for r in report["artifacts"])
    quality = "perplexity" if language_model else "accuracy"
    header = ["artifact", "kind", quality, "95% interval", "agree", "size MiB", "params"]
    for device in devices:
        header += [f"{device} p50 ms", f"{device} p90 ms"] + ([f"{device} tok/s"] if language_model else [])
    rows = [header]
    for record in report["artifacts"]:
        name = record["name"] + (" (release)" if record["name"] == report["release"] else "")
        score = _number(record.get("perplexity")) if language_model else _pct(record.get("accuracy"))
        interval = record.get("perplexity_interval") if language_model else record.get("accuracy_interval")
        span = "-" if not interval else (f"{_number(interval[0])}-{_number(interval[1])}" if language_model
                                         else f"{_pct(interval[0])}-{_pct(interval[1])}")
        row = [name, record["kind"], score, span, _pct(record.get("agreement")),
               f"{record['size_bytes'] / MIB:.2f}", f"{record['params'] / 1e6:.2f}M" if record.get("params") else "-"]
        for device in devices:
            cell = record["devices"].get(device)
            row += [_latency(cell, "p50"), _latency(cell, "p90")]
            if language_model:
                row.append(_number((cell or {}).get("decode_tokens_per_s")))
        rows.append(row)
    return rows


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


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
            lines.append(f"{device}: p50 {t['latency_ms']['p50'] / r['latency_ms']['p50']:.1f}x lower than the fp32 teacher")
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
    parts = [
        f"# edgeslim report: {report['recipe']['name']}",
        f"Release: `{report['release']}` — gate **{verdict}**. Eval examples: {report.get('eval_examples')}; "
        f"latency at batch 1 on real eval lengths, {report['measure']['runs']} runs after {report['measure']['warmup']} warm-up.",
        "",
        markdown_table(summary_rows(report)),
        "",
        *[f"- {line}" for line in ratios(report)],
        "",
        "Columns: " + "; ".join(f"**{name}** {meaning}" for name, meaning in LEGEND) + ".",
        "",
        "## Gate",
        "",
    ]
    if checks:
        parts.append("| budget | device | limit | actual | verdict | detail |\n|---|---|---|---|---|---|")
        for check in checks:
            parts.append(f"| {check.budget} | {check.device or '-'} | {check.limit:g} | "
                         f"{'-' if check.actual is None else f'{check.actual:g}'} | "
                         f"{'pass' if check.passed else '**FAIL**'} | {check.detail} |")
    else:
        parts.append("No budgets set.")
    parts += _quantize_section(report)
    reasons = _reasons(report)
    if reasons:
        parts += ["", "## Cells not measured", ""] + [f"- {r}" for r in reasons]
    return "\n".join(parts) + "\n"


#: What each column of the summary table means (report.md and report.html show it under the table).
LEGEND = [
    ("accuracy / perplexity", "the task figure on the eval split, batch 1 (the one scoring path)"),
    ("95% interval", "Wilson's interval of the accuracy, or a bootstrap over texts of the perplexity"),
    ("agree", "share of eval examples (or greedy tokens) where the artifact's top-1 equals the fp32 teacher ONNX's"),
    ("size MiB", "bytes a device must hold (ONNX file and external data, or torch weights)"),
    ("params", "weight elements (4-bit weights counted as elements, not bytes)"),
    ("DEVICE p50/p90 ms", "measured latency; ~ marks a prediction (with its band in report.json), a word "
                          "the status of a cell that holds no latency (see Cells not measured)"),
]


def _candidate_rows(quantize: dict[str, Any]) -> list[list[str]]:
    """Header plus one row per quantization candidate."""
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    rows = [["candidate", "accuracy", "drop", "size KiB", "p50 ms (build host)", "excluded nodes", "meets budget", "error"]]
    for cand in quantize["candidates"]:
        rows.append([cand["name"], num(cand.get("accuracy"), ".4f"), num(cand.get("accuracy_drop"), "+.4f"),
                     num(cand.get("size_bytes") and cand["size_bytes"] / 1024, ".1f"), num(cand.get("latency_ms_p50"), ".3f"),
                     str(len(cand.get("excluded_nodes") or [])), "yes" if cand.get("meets_budget") else "no",
                     cand.get("error") or ""])
    return rows


def _quantize_section(report: dict[str, Any]) -> list[str]:
    """The quantize stage's candidates (accuracy, size, latency) and why it kept the one it kept."""
    lines = []
    for record in report["artifacts"]:
        quantize = record.get("quantize")
        if not quantize:
            continue
        lines += ["", f"## Quantization candidates ({record['name']})", "", markdown_table(_candidate_rows(quantize))]
        if quantize.get("choice"):
            lines += ["", f"Kept **{quantize['choice']['name']}**: {quantize['choice'].get('reason')}."]
    return lines


def _reasons(report: dict[str, Any]) -> list[str]:
    """Why ONNX cells were not measured (torch artifacts are scored for accuracy but never timed)."""
    lines = []
    for record in report["artifacts"]:
        if record["kind"] == "torch":
            continue
        for device, cell in record["devices"].items():
            if cell.get("status") != "measured" and cell.get("reason"):
                lines.append(f"{record['name']} on {device}: {cell['status']} ({cell['reason']})")
    if any(record["kind"] == "torch" for record in report["artifacts"]):
        lines.append("torch artifacts are scored on the eval split but not timed; their ONNX descendants are")
    return lines


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


# --------------------------------------------------------------------------------------------------
# HTML with inline SVG plots (no plotting dependency)


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (latency, accuracy, name) not beaten by another that is both faster and as accurate."""
    front = []
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or point[1] > front[-1][1]:
            front.append(point)
    return front


def _scatter_svg(points: list[tuple[float, float, str]], title: str) -> str:
    width, height, pad = 560, 320, 50
    if not points:
        return f"<p>{html.escape(title)}: no measured points.</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = 0.0, max(xs) * 1.1
    y0, y1 = min(ys) - 0.02, min(1.0, max(ys) + 0.02)

    def sx(x):
        return pad + (x - x0) / (x1 - x0 or 1) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y0) / (y1 - y0 or 1) * (height - 2 * pad)

    front = pareto_front(points)
    body = [f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
            f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">p50 latency (ms)</text>',
            f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">accuracy</text>',
            f'<text x="{pad}" y="{height - pad + 16}" text-anchor="middle">0</text>',
            f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="middle">{x1:.1f}</text>',
            f'<text x="{pad - 4}" y="{sy(y1) + 4}" text-anchor="end">{y1:.3f}</text>',
            f'<text x="{pad - 4}" y="{sy(y0) + 4}" text-anchor="end">{y0:.3f}</text>']
    if len(front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in front)
        body.append(f'<polyline points="{path}" fill="none" stroke="#c33" stroke-dasharray="4 3"/>')
    for x, y, name in points:
        colour = "#c33" if (x, y, name) in front else "#369"
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour}"><title>{html.escape(name)}: '
                    f'{x:.2f} ms, {100 * y:.2f}%</title></circle>')
        body.append(f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}" font-size="11">{html.escape(name)}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">{"".join(body)}</svg>'


def _size_svg(report: dict[str, Any]) -> str:
    records = report["artifacts"]
    width, bar, pad = 560, 22, 170
    biggest = max(r["size_bytes"] for r in records) or 1
    height = 30 + bar * len(records)
    body = ['<text x="280" y="16" text-anchor="middle" font-weight="bold">size per stage (MiB)</text>']
    for i, record in enumerate(records):
        y = 26 + i * bar
        length = (width - pad - 60) * record["size_bytes"] / biggest
        body.append(f'<text x="{pad - 6}" y="{y + 14}" text-anchor="end">{html.escape(record["name"])}</text>')
        body.append(f'<rect x="{pad}" y="{y + 2}" width="{length:.1f}" height="{bar - 6}" fill="#369"/>')
        body.append(f'<text x="{pad + length + 4:.1f}" y="{y + 14}">{record["size_bytes"] / MIB:.2f}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">{"".join(body)}</svg>'


def _html_table(rows: list[list[str]], row_class=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
    body = "".join(f"<tr{row_class(row) if row_class else ''}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                   + "</tr>" for row in rows[1:])
    return f"<table>{head}{body}</table>"


def _html_gate(checks: list[Check]) -> str:
    """The gate as a table, each check coloured by its verdict, under a coloured overall verdict."""
    passed = gate_exit_code(checks) == 0
    banner = (f"<p class='verdict {'pass' if passed else 'fail'}'>gate {'PASS' if passed else 'FAIL'} "
              f"({sum(c.passed for c in checks)} of {len(checks)} checks pass)</p>")
    rows = [["check", "device", "limit", "actual", "verdict", "detail"]] + [
        [c.budget, c.device or "-", f"{c.limit:g}", "-" if c.actual is None else f"{c.actual:g}",
         "pass" if c.passed else "FAIL", c.detail] for c in checks]
    return banner + _html_table(rows, lambda row: " class='pass'" if row[4] == "pass" else " class='fail'")


def render_html(report: dict[str, Any], checks: list[Check]) -> str:
    """report.html: everything report.md has (summary with legend, gate, quantization candidates,
    cells not measured) plus the plots; the verdict coloured, the release highlighted."""
    release = report["release"]
    table = _html_table(summary_rows(report), lambda row: " class='release'" if row[0].startswith(release + " ") else "")
    plots = []
    for device in [d["name"] for d in report["devices"]]:
        points = []
        for record in report["artifacts"]:
            cell = record["devices"].get(device) or {}
            if cell.get("status") in ("measured", "predicted") and cell.get("latency_ms") and record.get("accuracy") is not None:
                label = record["name"] + (" (predicted)" if cell["status"] == "predicted" else "")
                points.append((cell["latency_ms"]["p50"], record["accuracy"], label))
        plots.append(_scatter_svg(points, f"accuracy vs p50 latency on {device} (Pareto front in red)"))
    sections = []
    for record in report["artifacts"]:
        if record.get("quantize"):
            choice = record["quantize"].get("choice") or {}
            sections.append(f"<h2>Quantization candidates ({html.escape(record['name'])})</h2>"
                            + _html_table(_candidate_rows(record["quantize"]))
                            + (f"<p>Kept <b>{html.escape(choice['name'])}</b>: {html.escape(str(choice.get('reason')))}.</p>"
                               if choice else ""))
    reasons = _reasons(report)
    if reasons:
        sections.append("<h2>Cells not measured</h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>")
    legend = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(meaning)}</li>" for name, meaning in LEGEND)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeslim report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
        "tr.release td{font-weight:bold;background:#fff6d5}tr.pass td{background:#eaf7ea}tr.fail td{background:#fbe3e3}"
        ".verdict{font-size:1.4em;font-weight:bold;padding:.3em .6em;display:inline-block}"
        ".verdict.pass{background:#2e7d32;color:#fff}.verdict.fail{background:#c62828;color:#fff}</style></head><body>"
        f"<h1>edgeslim report: {html.escape(report['recipe']['name'])}</h1>"
        f"<p>Release: <code>{html.escape(release)}</code> (highlighted). Created {html.escape(report['created'])}.</p>"
        f"{table}<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in ratios(report))}</ul>"
        f"<h3>Columns</h3><ul>{legend}</ul>"
        f"<h2>Gate</h2>{_html_gate(checks)}{''.join(sections)}{''.join(plots)}{_size_svg(report)}</body></html>\n"
    )


def write_all(report: dict[str, Any], checks: list[Check], report_dir: Path) -> None:
    """Write report.md, report.html and junit.xml beside report.json."""
    report_dir = Path(report_dir)
    atomic_write_text(report_dir / "report.md", render_markdown(report, checks))
    atomic_write_text(report_dir / "report.html", render_html(report, checks))
    atomic_write_text(report_dir / "junit.xml", render_junit(report, checks))
