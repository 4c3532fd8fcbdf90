"""The release gate: checks the release artifact of a report against its budgets.

Exit codes (the CLI contract): 0 every budget holds, 1 a budget failed (the table says which and by how
much), 2 bad input. Only ``measured`` latency counts against a latency budget unless the budgets allow
``predicted``; a budget for a device that was not measured fails, because it was not shown to hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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


def evaluate_gate(report: dict[str, Any], budgets: dict[str, Any] | None = None) -> list[Check]:
    """Every budget check on the report's release artifact (``budgets`` overrides the report's)."""
    budgets = budgets if budgets is not None else report.get("budgets") or {}
    release = find_artifact(report, report["release"])
    teacher = find_artifact(report, report["teacher"])
    checks: list[Check] = []
    if budgets.get("accuracy_drop") is not None:
        checks.append(_accuracy_check(release, teacher, budgets["accuracy_drop"]))
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
    for device, limit in (budgets.get("peak_memory_mb") or {}).items():
        checks.append(_memory_check(release, device, limit))
    for device, limit in (budgets.get("instructions") or {}).items():
        checks.append(_instructions_check(release, device, limit))
    return checks


def _accuracy_check(release, teacher, limit: float) -> Check:
    if release.get("accuracy") is None or teacher.get("accuracy") is None:
        return Check("accuracy_drop", None, limit, None, False, "accuracy was not measured")
    drop = teacher["accuracy"] - release["accuracy"]
    return Check("accuracy_drop", None, limit, round(drop, 6), drop <= limit + 1e-12,
                 f"teacher {teacher['accuracy']:.4f} -> release {release['accuracy']:.4f} (drop {drop:+.4f}, limit {limit:g})")


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
    return Check(name, device, limit, actual, actual <= limit,
                 f"{actual:.3f} ms vs {limit:g} ms ({cell['status']})")


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
