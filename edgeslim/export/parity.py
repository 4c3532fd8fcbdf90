"""Proof that an exported ONNX model computes what its torch source computes.

Every export is checked output by output (``logits`` and, for decoders with a KV cache, each
``present.*`` tensor) on a list of named *cases*: real eval batches plus batches of varied batch size
and sequence length. For each output the report keeps the largest absolute difference, the largest
difference relative to the reference's magnitude (``max_abs / max|torch|``) and the case where it
happened. An output fails when any element breaks ``|onnx - torch| <= atol + rtol * |torch|`` (the
numpy ``allclose`` rule); the first failing output is named in the report and in the error.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from edgeslim.errors import EdgeslimError

# Short texts used to build varied-shape cases when no eval data is at hand (e.g. the teacher export).
FALLBACK_TEXTS = (
    "the battery lasts all day and the screen is bright",
    "terrible service, I will not come back",
    "ok",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "is this thing on?",
    "I have mixed feelings about the new update: faster, but the layout moved everything around.",
)

# (batch size, max tokens) pairs for the varied-shape cases.
VARIED_SHAPES = ((1, 4), (1, 64), (2, 16), (3, 9), (5, 32))


@dataclass
class ParityCase:
    """One named batch of model inputs (int64 numpy arrays keyed by input name)."""

    name: str
    inputs: dict[str, np.ndarray]


def tokenized_case(name: str, tokenizer, texts: Sequence[str], max_length: int) -> ParityCase:
    """A case from real text: ``texts`` tokenized, padded to the longest and truncated to ``max_length``."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    arrays = {key: np.asarray(value, dtype=np.int64) for key, value in enc.items()}
    return ParityCase(name, arrays)


def varied_cases(tokenizer, texts: Sequence[str], shapes: Iterable[tuple[int, int]] = VARIED_SHAPES) -> list[ParityCase]:
    """Cases of varied batch size and sequence length cut from ``texts`` (cycled when too few)."""
    pool = [t for t in texts if t and t.strip()] or list(FALLBACK_TEXTS)
    cases = []
    for i, (batch, length) in enumerate(shapes):
        chosen = [pool[(i + j) % len(pool)] for j in range(batch)]
        cases.append(tokenized_case(f"varied b={batch} len<={length}", tokenizer, chosen, length))
    return cases


def batch_cases(batches: Iterable[dict[str, Any]], limit: int, prefix: str = "eval") -> list[ParityCase]:
    """Cases from up to ``limit`` batches of padded torch tensors (``DataBundle.batches``); labels dropped."""
    cases = []
    for i, batch in enumerate(batches):
        if i >= limit:
            break
        arrays = {
            key: value.detach().cpu().numpy().astype(np.int64)
            for key, value in batch.items()
            if key != "labels" and isinstance(value, torch.Tensor)
        }
        shape = arrays["input_ids"].shape
        cases.append(ParityCase(f"{prefix}[{i}] b={shape[0]} s={shape[1]}", arrays))
    return cases


def _position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Position ids for left- or right-padded batches, as Hugging Face generation computes them."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    positions[attention_mask == 0] = 1
    return positions.astype(np.int64)


def _input_meta(session) -> dict[str, Any]:
    return {i.name: i for i in session.get_inputs()}


def onnx_feeds(session, inputs: dict[str, np.ndarray], past: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The feed dict for ``session``: the inputs it declares, plus position ids and (empty) KV cache."""
    meta = _input_meta(session)
    feeds = {name: value for name, value in inputs.items() if name in meta}
    batch = inputs["input_ids"].shape[0]
    past = past or {}
    past_len = 0
    for name, info in meta.items():
        if name.startswith("past_key_values"):
            if name in past:
                feeds[name] = past[name]
            else:
                heads, head_dim = info.shape[1], info.shape[3]
                feeds[name] = np.zeros((batch, heads, 0, head_dim), dtype=np.float32)
            past_len = feeds[name].shape[2]
    if "position_ids" in meta and "position_ids" not in feeds:
        mask = feeds.get("attention_mask", np.ones((batch, past_len + inputs["input_ids"].shape[1]), np.int64))
        feeds["position_ids"] = _position_ids(mask)[:, past_len:]
    if "token_type_ids" in meta and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(inputs["input_ids"])
    missing = [name for name in meta if name not in feeds]
    if missing:
        raise EdgeslimError(f"the ONNX model needs inputs {missing} that edgeslim cannot supply; export with a standard task")
    return feeds


def torch_outputs(model, feeds: dict[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Torch's values for the ONNX ``output_names`` (``logits``, ``present.N.key|value``).

    ``feeds`` is exactly what the ONNX session was fed (see :func:`onnx_feeds`): the same ids,
    mask and position ids, and ``past_key_values.N.key|value`` turned into a transformers cache.
    """
    accepted = inspect.signature(model.forward).parameters
    kwargs = {name: torch.from_numpy(value) for name, value in feeds.items() if name in accepted}
    wants_cache = any(name.startswith("present.") for name in output_names)
    if wants_cache:
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer in range(model.config.num_hidden_layers):
            keys = feeds[f"past_key_values.{layer}.key"]
            if keys.shape[2]:
                cache.update(torch.from_numpy(keys), torch.from_numpy(feeds[f"past_key_values.{layer}.value"]), layer)
        kwargs["past_key_values"] = cache
        kwargs["use_cache"] = True
    with torch.no_grad():
        out = model(**kwargs)
    result = {"logits": out.logits.float().numpy()}
    if wants_cache:
        cache = out.past_key_values
        for layer in range(model.config.num_hidden_layers):
            keys, values = _cache_layer(cache, layer)
            result[f"present.{layer}.key"] = keys.float().numpy()
            result[f"present.{layer}.value"] = values.float().numpy()
    return {name: result[name] for name in output_names if name in result}


def _cache_layer(cache, layer: int):
    """(keys, values) of one layer of a transformers cache, across cache API versions."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def compare(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Difference figures of one output on one case, and whether it is within tolerance."""
    if got.shape != ref.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False,
                "detail": f"shape {list(got.shape)} != torch {list(ref.shape)}"}
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref))) and bool(np.all(np.isfinite(got)))
    return {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-12), "ok": ok}


class ParityReport:
    """Accumulates per-output worst differences over cases; ``as_dict`` goes into the manifest."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol = atol, rtol
        self.outputs: dict[str, dict[str, Any]] = {}
        self.cases: list[str] = []
        self.failed: dict[str, Any] | None = None

    def add(self, case: str, name: str, got: np.ndarray, ref: np.ndarray) -> None:
        figures = compare(name, got, ref, self.atol, self.rtol)
        worst = self.outputs.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "worst_case": case})
        if figures["max_abs"] >= worst["max_abs"]:
            worst.update(max_abs=figures["max_abs"], worst_case=case)
        worst["max_rel"] = max(worst["max_rel"], figures["max_rel"])
        if not figures["ok"] and self.failed is None:
            self.failed = {"output": name, "case": case, "max_abs": figures["max_abs"],
                           "max_rel": figures["max_rel"], **({"detail": figures["detail"]} if "detail" in figures else {})}

    @property
    def passed(self) -> bool:
        return self.failed is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "atol": self.atol, "rtol": self.rtol, "cases": list(self.cases),
            "outputs": self.outputs, "failed": self.failed,
            "max_abs": max((o["max_abs"] for o in self.outputs.values()), default=0.0),
            "max_rel": max((o["max_rel"] for o in self.outputs.values()), default=0.0),
        }

    def error_message(self) -> str:
        return self.message_for(self.as_dict())

    @staticmethod
    def message_for(report: dict[str, Any], hint: str = "raise export.atol/export.rtol if this difference is acceptable") -> str:
        """One line naming the failing output, case and magnitude of a report dict, then ``hint``."""
        f = report.get("failed") or {}
        atol, rtol = report.get("atol"), report.get("rtol")
        detail = f" ({f['detail']})" if "detail" in f else ""
        return (f"ONNX parity failed: output '{f.get('output')}' differs from torch by max abs {f.get('max_abs', 0):.3g} "
                f"(rel {f.get('max_rel', 0):.3g}) on case '{f.get('case')}'{detail}, tolerance atol={atol:g} "
                f"rtol={rtol:g}" + (f"; {hint}" if hint else ""))


def new_session(onnx_path: Path):
    """A CPU onnxruntime session for ``onnx_path`` (onnxruntime's own thread count)."""
    from edgeslim.targets.harness import make_session

    return make_session(onnx_path, {"threads": 0})


def new_session_from_proto(model_proto):
    """A CPU onnxruntime session for an in-memory ONNX model (raises if onnxruntime rejects it)."""
    from edgeslim.targets.harness import make_session

    return make_session(model_proto.SerializeToString(), {"threads": 0})


def check_parity(onnx_path: Path, model, cases: Sequence[ParityCase], atol: float = 1e-3, rtol: float = 1e-3,
                 decode_steps: int = 1, raise_on_failure: bool = True) -> dict[str, Any]:
    """Compare every output of ``onnx_path`` with torch ``model`` on ``cases``; return the report dict.

    For decoders with a KV cache, each case is also continued for ``decode_steps`` single-token steps
    that feed the ONNX model its own ``present`` tensors, so the cache path is checked too. Raises
    :class:`EdgeslimError` naming the failing output, case and magnitude unless ``raise_on_failure``
    is false.
    """
    if not cases:
        raise EdgeslimError("no parity cases: give the recipe eval data or texts to check the export on")
    session = new_session(onnx_path)
    output_names = [o.name for o in session.get_outputs()]
    has_past = any(name.startswith("past_key_values") for name in _input_meta(session))
    report = ParityReport(atol, rtol)
    model.eval()
    declared = _input_meta(session)
    for case in cases:
        report.cases.append(case.name)
        # Both sides get exactly the inputs the ONNX graph declares (e.g. no token_type_ids for GPT-2).
        case = ParityCase(case.name, {k: v for k, v in case.inputs.items() if k in declared})
        feeds = onnx_feeds(session, case.inputs)
        got = dict(zip(output_names, session.run(None, feeds)))
        ref = torch_outputs(model, feeds, output_names)
        for name in output_names:
            if name in ref:
                report.add(case.name, name, got[name], ref[name])
        if has_past:
            _check_decode(session, model, case, got, output_names, decode_steps, report)
    if not report.passed and raise_on_failure:
        raise EdgeslimError(report.error_message())
    return {**report.as_dict(), "decode_steps": decode_steps if has_past else 0}


def _check_decode(session, model, case: ParityCase, first: dict[str, np.ndarray], output_names, steps: int,
                  report: ParityReport) -> None:
    """Continue a causal-LM case token by token through the KV cache, comparing each step."""
    got = first
    mask = case.inputs["attention_mask"]
    for step in range(steps):
        past = {name.replace("present.", "past_key_values."): value for name, value in got.items() if name.startswith("present.")}
        next_ids = np.argmax(got["logits"][:, -1, :], axis=-1).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(next_ids)], axis=1)
        inputs = {"input_ids": next_ids, "attention_mask": mask}
        label = f"{case.name} decode[{step}]"
        feeds = onnx_feeds(session, inputs, past)
        got = dict(zip(output_names, session.run(None, feeds)))
        ref = torch_outputs(model, feeds, output_names)
        for name in output_names:
            if name in ref:
                report.add(label, name, got[name], ref[name])
