"""Parity: do a device's own outputs say what this host's say, and are they worth as much?

The qemu-arm and ssh runners run the models on other kernels than this host's. Both run the same
harness here on the same inputs (plus each model's fp32 source, here only) and compare:
``max_abs_diff`` / ``max_rel_diff`` and ``top1_agreement`` between the two sides, ``outputs_match``;
with labels, ``device_accuracy`` and ``host_accuracy`` (task accuracy of each side's own outputs);
with fp32 sources, ``device_rel_diff_vs_fp32`` and ``host_rel_diff_vs_fp32`` (which side is off, not
only that the two differ: on AVX2 it can be this host's u8s8 INT8). The gate checks ``budgets.parity``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgeslim.targets.profile import DeviceProfile
from edgeslim.targets.runners.job import HARNESS, cells_from_result, write_spec
from edgeslim.targets.runners.local import harness_env, run_harness

#: Device access kinds whose cells run the models on other kernels than this host's.
PARITY_ACCESS = ("qemu-arm", "ssh")
#: Largest difference, relative to the output's scale, still counted as the same result. INT8
#: kernels differ legitimately between x86 (u8s8, VNNI) and ARM (s8s8, dot-product) in rounding.
REL_TOLERANCE = 0.02
#: Prefix of the host-only copies of each model's fp32 source in a parity run.
SOURCE_PREFIX = "fp32-source-of-"


def compare(reference: dict[str, np.ndarray], device: dict[str, np.ndarray], model: str) -> dict:
    """Differences between the host's and the device's outputs of ``model`` (keys ``model/i/output``)."""
    keys = sorted(k for k in reference if k.startswith(model + "/"))
    if not keys or any(k not in device for k in keys):
        raise RuntimeError(f"the device produced no outputs for '{model}'")
    max_abs = max_rel = 0.0
    agree = total = 0
    first_output = None
    for key in keys:
        ref, dev = np.asarray(reference[key], dtype=np.float64), np.asarray(device[key], dtype=np.float64)
        if ref.shape != dev.shape:
            raise RuntimeError(f"output {key} has shape {dev.shape} on the device vs {ref.shape} on the host")
        diff = float(np.max(np.abs(ref - dev))) if ref.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12))
        _, _, output = key.split("/", 2)
        first_output = first_output or output
        if output == first_output and ref.size:
            total += 1
            agree += int(np.array_equal(np.argmax(ref, axis=-1), np.argmax(dev, axis=-1)))
    top1 = agree / total if total else 1.0
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "top1_agreement": top1,
            "outputs_match": bool(top1 == 1.0 and max_rel <= REL_TOLERANCE)}


def load_outputs(path: Path) -> dict[str, np.ndarray]:
    """The harness's saved outputs (``model/i/output`` -> array), in the order it wrote them."""
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def first_outputs(outputs: dict[str, np.ndarray], model: str) -> list[np.ndarray]:
    """The model's first output (in the graph's order) for each input, in input order."""
    rows: dict[int, np.ndarray] = {}
    for key, value in outputs.items():
        name, index, _ = key.split("/", 2)
        if name == model and int(index) not in rows:
            rows[int(index)] = np.asarray(value, dtype=np.float64)
    return [rows[i] for i in sorted(rows)]


def task_parity(host: list[np.ndarray], device: list[np.ndarray], source: list[np.ndarray] | None,
                labels: list[int] | None) -> dict:
    """What the device's outputs are worth: task accuracy on each side, and each side's largest
    difference from the artifact's fp32 source relative to its scale."""
    figures: dict = {"parity_examples": len(device)}
    if labels is not None:
        n = min(len(labels), len(device))
        figures["device_accuracy"] = round(float(np.mean([np.argmax(device[i][0]) == labels[i] for i in range(n)])), 6)
        figures["host_accuracy"] = round(float(np.mean([np.argmax(host[i][0]) == labels[i] for i in range(n)])), 6)
    if source:
        for side, outputs in (("device", device), ("host", host)):
            figures[f"{side}_rel_diff_vs_fp32"] = max(
                float(np.max(np.abs(o - r))) / max(float(np.max(np.abs(r))), 1e-12) for o, r in zip(outputs, source))
    return figures


def host_run(profile: DeviceProfile, models: dict[str, Path], references: dict[str, Path], inputs_path: Path,
             work: Path, timeout_s: int, mode: str = "latency",
             new_tokens: int = 20) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The models and their fp32 sources run once on this host with the device's settings but one
    thread (``mode`` decode: their greedy tokens); returns (cells by model, saved outputs). Raises
    RuntimeError with one line."""
    single = profile.model_copy(update={"runtime": profile.runtime.model_copy(
        update={"threads": 1, "inter_op_threads": 1, "cpu_affinity": None})})
    resolved = {n: str(Path(p).resolve()) for n, p in models.items()}
    resolved.update({SOURCE_PREFIX + n: str(Path(p).resolve()) for n, p in references.items()})
    spec = write_spec(work / "host.json", single, resolved, str(inputs_path), warmup=0, runs=1, memory=False,
                      outputs=str(work / "host.npz"), providers=["CPUExecutionProvider"], mode=mode,
                      new_tokens=new_tokens)
    result = run_harness([sys.executable, str(HARNESS), str(spec), "host-result.json"], work, harness_env(single),
                         timeout_s, result_name="host-result.json")
    return cells_from_result(result, "measured"), load_outputs(work / "host.npz")


def token_parity(host: dict[str, np.ndarray], device: dict[str, np.ndarray], model: str) -> dict:
    """Greedy tokens of a decoder on both sides: ``top1_agreement`` is the fraction of positions with
    the same token (a difference early in a generation changes everything after it, so this is
    strict), ``outputs_match`` whether every generation is identical."""
    keys = sorted(k for k in host if k.startswith(model + "/") and k.endswith("/tokens"))
    if not keys or any(k not in device for k in keys):
        raise RuntimeError(f"the device produced no tokens for '{model}'")
    same = total = 0
    for key in keys:
        ours, theirs = np.asarray(host[key]), np.asarray(device[key])
        same += int(np.sum(ours == theirs)) if ours.shape == theirs.shape else 0
        total += ours.size
    agreement = same / total if total else 1.0
    return {"top1_agreement": agreement, "outputs_match": agreement == 1.0, "parity_examples": len(keys)}


def parity_fields(host: dict[str, np.ndarray], device: dict[str, np.ndarray], model: str,
                  references: dict[str, Path], labels: list[int] | None) -> dict:
    """Every parity figure of ``model``: the output comparison plus task and fp32-source parity (for
    decoders, the agreement of their greedy tokens)."""
    if any(key.startswith(model + "/") and key.endswith("/tokens") for key in host):
        return token_parity(host, device, model)
    figures = compare(host, device, model)
    source = first_outputs(host, SOURCE_PREFIX + model) if model in references else None
    figures.update(task_parity(first_outputs(host, model), first_outputs(device, model), source, labels))
    return figures
