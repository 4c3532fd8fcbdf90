"""The qemu-arm runner: the models' outputs on aarch64 onnxruntime kernels, compared with this host's.

Runs the harness with the aarch64 onnxruntime wheel under qemu user emulation (set up and cached by
``edgeslim.targets.qemu_setup``) and the same harness natively on this host, on the same inputs, and
compares the outputs. The cell's status is ``emulated``: it says whether the ARM kernels (NEON,
dot-product, KleidiAI INT8 paths) compute what the x86 ones do, and never makes a latency claim;
where the profile has prediction figures the cell also carries ``predicted_latency_ms``.

Fields added to the cell: ``max_abs_diff`` (over all outputs and inputs), ``max_rel_diff`` (the same,
divided by the largest reference magnitude of that output), ``top1_agreement`` (fraction of inputs
whose first output has the same arg-max on both), ``outputs_match`` (top-1 agreement is 1 and
``max_rel_diff <= REL_TOLERANCE``) and ``qemu_cpu``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.targets import qemu_setup
from edgeslim.targets.profile import DeviceProfile
from edgeslim.targets.runners.job import HARNESS, MACHINE_KEY, cell, cells_for_all, cells_from_result, one_line, write_inputs, write_spec
from edgeslim.targets.runners.local import harness_env, run_harness

#: Largest difference, relative to the output's scale, still counted as the same result. INT8
#: kernels differ legitimately between x86 (u8s8, VNNI) and ARM (s8s8, dot-product) in rounding.
REL_TOLERANCE = 0.02
TIMEOUT_S = 1800


def compare(reference: dict[str, np.ndarray], emulated: dict[str, np.ndarray], model: str) -> dict:
    """Differences between the host's and the emulated outputs of ``model`` (keys ``model/i/output``)."""
    keys = sorted(k for k in reference if k.startswith(model + "/"))
    if not keys or any(k not in emulated for k in keys):
        raise RuntimeError(f"emulated run produced no outputs for '{model}'")
    max_abs = max_rel = 0.0
    agree = total = 0
    first_output = None
    for key in keys:
        ref, emu = np.asarray(reference[key], dtype=np.float64), np.asarray(emulated[key], dtype=np.float64)
        if ref.shape != emu.shape:
            raise RuntimeError(f"output {key} has shape {emu.shape} emulated vs {ref.shape} on the host")
        diff = float(np.max(np.abs(ref - emu))) if ref.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12))
        _, _, output = key.split("/", 2)
        first_output = first_output or output
        if output == first_output and ref.size:
            total += 1
            agree += int(np.array_equal(np.argmax(ref, axis=-1), np.argmax(emu, axis=-1)))
    top1 = agree / total if total else 1.0
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "top1_agreement": top1,
            "outputs_match": bool(top1 == 1.0 and max_rel <= REL_TOLERANCE)}


def _outputs(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def first_outputs(outputs: dict[str, np.ndarray], model: str) -> list[np.ndarray]:
    """The first output of ``model`` for each input, in input order (keys ``model/i/output``)."""
    rows: dict[int, tuple[str, np.ndarray]] = {}
    for key, value in outputs.items():
        name, index, output = key.split("/", 2)
        if name == model and (int(index) not in rows or output < rows[int(index)][0]):
            rows[int(index)] = (output, np.asarray(value, dtype=np.float64))
    return [rows[i][1] for i in sorted(rows)]


def task_parity(host: list[np.ndarray], device: list[np.ndarray], source: list[np.ndarray] | None,
                labels: list[int] | None) -> dict:
    """What the device's outputs are worth: task accuracy on each side, and each side's largest
    difference from the artifact's fp32 source relative to its scale (which side is off, not only
    that they differ)."""
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


#: Prefix of the host-only copies of each model's fp32 source in a parity run.
SOURCE_PREFIX = "fp32-source-of-"


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            timeout_s: int = TIMEOUT_S, log=None, references: dict[str, Path] | None = None,
            labels: list[int] | None = None) -> dict[str, dict]:
    """One ``emulated`` cell per model (``skipped`` when emulation cannot be set up here).

    ``references`` (model -> its fp32 source ONNX) are run on the host only, so both sides are
    compared with the fp32 model; ``labels`` (one per input) score each side's task accuracy."""
    references = references or {}
    try:
        env = qemu_setup.ensure(log=log or (lambda message: None))
    except EdgeslimError as exc:
        return cells_for_all(models, "skipped", f"qemu-arm emulation unavailable: {exc}")
    single = profile.model_copy(update={"runtime": profile.runtime.model_copy(
        update={"threads": 1, "inter_op_threads": 1, "cpu_affinity": None})})
    cpu = profile.access.qemu_cpu
    with tempfile.TemporaryDirectory(prefix="edgeslim-qemu-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        resolved = {n: str(Path(p).resolve()) for n, p in models.items()}
        sources = {SOURCE_PREFIX + n: str(Path(p).resolve()) for n, p in references.items()}
        results = {}
        for side, run_env in (("host", harness_env(single)), ("emulated", env.env())):
            spec = write_spec(work / f"{side}.json", single, {**resolved, **sources} if side == "host" else resolved,
                              str(inputs_path), warmup=0, runs=1, memory=False, outputs=str(work / f"{side}.npz"))
            argv = [str(HARNESS), str(spec), f"{side}-result.json"]
            command = env.command(cpu, *argv) if side == "emulated" else [sys.executable, *argv]
            try:
                results[side] = run_harness(command, work, run_env, timeout_s, result_name=f"{side}-result.json")
            except RuntimeError as exc:
                return cells_for_all(models, "error", f"{side} run failed: {exc}")
        arch = results["emulated"].get(MACHINE_KEY, {}).get("arch")
        if arch != "aarch64":
            return cells_for_all(models, "error", f"the emulated harness reported architecture {arch!r}, not aarch64")
        host_cells = cells_from_result(results["host"], "emulated")
        emulated_cells = cells_from_result(results["emulated"], "emulated")
        reference, emulated = _outputs(work / "host.npz"), _outputs(work / "emulated.npz")
    cells = {}
    for name in models:
        if host_cells[name]["status"] == "error" or emulated_cells[name]["status"] == "error":
            bad = host_cells[name] if host_cells[name]["status"] == "error" else emulated_cells[name]
            cells[name] = bad
            continue
        try:
            parity = compare(reference, emulated, name)
        except RuntimeError as exc:
            cells[name] = cell("error", reason=one_line(str(exc)))
            continue
        source = first_outputs(reference, SOURCE_PREFIX + name) if name in references else None
        parity.update(task_parity(first_outputs(reference, name), first_outputs(emulated, name), source, labels))
        verdict = "match" if parity["outputs_match"] else "DIFFER from"
        cells[name] = cell("emulated", reason=(f"aarch64 kernels under qemu -cpu {cpu}: outputs {verdict} x86 "
                                               f"(max rel diff {parity['max_rel_diff']:.2e}, top-1 agreement "
                                               f"{parity['top1_agreement']:.0%}); no latency claim"),
                           qemu_cpu=cpu, **parity)
    _add_prediction(profile, models, inputs, cells)
    return cells


def _add_prediction(profile: DeviceProfile, models: dict[str, Path], inputs, cells: dict[str, dict]) -> None:
    if profile.predict is None:
        return
    from edgeslim.targets.predict import predict_latency_ms

    for name, path in models.items():
        if cells[name]["status"] == "emulated":
            try:
                cells[name]["predicted_latency_ms"] = predict_latency_ms(profile, Path(path), inputs)
            except Exception:  # noqa: BLE001 - the prediction is extra information, parity stands alone
                cells[name]["predicted_latency_ms"] = None
