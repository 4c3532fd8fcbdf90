"""Validation of causal LMs: perplexity on held-out text, greedy continuations, decode speed, memory.

Every artifact of a causal-LM run (the torch teacher and students, their ONNX exports with a KV
cache, quantized and bundled models) is scored the same way, so the numbers compare:

* perplexity: ``exp`` of the mean next-token negative log-likelihood over every held-out text
  (each tokenized alone, truncated to ``max_length``; the first token of a text is not predicted);
* predictions: ``new_tokens`` greedy tokens after every prompt, always exactly that many (generation
  does not stop at EOS), concatenated, so agreement with the teacher is the fraction of equal
  positions;
* decode speed (:func:`measure_decode`): prefill latency (the prompt's forward pass, which gives the
  first token) and decode tokens/s (each further token through the KV cache) with onnxruntime at
  the device's thread count, in this process; peak memory in a fresh child process.

ONNX decoders are run with onnxruntime directly (:class:`OnnxDecoder`): Optimum's
``text-generation-with-past`` layout (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.N.key|value`` in, ``logits`` and ``present.N.key|value`` out), or a graph without
cache inputs (the dynamo export), which is then re-run on the whole sequence at each step.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeslim.errors import EdgeslimError, describe


# --------------------------------------------------------------------------------------------------
# Running an ONNX decoder


class OnnxDecoder:
    """One onnxruntime session of an exported decoder, fed batch 1 with or without a KV cache."""

    def __init__(self, onnx_path: Path, threads: int = 0):
        from edgeslim.targets.harness import make_session

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise EdgeslimError(f"no ONNX model at {onnx_path}; point to an export stage's model.onnx")
        self.session = make_session(onnx_path, {"threads": int(threads)})
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs:
            raise EdgeslimError(f"{onnx_path.name} has no input_ids input; it is not an exported causal LM")
        self.input_names = set(inputs)
        self.past = [name for name in inputs if name.startswith("past_key_values")]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.empty_past = {name: np.zeros((1, _dim(inputs[name].shape[1]), 0, _dim(inputs[name].shape[3])),
                                          dtype=np.float16 if "float16" in inputs[name].type else np.float32)
                           for name in self.past}

    @property
    def has_cache(self) -> bool:
        return bool(self.past)

    def forward(self, ids: np.ndarray, cache: dict[str, np.ndarray] | None, total: int):
        """Logits of the positions in ``ids`` (shape ``[1, n]``) after ``total - n`` cached tokens,
        and the new cache."""
        n = ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64)}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(total - n, total, dtype=np.int64)[None, :]
        if self.past:
            feeds.update(cache if cache is not None else self.empty_past)
        values = self.session.run(None, feeds)
        named = dict(zip(self.outputs, values))
        present = {name.replace("present", "past_key_values", 1): value
                   for name, value in named.items() if name.startswith("present")}
        return named["logits"], present

    def prefill(self, prompt_ids: np.ndarray):
        """Run the prompt; return (first greedy token, state for :meth:`step`)."""
        logits, cache = self.forward(prompt_ids, None, prompt_ids.shape[1])
        return int(np.argmax(logits[0, -1])), (prompt_ids, cache)

    def step(self, token: int, state):
        """Feed one token (through the cache, or the whole sequence without one); next greedy token."""
        ids, cache = state
        ids = np.concatenate([ids, np.array([[token]], dtype=np.int64)], axis=1)
        if self.has_cache:
            logits, cache = self.forward(ids[:, -1:], cache, ids.shape[1])
        else:
            logits, cache = self.forward(ids, None, ids.shape[1])
        return int(np.argmax(logits[0, -1])), (ids, cache)

    def greedy(self, prompt_ids: np.ndarray, new_tokens: int) -> list[int]:
        token, state = self.prefill(prompt_ids)
        tokens = [token]
        while len(tokens) < new_tokens:
            token, state = self.step(token, state)
            tokens.append(token)
        return tokens

    def token_nll(self, ids: np.ndarray) -> tuple[float, int, int]:
        """Summed next-token negative log-likelihood of ``ids`` ([1, n]), the number of predictions,
        and how many of them the arg-max got right."""
        logits, _ = self.forward(ids, None, ids.shape[1])
        return _nll(logits[0, :-1].astype(np.float64), ids[0, 1:])


def _dim(value) -> int:
    if not isinstance(value, int):
        raise EdgeslimError("the ONNX decoder's past_key_values inputs have no fixed head count/size; re-export it")
    return value


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
        from transformers import AutoModelForCausalLM

        self.torch = torch
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
    """A report cell for a decoder on this machine: prefill latency and decode tokens/s.

    Each of ``warmup + runs`` generations takes the next prompt (cycled), times the prefill (prompt
    forward pass -> first token) and then the ``new_tokens - 1`` cached single-token steps; the
    warm-up generations are not counted. ``throughput`` is generations per second (prefill plus
    decode). Peak memory is measured in a fresh process (session creation plus a prefill), so the
    models already loaded here do not count.
    """
    if not prompts:
        raise EdgeslimError("measuring decode speed needs at least one prompt")
    if new_tokens < 2 or runs < 1 or warmup < 0:
        raise EdgeslimError("measure_decode needs new_tokens >= 2, runs >= 1 and warmup >= 0")
    try:
        decoder = OnnxDecoder(Path(onnx_path), threads)
        encoded = [_encode(tokenizer, p, max_length) for p in prompts]
        prefill_ms, per_token_ms, decode_s, decoded, total_s = [], [], 0.0, 0, 0.0
        clock = time.perf_counter
        for r in range(warmup + runs):
            ids = encoded[r % len(encoded)]
            start = clock()
            token, state = decoder.prefill(ids)
            after_prefill = clock()
            for _ in range(new_tokens - 1):
                token, state = decoder.step(token, state)
            end = clock()
            if r >= warmup:
                prefill_ms.append((after_prefill - start) * 1000.0)
                per_token_ms.append((end - after_prefill) * 1000.0 / (new_tokens - 1))
                decode_s += end - after_prefill
                decoded += new_tokens - 1
                total_s += end - start
    except EdgeslimError:
        raise
    except Exception as exc:  # onnxruntime raises many types; the cell records why, the matrix goes on
        return {"status": "error", "latency_ms": None, "decode_tokens_per_s": None, "peak_memory_mb": None,
                "throughput": None, "reason": describe(exc, 200)}
    from edgeslim.targets.harness import percentiles

    return {
        "status": "measured",
        "latency_ms": percentiles(prefill_ms),
        "decode_tokens_per_s": round(decoded / decode_s, 3) if decode_s > 0 else None,
        "peak_memory_mb": peak_memory_mb(Path(onnx_path), decoder, encoded[0], threads) if memory else None,
        "throughput": round(runs / total_s, 4) if total_s > 0 else None,
        "threads": threads,
        "new_tokens": new_tokens,
        "reason": None,
        # per generation, ms per decoded token: what latency comparisons (baselines, dominance) use
        "samples_ms": per_token_ms,
    }


def peak_memory_mb(onnx_path: Path, decoder: OnnxDecoder, prompt_ids: np.ndarray, threads: int) -> float | None:
    """Peak resident MB the model adds to a fresh process (the harness's memory mode, prefill feed)."""
    from edgeslim.targets import harness

    feed = {"input_ids": prompt_ids}
    n = prompt_ids.shape[1]
    if "attention_mask" in decoder.input_names:
        feed["attention_mask"] = np.ones((1, n), dtype=np.int64)
    if "position_ids" in decoder.input_names:
        feed["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
    feed.update(decoder.empty_past)
    with tempfile.TemporaryDirectory(prefix="edgeslim-lm-mem-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **{f"0/{k}": v for k, v in feed.items()})
        spec = {"models": {"model": str(onnx_path)}, "inputs": str(inputs), "warmup": 2, "threads": threads,
                "inter_op_threads": 1}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        value = harness.memory_in_child(spec, "model", str(onnx_path), str(spec_path))
    return None if value is None else round(float(value), 2)
