"""Which model a run publishes: the last stage's (``release: last``, the default), or with
``release: best`` the best candidate among it and the baselines that passes every gate check.

The baselines (the fp32 teacher, its INT8, for LMs its INT4) are release candidates: when one of
them dominates the compressed model, a ``last`` run fails the gate naming it, and a ``best`` run
publishes the candidate that passes, saying why in ``report.json`` (``release_choice``).
"""

from __future__ import annotations

from typing import Any

from edgeslim.report.gate import BASELINES, evaluate_gate, gate_exit_code


def choose_release(report: dict[str, Any], mode: str) -> dict[str, Any]:
    """``{"mode", "chosen", "reason", "passing"}`` for the report's candidates under ``mode``."""
    compressed = report["release"]
    if mode != "best":
        return {"mode": mode, "chosen": compressed, "reason": "the last stage's model (release: last)", "passing": None}
    names = [compressed] + [r["name"] for r in report["artifacts"] if r["name"] in BASELINES and r["name"] != compressed]
    passing = [name for name in names if gate_exit_code(evaluate_gate({**report, "release": name})) == 0]
    if not passing:
        return {"mode": mode, "chosen": compressed, "passing": [],
                "reason": "no candidate passes every check; the compressed model is kept and the gate fails"}
    if compressed in passing:
        return {"mode": mode, "chosen": compressed, "passing": passing,
                "reason": "the compressed model passes every check (no baseline dominates it)"}
    chosen = min(passing, key=lambda name: (_p50(report, name), _record(report, name)["size_bytes"]))
    return {"mode": mode, "chosen": chosen, "passing": passing,
            "reason": f"the compressed model fails the gate; {chosen} is the fastest (then smallest) candidate that "
                      f"passes every check"}


def _record(report, name: str) -> dict[str, Any]:
    return next(r for r in report["artifacts"] if r["name"] == name)


def _p50(report, name: str) -> float:
    """The candidate's p50 on the first device where it was measured (infinite if nowhere)."""
    for cell in (_record(report, name).get("devices") or {}).values():
        if cell.get("status") == "measured" and cell.get("latency_ms"):
            return cell["latency_ms"]["p50"]
    return float("inf")
