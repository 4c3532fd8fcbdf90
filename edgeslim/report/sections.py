"""What a report says, in the order a reviewer reads it, once for every format: report.md and
report.html render the same :class:`Section` list (so neither can drop what the other has).

1. Summary: the release against the fp32 teacher and the best other baseline, on the first device
   with a latency; the ratios measured in the same run.
2. Gate: every check with its verdict.
3. All artifacts: quality, agreement, size and parameters of every stage and baseline.
4. Latency per device: one table per device (status, p50, p90, interval or prediction band).
5. Quantization candidates, and the cells not measured with their reasons.

Every table carries a legend for each of its columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeslim.report.gate import BASELINES, MIB, Check, find_artifact, gate_exit_code


@dataclass
class Section:
    """A heading (``level`` 2 or 3) with an optional table, its column legend and lines of text."""

    title: str
    rows: list[list[str]] | None = None
    legend: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    level: int = 2
    highlight_column: int | None = None  # a column whose value names the row's class (pass/fail)
    release_row: str | None = None  # the first cell of the row to highlight as the release


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def is_language_model(report: dict[str, Any]) -> bool:
    return any(r.get("perplexity") is not None for r in report["artifacts"])


def quality(record: dict[str, Any], language_model: bool) -> tuple[str, str]:
    """The task figure and its 95% interval as text."""
    if language_model:
        interval = record.get("perplexity_interval")
        return number(record.get("perplexity")), "-" if not interval else f"{number(interval[0])}-{number(interval[1])}"
    interval = record.get("accuracy_interval")
    return pct(record.get("accuracy")), "-" if not interval else f"{pct(interval[0])}-{pct(interval[1])}"


def latency_text(cell: dict[str, Any] | None, quantile: str) -> str:
    """A measured latency, ``~`` and the estimate for a predicted one (an emulated cell's too), else
    the cell's status."""
    if not cell:
        return "-"
    if cell.get("latency_ms") and cell.get("status") in ("measured", "predicted"):
        return ("~" if cell["status"] == "predicted" else "") + f"{cell['latency_ms'][quantile]:.2f}"
    if cell.get("predicted_latency_ms") is not None:
        return f"~{cell['predicted_latency_ms']:.2f}"
    return cell.get("status", "-")


def headline_device(report: dict[str, Any]) -> str | None:
    """The first device on which the release has a measured latency, else a predicted one."""
    release = find_artifact(report, report["release"])
    for status in ("measured", "predicted"):
        for device in [d["name"] for d in report["devices"]]:
            if (release["devices"].get(device) or {}).get("status") == status:
                return device
    return None


def best_baseline(report: dict[str, Any], device: str | None) -> dict[str, Any] | None:
    """The fastest baseline other than the teacher and the release on ``device`` (by decode rate for
    a language model; the most accurate where none has a latency): the one a release must beat to
    be worth shipping."""
    others = [r for r in report["artifacts"] if r["name"] in BASELINES
              and r["name"] not in (report["teacher"], report["release"])]
    timed = [r for r in others if device and ((r["devices"].get(device) or {}).get("latency_ms"))]
    decoding = [r for r in timed if r["devices"][device].get("decode_tokens_per_s")]
    if decoding:  # a language model's speed is its decode rate
        return max(decoding, key=lambda r: r["devices"][device]["decode_tokens_per_s"])
    if timed:
        return min(timed, key=lambda r: r["devices"][device]["latency_ms"]["p50"])
    return max(others, key=lambda r: r.get("accuracy") or 0.0, default=None)


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header plus the release, the fp32 teacher and the best other baseline (the terminal shows it too)."""
    language_model = is_language_model(report)
    device = headline_device(report)
    teacher = find_artifact(report, report["teacher"])
    header = ["", "artifact", "perplexity" if language_model else "accuracy", "95% interval", "agree", "size MiB"]
    header += [f"{device} {'decode tok/s' if language_model else 'p50 ms'}", "speed-up"] if device else []
    rows = [header]
    baseline = best_baseline(report, device)
    entries = [("release", find_artifact(report, report["release"])), ("teacher", teacher)]
    entries += [("best baseline", baseline)] if baseline else []
    for role, record in entries:
        score, span = quality(record, language_model)
        row = [role, record["name"], score, span, pct(record.get("agreement")), f"{record['size_bytes'] / MIB:.2f}"]
        if device:
            cell, base = record["devices"].get(device) or {}, teacher["devices"].get(device) or {}
            row += speed_columns(cell, base, language_model)
        rows.append(row)
    return rows


def speed_columns(cell: dict[str, Any], teacher: dict[str, Any], language_model: bool) -> list[str]:
    """A summary row's speed and its ratio to the fp32 teacher on one device: p50 latency, or for a
    language model decode tokens/s (what a user of a chat app waits for; the prefill p50 is in the
    device table)."""
    if language_model:
        mine, base = cell.get("decode_tokens_per_s"), teacher.get("decode_tokens_per_s")
        ratio = mine / base if mine and base else None
        return ["-" if mine is None else f"{mine:.1f}", "-" if ratio is None else f"{ratio:.2f}x"]
    ratio = (teacher["latency_ms"]["p50"] / cell["latency_ms"]["p50"]
             if cell.get("latency_ms") and teacher.get("latency_ms") else None)
    return [latency_text(cell, "p50"), "-" if ratio is None else f"{ratio:.1f}x"]


SUMMARY_LEGEND = [
    ("accuracy / perplexity", "the task figure on the eval split, batch 1 (the one scoring path)"),
    ("95% interval", "Wilson's interval of the accuracy, or a bootstrap over texts of the perplexity"),
    ("agree", "share of eval examples (or greedy tokens) where the artifact's top-1 equals the fp32 teacher ONNX's"),
    ("size MiB", "bytes a device must hold (ONNX file and external data, or torch weights)"),
    ("DEVICE p50 ms", "median latency at batch 1 on the first device that measured the release (~: predicted)"),
    ("DEVICE decode tok/s", "language models: tokens per second after the prompt, through the KV cache, 1 thread"),
    ("speed-up", "the fp32 teacher's p50 divided by the artifact's (language models: the artifact's decode "
                 "tokens/s divided by the teacher's), on that device"),
]
ARTIFACT_LEGEND = [
    ("kind", "torch (scored, not timed), onnx, or bundle (the mobile release folder)"),
    ("params", "weight elements (4-bit weights counted as elements, not bytes)"),
    ("other columns", "as in the summary"),
]
DEVICE_LEGEND = [
    ("status", "measured here or over ssh; predicted (no runner: roofline estimate); emulated (outputs checked "
               "under qemu, never a measured latency: the ~ figure is the profile's prediction); skipped or error "
               "(see Cells not measured)"),
    ("p50 / p90 ms", "latency quantiles at batch 1 on real eval lengths; ~ marks a prediction"),
    ("interval", "95% interval of p50 (order statistics) for a measurement, or the prediction's error band"),
    ("tok/s", "greedy decode tokens per second (language models)"),
]


def artifact_rows(report: dict[str, Any]) -> list[list[str]]:
    language_model = is_language_model(report)
    rows = [["artifact", "kind", "perplexity" if language_model else "accuracy", "95% interval", "agree",
             "size MiB", "params"]]
    for record in report["artifacts"]:
        score, span = quality(record, language_model)
        rows.append([record["name"], record["kind"], score, span, pct(record.get("agreement")),
                     f"{record['size_bytes'] / MIB:.2f}", f"{record['params'] / 1e6:.2f}M" if record.get("params") else "-"])
    return rows


def device_rows(report: dict[str, Any], device: str) -> list[list[str]]:
    language_model = is_language_model(report)
    rows = [["artifact", "status", "p50 ms", "p90 ms", "interval"] + (["tok/s"] if language_model else [])]
    for record in report["artifacts"]:
        if record["kind"] == "torch":
            continue
        cell = record["devices"].get(device) or {}
        interval = (cell.get("latency_interval_ms") or {}).get("p50") or cell.get("predicted_latency_interval_ms")
        span = "-" if not interval else f"{interval[0]:.2f}-{interval[1]:.2f}"
        row = [record["name"], cell.get("status", "-"), latency_text(cell, "p50"), latency_text(cell, "p90"), span]
        rows.append(row + ([number(cell.get("decode_tokens_per_s"))] if language_model else []))
    return rows


def placement_lines(report: dict[str, Any], device: str) -> list[str]:
    """For each artifact a GPU (or other accelerator) provider did not run whole: the share it ran
    and the operator types that fell back to another provider (what makes a GPU release slow)."""
    lines = []
    for record in report["artifacts"]:
        placement = (record["devices"].get(device) or {}).get("node_placement") or {}
        fallback = placement.get("fallback_ops")
        if fallback:
            shares = ", ".join(f"{provider} {100 * share:.0f}%" for provider, share in placement["by_provider"].items())
            ops = ", ".join(f"{op} x{runs}" for op, runs in fallback.items())
            lines.append(f"{record['name']}: node runs by provider {shares}; not on the first provider: {ops}")
    return lines


def candidate_rows(quantize: dict[str, Any]) -> list[list[str]]:
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


def unmeasured_reasons(report: dict[str, Any]) -> list[str]:
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


def gate_rows(checks: list[Check]) -> list[list[str]]:
    return [["check", "device", "limit", "actual", "verdict", "detail"]] + [
        [c.budget, c.device or "-", f"{c.limit:g}", "-" if c.actual is None else f"{c.actual:g}",
         "pass" if c.passed else "FAIL", c.detail] for c in checks]


def sections(report: dict[str, Any], checks: list[Check], ratio_lines: list[str]) -> list[Section]:
    """Everything a report says, in reading order (see the module docstring)."""
    release = report["release"]
    verdict = "PASS" if gate_exit_code(checks) == 0 else "FAIL"
    out = [Section("Summary", summary_rows(report), SUMMARY_LEGEND, ratio_lines, release_row="release"),
           Section(f"Gate: {verdict}", gate_rows(checks) if checks else None, [],
                   [] if checks else ["No budgets set."], highlight_column=4),
           Section("All artifacts", artifact_rows(report), ARTIFACT_LEGEND, release_row=release),
           Section("Latency per device", legend=DEVICE_LEGEND)]
    for device in report["devices"]:
        threads = device.get("threads", "?")
        out.append(Section(f"{device['name']} ({device.get('access', '?')}, {threads} thread{'' if threads == 1 else 's'})",
                           device_rows(report, device["name"]), lines=placement_lines(report, device["name"]),
                           level=3, release_row=release))
    for record in report["artifacts"]:
        quantize = record.get("quantize")
        if quantize:
            choice = quantize.get("choice")
            out.append(Section(f"Quantization candidates ({record['name']})", candidate_rows(quantize),
                               lines=[f"Kept {choice['name']}: {choice.get('reason')}."] if choice else []))
    reasons = unmeasured_reasons(report)
    if reasons:
        out.append(Section("Cells not measured", lines=reasons))
    return out
