"""Validation of causal LMs: perplexity on held-out text, greedy continuations, decode speed, memory.

Every artifact of a causal-LM run (the torch teacher and students, their ONNX exports with a KV
cache, quantized and bundled models) is scored the same way, so the numbers compare:

* perplexity: ``exp`` of the mean next-token negative log-likelihood over every held-out text
  (each tokenized alone, truncated to ``max_length``; the first token of a text is not predicted);
* predictions: ``new_tokens`` greedy tokens after every prompt, always exactly that many (generation
  does not stop at EOS), concatenated, so agreement with the teacher is the fraction of equal
  positions;
* decode speed (:func:`measure_decode`, and on any device the runners' decode mode): prefill
  latency (the prompt's forward pass, which gives the first token) and decode tokens/s (each
  further token through the KV cache), timed by the harness; peak memory in a fresh child process.

ONNX decoders are run with onnxruntime directly (:class:`OnnxDecoder`): Optimum's
``text-generation-with-past`` layout (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.N.key|value`` in, ``logits`` and ``present.N.key|value`` out), or a graph without
cache inputs (the dynamo export), which is then re-run on the whole sequence at each step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeslim.errors import EdgeslimError, first_line


# --------------------------------------------------------------------------------------------------
# Running an ONNX decoder


class OnnxDecoder:
    """An exported decoder as the report scores it: :class:`edgeslim.targets.harness.Decoder` (the
    same greedy loop every device runner times) plus per-token likelihoods."""

    def __init__(self, onnx_path: Path, threads: int = 0):
        from edgeslim.targets.harness import Decoder, make_session

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise EdgeslimError(f"no ONNX model at {onnx_path}; point to an export stage's model.onnx")
        session = make_session(onnx_path, {"threads": int(threads)})
        if "input_ids" not in {i.name for i in session.get_inputs()}:
            raise EdgeslimError(f"{onnx_path.name} has no input_ids input; it is not an exported causal LM")
        try:
            self.decoder = Decoder(session)
        except ValueError as exc:
            raise EdgeslimError(str(exc)) from None
        self.session = session
        self.input_names = self.decoder.input_names
        self.empty_past = self.decoder.empty_past

    @property
    def has_cache(self) -> bool:
        return self.decoder.has_cache

    def greedy(self, prompt_ids: np.ndarray, new_tokens: int) -> list[int]:
        return self.decoder.greedy(prompt_ids, new_tokens)

    def token_nll(self, ids: np.ndarray) -> tuple[float, int, int]:
        """Summed next-token negative log-likelihood of ``ids`` ([1, n]), the number of predictions,
        and how many of them the arg-max got right."""
        logits, _ = self.decoder.forward(ids, None, ids.shape[1])
        return _nll(logits[0, :-1].astype(np.float64), ids[0, 1:])


def _nll(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int, int]:
    """Summed cross-entropy of ``logits`` ([n, vocab], float64) against ``targets`` ([n]), the count,
    and the number of arg-max hits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[np.arange(len(targets)), targets]
    hits = int(np.sum(np.argmax(logits, axis=-1) == targets))
    return float((log_z - picked).sum()), int(len(targets)), hits


# --------------------------------------------------------------------------------------------------
# Running a torch decoder


class TorchDecoder:
    """A saved HF causal LM (torch artifact) with the same greedy and likelihood interface."""

    def __init__(self, model_dir: Path):
        import torch

        from edgeslim.compress.lowrank import load_factorized

        self.torch = torch
        try:  # a low-rank stage's output has factor shapes plain from_pretrained refuses
            self.model = load_factorized(model_dir, "causal-lm", dtype=torch.float32)
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            raise EdgeslimError(f"cannot load the causal LM in {model_dir}: {first}") from None

    def greedy(self, prompt_ids: np.ndarray, new_tokens: int) -> list[int]:
        torch = self.torch
        ids = torch.from_numpy(prompt_ids.astype(np.int64))
        tokens, cache = [], None
        with torch.inference_mode():
            while len(tokens) < new_tokens:
                out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                tokens.append(token)
                ids = torch.tensor([[token]])
        return tokens

    def token_nll(self, ids: np.ndarray) -> tuple[float, int]:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.from_numpy(ids.astype(np.int64)), use_cache=False).logits
        return _nll(logits[0, :-1].double().numpy(), ids[0, 1:])

    def params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))


# --------------------------------------------------------------------------------------------------
# Scoring


def _encode(tokenizer, text: str, max_length: int) -> np.ndarray:
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
    return np.asarray(enc["input_ids"], dtype=np.int64)


def text_scores(model, tokenizer, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    """Perplexity (``exp`` of the mean NLL over every predicted token), next-token ``accuracy``, and
    the per-text ``nll`` pairs ``[summed NLL, predicted tokens]`` that intervals resample.

    Texts of one token predict nothing and are left out. This is the LM half of the one scoring path
    (:func:`edgeslim.report.evaluate.score_examples`)."""
    pairs, hits = [], 0
    for text in texts:
        ids = _encode(tokenizer, text, max_length)
        if ids.shape[1] < 2:
            continue
        nll, n, right = model.token_nll(ids)
        pairs.append([nll, n])
        hits += right
    count = sum(n for _, n in pairs)
    if count == 0:
        raise EdgeslimError("perplexity needs held-out texts of at least two tokens; add longer eval texts")
    total = sum(nll for nll, _ in pairs)
    return {"perplexity": round(math.exp(total / count), 6), "accuracy": round(hits / count, 6),
            "nll": [[round(nll, 6), n] for nll, n in pairs]}


def perplexity(model, tokenizer, texts: Sequence[str], max_length: int) -> float:
    """``exp(mean NLL)`` over every predicted token of ``texts`` (texts of one token predict nothing)."""
    return text_scores(model, tokenizer, texts, max_length)["perplexity"]


def greedy_predictions(model, tokenizer, prompts: Sequence[str], max_length: int, new_tokens: int) -> list[int]:
    """``new_tokens`` greedy token ids after each prompt, concatenated in prompt order."""
    predictions: list[int] = []
    for prompt in prompts:
        ids = _encode(tokenizer, prompt, max_length)
        if ids.shape[1] == 0:
            raise EdgeslimError(f"prompt {prompt!r} tokenizes to nothing; give non-empty prompts")
        predictions += model.greedy(ids, new_tokens)
    return predictions


def load_tokenizer(folder: Path):
    """The tokenizer saved in an artifact folder (every edgeslim artifact carries one)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise EdgeslimError(f"no usable tokenizer in {folder}: {first}") from None


def load_decoder(artifact, threads: int = 0):
    """A :class:`TorchDecoder` for a torch artifact, an :class:`OnnxDecoder` for onnx/bundle ones."""
    return load_decoder_at(artifact.path if artifact.kind == "torch" else artifact.onnx_path, artifact.kind, threads)


def load_decoder_at(model: Path, kind: str, threads: int = 0):
    """The decoder of a torch model folder (``kind`` torch) or an ONNX file (``onnx``/``bundle``)."""
    if kind == "torch":
        return TorchDecoder(model)
    if kind in ("onnx", "bundle"):
        return OnnxDecoder(model, threads)
    raise EdgeslimError(f"cannot score an artifact of kind '{kind}' as a causal LM")


def score_causal_lm(artifact, texts: list[str], prompts: list[str], max_length: int,
                    new_tokens: int = 20) -> dict[str, Any]:
    """Perplexity on ``texts``, greedy continuations of ``prompts`` and the parameter count.

    Returns ``{"perplexity": float, "predictions": list[int], "params": int}``; ``predictions``
    holds exactly ``new_tokens`` ids per prompt.
    """
    if new_tokens < 1:
        raise EdgeslimError(f"new_tokens must be at least 1, not {new_tokens}")
    model = load_decoder(artifact)
    tokenizer = load_tokenizer(artifact.path)
    return {
        **text_scores(model, tokenizer, texts, max_length),
        "predictions": greedy_predictions(model, tokenizer, prompts, max_length, new_tokens),
        "params": _params(artifact, model),
    }


def _params(artifact, model) -> int:
    if isinstance(model, TorchDecoder):
        return model.params()
    from edgeslim.report.params import onnx_params

    return onnx_params(artifact.onnx_path)


# --------------------------------------------------------------------------------------------------
# Decode speed and memory


def measure_decode(onnx_path: Path, tokenizer, prompts: list[str], *, threads: int, new_tokens: int,
                   warmup: int, runs: int, max_length: int = 512, memory: bool = True) -> dict[str, Any]:
    """A report cell for a decoder on this machine: prefill latency and decode tokens/s, timed by the
    local runner's harness (decode mode), the same code that times decoders on every device.

    Each of ``warmup + runs`` generations takes the next prompt (cycled), times the prefill (prompt
    -> first token) and then the ``new_tokens - 1`` cached single-token steps; the warm-up
    generations are not counted. ``throughput`` is generations per second. Peak memory is measured
    in a fresh process (session creation plus a prefill).
    """
    from edgeslim.targets.profile import load_profile
    from edgeslim.targets.runners import measure

    if not prompts:
        raise EdgeslimError("measuring decode speed needs at least one prompt")
    if new_tokens < 2 or runs < 1 or warmup < 0:
        raise EdgeslimError("measure_decode needs new_tokens >= 2, runs >= 1 and warmup >= 0")
    if not Path(onnx_path).is_file():
        raise EdgeslimError(f"no ONNX model at {onnx_path}; point to an export stage's model.onnx")
    profile = load_profile("x86-64-cpu")
    profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(update={"threads": int(threads) or 1})})
    inputs = [{"input_ids": _encode(tokenizer, prompt, max_length)} for prompt in prompts]
    cell = measure(profile, {"model": Path(onnx_path)}, inputs, warmup=warmup, runs=runs, memory=memory, samples=True,
                   mode="decode", new_tokens=new_tokens)["model"]
    return {**cell, "threads": threads}
