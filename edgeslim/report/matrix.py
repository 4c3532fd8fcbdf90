"""The benchmark matrix: every artifact of a run x every device of the recipe, into ``report.json``.

Each artifact gets its size, parameter count, accuracy and agreement with the fp32 teacher ONNX on
the eval split; each ONNX artifact gets one cell per device from :func:`edgeslim.targets.runners.measure`
(all models of a device measured interleaved in one process, so ratios are fair on a busy machine).
Torch artifacts are scored for accuracy but not timed: their exported descendants are.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.artifacts import Artifact, atomic_write_json, hash_bytes, read_json
from edgeslim.report.floors import floor, quality_interval

SCHEMA_VERSION = 1


def artifact_entries(outcome) -> list[tuple[str, Any]]:
    """(report name, StageOutcome) in report order: teacher baselines first, then each stage."""
    entries = [("teacher", outcome.teacher)]
    entries += [(name, stage) for name, stage in outcome.baselines.items()]
    entries += [(f"{stage.index:02d}-{stage.name}", stage) for stage in outcome.stages]
    return entries


def build_report(recipe, outcome, run_dir: Path, quiet: bool = False) -> dict[str, Any]:
    """Evaluate and measure every artifact of ``outcome``; return the report dict (schema v1)."""
    from edgeslim.targets.profile import load_profile

    entries = artifact_entries(outcome)
    release_name = entries[-1][0] if outcome.stages else "teacher-fp32"
    eval_examples = scored_examples(recipe, outcome.data)
    cache_dir = Path(run_dir) / "report" / ".cache"
    scored = {name: score_cached(stage.artifact, eval_examples, recipe, cache_dir) for name, stage in entries}
    reference = np.asarray(scored["teacher-fp32"]["predictions"])
    profiles = [load_profile(name) for name in recipe.devices]
    onnx_entries = [(name, stage.artifact) for name, stage in entries if stage.artifact.kind in ("onnx", "bundle")]
    measure_device = device_measurer(recipe.task)
    budgets = merged_budgets(recipe, profiles)
    cells = {profile.name: measure_device(profile, onnx_entries, outcome.data, recipe, quiet,
                                          instructions=profile.name in budgets["instructions"], cache_dir=cache_dir)
             for profile in profiles}
    candidates = [release_name] + [name for name in outcome.baselines if name != release_name]
    comparisons = {device: latency_comparisons(device_cells, candidates, list(outcome.baselines))
                   for device, device_cells in cells.items()}
    for device_cells in cells.values():
        for one in device_cells.values():
            add_latency_intervals(one)

    artifacts = []
    for name, stage in entries:
        score = scored[name]
        artifact = stage.artifact
        record = {
            "name": name,
            "stage": stage.name,
            "kind": artifact.kind,
            "path": str(artifact.path),
            "cached": stage.cached,
            "size_bytes": artifact.size_bytes(),
            "params": score["params"],
            "accuracy": score.get("accuracy"),
            "perplexity": score.get("perplexity"),
            **quality_interval(score, recipe.task, len(eval_examples)),
            "agreement": agreement_with(score["predictions"], reference),
            "devices": {},
        }
        if artifact.manifest.get("mobile_usability") is not None:
            record["mobile_usability"] = artifact.manifest["mobile_usability"]
        if artifact.manifest.get("candidates"):
            record["quantize"] = {"candidates": artifact.manifest["candidates"], "choice": artifact.manifest.get("choice")}
        for profile in profiles:
            record["devices"][profile.name] = cells[profile.name].get(name) or _not_timed(artifact)
        artifacts.append(record)
    return {
        "schema_version": SCHEMA_VERSION,
        "edgeslim_version": _version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": recipe.name, "path": str(recipe.path) if recipe.path else None,
                   "task": recipe.task, "fingerprint": recipe.fingerprint()},
        "teacher": "teacher-fp32",
        "release": release_name,
        "eval_examples": len(eval_examples),
        "floor": floor(recipe, outcome.data, eval_examples, outcome.teacher.artifact),
        "measure": {"batch_size": 1, **recipe.measure.model_dump()},
        "devices": [{"name": p.name, "description": p.description, "access": p.access.kind,
                     "threads": p.runtime.threads} for p in profiles],
        "budgets": budgets,
        "comparisons": {device: rows for device, rows in comparisons.items() if rows},
        "artifacts": artifacts,
        "release_files": release_files(dict(entries)[release_name].artifact),
    }


#: Files of a published release that are not measured and so not hashed: the model card is written
#: from the report itself after the gate, and the manifest holds the hashes.
UNHASHED_RELEASE_FILES = ("README.md", "manifest.json")


def release_files(artifact: Artifact) -> dict[str, dict[str, Any]]:
    """The release's files with their sha256 and size, as recorded when its stage finished."""
    files = artifact.manifest.get("files") or {}
    return {name: digest for name, digest in files.items() if name not in UNHASHED_RELEASE_FILES}


def latency_comparisons(cells: dict[str, dict], candidates: list[str], baselines: list[str]) -> dict[str, dict]:
    """``{candidate: {baseline: row}}`` on one device: each baseline's latency relative to each release
    candidate (``ratio`` = baseline p50 / candidate p50, with its 95% interval from the interleaved
    samples); only where both were measured."""
    from edgeslim.stats import ratio_interval

    table: dict[str, dict] = {}
    for candidate in candidates:
        ours = cells.get(candidate) or {}
        for name in baselines:
            theirs = cells.get(name) or {}
            if name != candidate and ours.get("samples_ms") and theirs.get("samples_ms"):
                interval = ratio_interval(theirs["samples_ms"], ours["samples_ms"])
                table.setdefault(candidate, {})[name] = {key: round(interval[key], 6)
                                                         for key in ("ratio", "low", "high", "noise")}
    return table


def add_latency_intervals(cell: dict[str, Any]) -> None:
    """Give a measured cell the 95% interval of each latency quantile, then drop its raw samples."""
    from edgeslim.stats import quantile_interval

    samples = cell.pop("samples_ms", None)
    cell.pop("cpu_samples_ms", None)
    if samples and cell.get("latency_ms"):
        cell["latency_interval_ms"] = {name: [round(v, 6) for v in quantile_interval(samples, q)]
                                       for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}


def agreement_with(predictions, reference: np.ndarray) -> float | None:
    from edgeslim.report.evaluate import agreement

    if predictions is None:
        return None
    return round(agreement(np.asarray(predictions), reference), 6)


def _version() -> str:
    from edgeslim.version import __version__

    return __version__


def _not_timed(artifact: Artifact) -> dict[str, Any]:
    return {"status": "skipped", "latency_ms": None, "throughput": None, "peak_memory_mb": None,
            "reason": "torch model: its exported ONNX descendants are measured"}


# --------------------------------------------------------------------------------------------------
# Scoring (cached per artifact key, so a rerun with nothing changed does not evaluate again)


def scored_examples(recipe, data) -> list:
    """The eval examples every artifact is scored on: the eval split, cut to ``measure.eval_limit``."""
    limit = recipe.measure.eval_limit
    return data.eval[:limit] if limit else data.eval


def score_cached(artifact: Artifact, examples, recipe, cache_dir: Path) -> dict[str, Any]:
    """The artifact's score, cached by its files' hashes (a rebuilt file is scored again)."""
    files = json.dumps(artifact.manifest.get("files") or str(artifact.path), sort_keys=True)
    key = hash_bytes(artifact.manifest.get("key", str(artifact.path)), files, str(len(examples)), "score-v2")[:24]
    cache_file = cache_dir / f"{artifact.path.name}-{key}.json"
    if cache_file.is_file():
        return read_json(cache_file)
    if recipe.task == "causal-lm":
        from edgeslim.report.lm_eval import score_causal_lm

        texts = [ex.text for ex in examples]
        score = score_causal_lm(artifact, texts, lm_prompts(texts, recipe.measure.samples), recipe.data.max_length)
    else:
        score = score_artifact(artifact, examples, recipe.data.max_length)
    atomic_write_json(cache_file, score)
    return score


def score_artifact(artifact: Artifact, examples, max_length: int) -> dict[str, Any]:
    """Accuracy and predictions on ``examples`` plus the parameter count, for any classifier artifact."""
    from transformers import AutoTokenizer

    from edgeslim.report.evaluate import score_examples
    from edgeslim.report.params import onnx_params

    tokenizer = AutoTokenizer.from_pretrained(artifact.path)
    model = artifact.path if artifact.kind == "torch" else artifact.onnx_path
    score = score_examples(model, artifact.kind, tokenizer, examples, "text-classification", max_length)
    if artifact.kind == "torch":
        score["params"] = artifact.manifest.get("params") or _torch_params(artifact.path)
    else:
        score["params"] = onnx_params(artifact.onnx_path)
    return score


def _torch_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                total += int(np.prod(handle.get_slice(name).get_shape()))
    return total


# --------------------------------------------------------------------------------------------------
# Latency


#: Runners whose cells depend only on the models and inputs (emulated outputs, roofline predictions):
#: a rerun reuses their cells; measured latency is always measured again.
DETERMINISTIC_ACCESS = ("qemu-arm", "none")


def measure_on_device(profile, onnx_entries, data, recipe, quiet: bool, instructions: bool = False,
                    cache_dir: Path | None = None, mode: str = "latency") -> dict[str, dict]:
    """Cells for every ONNX artifact on one device (``mode`` decode: causal-LM decoders generating
    from prompts, timed by the same runners).

    Each model gets the same eval texts tokenized by its own tokenizer. On this machine (local and
    cuda runners) every model is timed interleaved in one process, so the ratios between them (and
    the dominance check) are fair; other runners take the models that share a tokenizer together.
    ``instructions`` adds callgrind's instruction count per inference (when a budget needs it)."""
    from transformers import AutoTokenizer

    from edgeslim.targets.runners import measure

    if not onnx_entries:
        return {}
    groups: dict[str, list[tuple[str, Artifact]]] = {}
    for name, artifact in onnx_entries:
        groups.setdefault(_tokenizer_fingerprint(artifact.path), []).append((name, artifact))
    inputs_of = {}
    for members in groups.values():
        tokenizer = AutoTokenizer.from_pretrained(members[0][1].path)
        feeds = (prompt_inputs(tokenizer, data, recipe) if mode == "decode"
                 else data.encode_each(tokenizer, "eval", recipe.measure.samples))
        inputs_of.update({name: feeds for name, _ in members})
    settings = {"warmup": recipe.measure.warmup, "runs": recipe.measure.runs, "instructions": instructions,
                "samples": True, "mode": mode, "new_tokens": DECODE_TOKENS}
    if profile.access.kind in INTERLEAVED_ACCESS:
        if not quiet:
            print(f"measuring {len(onnx_entries)} model(s) on {profile.name} ({profile.access.kind}), interleaved",
                  flush=True)
        first = onnx_entries[0][0]
        return measure(profile, {name: art.onnx_path for name, art in onnx_entries}, inputs_of[first],
                       model_inputs={name: inputs_of[name] for name, _ in onnx_entries[1:]}, **settings)
    cells: dict[str, dict] = {}
    from edgeslim.targets.runners.parity import PARITY_ACCESS

    parity = profile.access.kind in PARITY_ACCESS
    for members in groups.values():
        inputs = inputs_of[members[0][0]]
        if parity and mode == "decode":  # the device's greedy tokens against this host's
            settings.update(references={})
        elif parity:  # task accuracy of the device's own outputs, on more eval examples than timing needs
            count = recipe.measure.parity_samples
            inputs = data.encode_each(AutoTokenizer.from_pretrained(members[0][1].path), "eval", count)
            settings.update(labels=[ex.label for ex in data.eval[:count]],
                            references={name: fp32_source(art, onnx_entries).onnx_path for name, art in members})
        cache_file = _cell_cache_file(cache_dir, profile, members, inputs)
        if cache_file is not None and cache_file.is_file():
            cells.update(read_json(cache_file))
            continue
        if not quiet:
            print(f"measuring {len(members)} model(s) on {profile.name} ({profile.access.kind})", flush=True)
        group_cells = measure(profile, {name: art.onnx_path for name, art in members}, inputs, **settings)
        if cache_file is not None and all(c["status"] in ("emulated", "predicted") for c in group_cells.values()):
            atomic_write_json(cache_file, group_cells)
        cells.update(group_cells)
    return cells


def device_measurer(task: str):
    """The function that measures a task's ONNX models on one device: :func:`measure_on_device` for
    classifiers, its decode mode for causal LMs; both ``(profile, onnx_entries, data, recipe, quiet,
    instructions=, cache_dir=) -> {name: cell}``."""
    return measure_on_device if task == "text-classification" else _measure_decoder


def fp32_source(artifact: Artifact, onnx_entries) -> Artifact:
    """The float ONNX model ``artifact`` was made from (itself when it is one): the nearest ancestor,
    through the manifests' inputs, made by the export stage or the fp32 baseline."""
    by_path = {str(art.path): art for _, art in onnx_entries}
    current = artifact
    while current.manifest.get("stage") not in ("export", "teacher-fp32"):
        parent = by_path.get((current.manifest.get("input") or {}).get("path", ""))
        if parent is None:
            return artifact
        current = parent
    return current


#: Runners that time on this machine, where every model of a run can be interleaved in one process.
INTERLEAVED_ACCESS = ("local", "cuda")


def _cell_cache_file(cache_dir: Path | None, profile, members, inputs) -> Path | None:
    """Where a deterministic runner's cells for these exact models, inputs and profile are kept."""
    if cache_dir is None or profile.access.kind not in DETERMINISTIC_ACCESS:
        return None
    parts = [profile.model_dump_json()]
    parts += [f"{name}:{art.manifest.get('key', art.path)}" for name, art in members]
    parts += [name + array.tobytes().hex() for feed in inputs for name, array in sorted(feed.items())]
    return Path(cache_dir) / f"cells-{profile.name}-{hash_bytes(*parts)[:24]}.json"


def lm_prompts(texts: list[str], count: int) -> list[str]:
    """Prompts for greedy agreement and decode speed: the first half (by words) of eval texts."""
    prompts = []
    for text in texts[:count]:
        words = text.split()
        prompts.append(" ".join(words[: max(1, len(words) // 2)]))
    return prompts


#: Greedy tokens each decoder generates per prompt when timed.
DECODE_TOKENS = 20


def _measure_decoder(profile, onnx_entries, data, recipe, quiet: bool, instructions: bool = False,
                     cache_dir: Path | None = None) -> dict[str, dict]:
    """Causal LMs: prefill latency and decode tokens/s on any device a runner reaches (the harness's
    decode mode), and on emulated devices whether the greedy tokens match this host's."""
    return measure_on_device(profile, onnx_entries, data, recipe, quiet, cache_dir=cache_dir, mode="decode")


def prompt_inputs(tokenizer, data, recipe) -> list[dict[str, np.ndarray]]:
    """The decode prompts (:func:`lm_prompts` of the eval texts) as ``input_ids``, batch 1."""
    prompts = lm_prompts([ex.text for ex in data.eval], recipe.measure.samples)
    return [{"input_ids": np.asarray(tokenizer(p, truncation=True, max_length=recipe.data.max_length,
                                               return_tensors="np")["input_ids"], dtype=np.int64)} for p in prompts]


def _tokenizer_fingerprint(folder: Path) -> str:
    parts = [p.read_bytes() for p in sorted(Path(folder).glob("*")) if p.name in ("tokenizer.json", "vocab.txt")]
    return hash_bytes(*parts) if parts else str(folder)


def merged_budgets(recipe, profiles) -> dict[str, Any]:
    """The recipe's budgets, with each device profile's own budgets where the recipe sets none."""
    budgets = recipe.budgets.model_dump()
    for profile in profiles:
        own = profile.budgets
        latency = budgets["latency_ms"].setdefault(profile.name, {"p50": None, "p90": None, "p99": None})
        for quantile in ("p50", "p90"):
            if latency.get(quantile) is None:
                latency[quantile] = getattr(own.latency_ms, quantile)
        if profile.name not in budgets["peak_memory_mb"] and own.peak_memory_mb:
            budgets["peak_memory_mb"][profile.name] = own.peak_memory_mb
        if profile.name not in budgets["instructions"] and own.instructions:
            budgets["instructions"][profile.name] = own.instructions
        if budgets["size_mb"] is None and own.size_mb:
            budgets["size_mb"] = own.size_mb
    budgets["latency_ms"] = {dev: limits for dev, limits in budgets["latency_ms"].items()
                             if any(v is not None for v in limits.values())}
    return budgets


def write_report(report: dict[str, Any], report_dir: Path) -> Path:
    path = Path(report_dir) / "report.json"
    atomic_write_json(path, report)
    return path


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json; anything that is not one is an EdgeslimError (exit 2)."""
    from edgeslim.errors import EdgeslimError

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise EdgeslimError(f"report '{path}' does not exist; give the report.json written by 'edgeslim run'")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise EdgeslimError(f"'{path}' is not JSON; give the report.json written by 'edgeslim run'") from None
    if isinstance(report, dict) and report.get("kind") == "search":
        raise EdgeslimError(f"'{path}' is a search's report; each device's release has its own report to gate or "
                            "render: DIR/devices/<device>/report/report.json")
    if not isinstance(report, dict) or "schema_version" not in report or not isinstance(report.get("artifacts"), list):
        raise EdgeslimError(f"'{path}' is not an edgeslim report (no schema_version/artifacts)")
    if report["schema_version"] != SCHEMA_VERSION:
        raise EdgeslimError(f"'{path}' has report schema {report['schema_version']}; this edgeslim reads {SCHEMA_VERSION}")
    problem = report_shape_problem(report)
    if problem:
        raise EdgeslimError(f"'{path}' is not a complete edgeslim report: {problem}; rerun 'edgeslim run' to write one")
    return report


def report_shape_problem(report: dict[str, Any]) -> str | None:
    """What makes ``report`` unusable for the gate and the renderers, or ``None``: the keys they read,
    with the types they expect."""
    artifacts = report["artifacts"]
    if not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in artifacts):
        return "every entry of 'artifacts' must be an object with a 'name'"
    names = {a["name"] for a in artifacts}
    for key in ("teacher", "release"):
        if not isinstance(report.get(key), str):
            return f"'{key}' is missing (it names an artifact)"
        if report[key] not in names:
            return f"'{key}' names '{report[key]}', which is not among its artifacts"
    if not isinstance(report.get("devices", []), list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) for d in report.get("devices", [])):
        return "'devices' must be a list of objects with a 'name'"
    if not all(isinstance(a.get("devices", {}), dict) for a in artifacts):
        return "each artifact's 'devices' must map device names to cells"
    if not isinstance(report.get("budgets", {}) or {}, dict):
        return "'budgets' must be an object"
    return None
