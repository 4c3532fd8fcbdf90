"""Built-in recipes and device profiles resolve from an installed wheel, not only from a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_carries_and_resolves_builtins(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("edgeslim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgeslim/_builtin/recipes/tiny-test.yaml" in names
    assert "edgeslim/_builtin/recipes/data/tiny-sentiment.csv" in names
    assert "edgeslim/_builtin/devices/x86-64-cpu.yaml" in names
    # every module of the source tree is in the wheel (a subpackage missing from pyproject's list is not)
    for module in sorted((REPO / "edgeslim").rglob("*.py")):
        assert module.relative_to(REPO).as_posix() in names, module
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = (
        "import edgeslim, sys; from edgeslim.builtin import builtin_names, builtin_dir;"
        "from edgeslim.recipe import load_recipe; from edgeslim.targets.profile import load_profile;"
        f"assert edgeslim.__file__.startswith({str(target)!r}), edgeslim.__file__;"
        "r = load_recipe('tiny-test'); load_profile('x86-64-cpu');"
        "print(builtin_dir('recipes')); print(r.base_dir)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout
