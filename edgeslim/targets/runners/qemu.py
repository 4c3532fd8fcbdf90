"""The qemu-arm runner: the models' outputs on aarch64 onnxruntime kernels, compared with this host's.

Runs the harness with the aarch64 onnxruntime wheel under qemu user emulation (set up and cached by
``edgeslim.targets.qemu_setup``) and the same harness natively on this host, on the same inputs, and
compares the outputs. The cell's status is ``emulated``: it says whether the ARM kernels (NEON,
dot-product, KleidiAI INT8 paths) compute what the x86 ones do, and never makes a latency claim;
where the profile has prediction figures the cell also carries ``predicted_latency_ms``.

Fields added to the cell: the parity figures of :mod:`edgeslim.targets.runners.parity`
(``max_abs_diff``, ``max_rel_diff``, ``top1_agreement``, ``outputs_match``, and with labels and fp32
sources the task accuracy of each side and each side's difference from the fp32 model) and
``qemu_cpu``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
import edgeslim.targets.qemu_setup as qemu_setup
from edgeslim.targets.profile import DeviceProfile
import edgeslim.targets.runners.parity as parity
from edgeslim.errors import last_line
from edgeslim.targets.runners.job import HARNESS, MACHINE_KEY, cell, cells_for_all, cells_from_result, write_inputs, write_spec
from edgeslim.targets.runners.local import run_harness

TIMEOUT_S = 1800


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            timeout_s: int = TIMEOUT_S, log=None, references: dict[str, Path] | None = None,
            labels: list[int] | None = None, mode: str = "latency", new_tokens: int = 20) -> dict[str, dict]:
    """One ``emulated`` cell per model (``skipped`` when emulation cannot be set up here).

    ``references`` (model -> its fp32 source ONNX) are run on the host only, so both sides are
    compared with the fp32 model; ``labels`` (one per input) score each side's task accuracy
    (:mod:`edgeslim.targets.runners.parity`)."""
    references = references or {}
    try:
        env = qemu_setup.ensure(log=log or (lambda message: None))
    except EdgeslimError as exc:
        return cells_for_all(models, "skipped", f"qemu-arm emulation unavailable: {exc}")
    try:
        untrusted = qemu_setup.int8_probe(env, profile.access.qemu_cpu)
    except EdgeslimError as exc:
        return cells_for_all(models, "error", f"the qemu INT8 probe failed: {exc}")
    if untrusted:
        return cells_for_all(models, "error", untrusted)
    single = profile.model_copy(update={"runtime": profile.runtime.model_copy(
        update={"threads": 1, "inter_op_threads": 1, "cpu_affinity": None})})
    cpu = profile.access.qemu_cpu
    with tempfile.TemporaryDirectory(prefix="edgeslim-qemu-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        resolved = {n: str(Path(p).resolve()) for n, p in models.items()}
        spec = write_spec(work / "emulated.json", single, resolved, str(inputs_path), warmup=0, runs=1,
                          memory=False, outputs=str(work / "emulated.npz"), mode=mode, new_tokens=new_tokens)
        try:
            host_cells, host = parity.host_run(profile, models, references, inputs_path, work, timeout_s, mode,
                                               new_tokens)
            result = run_harness(env.command(cpu, str(HARNESS), str(spec), "emulated-result.json"), work, env.env(),
                                 timeout_s, result_name="emulated-result.json")
        except RuntimeError as exc:
            return cells_for_all(models, "error", f"parity run failed: {exc}")
        arch = result.get(MACHINE_KEY, {}).get("arch")
        if arch != "aarch64":
            return cells_for_all(models, "error", f"the emulated harness reported architecture {arch!r}, not aarch64")
        emulated_cells = cells_from_result(result, "emulated")
        emulated = parity.load_outputs(work / "emulated.npz")
    cells = {}
    for name in models:
        if host_cells[name]["status"] == "error" or emulated_cells[name]["status"] == "error":
            bad = host_cells[name] if host_cells[name]["status"] == "error" else emulated_cells[name]
            cells[name] = cell("error", reason=bad["reason"])
            continue
        try:
            figures = parity.parity_fields(host, emulated, name, references, labels)
        except RuntimeError as exc:
            cells[name] = cell("error", reason=last_line(str(exc)))
            continue
        verdict = "match" if figures["outputs_match"] else "DIFFER from"
        diff = f"max rel diff {figures['max_rel_diff']:.2e}, " if "max_rel_diff" in figures else ""
        what = "greedy tokens" if mode == "decode" else "outputs"
        cells[name] = cell("emulated", reason=(f"aarch64 kernels under qemu -cpu {cpu}: {what} {verdict} x86 "
                                               f"({diff}top-1 agreement {figures['top1_agreement']:.0%}); "
                                               "no latency claim"),
                           qemu_cpu=cpu, isa=emulated_cells[name].get("isa"), **figures)
    if mode == "latency":
        _add_prediction(profile, models, inputs, cells)
    return cells


def _add_prediction(profile: DeviceProfile, models: dict[str, Path], inputs, cells: dict[str, dict]) -> None:
    if profile.predict is None:
        return
    from edgeslim.targets.predict import predict_latency_ms, prediction_band

    (low, high), about = prediction_band(profile)
    for name, path in models.items():
        if cells[name]["status"] == "emulated":
            try:
                estimate = predict_latency_ms(profile, Path(path), inputs)
            except Exception:  # noqa: BLE001 - the prediction is extra information, parity stands alone
                cells[name]["predicted_latency_ms"] = None
                continue
            cells[name]["predicted_latency_ms"] = estimate
            cells[name]["predicted_latency_interval_ms"] = [estimate * low, estimate * high]
            cells[name]["prediction"] = about
