"""Heads removed together with hidden width, the same number in every layer: how the types whose
config derives the head size from hidden_size / num_attention_heads (MPNet, DeBERTa-v2, GPT-2, OPT,
GPT-NeoX, Falcon, and BERT's relatives when hidden width is pruned) lose heads and still reload."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from edgeslim.compress import hf_fixups as fx
from edgeslim.compress import hidden_width as hw
from edgeslim.compress.projections import in_dim
from edgeslim.compress.prune import prune_model
from edgeslim.compress.prune_config import PruneConfig
from edgeslim.families import heads_with_hidden_reason

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 64, "vocab_size": 300}
#: name -> (model_type, decoder, config overrides); every fused-qkv row order and shared head table
CASES = {
    "bert": ("bert", False, {}),
    "distilbert": ("distilbert", False, {"hidden_dim": 64}),
    "mpnet": ("mpnet", False, {}),
    "deberta-v2": ("deberta-v2", False, {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                         "share_att_key": False, "max_relative_positions": 16}),
    "gpt2": ("gpt2", True, {"n_inner": 64}),
    "opt": ("opt", True, {"ffn_dim": 64, "word_embed_proj_dim": 32}),
    "gpt_neox": ("gpt_neox", True, {}),
    "falcon-multi-query": ("falcon", True, {"new_decoder_architecture": False, "multi_query": True}),
    "falcon": ("falcon", True, {"new_decoder_architecture": False, "multi_query": False}),
}
IDS = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))


def build(name: str):
    model_type, decoder, extra = CASES[name]
    config = AutoConfig.for_model(model_type, **{**TINY, **extra})
    if not decoder:
        config.num_labels = 3
    torch.manual_seed(0)
    cls = AutoModelForCausalLM if decoder else AutoModelForSequenceClassification
    return cls, cls.from_config(config).eval()


def silence(model, drops: list[list[int]]) -> None:
    """Zero the output-projection columns of heads ``drops`` per layer: those heads then add nothing."""
    for block, drop in zip(fx.attention_blocks(model), drops):
        columns = torch.tensor([h * block.head_dim + j for h in drop for j in range(block.head_dim)])
        with torch.no_grad():
            block.o.weight.index_fill_(in_dim(block.o), columns, 0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_removing_silenced_heads_changes_nothing_and_removing_others_does(name):
    """The cut finds each head's rows in every layout (separate q/k/v, GPT-2's q|k|v blocks, NeoX's and
    Falcon's head-by-head rows, Falcon's shared K/V head, DeBERTa's position projections, MPNet's shared
    bias table): removing heads that add nothing leaves the outputs exactly as they were, and removing
    other heads does not."""
    shared = name == "mpnet"  # one bias table for every layer: the same heads everywhere
    drops = [[1, 3]] * 4 if shared else [[1, 3], [0, 2], [2, 3], [0, 1]]
    others = [[0, 2]] * 4 if shared else [[0, 2], [1, 3], [0, 1], [2, 3]]
    for removed, unchanged in ((drops, True), (others, False)):
        _, model = build(name)
        silence(model, drops)
        with torch.no_grad():
            before = model(input_ids=IDS).logits
            hw.remove_heads_evenly(model, removed)
            after = model(input_ids=IDS).logits
        assert [b.units for b in fx.attention_blocks(model)] == [2, 2, 2, 2]
        if unchanged:
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        else:
            assert (after - before).abs().max() > 1e-4 * before.abs().max()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("setting, heads, hidden", [({"heads": 0.5, "ffn": 0.25}, 2, 16), ({"hidden": 0.25}, 3, 24)])
def test_prune_heads_or_hidden_cuts_both_and_the_model_reloads_exactly(tmp_path, name, setting, heads, hidden):
    """``hidden`` takes heads along; so does ``heads`` take the hidden width along (head size kept) for
    the types whose config cannot say fewer heads otherwise (BERT and DistilBERT record per-layer
    ``pruned_heads`` instead); the saved folder reloads with ``from_pretrained`` into the same model,
    outputs identical."""
    cls, model = build(name)
    summary = prune_model(model, PruneConfig(**setting))
    assert summary["heads_per_layer"] == [heads] * 4
    if "heads" in setting and heads_with_hidden_reason(model.config.model_type) is None:
        assert model.config.hidden_size == 32 and model.config.pruned_heads
    else:
        assert model.config.hidden_size == hidden and model.config.num_attention_heads == heads
        assert not model.config.pruned_heads
    with torch.no_grad():
        out = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, out, rtol=0, atol=0)


@pytest.mark.parametrize("overrides, message", [
    ({"model_type": "falcon", "new_decoder_architecture": True}, "new decoder architecture"),
    ({"model_type": "gpt2", "layers": {0: {"heads": 0.5}}}, "not per-layer heads"),
    ({"model_type": "opt", "scope": "global"}, "use scope: uniform"),
    ({"model_type": "bert", "hidden": 0.25}, "leave heads at 0"),
])
def test_what_cannot_be_cut_evenly_is_refused_in_one_line(overrides, message):
    model_type = overrides.pop("model_type")
    config_extra = {k: overrides.pop(k) for k in list(overrides) if k == "new_decoder_architecture"}
    model_config = AutoConfig.for_model(model_type, **TINY, **config_extra)
    prune = PruneConfig(heads=0.5, **overrides)
    with pytest.raises(ValueError, match=message) as err:
        prune.check_against(model_config, "")
    assert "\n" not in str(err.value)


def test_a_cut_the_config_cannot_describe_is_caught_when_the_stage_saves(tmp_path):
    """OPT with an embedding projection (word_embed_proj_dim 16 < hidden 32): half the heads take the
    hidden width down to 16, where transformers builds no projections, so the saved model reloads as
    another model. The prune stage's reload check says so in one line; a cut that reloads passes it."""
    from edgeslim.compress.torch_artifacts import check_reloads
    from edgeslim.errors import EdgeslimError

    config = AutoConfig.for_model("opt", **{**TINY, "ffn_dim": 64, "word_embed_proj_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prune_model(model, PruneConfig(heads=0.5))
    model.save_pretrained(tmp_path / "bad")
    with pytest.raises(EdgeslimError, match="does not reload as itself") as err:
        check_reloads(model, tmp_path / "bad", "causal-lm", "prune")
    assert "\n" not in str(err.value)
    _, fine = build("opt")
    prune_model(fine, PruneConfig(heads=0.5))
    fine.save_pretrained(tmp_path / "fine")
    check_reloads(fine, tmp_path / "fine", "causal-lm", "prune")
