"""Which stages run on which architecture: every model type of edgeslim's families table, as a tiny
random config (teacher built from it, WordPiece tokenizer trained on the data), through every stage.

For each type and stage, ``edgeslim check`` of a recipe with that stage either accepts it or refuses it
in one line (the reason goes into the table); then one ``edgeslim run`` takes the type through every
accepted stage at once, and its exit code says whether they ran (0: gate passed, 1: a budget failed;
both mean every stage ran and the report was written) or crashed (3). Prints the support table that
docs/compress.md shows, and writes it as JSON.

    .venv/bin/python bench/architectures.py                       # all types, ~10 minutes on 2 cores
    .venv/bin/python bench/architectures.py --types bert gpt2 --json /tmp/support.json

Encoders are text classifiers on recipes/data/tiny-sentiment.csv, decoders causal LMs on
recipes/smollm2/corpus.txt. Sizes are tiny (hidden 32, 4 layers) and steps few: this measures whether
a stage works on an architecture, not how well.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeslim.families import FAMILIES, family_of_type  # noqa: E402

STAGES = ("distill", "prune", "lowrank", "vocab", "export", "quantize", "bundle")
DOC = REPO / "docs" / "compress.md"
TABLE_START = "<!-- bench/architectures.py: support table -->"
TABLE_END = "<!-- /bench/architectures.py -->"
DECODERS = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "gpt_neox", "opt", "falcon"}
TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 128}
# What a type needs besides TINY to be a small valid config (its own names for the FFN width etc.).
EXTRA = {
    "distilbert": {"hidden_dim": 64},
    "albert": {"embedding_size": 16},
    "mobilebert": {"embedding_size": 32, "intra_bottleneck_size": 32, "true_hidden_size": 32,
                   "num_feedforward_networks": 1},
    "llama": {"num_key_value_heads": 2}, "mistral": {"num_key_value_heads": 2}, "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 8}, "gemma2": {"num_key_value_heads": 2, "head_dim": 8},
    "phi3": {"num_key_value_heads": 2},
    "gpt2": {"n_inner": 64},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "falcon": {"new_decoder_architecture": False, "multi_query": True},
}
# Linear names (glob patterns) a low-rank factorization can take where no structure is known.
FFN_PATTERNS = ["*.intermediate.dense", "*.mlp.*", "*.ffn.*", "*.ffn", "*.ffn_output", "*.fc1", "*.fc2",
                "*.dense_h_to_4h", "*.dense_4h_to_h"]


def stage_config(stage: str, model_type: str) -> dict:
    """The stage as the bench runs it on ``model_type``: few steps, every part of it switched on."""
    if stage == "distill":
        return {"layers": {"every": 2}, "epochs": 1, "lr": 0.001, "batch_size": 16, "checkpoint_every": 0}
    if stage == "prune":
        return {"heads": 0.5, "ffn": 0.5, "recovery": {"steps": 4, "lr": 0.0005}}
    if stage == "lowrank":
        if family_of_type(model_type):
            return {"targets": ["ffn"], "rank": 8}
        return {"targets": [], "modules": FFN_PATTERNS, "rank": 8}
    if stage == "vocab":
        return {"sources": ["train"]}
    if stage == "export":
        return {"parity_batches": 1, "decode_steps": 1}
    if stage == "quantize":
        return {"mode": "dynamic"}
    return {"ort_format": False, "tokenizer_in_graph": False}


def recipe(model_type: str, stages: list[str]) -> dict:
    decoder = model_type in DECODERS
    data = ({"source": str(REPO / "recipes" / "smollm2" / "corpus.txt"), "format": "text", "label_column": None,
             "eval_size": 12, "max_length": 32} if decoder else
            {"source": str(REPO / "recipes" / "data" / "tiny-sentiment.csv"), "labels": ["negative", "neutral", "positive"],
             "eval_size": 60, "max_length": 32})
    teacher = {"build": {"model_type": model_type, **TINY, **EXTRA.get(model_type, {})},
               "train_tokenizer": {"vocab_size": 300}}
    if not decoder:
        teacher["finetune"] = {"epochs": 1, "lr": 0.001, "batch_size": 16}
    return {"name": f"arch-{model_type}", "task": "causal-lm" if decoder else "text-classification", "seed": 0,
            "teacher": teacher, "data": data, "stages": [{s: stage_config(s, model_type)} for s in stages],
            "devices": ["x86-64-cpu"], "measure": {"samples": 2, "warmup": 1, "runs": 5}}


def needed(stage: str) -> list[str]:
    """The stages a recipe needs around ``stage`` for check to look at that stage alone."""
    if stage in ("quantize", "bundle"):
        return ["export", stage]
    return [stage] if stage == "export" else [stage, "export"]  # a recipe must end with an ONNX model


def edgeslim(*args: str) -> tuple[int, str]:
    """``edgeslim ARGS`` in this process: exit code and what it printed on stderr."""
    from edgeslim.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue().strip()


def check_stage(model_type: str, stage: str, folder: Path) -> str | None:
    """``None`` when check accepts ``stage`` for ``model_type``, else its one-line reason."""
    path = folder / f"check-{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe(model_type, needed(stage)), sort_keys=False))
    code, err = edgeslim("check", str(path))
    if code == 0:
        return None
    line = err.splitlines()[-1].split("error: ", 1)[-1] if err else f"exit {code}"
    return line.split(".yaml:", 1)[-1].split(": ", 1)[-1]  # the reason, without the file and line


def support(model_type: str, folder: Path) -> dict:
    """Per stage ``runs`` / ``refused: reason`` / ``crashed``, and the run's exit code and seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    refused = {stage: check_stage(model_type, stage, folder) for stage in STAGES}
    accepted = [s for s in STAGES if refused[s] is None]
    if "export" not in accepted:  # quantize and bundle read an ONNX model
        accepted = [s for s in accepted if s not in ("quantize", "bundle")]
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(model_type, accepted), sort_keys=False))
    started = time.time()
    code, err = edgeslim("run", str(path), "--out", str(folder / "run"), "--quiet")
    finished = {p.name.split("-", 1)[1] for p in (folder / "run" / "stages").glob("[0-9]*") if (p / "manifest.json").is_file()}
    error = err.splitlines()[-1].split("error: ", 1)[-1] if code not in (0, 1) and err else None
    cells, failed = {}, False
    for stage in STAGES:
        if refused[stage]:
            cells[stage] = f"refused: {refused[stage]}"
        elif stage not in accepted:
            cells[stage] = "not run: needs export"
        elif stage in finished and (code in (0, 1) or stage != "bundle"):
            cells[stage] = "runs"
        elif not failed:
            cells[stage], failed = (f"failed (exit {code})" if code not in (0, 1) else "runs"), code not in (0, 1)
        else:
            cells[stage] = "not reached"
    return {"model_type": model_type, "structure": FAMILIES[model_type].structure, "stages": cells, "exit_code": code,
            "error": error, "seconds": round(time.time() - started, 1)}


def table(rows: list[dict]) -> str:
    """The support table in Markdown: one row per type, a short cell per stage, reasons below."""
    lines = ["| model type | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    reasons: dict[str, int] = {}
    for row in rows:
        cells = []
        for stage in STAGES:
            cell = row["stages"][stage]
            if cell.startswith("refused: "):
                number = reasons.setdefault(cell[len("refused: "):], len(reasons) + 1)
                cell = f"refused ({number})"
            cells.append(cell)
        lines.append(f"| {row['model_type']} | " + " | ".join(cells) + " |")
    lines += [""] + [f"({number}) {reason}" for reason, number in reasons.items()]
    lines += [f"{row['model_type']}: exit {row['exit_code']}: {row['error']}" for row in rows if row["error"]]
    return "\n".join(lines)


def write_doc(markdown: str) -> None:
    """Replace the table between the markers in docs/compress.md (the tests compare it with check)."""
    text = DOC.read_text()
    before, rest = text.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    DOC.write_text(f"{before}{TABLE_START}\n{markdown}\n{TABLE_END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="*", default=list(FAMILIES), help="model types (default: the families table)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--write-doc", action="store_true", help=f"put the table into {DOC.relative_to(REPO)}")
    args = parser.parse_args()
    unknown = [t for t in args.types if t not in FAMILIES]
    if unknown:
        parser.error(f"not in the families table: {', '.join(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for model_type in args.types:
            row = support(model_type, root / model_type)
            print(f"{model_type}: exit {row['exit_code']} in {row['seconds']} s"
                  + (f" ({row['error']})" if row["error"] else ""), flush=True)
            rows.append(row)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.write_doc:
        write_doc(table(rows))
    return 0 if all(row["exit_code"] in (0, 1) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
