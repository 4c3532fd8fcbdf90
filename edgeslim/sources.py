"""Where models and data come from: a local path, ``pkg://PACKAGE/PATH`` or a hub id.

``pkg://`` locates a file or folder inside an installed distribution without importing it (importing
a model package can be slow or pull in dependencies that were installed with ``--no-deps``). Paths in
a recipe are relative to the recipe's folder. Hub ids are passed to transformers as they are; with
``HF_HUB_OFFLINE=1`` (the default for tests and the demo) they resolve only from the local cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from edgeslim.errors import EdgeslimError

PKG_SCHEME = "pkg://"


def resolve_pkg(uri: str) -> Path:
    """Return the path of ``pkg://PACKAGE/PATH`` inside the installed package, without importing it."""
    rest = uri[len(PKG_SCHEME):]
    package, _, inner = rest.partition("/")
    if not package:
        raise EdgeslimError(f"'{uri}' names no package; write pkg://PACKAGE/PATH")
    root = _package_root(package)
    target = (root / inner).resolve() if inner else root
    if target != root.resolve() and root.resolve() not in target.parents:
        raise EdgeslimError(f"'{uri}' points outside package '{package}'; pkg:// paths stay inside their package")
    if not target.exists():
        raise EdgeslimError(
            f"'{uri}': package '{package}' is installed but has no '{inner}' (looked in {root})"
        )
    return target


def _package_root(package: str) -> Path:
    """Folder of an importable top-level package or module, found by name or distribution name."""
    module_name = package.replace("-", "_")
    spec = importlib.util.find_spec(module_name)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise EdgeslimError(
            f"package '{package}' is not installed; install it (pip install --no-deps {package})"
        ) from None
    top = (dist.read_text("top_level.txt") or module_name).split()[0]
    return Path(dist.locate_file(top))


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """A recipe path: ``pkg://`` URI, absolute path, or a path relative to the recipe folder."""
    if value.startswith(PKG_SCHEME):
        return resolve_pkg(value)
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def resolve_model_source(value: str, base_dir: Path | None) -> str:
    """A model source as transformers expects it: a local folder/file path, or a hub id.

    A value that looks like a path (``pkg://``, starts with ``.``/``/``/``~``, or exists) must exist;
    anything else of the form ``org/name`` is treated as a hub id.
    """
    if value.startswith(PKG_SCHEME):
        return str(resolve_pkg(value))
    candidate = resolve_path(value, base_dir)
    looks_local = value.startswith((".", "/", "~")) or candidate.exists()
    if looks_local:
        if not candidate.exists():
            raise EdgeslimError(f"teacher source '{value}' does not exist (resolved to {candidate})")
        return str(candidate)
    if value.count("/") == 1 and " " not in value:
        return value
    raise EdgeslimError(
        f"teacher source '{value}' is neither an existing path nor a hub id of the form org/name"
    )
