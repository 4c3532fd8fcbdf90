"""onnxruntime's ORT format for mobile builds: converting a model (``model.ort`` and the operator
config a reduced onnxruntime build needs), opening sessions on ONNX or ORT files, and checking that an
ORT file computes what its ONNX model computes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.artifacts import ONNX_FILE
from edgeslim.errors import EdgeslimError, describe, first_line
from edgeslim.export.bundle_files import OPERATORS_FILE, ORT_FILE

# onnxruntime's ORT-format converter reads its graph optimization level from this variable.
ORT_LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
ORT_NONDETERMINISM = ("onnxruntime's ORT-format converter writes different bytes (even sizes) for the same model on "
                      "each call; its outputs are checked against the ONNX model instead")


def open_session(path: Path, extensions: bool = False):
    """An onnxruntime CPU session for an ONNX or ORT file (with onnxruntime-extensions' custom ops)."""
    from edgeslim.targets.harness import make_session

    libraries = []
    if extensions:
        from onnxruntime_extensions import get_library_path

        libraries.append(get_library_path())
    return make_session(path, {"threads": 0, "custom_ops": libraries})


def convert_to_ort(onnx_path: Path, out_dir: Path, target_platform: str = "arm", ort_name: str = ORT_FILE,
                   operators_name: str = OPERATORS_FILE, optimization_level: str = "all") -> dict[str, Any]:
    """Write ``ort_name`` and its operator config ``operators_name`` (next to nothing else) into ``out_dir``.

    Fixed optimizations only: the ORT file then holds a graph that any onnxruntime (full or reduced
    build) loads as is; saved runtime-optimization records are not shipped because they fail to load
    for QDQ models. ``optimization_level`` ``basic`` keeps the graph free of the CPU-only fused
    operators, as NNAPI and CoreML need.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_dir = Path(tmp)
        shutil.copy2(onnx_path, tmp_dir / ONNX_FILE)
        for extra in Path(onnx_path).parent.glob(Path(onnx_path).name + ".data"):
            shutil.copy2(extra, tmp_dir / extra.name)
        converted = tmp_dir / "converted"
        log = io.StringIO()
        quiet_logger = logging.getLogger("ort_format_model.utils")
        level = quiet_logger.level
        quiet_logger.setLevel(logging.WARNING)  # it logs one INFO line per config file written
        try:
            with contextlib.redirect_stdout(log), _environment(ORT_LEVEL_VARIABLE, optimization_level):
                convert_onnx_models_to_ort(tmp_dir / ONNX_FILE, output_dir=converted,
                                           optimization_styles=[OptimizationStyle.Fixed], target_platform=target_platform)
        except Exception as err:  # the converter raises bare RuntimeErrors from onnxruntime
            first = first_line(err)
            raise EdgeslimError(f"onnxruntime could not convert the model to ORT format: {first[:200]}; set bundle.ort_format: false") from err
        finally:
            quiet_logger.setLevel(level)
        # named after the level below "all" (model.basic.ort), so found by suffix
        shutil.move(next(converted.glob("*.ort")), out_dir / ort_name)
        config_lines = next(converted.glob("*.required_operators*.config")).read_text().splitlines()
    # the converter names the temporary file it read; the bundle's own file name makes it repeatable
    (out_dir / operators_name).write_text("\n".join(f"# - {ort_name}" if line.startswith("# - ") else line
                                                     for line in config_lines) + "\n")
    operators = [line for line in config_lines if line and not line.startswith("#")]
    return {"file": ort_name, "operators_file": operators_name, "optimization_style": "fixed",
            "optimization_level": optimization_level, "target_platform": target_platform,
            "size_bytes": (out_dir / ort_name).stat().st_size, "operator_sets": operators}


@contextlib.contextmanager
def _environment(name: str, value: str):
    """``os.environ[name] = value`` for the duration of the block (the converter reads its level there)."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def ort_format_files(out_dir: Path, target_platform: str, feeds: dict[str, np.ndarray], log) -> dict[str, Any]:
    """``model.ort`` and its operator config, checked by loading and running it against the ONNX file.

    onnxruntime writes ORT files it cannot read back for some graphs (4-bit tensors such as a
    ``GatherBlockQuantized`` embedding: "Unsupported tensor data type"). Such a file is useless to an
    app, so it is removed and the bundle records why instead of failing the whole run.
    """
    entry = convert_to_ort(out_dir / ONNX_FILE, out_dir, target_platform)
    try:
        entry["max_abs_vs_onnx"] = compare_sessions(out_dir / ONNX_FILE, out_dir / ORT_FILE, feeds)
    except Exception as err:  # onnxruntime raises its own exception types from the loader
        reason = f"onnxruntime cannot load the ORT file it wrote: {describe(err, 200)}"
        log(f"no model.ort in the bundle: {reason}")
        for name in (ORT_FILE, OPERATORS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return {"written": False, "reason": reason}
    return {"written": True, **entry}


def compare_sessions(reference: Path, candidate: Path, feeds: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over all outputs of two models run on the same ``feeds``."""
    ref_session, cand_session = open_session(reference), open_session(candidate)
    names = [o.name for o in ref_session.get_outputs()]
    ref = ref_session.run(names, feeds)
    got = cand_session.run(names, feeds)
    return max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
               for a, b in zip(ref, got))
