"""Pareto fronts per device, and the release each device gets.

A trial is on a device's front when no other trial is both faster on that device and at least as
accurate (:func:`edgeslim.report.plots.pareto_front`, the rule the report's plot draws). Fronts are
first found on the predicted latencies; the front's members are then measured on the device, and
the release is the most accurate member whose *measured* p50, size and accuracy drop are within the
device's budgets. Where no member is within them, the fastest member is chosen anyway: its gate then
fails and says why, which is the truth a release pipeline needs.
"""

from __future__ import annotations

from typing import Any

from edgeslim.report.plots import Point, pareto_front


def trial_points(trials: dict[int, dict[str, Any]], device: str, measured: dict[int, float] | None = None) -> list[Point]:
    """Each finished trial as a point on ``device``: its measured p50 where there is one, else its
    predicted p50 (marked predicted)."""
    measured = measured or {}
    points = []
    for number, trial in sorted(trials.items()):
        evaluation = trial["evaluation"]
        latency = evaluation["latency_ms"][device]
        p50 = measured.get(number, latency["p50"])
        if p50 is not None:
            points.append(Point(p50, evaluation["quality"], f"trial {number}",
                                predicted=number not in measured and latency["how"] == "predicted"))
    return points


def front_numbers(trials: dict[int, dict[str, Any]], device: str) -> list[int]:
    """The trial numbers on ``device``'s front by predicted latency, fastest first."""
    return [int(p.name.split()[-1]) for p in pareto_front(trial_points(trials, device))]


def budget_misses(evaluation: dict[str, Any], p50: float | None, limits: dict[str, Any]) -> list[str]:
    """The budgets a trial misses on a device where its p50 is ``p50``; empty when it is within all.
    ``limits``: ``p50`` (ms), ``size_mb``, ``accuracy_drop`` (absolute, against the teacher)."""
    misses = []
    if limits.get("p50") is not None and (p50 is None or p50 > limits["p50"]):
        misses.append(f"p50 {'unmeasured' if p50 is None else f'{p50:.3f}'} ms > {limits['p50']} ms")
    if limits.get("size_mb") is not None and evaluation["size_mb"] > limits["size_mb"]:
        misses.append(f"size {evaluation['size_mb']:.2f} MB > {limits['size_mb']} MB")
    drop = limits.get("accuracy_drop")
    if drop is not None and evaluation["teacher_quality"] - evaluation["quality"] > drop:
        misses.append(f"accuracy {evaluation['quality']:.4f} is more than {drop} below the teacher's "
                      f"{evaluation['teacher_quality']:.4f}")
    return misses


def choose_release(front: list[int], trials: dict[int, dict[str, Any]], measured: dict[int, float | None],
                   limits: dict[str, Any]) -> dict[str, Any]:
    """The front trial a device releases, given each front trial's p50 on it (``measured``): the most
    accurate within its budgets (ties: the faster), else the fastest; with the reason."""
    def p50(number: int) -> float:
        value = measured.get(number)
        return float("inf") if value is None else value

    quality = {n: trials[n]["evaluation"]["quality"] for n in front}
    fits = [n for n in front if not budget_misses(trials[n]["evaluation"], measured.get(n), limits)]
    if fits:
        best = max(fits, key=lambda n: (quality[n], -p50(n)))
        return {"trial": best, "reason": f"the most accurate of the {len(fits)} front trial(s) within the device's budgets"}
    fastest = min(front, key=lambda n: (p50(n), n))
    misses = budget_misses(trials[fastest]["evaluation"], measured.get(fastest), limits)
    return {"trial": fastest, "reason": "no front trial is within the device's budgets; the fastest is released "
                                        f"for the gate to judge ({'; '.join(misses)})"}
