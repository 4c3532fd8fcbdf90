"""The ``distill`` stage end to end on tiny models: KD beats hard labels, the teacher cache serves the
same outputs as the live teacher and is reused, a killed run resumes to the same weights, causal LMs
distil with top-k token KD and teacher-generated data, and bad recipe values fail at check time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, LlamaConfig, LlamaForCausalLM

from edgeslim.artifacts import Artifact
from edgeslim.compress.distill import run as run_distill
from edgeslim.compress.distill_config import DistillConfig
from edgeslim.compress.losses import soft_kl
from edgeslim.compress.teacher_cache import TeacherNeeds, build_cache, generate_rows, GenerationSpec, teacher_forward
from edgeslim.compress.trainer import (
    TrainConfig,
    collate,
    evaluate,
    examples_from_split,
    finetune_classifier,
    kd_recover,
    train,
)
from edgeslim.data import DataBundle, Example
from edgeslim.errors import EdgeslimError
from edgeslim.stage import StageContext

TESTS = Path(__file__).resolve().parent
POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "movie", "is", "was", "very", "plot", "actor", "and", "it", "story"]
WORDS = POS + NEG + FILLER + ["not"]


def make_tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS))
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


def sentiment_example(rng: random.Random) -> Example:
    """A learnable task with an interaction: 'not' flips the next sentiment word; label = sign of the sum."""
    while True:
        ws = [rng.choice(WORDS + ["not"]) for _ in range(rng.randint(5, 12))]
        score = sum((-1 if i and ws[i - 1] == "not" else 1) * ((w in POS) - (w in NEG)) for i, w in enumerate(ws))
        if score:
            return Example(" ".join(ws), int(score > 0))


def make_data(n_train: int, n_eval: int = 200, seed: int = 0) -> DataBundle:
    rng = random.Random(seed)
    eval_split = [sentiment_example(rng) for _ in range(n_eval)]
    train_split = [sentiment_example(rng) for _ in range(n_train)]
    return DataBundle(train_split, eval_split, ["negative", "positive"], 16,
                      unlabeled=[sentiment_example(rng).text for _ in range(64)])


def bert_teacher(vocab_size: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=2,
                                                    max_position_embeddings=32))


class Recipe:
    def __init__(self, task: str):
        self.task = task


def stage_context(parent: Path, data: DataBundle, teacher_dir: Path, task: str = "text-classification",
                  quiet: bool = True) -> StageContext:
    """A context like the pipeline's: a fresh temporary output folder under ``parent/stages``."""
    out = parent / "stages" / f".02-distill.tmp-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    return StageContext(out_dir=out, recipe=Recipe(task), data=data, quiet=quiet,
                        teacher=Artifact(teacher_dir, "torch", {"key": "teacher-" + teacher_dir.name}))


def distill(parent: Path, bundle: DataBundle, teacher_dir: Path, task: str = "text-classification", **config):
    ctx = stage_context(parent, bundle, teacher_dir, task)
    return run_distill(DistillConfig(**config), ctx.teacher, ctx)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory) -> tuple[Path, DataBundle]:
    """A tiny 4-layer BERT fine-tuned (with ``finetune_classifier``) on 600 examples of the task."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = make_tokenizer(folder)
    teacher = bert_teacher(len(tokenizer))
    data = make_data(600)
    metrics = finetune_classifier(teacher, data, tokenizer, epochs=10, lr=2e-3, batch_size=32, seed=0)
    assert metrics["eval_accuracy"] > 0.8  # the teacher learned the task, 'not' included
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, data


def few_labels(data: DataBundle, n: int) -> DataBundle:
    return DataBundle(data.train[:n], data.eval, data.labels, data.max_length, data.unlabeled)


# ----------------------------------------------------------------------------------- KD helps


def test_logit_and_hidden_kd_beats_hard_labels(trained_teacher, tmp_path):
    """Same 1-block student, same 48 labeled examples, same steps: KD from the teacher wins on eval."""
    teacher_dir, data = trained_teacher
    small = few_labels(data, 48)
    common = dict(layers=[3], epochs=15, lr=3e-3, batch_size=16, checkpoint_every=0, select_best=False)
    hard = distill(tmp_path / "hard", small, teacher_dir, alpha=0.0, losses={"logits": {}}, **common)
    kd = distill(tmp_path / "kd", small, teacher_dir, alpha=0.9, temperature=4.0,
                 losses={"logits": {}, "hidden": {"kind": "mse"}}, **common)
    hard_acc, kd_acc = hard.manifest["metrics"]["eval_accuracy"], kd.manifest["metrics"]["eval_accuracy"]
    print(f"hard-label student {hard_acc:.3f}  KD student {kd_acc:.3f}")
    assert kd_acc > hard_acc + 0.02
    # the artifact is a student that reloads with the reported accuracy
    student = BertForSequenceClassification.from_pretrained(kd.path)
    assert student.config.num_hidden_layers == 1
    tokenizer = BertTokenizerFast.from_pretrained(kd.path)
    reloaded = evaluate(student, examples_from_split(small, tokenizer, "eval"))
    assert reloaded["eval_accuracy"] == pytest.approx(kd_acc)


# -------------------------------------------------------------------------------- teacher cache


def test_cache_serves_what_the_live_teacher_computes(trained_teacher, tmp_path):
    teacher_dir, data = trained_teacher
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    rows = examples_from_split(few_labels(data, 20), tokenizer, "train")
    needs = TeacherNeeds(hidden=(2, 4), attention=(1,))
    cache = build_cache(teacher, rows, needs, tmp_path / "cache", batch_size=7)  # other padding than below
    batch = collate([rows[i] for i in (3, 0, 11, 19)])
    live = teacher_forward(teacher, batch, needs)
    cached = cache.lookup(batch)
    assert set(cached) == set(live) == {"logits", "hidden.2", "hidden.4", "attn.1"}
    mask = batch["attention_mask"].bool()
    half = dict(atol=2e-3, rtol=2e-3)  # hidden states and attention maps are stored in float16
    for name in live:
        assert cached[name].dtype == torch.float32
        if name == "logits":
            torch.testing.assert_close(cached[name], live[name], atol=1e-5, rtol=1e-5)
        elif name.startswith("hidden."):
            torch.testing.assert_close(cached[name][mask], live[name][mask], **half)
        else:  # attention rows of real query tokens
            torch.testing.assert_close(cached[name].transpose(1, 2)[mask], live[name].transpose(1, 2)[mask], **half)


def test_causal_lm_cache_keeps_only_the_top_k(llama_teacher, tmp_path):
    teacher_dir, data = llama_teacher
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    rows = examples_from_split(data, tokenizer, "train", model=teacher)
    needs = TeacherNeeds(top_k=5, token_level=True)
    cache = build_cache(teacher, rows, needs, tmp_path / "cache", batch_size=5)
    batch = collate(rows[:6])
    live, cached = teacher_forward(teacher, batch, needs), cache.lookup(batch)
    assert set(cached) == {"topk_values", "topk_indices", "topk_lse"}
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(cached["topk_values"][mask], live["topk_values"][mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(cached["topk_indices"][mask], live["topk_indices"][mask])
    full_lse = torch.logsumexp(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    torch.testing.assert_close(cached["topk_lse"][mask], full_lse[mask].detach(), atol=1e-5, rtol=1e-5)
    tokens = sum(len(r["input_ids"]) for r in rows)
    stored = (tmp_path / "cache" / "teacher_outputs.safetensors").stat().st_size
    # k values + ids + one normaliser per token, not the vocabulary
    assert stored < tokens * (5 * 8 + 4) + 4096 < tokens * len(tokenizer) * 4


def test_any_hf_model_as_the_student(trained_teacher, tmp_path):
    teacher_dir, data = trained_teacher
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    torch.manual_seed(3)
    other = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2,
                                                     max_position_embeddings=32))
    other.save_pretrained(tmp_path / "student")
    art = distill(tmp_path, few_labels(data, 16), teacher_dir, student=str(tmp_path / "student"), max_steps=2,
                  batch_size=8, checkpoint_every=0, losses={"logits": {}, "hidden": {}})  # 16 -> 32 projection
    student = BertForSequenceClassification.from_pretrained(art.path)
    teacher_config = BertConfig.from_pretrained(teacher_dir)
    assert student.config.hidden_size == 16 and student.config.id2label == teacher_config.id2label
    assert not torch.equal(student.classifier.weight, other.classifier.weight)  # it trained
    with pytest.raises(ValueError, match="not both"):
        DistillConfig(student="x", hidden_size=16)


def test_rerun_reads_the_teacher_cache(trained_teacher, tmp_path, capsys):
    teacher_dir, data = trained_teacher
    small = few_labels(data, 32)
    for _ in range(2):
        ctx = stage_context(tmp_path, small, teacher_dir, quiet=False)
        run_distill(DistillConfig(max_steps=2, batch_size=16, checkpoint_every=0), ctx.teacher, ctx)
    log = capsys.readouterr().out
    assert log.count("computing teacher outputs") == 1 and log.count("teacher outputs from cache") == 1


def test_the_teacher_runs_only_on_the_rows_max_steps_reaches(trained_teacher, tmp_path, capsys):
    """2 steps of 4 read 8 examples: the teacher cache holds those 8 (a seeded choice, the same on a
    rerun), not all 64 training rows; without a step limit every row is used."""
    teacher_dir, data = trained_teacher
    small = few_labels(data, 64)
    ctx = stage_context(tmp_path, small, teacher_dir, quiet=False)
    short = run_distill(DistillConfig(max_steps=2, batch_size=4, checkpoint_every=0), ctx.teacher, ctx)
    assert short.manifest["train_examples"] == 64 and short.manifest["train_examples_read"] == 8
    assert short.manifest["metrics"]["train_steps"] == 2
    assert "2 steps of 4 read 8 of the 64 training examples" in capsys.readouterr().out
    ctx = stage_context(tmp_path / "again", small, teacher_dir, quiet=False)
    again = run_distill(DistillConfig(max_steps=2, batch_size=4, checkpoint_every=0), ctx.teacher, ctx)
    assert again.manifest["metrics"] == short.manifest["metrics"]
    ctx = stage_context(tmp_path / "epochs", small, teacher_dir)
    full = run_distill(DistillConfig(epochs=1, batch_size=16, checkpoint_every=0), ctx.teacher, ctx)
    assert full.manifest["train_examples"] == full.manifest["train_examples_read"] == 64


# ------------------------------------------------------------------------------ kill and resume

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
import edgeslim.compress.trainer as trainer
from test_distill import distill, make_data, few_labels

_collate = trainer.collate
def slow_collate(*args, **kwargs):  # ~0.1 s per batch, so the kill lands mid-run on any machine
    time.sleep(0.1)
    return _collate(*args, **kwargs)
trainer.collate = slow_collate
distill(Path({parent!r}), few_labels(make_data(600), 64), Path({teacher!r}), **{config!r})
"""


def test_killed_run_resumes_to_the_same_weights(trained_teacher, tmp_path):
    teacher_dir, _ = trained_teacher
    data = few_labels(make_data(600), 64)
    config = dict(layers=[1, 3], max_steps=24, batch_size=8, lr=2e-3, checkpoint_every=4, eval_every=4,
                  losses={"logits": {}, "hidden": {}})
    killed = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS), parent=str(killed), teacher=str(teacher_dir), config=config))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "TQDM_DISABLE": "1"})
    state = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        found = list(killed.glob("stages/.distill/runs/*/last/loop_state.json"))
        try:  # the trainer replaces its last checkpoint folder as a whole: it can vanish between glob and read
            state = json.loads(found[0].read_text()) if found else state
        except (FileNotFoundError, ValueError):
            continue
        if state is not None and state["step"] >= 8:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert state is not None and 8 <= state["step"] < 24, child.stderr.read().decode()[-2000:]
    assert not list(killed.glob("stages/*/model.safetensors"))  # no finished artifact

    resumed = distill(killed, data, teacher_dir, **config)
    assert resumed.manifest["resumed_from_step"] >= 8
    straight = distill(tmp_path / "straight", data, teacher_dir, **config)
    assert straight.manifest["resumed_from_step"] is None
    from safetensors.torch import load_file

    a, b = load_file(resumed.path / "model.safetensors"), load_file(straight.path / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.manifest["metrics"] == straight.manifest["metrics"]
    assert not (killed / "stages" / ".distill" / "runs").exists() or not any((killed / "stages/.distill/runs").iterdir())


DDP_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
from safetensors.torch import load_file
from edgeslim.compress.train_state import process_state
from test_distill import distill, make_data, few_labels
state = process_state()
art = distill(Path({parent!r}), few_labels(make_data(200), 48), Path({teacher!r}), layers=[1, 3], max_steps=6,
              batch_size=16, lr=2e-3, checkpoint_every=3, losses={{"logits": {{}}, "hidden": {{}}}})
weights = load_file(art.path / "model.safetensors")
Path({parent!r}, f"rank{{state.process_index}}.json").write_text(json.dumps({{
    "rank": state.process_index, "world": state.num_processes,
    "checksum": float(sum(v.double().sum() for v in weights.values()))}}))
"""


@pytest.mark.slow
def test_two_processes_train_data_parallel(trained_teacher, tmp_path):
    """``torchrun`` with two CPU processes (what ``accelerate launch`` does on GPUs): one gloo group,
    rank 0 fills the teacher cache, both ranks checkpoint together and end with the same weights."""
    teacher_dir, _ = trained_teacher
    script = tmp_path / "ddp_child.py"
    script.write_text(DDP_CHILD.format(tests=str(TESTS), parent=str(tmp_path / "run"), teacher=str(teacher_dir)))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / "run" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["checksum"] == results[1]["checksum"]
    assert len(list((tmp_path / "run" / "stages" / ".distill" / "teacher").iterdir())) == 1  # one cache, by rank 0


# --------------------------------------------------------------- eval, best, early stopping


@pytest.mark.parametrize("on_disk", [True, False])
def test_early_stopping_keeps_the_best_checkpoint(trained_teacher, tmp_path, on_disk):
    teacher_dir, data = trained_teacher
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    torch.manual_seed(0)
    model = bert_teacher(len(tokenizer))
    rows = examples_from_split(few_labels(data, 32), tokenizer, "train")
    eval_rows = examples_from_split(few_labels(data, 32), tokenizer, "eval")[:40]

    def ce(m, batch, fraction):
        out = m.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, {"ce": float(out.loss.detach())}

    cfg = TrainConfig(max_steps=60, lr=5e-2, batch_size=8, eval_every=1, early_stopping_patience=2,
                      checkpoint_dir=tmp_path / "ckpt" if on_disk else None, select_best=True)
    result = train(model, rows, ce, cfg, eval_rows=eval_rows)
    assert result.stopped_early and result.steps < 60
    best = max(h["eval_accuracy"] for h in result.history)
    assert result.best_step < result.steps
    assert result.metrics["eval_accuracy"] == pytest.approx(best)
    assert evaluate(model, eval_rows)["eval_accuracy"] == pytest.approx(best)  # best weights restored, not the last
    assert [h["step"] for h in result.history] == list(range(1, result.steps + 1))


# -------------------------------------------------------------------------- helpers for stages


def test_step_counts():
    from edgeslim.compress.trainer import total_steps

    assert total_steps(100, TrainConfig(epochs=2, batch_size=16)) == 14  # 7 batches per epoch
    assert total_steps(100, TrainConfig(epochs=0.5, batch_size=16)) == 4  # fractional epochs round up
    assert total_steps(100, TrainConfig(epochs=3, max_steps=5, batch_size=16)) == 5


def test_kd_recover_brings_a_damaged_student_back(trained_teacher):
    teacher_dir, data = trained_teacher
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    student = BertForSequenceClassification.from_pretrained(teacher_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.bert.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    small = few_labels(data, 96)
    eval_rows = examples_from_split(small, tokenizer, "eval")
    batch = collate(eval_rows)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def gap():
        with torch.no_grad():
            return float(soft_kl(student.eval()(**inputs).logits, teacher(**inputs).logits, 1.0))

    before = gap()
    metrics = kd_recover(student, teacher, small, tokenizer, steps=12, lr=2e-3, batch_size=16, temperature=2.0, seed=0)
    assert set(metrics) == {"eval_accuracy", "kd_loss", "train_processes"}
    assert gap() < 0.5 * before


# -------------------------------------------------------------------------------- causal LM


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory) -> tuple[Path, DataBundle]:
    folder = tmp_path_factory.mktemp("llama")
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=64, pad_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = random.Random(1)
    texts = [Example(sentiment_example(rng).text) for _ in range(40)]
    return folder, DataBundle(texts[:32], texts[32:], [], 16)


def test_kd_recover_on_a_causal_lm_uses_token_kl(llama_teacher):
    from edgeslim.compress.losses import token_divergence
    from edgeslim.compress.students import select_layers

    teacher_dir, data = llama_teacher
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    student = select_layers(teacher, [0, 3])
    torch.manual_seed(2)
    with torch.no_grad():  # damage the student so there is something to recover
        for p in student.model.layers.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = collate(examples_from_split(data, tokenizer, "eval", model=teacher))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def gap():
        with torch.no_grad():
            return float(token_divergence(student.eval()(**inputs).logits, teacher(**inputs).logits, inputs["attention_mask"]))

    before = gap()
    metrics = kd_recover(student, teacher, data, tokenizer, steps=8, lr=2e-3, batch_size=8, temperature=1.0, seed=0)
    assert set(metrics) == {"eval_loss", "eval_perplexity", "kd_loss", "train_processes"}
    assert gap() < 0.7 * before


@pytest.mark.parametrize("kind,top_k", [("forward_kl", None), ("reverse_kl", 5), ("jsd", 5)])
def test_causal_lm_token_kd(llama_teacher, tmp_path, kind, top_k):
    teacher_dir, data = llama_teacher
    art = distill(tmp_path, data, teacher_dir, task="causal-lm", layers={"every": 2}, max_steps=6, batch_size=8,
                  lr=5e-3, eval_every=3, checkpoint_every=0, losses={"tokens": {"kind": kind, "top_k": top_k}})
    metrics = art.manifest["metrics"]
    assert metrics["student_layers"] == 2 and metrics["eval_perplexity"] > 1
    history = art.manifest["history"]
    assert history[-1]["train_tokens"] < history[0]["train_tokens"] * 1.5  # finite, training ran
    student = LlamaForCausalLM.from_pretrained(art.path)
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1]


def test_teacher_generated_data(llama_teacher, tmp_path):
    teacher_dir, data = llama_teacher
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    spec = GenerationSpec(max_new_tokens=5, prompt_tokens=4, seed=0)
    prompts = [ex.text for ex in data.train[:3]]
    rows = generate_rows(teacher, tokenizer, prompts, spec, tmp_path, "t")
    assert len(rows) == 3
    for row, prompt in zip(rows, prompts):
        prompt_ids = tokenizer(prompt, truncation=True, max_length=4)["input_ids"]
        assert row["input_ids"][: len(prompt_ids)].tolist() == prompt_ids
        assert (row["labels"][: len(prompt_ids)] == -100).all()
        assert (row["labels"][len(prompt_ids):] == row["input_ids"][len(prompt_ids):]).all()
    again = generate_rows(teacher, tokenizer, prompts, spec, tmp_path, "t")  # from the cache, same text
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows, again))
    art = distill(tmp_path / "run", data, teacher_dir, task="causal-lm", data="generated", max_steps=3,
                  batch_size=4, checkpoint_every=0, generation={"max_new_tokens": 4, "num_prompts": 8},
                  losses={"tokens": {"top_k": 4}})
    assert "eval_perplexity" in art.manifest["metrics"]


# ------------------------------------------------------------- every family, every loss, one run


def _save_tiny(folder: Path, family: str):
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                              RobertaConfig, RobertaForSequenceClassification)

    tokenizer = make_tokenizer(folder)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    model = {
        "bert": lambda: bert_teacher(vocab),
        "distilbert": lambda: DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=4, n_heads=4, hidden_dim=64, num_labels=2)),
        "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
            num_labels=2, max_position_embeddings=40, pad_token_id=1)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=64)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4,
                                                      num_attention_heads=4, num_key_value_heads=2,
                                                      intermediate_size=64, max_position_embeddings=64)),
    }[family]()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


EVERY_LOSS = [
    ("bert", "text-classification", dict(
        hidden_size=16, num_attention_heads=2, intermediate_size=32,  # narrower: hidden loss needs a projection
        temperature={"kind": "linear", "start": 4, "end": 1}, alpha={"kind": "two-phase", "start": 0.9, "end": 0.3},
        losses={"logits": {}, "hidden": {"kind": "cosine"}, "attention": {"kind": "mse"},
                "relation": {"kind": "similarity"}})),
    ("distilbert", "text-classification", dict(
        losses={"logits": {}, "hidden": {"mapping": {0: 0, 1: 3}}, "attention": {"kind": "kl"},
                "relation": {"kind": "angle"}})),
    ("roberta", "text-classification", dict(
        data="labeled+unlabeled", losses={"logits": {}, "relation": {"kind": "distance", "pooling": "mean"}})),
    ("gpt2", "causal-lm", dict(
        losses={"tokens": {"kind": "jsd", "beta": 0.3, "top_k": 8}, "hidden": {}, "attention": {}})),
    ("llama", "causal-lm", dict(
        hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
        losses={"tokens": {"kind": "reverse_kl"}, "hidden": {"kind": "mse"}})),
]


@pytest.mark.parametrize("family,task,config", EVERY_LOSS, ids=[f for f, _, _ in EVERY_LOSS])
def test_every_family_with_its_losses(tmp_path, family, task, config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    teacher_dir = tmp_path / "teacher"
    _save_tiny(teacher_dir, family)
    data = make_data(24, n_eval=8)
    if task == "causal-lm":
        data = DataBundle([Example(e.text) for e in data.train], [Example(e.text) for e in data.eval], [], 16)
    art = distill(tmp_path, data, teacher_dir, task=task, max_steps=2, batch_size=8, eval_every=2,
                  checkpoint_every=0, **config)
    parts = {k.removeprefix("train_") for k in art.manifest["history"][-1] if k.startswith("train_")}
    expected = set(config["losses"]) - ({"logits"} if task == "causal-lm" else set())
    if task == "causal-lm":
        expected |= {"tokens"}
    assert parts == expected
    assert all(torch.isfinite(torch.tensor(v)) for v in art.manifest["history"][-1].values())
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    student = auto.from_pretrained(art.path)
    assert student.config.num_hidden_layers == 2
    assert student.config.hidden_size == config.get("hidden_size", 32)
    assert art.manifest["train_examples"] == (24 + 64 if config.get("data") == "labeled+unlabeled" else 24)


def test_unlabeled_text_is_distilled_with_soft_labels_only(trained_teacher, tmp_path):
    teacher_dir, data = trained_teacher
    small = few_labels(data, 16)
    art = distill(tmp_path, small, teacher_dir, data="unlabeled", alpha=0.2, max_steps=3, batch_size=8,
                  eval_every=3, checkpoint_every=0)
    assert art.manifest["train_examples"] == len(small.unlabeled)
    # no labels: the loss is the soft term alone, whatever alpha says
    tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    from edgeslim.compress.trainer import examples_from_texts

    rows = examples_from_texts(small.unlabeled[:4], tokenizer, 16, token_level=False)
    assert all(r["labels"] == -100 for r in rows)


# ------------------------------------------------------------------------ bad recipe values


def _check(tmp_path, distill_config: dict) -> str:
    """Run ``edgeslim check``'s code path on the tiny recipe with this distill stage; the error line."""
    from conftest import tiny_recipe_dict, write_recipe
    from edgeslim.recipe import check_recipe, load_recipe

    recipe = tiny_recipe_dict()
    recipe["stages"][0] = {"distill": distill_config}
    with pytest.raises(EdgeslimError) as info:
        check_recipe(load_recipe(write_recipe(tmp_path, recipe)))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("config,expected", [
    ({"temperature": 0}, "temperature must be > 0"),
    ({"temperature": {"kind": "linear", "start": 4, "end": -1}}, "temperature must be > 0"),
    ({"losses": {"feature": {}}}, "stages[0].distill.losses.feature: unknown key"),
    ({"layers": [0, 7]}, "student layer 7 does not exist"),
    ({"losses": {"hidden": {"mapping": {0: 9}}}}, "teacher layer 9 does not exist"),
    ({"losses": {"hidden": {"mapping": {3: 3}}}}, "student layer 3 does not exist"),
    ({"losses": {"attention": {"mapping": {0: 4}}}}, "teacher layer 4 does not exist"),
    ({"losses": {"tokens": {"top_k": 100000}}}, "larger than the vocabulary"),
    ({"losses": {"tokens": {"top_k": 8}}, "temperature": {"kind": "linear", "start": 2, "end": 1}},
     "top_k needs a constant temperature"),
    ({"alpha": 1.5}, "alpha"),
    ({"losses": {"tokens": {"kind": "jsd", "beta": 1.0}}}, "beta"),
    ({"data": "generated"}, "data: generated needs task causal-lm"),
    ({"layers": {"every": 0}}, "greater than or equal to 1"),
])
def test_bad_values_fail_at_check_time(tmp_path, config, expected):
    assert expected in _check(tmp_path, config)


def test_good_config_passes_check(tmp_path):
    from conftest import tiny_recipe_dict, write_recipe
    from edgeslim.recipe import check_recipe, load_recipe

    recipe = tiny_recipe_dict()
    recipe["stages"][0] = {"distill": {"layers": [1, 3], "losses": {"hidden": {"mapping": {0: 1, 1: 3}}, "relation": {}},
                                     "temperature": {"kind": "linear", "start": 4, "end": 1}}}
    notes = check_recipe(load_recipe(write_recipe(tmp_path, recipe)))
    assert any("distill" in note for note in notes)
