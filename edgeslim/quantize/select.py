"""Accuracy-aware choice among quantization candidates, with sensitivity-driven node exclusion.

Every candidate is quantized, scored on the eval split (accuracy drop against the reference) and
timed together with the others (interleaved, one thread, batch 1, medians). The fastest candidate
within the accuracy budget wins. When none is within budget, the candidate closest to it is taken
apart: each of its quantized nodes is quantized alone and the output error it adds is measured; the
nodes that add the most are then left in float, one more at a time, until the budget holds. When even
that fails the most accurate candidate is kept and the gap is reported, so a run never ends empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError, describe
from edgeslim.quantize import measure as qm
from edgeslim.quantize.specs import for_devices
from edgeslim.report.evaluate import complete_feeds, encode

# A drop this close to the budget counts as within it (accuracy is a ratio of integers).
TOLERANCE = 1e-9


@dataclass
class Candidate:
    """One quantized model and what was measured about it."""

    name: str
    spec: Any
    path: Path | None
    excluded: list[str] = field(default_factory=list)
    accuracy: float | None = None
    drop: float | None = None
    output_error: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_samples: list[float] = field(default_factory=list, repr=False)
    error: str | None = None

    def meets(self, budget: float | None) -> bool:
        if self.error is not None:
            return False
        return budget is None or (self.drop is not None and self.drop <= budget + TOLERANCE)

    def row(self, budget: float | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.spec.model_dump(mode="json", exclude_none=True),
            "excluded_nodes": self.excluded,
            "accuracy": self.accuracy,
            "accuracy_drop": self.drop,
            "output_error": self.output_error,
            "size_bytes": self.size_bytes,
            "latency_ms_p50": self.latency_ms,
            "meets_budget": self.meets(budget) if self.error is None else False,
            "error": self.error,
        }


@dataclass
class Outcome:
    """The candidates, the reference they were scored against, and the choice."""

    candidates: list[Candidate]
    chosen: Candidate
    reason: str
    budget: float | None
    reference: dict[str, Any]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen_path(self) -> Path:
        return self.chosen.path

    def manifest(self) -> dict[str, Any]:
        chosen = self.chosen
        size_in = self.reference.get("size_bytes")
        metrics = {
            "accuracy": chosen.accuracy,
            "accuracy_drop": chosen.drop,
            "reference_accuracy": self.reference.get("accuracy"),
            "size_bytes": chosen.size_bytes,
            "input_size_bytes": size_in,
            "size_ratio": chosen.size_bytes / size_in if size_in and chosen.size_bytes else None,
            "latency_ms_p50": chosen.latency_ms,
            "input_latency_ms_p50": self.reference.get("latency_ms_p50"),
        }
        choice = {
            "name": chosen.name,
            "reason": self.reason,
            "budget_accuracy_drop": self.budget,
            "meets_budget": chosen.meets(self.budget),
            "gap": None if chosen.meets(self.budget) or chosen.drop is None else chosen.drop - self.budget,
            "excluded_nodes": chosen.excluded,
        }
        return {
            "metrics": metrics,
            "mode": chosen.spec.mode,
            "candidates": [c.row(self.budget) for c in self.candidates],
            "choice": choice,
            "reference": self.reference,
            "sensitivity": self.sensitivity,
        }


class Scorer:
    """Measures candidates of one source model against one reference (accuracy and outputs)."""

    def __init__(self, src: Path, tokenizer, examples: list, task: str, max_length: int, sensitivity_samples: int):
        self.src = src
        self.tokenizer = tokenizer
        self.examples = examples
        self.task = task
        self.max_length = max_length
        texts = [ex.text for ex in examples[:sensitivity_samples]]
        self.probe_feeds = encode(tokenizer, texts, max_length) if tokenizer is not None and texts else []
        self.probe_reference = qm.outputs(src, self.probe_feeds) if self.probe_feeds else []

    def accuracy(self, onnx_file: Path) -> float | None:
        if not self.examples or self.tokenizer is None:
            return None
        return qm.task_accuracy(onnx_file, self.tokenizer, self.examples, self.task, self.max_length)

    def output_error(self, onnx_file: Path) -> float | None:
        if not self.probe_feeds:
            return None
        return qm.output_error(self.probe_reference, qm.outputs(onnx_file, self.probe_feeds))


def load_tokenizer(folder: Path):
    """The artifact's tokenizer, or ``None`` when the folder has none (then nothing can be scored)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return None


def accuracy_budget(config, recipe) -> float | None:
    """The stage's ``max_accuracy_drop``, else the recipe's ``budgets.accuracy_drop``, else none."""
    if config.max_accuracy_drop is not None:
        return config.max_accuracy_drop
    budgets = getattr(recipe, "budgets", None)
    return getattr(budgets, "accuracy_drop", None)


def drop_reference(config, input_accuracy: float | None, teacher: float | None, whole_split: bool) -> tuple[float | None, str]:
    """The accuracy drops are counted from, and its name.

    The stage's ``max_accuracy_drop`` bounds what quantization itself costs, so it counts from the
    input model. The recipe's ``budgets.accuracy_drop`` bounds the release against the teacher, so it
    counts from the teacher's eval accuracy when the teacher stage recorded one for the same (whole)
    eval split; otherwise from the input model.
    """
    if config.max_accuracy_drop is None and teacher is not None and whole_split:
        return teacher, "teacher"
    return input_accuracy, "input"


def teacher_accuracy(ctx) -> float | None:
    """The teacher's eval accuracy when its stage recorded one (drops are then counted from it)."""
    teacher = getattr(ctx, "teacher", None)
    metrics = (teacher.manifest.get("metrics") if teacher is not None else None) or {}
    for key in ("eval_accuracy", "accuracy"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


class CandidateBuilder:
    """Quantizes and scores candidates of one source model: the calibration feeds (made once per
    size), the torch model neural-compressor starts from, unique names, and the drop from
    ``baseline``. A quantizer that fails on one candidate records the error and the others go on."""

    def __init__(self, src: Path, work: Path, scorer: Scorer, data, baseline: float | None,
                 tolerable_loss: float, torch_dir: Path | None, log):
        self.src, self.work, self.scorer, self.data = src, work, scorer, data
        self.baseline, self.tolerable_loss, self.torch_dir, self.log = baseline, tolerable_loss, torch_dir, log
        self._calibration: dict[int, list] = {}
        self._taken: set[str] = set()

    def calibration(self, n: int) -> list:
        """``n`` training examples as complete feeds of the source model (cached per ``n``)."""
        if n not in self._calibration:
            if self.data is None or self.scorer.tokenizer is None:
                raise EdgeslimError("static and calibrated quantization need the recipe's data and a tokenizer")
            sess = qm.session(self.src)
            self._calibration[n] = [complete_feeds(sess, feed) for feed in self.data.calibration(self.scorer.tokenizer, n)]
        return self._calibration[n]

    def torch_evaluator(self):
        """``evaluate(torch_model) -> accuracy`` for neural-compressor's autotune, when there is eval data."""
        if not self.scorer.examples:
            return None
        from edgeslim.quantize.inc import torch_accuracy

        scorer = self.scorer
        return lambda model: torch_accuracy(model, scorer.tokenizer, scorer.examples, scorer.max_length)

    def build(self, spec, extra_exclude: list[str] | None = None, suffix: str = "") -> Candidate:
        name = unique_name(spec.label() + suffix, self._taken)
        cand = Candidate(name, spec, self.work / f"{name}.onnx",
                         excluded=list(spec.nodes_to_exclude) + list(extra_exclude or []))
        self.log(f"quantize: candidate {name}")
        try:
            feeds = self.calibration(spec.calibration_samples) if spec.needs_calibration else None
            spec.quantize(self.src, cand.path, calibration=feeds, torch_dir=self.torch_dir, extra_exclude=extra_exclude,
                          evaluate=self.torch_evaluator(), tolerable_loss=self.tolerable_loss)
            cand.size_bytes = qm.size_bytes(cand.path)
            cand.accuracy = self.scorer.accuracy(cand.path)
            cand.output_error = self.scorer.output_error(cand.path)
            if cand.accuracy is not None and self.baseline is not None:
                cand.drop = self.baseline - cand.accuracy
        except EdgeslimError:
            raise
        except Exception as exc:  # one candidate that a quantizer cannot handle must not end the run
            cand.error = describe(exc)
            cand.path = None
            self.log(f"quantize: candidate {name} failed: {cand.error}")
        return cand


def select(config, artifact: Artifact, ctx, work: Path) -> Outcome:
    """Build, score and time every candidate of ``config``; return the choice (see module doc)."""
    src = artifact.onnx_path
    data = ctx.data
    tokenizer = load_tokenizer(artifact.path)
    max_length = getattr(data, "max_length", 128) or 128
    eval_split = list(getattr(data, "eval", None) or []) if tokenizer is not None else []
    examples = eval_split[: config.eval_limit] if config.eval_limit else eval_split
    scorer = Scorer(src, tokenizer, examples, getattr(ctx.recipe, "task", "text-classification"), max_length,
                    config.sensitivity_samples)
    budget = accuracy_budget(config, ctx.recipe)
    reference = {"accuracy": scorer.accuracy(src), "size_bytes": qm.size_bytes(src), "examples": len(examples),
                 "teacher_accuracy": teacher_accuracy(ctx)}
    baseline, reference["drops_from"] = drop_reference(config, reference["accuracy"], reference["teacher_accuracy"],
                                                       len(examples) == len(eval_split))
    # neural-compressor's autotune bounds the loss relative to the float model's accuracy.
    tolerable_loss = budget / baseline if budget is not None and baseline else 0.01
    builder = CandidateBuilder(src, work, scorer, data, baseline, tolerable_loss, torch_source(artifact), ctx.log)
    devices = getattr(ctx.recipe, "devices", None)
    candidates = [builder.build(for_devices(spec, devices)) for spec in config.specs()]
    sensitivity: list[dict[str, Any]] = []
    if (budget is not None and scorer.examples and config.exclude_sensitive and config.max_excluded_nodes > 0
            and not any(c.meets(budget) for c in candidates)):
        base = closest(candidates)
        if base is not None and excludable(base.spec):
            sensitivity = rank_nodes(base.spec, src, work, scorer, builder.calibration, builder.torch_dir, ctx)
            for k in range(1, min(config.max_excluded_nodes, len(sensitivity)) + 1):
                cand = builder.build(base.spec, extra_exclude=[row["node"] for row in sensitivity[:k]], suffix=f"-excl{k}")
                candidates.append(cand)
                if cand.meets(budget) or cand.error:
                    break
    built = [c for c in candidates if c.error is None]
    if not built:
        raise EdgeslimError(f"no quantization candidate could be built; first error: {candidates[0].error}")
    reference["latency_ms_p50"] = time_candidates(src, built, scorer, config.latency_runs, tokenizer)
    reference["latency_measured"] = (f"build machine, onnxruntime CPU, 1 thread, batch 1, median of "
                                     f"{config.latency_runs} interleaved runs over real-length eval texts")
    chosen, reason = choose(built, budget, baseline)
    ctx.log(f"quantize: kept {chosen.name} ({reason})")
    return Outcome(candidates, chosen, reason, budget, reference, sensitivity)


def closest(candidates: list[Candidate]) -> Candidate | None:
    """The built candidate with the smallest accuracy drop (the cheapest one to repair)."""
    scored = [c for c in candidates if c.error is None and c.drop is not None]
    return min(scored, key=lambda c: c.drop) if scored else None


def excludable(spec) -> bool:
    """Whether ``spec``'s quantizer can leave chosen ONNX nodes in float (neural-compressor's cannot)."""
    return spec.mode != "neural_compressor"


def rank_nodes(spec, src: Path, work: Path, scorer: Scorer, calibration, torch_dir, ctx) -> list[dict[str, Any]]:
    """Output error each weight node adds when it alone is quantized, largest first."""
    nodes = [n for n in qm.weight_nodes(src, spec.weight_ops()) if n not in spec.nodes_to_exclude]
    feeds = calibration(spec.calibration_samples) if spec.needs_calibration else None
    rows = []
    probe = work / "sensitivity-probe.onnx"
    with ctx.progress(len(nodes), "quantize: node sensitivity", unit="node") as bar:
        for node in nodes:
            others = [n for n in nodes if n != node]
            spec.quantize(src, probe, calibration=feeds, torch_dir=torch_dir, extra_exclude=others)
            rows.append({"node": node, "output_error": scorer.output_error(probe)})
            bar.update(1)
    probe.unlink(missing_ok=True)
    rows.sort(key=lambda row: row["output_error"], reverse=True)
    return rows


def time_candidates(src: Path, built: list[Candidate], scorer: Scorer, runs: int, tokenizer) -> float | None:
    """Interleaved median latency of the input and every candidate; returns the input's."""
    feeds = scorer.probe_feeds[:8]
    if not feeds and tokenizer is not None:
        feeds = encode(tokenizer, ["a short sentence to time the model with"])
    if not feeds:
        return None
    models = {"__input__": src, **{c.name: c.path for c in built}}
    samples = qm.interleaved_samples(models, feeds, runs=runs)
    for cand in built:
        cand.latency_samples = samples.get(cand.name) or []
        cand.latency_ms = float(np.median(cand.latency_samples)) if cand.latency_samples else None
    return float(np.median(samples["__input__"])) if samples.get("__input__") else None


def fastest_ties(candidates: list[Candidate]) -> list[Candidate]:
    """The fastest candidate and every one whose latency ties with it (the interval of their ratio,
    from the interleaved samples, includes 1): a difference inside the noise decides nothing."""
    from edgeslim.stats import compare_latency

    def speed(c: Candidate):
        return c.latency_ms if c.latency_ms is not None else float("inf")

    fastest = min(candidates, key=speed)
    if not fastest.latency_samples:
        return [fastest]
    return [c for c in candidates if c is fastest
            or (c.latency_samples and compare_latency(c.latency_samples, fastest.latency_samples) <= 0)]


def choose(built: list[Candidate], budget: float | None, baseline: float | None) -> tuple[Candidate, str]:
    """Within budget, the fastest candidate; latencies that tie within noise go to the smaller file,
    then the more accurate model. None within budget: the most accurate, with the gap in the reason."""
    def speed(c: Candidate):
        return (c.latency_ms if c.latency_ms is not None else float("inf"), c.size_bytes or 0)

    within = [c for c in built if c.meets(budget)]
    if within:
        ties = fastest_ties(within)
        best = min(ties, key=lambda c: (c.size_bytes or 0, c.drop if c.drop is not None else 0.0, speed(c)))
        rule = (f"fastest of {len(within)} candidates" if len(ties) == 1 else
                f"smallest of the {len(ties)} candidates whose latency ties (within noise) with the fastest of {len(within)}")
        if budget is None:
            why = "no accuracy budget" if baseline is not None else "no eval data to score accuracy"
            return best, f"{rule} ({why})"
        kept_float = len(best.excluded) - len(best.spec.nodes_to_exclude)
        how = f", after leaving its {kept_float} most sensitive node(s) in float" if kept_float else ""
        return best, (f"{rule} within the accuracy budget "
                      f"(drop {best.drop:.4f} <= {budget:.4f}){how}")
    best = min(built, key=lambda c: (c.drop if c.drop is not None else float("inf"), speed(c)))
    return best, (f"no candidate meets the accuracy budget {budget:.4f}; kept the most accurate "
                  f"(drop {best.drop:.4f}, {best.drop - budget:.4f} over budget)")


def torch_source(artifact: Artifact) -> Path | None:
    """The torch model folder the ONNX artifact was exported from (the pipeline records it)."""
    path = (artifact.manifest.get("input") or {}).get("path")
    return Path(path) if path and Path(path).is_dir() else None
