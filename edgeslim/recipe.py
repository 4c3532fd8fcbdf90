"""The recipe: one YAML file that says what to compress, with what data, through which stages, for
which devices, under which budgets.

Loading validates everything that can be validated without running anything; every error names the
YAML file, line and key path (``recipe.yaml:14: stages[1].distill.temperature: ...``) so the user knows
what to change. Each stage's config is validated by the class the stage registered (see
:mod:`edgeslim.pipeline`), so a stage module adds its own keys without touching this file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeslim.errors import EdgeslimError
from edgeslim.search.config import SearchConfig, check_space
from edgeslim.stage import StageConfig
from edgeslim.stages import get_stage
from edgeslim.teacher import TeacherConfig

Task = Literal["text-classification", "causal-lm"]


class Strict(BaseModel):
    """Recipe sections reject unknown keys, so a typo is an error and not a silently ignored line."""

    model_config = ConfigDict(extra="forbid")


class HeldOutConfig(Strict):
    """An eval split read from a source of its own: text the training data never came from (another
    corpus, another domain), so a held-out score says how the model does on new text, not on more of
    what it trained on. Its rows are shuffled with ``data.seed``; ``size`` takes the first ones."""

    source: str
    format: Literal["csv", "jsonl", "parquet", "text"] | None = None
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str | None = "label"
    size: int | None = Field(None, ge=1, description="eval rows taken (default: all)")


class DataConfig(Strict):
    """A labeled (or plain text) dataset and how it is split; the split is fixed by ``seed``.
    With ``eval_source`` the eval split comes from there and all of ``source`` is training data."""

    source: str
    format: Literal["csv", "jsonl", "parquet", "text"] | None = None
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str | None = "label"
    labels: list[str] | None = None
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    eval_size: int | None = Field(None, ge=1)
    train_size: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8)
    unlabeled: str | None = None
    unlabeled_size: int | None = Field(None, ge=1, description="rows after the train split used as unlabeled text")
    eval_source: HeldOutConfig | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one_eval_split(self):
        if self.eval_source is not None and self.eval_size is not None:
            raise ValueError("eval_size splits data.source; with eval_source set, give eval_source.size instead")
        return self


class LatencyBudget(Strict):
    p50: float | None = Field(None, gt=0)
    p90: float | None = Field(None, gt=0)
    p99: float | None = Field(None, gt=0)


class Budgets(Strict):
    """Release budgets the gate checks on the release artifact."""

    accuracy_drop: float | None = Field(None, ge=0, description="max accuracy drop vs the teacher (absolute)")
    perplexity_ratio: float | None = Field(None, ge=1, description=(
        "language models: max release perplexity / teacher perplexity, on the upper end of the release's interval"))
    size_mb: float | None = Field(None, gt=0)
    latency_ms: dict[str, LatencyBudget] = Field(default_factory=dict)
    peak_memory_mb: dict[str, float] = Field(default_factory=dict)
    instructions: dict[str, int] = Field(default_factory=dict, description="max instructions per inference (callgrind)")
    allow_predicted: bool = False
    parity: "ParityBudget" = Field(default_factory=lambda: ParityBudget())


class ParityBudget(Strict):
    """How close an emulated or remote device's own outputs must come to this host's, per device."""

    accuracy_points: float = Field(1.0, ge=0, description="max |device accuracy - x86 accuracy|, in points (1 = 1%)")
    min_top1_agreement: float = Field(0.98, ge=0, le=1, description="min fraction of examples with the same top-1")


class MeasureConfig(Strict):
    """How the benchmark matrix measures: batch 1, real eval lengths, warm-up and repetitions."""

    samples: int = Field(32, ge=1, description="eval examples used as latency inputs")
    warmup: int = Field(5, ge=0)
    runs: int = Field(100, ge=5, description="timed inferences per model (cycled over the samples)")
    eval_limit: int | None = Field(None, ge=1, description="evaluate accuracy on at most this many")
    parity_samples: int = Field(64, ge=1, description="eval examples an emulated device scores its own outputs on")


class StageEntry(BaseModel):
    """One stage of the recipe, its typed config already validated."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    config: StageConfig


class Recipe(Strict):
    name: str
    description: str = ""
    task: Task = "text-classification"
    seed: int = 0
    teacher: TeacherConfig
    data: DataConfig
    stages: list[StageEntry] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=lambda: ["x86-64-cpu"])
    budgets: Budgets = Field(default_factory=Budgets)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    search: SearchConfig | None = None
    release: Literal["last", "best"] = Field(
        "last", description="last: publish the last stage's model (the gate fails if a baseline dominates it); "
                            "best: publish the best candidate (it or a baseline) that passes every check")

    # Where the recipe came from: relative paths resolve against this folder.
    base_dir: Path | None = Field(None, exclude=True)
    path: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        if not value or any(ch in value for ch in "/\\ ") or value.startswith("."):
            raise ValueError("name must be a plain folder name (no spaces or slashes)")
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, raw: Any) -> list[StageEntry]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError("stages must be a list of {stage_name: {config}} items")
        return [_parse_stage(index, item) for index, item in enumerate(raw)]

    @field_validator("search")
    @classmethod
    def _search_space_fits_the_stages(cls, search, info):
        stages = info.data.get("stages")
        if search is not None and stages is not None:
            check_space(search, dump_stages(stages), lambda name, config: _parse_stage(0, {name: config}))
        return search

    def stage_dump(self) -> list[dict[str, Any]]:
        return dump_stages(self.stages)

    def fingerprint(self) -> str:
        """Hash of everything that decides the outputs (used in bundle metadata)."""
        payload = self.model_dump(mode="json", exclude={"stages"})
        payload["stages"] = self.stage_dump()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def dump_stages(stages: list[StageEntry]) -> list[dict[str, Any]]:
    """Stages as a recipe writes them: ``[{name: {config}}]``."""
    return [{entry.name: entry.config.model_dump(mode="json")} for entry in stages]


class StageError(ValueError):
    """A stage entry's config did not validate; carries the location inside the stage."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _parse_stage(index: int, item: Any) -> StageEntry:
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise StageError((index,), "each stage is one {stage_name: {config}} mapping")
    (name, raw_config), = item.items()
    try:
        spec = get_stage(name)
    except EdgeslimError as exc:
        raise StageError((index,), str(exc)) from None
    try:
        config = spec.config.model_validate(raw_config or {})
    except ValidationError as exc:
        first = best_error(exc.errors())
        loc = recipe_loc(spec.config.error_location(tuple(first["loc"])))
        raise StageError((index, name, *loc), _clean_message(first)) from None
    return StageEntry(name=name, config=config)


# --------------------------------------------------------------------------------------------------
# Loading with file:line in every error


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe file (or a built-in recipe name); errors are one line with file:line."""
    from edgeslim.builtin import resolve_recipe

    recipe_path = resolve_recipe(str(path))
    try:
        text = recipe_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EdgeslimError(f"{recipe_path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8 YAML") from None
    data, lines = _parse_yaml(text, recipe_path)
    if not isinstance(data, dict):
        raise EdgeslimError(f"{recipe_path}: a recipe is a YAML mapping (name:, teacher:, data:, stages: ...)")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise EdgeslimError(_format_error(recipe_path, lines, exc)) from None
    recipe.base_dir = recipe_path.parent
    recipe.path = recipe_path
    recipe.devices = [_device_path(device, recipe.base_dir) for device in recipe.devices]
    return recipe


def _device_path(device: str, base_dir: Path) -> str:
    """A device profile file named in a recipe resolves against the recipe's folder (built-in names
    and absolute paths stay as they are)."""
    if device.endswith((".yaml", ".yml")) and not Path(device).is_absolute() and (base_dir / device).is_file():
        return str(base_dir / device)
    return device


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML and map each key path (tuple of keys and list indices) to its 1-based line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EdgeslimError(f"{where}: YAML syntax error: {problem}") from None
    _refuse_duplicate_keys(node, path)
    lines: dict[tuple, int] = {}
    _index_lines(node, (), lines)
    return data, lines


def _refuse_duplicate_keys(node: Any, path: Path) -> None:
    """YAML lets a later key silently replace an earlier one in the same mapping; a recipe may not."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise EdgeslimError(f"{path}:{line}: key '{key_node.value}' appears twice in the same section (first on "
                                    f"line {seen[key_node.value]}); keep one")
            seen[key_node.value] = line
            _refuse_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _refuse_duplicate_keys(child, path)


def _index_lines(node: Any, prefix: tuple, lines: dict[tuple, int]) -> None:
    if node is None:
        return
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            lines[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _index_lines(child, prefix + (index,), lines)


def best_error(errors: list[dict]) -> dict:
    """The error to show of several (a value that matched no member of a union gives one per member):
    an unknown key first (usually a typo), else the first."""
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def recipe_loc(loc: tuple) -> tuple:
    """``loc`` without pydantic's own segments (union members' class or type names such as ``Every``
    or ``list[int]``), so the path shows only keys the user wrote."""
    return tuple(part for part in loc if isinstance(part, int) or not (
        part[:1].isupper() or "[" in part or part in ("int", "str", "float", "bool", "list", "dict")))


def _format_error(path: Path, lines: dict[tuple, int], exc: ValidationError) -> str:
    first = best_error(exc.errors())
    loc = recipe_loc(tuple(first["loc"]))
    message = _clean_message(first)
    ctx_error = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_error, StageError):
        loc = loc[:1] + ctx_error.loc
        message = ctx_error.message
    line = _line_for(loc, lines)
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {_dotted(loc)}: {message}"


def _clean_message(error: dict) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the docs for the allowed keys)"
    if error["type"] == "missing":
        message = "required key is missing"
    return message


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# --------------------------------------------------------------------------------------------------
# Deep checks: everything ``edgeslim check`` can verify without running a stage


def check_recipe(recipe: Recipe) -> list[str]:
    """Check files, columns, devices, the teacher's config and each stage's teacher-dependent values.

    Returns notes for the user; raises :class:`EdgeslimError` (one line) on the first problem.
    """
    from edgeslim.data import load_data
    from edgeslim.pipeline import check_stage_order
    from edgeslim.targets.profile import load_profile
    from edgeslim.teacher import teacher_shape

    notes = []
    if recipe.budgets.perplexity_ratio is not None and recipe.task != "causal-lm":
        raise EdgeslimError(f"{recipe.path}: budgets.perplexity_ratio: only a causal-lm recipe is scored by "
                            "perplexity; use budgets.accuracy_drop")
    names = {load_profile(device).name for device in recipe.devices}
    for section in ("latency_ms", "peak_memory_mb", "instructions"):
        for device in getattr(recipe.budgets, section):
            if device not in names:
                raise EdgeslimError(f"{recipe.path}: budgets.{section}.{device}: '{device}' is not one of the recipe's "
                                    f"devices ({', '.join(sorted(names))}); add it to devices or drop the budget")
    teacher_config = teacher_shape(recipe.teacher, recipe.base_dir)
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    notes.append(f"data: {len(data.train)} train / {len(data.eval)} eval examples"
                 + (f", labels {data.labels}" if data.labels else ""))
    check_stage_order(recipe)
    for index, entry in enumerate(recipe.stages):
        try:
            entry.config.check_against(teacher_config, recipe.task)
        except ValueError as exc:
            raise EdgeslimError(f"{recipe.path}: stages[{index}].{entry.name}: {exc}") from None
    notes.append("stages: " + " -> ".join(["teacher"] + [entry.name for entry in recipe.stages]))
    notes.append("devices: " + ", ".join(recipe.devices))
    return notes
