"""How fast do the quick commands answer? Wall time of each, median of several fresh processes.

    .venv/bin/python bench/cli_speed.py [--repeats 5]

Times ``edgeslim --help``, ``--version``, ``devices list|show``, ``recipes list|show`` and ``check``
of the demo recipe (a model-folder teacher: its config.json is read without transformers), of the
LLM recipe (a GGUF teacher: its config is cached after the first read) and of the tiny recipe (a
teacher built from a config: transformers supplies the defaults, so it imports torch), each in a
fresh interpreter (what a user waits for), and says whether the command imported torch
(``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["devices", "list"], ["devices", "show", "raspberry-pi-4"],
            ["recipes", "list"], ["recipes", "show", "minilm-sentiment"],
            ["check", str(REPO / "recipes" / "minilm-sentiment.yaml")],
            ["check", str(REPO / "recipes" / "smollm2-edge.yaml")],
            ["check", str(REPO / "recipes" / "tiny-test.yaml")]]


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, check=False)
    return time.perf_counter() - start


def imports_torch(args: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgeslim.cli", *args], capture_output=True,
                          text=True, check=False)
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines() if "|" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; median of {args.repeats} fresh processes")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7}  imports torch")
    for command in COMMANDS:
        times = [seconds(command) for _ in range(args.repeats)]
        label = "edgeslim " + " ".join(Path(a).name if "/" in a else a for a in command)
        print(f"{label:<40} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f}  "
              f"{'yes' if imports_torch(command) else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
