"""``edgeslim search`` and ``edgeslim search-worker``: one recipe, one release per device.

A search runs trials into its study (:mod:`edgeslim.search.study`) until the study holds the
recipe's ``search.trials``, then finishes: per device, the Pareto front of quality against predicted
p50 latency, the front measured on the device (interleaved, by the same runners as a report), and
the most accurate front trial within the device's budgets rebuilt as an ordinary run restricted to
that device (its stages come from the stage store): report, gate, and the release published to
``DIR/model/<device>/``. The search's own report (``DIR/report/report.json``, ``report.md``,
``report.html``) holds every trial, the fronts and each device's verdict.

A worker (``search-worker``) only runs trials into a shared study (``--storage``); the search that
finishes may run on any machine: a release whose trial ran elsewhere is rebuilt from its values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeslim.errors import EdgeslimError


@dataclass
class SearchResult:
    """What a search produced: its report, each device's run (report, checks, exit code) and the
    exit code of the whole (0 when every device's release passes its gate, else 1)."""

    out_dir: Path
    report: dict[str, Any]
    releases: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0


def load_search_recipe(recipe):
    """The recipe, checked, with a search section (one line otherwise)."""
    from edgeslim.api import load_recipe
    from edgeslim.recipe import check_recipe

    recipe = load_recipe(recipe)
    if recipe.search is None:
        raise EdgeslimError(f"recipe '{recipe.name}' has no search section; add one (docs/search.md) or use "
                            "'edgeslim run'")
    if recipe.task != "text-classification":
        raise EdgeslimError(f"recipe '{recipe.name}': search supports text-classification recipes; a {recipe.task} "
                            "search is not built yet (use 'edgeslim run')")
    check_recipe(recipe)
    return recipe


def search(recipe, out: str | Path | None = None, *, storage: str | None = None, trials: int | None = None,
           quiet: bool = True, say: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume) the recipe's search into ``out`` (default ``runs/<name>``) and release one
    model per device."""
    from edgeslim.api import check_output_folder
    from edgeslim.artifacts import run_lock
    from edgeslim.search.study import default_storage, open_study, requeue_stale_trials, work

    recipe = load_search_recipe(recipe)
    out_dir = Path(out) if out else Path("runs") / recipe.name
    check_output_folder(out_dir)
    with run_lock(out_dir, say=say):
        study = open_study(recipe, storage or default_storage(out_dir))
        if storage is None:  # a local study: this process holds the folder, so RUNNING trials are dead ones
            stale = requeue_stale_trials(study)
            if stale:
                say(f"resuming: {stale} trial(s) of a stopped search run again (finished stages are reused)")
        total = trials if trials is not None else recipe.search.trials
        work(study, recipe, out_dir, trials=total, timeout_minutes=recipe.search.timeout_minutes, quiet=quiet, say=say)
        return finish(study, recipe, out_dir, quiet=quiet, say=say)


def worker(recipe, storage: str, out: str | Path | None = None, *, trials: int | None = None, quiet: bool = True,
           say: Callable[[str], None] = print) -> int:
    """Run trials into the shared study at ``storage`` until it holds the recipe's total; returns how
    many this worker ran."""
    from edgeslim.api import check_output_folder
    from edgeslim.artifacts import run_lock
    from edgeslim.search.study import open_study, work

    recipe = load_search_recipe(recipe)
    out_dir = Path(out) if out else Path("runs") / f"{recipe.name}-worker"
    check_output_folder(out_dir)
    with run_lock(out_dir, say=say):
        study = open_study(recipe, storage)
        total = trials if trials is not None else recipe.search.trials
        return work(study, recipe, out_dir, trials=total, timeout_minutes=recipe.search.timeout_minutes, quiet=quiet,
                    say=say)


def finish(study, recipe, out_dir: Path, *, quiet: bool, say: Callable[[str], None]) -> SearchResult:
    """Fronts, their measurement, one gated release per device, and the search report."""
    from edgeslim.report.matrix import merged_budgets
    from edgeslim.search.report import search_report, write_search_report
    from edgeslim.search.study import completed, failed
    from edgeslim.targets.profile import load_profile

    trials = completed(study)
    if not trials:
        raise EdgeslimError("the search has no finished trial to release; see the failed trials' reasons above")
    profiles = [load_profile(device) for device in recipe.devices]
    budgets = merged_budgets(recipe, profiles)
    devices = {profile.name: device_choice(recipe, profile, device, trials, budgets, out_dir, quiet=quiet, say=say)
               for profile, device in zip(profiles, recipe.devices)}
    releases = {name: release_for_device(recipe, trials[entry["trial"]]["params"], entry["profile"], out_dir,
                                         quiet=quiet, say=say)
                for name, entry in devices.items()}
    report = search_report(recipe, study, trials, failed(study), devices, releases)
    write_search_report(report, out_dir / "report")
    exit_code = 0 if all(result.exit_code == 0 for result in releases.values()) else 1
    return SearchResult(out_dir, report, releases, exit_code)


def device_choice(recipe, profile, device: str, trials: dict[int, dict[str, Any]], budgets: dict[str, Any],
                  out_dir: Path, *, quiet: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """One device's front (on predicted p50), its p50s as measured there, and the trial it releases
    with the reason (``device`` as the recipe names it, for the release run)."""
    from edgeslim.search.front import choose_release, front_numbers

    front = front_numbers(trials, profile.name)
    for number in front:
        trials[number]["evaluation"]["release"] = str(local_release(recipe, number, trials[number], out_dir,
                                                                    quiet=quiet, say=say))
    if recipe.search.measure_front:
        front_p50 = measure_front(recipe, profile, front, trials, quiet=quiet)
    else:
        front_p50 = {n: trials[n]["evaluation"]["latency_ms"][profile.name] for n in front}
    limits = {"p50": (budgets["latency_ms"].get(profile.name) or {}).get("p50"), "size_mb": budgets["size_mb"],
              "accuracy_drop": budgets["accuracy_drop"]}
    choice = choose_release(front, trials, {n: v["p50"] for n, v in front_p50.items()}, limits)
    say(f"{profile.name}: front {front}; release: trial {choice['trial']} ({choice['reason']})")
    return {"front": front, "front_p50_ms": front_p50, "limits": limits, **choice, "profile": device}


def local_release(recipe, number: int, trial: dict[str, Any], out_dir: Path, *, quiet: bool,
                  say: Callable[[str], None]) -> Path:
    """The trial's release folder on this machine: where it ran, or, for a trial another machine ran,
    rebuilt here from its values (the same seeds give the same model)."""
    from edgeslim.search.trial import run_trial

    path = Path(trial["evaluation"]["release"])
    if (path / "manifest.json").is_file():
        return path
    say(f"trial {number} ran on {trial.get('worker') or 'another machine'}; rebuilding it here from its values")
    evaluation = run_trial(recipe, trial["params"], Path(out_dir) / "trials" / f"{number:03d}",
                           Path(out_dir) / ".stages", quiet=quiet)
    return Path(evaluation["release"])


def measure_front(recipe, profile, front: list[int], trials: dict[int, dict[str, Any]],
                  quiet: bool) -> dict[int, dict[str, Any]]:
    """Each front trial's p50 on ``profile``, its releases timed together by the device's runner:
    ``{"p50": ms, "how": "measured" | "predicted"}``. A device that times nothing here (an emulated
    or predicted-only one) keeps the trial's calibrated prediction."""
    from edgeslim.artifacts import Artifact
    from edgeslim.data import load_data
    from edgeslim.report.matrix import device_measurer

    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    entries = [(f"trial-{n}", Artifact.load(Path(trials[n]["evaluation"]["release"]))) for n in front]
    cells = device_measurer(recipe.task)(profile, entries, data, recipe, quiet)
    front_p50 = {}
    for n in front:
        cell = cells.get(f"trial-{n}", {})
        p50 = (cell.get("latency_ms") or {}).get("p50")
        measured = p50 is not None and cell.get("status") == "measured"
        front_p50[n] = {"p50": p50, "how": "measured"} if measured else trials[n]["evaluation"]["latency_ms"][profile.name]
    return front_p50


def release_for_device(recipe, params: dict[str, Any], device: str, out_dir: Path, *, quiet: bool,
                       say: Callable[[str], None]):
    """The trial rebuilt as a run for ``device`` alone (stages from the store): its report in
    ``DIR/devices/<device>/report``, its gate, its release in ``DIR/model/<device>``."""
    from edgeslim.api import run_locked
    from edgeslim.pipeline import Pipeline
    from edgeslim.search.trial import recipe_for_trial
    from edgeslim.targets.profile import load_profile

    name = load_profile(device).name
    trial = recipe_for_trial(recipe, params, devices=[device])
    device_dir = Path(out_dir) / "devices" / name
    pipeline = Pipeline(trial, device_dir, quiet=quiet, stage_store=Path(out_dir) / ".stages")
    result = run_locked(trial, pipeline, device_dir, quiet, model_dir=Path(out_dir) / "model" / name)
    beside_report = device_dir / "model"  # where 'edgeslim gate DIR/devices/<device>/report' looks for it
    if beside_report.is_symlink() or beside_report.is_file():
        beside_report.unlink()
    if not beside_report.exists():
        beside_report.symlink_to(Path("..") / ".." / "model" / name, target_is_directory=True)
    say(f"{name}: gate {'PASS' if result.exit_code == 0 else 'FAIL'}; release in {result.release_dir}")
    return result
