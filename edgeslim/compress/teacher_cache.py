"""The teacher's outputs for every training example, computed once and kept on disk.

Distillation reads the teacher's logits (and, for some losses, hidden states or attention maps) for
each batch. Running the teacher every step of every epoch, and again on every rerun of a recipe,
costs as much as training the student; this module runs it once over the training examples and
stores what the losses need in a safetensors file, keyed by a hash of (teacher, examples, what is
needed). For causal LMs only the teacher's top-k logits, their token ids and the full vocabulary's
log-normaliser are kept per token, so a cache for a 50k-token vocabulary stays small. Teacher-generated training text (sequence-level KD) is
cached the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgeslim.artifacts import atomic_dir, hash_bytes

CACHE_FILE = "teacher_outputs.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class TeacherNeeds:
    """What the losses read from the teacher: ``hidden`` are ``hidden_states`` indices (0 = the
    embeddings, i + 1 = block i), ``attention`` block indices; ``top_k`` keeps only the k largest
    logits per token (causal LMs)."""

    hidden: tuple[int, ...] = ()
    attention: tuple[int, ...] = ()
    top_k: int | None = None
    token_level: bool = False
    temperature: float = 1.0  # with top_k: the temperature of the kept full-vocabulary normaliser

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def teacher_forward(teacher: nn.Module, batch: dict[str, torch.Tensor], needs: TeacherNeeds) -> dict[str, torch.Tensor]:
    """Run the teacher on a padded batch and return the tensors the losses need:
    ``logits`` (or ``topk_values``/``topk_indices``/``topk_lse``), ``hidden.{i}``, ``attn.{i}``."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=bool(needs.hidden), output_attentions=bool(needs.attention))
    result: dict[str, torch.Tensor] = {}
    if needs.top_k is not None:
        logits = out.logits.float()
        values, indices = logits.topk(needs.top_k, dim=-1)
        result["topk_values"], result["topk_indices"] = values, indices.to(torch.int32)
        # the full vocabulary's log-normaliser, so the k tokens keep their true probabilities
        result["topk_lse"] = torch.logsumexp(logits / needs.temperature, dim=-1)
    else:
        result["logits"] = out.logits.float()
    for i in needs.hidden:
        result[f"hidden.{i}"] = out.hidden_states[i].float()
    for i in needs.attention:
        result[f"attn.{i}"] = out.attentions[i].float()
    return result


def _per_example(name: str, tensor: torch.Tensor, length: int, token_level: bool) -> torch.Tensor:
    """Cut one example's real positions out of its padded row. Hidden states and attention maps are
    kept in float16 (they are regression targets; half the disk and memory), logits in float32."""
    if name.startswith("attn."):
        return tensor[:, :length, :length].half()
    if name.startswith("hidden."):
        return tensor[:length].half()
    if name.startswith("topk_") or (name == "logits" and token_level):
        return tensor[:length]
    return tensor


def _pad_to(tensor: torch.Tensor, name: str, length: int) -> torch.Tensor:
    """Right-pad one example's tensor back to the batch's padded length (zeros, masked anyway)."""
    if name.startswith("attn."):
        extra = length - tensor.shape[-1]
        return torch.nn.functional.pad(tensor, (0, extra, 0, extra))
    if tensor.dim() >= 2 or name.startswith("topk_"):
        pad = [0, 0] * (tensor.dim() - 1) + [0, length - tensor.shape[0]]
        return torch.nn.functional.pad(tensor, pad)
    return tensor


class TeacherCache:
    """Per-example teacher outputs, looked up by each batch's ``index`` column."""

    def __init__(self, tensors: dict[str, torch.Tensor], needs: TeacherNeeds):
        self.needs = needs
        self.names = sorted({k.split("@", 1)[0] for k in tensors if "@" in k})
        self._flat = {n: tensors[f"{n}@data"] for n in self.names}
        self._offsets = {n: tensors[f"{n}@offsets"].tolist() for n in self.names}
        self._shapes = {n: tensors[f"{n}@shapes"].tolist() for n in self.names}

    def __len__(self) -> int:
        return len(self._offsets[self.names[0]]) - 1 if self.names else 0

    def example(self, name: str, index: int) -> torch.Tensor:
        start, stop = self._offsets[name][index], self._offsets[name][index + 1]
        return self._flat[name][start:stop].reshape(self._shapes[name][index])

    def lookup(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's outputs for a padded batch, as :func:`teacher_forward` would return them."""
        length = batch["input_ids"].shape[1]
        device = batch["input_ids"].device
        out = {}
        for name in self.names:
            rows = [_pad_to(self.example(name, int(i)), name, length) for i in batch["index"]]
            stacked = torch.stack(rows)
            out[name] = (stacked.float() if stacked.dtype == torch.float16 else stacked).to(device)
        return out


def _pack(per_example: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, rows in per_example.items():
        sizes = [r.numel() for r in rows]
        offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
        tensors[f"{name}@data"] = torch.cat([r.reshape(-1) for r in rows]).contiguous()
        tensors[f"{name}@offsets"] = offsets
        tensors[f"{name}@shapes"] = torch.tensor([list(r.shape) for r in rows], dtype=torch.int64).reshape(len(rows), -1)
    return tensors


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    """A hash of the examples' token ids, so a cache never serves outputs for other inputs."""
    return hash_bytes(*(r["input_ids"].numpy().tobytes() for r in rows))


def cache_key(teacher_id: str, rows: list[dict[str, Any]], needs: TeacherNeeds) -> str:
    return hash_bytes(teacher_id, rows_fingerprint(rows), needs.key())[:24]


def build_cache(
    teacher: nn.Module,
    rows: list[dict[str, Any]],
    needs: TeacherNeeds,
    folder: Path,
    batch_size: int = 32,
    progress: Callable[..., Any] | None = None,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
) -> TeacherCache:
    """Run the teacher over ``rows`` (in order) and write the cache to ``folder`` atomically."""
    from safetensors.torch import save_file

    if collate is None:
        from edgeslim.compress.trainer import collate
    teacher.eval()
    device = next(teacher.parameters()).device
    per_example: dict[str, list[torch.Tensor]] = {}
    bar = progress(len(rows), "teacher cache", unit="example") if progress else None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        outputs = teacher_forward(teacher, batch, needs)
        for name, tensor in outputs.items():
            for row, value in zip(chunk, tensor.cpu()):
                per_example.setdefault(name, []).append(
                    _per_example(name, value, len(row["input_ids"]), needs.token_level).contiguous()
                )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    tensors = _pack(per_example)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / CACHE_FILE))
        (tmp / META_FILE).write_text(json.dumps({"examples": len(rows), "needs": asdict(needs)}, indent=2))
    return TeacherCache(tensors, needs)


def load_cache(folder: Path, needs: TeacherNeeds) -> TeacherCache | None:
    """The cache in ``folder`` if a finished one is there, else None."""
    from safetensors.torch import load_file

    path = Path(folder) / CACHE_FILE
    if not path.exists():
        return None
    return TeacherCache(load_file(str(path)), needs)


def cached_teacher(
    teacher: nn.Module,
    rows: list[dict[str, Any]],
    needs: TeacherNeeds,
    root: Path,
    teacher_id: str,
    batch_size: int = 32,
    progress: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> TeacherCache:
    """Load the teacher's outputs for ``rows`` from ``root``, computing and storing them if absent."""
    folder = Path(root) / cache_key(teacher_id, rows, needs)
    cache = load_cache(folder, needs)
    if cache is not None and len(cache) == len(rows):
        if log:
            log(f"teacher outputs from cache {folder}")
        return cache
    if log:
        log(f"computing teacher outputs for {len(rows)} examples into {folder}")
    return build_cache(teacher, rows, needs, folder, batch_size, progress)


# -------------------------------------------------------------- teacher-generated data (seq KD)


@dataclass(frozen=True)
class GenerationSpec:
    """How the teacher continues each seed prompt (sampling is seeded per prompt)."""

    max_new_tokens: int = 32
    prompt_tokens: int = 16
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = 50
    seed: int = 0


def generate_rows(
    teacher: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    spec: GenerationSpec,
    root: Path,
    teacher_id: str,
    progress: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """Teacher continuations of ``prompts`` as training rows (cached on disk): ``input_ids`` is
    prompt + continuation; ``labels`` cover only the continuation, which the student learns to
    reproduce (sequence-level KD, Kim & Rush 2016)."""
    from safetensors.torch import load_file, save_file

    folder = Path(root) / ("gen-" + hash_bytes(teacher_id, json.dumps(asdict(spec)), *prompts)[:24])
    path = folder / "generations.safetensors"
    if not path.exists():
        teacher.eval()
        device = next(teacher.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids, prompt_lengths = [], []
        bar = progress(len(prompts), "teacher generation", unit="prompt") if progress else None
        for i, prompt in enumerate(prompts):
            enc = tokenizer(prompt, truncation=True, max_length=spec.prompt_tokens, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            torch.manual_seed(spec.seed * 1_000_003 + i)
            with torch.no_grad():
                out = teacher.generate(
                    **enc, max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample,
                    temperature=spec.temperature if spec.do_sample else None,
                    top_k=spec.top_k if spec.do_sample else None, pad_token_id=pad,
                )
            ids.append(out[0].cpu())
            prompt_lengths.append(enc["input_ids"].shape[1])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        with atomic_dir(folder) as tmp:
            save_file(_pack({"ids": ids}) | {"prompt_lengths": torch.tensor(prompt_lengths)}, str(tmp / path.name))
    tensors = load_file(str(path))
    offsets = tensors["ids@offsets"].tolist()
    rows = []
    for i, plen in enumerate(tensors["prompt_lengths"].tolist()):
        seq = tensors["ids@data"][offsets[i] : offsets[i + 1]].long()
        labels = seq.clone()
        labels[:plen] = -100
        rows.append({"input_ids": seq, "attention_mask": torch.ones_like(seq), "labels": labels, "index": i})
    return rows
