"""Two search workers share one study on a real PostgreSQL server that the test starts on 127.0.0.1
(Debian's postgresql, installed when missing, as .ci/run does); a third process finishes the search
from the shared study and releases one model per device."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_search import search_recipe


def _postgres_bin() -> Path:
    """The folder of initdb/postgres, installing Debian's postgresql when missing and we may."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("postgresql is not installed and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "postgresql"],
                          env=env, capture_output=True, text=True)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if proc.returncode != 0 or not found:
        pytest.skip(f"apt-get install postgresql failed: {proc.stderr.strip().splitlines()[-1:]}")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: under root the server runs as the 'postgres' user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth for user 'edgeslim'); its URL."""
    binaries = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="edgeslim-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "edgeslim", "-A", "trust"]),
                   check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(_as_server_user([str(binaries / "postgres"), "-D", str(data), "-p", str(port),
                                               "-c", "listen_addresses=127.0.0.1", "-k", str(data)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while subprocess.run([str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the PostgreSQL server did not start")
        time.sleep(0.3)
    subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "edgeslim", "study"],
                   check=True)
    yield f"postgresql://edgeslim@127.0.0.1:{port}/study"
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_and_a_third_process_releases(postgres, tmp_path):
    recipe = search_recipe(tmp_path, trials=4)
    workers = [subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "search-worker", str(recipe), "--storage", postgres,
                                 "--out", str(tmp_path / f"worker{i}"), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate() for w in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
    ran = [int(stdout.split()[1]) for stdout, _ in outputs]  # "ran N trial(s)"
    assert all(n >= 1 for n in ran) and sum(ran) >= 4, ran
    for i in range(2):  # as if the workers were other machines: their folders are not here
        shutil.rmtree(tmp_path / f"worker{i}")
    result = run_cli("search", recipe, "--storage", postgres, "--out", tmp_path / "final", "--quiet")
    assert result.returncode in (0, 1), result.stderr
    assert "rebuilding it here from its values" in result.stderr
    report = json.loads((tmp_path / "final" / "report" / "report.json").read_text())
    assert len(report["trials"]) == sum(ran)  # no new trial: the study already held its total
    assert len({t["worker"] for t in report["trials"]}) == 2  # both workers' trials are in the one study
    for device in ("x86-64-cpu", "graviton2"):
        assert (tmp_path / "final" / "model" / device / "model.onnx").is_file()
