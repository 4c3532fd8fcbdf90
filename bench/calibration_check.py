"""Does a calibrated profile predict models it never saw? Calibrate this host, then predict and measure.

    .venv/bin/python bench/calibration_check.py [--runs 100] [--seq 32] [--repeats 5]
        [--device x86-64-cpu] [--save calibrated.yaml]

Calibrates the ``x86-64-cpu`` profile (or ``--device``: any local, ssh or cuda profile) with ``edgeslim.targets.calibrate`` (the suite of matrix
products, attention, layer norm, gather, elementwise and empty graphs, and whole reference encoders
of other sizes than the ones checked here), then takes transformers that
are not in the suite (BERT classifiers of other widths and depths, fp32, dynamic INT8 and INT4
weight-only, and a one-token step of a small Llama decoder with its KV cache), predicts them with the
calibrated figures (an ``access: none`` copy of the profile, so every cell is a prediction) and
measures them on the device (on this host at one thread: the thread's CPU time; else wall-clock
p50). Where optimum is not installed (a GPU machine's own Python), the decoder step is left out and
the output says so. ``--save`` writes the last round's calibrated profile. Prints predicted vs measured and the
median and largest error, against the targets of 15% median and 30% max; with ``--repeats`` the
whole round (a fresh calibration included) runs again, and the summary gives the median over rounds
with their range, since one round's measurements move by several percent on a shared host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _targets_models import export_bert, text_inputs  # noqa: E402

from edgeslim.targets.calibrate import calibrate, fitted_clock  # noqa: E402
from edgeslim.targets.predict import predict_latency_ms  # noqa: E402
from edgeslim.targets.profile import DeviceProfile, load_profile  # noqa: E402
from edgeslim.targets.runners import measure  # noqa: E402

UNSEEN = [(96, 2), (192, 3), (320, 4), (384, 6)]


def int4(src: Path, dst: Path) -> Path:
    from edgeslim.quantize.specs import make_spec

    return make_spec(mode="weight_only", bits=4, block_size=32, accuracy_level=4).quantize(src, dst)


def decoder_step(folder: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A small Llama (hidden 256, 4 layers) exported with its KV cache; inputs: one token after 32."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = folder / "llama"
    hf.mkdir(parents=True, exist_ok=True)
    vocab = {f"t{i}": i for i in range(1000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0").save_pretrained(hf)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).save_pretrained(hf)
    main_export(str(hf), output=str(folder / "llama-onnx"), task="text-generation-with-past", opset=18)
    AutoTokenizer.from_pretrained(hf)
    past = {f"past_key_values.{i}.{kind}": np.zeros((1, 2, 32, 64), np.float32) for i in range(4) for kind in ("key", "value")}
    feed = {"input_ids": np.array([[7]], dtype=np.int64), "attention_mask": np.ones((1, 33), dtype=np.int64),
            "position_ids": np.array([[32]], dtype=np.int64), **past}
    return folder / "llama-onnx" / "model.onnx", [feed]


def one_round(host: DeviceProfile, runs: int, seq: int) -> tuple[dict, list[tuple[str, float, float, float]]]:
    """Calibrate ``host``, then measure and predict the unseen models: (the calibrated profile, rows)."""
    with tempfile.TemporaryDirectory(prefix="edgeslim-calcheck-") as tmp:
        work = Path(tmp)
        (work / "suite").mkdir()
        data, _ = calibrate(host, work / "suite", runs=runs, log=lambda line: None)
        calibrated = DeviceProfile.model_validate({**data, "access": {"kind": "none"}})
        models: dict[str, tuple[Path, list]] = {}
        inputs = text_inputs(4, seq)
        for hidden, layers in UNSEEN:
            name = f"bert-h{hidden}-l{layers}"
            fp32 = export_bert(work / f"{name}.onnx", hidden, layers)
            models[f"{name}-fp32"] = (fp32, inputs)
            models[f"{name}-int8"] = (export_bert(work / f"{name}-int8.onnx", hidden, layers, int8=True), inputs)
        models["bert-h320-l4-int4"] = (int4(work / "bert-h320-l4.onnx", work / "bert-h320-l4-int4.onnx"), inputs)
        try:
            models["llama-h256-step"] = decoder_step(work)
        except ImportError as exc:
            print(f"decoder step left out: {exc}")
        rows = []
        for name, (path, feeds) in models.items():
            cell = measure(host, {name: path}, feeds, warmup=10, runs=runs, memory=False)[name]
            if cell["status"] != "measured":
                raise SystemExit(f"{name} could not be measured on {host.name}: {cell.get('reason')}")
            measured = fitted_clock(host, cell)["p50"]
            predicted = predict_latency_ms(calibrated, path, feeds)
            rows.append((name, measured, predicted, predicted / measured - 1))
    return data, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="calibrate and check this many times (fresh fits)")
    parser.add_argument("--device", default="x86-64-cpu", help="profile to calibrate and check (local, ssh or cuda)")
    parser.add_argument("--save", type=Path, help="write the last round's calibrated profile here (YAML)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    summaries = []
    host = load_profile(args.device)
    for repeat in range(args.repeats):
        data, rows = one_round(host, args.runs, args.seq)
        figures = data["predict"]
        calibration = figures["calibration"]
        print(f"\nround {repeat + 1}: calibrated {({k: v for k, v in figures.items() if k != 'calibration'})}; "
              f"leave-one-out median {calibration['cv_median_error']:.0%}, max {calibration['max_error']:.0%}")
        print(f"{'model':<22} {'measured ms':>12} {'predicted ms':>13} {'error':>7}")
        for name, measured, predicted, error in rows:
            print(f"{name:<22} {measured:>12.3f} {predicted:>13.3f} {error:>+7.0%}")
        errors = [abs(r[3]) for r in rows]
        summaries.append((statistics.median(errors), max(errors)))
        print(f"median |error| {summaries[-1][0]:.0%}, max {summaries[-1][1]:.0%} over {len(rows)} unseen models")
    if args.save:
        import yaml

        args.save.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"calibrated profile written to {args.save}")
    medians, worsts = [m for m, _ in summaries], [w for _, w in summaries]
    median, worst = statistics.median(medians), statistics.median(worsts)
    print(f"\nover {len(summaries)} round(s): median |error| {median:.0%} (rounds {min(medians):.0%}-{max(medians):.0%}; "
          f"target 15%: {'met' if median <= 0.15 else 'MISSED'}), max {worst:.0%} (rounds {min(worsts):.0%}-"
          f"{max(worsts):.0%}; target 30%: {'met' if worst <= 0.30 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
