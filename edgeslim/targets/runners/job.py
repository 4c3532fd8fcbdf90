"""What every runner shares: the report cell, and the spec + inputs files the harness reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.targets.harness import MACHINE_KEY
from edgeslim.targets.profile import DeviceProfile

HARNESS = Path(__file__).resolve().parents[1] / "harness.py"
STATUSES = ("measured", "emulated", "predicted", "skipped", "error")


def cell(status: str, *, latency_ms: dict | None = None, throughput: float | None = None,
         peak_memory_mb: float | None = None, reason: str | None = None, **extra: Any) -> dict:
    """One report cell (model x device); ``extra`` adds runner-specific fields (instructions, parity)."""
    assert status in STATUSES, status
    return {"status": status, "latency_ms": latency_ms, "throughput": throughput,
            "peak_memory_mb": peak_memory_mb, "reason": reason, **extra}


def cells_for_all(models: dict[str, Path], status: str, reason: str) -> dict[str, dict]:
    """The same non-measured cell for every model (device unreachable, provider missing, ...)."""
    return {name: cell(status, reason=reason) for name in models}


def write_inputs(path: Path, inputs: list[dict[str, np.ndarray]]) -> Path:
    """Save inputs as ``<index>/<name>`` arrays in one ``.npz`` the harness reads back."""
    arrays = {f"{i}/{name}": np.asarray(value) for i, example in enumerate(inputs) for name, value in example.items()}
    np.savez(path, **arrays)
    return path


def write_spec(path: Path, profile: DeviceProfile, models: dict[str, str], inputs_path: str, *,
               warmup: int, runs: int, mode: str = "latency", memory: bool = True,
               outputs: str | None = None, providers: list[str] | None = None, samples: bool = False,
               min_time_s: float = 0.0, model_inputs: dict[str, str] | None = None,
               node_placement: bool = False, new_tokens: int = 20, handshake: str | None = None) -> Path:
    """The harness's JSON spec, taking the runtime settings from the profile (``handshake``: the
    folder of the instruction counter's warm-up handshake, see :mod:`edgeslim.targets.instructions`)."""
    runtime = profile.runtime
    spec = {
        "mode": mode,
        "models": {name: str(p) for name, p in models.items()},
        "inputs": str(inputs_path),
        "warmup": int(warmup),
        "runs": int(runs),
        "min_time_s": float(min_time_s),
        "threads": runtime.threads,
        "inter_op_threads": runtime.inter_op_threads,
        "graph_optimization_level": runtime.graph_optimization_level,
        "session_options": runtime.session_options,
        "providers": providers or runtime.execution_providers,
        "provider_options": runtime.provider_options,
        "affinity": runtime.cpu_affinity,
        "memory": memory,
        "outputs": outputs,
        "samples": samples,
        "model_inputs": model_inputs or {},
        "node_placement": node_placement,
        "new_tokens": int(new_tokens),
        "handshake": handshake,
    }
    Path(path).write_text(json.dumps(spec), encoding="utf-8")
    return Path(path)


def cells_from_result(result: dict[str, dict], status: str) -> dict[str, dict]:
    """Turn the harness's per-model result into report cells (``error`` where a model failed)."""
    cells = {}
    machine = result.get(MACHINE_KEY) or {}
    for name, entry in result.items():
        if name == MACHINE_KEY:
            continue
        if "error" in entry:
            cells[name] = cell("error", reason=entry["error"])
        else:
            extra = {key: entry[key] for key in ("cpu_ms", "samples_ms", "cpu_samples_ms", "providers",
                                                 "node_placement", "decode_tokens_per_s", "new_tokens") if key in entry}
            extra["isa"] = {"arch": machine.get("arch"), "features": machine.get("isa")}
            cells[name] = cell(status, latency_ms=entry.get("latency_ms"), throughput=entry.get("throughput"),
                               peak_memory_mb=entry.get("peak_memory_mb"), **extra)
    return cells
