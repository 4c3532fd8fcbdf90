"""The ssh runner against a real OpenSSH server started on 127.0.0.1 with a throwaway key."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeslim.targets.profile import load_profile
from edgeslim.targets.runners import measure
from _target_models import token_inputs, token_model


def _sshd_binary() -> str:
    """sshd, installed from Debian's openssh-server when missing and we may (root with apt-get)."""
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("openssh-server is not installed and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "openssh-server"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip(f"apt-get install openssh-server failed: {proc.stderr.strip().splitlines()[-1:]}")
    return "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1: its own host key, key auth only, one authorized throwaway key."""
    binary = _sshd_binary()
    folder = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(folder / "host_key")
    client_key = _keygen(folder / "client_key")
    other_key = _keygen(folder / "other_key")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", f"PidFile {folder / 'sshd.pid'}", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                              stderr=open(folder / "sshd.log", "w"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"sshd exited: {(folder / 'sshd.log').read_text()}")
            time.sleep(0.2)
    yield {"port": port, "key": client_key, "other_key": other_key, "folder": folder}
    server.terminate()
    server.wait(timeout=10)


def ssh_profile(tmp_path: Path, sshd: dict, **access):
    data = {
        "name": "local-ssh",
        "target": {"arch": "x86_64", "cpu": "this host over ssh", "cores": 1, "memory_mb": 1024},
        "runtime": {"threads": 1},
        "access": {"kind": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
                   "key": str(sshd["key"]), "python": sys.executable,
                   "known_hosts": str(sshd["folder"] / "known_hosts"),
                   "workdir": str(tmp_path / "device"), "connect_timeout_s": 5} | access,
    }
    path = tmp_path / "ssh.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ssh-models")
    return {"a": token_model(folder / "a.onnx"), "b": token_model(folder / "b.onnx", hidden=64, seed=1)}


def test_measures_on_the_device_over_ssh(sshd, models, tmp_path):
    cells = measure(ssh_profile(tmp_path, sshd), models, token_inputs(3), warmup=2, runs=20)
    for cell in cells.values():
        assert cell["status"] == "measured", cell
        assert cell["latency_ms"]["n"] == 20 and cell["latency_ms"]["p50"] <= cell["latency_ms"]["p99"]
        assert cell["peak_memory_mb"] > 0
        assert cell["device"]["arch"] == "x86_64"
    # the device's work folder is removed afterwards
    assert not any((tmp_path / "device").glob("run-*"))


def test_unreachable_host_is_an_error_cell(sshd, models, tmp_path):
    closed_port = _free_port()
    cells = measure(ssh_profile(tmp_path, sshd, port=closed_port), models, token_inputs(1), warmup=1, runs=2)
    for cell in cells.values():
        assert cell["status"] == "error"
        assert "cannot reach" in cell["reason"] and str(closed_port) in cell["reason"]
        assert "\n" not in cell["reason"]


def test_refused_key_is_an_error_cell(sshd, models, tmp_path):
    cells = measure(ssh_profile(tmp_path, sshd, key=str(sshd["other_key"])), models, token_inputs(1), warmup=1, runs=2)
    assert all(c["status"] == "error" and "Permission denied" in c["reason"] for c in cells.values())


def test_device_without_onnxruntime_is_an_error_cell(sshd, models, tmp_path):
    python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([python, "-c", "import numpy, onnxruntime"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 has numpy and onnxruntime; no python without them to point at")
    cells = measure(ssh_profile(tmp_path, sshd, python=python), models, token_inputs(1), warmup=1, runs=2)
    assert all(c["status"] == "error" and "No module named" in c["reason"] for c in cells.values())


def test_device_outputs_come_back_and_are_scored_for_parity(sshd, models, tmp_path):
    """With labels and fp32 sources, the device's own outputs are fetched and compared with this
    host's and with the fp32 model: same kernels here, so they match exactly."""
    inputs = token_inputs(4)
    host = measure(load_profile("x86-64-cpu"), {"a": models["a"]}, inputs, warmup=0, runs=1, memory=False)
    assert host["a"]["status"] == "measured"
    labels = [0, 1, 0, 1]
    cells = measure(ssh_profile(tmp_path, sshd), {"a": models["a"]}, inputs, warmup=1, runs=5, memory=False,
                    references={"a": models["b"]}, labels=labels)
    cell = cells["a"]
    assert cell["status"] == "measured", cell
    assert cell["outputs_match"] and cell["top1_agreement"] == 1.0 and cell["max_abs_diff"] == 0.0
    assert cell["device_accuracy"] == cell["host_accuracy"] and cell["parity_examples"] == 4
    # the "fp32 source" here is another model, so both sides differ from it by the same amount
    assert cell["device_rel_diff_vs_fp32"] == cell["host_rel_diff_vs_fp32"] > 0


def test_a_decoder_is_timed_on_the_device_like_an_encoder(sshd, tmp_path_factory, tmp_path):
    """Decode mode over ssh: prefill latency and tokens/s measured on the device, and the device's
    greedy tokens compared with this host's."""
    from _quantize_models import tiny_llama_onnx

    folder = tiny_llama_onnx(tmp_path_factory.mktemp("ssh-llm"))
    prompts = [{"input_ids": np.array([[2, 5, 9, 11]], dtype=np.int64)}]
    cell = measure(ssh_profile(tmp_path, sshd), {"lm": folder / "model.onnx"}, prompts, warmup=1, runs=3,
                   memory=False, mode="decode", new_tokens=4, references={})["lm"]
    assert cell["status"] == "measured", cell
    assert cell["latency_ms"]["n"] == 3 and cell["decode_tokens_per_s"] > 0
    assert cell["top1_agreement"] == 1.0 and cell["device"]["arch"] == "x86_64"
