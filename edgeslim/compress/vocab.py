"""Stage ``vocab``: trim the embedding table and the tokenizer to the tokens the domain's text uses.

Embeddings are often half of a small encoder's parameters, and a task rarely uses more than a few
thousand of the 30k-250k tokens. The stage tokenizes the recipe's texts, keeps every token seen at
least ``min_count`` times (at most ``max_tokens`` of them, most frequent first), every special token
and any ``keep_tokens``, and renumbers them in their old order (new id = rank of the old id among the
kept ones). ``vocab_map.json`` records the exact mapping (``kept_ids[new] = old``).

The tokenizer is edited in its fast ``tokenizer.json`` form, so text whose original tokens were all
kept gets the same tokens, with the renumbered ids:

* WordPiece (BERT family): the longest-match-first search can only pick a kept piece, because the
  piece it picked before is still there and nothing longer was added.
* BPE (Llama, GPT-2, ...): a merge is kept when its two parts and its result are kept, and every kept
  token also keeps the tokens it is merged from (its ancestry), so a word goes through exactly the
  merges it went through before; byte-level alphabets and byte-fallback tokens are always kept.
* Unigram (SentencePiece T5/XLM-R style): the best segmentation of in-vocabulary text is still
  available and still best, since pieces were only removed.

Other tokenizer models (and slow-only tokenizers) are refused with a one-line error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from edgeslim.artifacts import Artifact
from edgeslim.compress.lowrank import load_checked
from edgeslim.compress.torch_artifacts import count_params, read_vocab_map, recover, save_torch
from edgeslim.errors import EdgeslimError
from edgeslim.compress.vocab_config import VocabConfig
from edgeslim.stage import StageContext

SUPPORTED_MODELS = ("WordPiece", "BPE", "Unigram")


# ------------------------------------------------------------------------------- choosing tokens


def count_tokens(tokenizer, texts: Iterable[str], max_length: int | None = None) -> Counter:
    """How often each token id occurs when ``tokenizer`` encodes ``texts`` as the model sees them."""
    counts: Counter = Counter()
    texts = list(texts)
    for start in range(0, len(texts), 256):
        encoded = tokenizer(texts[start:start + 256], truncation=max_length is not None, max_length=max_length)
        for ids in encoded["input_ids"]:
            counts.update(ids)
    return counts


def choose_ids(tokenizer, counts: Counter, config: VocabConfig) -> list[int]:
    """Old ids to keep, ascending: data tokens (``min_count``/``max_tokens``), specials, ``keep_tokens``."""
    data = [i for i, c in counts.most_common() if c >= config.min_count and i not in set(tokenizer.all_special_ids)]
    if config.max_tokens is not None:
        data = data[: config.max_tokens]
    if not data:
        raise EdgeslimError(f"vocab: no token of the data occurs {config.min_count} times or more, so the "
                            "vocabulary would be empty; lower min_count or add data")
    vocab = tokenizer.get_vocab()
    missing = [t for t in config.keep_tokens if t not in vocab]
    if missing:
        raise EdgeslimError(f"vocab: keep_tokens {missing[:3]} are not in the tokenizer's vocabulary; use its token strings")
    extra = [vocab[t] for t in config.keep_tokens]
    return sorted(set(data) | set(tokenizer.all_special_ids) | set(extra) | set(_added_ids(tokenizer)))


def _added_ids(tokenizer) -> list[int]:
    return list(tokenizer.added_tokens_decoder)


# --------------------------------------------------------------------------- editing the tokenizer


def _tokenizer_json(tokenizer) -> dict[str, Any]:
    if not getattr(tokenizer, "is_fast", False):
        raise EdgeslimError("vocab needs a fast tokenizer (tokenizer.json); this model only has a slow one")
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = data["model"]["type"]
    if kind not in SUPPORTED_MODELS:
        raise EdgeslimError(f"vocab supports {', '.join(SUPPORTED_MODELS)} tokenizers, not {kind}")
    return data


def _bpe_closure(model: dict[str, Any], keep: set[str], pre_tokenizer: Any) -> set[str]:
    """``keep`` plus what BPE needs to rebuild those tokens: the parts each is merged from, the
    byte-level alphabet and byte-fallback tokens."""
    vocab = model["vocab"]
    prefix = model.get("continuing_subword_prefix") or ""
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    made_from: dict[str, tuple[str, str]] = {}
    for a, b in merges:
        result = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
        made_from.setdefault(result, (a, b))
    if model.get("byte_fallback"):
        keep |= {f"<0x{i:02X}>" for i in range(256) if f"<0x{i:02X}>" in vocab}
    if "ByteLevel" in json.dumps(pre_tokenizer or {}):
        from tokenizers.pre_tokenizers import ByteLevel

        keep |= {c for c in ByteLevel.alphabet() if c in vocab}
    stack = list(keep)
    while stack:
        parts = made_from.get(stack.pop())
        for part in parts or ():
            if part not in keep and part in vocab:
                keep.add(part)
                stack.append(part)
    return keep


def kept_ids_with_closure(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` plus what the tokenizer model needs to tokenize their text the same way."""
    data = _tokenizer_json(tokenizer)
    if data["model"]["type"] != "BPE":
        return ids
    vocab = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    keep = _bpe_closure(data["model"], {by_id[i] for i in ids if i in by_id}, data.get("pre_tokenizer"))
    return sorted(set(ids) | {vocab[t] for t in keep})


def _remap_ids(node: Any, old_to_new: dict[int, int]) -> Any:
    """Renumber ids in post-processor and padding sections (TemplateProcessing ``ids``, Bert/Roberta
    ``sep``/``cls`` pairs, ``pad_id``)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [old_to_new[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], old_to_new[value[1]]]
            elif key == "pad_id" and isinstance(value, int):
                out[key] = old_to_new.get(value, value)
            else:
                out[key] = _remap_ids(value, old_to_new)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, old_to_new) for v in node]
    return node


def trimmed_tokenizer_json(tokenizer, kept: list[int]) -> str:
    """The tokenizer's ``tokenizer.json`` with only ``kept`` old ids, renumbered in order."""
    data = _tokenizer_json(tokenizer)
    old_to_new = {old: new for new, old in enumerate(kept)}
    model = data["model"]
    if model["type"] in ("WordPiece", "BPE"):
        model["vocab"] = {t: old_to_new[i] for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1])
                          if i in old_to_new}
    if model["type"] == "BPE":
        kept_tokens = set(model["vocab"])
        prefix = model.get("continuing_subword_prefix") or ""
        merges = []
        for merge in model.get("merges", []):
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            result = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
            if a in kept_tokens and b in kept_tokens and result in kept_tokens:
                merges.append(merge)
        model["merges"] = merges
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]
    data["added_tokens"] = [{**t, "id": old_to_new[t["id"]]} for t in data.get("added_tokens", []) if t["id"] in old_to_new]
    for key in ("post_processor", "padding"):
        data[key] = _remap_ids(data.get(key), old_to_new)
    return json.dumps(data, ensure_ascii=False)


def trim_tokenizer(tokenizer, kept: list[int]):
    """A copy of the fast ``tokenizer`` whose vocabulary is ``kept`` (old ids), renumbered."""
    import copy

    from tokenizers import Tokenizer

    trimmed = copy.deepcopy(tokenizer)
    trimmed._tokenizer = Tokenizer.from_str(trimmed_tokenizer_json(tokenizer, kept))
    trimmed.init_kwargs.pop("vocab_file", None)
    return trimmed


# ------------------------------------------------------------------------------- editing the model


def _trim_embedding(embedding: nn.Embedding, index: torch.Tensor, old_to_new: dict[int, int]) -> nn.Embedding:
    padding = embedding.padding_idx
    new = nn.Embedding(len(index), embedding.embedding_dim, padding_idx=old_to_new.get(padding) if padding is not None else None)
    with torch.no_grad():
        new.weight.copy_(embedding.weight[index])
    return new


def _trim_head(head: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(head.in_features, len(index), bias=head.bias is not None)
    with torch.no_grad():
        new.weight.copy_(head.weight[index])
        if head.bias is not None:
            new.bias.copy_(head.bias[index])
    return new


def _remap_config_ids(config, old_to_new: dict[int, int]) -> None:
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            setattr(config, key, old_to_new.get(value))
        elif isinstance(value, list):
            setattr(config, key, [old_to_new[v] for v in value if v in old_to_new])


def trim_model(model: nn.Module, kept: list[int]) -> None:
    """Keep only the ``kept`` rows of the input embedding (and of an untied LM head), in place."""
    old_to_new = {old: new for new, old in enumerate(kept)}
    index = torch.tensor(kept, dtype=torch.long)
    embedding = model.get_input_embeddings()
    if max(kept) >= embedding.num_embeddings:
        raise EdgeslimError("vocab: the tokenizer has ids beyond the model's embedding table; they must match")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is embedding.weight
    model.set_input_embeddings(_trim_embedding(embedding, index, old_to_new))
    if head is not None:
        new_head = _trim_head(head, index)
        if tied:
            new_head.weight = model.get_input_embeddings().weight
        model.set_output_embeddings(new_head)
    model.config.vocab_size = len(kept)
    _remap_config_ids(model.config, old_to_new)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        _remap_config_ids(generation, old_to_new)


def trim(model: nn.Module, tokenizer, texts: Iterable[str], config: VocabConfig, max_length: int | None = None):
    """Trim ``model`` (in place) and ``tokenizer`` (returns the new one) to the tokens of ``texts``."""
    counts = count_tokens(tokenizer, texts, max_length)
    kept = kept_ids_with_closure(tokenizer, choose_ids(tokenizer, counts, config))
    before = count_params(model)
    new_tokenizer = trim_tokenizer(tokenizer, kept)
    trim_model(model, kept)
    seen = sum(counts.values())
    covered = sum(c for i, c in counts.items() if i in set(kept))
    return new_tokenizer, kept, {"vocab_before": len(tokenizer), "vocab_after": len(kept),
                                 "params_before": before, "params_after": count_params(model),
                                 "token_coverage": covered / seen if seen else 1.0}


def texts_for(config: VocabConfig, data) -> list[str]:
    texts = []
    for source in config.sources:
        texts += list(data.unlabeled) if source == "unlabeled" else [ex.text for ex in data.split(source)]
    return texts


def run(config: VocabConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Trim the vocabulary to the recipe's texts; save the model, tokenizer and ``vocab_map.json``."""
    model, tokenizer = load_checked("vocab", config, artifact, ctx)
    texts = texts_for(config, ctx.data)
    if not texts:
        raise EdgeslimError(f"vocab: sources {config.sources} hold no text, so the vocabulary would be empty; add data")
    if read_vocab_map(artifact.path) is not None:
        raise EdgeslimError("vocab: the input model's vocabulary is already trimmed; keep one vocab stage")
    tokenizer, kept, summary = trim(model, tokenizer, texts, config, ctx.data.max_length)
    ctx.log(f"vocab: {summary['vocab_before']:,} -> {summary['vocab_after']:,} tokens; "
            f"params {summary['params_before']:,} -> {summary['params_after']:,}")
    # in-vocabulary text gives exactly the old outputs; recovery (against the teacher fed the old ids)
    # helps the student with text that now falls on [UNK]
    metrics = {**summary, **recover(model, config.recovery, ctx, tokenizer, kept)}
    save_torch(model, tokenizer, ctx.out_dir, kept)
    return Artifact(Path(ctx.out_dir), "torch", {"metrics": metrics})
