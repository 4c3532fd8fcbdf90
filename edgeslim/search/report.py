"""The search's own report: every trial, each device's Pareto front and its release's verdict.

``DIR/report/report.json`` (``kind: search``), ``report.md`` and ``report.html`` (one accuracy vs
p50 plot per device, the report's own plot: front dashed, release ringed, predicted points hollow).
Each device's full report (every artifact measured, the gate's checks) is the ordinary report of
its release run, in ``DIR/devices/<device>/report``.
"""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import asdict, replace
import json
from pathlib import Path
from typing import Any

from edgeslim.artifacts import atomic_write_json, atomic_write_text
from edgeslim.report.plots import scatter_svg
from edgeslim.report.render import markdown_table
from edgeslim.search.front import trial_points


def search_report(recipe, study, trials: dict[int, dict], failed: dict[int, dict], devices: dict[str, dict],
                  releases: dict[str, Any]) -> dict[str, Any]:
    """The report dict (``kind: search``)."""
    return {
        "kind": "search",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": recipe.name, "path": str(recipe.path) if recipe.path else None, "task": recipe.task},
        "study": {"name": study.study_name, "directions": [d.name.lower() for d in study.directions]},
        "space": recipe.search.space,
        "trials": [{"number": n, **t} for n, t in sorted(trials.items())],
        "failed_trials": [{"number": n, **t} for n, t in sorted(failed.items())],
        "devices": {name: {**entry, "front_p50_ms": {str(n): v for n, v in entry["front_p50_ms"].items()},
                           "gate": "PASS" if releases[name].exit_code == 0 else "FAIL",
                           "checks": [asdict(c) for c in releases[name].checks],
                           "model_dir": str(releases[name].release_dir),
                           "report": str(Path(releases[name].out_dir) / "report" / "report.json")}
                    for name, entry in devices.items()},
    }


def write_search_report(report: dict[str, Any], report_dir: Path) -> None:
    report_dir = Path(report_dir)
    atomic_write_json(report_dir / "report.json", report)
    atomic_write_text(report_dir / "report.md", render_search_markdown(report))
    atomic_write_text(report_dir / "report.html", render_search_html(report))


def _trial_rows(report: dict[str, Any]) -> list[list[str]]:
    devices = list(report["devices"])
    rows = [["trial", "values", "accuracy", "size MB", *[f"p50 {d} (ms)" for d in devices], "on front of"]]
    for trial in report["trials"]:
        evaluation = trial["evaluation"]
        cells = []
        for device in devices:
            latency = report["devices"][device]["front_p50_ms"].get(str(trial["number"])) \
                or evaluation["latency_ms"][device]
            cells.append(f"{latency['p50']:.3f} {latency['how']}")
        fronts = [d for d in devices if trial["number"] in report["devices"][d]["front"]]
        values = "; ".join(f"{k}={json.dumps(v)}" for k, v in trial["params"].items())
        rows.append([str(trial["number"]), values, f"{evaluation['quality']:.4f}", f"{evaluation['size_mb']:.2f}",
                     *cells, ", ".join(fronts) or "-"])
    return rows


def _release_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [["device", "release", "gate", "why this trial", "model"]]
    for device, entry in report["devices"].items():
        failing = [c["detail"] for c in entry["checks"] if not c["passed"]]
        gate = entry["gate"] + (f" ({'; '.join(failing)})" if failing else "")
        rows.append([device, f"trial {entry['trial']}", gate, entry["reason"], entry["model_dir"]])
    return rows


def render_search_markdown(report: dict[str, Any]) -> str:
    lines = [f"# edgeslim search: {report['recipe']['name']}", "",
             f"Study `{report['study']['name']}`, {len(report['trials'])} finished trial(s), "
             f"{len(report['failed_trials'])} failed. Created {report['created']}.", "",
             "## Releases, one per device", "", markdown_table(_release_rows(report)), "",
             "## Trials", "", "p50: measured on the device for front trials where it can be timed here, else the calibrated prediction.", "",
             markdown_table(_trial_rows(report)), ""]
    if report["failed_trials"]:
        lines += ["## Failed trials", ""] + [f"- trial {t['number']}: {t['error']}" for t in report["failed_trials"]]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def render_search_html(report: dict[str, Any]) -> str:
    trials = {t["number"]: t for t in report["trials"]}
    plots = []
    for device, entry in report["devices"].items():
        measured = {int(n): v["p50"] for n, v in entry["front_p50_ms"].items() if v["how"] == "measured"}
        points = [replace(p, release=p.name == f"trial {entry['trial']}") for p in trial_points(trials, device, measured)]
        plots.append(scatter_svg(points, f"accuracy vs p50 latency on {device} (search front)"))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgeslim search</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px}th{background:#eee}</style></head><body>"
            f"<h1>edgeslim search: {html.escape(report['recipe']['name'])}</h1>"
            f"<p>Study <code>{html.escape(report['study']['name'])}</code>; created {html.escape(report['created'])}.</p>"
            f"<h2>Releases, one per device</h2>{_html_table(_release_rows(report))}"
            f"<h2>Fronts</h2>{''.join(plots)}<h2>Trials</h2>{_html_table(_trial_rows(report))}</body></html>\n")
