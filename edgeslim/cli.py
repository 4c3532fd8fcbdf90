"""The one entry point: ``edgeslim run|search|search-worker|check|bench|gate|report|devices|recipes``.

Exit codes: 0 ok, 1 the gate failed, 2 bad input or an unusable environment (one line on stderr, no
traceback unless ``--debug``), 3 an internal error (a bug; never reported as a gate failure).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgeslim.errors import EdgeslimError, first_line

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args)
    try:
        return args.handler(args)
    except EdgeslimError as exc:
        if args.debug:
            raise
        print(f"edgeslim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("edgeslim: interrupted; finished stages are kept and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a gate verdict: never exit 1, which means "a budget failed"
        if args.debug:
            raise
        first = first_line(exc) if str(exc).strip() else ""
        print(f"edgeslim: internal error: {type(exc).__name__}: {first} (a bug; rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--quiet", action="store_true", help="no progress bars (for CI logs)")
    common.add_argument("--allow-network", action="store_true",
                        help="let a teacher or tokenizer given as a hub id be downloaded (off by default: "
                             "edgeslim works offline); an unreachable hub then fails within about 30 s")
    parser = argparse.ArgumentParser(prog="edgeslim", parents=[common],
                                     description="Distil, compress, export and gate transformers for edge devices.")
    from edgeslim.version import __version__

    parser.add_argument("--version", action="version", version=f"edgeslim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a recipe end to end and gate the release")
    run.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    run.add_argument("--out", type=Path, help="output folder (default runs/<recipe name>)")
    run.add_argument("--force", action="store_true", help="rerun every stage, ignoring the cache")
    run.add_argument("--no-wait", action="store_true",
                     help="exit 2 at once when another run holds the output folder, instead of waiting for it")
    run.set_defaults(handler=cmd_run)

    from edgeslim.search.commands import add_search_commands

    add_search_commands(sub, common)

    init = sub.add_parser("init", parents=[common], help="write a commented recipe for a model and a data file")
    init.add_argument("model", help="teacher: a model folder, pkg://..., a .gguf file, or a hub id (--allow-network)")
    init.add_argument("data", help="data file: csv, tsv, jsonl, parquet or txt (one example per line)")
    init.add_argument("--out", type=Path, help="recipe file to write (default: <model>-<data>.yaml here)")
    init.add_argument("--device", action="append", default=None,
                      help="device profile the release targets (repeatable; default x86-64-cpu)")
    init.add_argument("--name", help="recipe name (default: from the model and data names)")
    init.add_argument("--force", action="store_true", help="replace --out if it exists")
    init.set_defaults(handler=cmd_init)

    check = sub.add_parser("check", parents=[common], help="validate a recipe without running it")
    check.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    check.set_defaults(handler=cmd_check)

    gate = sub.add_parser("gate", parents=[common], help="check a report's release against budgets (exit 0/1/2)")
    gate.add_argument("report", type=Path, help="report.json (or its folder)")
    gate.add_argument("--recipe", help="take budgets from this recipe instead of the report")
    _baseline_arguments(gate)
    gate.set_defaults(handler=cmd_gate)

    report = sub.add_parser("report", parents=[common], help="re-render report.md/html/junit.xml from report.json")
    report.add_argument("report", type=Path, help="report.json (or its folder)")
    report.set_defaults(handler=cmd_report)

    devices = sub.add_parser("devices", parents=[common], help="list, show or calibrate device profiles")
    devices.add_argument("action", choices=["list", "show", "calibrate"],
                         help="list the built-in profiles, show one, or calibrate one's latency prediction by "
                              "measuring a fixed suite on the device")
    devices.add_argument("name", nargs="?", help="profile name or YAML file (for show and calibrate)")
    devices.add_argument("--out", type=Path, help="calibrate: where to write the calibrated profile (YAML)")
    devices.add_argument("--runs", type=int, default=100, help="calibrate: timed inferences per suite model")
    devices.set_defaults(handler=cmd_devices)

    recipes = sub.add_parser("recipes", parents=[common], help="list or show built-in recipes")
    recipes.add_argument("action", choices=["list", "show"], help="list the built-in recipes, or show one")
    recipes.add_argument("name", nargs="?", help="recipe name (for show)")
    recipes.set_defaults(handler=cmd_recipes)

    bench = sub.add_parser("bench", parents=[common], help="measure ONNX model(s) on devices, outside a recipe")
    bench.add_argument("models", nargs="+", type=Path, help="ONNX files")
    bench.add_argument("--device", action="append", default=None, help="device profile (repeatable)")
    bench.add_argument("--runs", type=int, default=100, help="timed inferences per model (default 100)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default 10)")
    bench.add_argument("--seq-len", type=int, default=32, help="sequence length of the synthetic inputs")
    bench.add_argument("--instructions", action="store_true",
                       help="add callgrind's instruction count per inference (local devices; needs valgrind)")
    bench.add_argument("--json", type=Path, dest="json_out",
                       help="also write the cells to this file, in report.json's cell format")
    _baseline_arguments(bench)
    bench.set_defaults(handler=cmd_bench)
    return parser


def _baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", type=Path,
                        help="previous release (.onnx, model folder or report.json): measured interleaved with this one")
    parser.add_argument("--baseline-threshold", type=float, default=0.05,
                        help="fail when p50 regresses by more than this fraction and than the measured noise")
    parser.add_argument("--baseline-device", default="x86-64-cpu", help="device profile for the comparison")
    parser.add_argument("--baseline-clock", choices=["wall", "cpu"], default="wall",
                        help="compare wall-clock time, or the thread's CPU time (steadier on shared CI machines)")
    parser.add_argument("--baseline-instructions", action="store_true",
                        help="also compare callgrind instruction counts per inference (needs valgrind; a "
                             "local device): fails above 1%% more, well outside the counts' 0.2%% tolerance")


def _quiet_libraries(args) -> None:
    """Keep library chatter (hub warnings, exporter logs) out of the user's terminal."""
    if getattr(args, "allow_network", False):
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")  # bounded: a dead hub fails, never hangs
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not getattr(args, "debug", False):
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        # Library log lines (torchao's optional GPU kernels, onnxruntime's pre-processing hint, torch's
        # pytree deprecations) say nothing a user can act on; --debug shows them.
        logging.basicConfig(level=logging.ERROR)
        # torch resets its own "torch" logger when imported; its children keep the level set here
        for name in ("transformers", "torchao", "torch", "torch.utils._pytree", "onnxruntime", "optimum", "root",
                     "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


# --------------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    if not args.quiet:  # a first line at once: loading the libraries and checking the recipe takes seconds
        print(f"edgeslim: starting {args.recipe} (checking the recipe)", flush=True)
    from edgeslim.api import run
    from edgeslim.report.gate import format_checks
    from edgeslim.report.render import ratios, text_table
    from edgeslim.report.sections import summary_rows

    result = run(args.recipe, out=args.out, force=args.force, wait=not args.no_wait, quiet=args.quiet,
                 say=lambda line: print(f"edgeslim: {line}", file=sys.stderr))
    if result.report is None:  # a secondary rank of a multi-process launch: rank 0 reports and gates
        return EXIT_OK
    print()
    print(text_table(summary_rows(result.report)))
    for line in ratios(result.report):
        print(f"  {line}")
    print()
    print(format_checks(result.checks))
    report_dir = result.out_dir / "report"
    print(f"\nrelease model: {result.release_dir}\nreports: {report_dir}/report.json, report.md, report.html, junit.xml")
    return result.exit_code


def cmd_init(args) -> int:
    """``edgeslim init``: inspect the model and the data, write a recipe that passes ``check``."""
    import os
    import tempfile

    from edgeslim.recipe import check_recipe, load_recipe
    from edgeslim.scaffold import inspect_data, inspect_model, recipe_name, render_recipe
    from edgeslim.targets.profile import load_profile

    devices = args.device or ["x86-64-cpu"]
    for device in devices:
        load_profile(device)
    model = inspect_model(args.model, allow_network=args.allow_network)
    data = inspect_data(args.data, model.task)
    name = args.name or recipe_name(args.model, args.data)
    out = args.out or Path(f"{name}.yaml")
    if out.exists() and not args.force:
        raise EdgeslimError(f"--out '{out}' already exists; choose another path or pass --force to replace it")
    if out.suffix not in (".yaml", ".yml"):
        raise EdgeslimError(f"--out '{out}' must end in .yaml")
    from edgeslim.api import check_output_file

    check_output_file(out, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.source, data.source = (_relative_to(value, out.parent) for value in (model.source, data.source))
    text = render_recipe(model, data, devices, name)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".yaml", delete=False) as tmp:
        tmp.write(text)
    try:
        check_recipe(load_recipe(tmp.name))  # the recipe is written only once 'edgeslim check' accepts it
        os.replace(tmp.name, out)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    print(f"wrote {out} (task {model.task}; {'; '.join(data.notes)})")
    print(f"next: edgeslim check {out}   then   edgeslim run {out}")
    return EXIT_OK


def _relative_to(value: str, folder: Path) -> str:
    """A local path as the recipe will resolve it (relative to the recipe's folder); other sources as given."""
    import os

    if "://" in value or not Path(value).exists():
        return value
    return os.path.relpath(Path(value).resolve(), folder.resolve())


def cmd_check(args) -> int:
    from edgeslim.recipe import check_recipe, load_recipe

    recipe = load_recipe(args.recipe)
    for note in check_recipe(recipe):
        print(note)
    print(f"recipe '{recipe.name}' is valid")
    return EXIT_OK


def cmd_gate(args) -> int:
    from edgeslim.report.gate import evaluate_gate, format_checks, gate_exit_code, verify_release
    from edgeslim.report.matrix import load_report
    from edgeslim.report.render import write_all

    _check_baseline_arguments(args)
    recipe = None
    if args.recipe:
        from edgeslim.recipe import load_recipe

        recipe = load_recipe(args.recipe)
    report = load_report(args.report)
    model_dir = verify_release(report, args.report)
    budgets = None
    if recipe is not None:
        from edgeslim.report.matrix import merged_budgets
        from edgeslim.targets.profile import load_profile

        budgets = merged_budgets(recipe, [load_profile(d["name"]) for d in report["devices"]])
    checks = evaluate_gate(report, budgets)
    if args.baseline:  # the published release, just verified against the report's hashes
        release = model_dir / "model.onnx"
        checks += _baseline_checks(args, release, _report_inputs(report, release))
    folder = args.report if args.report.is_dir() else args.report.parent
    write_all(report, checks, folder)
    print(format_checks(checks))
    return gate_exit_code(checks)


def cmd_report(args) -> int:
    from edgeslim.report.gate import evaluate_gate
    from edgeslim.report.matrix import load_report
    from edgeslim.report.render import write_all

    report = load_report(args.report)
    folder = args.report if args.report.is_dir() else args.report.parent
    write_all(report, evaluate_gate(report), folder)
    print(f"wrote {folder}/report.md, report.html, junit.xml")
    return EXIT_OK


def cmd_devices(args) -> int:
    from edgeslim.targets.profile import list_profiles, load_profile

    if args.action == "list":
        for profile in list_profiles():
            print(f"{profile.name:<20} {profile.access.kind:<9} {profile.target.arch:<8} {profile.description}")
        return EXIT_OK
    if not args.name:
        raise EdgeslimError(f"'devices {args.action}' needs a device name; see 'edgeslim devices list'")
    import yaml

    if args.action == "calibrate":
        return _calibrate(args, load_profile(args.name))
    from edgeslim.targets.profile import cells_description, shown_fields

    profile = load_profile(args.name)
    print(yaml.safe_dump(shown_fields(profile), sort_keys=False).rstrip())
    print(f"# cells: {cells_description(profile)}")
    return EXIT_OK


def _calibrate(args, profile) -> int:
    """``devices calibrate``: measure the suite, fit the figures, write the calibrated profile."""
    import tempfile

    import yaml

    from edgeslim.api import check_output_file
    from edgeslim.artifacts import atomic_write_text
    from edgeslim.targets.calibrate import calibrate

    if args.out is None or args.out.suffix not in (".yaml", ".yml") or args.out.is_dir():
        raise EdgeslimError("'devices calibrate' needs --out FILE.yaml for the calibrated profile")
    check_output_file(args.out, "--out")
    if args.runs < 5:
        raise EdgeslimError(f"--runs must be at least 5 for a calibration, not {args.runs}")
    with tempfile.TemporaryDirectory(prefix="edgeslim-calibrate-") as tmp:
        data, table = calibrate(profile, Path(tmp), runs=args.runs, log=lambda line: None if args.quiet else print(line))
    data["description"] = f"{data.get('description', '')} (calibrated {data['predict']['calibration']['date']})".strip()
    atomic_write_text(args.out, yaml.safe_dump(data, sort_keys=False))
    calibration = data["predict"]["calibration"]
    for row in table:
        print(f"  {row['model']:<18} measured {row['measured_ms']:.4f} ms  predicted {row['predicted_ms']:.4f} ms")
    print(f"wrote {args.out}: fit median error {calibration['fit_median_error']:.0%}, leave-one-out median "
          f"{calibration['cv_median_error']:.0%}, max {calibration['max_error']:.0%}")
    return EXIT_OK


def cmd_recipes(args) -> int:
    from edgeslim.builtin import builtin_names, resolve_recipe
    from edgeslim.recipe import load_recipe

    if args.action == "list":
        for name in builtin_names("recipes"):
            recipe = load_recipe(name)
            print(f"{name:<22} {recipe.task:<20} {recipe.description}")
        return EXIT_OK
    if not args.name:
        raise EdgeslimError("'recipes show' needs a recipe name; see 'edgeslim recipes list'")
    print(resolve_recipe(args.name).read_text(encoding="utf-8").rstrip())
    return EXIT_OK


def cmd_bench(args) -> int:
    from edgeslim.api import bench, check_output_file, synthetic_inputs
    from edgeslim.artifacts import atomic_write_json
    from edgeslim.report.render import text_table

    if args.json_out:
        check_output_file(args.json_out, "--json")
    _check_baseline_arguments(args)
    cells = bench(args.models, args.device, runs=args.runs, warmup=args.warmup, seq_len=args.seq_len,
                  instructions=args.instructions)
    rows = [["model", "device", "status", "p50 ms", "p90 ms", "p99 ms", "instructions", "reason"]]
    for name, by_device in cells.items():
        for device, cell in by_device.items():
            lat = cell.get("latency_ms") or {}
            count = cell.get("instructions")
            rows.append([name, device, cell["status"]] + [f"{lat[q]:.3f}" if lat else "-" for q in ("p50", "p90", "p99")]
                        + [f"{count:,}" if count else "-", cell.get("reason") or ""])
    print(text_table(rows))
    if args.json_out:
        atomic_write_json(args.json_out, {"models": {str(p): str(p) for p in args.models}, "seq_len": args.seq_len,
                                          "cells": cells})
    if not args.baseline:
        return EXIT_OK
    from edgeslim.report.gate import format_checks, gate_exit_code

    if len(args.models) != 1:
        raise EdgeslimError("--baseline compares one model; give a single ONNX file")
    inputs = [synthetic_inputs(args.models[0], args.seq_len, seed) for seed in range(8)]
    checks = _baseline_checks(args, args.models[0], inputs)
    print(format_checks(checks))
    return gate_exit_code(checks)


def _check_baseline_arguments(args) -> None:
    """The --baseline options, checked before anything is loaded or measured."""
    from edgeslim.targets.profile import load_profile

    if args.baseline is None:
        return
    if not args.baseline.exists():
        raise EdgeslimError(f"--baseline '{args.baseline}' does not exist; give the previous release's .onnx file, "
                            "model folder or report.json")
    if not 0 < args.baseline_threshold < 10:
        raise EdgeslimError(f"--baseline-threshold is a fraction of the baseline's p50 (0.05 = 5%), above 0; "
                            f"not {args.baseline_threshold}")
    load_profile(args.baseline_device)


def _baseline_checks(args, current: Path, inputs):
    """Gate checks of ``current`` against ``--baseline``, both measured interleaved in this run."""
    from edgeslim.targets.baseline import compare_to_baseline
    from edgeslim.targets.profile import load_profile

    return compare_to_baseline(load_profile(args.baseline_device), current, args.baseline, inputs,
                               threshold=args.baseline_threshold, clock=args.baseline_clock,
                               instructions=args.baseline_instructions)


def _report_inputs(report, model: Path, count: int = 32):
    """Real eval inputs of the report's recipe (with the release's tokenizer), else synthetic ones."""
    from transformers import AutoTokenizer

    from edgeslim.data import load_data
    from edgeslim.recipe import load_recipe

    recipe_path = report.get("recipe", {}).get("path")
    if recipe_path and Path(recipe_path).is_file():
        recipe = load_recipe(recipe_path)
        data = load_data(recipe.data, recipe.base_dir, recipe.task)
        return data.encode_each(AutoTokenizer.from_pretrained(model.parent), "eval", count)
    from edgeslim.api import synthetic_inputs

    return [synthetic_inputs(model, 32, seed) for seed in range(8)]


if __name__ == "__main__":
    sys.exit(main())
