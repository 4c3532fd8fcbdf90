"""The Optuna study a search (and its workers) share, and the loop that runs trials into it.

Storage is an embedded SQLite file in the run folder by default (``DIR/search/study.db``), or any
database URL Optuna's RDB storage takes (``postgresql://user@host/db``), so workers on several
machines share one study: each asks Optuna for the next trial, runs it in its own folder and writes
the result back. The study's name comes from the recipe's name and a hash of everything that decides
a trial (space, stages, data, teacher, devices), so a changed recipe starts a new study instead of
mixing results.

A killed worker leaves its trial RUNNING. Workers beat a heartbeat into the study; Optuna fails a
trial whose heartbeat stopped and the retry callback queues its values again, which the next trial
picks up: its finished stages come from the stage store, a half-trained one resumes from its
checkpoint. A search that holds its folder's lock (the default SQLite case) fails and requeues its
own stale trials at once instead of waiting for the grace period.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from edgeslim.errors import EdgeslimError, first_line
from edgeslim.search.trial import decode_params, run_trial

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
MAX_FAILURES_IN_A_ROW = 3
MAX_REPEATS_IN_A_ROW = 20


def default_storage(out_dir: Path) -> str:
    """The study file inside the run folder."""
    folder = Path(out_dir).resolve() / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'study.db'}"


def study_name(recipe) -> str:
    payload = {"search": recipe.search.model_dump(mode="json", exclude={"trials", "timeout_minutes", "measure_front"}),
               "stages": recipe.stage_dump(), "data": recipe.data.model_dump(mode="json"),
               "teacher": recipe.teacher.model_dump(mode="json"), "task": recipe.task, "seed": recipe.seed,
               "devices": recipe.devices}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return f"{recipe.name}-{digest}"


def directions(recipe) -> list[str]:
    """Quality first (accuracy up, perplexity down), then p50 latency on each device (down)."""
    quality = "minimize" if recipe.task == "causal-lm" else "maximize"
    return [quality] + ["minimize"] * len(recipe.devices)


def open_study(recipe, storage_url: str):
    """Create or load the recipe's study at ``storage_url``; a one-line error when the database
    cannot be reached or the URL is not one."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(3):  # workers starting together race to create the tables: the loser tries again
        try:
            storage = RDBStorage(_with_driver(storage_url), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                 failed_trial_callback=RetryFailedTrialCallback(max_retry=3))
            return optuna.create_study(study_name=study_name(recipe), storage=storage, directions=directions(recipe),
                                       sampler=_sampler(recipe), load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds for a bad URL or server
            error = exc
            if not _is_creation_race(exc):
                break
            time.sleep(1 + attempt)
    raise EdgeslimError(f"--storage '{_redacted(storage_url)}': cannot open the study ({first_line(error)}); "
                        "give a reachable database URL (sqlite:///FILE or postgresql://USER@HOST:PORT/DB)")


def _with_driver(url: str) -> str:
    """``postgresql://`` as the installed driver (psycopg2) reads it: SQLAlchemy 2.1 takes a URL
    without a driver to mean psycopg 3."""
    return "postgresql+psycopg2://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def _is_creation_race(exc: Exception) -> bool:
    """Another process created the same tables or study a moment earlier."""
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text or "unique constraint" in text


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{tail}"


def _sampler(recipe):
    import optuna

    kind, seed = recipe.search.sampler, recipe.seed
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(16, recipe.search.trials // 2)))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, recipe.search.trials // 3), multivariate=True)


def requeue_stale_trials(study) -> int:
    """Fail every RUNNING trial and queue its values again; only for a caller that knows no other
    worker is running (it holds the folder lock of a local study). Returns how many."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001 - Optuna's own way
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    return len(stale)


def counted(study) -> int:
    """Trials that count towards the study's total: finished or running somewhere (a trial the
    sampler proposed again is pruned and does not count)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def space_size(recipe) -> int:
    """How many different trials the space holds."""
    return math.prod(len(choices) for choices in recipe.search.space.values())


def work(study, recipe, out_dir: Path, *, trials: int, timeout_minutes: float | None, quiet: bool,
         say: Callable[[str], None]) -> int:
    """Run trials until the study holds ``trials`` (over all workers) or the timeout passes; returns
    how many this worker ran. A trial whose stages fail (an impossible combination) is recorded as
    failed with its reason, and the search goes on."""
    deadline = time.time() + 60 * timeout_minutes if timeout_minutes else None
    objective = _objective(recipe, out_dir, quiet, say)
    target = min(trials, space_size(recipe))
    ran = failures = repeats = 0
    while counted(study) < target and (deadline is None or time.time() < deadline):
        objective.error = objective.repeated = None
        study.optimize(objective, n_trials=1, catch=(EdgeslimError, ValueError))
        ran += 0 if objective.repeated else 1
        failures = failures + 1 if objective.error else 0
        repeats = repeats + 1 if objective.repeated else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise EdgeslimError(f"{failures} trials in a row failed, the last with: {objective.error}; "
                                "fix the recipe's search space (every trial's folder is in DIR/trials)")
        if repeats >= MAX_REPEATS_IN_A_ROW:
            say(f"the sampler proposed {repeats} trials in a row that already ran; stopping with {counted(study)}")
            break
    return ran


def _objective(recipe, out_dir: Path, quiet: bool, say: Callable[[str], None]):
    space = recipe.search.space
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial) -> list[float]:
        params = decode_params({key: trial.suggest_categorical(key, [json.dumps(c, sort_keys=True) for c in choices])
                                for key, choices in space.items()})
        trial.set_user_attr("worker", worker)
        earlier = _same_values(trial.study, trial.params, trial.number)
        if earlier is not None:  # categorical samplers repeat themselves; a repeat adds nothing
            import optuna

            objective.repeated = True
            raise optuna.TrialPruned(f"the same values as trial {earlier}")
        say(f"trial {trial.number}: {_describe(params)}")
        started = time.time()
        try:
            evaluation = run_trial(recipe, params, Path(out_dir) / "trials" / f"{trial.number:03d}",
                                   Path(out_dir) / ".stages", quiet=quiet)
        except (EdgeslimError, ValueError) as exc:
            objective.error = first_line(exc)
            trial.set_user_attr("error", objective.error)
            say(f"trial {trial.number} failed: {first_line(exc)}")
            raise
        evaluation["seconds"] = round(time.time() - started, 1)
        trial.set_user_attr("evaluation", evaluation)
        latency = [evaluation["latency_ms"][name]["p50"] for name in _device_names(recipe)]
        say(f"trial {trial.number}: quality {evaluation['quality']:.4f}, p50 "
            + ", ".join(f"{name} {ms:.3f} ms" for name, ms in zip(_device_names(recipe), latency))
            + f" ({evaluation['seconds']:.0f} s)")
        return [evaluation["quality"], *latency]

    return objective


def _same_values(study, params: dict[str, str], number: int) -> int | None:
    """The number of another finished or running trial with exactly ``params``, if there is one."""
    from optuna.trial import TrialState

    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != number and other.params == params:
            return other.number
    return None


def _device_names(recipe) -> list[str]:
    from edgeslim.targets.profile import load_profile

    return [load_profile(device).name for device in recipe.devices]


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in params.items())


def completed(study) -> dict[int, dict[str, Any]]:
    """Finished trials: number -> {params, evaluation, worker}."""
    from optuna.trial import TrialState

    return {t.number: {"params": decode_params(t.params), "evaluation": t.user_attrs["evaluation"],
                       "worker": t.user_attrs.get("worker")}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "evaluation" in t.user_attrs}


def failed(study) -> dict[int, dict[str, Any]]:
    from optuna.trial import TrialState

    return {t.number: {"params": decode_params(t.params), "error": t.user_attrs.get("error", "stopped")}
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
