"""Architectures the tests did not name before, where edgeslim crashed instead of working: each a tiny
random config through the part that failed (issue "Any Hugging Face model")."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from _llm_models import SENTENCES, tiny_llama_folder
from edgeslim.compress.lowrank import factorize, target_linears
from edgeslim.compress.lowrank_config import LowRankConfig


def test_a_factorized_causal_lm_is_scored_by_the_report(tmp_path):
    """lowrank on a decoder, then the report's scoring: it loads the folder with load_factorized
    (plain from_pretrained fails on the factor shapes) and scores it like the dense model."""
    from transformers import AutoTokenizer

    from edgeslim.report.evaluate import score_examples
    from edgeslim.data import Example

    folder = tiny_llama_folder(tmp_path / "dense")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    factorize(model, LowRankConfig(rank=8, targets=["ffn"]))
    model.save_pretrained(tmp_path / "low")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(tmp_path / "low")
    examples = [Example(text) for text in SENTENCES[:4]]
    dense = score_examples(folder, "torch", tokenizer, examples, "causal-lm", 64)
    low = score_examples(tmp_path / "low", "torch", tokenizer, examples, "causal-lm", 64)
    assert np.isfinite(low["perplexity"]) and low["perplexity"] != dense["perplexity"]


def test_an_encoder_without_token_type_ids_is_scored(tmp_path):
    """MPNet's forward takes no token_type_ids; the tokenizer of a BERT-style teacher returns them."""
    from edgeslim.report.evaluate import torch_logits
    from _compress_fixtures import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    config = AutoConfig.for_model("mpnet", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=3, max_position_embeddings=66)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "mpnet")
    assert "token_type_ids" in tokenizer("a text")
    logits = torch_logits(tmp_path / "mpnet", tokenizer, ["a good day", "a bad one"], 32)
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_lowrank_finds_linear_subclasses_by_name():
    """Falcon's projections are FalconLinear (an nn.Linear subclass): named modules must match."""
    config = AutoConfig.for_model("falcon", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  new_decoder_architecture=False, multi_query=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    projection = model.transformer.h[0].mlp.dense_h_to_4h
    assert type(projection) is not torch.nn.Linear and isinstance(projection, torch.nn.Linear)
    found = target_linears(model, LowRankConfig(rank=4, targets=[], modules=["*.mlp.dense_h_to_4h"]))
    assert sorted(found) == ["transformer.h.0.mlp.dense_h_to_4h", "transformer.h.1.mlp.dense_h_to_4h"]
    with torch.no_grad():  # make the projections truly rank 4, so a rank-4 factorization is exact
        for block in model.transformer.h:
            weight = block.mlp.dense_h_to_4h.weight
            weight.copy_(torch.randn(weight.shape[0], 4) @ torch.randn(4, weight.shape[1]) / 4)
    ids = torch.tensor([[1, 5, 9, 13]])
    before = model(input_ids=ids).logits
    factorize(model, LowRankConfig(rank=4, targets=[], modules=["*.mlp.dense_h_to_4h"]))
    assert type(model.transformer.h[0].mlp.dense_h_to_4h).__name__ == "LowRankLinear"
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)


def test_following_lowrank_advice_for_an_unknown_family_works():
    """MobileBERT has no layout in the families table: the check says to list modules, and doing just
    that passes."""
    import pytest

    from edgeslim.model_shape import ModelShape

    config = ModelShape.from_dict({"model_type": "mobilebert", "num_hidden_layers": 2, "hidden_size": 32,
                                   "num_attention_heads": 4, "intermediate_size": 64})
    with pytest.raises(ValueError, match="drop targets and list Linear names"):
        LowRankConfig(rank=4).check_against(config, "text-classification")
    advised = LowRankConfig(rank=4, modules=["*.intermediate.dense"])
    assert advised.targets == []
    advised.check_against(config, "text-classification")
    assert LowRankConfig(rank=4, targets=["ffn"], modules=["*.x"]).targets == ["ffn"]  # both, when both are given


def test_albert_layer_selection_is_refused_at_check_time(tmp_path, capsys):
    """ALBERT shares its layers' weights: choosing layers cannot work, and check says so at once
    (it used to pass check and fail 84 s into the run)."""
    import json

    from conftest import tiny_recipe_dict, write_recipe
    from edgeslim.cli import main

    folder = tmp_path / "albert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "albert", "num_hidden_layers": 4, "hidden_size": 32,
                                                    "num_attention_heads": 4, "intermediate_size": 64}))
    recipe = tiny_recipe_dict()
    recipe["teacher"] = {"source": str(folder)}
    assert main(["check", str(write_recipe(tmp_path, recipe))]) == 2
    assert "shares one set of weights across its 4 layers" in capsys.readouterr().err


def test_the_families_table_is_consistent_with_the_libraries():
    """Every type is one transformers knows, every fusion type one onnxruntime's optimizer has, every
    structure one hf_fixups can cut; and check reads every type's config.json without transformers."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES
    from transformers import CONFIG_MAPPING

    from edgeslim.compress.hf_fixups import LAYOUTS
    from edgeslim.families import FAMILIES
    from edgeslim.model_shape import READABLE_TYPES

    for model_type, family in FAMILIES.items():
        assert model_type in CONFIG_MAPPING, model_type
        assert family.fusion is None or family.fusion in MODEL_TYPES, (model_type, family.fusion)
        assert family.structure in (None, "llama", *LAYOUTS), model_type
    assert READABLE_TYPES == set(FAMILIES)


def test_albert_exports_one_copy_of_its_shared_weights(tmp_path):
    """ALBERT's layers share weights; its ONNX must not hold a copy per layer (the bert fusion rules
    made it 1.9x the torch model)."""
    from edgeslim.export.export_config import ExportConfig
    from edgeslim.export.onnx import export_model
    from _compress_fixtures import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    config = AutoConfig.for_model("albert", vocab_size=len(tokenizer), embedding_size=32, hidden_size=64,
                                  num_hidden_layers=6, num_attention_heads=4, intermediate_size=128, num_labels=3,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path / "albert")
    tokenizer.save_pretrained(tmp_path / "albert")
    torch_bytes = sum(p.numel() * 4 for p in model.parameters())
    result = export_model(tmp_path / "albert", tmp_path / "onnx", "text-classification", ExportConfig())
    import onnx

    weights = sum(len(t.raw_data) for t in onnx.load(str(result.onnx_path)).graph.initializer)
    assert weights <= 1.02 * torch_bytes, (weights, torch_bytes)  # (was 4.6x: a copy per layer)
    assert result.slim["duplicates_removed"]["removed"] > 0


def test_a_sparse_config_json_falls_back_to_transformers_defaults(tmp_path):
    """A config.json that leaves sizes to the class defaults is read through transformers, so the
    checks see the same numbers a run will (not an AttributeError)."""
    import json

    from edgeslim.model_shape import ModelShape, fast_shape
    from edgeslim.teacher import TeacherConfig, teacher_shape

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4}))
    assert fast_shape(tmp_path) is None
    shape = teacher_shape(TeacherConfig(source=str(tmp_path)), None)
    assert not isinstance(shape, ModelShape) and shape.num_hidden_layers == 12  # BertConfig's default


def test_lowrank_factorizes_gpt2_conv1d_projections_and_reloads(tmp_path):
    """GPT-2's projections are transformers' Conv1D (x @ W + b), not Linear: they are factorized as
    the Linear computing the same thing, and load_factorized rebuilds them."""
    from edgeslim.compress.lowrank import load_factorized

    config = AutoConfig.for_model("gpt2", vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_inner=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # rank-4 weights, so a rank-4 factorization is exact
        for block in model.transformer.h:
            weight = block.mlp.c_fc.weight
            weight.copy_(torch.randn(weight.shape[0], 4) @ torch.randn(4, weight.shape[1]) / 4)
    ids = torch.tensor([[1, 5, 9, 13]])
    before = model(input_ids=ids).logits
    summary = factorize(model, LowRankConfig(rank=4, targets=[], modules=["*.mlp.c_fc"]))
    assert sorted(summary["ranks"]) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == "LowRankLinear"
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)
    model.save_pretrained(tmp_path)
    reloaded = load_factorized(tmp_path, "causal-lm")
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_built_teacher_gets_the_special_token_ids_of_its_trained_tokenizer(tmp_path):
    """ModernBERT's config defaults to pad id 50283; built with a 300-token trained vocabulary it
    crashed (exit 3, "Padding_idx must be within num_embeddings"). Ids the recipe gives are kept."""
    from edgeslim.teacher import fit_special_tokens, train_wordpiece

    tokenizer = train_wordpiece(["a small text", "another small text"], 300, tmp_path)
    config = AutoConfig.for_model("modernbert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=3, bos_token_id=3)
    assert config.pad_token_id >= config.vocab_size  # the architecture's default, outside this vocabulary
    fit_special_tokens(config, tokenizer, given={"model_type", "bos_token_id"})
    assert (config.pad_token_id, config.cls_token_id, config.sep_token_id) == (
        tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert config.bos_token_id == 3
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert model(input_ids=torch.tensor([[2, 7, 9, 3]])).logits.shape == (1, 3)
