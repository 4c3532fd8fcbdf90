"""One trial of a search: the recipe with the trial's values, run, scored, and its latency predicted.

Every trial runs the ordinary pipeline (:class:`edgeslim.pipeline.Pipeline`) into
``DIR/trials/NNN`` with the search's shared stage store, so the teacher, the baselines and every
stage prefix two trials share (the same distillation before two pruning ratios) run once. The
release is scored on the recipe's eval split exactly as the report scores it
(:func:`edgeslim.report.matrix.score_cached`), and its p50 latency on each device is the calibrated
prediction (:func:`edgeslim.targets.predict.predict_latency_ms`); a device without a ``predict``
section is measured instead. Predictions rank the trials; only the Pareto front is measured
(:mod:`edgeslim.search.front`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeslim.search.config import trial_stages


def decode_params(params: dict[str, str]) -> dict[str, Any]:
    """Optuna keeps each choice as its JSON text (it only stores plain scalars); the values again."""
    return {key: json.loads(value) for key, value in params.items()}


def recipe_for_trial(recipe, params: dict[str, Any], devices: list[str] | None = None):
    """``recipe`` with the trial's values applied (and without its search section), for ``devices``
    (default: the recipe's)."""
    from edgeslim.recipe import Recipe

    payload = recipe.model_dump(mode="json", exclude={"stages", "search"})
    payload["stages"] = trial_stages(recipe.stage_dump(), params)
    if devices is not None:
        payload["devices"] = devices
        payload["budgets"]["latency_ms"] = {d: v for d, v in payload["budgets"]["latency_ms"].items() if d in devices}
        for section in ("peak_memory_mb", "instructions"):
            payload["budgets"][section] = {d: v for d, v in payload["budgets"][section].items() if d in devices}
    trial = Recipe.model_validate(payload)
    trial.base_dir, trial.path = recipe.base_dir, recipe.path
    return trial


def run_trial(recipe, params: dict[str, Any], trial_dir: Path, store: Path, quiet: bool = True) -> dict[str, Any]:
    """Run one trial; its evaluation: quality, size, predicted (or measured) p50 per device, and where
    its release is."""
    from edgeslim.pipeline import Pipeline, check_stage_order
    from edgeslim.report.matrix import scored_examples

    trial = recipe_for_trial(recipe, params)
    check_stage_order(trial)
    outcome = Pipeline(trial, trial_dir, quiet=quiet, stage_store=store).run()
    release = outcome.stages[-1].artifact if outcome.stages else outcome.baselines["teacher-fp32"].artifact
    examples = scored_examples(trial, outcome.data)
    score = _score(release, examples, trial, store)
    teacher = _score(outcome.baselines["teacher-fp32"].artifact, examples, trial, store)
    return {
        "release": str(release.path),
        "stages": [entry.name for entry in trial.stages],
        "quality": quality_of(score, trial.task),
        "teacher_quality": quality_of(teacher, trial.task),
        "size_mb": release.size_bytes() / 1e6,
        "latency_ms": _latency(trial, release, outcome.data),
    }


def quality_of(score: dict[str, Any], task: str) -> float:
    """The task's quality figure: accuracy, or perplexity for causal LMs."""
    return float(score["perplexity"] if task == "causal-lm" else score["accuracy"])


def _score(artifact, examples, recipe, store: Path) -> dict[str, Any]:
    """The report's cached score of ``artifact``, kept in the store beside the stages."""
    from edgeslim.report.matrix import score_cached

    return score_cached(artifact, examples, recipe, store / ".scores")


def _latency(recipe, release, data) -> dict[str, dict[str, Any]]:
    """Per device: ``{"p50": ms, "how": "predicted" | "measured"}``."""
    from transformers import AutoTokenizer

    from edgeslim.report.matrix import device_measurer
    from edgeslim.targets.predict import predict_latency_ms
    from edgeslim.targets.profile import load_profile

    feeds = data.encode_each(AutoTokenizer.from_pretrained(release.path), "eval", recipe.measure.samples)
    latency = {}
    for profile in map(load_profile, recipe.devices):
        if profile.predict is not None and recipe.task == "text-classification":
            latency[profile.name] = {"p50": predict_latency_ms(profile, release.onnx_path, feeds), "how": "predicted"}
            continue
        cells = device_measurer(recipe.task)(profile, [("release", release)], data, recipe, quiet=True)
        latency[profile.name] = {"p50": (cells["release"].get("latency_ms") or {}).get("p50"), "how": "measured"}
    return latency
