"""The Python API: what the command line does, for scripts and notebooks.

    import edgeslim

    result = edgeslim.run("minilm-sentiment", out="runs/demo")   # a recipe file, a built-in name or a Recipe
    result.exit_code, result.release_dir, result.report["artifacts"]
    cells = edgeslim.bench(["model.onnx"], devices=["x86-64-cpu"])

Errors a user can fix raise :class:`edgeslim.errors.EdgeslimError` with one line, as the CLI prints.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeslim.errors import EdgeslimError, first_line


@dataclass
class RunResult:
    """What a run produced: the report (``None`` on a secondary rank of a multi-process launch), the
    gate's checks and exit code (0 pass, 1 a check failed), and where the release and reports are."""

    out_dir: Path
    report: dict[str, Any] | None
    checks: list = field(default_factory=list)
    exit_code: int = 0
    release_dir: Path | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def load_recipe(recipe):
    """A recipe from a file path or a built-in name (a loaded :class:`edgeslim.recipe.Recipe` is
    returned as it is), validated; errors name the file, line and key."""
    from edgeslim.recipe import Recipe
    from edgeslim.recipe import load_recipe as load

    return recipe if isinstance(recipe, Recipe) else load(recipe)


def run(recipe, out: str | Path | None = None, *, force: bool = False, wait: bool = True, quiet: bool = True,
        say: Callable[[str], None] = print) -> RunResult:
    """Run ``recipe`` end to end into ``out`` (default ``runs/<recipe name>``): check it, run the
    stages (cached), build and write the reports, apply the release rule, gate, publish the release.
    ``wait=False`` raises instead of waiting when another run holds the folder."""
    from edgeslim.artifacts import run_lock
    from edgeslim.pipeline import Pipeline
    from edgeslim.recipe import check_recipe

    recipe = load_recipe(recipe)
    check_recipe(recipe)
    out_dir = Path(out) if out else Path("runs") / recipe.name
    check_output_folder(out_dir)
    pipeline = Pipeline(recipe, out_dir, quiet=quiet, force=force)
    if not pipeline.role.is_main:
        pipeline.run()
        return RunResult(out_dir, None)
    with run_lock(out_dir, wait=wait, say=say):
        return run_locked(recipe, pipeline, out_dir, quiet)


def run_locked(recipe, pipeline, out_dir: Path, quiet: bool, model_dir: Path | None = None) -> RunResult:
    """The run proper, while this process holds the output folder's lock; the release is published
    to ``model_dir`` (default ``out_dir/model``)."""
    from edgeslim.pipeline import publish_release
    from edgeslim.report.gate import evaluate_gate, gate_exit_code
    from edgeslim.report.matrix import build_report, write_report
    from edgeslim.report.render import write_all

    outcome = pipeline.run()
    with pipeline.timed_step("report", "[report]", "measuring the benchmark matrix"):
        report = build_report(recipe, outcome, out_dir, quiet=quiet)
    release = _chosen_release(recipe, report, outcome, quiet)
    report_dir = out_dir / "report"
    write_report(report, report_dir)
    checks = evaluate_gate(report)
    write_all(report, checks, report_dir)
    model_dir = publish_release(release, out_dir, model_dir)
    if release.kind == "bundle":
        from edgeslim.export.model_card import write_model_card
        from edgeslim.report.render import card_figures

        write_model_card(model_dir, card_figures(report, checks))
    return RunResult(out_dir, report, checks, gate_exit_code(checks), model_dir)


def bench(models: list[str | Path], devices: list[str] | None = None, *, runs: int = 100, warmup: int = 10,
          seq_len: int = 32, instructions: bool = False) -> dict[str, dict[str, dict]]:
    """Measure ONNX files on device profiles with synthetic token inputs; ``{model: {device: cell}}``
    in report.json's cell format (what ``edgeslim bench --json`` writes)."""
    from edgeslim.report.matrix import add_latency_intervals
    from edgeslim.targets.profile import load_profile
    from edgeslim.targets.runners import measure

    if seq_len < 1:
        raise EdgeslimError(f"--seq-len must be at least 1, not {seq_len}")
    if runs < 1 or warmup < 0:
        raise EdgeslimError(f"--runs must be at least 1 and --warmup at least 0 (got {runs} and {warmup})")
    paths = {}
    for path in map(Path, models):
        check_onnx_file(path)
        paths[path.stem if path.stem not in paths else str(path)] = path
    profiles = [load_profile(device) for device in devices or ["x86-64-cpu"]]  # every name checked first
    inputs = [synthetic_inputs(next(iter(paths.values())), seq_len, seed) for seed in range(8)]
    cells: dict[str, dict[str, dict]] = {name: {} for name in paths}
    for profile in profiles:
        for name, one in measure(profile, paths, inputs, warmup=warmup, runs=runs, instructions=instructions,
                                 samples=True).items():
            add_latency_intervals(one)
            cells[name][profile.name] = one
    return cells


def check_output_folder(out_dir: Path) -> None:
    """``--out`` must be a folder edgeslim can create and write: not a file, not under a file, not
    on a read-only filesystem (each an :class:`EdgeslimError` naming the path)."""
    out_dir = Path(out_dir)
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise EdgeslimError(f"--out '{out_dir}': '{parent}' is a file, not a folder; give a folder path")
        if parent.exists():
            break
    existing = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    try:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission in {existing}")
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeslimError(f"--out '{out_dir}': cannot create or write it ({first_line(exc)}); "
                            "give a writable folder") from None


def check_output_file(path: Path, flag: str) -> None:
    """An output file (``flag`` names the option) must be creatable: not a folder, not under a file,
    in a writable folder; checked before any measuring, so a bad path costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise EdgeslimError(f"{flag} '{path}' is a folder; give a file path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise EdgeslimError(f"{flag} '{path}': '{parent}' is a file, not a folder; give a path in a folder")
        if parent.exists():
            try:  # a real probe: permission bits say nothing for root or a read-only filesystem
                tempfile.TemporaryFile(dir=parent).close()
            except OSError as exc:
                raise EdgeslimError(f"{flag} '{path}': cannot write in '{parent}' ({first_line(exc)}); "
                                    "give a writable folder") from None
            return


def check_onnx_file(path: Path) -> None:
    """``path`` must be an ONNX model file onnx can parse (not a folder, a CSV, a truncated file)."""
    import onnx

    if path.is_dir():
        raise EdgeslimError(f"model '{path}' is a folder; give its .onnx file (e.g. {path / 'model.onnx'})")
    if not path.is_file():
        raise EdgeslimError(f"model '{path}' does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if not model.graph.output:  # an empty file or "{}" parses as a model without a graph
            raise ValueError("it holds no graph")
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others for a non-model
        raise EdgeslimError(f"'{path}' is not a readable ONNX model ({first_line(exc)}); give an .onnx file "
                            "written by an exporter") from None


def _chosen_release(recipe, report, outcome, quiet: bool):
    """Apply the recipe's ``release`` rule to the report; return the artifact to publish."""
    from edgeslim.report.matrix import artifact_entries, release_files
    from edgeslim.report.release import choose_release

    choice = choose_release(report, recipe.release)
    report["release_choice"] = choice
    if choice["chosen"] != report["release"] and not quiet:
        print(f"release: {choice['chosen']} ({choice['reason']})")
    report["release"] = choice["chosen"]
    artifact = dict(artifact_entries(outcome))[choice["chosen"]].artifact
    report["release_files"] = release_files(artifact)
    return artifact


def synthetic_inputs(onnx_path: Path, seq_len: int, seed: int):
    """Token inputs for a model outside a recipe: random ids the embedding table holds, batch 1."""
    import numpy as np
    from edgeslim.targets.harness import make_session

    session = make_session(onnx_path, {"threads": 0})
    rng = np.random.default_rng(seed)
    vocab = _embedding_rows(onnx_path)
    feeds = {}
    for inp in session.get_inputs():
        if "mask" in inp.name:
            feeds[inp.name] = np.ones((1, seq_len), dtype=np.int64)
        elif "type" in inp.name:
            feeds[inp.name] = np.zeros((1, seq_len), dtype=np.int64)
        else:
            feeds[inp.name] = rng.integers(1, max(2, min(vocab, 1000)), size=(1, seq_len), dtype=np.int64)
    return feeds


def _embedding_rows(onnx_path: Path) -> int:
    """Rows of the table the token ids index (the Gather fed by input_ids), or 100 if not found."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids" and node.input[0] in shapes:
            return int(shapes[node.input[0]][0])
    return 100
