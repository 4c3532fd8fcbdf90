"""Stage ``lowrank``: replace Linear weights by two thinner Linears from a truncated SVD, where that
saves FLOPs.

``W (out x in) ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: a Linear ``in -> rank`` followed by a Linear
``rank -> out`` (two MatMuls in ONNX). It costs ``rank * (in + out)`` multiply-adds per token instead
of ``in * out``, so a layer is factorized only when that is at most ``1 - min_saving`` of the dense cost.
The rank of each layer comes from one of: a fixed ``rank``; the retained ``energy`` (fraction of the
squared singular values kept); or a ``budget`` (fraction of the targeted Linears' parameters, which for
a Linear is also its fraction of FLOPs per token) met with one energy threshold shared by all layers.

Saving: the factorized modules keep the original module names; the narrowing factor is stored under
``<name>.weight`` (out x rank) and the first factor under ``<name>.lowrank_in.weight``, and
``config.json`` records ``edgeslim_lowrank: {module name: rank}``. :func:`load_factorized` rebuilds
the same model (exact outputs); a plain ``AutoModel...from_pretrained`` refuses the folder loudly (a
size mismatch on ``<name>.weight``) instead of silently loading random weights.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.artifacts import Artifact
from edgeslim.compress import hf_fixups as fx
from edgeslim.compress.lowrank_config import LowRankConfig
from edgeslim.compress.projections import module_of
from edgeslim.compress.torch_artifacts import auto_class, count_params, read_vocab_map, recover, save_torch
from edgeslim.errors import EdgeslimError
from edgeslim.stage import StageContext

LOWRANK_KEY = "edgeslim_lowrank"


class LowRankLinear(nn.Module):
    """``x -> lowrank_in(x) -> weight, bias``: a Linear ``in -> out`` of rank ``rank``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lowrank_in = nn.Linear(in_features, rank, bias=False)
        self.weight = nn.Parameter(torch.empty(out_features, rank))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.lowrank_in(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """The rank-``rank`` truncated SVD of ``linear`` (the best rank-``rank`` approximation)."""
        u, s, vh = svd(linear)
        root = s[:rank].sqrt()
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        dtype = linear.weight.dtype
        with torch.no_grad():
            module.lowrank_in.weight.copy_((root[:, None] * vh[:rank]).to(dtype))
            module.weight.copy_((u[:, :rank] * root[None, :]).to(dtype))
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module


def as_linear(module: nn.Module) -> nn.Linear | None:
    """``module`` as an ``nn.Linear`` computing the same function, or ``None`` when it is not one.

    A Linear (subclasses such as Falcon's included) is itself; transformers' ``Conv1D`` (GPT-2: ``x @ W + b``
    with ``W`` in x out) becomes a Linear holding ``W`` transposed, so it is factorized like any Linear and
    replaced by a :class:`LowRankLinear` that computes the same thing.
    """
    if isinstance(module, nn.Linear):
        return module
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        nx, nf = module.weight.shape
        linear = nn.Linear(nx, nf, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        return linear
    return None


def svd(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of the weight, in float64 so ranks and energies do not depend on rounding."""
    return torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)


def dense_cost(linear: nn.Linear) -> int:
    return linear.in_features * linear.out_features


def factorized_cost(linear: nn.Linear, rank: int) -> int:
    return rank * (linear.in_features + linear.out_features)


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest rank whose squared singular values hold at least ``energy`` of the total."""
    share = torch.cumsum(singular.double() ** 2, 0) / (singular.double() ** 2).sum()
    return int(torch.searchsorted(share, torch.tensor(energy - 1e-12, dtype=share.dtype)).item()) + 1


def round_rank(rank: int, round_to: int, full: int) -> int:
    return min(full, int(math.ceil(rank / round_to) * round_to)) if round_to > 1 else rank


def target_linears(model: nn.Module, config: LowRankConfig) -> dict[str, nn.Linear]:
    """Qualified name -> Linear for every module the config targets."""
    wanted: set[int] = set()
    if config.targets:
        for block in fx.ffn_blocks(model):
            if "ffn" in config.targets:
                wanted.update(id(module_of(m)) for m in [*block.inputs, block.output])
        for block in fx.attention_blocks(model):
            if "attention_output" in config.targets:
                wanted.add(id(block.o))
            if "attention_qkv" in config.targets:
                wanted.update(id(module_of(m)) for m in (block.q, block.k, block.v) if m is not None)
    found = {}
    for name, module in model.named_modules():
        if name.endswith(".lowrank_in"):
            continue  # already the first factor of a LowRankLinear
        if id(module) in wanted or any(fnmatch.fnmatch(name, p) for p in config.modules):
            linear = as_linear(module)
            if linear is not None:
                found[name] = linear
    if config.modules and not any(any(fnmatch.fnmatch(n, p) for n in found) for p in config.modules):
        raise EdgeslimError(f"lowrank: modules {config.modules} match no Linear in the model; check the names")
    return found


def choose_ranks(linears: dict[str, nn.Linear], config: LowRankConfig) -> dict[str, dict[str, Any]]:
    """Per Linear: its rank, whether factorizing pays (``use``), and the energy that rank keeps
    (with ``budget``, also the shared ``threshold`` energy)."""
    spectra = {name: svd(linear)[1] for name, linear in linears.items()}
    if config.rank is not None:
        for name, s in spectra.items():
            if config.rank >= len(s):
                raise EdgeslimError(f"lowrank: rank {config.rank} is not smaller than {name} "
                                    f"({linears[name].out_features}x{linears[name].in_features}); use a rank below {len(s)}")
    if config.budget is not None:
        threshold = _energy_for_budget(linears, spectra, config)
        plans = _plans(linears, spectra, config, lambda s: rank_for_energy(s, threshold))
        for plan in plans.values():
            plan["threshold"] = threshold
        return plans
    if config.energy is not None:
        return _plans(linears, spectra, config, lambda s: rank_for_energy(s, config.energy))
    return _plans(linears, spectra, config, lambda s: config.rank)


def _plans(linears, spectra, config, rank_of) -> dict[str, dict[str, Any]]:
    plans = {}
    for name, linear in linears.items():
        s = spectra[name]
        rank = round_rank(min(rank_of(s), len(s)), config.round_to, len(s))
        pays = factorized_cost(linear, rank) <= (1 - config.min_saving) * dense_cost(linear)
        energy = float((s[:rank] ** 2).sum() / (s ** 2).sum())
        plans[name] = {"rank": rank, "use": bool(pays), "energy": round(energy, 6)}
    return plans


def _energy_for_budget(linears, spectra, config) -> float:
    """The highest shared energy threshold whose ranks keep total cost within ``budget``."""
    total = sum(dense_cost(l) for l in linears.values())

    def cost(energy: float) -> int:
        plans = _plans(linears, spectra, config, lambda s: rank_for_energy(s, energy))
        return sum(factorized_cost(linears[n], p["rank"]) if p["use"] else dense_cost(linears[n]) for n, p in plans.items())

    low, high = 0.0, 1.0
    if cost(1e-9) > config.budget * total:
        raise EdgeslimError(f"lowrank: budget {config.budget} is below what rank-1 factors cost; raise budget or lower min_saving")
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) <= config.budget * total else (low, mid)
    return low


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def factorize(model: nn.Module, config: LowRankConfig) -> dict[str, Any]:
    """Factorize the targeted Linears of ``model`` in place and record the ranks in its config."""
    before = count_params(model)
    linears = target_linears(model, config)
    if not linears:
        raise EdgeslimError("lowrank: no Linear layer matches targets/modules; check them against the model")
    plans = choose_ranks(linears, config)
    dense = factorized = 0
    for name, plan in plans.items():
        linear = linears[name]
        dense += dense_cost(linear)
        if plan["use"]:
            _set_module(model, name, LowRankLinear.from_linear(linear, plan["rank"]))
            factorized += factorized_cost(linear, plan["rank"])
        else:
            factorized += dense_cost(linear)
    ranks = {name: p["rank"] for name, p in plans.items() if p["use"]}
    record_ranks(model, ranks)
    threshold = next((p["threshold"] for p in plans.values() if "threshold" in p), None)
    return {"ranks": ranks, "energy_threshold": threshold, "skipped": sorted(n for n, p in plans.items() if not p["use"]),
            "energy": {n: p["energy"] for n, p in plans.items() if p["use"]},
            "target_macs_per_token_before": dense, "target_macs_per_token_after": factorized,
            "params_before": before, "params_after": count_params(model)}


def record_ranks(model: nn.Module, ranks: dict[str, int]) -> None:
    previous = dict(getattr(model.config, LOWRANK_KEY, None) or {})
    previous.update(ranks)
    setattr(model.config, LOWRANK_KEY, previous or None)


def apply_ranks(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give ``model`` empty :class:`LowRankLinear` modules where ``ranks`` says (before loading weights)."""
    prefix = getattr(model, "base_model_prefix", "")
    names = dict(model.named_modules())
    for name, rank in ranks.items():
        target = name if name in names else name.removeprefix(prefix + ".")
        linear = as_linear(names[target]) if target in names else None
        if linear is None:
            raise EdgeslimError(f"lowrank: config names module '{name}' that this model does not have as a Linear")
        _set_module(model, target, LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None))


_CLASSES: dict[type, type] = {}


def factorized_class(base: type) -> type:
    """A subclass of the HF model class ``base`` that builds the factorized modules its config names,
    so HF's own ``from_pretrained`` (tied weights, dtypes, safetensors) loads the folder."""
    if base not in _CLASSES:
        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            apply_ranks(self, getattr(config, LOWRANK_KEY, None) or {})

        _CLASSES[base] = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})
    return _CLASSES[base]


def is_factorized(path: Path) -> bool:
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(path), LOWRANK_KEY, None))


def load_factorized(path: Path, task: str = "text-classification", **kwargs):
    """Load any edgeslim torch artifact folder for ``task`` ("text-classification" or "causal-lm"),
    factorized or not; ``kwargs`` go to ``from_pretrained``. Returns the model in eval mode."""
    from transformers import AutoConfig

    auto = auto_class(task)
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, LOWRANK_KEY, None):
        return auto.from_pretrained(path, **kwargs).eval()
    base = auto._model_mapping[type(config)]
    return factorized_class(base).from_pretrained(path, **kwargs).eval()


def load_checked(stage: str, config, artifact: Artifact, ctx: StageContext):
    """A torch stage's input model and tokenizer, with the stage config checked against the real
    input model (``edgeslim check`` saw only the teacher's config; distill may have changed widths)."""
    from transformers import AutoTokenizer

    torch.manual_seed(ctx.seed)
    model = load_factorized(artifact.path, ctx.task)
    tokenizer = AutoTokenizer.from_pretrained(artifact.path)
    try:
        config.check_against(model.config, ctx.task)
    except ValueError as exc:
        raise EdgeslimError(f"{stage}: {exc}") from None
    return model, tokenizer


def run(config: LowRankConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Factorize the targeted Linears, optionally recover with KD, save a folder load_factorized reads."""
    model, tokenizer = load_checked("lowrank", config, artifact, ctx)
    summary = factorize(model, config)
    ctx.log(f"lowrank: {len(summary['ranks'])} Linears factorized, {len(summary['skipped'])} kept dense; "
            f"MACs/token {summary['target_macs_per_token_before']:,} -> {summary['target_macs_per_token_after']:,}")
    if not summary["ranks"]:
        ctx.log("lowrank: no targeted Linear saves FLOPs at these ranks (see min_saving); the model is unchanged")
    vocab_map = read_vocab_map(artifact.path)
    metrics = {**summary, **recover(model, config.recovery, ctx, tokenizer, vocab_map)}
    save_torch(model, tokenizer, ctx.out_dir, vocab_map)
    return Artifact(Path(ctx.out_dir), "torch", {"metrics": metrics})
