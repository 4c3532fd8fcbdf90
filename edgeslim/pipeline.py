"""Runs a recipe's stages in order, with a content-hashed cache, resume and atomic stage outputs.

Stages follow the contract of :mod:`edgeslim.stage` and are looked up in :mod:`edgeslim.stages`;
the teacher and the baselines are registered stages too. The pipeline keys each stage's output
by a hash of (stage name, config, input artifact's key, data, edgeslim code) and skips a stage whose
output folder already holds a finished artifact with that key, so a second run redoes nothing and an
interrupted run resumes at the stage it was in.
"""

from __future__ import annotations

import json
import shutil
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslim.artifacts import (Artifact, MANIFEST, atomic_dir, file_digests, hash_bytes, integrity_problem,
                                read_json, write_manifest)
from edgeslim.errors import EdgeslimError
from edgeslim.progress import RunClock, format_seconds
from edgeslim.stage import StageContext
from edgeslim.stages import get_stage


# --------------------------------------------------------------------------------------------------
# Running a recipe


def code_version(module: str, root: Path | None = None) -> str:
    """Hash of the edgeslim source a stage runs: its module and every edgeslim module that module
    imports, transitively (:mod:`edgeslim.codegraph`; ``root`` is the package folder, this one by
    default). Changing that code invalidates the stage's cached output; changing code it never
    reaches (the report, the device runners) keeps it."""
    from edgeslim.version import __version__
    from edgeslim.codegraph import PACKAGE_DIR, closure, modules

    root = Path(root or PACKAGE_DIR)
    files = modules(root)
    return hash_bytes(__version__, *(name.encode() + files[name].read_bytes() for name in closure(module, root)))[:16]


@dataclass
class StageOutcome:
    """One stage's artifact and whether it came from the cache."""

    index: int
    name: str
    artifact: Artifact
    cached: bool
    seconds: float


@dataclass
class RunOutcome:
    """Everything a run produced: the teacher, the baselines, each stage, the release."""

    teacher: StageOutcome
    baselines: dict[str, StageOutcome]
    stages: list[StageOutcome]
    data: Any

    @property
    def release(self) -> StageOutcome:
        return self.stages[-1] if self.stages else self.baselines["teacher-fp32"]

    def all(self) -> list[StageOutcome]:
        return [self.teacher, *self.baselines.values(), *self.stages]


@dataclass(frozen=True)
class ProcessRole:
    """This process's place in a multi-process launch (``accelerate launch``, ``torchrun``).

    Read from the launcher's ``RANK`` / ``WORLD_SIZE`` variables, so a plain run needs no process
    group. Rank 0 owns the output folder; the other ranks only join the training stages.
    """

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "ProcessRole":
        import os

        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return cls(int(os.environ.get("RANK", "0") or 0), world) if world > 1 else cls()


class Pipeline:
    """Runs a loaded recipe into ``out_dir``: ``stages/NN-name/``, ``baselines/``, cached by key.

    Under a multi-process launch every rank runs the teacher and the training stages (the training
    loop is data-parallel and needs them all) but only rank 0 writes the stage folders; the other
    ranks wait for rank 0's result, continue from it, and stop after the last training stage.
    """

    def __init__(self, recipe, out_dir: Path, quiet: bool = False, force: bool = False,
                 role: ProcessRole | None = None, stage_store: Path | None = None):
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.stage_store = Path(stage_store) if stage_store is not None else None
        self.role = role or ProcessRole.from_env()
        self.quiet = quiet or not self.role.is_main
        self.force = force
        self.started = time.time()
        self.clock = RunClock(self.out_dir, self._steps())

    def _steps(self) -> list[str]:
        """Every step of a run in order, by folder name (the ETA's unit), then the report."""
        baselines = ["teacher-fp32", "teacher-int8"] + (["teacher-int4"] if self.recipe.task == "causal-lm" else [])
        stages = [f"{index:02d}-{entry.name}" for index, entry in enumerate(self.recipe.stages, start=1)]
        return ["00-teacher", *baselines, *stages, "report"]

    @contextlib.contextmanager
    def timed_step(self, step: str, label: str, doing: str):
        """Progress lines and the recorded time of a step the pipeline does not cache (the report)."""
        self._say(f"{label} {doing}; {self.clock.eta(step)}")
        started = time.time()
        yield
        self.clock.finished(step, time.time() - started)
        self._say(f"{label} done in {format_seconds(time.time() - started)} "
                  f"(run time so far {format_seconds(time.time() - self.started)})")

    def run(self) -> RunOutcome:
        from edgeslim.data import load_data

        check_stage_order(self.recipe)
        if self.force and self.role.world > 1:
            self._clear_for_forced_rerun()
        data = load_data(self.recipe.data, self.recipe.base_dir, self.recipe.task)
        self._say(f"data: {len(data.train)} train / {len(data.eval)} eval examples")
        teacher = self._teacher(data)
        baselines = self._baselines(teacher, data) if self.role.is_main else {}
        specs = [get_stage(entry.name) for entry in self.recipe.stages]
        last_training = max((i for i, spec in enumerate(specs) if spec.trains), default=-1)
        current = teacher
        stages = []
        for index, (entry, spec) in enumerate(zip(self.recipe.stages, specs), start=1):
            if not self.role.is_main and index - 1 > last_training:
                break  # nothing left that needs this rank
            outcome = self._stage(
                index, entry.name, self.out_dir / "stages" / f"{index:02d}-{entry.name}",
                entry.config.model_dump(mode="json"), current.artifact, data, teacher.artifact,
                lambda ctx, spec=spec, entry=entry, current=current: spec.run(entry.config, current.artifact, ctx),
                code=code_version(spec.module), all_ranks=spec.trains,
            )
            stages.append(outcome)
            current = outcome
        return RunOutcome(teacher, baselines, stages, data)

    def _clear_for_forced_rerun(self) -> None:
        """``--force`` under a multi-process launch: rank 0 deletes the finished stage folders before
        any rank starts, so the others cannot mistake an old result for rank 0's new one."""
        from edgeslim.compress.train_state import process_state

        if self.role.is_main:
            for folder in [*self.out_dir.glob("stages/[0-9]*"), *self.out_dir.glob("baselines/*")]:
                shutil.rmtree(folder, ignore_errors=True)
        process_state().wait_for_everyone()
        self.force = False  # nothing is cached any more; from here on, waiting for rank 0 is safe

    # The teacher and the two baselines every report holds -------------------------------------

    def _teacher(self, data) -> StageOutcome:
        spec = get_stage("teacher")
        config = self.recipe.teacher.model_dump(mode="json")
        config["task"] = self.recipe.task
        return self._stage(0, "teacher", self.out_dir / "stages" / "00-teacher", config, None, data, None,
                           lambda ctx: spec.run(self.recipe.teacher, None, ctx), code=code_version(spec.module),
                           all_ranks=True)

    def _baselines(self, teacher: StageOutcome, data) -> dict[str, StageOutcome]:
        """The fp32 teacher ONNX (the export stage with the recipe's export config, so it is exported,
        fused and parity-checked exactly like the student), its plain dynamic INT8 and, for causal LMs,
        its plain INT4 (weight-only RTN, block 32, embedding and head included): every gain is a ratio
        to these, and each is a release candidate the compressed model must not be dominated by."""
        from edgeslim.export.export_config import ExportConfig
        from edgeslim.quantize.config import PlainQuantizeConfig

        export_config = next((e.config for e in self.recipe.stages if e.name == "export"), None)
        fp32 = self._baseline("teacher-fp32", "export", export_config or ExportConfig(), teacher, teacher, data)
        baselines = {"teacher-fp32": fp32}
        plain = {"teacher-int8": PlainQuantizeConfig(mode="dynamic")}
        if self.recipe.task == "causal-lm":
            plain["teacher-int4"] = PlainQuantizeConfig(mode="weight_only", bits=4, block_size=32, accuracy_level=4,
                                                        quantize_embeddings=True)
        for name, config in plain.items():
            baselines[name] = self._baseline(name, "plain-quantize", config, fp32, teacher, data)
        return baselines

    def _baseline(self, name: str, stage: str, config, source: StageOutcome, teacher: StageOutcome,
                  data) -> StageOutcome:
        """One baseline: the registered stage ``stage`` run on ``source``, kept in ``baselines/NAME``."""
        spec = get_stage(stage)
        return self._stage(0, name, self.out_dir / "baselines" / name,
                           {"baseline": stage, stage: config.model_dump(mode="json")}, source.artifact, data,
                           teacher.artifact, lambda ctx: spec.run(config, source.artifact, ctx),
                           code=code_version(spec.module))

    # One cached, atomic stage ------------------------------------------------------------------

    def _stage(self, index: int, name: str, folder: Path, config: dict, source: Artifact | None,
               data, teacher: Artifact | None, body, code: str, all_ranks: bool = False) -> StageOutcome:
        key = hash_bytes(name, json.dumps(config, sort_keys=True), source.manifest["key"] if source else "",
                         data.fingerprint, self.recipe.task, str(self.recipe.seed), code)
        if self.stage_store is not None:
            folder = _stored(folder, self.stage_store / f"{name}-{key[:24]}")
        cached = None if self.force else _finished(folder, key)
        if cached is not None:
            problem = integrity_problem(folder, cached.manifest.get("files"))
            if problem is None:
                self._say(f"{self._label(index, name)}: cached ({folder})")
                return StageOutcome(index, name, cached, True, 0.0)
            self._say(f"{self._label(index, name)}: the cached output cannot be trusted ({problem}); running it again")
        self._say(f"{self._label(index, name)}: running; {self.clock.eta(folder.name)}")
        started = time.time()
        work_dir = folder.parent / f".{folder.name}.work-{key[:12]}"
        if self.role.is_main:
            with atomic_dir(folder) as tmp:
                artifact = body(self._context(tmp, data, teacher, work_dir))
                _finish_manifest(artifact, tmp, name, key, config, source, time.time() - started)
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            if all_ranks:  # this rank's copy of the result is thrown away: rank 0's is the one kept
                scratch = folder.parent / f".{folder.name}.rank{self.role.rank}-{key[:12]}"
                try:
                    body(self._context(scratch, data, teacher, work_dir))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            _wait_until_finished(folder, key)
        artifact = Artifact.load(folder)
        if self.role.is_main:
            self.clock.finished(folder.name, time.time() - started)
        self._say(f"{self._label(index, name)}: done in {format_seconds(time.time() - started)} "
                  f"(run time so far {format_seconds(time.time() - self.started)})")
        return StageOutcome(index, name, artifact, False, time.time() - started)

    def _context(self, out_dir: Path, data, teacher: Artifact | None, work_dir: Path) -> StageContext:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return StageContext(out_dir=Path(out_dir), recipe=self.recipe, data=data, teacher=teacher,
                            quiet=self.quiet, seed=self.recipe.seed, work_dir=work_dir)

    def _label(self, index: int, name: str) -> str:
        """How progress names a step: ``[stage 2 of 5] prune``, ``[teacher]``, ``[baseline] teacher-int8``."""
        if name == "teacher":
            return "[teacher]"
        if index == 0:
            return f"[baseline] {name}"
        return f"[stage {index} of {len(self.recipe.stages)}] {name}"

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)


def _stored(folder: Path, stored: Path) -> Path:
    """With a stage store (a search's trials share one), a stage's output lives in the store under
    its key, so every run that needs the same stage with the same inputs finds it there; the run's
    own ``folder`` becomes a link to it. Returns the folder to use."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() and folder.resolve() == stored.resolve():
        return stored
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.symlink_to(stored.resolve(), target_is_directory=True)
    return stored


def _finished(folder: Path, key: str) -> Artifact | None:
    """The artifact in ``folder`` if it was completed for exactly this key, else ``None``."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or not manifest.get("complete"):
        return None
    return Artifact(folder, manifest["kind"], manifest)


def _wait_until_finished(folder: Path, key: str, poll_seconds: float = 1.0) -> None:
    """Block until rank 0 has published ``folder`` for ``key`` (the folder must be on a shared disk).

    No timeout: when rank 0 fails, the launcher (``accelerate launch``/``torchrun``) stops every rank.
    """
    while _finished(folder, key) is None:
        time.sleep(poll_seconds)


def _finish_manifest(artifact: Artifact, folder: Path, name: str, key: str, config: dict,
                     source: Artifact | None, seconds: float) -> Artifact:
    from edgeslim.version import __version__

    if artifact.kind not in ("torch", "onnx", "bundle"):
        raise RuntimeError(f"stage {name} returned an artifact of unknown kind {artifact.kind!r}")
    manifest = dict(artifact.manifest)
    manifest.update({
        "name": name,
        "stage": name,
        "kind": artifact.kind,
        "key": key,
        "config": config,
        "input": {"key": source.manifest["key"], "path": str(source.path)} if source else None,
        "seconds": round(seconds, 2),
        "edgeslim_version": __version__,
        "complete": True,
    })
    manifest.setdefault("metrics", {})
    artifact = Artifact(folder, artifact.kind, manifest)
    manifest["size_bytes"] = artifact.size_bytes()
    manifest["files"] = file_digests(folder)  # reuse and the gate check these: a changed file is never trusted
    write_manifest(folder, manifest)
    return artifact


def publish_release(release: Artifact, out_dir: Path, target: Path | None = None) -> Path:
    """Copy the release artifact to ``DIR/model`` (or ``target``) atomically, where users and apps
    look for it.

    The copy is checked against the hashes the release's manifest recorded before it is renamed into
    place, so a file changed since it was measured is never published."""
    target = Path(target) if target is not None else Path(out_dir) / "model"
    with atomic_dir(target) as tmp:
        shutil.copytree(release.path, tmp, dirs_exist_ok=True)
        problem = integrity_problem(tmp, release.manifest.get("files"))
        if problem is not None:
            raise EdgeslimError(f"release {release.path} changed after it was measured ({problem}); "
                                "rerun to rebuild it")
    return target


def check_stage_order(recipe) -> None:
    """Each stage must get the kind of model it consumes; the last must give an ONNX model."""
    kind = "torch"
    for index, entry in enumerate(recipe.stages):
        spec = get_stage(entry.name)
        if spec.consumes != kind:
            raise EdgeslimError(
                f"stages[{index}] '{entry.name}' needs a {spec.consumes} model but gets a {kind} model; "
                f"reorder the stages (torch stages, then export, then ONNX stages)"
            )
        kind = spec.produces
        for later_index, later in enumerate(recipe.stages[:index]):
            if later.name in spec.before:
                raise EdgeslimError(f"stages[{index}] '{entry.name}' must come before '{later.name}' "
                                    f"(stages[{later_index}]): {spec.before[later.name]}")
    if recipe.stages and kind == "torch":
        raise EdgeslimError("the last stage gives a torch model; end the stages with 'export' (and optionally quantize, bundle)")
