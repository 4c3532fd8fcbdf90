"""The local runner: measure on this machine, in a separate process set to the profile's threads.

A separate process keeps the measurement away from whatever the caller has loaded (torch, a big
tokenizer) and lets the thread count and CPU affinity be set before onnxruntime starts. All models
are timed in one process, interleaved (see ``edgeslim.targets.harness``). Optionally the instruction
count per inference is taken under callgrind: a figure that does not move with machine load, so CI
can gate on it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgeslim.targets.instructions import COUNTER, GO_FILE, READY_FILE, engine_instructions
from edgeslim.targets.profile import DeviceProfile
from edgeslim.errors import last_line
from edgeslim.targets.runners.job import HARNESS, cells_for_all, cells_from_result, write_inputs, write_spec

TIMEOUT_S = 1800
class CountPlan(NamedTuple):
    """How many inputs an instruction count runs over, and how many counted passes over each."""

    inputs: int
    passes: int

    def inferences(self) -> int:
        """Inferences under callgrind: the warm-up (each input twice when there are several passes,
        else once), the first counted run whose dump also holds start-up costs, and the counted ones."""
        return self.inputs * (2 if self.passes > 1 else 1) + 1 + self.inputs * self.passes


#: Count plans, most thorough first. Several passes per input exist for exactness (an occasional
#: inference costs ~100 instructions more, and the median drops it), which only small models need:
#: 100 instructions are 1e-6 of a large model's count, far inside INSTRUCTION_TOLERANCE.
COUNT_PLANS = (CountPlan(4, 3), CountPlan(4, 1), CountPlan(2, 1), CountPlan(1, 1))
#: Seconds one inference takes under callgrind per MiB of model, from the demo's models on a 2-core
#: AMD EPYC (valgrind emulates onnxruntime's AVX2 kernels): the release 0.07, the fp32 teacher 0.12.
#: A fixed figure, not a measurement at run time, so the plan (and so the count) is the same on every host.
CALLGRIND_S_PER_MIB = 0.12
#: The callgrind inferences a count may cost, in seconds at that rate: a count (start-up included)
#: stays under a minute per model on 2 cores.
COUNT_BUDGET_S = 40.0


def count_plan(models: list[Path]) -> CountPlan:
    """The most thorough plan whose inferences fit :data:`COUNT_BUDGET_S` for the largest of
    ``models`` (all of them are then counted with it, so their counts stay comparable)."""
    from edgeslim.artifacts import onnx_size_bytes

    mib = max(onnx_size_bytes(Path(model)) for model in models) / 2 ** 20
    for plan in COUNT_PLANS:
        if plan.inferences() * mib * CALLGRIND_S_PER_MIB <= COUNT_BUDGET_S:
            return plan
    return COUNT_PLANS[-1]


def harness_env(profile: DeviceProfile) -> dict[str, str]:
    """Environment for the harness: thread counts fixed, hashing deterministic."""
    env = dict(os.environ)
    threads = str(profile.runtime.threads)
    env.update({"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "PYTHONHASHSEED": "0"})
    return env


def run_harness(command: list[str], workdir: Path, env: dict[str, str], timeout_s: int,
                result_name: str = "result.json") -> dict:
    """Run the harness command; return its JSON result or raise RuntimeError with one line."""
    try:
        proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"harness timed out after {timeout_s} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"harness failed (exit {proc.returncode}): {last_line(proc.stderr or proc.stdout)}")
    return json.loads((workdir / result_name).read_text(encoding="utf-8"))


def run_instrumented(command: list[str], workdir: Path, env: dict[str, str], timeout_s: int) -> None:
    """Run the instruction counter under callgrind with instrumentation off, and switch it on with
    ``callgrind_control`` once the counter has warmed up (session creation and warm-up run several
    times faster uninstrumented; the counted inferences are instrumented all through)."""
    control = shutil.which("callgrind_control")
    if control is None:
        raise RuntimeError("valgrind is installed without callgrind_control; install valgrind's full package")
    ready, go = workdir / READY_FILE, workdir / GO_FILE
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if ready.exists():
            switched = subprocess.run([control, "-i", "on", ready.read_text(encoding="ascii").strip()],
                                      capture_output=True, text=True, timeout=60)
            go.write_text("on", encoding="ascii")
            if switched.returncode != 0:
                proc.kill()
                raise RuntimeError(f"callgrind_control could not switch instrumentation on: {last_line(switched.stderr)}")
        try:
            _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"instruction count timed out after {timeout_s} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"instruction count failed (exit {proc.returncode}): {last_line(stderr)}")


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            warmup: int, runs: int, status: str = "measured", providers: list[str] | None = None,
            instructions: bool = False, memory: bool = True, samples: bool = False,
            min_time_s: float = 0.0, timeout_s: int = TIMEOUT_S,
            model_inputs: dict[str, list[dict[str, np.ndarray]]] | None = None,
            node_placement: bool = False, mode: str = "latency", new_tokens: int = 20) -> dict[str, dict]:
    """Measure every model on this machine; one cell per model. ``model_inputs`` gives a model its
    own inputs (the same texts under its own tokenizer), so every model is still timed interleaved;
    ``node_placement`` records the share of nodes each provider ran (one profiled inference)."""
    model_inputs = model_inputs or {}
    with tempfile.TemporaryDirectory(prefix="edgeslim-local-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        own = {name: str(write_inputs(work / f"inputs-{i}.npz", feeds))
               for i, (name, feeds) in enumerate(model_inputs.items())}
        spec = write_spec(work / "spec.json", profile, {n: str(Path(p).resolve()) for n, p in models.items()},
                          str(inputs_path), warmup=warmup, runs=runs, memory=memory, providers=providers,
                          samples=samples, min_time_s=min_time_s, model_inputs=own, node_placement=node_placement,
                          mode=mode, new_tokens=new_tokens)
        try:
            result = run_harness([sys.executable, str(HARNESS), str(spec), "result.json"], work,
                                 harness_env(profile), timeout_s)
        except RuntimeError as exc:
            return cells_for_all(models, "error", str(exc))
        cells = cells_from_result(result, status)
    prove_providers(cells, (providers or profile.runtime.execution_providers or ["CPUExecutionProvider"])[0], status)
    if instructions:
        plan = count_plan(list(models.values()))
        for name, path in models.items():
            if cells[name]["status"] == status:
                cells[name]["instructions"] = count_instructions(profile, Path(path), model_inputs.get(name, inputs), plan)
                cells[name]["instructions_plan"] = plan._asdict()
    return cells


def prove_providers(cells: dict[str, dict], wanted: str, status: str) -> None:
    """A cell counts as measured on a device only if onnxruntime really ran the profile's first
    provider: onnxruntime falls back to the CPU silently when a provider fails to load."""
    for one in cells.values():
        active = one.get("providers") or []
        if one["status"] == status and wanted not in active:
            one.update(status="error", latency_ms=None, throughput=None, peak_memory_mb=None,
                       reason=f"onnxruntime did not run {wanted} (active providers: {', '.join(active) or 'none'}); "
                              "the figures would be another device's")


def count_instructions(profile: DeviceProfile, model: Path, inputs: list[dict[str, np.ndarray]],
                       plan: CountPlan | None = None, *, timeout_s: int = TIMEOUT_S) -> int | None:
    """Instructions onnxruntime executes per inference, under callgrind; None without valgrind.
    ``plan`` (default: :func:`count_plan` of this model) says over how many of ``inputs`` and how
    many passes each.

    Each inference is dumped on its own (see :mod:`edgeslim.targets.instructions`) and counted in
    ``ENGINE_OBJECTS``, main thread only, on one intra-op thread whatever the profile says (thread
    pools and helper threads vary with scheduling). The figure is the mean over ``inputs`` of each
    input's *median* over ``cycles`` passes (after one extra inference whose dump also holds
    callgrind's start-up costs): an occasional inference that grows a hash table or the allocator's
    arena costs a few hundred more instructions, and a mean would carry that into the figure, which
    is meant to be identical run to run.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    plan = plan or count_plan([model])
    inputs, cycles = inputs[:plan.inputs], plan.passes
    single = profile.model_copy(update={"runtime": profile.runtime.model_copy(update={"threads": 1, "inter_op_threads": 1})})
    runs = len(inputs) * cycles
    with tempfile.TemporaryDirectory(prefix="edgeslim-callgrind-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        spec = write_spec(work / "spec.json", single, {"model": str(model.resolve())}, str(inputs_path),
                          warmup=len(inputs) * (2 if cycles > 1 else 1), runs=runs + 1, memory=False,
                          handshake=str(work))
        command = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                   "--zero-before=getloadavg", "--dump-before=ctermid", f"--callgrind-out-file={work / 'callgrind.out'}",
                   sys.executable, str(COUNTER), str(spec), "result.json"]
        setarch = shutil.which("setarch")
        if setarch:  # no address randomisation: pointer-keyed hash tables then probe the same way every run
            command = [setarch, platform.machine(), "--addr-no-randomize"] + command
        run_instrumented(command, work, harness_env(single), timeout_s)
        # parts 2 .. runs+1 of thread 1 (the main thread): one inference each
        dumps = [work / f"callgrind.out.{part}-01" for part in range(2, runs + 2)]
        if not all(dump.is_file() for dump in dumps):
            return None
        counts = [engine_instructions(dump) for dump in dumps]
    per_input = [statistics.median(counts[i::len(inputs)]) for i in range(len(inputs))]
    return round(sum(per_input) / len(per_input))
