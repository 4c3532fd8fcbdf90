"""Scripted, cached set-up of aarch64 user emulation: qemu, an arm64 Python sysroot, aarch64 wheels.

    python -m edgeslim.targets.qemu_setup [--cache DIR]

Everything lands in one cache folder (default ``~/.cache/edgeslim/qemu-arm``, or
``$EDGESLIM_QEMU_CACHE``) and nothing on the system is changed, so no root is needed:

- ``qemu-aarch64-static`` from PATH, else Debian's ``qemu-user-static`` package fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x``;
- an arm64 sysroot holding Debian's ``python3.11`` and the libraries it and onnxruntime need,
  fetched by a private apt configuration (architecture arm64, its own lists and empty status file)
  and unpacked the same way;
- a fake ARM ``proc/cpuinfo`` inside the sysroot: QEMU 7.2 passes the host's x86 ``/proc/cpuinfo``
  through, and onnxruntime's cpuinfo library crashes at import on it; with ``-L SYSROOT`` qemu
  opens ``SYSROOT/proc/cpuinfo`` instead;
- the aarch64 ``onnxruntime`` and ``numpy`` wheels matching this environment's versions, fetched
  with ``pip download --platform manylinux2014_aarch64 --only-binary=:all:`` and unzipped into a
  ``site`` folder put on the emulated Python's ``PYTHONPATH``.

binfmt_misc is not available here, so the runner invokes qemu directly with ``-L SYSROOT``. A
``ready.json`` records what was set up; a second call with the same versions does nothing.

Whether a ``-cpu`` model computes INT8 correctly depends on the QEMU version, not on its name: QEMU
7.2's ``-cpu max`` enables SME, and onnxruntime's dynamic-INT8 matmuls then return wrong numbers
(a probe's outputs off by more than their own size), while ``max,sme=off`` and named cpus are exact.
:func:`int8_probe` runs one dynamic-INT8 matmul under the qemu in use with the given cpu, compares it
with the exact fp32 product (not with this host's INT8 kernels, which saturate on AVX2-only x86),
and the runner refuses a cpu whose result is off by more than INT8 rounding can explain; verdicts
are cached per qemu binary, version, cpu and onnxruntime version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgeslim.errors import EdgeslimError

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Packages whose dependency closure forms the sysroot: the interpreter and the C++ runtime
#: onnxruntime links against.
SYSROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1")
WHEELS = ("onnxruntime", "numpy")
SETUP_VERSION = 1

#: /proc/cpuinfo of a 4-core Cortex-A72 (Raspberry Pi 4), as Linux prints it.
FAKE_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for i in range(4)
)


@dataclass(frozen=True)
class QemuEnv:
    """A ready emulation set-up: the qemu binary, the sysroot and the wheels' site folder."""

    qemu: Path
    sysroot: Path
    site: Path

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    def command(self, cpu: str, *args: str) -> list[str]:
        """The command line running the sysroot's Python under qemu with ``args``."""
        return [str(self.qemu), "-L", str(self.sysroot), "-cpu", cpu, str(self.python), *args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
        env.update({"PYTHONPATH": str(self.site), "PYTHONHASHSEED": "0", "PYTHONNOUSERSITE": "1",
                    "OMP_NUM_THREADS": "1"})
        return env


def default_cache() -> Path:
    return Path(os.environ.get("EDGESLIM_QEMU_CACHE") or Path.home() / ".cache" / "edgeslim" / "qemu-arm")


def _run(command: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise EdgeslimError(f"{what}: '{command[0]}' is not installed") from None
    except subprocess.TimeoutExpired:
        raise EdgeslimError(f"{what}: timed out after 1800 s") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise EdgeslimError(f"{what} failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def wanted_versions() -> dict[str, str]:
    """The versions the aarch64 wheels must have: those installed here, so outputs are comparable."""
    return {name: metadata.version(name) for name in WHEELS}


def _ready_marker(cache: Path) -> dict:
    return {"setup": SETUP_VERSION, "wheels": wanted_versions(), "python": "3.11", "suite": DEBIAN_SUITE}


def find_ready(cache: Path | None = None) -> QemuEnv | None:
    """The cached set-up if it is complete and current, else None (nothing is fetched)."""
    cache = Path(cache or default_cache())
    marker = cache / "ready.json"
    if not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return None
    if {k: recorded.get(k) for k in ("setup", "wheels", "python", "suite")} != _ready_marker(cache):
        return None
    env = QemuEnv(Path(recorded["qemu"]), cache / "sysroot", cache / "site")
    return env if env.qemu.is_file() and env.python.is_file() else None


def _private_apt(cache: Path, arch: str) -> list[str]:
    """apt-get options for a private configuration: its own sources, lists, cache and empty status."""
    root = cache / "apt" / arch
    for sub in ("lists/partial", "archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    (root / "etc" / "sources.list").write_text(f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n")
    return ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}",
            "-o", f"Dir::Etc={root / 'etc'}", "-o", f"Dir::Etc::SourceList={root / 'etc' / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::State::status={root / 'status'}", "-o", f"Dir::Cache::Archives={root / 'archives'}",
            "-o", f"Dir::Cache={root}", "-o", "Acquire::Languages=none", "-o", "APT::Sandbox::User=root"]


def _closure(apt: list[str], packages: tuple[str, ...]) -> list[str]:
    """Debian packages needed to run ``packages`` (their recursive Depends/PreDepends)."""
    out = _run(["apt-cache", *apt, "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
               "resolving the arm64 sysroot packages")
    names = set()
    for line in out.splitlines():
        if line and not line.startswith((" ", "<")):
            names.add(line.strip().split(":")[0])
    # Pure configuration / tooling packages not needed for running Python in a sysroot.
    return sorted(n for n in names if n not in {"debconf", "dpkg", "tar", "perl-base", "install-info", "debianutils"})


def _download_and_unpack(apt: list[str], packages: list[str], debs: Path, into: Path, what: str) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", *apt, "download", *packages], what, cwd=debs)
    into.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(into)], f"unpacking {deb.name}")


def _qemu_binary(cache: Path, log) -> Path:
    return qemu_user_binary("aarch64", cache, log)


def qemu_user_binary(arch: str, cache: Path | None = None, log=print) -> Path:
    """A qemu user-mode emulator for ``arch`` (``aarch64``, ``x86_64``): ``qemu-ARCH-static`` or
    ``qemu-ARCH`` on PATH, else the one in Debian's ``qemu-user-static`` package, fetched into the
    cache with ``apt-get download`` (no root needed)."""
    cache = Path(cache or default_cache())
    for name in (f"qemu-{arch}-static", f"qemu-{arch}"):
        found = shutil.which(name)
        if found:
            return Path(found)
    target = cache / "qemu" / "usr" / "bin" / f"qemu-{arch}-static"
    if target.is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EdgeslimError(f"no qemu-{arch}-static on PATH and no apt-get to fetch it; install QEMU's "
                            f"user-mode emulators (Debian/Ubuntu: qemu-user-static; Fedora: qemu-user-static-{arch})")
    host_arch = _run(["dpkg", "--print-architecture"], "finding the host architecture").strip()
    log("fetching Debian's qemu-user-static")
    apt = _private_apt(cache, host_arch)
    _run(["apt-get", *apt, "update"], "apt-get update (host architecture)")
    _download_and_unpack(apt, ["qemu-user-static"], cache / "debs-qemu", cache / "qemu", "downloading qemu-user-static")
    if target.is_file():
        return target
    # a suite where qemu-user-static is a transitional package: the emulators are in qemu-user
    _download_and_unpack(apt, ["qemu-user"], cache / "debs-qemu", cache / "qemu", "downloading qemu-user")
    plain = cache / "qemu" / "usr" / "bin" / f"qemu-{arch}"
    if plain.is_file():
        return plain
    raise EdgeslimError(f"neither qemu-user-static nor qemu-user had qemu-{arch}; install QEMU's user-mode emulators "
                        f"(apt-get install qemu-user-static, or qemu-user) so qemu-{arch} is on PATH")


def _sysroot(cache: Path, log) -> Path:
    sysroot = cache / "sysroot"
    if (sysroot / "usr" / "bin" / "python3.11").is_file():
        return sysroot
    apt = _private_apt(cache, "arm64")
    log("fetching arm64 package lists")
    _run(["apt-get", *apt, "update"], "apt-get update (arm64)")
    packages = _closure(apt, SYSROOT_PACKAGES)
    log(f"fetching {len(packages)} arm64 packages for the sysroot")
    _download_and_unpack(apt, packages, cache / "debs-arm64", sysroot, "downloading the arm64 sysroot packages")
    return sysroot


def _fake_cpuinfo(sysroot: Path) -> None:
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text(FAKE_CPUINFO)


def _wheels(cache: Path, log) -> Path:
    site = cache / "site"
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in wanted_versions().items()]
    log(f"fetching aarch64 wheels: {' '.join(pins)}")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
          "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_17_aarch64",
          "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "-d", str(wheels), *pins], "pip download of the aarch64 wheels")
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for name in WHEELS:
        matches = sorted(wheels.glob(f"{name}-{wanted_versions()[name]}-*aarch64*.whl"))
        if not matches:
            raise EdgeslimError(f"no aarch64 wheel of {name} {wanted_versions()[name]} was downloaded")
        with zipfile.ZipFile(matches[-1]) as archive:
            archive.extractall(site)
    for so in site.rglob("*.so*"):
        so.chmod(0o755)
    return site


def ensure(cache: Path | None = None, log=print) -> QemuEnv:
    """Set up (or reuse) the emulation environment; ``EdgeslimError`` with one line if that fails."""
    cache = Path(cache or default_cache())
    ready = find_ready(cache)
    if ready is not None:
        return ready
    if platform.system() != "Linux":
        raise EdgeslimError("qemu-arm emulation needs Linux (qemu user mode)")
    if shutil.which("apt-get") is None and shutil.which("qemu-aarch64-static") is None:
        raise EdgeslimError("qemu-arm needs Debian's apt-get (or qemu-aarch64-static and a prepared cache)")
    cache.mkdir(parents=True, exist_ok=True)
    qemu = _qemu_binary(cache, log)
    sysroot = _sysroot(cache, log)
    _fake_cpuinfo(sysroot)
    site = _wheels(cache, log)
    env = QemuEnv(qemu, sysroot, site)
    _run([*env.command("cortex-a72", "-c", "import numpy, onnxruntime; print(onnxruntime.__version__)")],
         "importing onnxruntime under qemu", env=env.env())
    (cache / "ready.json").write_text(json.dumps({**_ready_marker(cache), "qemu": str(qemu)}, indent=1))
    log(f"qemu-arm ready in {cache}")
    return env


def qemu_version(qemu: Path) -> str:
    """``qemu-aarch64 --version``'s number (e.g. ``7.2.22``), or its first line when it has none."""
    first = _run([str(qemu), "--version"], "asking qemu its version").strip().splitlines()[0]
    words = first.split()
    return words[words.index("version") + 1] if "version" in words[:-1] else first


#: Runs the probe model on the probe input and saves the output (host and emulated Python alike).
_PROBE_RUN = ("import sys, numpy as np, onnxruntime as ort; o = ort.SessionOptions(); o.intra_op_num_threads = 1; "
              "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider']); "
              "np.save(sys.argv[3], s.run(None, {'x': np.load(sys.argv[2])})[0])")


def _probe_files(folder: Path) -> tuple[Path, Path, Path]:
    """A dynamic-INT8 matmul (64 x 256 by 256 x 256, the kernels a quantized transformer runs), its
    input, and the exact fp32 product it approximates."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.quantize.ort import quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    model, x, exact = folder / "int8.onnx", folder / "x.npy", folder / "exact.npy"
    if not exact.is_file():
        rng = np.random.default_rng(0)
        weight = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])],
                                  [numpy_helper.from_array(weight, "w")])
        fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        fp32.ir_version = 9
        onnx.save(fp32, str(folder / "fp32.onnx"))
        quantize_dynamic(folder / "fp32.onnx", model, reduce_range=False)
        inputs = rng.standard_normal((64, 256)).astype(np.float32)
        np.save(x, inputs)
        np.save(exact, inputs.astype(np.float64) @ weight)
    return model, x, exact


#: How far the probe's INT8 result may be from the exact product, relative to the product's largest
#: value: INT8 rounding gives about 1.4% (measured on x86 and under qemu with sme=off); the SME
#: error of QEMU 7.2's ``-cpu max`` gives 160%.
PROBE_TOLERANCE = 0.05


def int8_probe(env: QemuEnv, cpu: str, cache: Path | None = None) -> str | None:
    """Why qemu's ``-cpu cpu`` cannot be trusted with INT8 kernels, or None when it computes the
    probe's dynamic-INT8 matmul within INT8 rounding of the exact product."""
    import numpy as np

    cache = Path(cache or default_cache())
    version = qemu_version(env.qemu)
    verdicts_file = cache / "probe" / "verdicts.json"
    verdicts = json.loads(verdicts_file.read_text()) if verdicts_file.is_file() else {}
    key = f"{env.qemu}|{version}|{cpu}|onnxruntime {wanted_versions()['onnxruntime']}"
    if key not in verdicts:
        model, x, exact = _probe_files(cache / "probe")
        emulated = cache / "probe" / "emulated.npy"
        _run(env.command(cpu, "-c", _PROBE_RUN, str(model), str(x), str(emulated)),
             f"running the INT8 probe under qemu -cpu {cpu}", env=env.env())
        want, got = np.load(exact), np.load(emulated)
        error = float(np.abs(want - got).max() / np.abs(want).max())
        verdicts[key] = None if error <= PROBE_TOLERANCE else (
            f"qemu {version} with -cpu {cpu} computes INT8 matmuls wrongly (a probe is {error:.0%} off the exact "
            f"product, INT8 rounding explains {PROBE_TOLERANCE:.0%}; QEMU 7's SME emulation does this): use "
            f"'{cpu.split(',')[0]},sme=off' or a named cpu such as cortex-a72")
        verdicts_file.write_text(json.dumps(verdicts, indent=1))
    return verdicts[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default ~/.cache/edgeslim/qemu-arm)")
    args = parser.parse_args(argv)
    try:
        env = ensure(args.cache)
    except EdgeslimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(env.command("cortex-a72")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
