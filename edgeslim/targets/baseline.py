"""Compare a release with a previous one on a device, both measured interleaved in the same run.

A latency figure taken yesterday on a busy CI machine says little about today's model. So the
baseline model is measured again, now, interleaved with the current one (same process, same
inputs, round-robin), and the verdict is on their ratio and its interval
(:func:`edgeslim.stats.ratio_interval`). A regression fails the gate only when it exceeds the
``threshold`` (e.g. 5 %) and the whole interval lies above 1, so neither a tiny real slowdown nor a
noisy machine fails a release.

The instruction count (callgrind, optional) is nearly deterministic and is compared with its own,
tighter threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.artifacts import ONNX_FILE, read_json
from edgeslim.errors import EdgeslimError
from edgeslim.report.gate import Check
from edgeslim.stats import ratio_interval
from edgeslim.targets.profile import DeviceProfile
from edgeslim.targets.runners import measure


def resolve_baseline(path: str | Path) -> Path:
    """The baseline's ONNX file from an ``.onnx`` file, a model folder, or a previous ``report.json``."""
    path = Path(path)
    if path.is_dir() and (path / "report.json").is_file():
        path = path / "report.json"
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / ONNX_FILE).is_file():
        return path / ONNX_FILE
    if path.is_file() and path.suffix == ".json":
        try:
            report = read_json(path)
            release = next(a for a in report["artifacts"] if a["name"] == report["release"])
        except (ValueError, KeyError, TypeError, StopIteration):
            raise EdgeslimError(f"baseline '{path}' is not an edgeslim report.json with a release artifact") from None
        return resolve_baseline(release["path"])
    raise EdgeslimError(f"baseline '{path}' is not an ONNX file, a model folder with {ONNX_FILE}, or a report.json")


def latency_regression(current_ms: list[float], baseline_ms: list[float], *, threshold: float = 0.05,
                       blocks: int = 10, k: float = 3.0, session_noise: float = 0.0) -> dict[str, Any]:
    """Regression of ``current`` over ``baseline`` from interleaved samples (both in run order).

    Returns ``ratio`` (p50 current / p50 baseline), its 95% interval ``low``-``high`` and ``noise``
    (from :func:`edgeslim.stats.ratio_interval`), ``regression`` (ratio - 1) and ``failed``: the
    regression is above the threshold and the whole interval is above 1 (a slowdown inside the noise
    is a tie, never a failure). ``session_noise`` widens the interval on both sides: how far two
    sessions of one model differ (memory placement), which no within-session spread shows.
    """
    n = min(len(current_ms), len(baseline_ms))
    if n < 2 * blocks:
        raise EdgeslimError(f"baseline comparison needs at least {2 * blocks} runs per model, got {n}; raise runs")
    interval = ratio_interval(current_ms, baseline_ms, blocks=blocks, k=k)
    interval.update(low=interval["low"] - session_noise, high=interval["high"] + session_noise,
                    noise=interval["noise"] + session_noise, session_noise=session_noise)
    regression = interval["ratio"] - 1.0
    return {**interval, "regression": regression,
            "failed": bool(regression > threshold and interval["low"] > 1.0)}


def instruction_counts(profile: DeviceProfile, models: list[Path], inputs) -> list[int | None]:
    """Callgrind instructions per inference of each model (``None`` each where they cannot be counted:
    no valgrind, or a device that is not this machine)."""
    if profile.access.kind != "local":
        return [None for _ in models]
    from edgeslim.targets.runners.local import count_instructions, count_plan

    plan = count_plan(models)  # one plan for both sides, so their counts are comparable
    return [count_instructions(profile, model, inputs, plan) for model in models]


def session_noise(cells: dict[str, dict], key: str) -> float:
    """How far two sessions of the same model differ (the larger of the two twins' p50 ratios - 1)."""
    import numpy as np

    return max(abs(float(np.median(cells[name][key]) / np.median(cells[f"{name}-twin"][key])) - 1.0)
               for name in ("current", "baseline"))


def compare_to_baseline(profile: DeviceProfile, current: Path, baseline: Path, inputs: list[dict[str, np.ndarray]], *,
                        warmup: int = 10, runs: int = 200, threshold: float = 0.05,
                        instructions: bool = False, instruction_threshold: float = 0.01,
                        clock: str = "wall") -> list[Check]:
    """Gate checks of ``current`` against ``baseline`` on one device (latency p50, optionally instructions).

    ``clock="cpu"`` compares the measuring thread's CPU time instead of wall-clock time: with one
    intra-op thread it leaves out time spent preempted, the steadier choice on a shared CI machine.
    """
    if not 0 <= threshold < 10:
        raise EdgeslimError(f"baseline threshold must be a fraction such as 0.05, got {threshold}")
    if clock not in ("wall", "cpu"):
        raise EdgeslimError(f"baseline clock must be 'wall' or 'cpu', got '{clock}'")
    # each model twice, in two sessions: their difference is the session-to-session noise
    models = {"current": Path(current), "baseline": resolve_baseline(baseline)}
    models.update({f"{name}-twin": path for name, path in list(models.items())})
    cells = measure(profile, models, inputs, warmup=warmup, runs=runs, memory=False, samples=True)
    cur, base = cells["current"], cells["baseline"]
    name = "baseline.latency_p50"
    bad = next((c for c in cells.values() if c["status"] != "measured"), None)
    if bad is not None:
        return [Check(name, profile.name, threshold, None, False,
                      f"not measured (status {bad['status']}: {bad.get('reason') or ''})")]
    key, stats = ("samples_ms", "latency_ms") if clock == "wall" else ("cpu_samples_ms", "cpu_ms")
    verdict = latency_regression(cur[key] + cells["current-twin"][key], base[key] + cells["baseline-twin"][key],
                                 threshold=threshold, session_noise=session_noise(cells, key))
    checks = [Check(name, profile.name, threshold, round(verdict["regression"], 4), not verdict["failed"],
                    f"{clock} p50 {cur[stats]['p50']:.3f} ms vs baseline {base[stats]['p50']:.3f} ms "
                    f"({verdict['regression']:+.1%}, 95% interval {verdict['low'] - 1:+.1%} to {verdict['high'] - 1:+.1%}; "
                    f"threshold {threshold:.0%}; measured interleaved in one run)")]
    if instructions:
        now, before = instruction_counts(profile, [Path(current), resolve_baseline(baseline)], inputs)
        if now is None or before is None:
            checks.append(Check("baseline.instructions", profile.name, instruction_threshold, None, False,
                                "instruction count unavailable (valgrind not installed?)"))
        else:
            change = now / before - 1.0
            checks.append(Check("baseline.instructions", profile.name, instruction_threshold, round(change, 5),
                                change <= instruction_threshold,
                                f"{now} vs baseline {before} instructions per inference ({change:+.2%})"))
    return checks
