"""Device profiles: what a target device is, how to run on it, how to predict it, what it must meet.

A profile is a YAML file. Built-in profiles live in the repository's top-level ``devices/`` folder,
which an installed wheel carries as package data ``edgeslim/_builtin/devices/`` (resolved by
``edgeslim.builtin``); ``load_profile`` accepts either a built-in name (``x86-64-cpu``) or a path to
any YAML file. Every section forbids unknown keys, so a typo in a profile is an error that
names the key instead of a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeslim.builtin import builtin_names, resolve_builtin
from edgeslim.errors import EdgeslimError

ACCESS_KINDS = ("local", "qemu-arm", "ssh", "cuda", "none")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Section):
    """The hardware: instruction set, CPU (or GPU) model, cores and memory."""

    arch: Literal["x86_64", "aarch64", "armv7l"]
    cpu: str
    cores: int = Field(ge=1)
    memory_mb: int = Field(gt=0)
    gpu: str | None = None
    isa: list[str] | None = Field(None, description="the CPU's INT8-relevant features (avx2, avx512_vnni, avx_vnni, "
                                                    "asimddp, i8mm ...); unset: this host's for local and cuda "
                                                    "devices, unknown otherwise")


class Runtime(_Section):
    """How onnxruntime runs there: providers in priority order, threads, session options.

    ``threads`` is onnxruntime's intra-op thread count; ``cpu_affinity`` optionally pins the
    measuring process to those CPU ids (local runner); ``session_options`` are passed to
    ``SessionOptions.add_session_config_entry`` (e.g. ``session.intra_op.allow_spinning: "0"``).
    """

    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)
    cpu_affinity: list[int] | None = None
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    session_options: dict[str, str] = Field(default_factory=dict)
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)


class Access(_Section):
    """How edgeslim reaches the device.

    ``local`` runs on this machine; ``qemu-arm`` emulates aarch64 (outputs only, never latency);
    ``ssh`` copies the model and a harness to ``user@host`` and runs it there with ``python`` (key
    authentication with ``key``; host keys checked in ``known_hosts``); ``cuda`` runs locally
    with the CUDA execution provider; ``none`` means there is no runner and latency is predicted.
    """

    kind: Literal["local", "qemu-arm", "ssh", "cuda", "none"]
    host: str | None = None
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    workdir: str = "/tmp/edgeslim-bench"
    connect_timeout_s: int = Field(default=10, ge=1)
    qemu_cpu: str = "cortex-a72"

    @model_validator(mode="after")
    def _check(self) -> "Access":
        if self.kind == "ssh" and not self.host:
            raise ValueError("access.kind 'ssh' needs access.host")
        if self.kind == "qemu-arm" and not self.qemu_cpu.strip():
            raise ValueError("access.qemu_cpu is empty; name a cpu such as cortex-a72")
        return self


class Predict(_Section):
    """Figures for the roofline latency estimate (see ``edgeslim.targets.predict``).

    ``gflops_per_thread`` is the sustained FP32 matmul rate of one core; ``int8_speedup`` how much
    faster INT8 matmuls run than FP32; ``memory_gbps`` the sustained memory bandwidth;
    ``thread_efficiency`` the fraction of linear speed-up each extra thread adds;
    ``op_overhead_us`` the fixed cost of dispatching one operator, ``quantized_op_overhead_us`` what an INT8
    or low-bit matmul adds to it; ``call_overhead_us`` the fixed cost
    of one ``session.run`` (binding inputs and outputs). ``calibration`` says where the
    figures come from when they were fitted on the device (date, host, ISA, onnxruntime version,
    threads, and ``max_error``: the largest relative error of the fit on models it did not see);
    without it the figures are estimates from public specifications, and every prediction carries
    the wide band :data:`edgeslim.targets.predict.UNCALIBRATED_BAND`.
    """

    gflops_per_thread: float = Field(gt=0)
    int8_speedup: float = Field(default=2.0, gt=0)
    nbits_speedup: float = Field(default=1.0, gt=0, description="4-bit weight-only matmuls (MatMulNBits) vs fp32")
    memory_gbps: float = Field(gt=0)
    thread_efficiency: float = Field(default=0.8, gt=0, le=1)
    op_overhead_us: float = Field(default=5.0, ge=0)
    quantized_op_overhead_us: float = Field(default=0.0, ge=0, description=(
        "extra fixed cost of each INT8 or low-bit matmul (quantizing its activations, unpacking weights)"))
    call_overhead_us: float = Field(default=0.0, ge=0, description="fixed cost of one inference call")
    calibration: dict[str, Any] | None = None


class LatencyBudget(_Section):
    p50: float | None = Field(default=None, gt=0)
    p90: float | None = Field(default=None, gt=0)


class Budgets(_Section):
    """Limits the release must meet on this device; ``None`` means not checked."""

    latency_ms: LatencyBudget = Field(default_factory=LatencyBudget)
    size_mb: float | None = Field(default=None, gt=0)
    peak_memory_mb: float | None = Field(default=None, gt=0)
    instructions: int | None = Field(default=None, gt=0)


class DeviceProfile(_Section):
    """One target device: hardware, runtime, access, prediction figures and budgets."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    target: Target
    runtime: Runtime = Field(default_factory=Runtime)
    access: Access
    predict: Predict | None = None
    budgets: Budgets = Field(default_factory=Budgets)

    @model_validator(mode="after")
    def _check(self) -> "DeviceProfile":
        if self.access.kind == "none" and self.predict is None:
            raise ValueError("access.kind 'none' has no runner, so the profile needs a 'predict' section")
        if self.access.kind == "cuda" and "CUDAExecutionProvider" not in self.runtime.execution_providers:
            raise ValueError("access.kind 'cuda' needs 'CUDAExecutionProvider' in runtime.execution_providers")
        if self.runtime.threads > self.target.cores:
            raise ValueError(f"runtime.threads {self.runtime.threads} exceeds target.cores {self.target.cores}")
        return self


#: Per access kind: the ``access`` keys it uses, whether it predicts latency, and what its cells hold.
ACCESS_KINDS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "local": ((), False, "measured here: latency p50/p90/p99 with 95% intervals, peak memory, the CPU's ISA"),
    "qemu-arm": (("qemu_cpu",), True, "emulated: the device's own outputs compared with this host's (parity "
                 "and task accuracy on each side), never a latency; latency is predicted from 'predict'"),
    "ssh": (("host", "user", "port", "key", "known_hosts", "python", "workdir", "connect_timeout_s"), False,
            "measured on the device over ssh: latency, peak memory, and parity of the device's outputs"),
    "cuda": ((), False, "measured here with the CUDA execution provider (an error if onnxruntime falls back "
             "to the CPU), with the share of nodes that ran on the GPU"),
    "none": ((), True, "predicted from 'predict' (no runner): latency with its error band, no outputs"),
}


def shown_fields(profile: DeviceProfile) -> dict[str, Any]:
    """The profile's fields that apply to its access kind (what ``edgeslim devices show`` prints):
    ``predict`` only where latency is predicted, or where a calibration measured it (a calibrated
    copy with ``access.kind: none`` predicts from it)."""
    data = profile.model_dump(mode="json")
    data["access"] = {"kind": profile.access.kind,
                      **{k: v for k, v in data["access"].items() if k in ACCESS_KINDS[profile.access.kind][0]}}
    if not shows_predict(profile):
        data.pop("predict", None)
    return _without_unset(data)


def shows_predict(profile: DeviceProfile) -> bool:
    predicts = ACCESS_KINDS[profile.access.kind][1]
    return profile.predict is not None and (predicts or profile.predict.calibration is not None)


def _without_unset(value: Any) -> Any:
    """``value`` without the ``None`` and empty entries of its mappings, at every depth."""
    if not isinstance(value, dict):
        return value
    kept = {key: _without_unset(item) for key, item in value.items()}
    return {key: item for key, item in kept.items() if item is not None and item != {}}


def cells_description(profile: DeviceProfile) -> str:
    """One line saying what this device's cells in a report will contain."""
    return ACCESS_KINDS[profile.access.kind][2]


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def profile_from_dict(data: Any, source: str) -> DeviceProfile:
    """Validate a parsed profile; errors become one ``EdgeslimError`` line naming the YAML key."""
    if not isinstance(data, dict):
        raise EdgeslimError(f"{source}: a device profile must be a YAML mapping, got {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _location(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise EdgeslimError(f"{source}: key '{key}': {message}{more}") from None


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a built-in profile by name (``x86-64-cpu``) or a profile YAML file by path."""
    path = resolve_builtin("devices", str(name_or_path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EdgeslimError(f"{path}: not valid YAML{where}; fix the syntax") from None
    except UnicodeDecodeError as exc:
        raise EdgeslimError(f"{path}: not UTF-8 text (byte {exc.start}); save the profile as UTF-8 YAML") from None
    return profile_from_dict(data, str(path))


def list_profiles() -> list[DeviceProfile]:
    """All built-in profiles, sorted by name."""
    return [load_profile(name) for name in builtin_names("devices")]
