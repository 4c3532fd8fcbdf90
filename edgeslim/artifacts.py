"""Artifact folders, their ``manifest.json``, and writes that never leave half a result behind.

An artifact is a folder holding one model: a torch model in Hugging Face ``save_pretrained`` format
(kind ``torch``), an ONNX model ``model.onnx`` with its config and tokenizer (kind ``onnx``), or the
release bundle (kind ``bundle``). Its ``manifest.json`` records the stage that made it, the stage's
config, the cache key, metrics and sizes. A stage writes into a temporary sibling folder that is
renamed into place only when the stage has finished, so a crash never leaves a folder that looks done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
KINDS = ("torch", "onnx", "bundle")


@dataclass
class Artifact:
    """A finished model folder and what its manifest says about it."""

    path: Path
    kind: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def onnx_path(self) -> Path:
        """The ONNX file of an ``onnx`` or ``bundle`` artifact."""
        return self.path / ONNX_FILE

    def size_bytes(self) -> int:
        """Bytes a device must hold: the ONNX file (and its external data) or the torch weights."""
        if self.kind in ("onnx", "bundle"):
            return onnx_size_bytes(self.onnx_path)
        return sum(p.stat().st_size for p in self.path.glob("*.safetensors"))

    @classmethod
    def load(cls, path: Path) -> "Artifact":
        manifest = read_json(Path(path) / MANIFEST)
        return cls(Path(path), manifest["kind"], manifest)

    def lineage(self) -> Iterator["Artifact"]:
        """This artifact, then the one each stage read, back to the teacher (as far as folders remain)."""
        artifact: Artifact | None = self
        while artifact is not None:
            yield artifact
            source = (artifact.manifest.get("input") or {}).get("path")
            artifact = Artifact.load(Path(source)) if source and (Path(source) / MANIFEST).is_file() else None


def onnx_size_bytes(onnx_file: Path) -> int:
    """Size of an ONNX model including any external-data files saved beside it."""
    total = onnx_file.stat().st_size
    for extra in onnx_file.parent.glob(onnx_file.name + ".data"):
        total += extra.stat().st_size
    for extra in onnx_file.parent.glob(onnx_file.name + "_data"):
        total += extra.stat().st_size
    return total


def copy_sidecar_files(src: Path, dst: Path) -> None:
    """Copy config and tokenizer files (everything but models and the manifest) between artifacts."""
    for path in Path(src).iterdir():
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("model.") \
                and path.suffix not in (".onnx", ".safetensors", ".bin", ".ort", ".data"):
            shutil.copy2(path, Path(dst) / path.name)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / MANIFEST, manifest)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; rename it to ``final`` only on success.

    A previous ``final`` is replaced; leftovers of crashed attempts (``.NAME.tmp-PID-*``) are removed,
    but only when the process that made them is gone: a live one belongs to another run.
    On an exception the temporary folder is deleted and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        if not owner_alive(stale.name.rsplit(".tmp-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def owner_alive(suffix: str) -> bool:
    """Whether the process whose pid starts ``suffix`` (``PID-...``) is still running on this host."""
    pid_text = suffix.split("-", 1)[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False  # this process's own leftover (an earlier attempt) or not ours to judge: stale
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Integrity: what a finished folder holds, byte for byte


def file_digests(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size"}}`` of every file under ``folder`` but ``exclude``."""
    folder = Path(folder)
    digests = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in exclude:
            digests[relative] = {"sha256": hash_file(path), "size": path.stat().st_size}
    return digests


def integrity_problem(folder: Path, files: dict[str, dict[str, Any]] | None) -> str | None:
    """Why ``folder`` does not hold exactly the recorded ``files`` (first problem), or ``None``.

    Sizes are compared first (a truncated file is found without reading it), then sha256.
    """
    if not files:
        return "its manifest records no file hashes (written by an older edgeslim)"
    folder = Path(folder)
    for relative, expected in files.items():
        path = folder / relative
        if not path.is_file():
            return f"{relative} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{relative} is {size:,} bytes, but {expected['size']:,} were recorded (truncated or replaced)"
    for relative, expected in files.items():
        if hash_file(folder / relative) != expected["sha256"]:
            return f"{relative} does not match its recorded sha256 (edited after it was written)"
    return None


@contextlib.contextmanager
def run_lock(out_dir: Path, wait: bool = True, say=print) -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``out_dir`` for a whole run.

    A second run on the same folder waits (saying so once) or, with ``wait=False``, fails at once
    with an :class:`EdgeslimError`. The lock is the kernel's (``flock``): it is released when the
    holder exits, however it exits, so a killed run never leaves the folder locked.
    """
    import fcntl

    from edgeslim.errors import EdgeslimError

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            if not wait:
                raise EdgeslimError(f"output folder '{out_dir}' is in use by another edgeslim run (pid {holder}); "
                                    "wait for it, drop --no-wait, or give another --out") from None
            say(f"waiting for another edgeslim run (pid {holder}) to finish with '{out_dir}'")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


LOCK_FILE = ".edgeslim.lock"


def hash_bytes(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(folder: Path) -> str:
    """Content hash of every file under ``folder`` (names and bytes), manifest excluded."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(hash_file(path).encode())
    return digest.hexdigest()
