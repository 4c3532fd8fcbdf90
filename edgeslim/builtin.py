"""Built-in recipes and device profiles, resolvable by name from a checkout or an installed wheel.

In a checkout they live in the repository's top-level ``recipes/`` and ``devices/`` folders; a wheel
carries the same folders as ``edgeslim/_builtin/{recipes,devices}`` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.errors import EdgeslimError

_PACKAGE_DIR = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path | None:
    """The folder of built-in ``recipes`` or ``devices``: the checkout's, else the wheel's."""
    for candidate in (_PACKAGE_DIR.parent / kind, _PACKAGE_DIR / "_builtin" / kind):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


def builtin_names(kind: str) -> list[str]:
    folder = builtin_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve_builtin(kind: str, name_or_path: str) -> Path:
    """A YAML file given by path, or by the name of a built-in of ``kind``."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        if path.is_dir():
            raise EdgeslimError(f"{kind[:-1]} '{name_or_path}' is a folder; give the {kind[:-1]}'s YAML file")
        if not path.is_file():
            raise EdgeslimError(f"{kind[:-1]} file '{name_or_path}' does not exist")
        return path
    folder = builtin_dir(kind)
    if folder is not None and (folder / f"{name_or_path}.yaml").is_file():
        return folder / f"{name_or_path}.yaml"
    known = ", ".join(builtin_names(kind)) or "none"
    raise EdgeslimError(f"no {kind[:-1]} file or built-in {kind[:-1]} named '{name_or_path}' (built-ins: {known})")


def resolve_recipe(name_or_path: str) -> Path:
    return resolve_builtin("recipes", name_or_path)
