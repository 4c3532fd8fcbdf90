"""Datasets (csv / jsonl / parquet / plain text, or a zip of such files) -> a fixed train/eval split ->
tokenized batches.

The split is deterministic: rows are shuffled with ``data.seed`` and the first ``eval_size`` rows (or
``eval_fraction`` of them) form the eval split; the next ``train_size`` rows (or all the rest) form the
train split. Every artifact of a run is evaluated on the same eval split, so accuracies compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeslim.artifacts import hash_bytes, hash_file
from edgeslim.errors import EdgeslimError, first_line
from edgeslim.sources import resolve_path

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text",
           ".zip": "zip"}


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None = None


class DataBundle:
    """The recipe's data: train and eval examples, label names, optional unlabeled text."""

    def __init__(self, train: list[Example], eval: list[Example], labels: list[str], max_length: int,
                 unlabeled: list[str] | None = None, fingerprint: str = ""):
        self.train = train
        self.eval = eval
        self.labels = labels
        self.max_length = max_length
        self.unlabeled = unlabeled or []
        self.fingerprint = fingerprint

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {name!r}")
        return self.train if name == "train" else self.eval

    def batches(self, tokenizer, split: str = "train", batch_size: int = 16, shuffle: bool = False,
                seed: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Padded torch batches; ``labels`` are class ids, or token ids with padding at -100 for LMs."""
        import torch

        examples = self.split(split)[:limit] if limit else self.split(split)
        order = np.arange(len(examples))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(examples))
        for start in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[start:start + batch_size]]
            batch = dict(tokenizer([ex.text for ex in chunk], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))
            if chunk[0].label is not None:
                batch["labels"] = torch.tensor([ex.label for ex in chunk], dtype=torch.long)
            elif not self.labels:
                labels = batch["input_ids"].clone()
                labels[batch["attention_mask"] == 0] = -100
                batch["labels"] = labels
            yield batch

    def encode_each(self, tokenizer, split: str, n: int) -> list[dict[str, np.ndarray]]:
        """The first ``n`` examples of a split, each tokenized alone (batch 1, its real length)."""
        encoded = []
        for ex in self.split(split)[:n]:
            enc = tokenizer(ex.text, truncation=True, max_length=self.max_length, return_tensors="np")
            encoded.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
        return encoded

    def calibration(self, tokenizer, n: int) -> list[dict[str, np.ndarray]]:
        """Calibration inputs for static quantization: ``n`` train examples at batch 1."""
        if not self.train:
            raise EdgeslimError("calibration needs training examples, but the train split is empty")
        return self.encode_each(tokenizer, "train", n)


def load_data(config, base_dir: Path | None, task: str) -> DataBundle:
    """Read the recipe's ``data`` section into a :class:`DataBundle` (errors say what to change)."""
    path = resolve_path(config.source, base_dir)
    if path.is_dir():
        raise EdgeslimError(f"data.source '{config.source}' is a folder ({path}); give the data file inside it "
                            "(csv, jsonl, parquet or text)")
    if not path.is_file():
        raise EdgeslimError(f"data.source '{config.source}' does not exist (resolved to {path})")
    fmt = config.format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EdgeslimError(f"data.source '{path.name}': cannot tell the format; set data.format (csv, jsonl, parquet, text)")
    frame = read_frame(path, fmt, config)
    texts, labels, label_names = _columns(frame, config, path, task)
    order = np.random.default_rng(config.seed).permutation(len(texts))
    examples = [Example(texts[i], labels[i] if labels is not None else None) for i in order]
    if config.eval_source is not None:
        eval_split, eval_hash = _held_out(config, base_dir, task, label_names)
        train_split = examples
    else:
        n_eval = config.eval_size or max(1, round(len(texts) * config.eval_fraction))
        if n_eval >= len(texts):
            raise EdgeslimError(f"data: eval split ({n_eval}) leaves no training rows out of {len(texts)}; "
                                "lower data.eval_size")
        eval_split, train_split, eval_hash = examples[:n_eval], examples[n_eval:], ""
    if labels is not None:
        _check_every_class_scored(eval_split, label_names)
    rest: list[Example] = []
    if config.train_size:
        train_split, rest = train_split[:config.train_size], train_split[config.train_size:]
    unlabeled = _read_unlabeled(config, base_dir) + _unlabeled_rows(config, rest)
    fingerprint = hash_bytes(hash_file(path), eval_hash, config.model_dump_json(), "\n".join(unlabeled))
    return DataBundle(train_split, eval_split, label_names, config.max_length, unlabeled, fingerprint)


def _held_out(config, base_dir: Path | None, task: str, label_names: list[str]) -> tuple[list[Example], str]:
    """The eval split from ``data.eval_source`` (shuffled with ``data.seed``, its first ``size`` rows;
    labels mapped onto the training labels) and the hash of its file."""
    held_out = config.eval_source
    path = resolve_path(held_out.source, base_dir)
    if not path.is_file():
        raise EdgeslimError(f"data.eval_source.source '{held_out.source}' does not exist (resolved to {path})")
    fmt = held_out.format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EdgeslimError(f"data.eval_source.source '{path.name}': cannot tell the format; set data.eval_source.format "
                            "(csv, jsonl, parquet, text)")
    reading = config.model_copy(update={"encoding": held_out.encoding, "text_column": held_out.text_column,
                                        "label_column": held_out.label_column, "labels": label_names or None})
    key = "data.eval_source"
    texts, labels, _ = _columns(read_frame(path, fmt, reading, key), reading, path, task, key)
    order = np.random.default_rng(config.seed).permutation(len(texts))[:held_out.size]
    return [Example(texts[i], labels[i] if labels is not None else None) for i in order], hash_file(path)


def read_frame(path: Path, fmt: str, config, key: str = "data"):
    """The file as a pandas frame (``config`` gives ``encoding``, and ``text_column`` for plain text)."""
    import pandas as pd

    if fmt == "zip":
        return _read_archive(path, config, key)
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            return pd.read_csv(path, encoding=config.encoding, sep=sep)
        if fmt == "jsonl":
            return pd.DataFrame(_jsonl_rows(path, config.encoding, key))
        if fmt == "parquet":
            return pd.read_parquet(path)
        lines = path.read_text(encoding=config.encoding).splitlines()
        return pd.DataFrame({config.text_column: [line for line in lines if line.strip()]})
    except UnicodeDecodeError as exc:
        raise EdgeslimError(
            f"{key}.source '{path.name}' is not valid {config.encoding} (byte {exc.object[exc.start]:#x} at "
            f"offset {exc.start}); set {key}.encoding to the file's encoding, e.g. latin-1"
        ) from None
    except (ValueError, OSError) as exc:
        raise EdgeslimError(f"{key}.source '{path.name}' could not be read as {fmt}: {first_line(exc)}") from None


def _read_archive(path: Path, config, key: str = "data"):
    """Every data file in a zip archive (by suffix, in name order) as one frame: datasets often ship
    their splits as members of one archive; edgeslim makes its own split from all of them."""
    import tempfile
    import zipfile

    import pandas as pd

    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
            members = sorted(name for name in archive.namelist()
                             if FORMATS.get(Path(name).suffix.lower(), "zip") != "zip" and not name.startswith("__MACOSX/"))
            if not members:
                raise EdgeslimError(f"{key}.source '{path.name}' holds no csv, tsv, jsonl, parquet or txt file")
            frames = []
            for name in members:
                member = Path(archive.extract(name, tmp))
                frames.append(read_frame(member, FORMATS[member.suffix.lower()], config, key))
    except zipfile.BadZipFile as exc:
        raise EdgeslimError(f"{key}.source '{path.name}' is not a readable zip archive ({exc})") from None
    return pd.concat(frames, ignore_index=True)


def _jsonl_rows(path: Path, encoding: str, key: str = "data") -> list[dict]:
    """The objects of a JSON-lines file; a broken line is named by its line number."""
    import json

    rows = []
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgeslimError(f"{key}.source '{path.name}': line {number} is not valid JSON ({exc.msg}); "
                                    "fix or remove that line") from None
            if not isinstance(row, dict):
                raise EdgeslimError(f"{key}.source '{path.name}': line {number} is not a JSON object; each line must "
                                    "be one {\"text\": ..., \"label\": ...} object")
            rows.append(row)
    return rows


def _columns(frame, config, path: Path, task: str, key: str = "data"):
    columns = [str(c) for c in frame.columns]
    if config.text_column not in columns:
        raise EdgeslimError(
            f"{key}.text_column '{config.text_column}' is not a column of {path.name} (columns: {', '.join(columns)})"
        )
    needs_labels = task == "text-classification"
    if needs_labels and (config.label_column is None or config.label_column not in columns):
        raise EdgeslimError(
            f"{key}.label_column '{config.label_column}' is not a column of {path.name} (columns: {', '.join(columns)})"
        )
    frame = frame.dropna(subset=[config.text_column] + ([config.label_column] if needs_labels else []))
    texts = [str(t) for t in frame[config.text_column]]
    if not texts:
        raise EdgeslimError(f"{key}.source '{path.name}' has no rows with text in column '{config.text_column}'")
    if not needs_labels:
        return texts, None, []
    raw = [str(v) for v in frame[config.label_column]]
    names = list(config.labels) if config.labels else sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise EdgeslimError(
            f"data.labels does not list {', '.join(unknown[:5])} found in column '{config.label_column}'; add them or fix the data"
        )
    if len(names) < 2:
        raise EdgeslimError(f"column '{config.label_column}' has fewer than two classes; a classifier needs at least two")
    absent = [name for name in names if name not in set(raw)]
    if absent:
        raise EdgeslimError(
            f"data.labels lists {', '.join(repr(a) for a in absent[:5])}, which no row of column "
            f"'{config.label_column}' has; remove it from data.labels (a class without examples cannot be learned or scored)"
        )
    return texts, [index[v] for v in raw], names


def _check_every_class_scored(eval_split: list[Example], names: list[str]) -> None:
    """Every class needs at least one eval example, or its accuracy (and the floor) means nothing."""
    seen = {ex.label for ex in eval_split}
    missing = [name for i, name in enumerate(names) if i not in seen]
    if missing:
        raise EdgeslimError(f"the eval split ({len(eval_split)} rows) has no example of class(es) "
                            f"{', '.join(repr(m) for m in missing[:5])}; raise data.eval_size or data.eval_fraction")


def _unlabeled_rows(config, rest: list[Example]) -> list[str]:
    """``data.unlabeled_size`` texts of the rows after the train split, their labels dropped: in-domain
    text the teacher labels for distillation."""
    if not config.unlabeled_size:
        return []
    if not rest:
        raise EdgeslimError("data.unlabeled_size needs rows beyond the train split; set data.train_size below "
                            "the number of non-eval rows")
    return [ex.text for ex in rest[:config.unlabeled_size]]


def _read_unlabeled(config, base_dir: Path | None) -> list[str]:
    if not config.unlabeled:
        return []
    path = resolve_path(config.unlabeled, base_dir)
    if not path.is_file():
        raise EdgeslimError(f"data.unlabeled '{config.unlabeled}' does not exist (resolved to {path})")
    return [line for line in path.read_text(encoding=config.encoding).splitlines() if line.strip()]
