"""The release gate: checks the release artifact of a report against its budgets.

Exit codes (the CLI contract): 0 every budget holds, 1 a budget failed (the table says which and by how
much), 2 bad input. Only ``measured`` latency counts against a latency budget unless the budgets allow
``predicted``; a budget for a device that was not measured fails, because it was not shown to hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError

MIB = 1024 * 1024


@dataclass
class Check:
    """One budget on one device (or on the model): the limit, the actual value and the verdict."""

    budget: str
    device: str | None
    limit: float
    actual: float | None
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_artifact(report: dict[str, Any], name: str) -> dict[str, Any]:
    for record in report["artifacts"]:
        if record["name"] == name:
            return record
    raise EdgeslimError(f"the report names '{name}' but has no artifact of that name; it is not a complete report")


def verify_release(report: dict[str, Any], report_path: Path) -> Path:
    """Check the published release (``DIR/model`` beside ``DIR/report/report.json``) against the
    hashes the report recorded; raise :class:`EdgeslimError` (exit 2) on any difference.

    A gate verdict is about the files that were measured: a release truncated, edited or replaced
    afterwards must never pass."""
    from edgeslim.artifacts import integrity_problem

    report_path = Path(report_path)
    run_dir = (report_path if report_path.is_dir() else report_path.parent).parent
    model_dir = run_dir / "model"
    files = report.get("release_files")
    if not files:
        raise EdgeslimError(f"{report_path}: the report records no release file hashes (written by an older "
                            "edgeslim); rerun 'edgeslim run' to gate it")
    if not model_dir.is_dir():
        raise EdgeslimError(f"the release folder {model_dir} does not exist; the gate checks the release "
                            "published beside the report (DIR/model for DIR/report/report.json)")
    problem = integrity_problem(model_dir, files)
    if problem is not None:
        raise EdgeslimError(f"release {model_dir} is not the one the report measured: {problem}; "
                            "rerun 'edgeslim run' to rebuild and remeasure it")
    return model_dir


def evaluate_gate(report: dict[str, Any], budgets: dict[str, Any] | None = None) -> list[Check]:
    """Every budget check on the report's release artifact (``budgets`` overrides the report's)."""
    budgets = budgets if budgets is not None else report.get("budgets") or {}
    release = find_artifact(report, report["release"])
    teacher = find_artifact(report, report["teacher"])
    checks: list[Check] = floor_checks(report, teacher, release)
    if budgets.get("accuracy_drop") is not None:
        checks.append(_accuracy_check(release, teacher, budgets["accuracy_drop"]))
    if budgets.get("perplexity_ratio") is not None:
        checks.append(_perplexity_check(release, teacher, budgets["perplexity_ratio"]))
    if budgets.get("size_mb") is not None:
        size = release["size_bytes"] / MIB
        limit = budgets["size_mb"]
        checks.append(Check("size_mb", None, limit, round(size, 3), size <= limit,
                            f"{size:.2f} MiB vs {limit:g} MiB"))
    allow_predicted = bool(budgets.get("allow_predicted"))
    for device, limits in (budgets.get("latency_ms") or {}).items():
        for quantile, limit in limits.items():
            if limit is not None:
                checks.append(_latency_check(release, device, quantile, limit, allow_predicted))
    checks += dominance_checks(report, release)
    checks += parity_checks(report, release, budgets.get("parity") or {})
    for device, limit in (budgets.get("peak_memory_mb") or {}).items():
        checks.append(_memory_check(release, device, limit))
    for device, limit in (budgets.get("instructions") or {}).items():
        checks.append(_instructions_check(release, device, limit))
    return checks


def floor_checks(report: dict[str, Any], teacher, release) -> list[Check]:
    """The teacher and the release must each be significantly better than the report's floor:
    the majority class (one-sided binomial test on the eval split) or a unigram LM (the upper end
    of the perplexity's bootstrap interval below the unigram's). No floor recorded: no check."""
    floor = report.get("floor") or {}
    checks = []
    for role, record in (("teacher", teacher), ("release", release)) if teacher is not release else (("release", release),):
        if floor.get("kind") == "majority-class":
            checks.append(_majority_check(role, record, floor))
        elif floor.get("kind") == "unigram":
            checks.append(_unigram_check(role, record, floor))
    return checks


def _majority_check(role: str, record, floor) -> Check:
    from edgeslim.stats import ALPHA, better_than_rate

    name, rate, n = f"floor.{role}", floor["rate"], floor["examples"]
    if record.get("accuracy") is None:
        return Check(name, None, rate, None, False, f"{role} accuracy was not measured")
    passed, p_value = better_than_rate(record["accuracy"], n, rate)
    verdict = "better than" if passed else "NOT significantly better than"
    return Check(name, None, rate, record["accuracy"], passed,
                 f"{role} accuracy {record['accuracy']:.4f} is {verdict} always guessing '{floor['label']}' "
                 f"({rate:.4f} of {n} eval examples; binomial p={p_value:.3g}, needs < {ALPHA})")


def _unigram_check(role: str, record, floor) -> Check:
    name, limit = f"floor.{role}", floor["perplexity"]
    interval = record.get("perplexity_interval")
    if record.get("perplexity") is None or not interval:
        return Check(name, None, limit, None, False, f"{role} perplexity was not measured")
    passed = interval[1] < limit
    verdict = "better than" if passed else "NOT significantly better than"
    return Check(name, None, limit, record["perplexity"], passed,
                 f"{role} perplexity {record['perplexity']:.2f} (95% interval {interval[0]:.2f}-{interval[1]:.2f}) "
                 f"is {verdict} a unigram model of the training text ({limit:.2f})")



def parity_checks(report: dict[str, Any], release, budget: dict[str, Any]) -> list[Check]:
    """Per emulated or remote device: the release's task accuracy on the device's own outputs within
    ``accuracy_points`` of this host's, and top-1 agreement at least ``min_top1_agreement``.

    A device whose cells could not be computed fails: a PASS says the release holds on every device
    of the recipe, and nothing showed that it does there."""
    from edgeslim.targets.runners.parity import PARITY_ACCESS

    points = budget.get("accuracy_points", 1.0)
    agreement = budget.get("min_top1_agreement", 0.98)
    checks = []
    for device in report.get("devices") or []:
        if not isinstance(device, dict) or device.get("access") not in PARITY_ACCESS:
            continue
        cell = _cell(release, device["name"]) or {}
        if cell.get("device_accuracy") is None and cell.get("top1_agreement") is not None:  # a decoder
            top1 = cell["top1_agreement"]
            checks.append(Check("parity", device["name"], agreement, round(top1, 4), top1 >= agreement,
                                f"greedy tokens agree with x86 at {top1:.1%} of positions (min {agreement:.0%}) "
                                f"over {cell.get('parity_examples')} prompts"))
            continue
        if cell.get("device_accuracy") is None or cell.get("top1_agreement") is None:
            checks.append(Check("parity", device["name"], points, None, False,
                                f"parity not checked (status {cell.get('status')}: {cell.get('reason') or 'no outputs'})"))
            continue
        gap = abs(cell["device_accuracy"] - cell["host_accuracy"]) * 100
        top1 = cell["top1_agreement"]
        passed = gap <= points + 1e-9 and top1 >= agreement
        checks.append(Check("parity", device["name"], points, round(gap, 4), passed,
                            f"device accuracy {cell['device_accuracy']:.4f} vs x86 {cell['host_accuracy']:.4f} "
                            f"({gap:.2f} points, limit {points:g}); top-1 agreement {top1:.1%} (min {agreement:.0%}) "
                            f"on {cell.get('parity_examples')} eval examples"))
    return checks


#: Baselines every report holds: release candidates the compressed model has to beat.
BASELINES = ("teacher-fp32", "teacher-int8", "teacher-int4")


def dominance_checks(report: dict[str, Any], release) -> list[Check]:
    """One check per baseline: the release fails when a baseline is at least as good on every axis.

    A baseline dominates when it is at least as accurate as the release within the release's 95%
    interval (accuracy at least its lower end, perplexity at most its upper end), no larger, and no
    slower beyond noise on any device where both were timed interleaved (the interval of baseline
    p50 / release p50 reaches down to 1 or below). Without any interleaved timing nothing shows the
    release to be faster, so the baseline counts as no slower.
    """
    checks = []
    for record in report["artifacts"]:
        if record["name"] in BASELINES and record["name"] != release["name"]:
            checks.append(_dominance_check(report, record, release))
    return checks


def _dominance_check(report, baseline, release) -> Check:
    name = f"dominance.{baseline['name']}"
    accurate, how_accurate = _as_accurate(baseline, release)
    smaller = baseline["size_bytes"] <= release["size_bytes"]
    size_text = f"{baseline['size_bytes'] / MIB:.2f} vs {release['size_bytes'] / MIB:.2f} MiB"
    faster_somewhere, speed_text = _release_faster(report, release["name"], baseline["name"])
    dominated = accurate and smaller and not faster_somewhere
    if dominated:
        detail = (f"{baseline['name']} is as accurate ({how_accurate}), no larger ({size_text}) and no slower "
                  f"({speed_text}) than the release: ship it instead, or set 'release: best'")
    else:
        reasons = [text for ok, text in ((not accurate, f"less accurate ({how_accurate})"),
                                         (not smaller, f"larger ({size_text})"),
                                         (faster_somewhere, f"slower ({speed_text})")) if ok]
        detail = f"the release beats {baseline['name']}: the baseline is " + ", ".join(reasons)
    return Check(name, None, 0, None, not dominated, detail)


def _as_accurate(baseline, release) -> tuple[bool, str]:
    if release.get("perplexity") is not None and baseline.get("perplexity") is not None:
        high = (release.get("perplexity_interval") or [None, release["perplexity"]])[1]
        return (baseline["perplexity"] <= high,
                f"perplexity {baseline['perplexity']:.2f} vs release {release['perplexity']:.2f}, interval up to {high:.2f}")
    if release.get("accuracy") is None or baseline.get("accuracy") is None:
        return False, "accuracy not measured"
    low = (release.get("accuracy_interval") or [release["accuracy"]])[0]
    return (baseline["accuracy"] >= low,
            f"accuracy {baseline['accuracy']:.4f} vs release {release['accuracy']:.4f}, interval down to {low:.4f}")


def _release_faster(report, release: str, baseline: str) -> tuple[bool, str]:
    """Whether ``release`` is faster than ``baseline`` beyond noise on some device, and the figures."""
    texts = []
    for device, table in (report.get("comparisons") or {}).items():
        row = (table.get(release) or {}).get(baseline)
        if row:
            texts.append(f"{device}: baseline/release p50 {row['ratio']:.2f}x, interval {row['low']:.2f}-{row['high']:.2f}")
            if row["low"] > 1.0:
                return True, texts[-1]
    return False, "; ".join(texts) or "no interleaved timing of both"


def _accuracy_check(release, teacher, limit: float) -> Check:
    if release.get("accuracy") is None or teacher.get("accuracy") is None:
        return Check("accuracy_drop", None, limit, None, False, "accuracy was not measured")
    drop = teacher["accuracy"] - release["accuracy"]
    return Check("accuracy_drop", None, limit, round(drop, 6), drop <= limit + 1e-12,
                 f"teacher {teacher['accuracy']:.4f} -> release {release['accuracy']:.4f} (drop {drop:+.4f}, limit {limit:g})")


def _perplexity_check(release, teacher, limit: float) -> Check:
    """A language model's release against its teacher: the upper end of the release's perplexity
    interval over the teacher's perplexity, at most ``limit``."""
    if release.get("perplexity") is None or teacher.get("perplexity") is None:
        return Check("perplexity_ratio", None, limit, None, False, "perplexity was not measured")
    high = (release.get("perplexity_interval") or [None, release["perplexity"]])[1]
    ratio = high / teacher["perplexity"]
    return Check("perplexity_ratio", None, limit, round(ratio, 4), ratio <= limit + 1e-12,
                 f"release perplexity {release['perplexity']:.2f} (interval up to {high:.2f}) is {ratio:.2f}x the "
                 f"teacher's {teacher['perplexity']:.2f} (limit {limit:g}x)")


def _cell(release, device: str) -> dict[str, Any] | None:
    return (release.get("devices") or {}).get(device)


def _latency_check(release, device: str, quantile: str, limit: float, allow_predicted: bool) -> Check:
    name = f"latency_ms.{quantile}"
    cell = _cell(release, device)
    if cell is None:
        return Check(name, device, limit, None, False, f"device '{device}' is not in the report's matrix")
    usable = ("measured", "predicted") if allow_predicted else ("measured",)
    if cell.get("status") not in usable or not cell.get("latency_ms"):
        reason = cell.get("reason") or ""
        return Check(name, device, limit, None, False,
                     f"not measured (status {cell.get('status')}{': ' + reason if reason else ''})")
    actual = cell["latency_ms"][quantile]
    interval = (cell.get("latency_interval_ms") or {}).get(quantile)
    if interval is None:  # a prediction, or a runner that kept no samples: the point figure is all there is
        return Check(name, device, limit, actual, actual <= limit,
                     f"{actual:.3f} ms vs {limit:g} ms ({cell['status']}; no interval)")
    low, high = interval
    verdict = "" if high <= limit else (" - the interval's upper end is over the limit" if actual <= limit else "")
    return Check(name, device, limit, actual, high <= limit,
                 f"{actual:.3f} ms (95% interval {low:.3f}-{high:.3f}) vs {limit:g} ms ({cell['status']}){verdict}")


def _memory_check(release, device: str, limit: float) -> Check:
    cell = _cell(release, device)
    actual = cell.get("peak_memory_mb") if cell else None
    if actual is None:
        return Check("peak_memory_mb", device, limit, None, False, "peak memory was not measured")
    return Check("peak_memory_mb", device, limit, actual, actual <= limit, f"{actual:.1f} MB vs {limit:g} MB")


def _instructions_check(release, device: str, limit: int) -> Check:
    cell = _cell(release, device)
    actual = cell.get("instructions") if cell else None
    if actual is None:
        return Check("instructions", device, limit, None, False,
                     "instruction count was not measured (needs valgrind and the local runner)")
    return Check("instructions", device, limit, actual, actual <= limit,
                 f"{actual:,} instructions per inference vs {limit:,} (callgrind)")


def gate_exit_code(checks: list[Check]) -> int:
    return 0 if all(check.passed for check in checks) else 1


def format_checks(checks: list[Check]) -> str:
    """A plain-text table of the checks, failures marked, for the terminal."""
    if not checks:
        return "gate: no budgets set; nothing to check (PASS)"
    rows = [("budget", "device", "limit", "actual", "verdict", "detail")]
    for check in checks:
        rows.append((check.budget, check.device or "-", f"{check.limit:g}",
                     "-" if check.actual is None else f"{check.actual:g}",
                     "pass" if check.passed else "FAIL", check.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5] for row in rows]
    verdict = "PASS" if gate_exit_code(checks) == 0 else f"FAIL ({sum(not c.passed for c in checks)} of {len(checks)} budgets)"
    return "\n".join(lines + [f"gate: {verdict}"])
