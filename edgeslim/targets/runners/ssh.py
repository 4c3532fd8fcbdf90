"""The ssh runner: copy the models, the inputs and the harness to a device and measure there.

Uses the system's OpenSSH client with key authentication only (``BatchMode=yes``: a password prompt
is an error, never a hang), one connection for the copy (a tar stream), one for the run and one to
remove the work folder. The device needs Python 3 with numpy and onnxruntime (``access.python``).
Host keys are checked against ``access.known_hosts`` (default ``~/.cache/edgeslim/known_hosts``),
accepting a host's key the first time it is seen. An unreachable host, a refused key or a device
without onnxruntime gives ``error`` cells with the reason; nothing is raised, so the matrix goes on.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import shlex
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import numpy as np

from edgeslim.targets.profile import Access, DeviceProfile
import edgeslim.targets.runners.parity as parity
from edgeslim.errors import last_line
from edgeslim.targets.runners.job import HARNESS, MACHINE_KEY, cells_for_all, cells_from_result, write_inputs, write_spec

TIMEOUT_S = 1800


class SshError(RuntimeError):
    """The device could not be reached or the remote command failed; the message is one line."""


def ssh_base(access: Access) -> list[str]:
    """``ssh`` with the profile's port, key and non-interactive options, ending in ``user@host``."""
    known_hosts = Path(access.known_hosts).expanduser() if access.known_hosts else Path.home() / ".cache" / "edgeslim" / "known_hosts"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    command = ["ssh", "-p", str(access.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={access.connect_timeout_s}",
               "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts}",
               "-o", "LogLevel=ERROR"]
    if access.key:
        command += ["-i", str(Path(access.key).expanduser()), "-o", "IdentitiesOnly=yes"]
    return command + [f"{access.user}@{access.host}" if access.user else str(access.host)]


def remote(access: Access, script: str, *, stdin: bytes | None = None, timeout_s: int = TIMEOUT_S) -> str:
    """Run ``script`` (a shell command line) on the device; its stdout, or ``SshError``."""
    where = f"{access.user + '@' if access.user else ''}{access.host}:{access.port}"
    try:
        proc = subprocess.run(ssh_base(access) + [script], input=stdin, capture_output=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SshError("the OpenSSH client 'ssh' is not installed here") from None
    except subprocess.TimeoutExpired:
        raise SshError(f"{where}: no answer within {timeout_s} s") from None
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode == 255:
        raise SshError(f"cannot reach {where} over ssh: {last_line(stderr)}")
    if proc.returncode != 0:
        raise SshError(f"{where}: remote command failed (exit {proc.returncode}): {last_line(stderr or proc.stdout.decode(errors='replace'))}")
    return proc.stdout.decode(errors="replace")


def _model_files(model: Path) -> list[Path]:
    """The ONNX file and the external-data files its initializers point to (read from the graph)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    locations = {entry.value for tensor in proto.graph.initializer
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return [model] + [model.parent / location for location in sorted(locations)]


def _bundle(files: dict[str, Path]) -> bytes:
    """A tar archive of ``files`` (archive name -> local file)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, path in files.items():
            archive.add(str(path), arcname=name)
    return buffer.getvalue()


#: Line between the harness's result and the base64 of its saved outputs in the remote command's stdout.
OUTPUTS_MARK = "--- edgeslim outputs (base64 npz) ---"


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            warmup: int, runs: int, memory: bool = True, samples: bool = False,
            min_time_s: float = 0.0, timeout_s: int = TIMEOUT_S, references: dict[str, Path] | None = None,
            labels: list[int] | None = None, mode: str = "latency", new_tokens: int = 20) -> dict[str, dict]:
    """Measure every model on the device; one ``measured`` cell per model, or ``error`` with the reason.

    With ``references`` (model -> fp32 source) or ``labels`` the device's outputs come back too and
    each cell gets the parity figures of :mod:`edgeslim.targets.runners.parity` against this host."""
    access = profile.access
    with_parity = references is not None or labels is not None
    workdir = f"{access.workdir.rstrip('/')}/run-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="edgeslim-ssh-") as tmp:
        local = Path(tmp)
        files = {"harness.py": HARNESS, "inputs.npz": write_inputs(local / "inputs.npz", inputs)}
        remote_models = {}
        for index, (name, path) in enumerate(models.items()):
            for file in _model_files(Path(path)):
                files[f"models/{index}/{file.name}"] = file
            remote_models[name] = f"{workdir}/models/{index}/{Path(path).name}"
        spec = write_spec(local / "spec.json", profile, remote_models, f"{workdir}/inputs.npz",
                          warmup=warmup, runs=runs, memory=memory, samples=samples, min_time_s=min_time_s,
                          outputs=f"{workdir}/outputs.npz" if with_parity else None, mode=mode, new_tokens=new_tokens)
        files["spec.json"] = spec
        quoted = shlex.quote(workdir)
        python = shlex.quote(access.python)
        fetch = (f" && echo && echo {shlex.quote(OUTPUTS_MARK)} && {python} -c "
                 + shlex.quote("import base64,sys; sys.stdout.write(base64.b64encode(open('outputs.npz','rb').read()).decode())")
                 if with_parity else "")
        output = ""
        try:
            remote(access, f"mkdir -p {quoted} && tar -x -C {quoted}", stdin=_bundle(files), timeout_s=timeout_s)
            threads = profile.runtime.threads
            output = remote(access, f"cd {quoted} && OMP_NUM_THREADS={threads} PYTHONHASHSEED=0 "
                                    f"{python} harness.py spec.json result.json && cat result.json{fetch}",
                            timeout_s=timeout_s)
            text, _, encoded = output.partition(OUTPUTS_MARK)
            result = json.loads(text)
            if with_parity:
                (local / "device.npz").write_bytes(base64.b64decode(encoded.strip()))
                host_cells, host = parity.host_run(profile, models, references or {}, local / "inputs.npz", local,
                                                   timeout_s, mode, new_tokens)
                device_outputs = parity.load_outputs(local / "device.npz")
        except SshError as exc:
            return cells_for_all(models, "error", str(exc))
        except (ValueError, binascii.Error):
            return cells_for_all(models, "error", f"the device's harness printed no result: {last_line(output)}")
        except RuntimeError as exc:
            return cells_for_all(models, "error", f"host run for parity failed: {exc}")
        finally:
            try:
                remote(access, f"rm -rf {quoted}", timeout_s=60)
            except SshError:
                pass
    cells = cells_from_result(result, "measured")
    device = result.get(MACHINE_KEY, {})
    for name, one in cells.items():
        one["device"] = device
        if with_parity and one["status"] == "measured" and host_cells[name]["status"] == "measured":
            try:
                one.update(parity.parity_fields(host, device_outputs, name, references or {}, labels))
            except RuntimeError as exc:
                one.update(status="error", reason=last_line(str(exc)))
    return cells
