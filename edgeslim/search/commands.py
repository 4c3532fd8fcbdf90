"""The ``search`` and ``search-worker`` commands of :mod:`edgeslim.cli` (exit codes as there)."""

from __future__ import annotations

import sys
from pathlib import Path

from edgeslim.errors import EdgeslimError


def add_search_commands(sub, common) -> None:
    """Add both subcommands to the CLI's subparsers."""
    search = sub.add_parser("search", parents=[common],
                            help="search the recipe's space: one release per device, each gated (exit 0/1/2)")
    search.add_argument("recipe", help="recipe YAML file or built-in recipe name, with a search section")
    search.add_argument("--out", type=Path, help="output folder (default runs/<recipe name>)")
    search.add_argument("--storage", help="study database shared with workers (postgresql://USER@HOST:PORT/DB); "
                                          "default: SQLite in DIR/search/study.db")
    search.add_argument("--trials", type=int, help="trials in the study (default: the recipe's search.trials)")
    search.set_defaults(handler=cmd_search)

    worker = sub.add_parser("search-worker", parents=[common],
                            help="run trials of a shared search study (--storage) on this machine")
    worker.add_argument("recipe", help="the same recipe the search runs")
    worker.add_argument("--storage", required=True, help="the study's database URL (postgresql://...)")
    worker.add_argument("--out", type=Path, help="this worker's folder (default runs/<recipe name>-worker)")
    worker.add_argument("--trials", type=int, help="trials in the study (default: the recipe's search.trials)")
    worker.set_defaults(handler=cmd_search_worker)


def cmd_search(args) -> int:
    from edgeslim.search.run import search

    _check_trials(args.trials)
    result = search(args.recipe, args.out, storage=args.storage, trials=args.trials, quiet=args.quiet,
                    say=lambda line: print(f"edgeslim: {line}", file=sys.stderr))
    for device, entry in result.report["devices"].items():
        print(f"{device}: trial {entry['trial']}, gate {entry['gate']}; model {entry['model_dir']}")
    print(f"reports: {result.out_dir / 'report'}/report.json, report.md, report.html")
    return result.exit_code


def cmd_search_worker(args) -> int:
    from edgeslim.search.run import worker

    _check_trials(args.trials)
    ran = worker(args.recipe, args.storage, args.out, trials=args.trials, quiet=args.quiet,
                 say=lambda line: print(f"edgeslim: {line}", file=sys.stderr))
    print(f"ran {ran} trial(s)")
    return 0


def _check_trials(trials: int | None) -> None:
    if trials is not None and trials < 1:
        raise EdgeslimError(f"--trials must be at least 1, not {trials}")


