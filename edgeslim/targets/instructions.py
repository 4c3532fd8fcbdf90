"""Instruction counts per inference under callgrind: the driver callgrind runs, and the parser of its
dumps. The count moves little with machine load, so CI can gate on it (within
:data:`INSTRUCTION_TOLERANCE`); :func:`edgeslim.targets.runners.local.count_instructions` runs it.

Run as a script beside ``harness.py`` (``python instructions.py SPEC.json RESULT.json``, the spec's
single model and inputs as for the harness), it imports nothing of edgeslim but the harness, so
callgrind does not count a package's start-up.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

if __package__:
    import edgeslim.targets.harness as harness
else:  # run as a script under callgrind: only the sibling harness
    import harness  # type: ignore[no-redef]

#: This file, which callgrind runs.
COUNTER = Path(__file__).resolve()
#: Files of the handshake that switches instrumentation on after the warm-up (see :func:`wait_for_instrumentation`).
READY_FILE, GO_FILE = "warmed-up", "instrumenting"
#: How far two counts of the same model and inputs may differ across processes and hosts, relative:
#: identical on some CPUs, up to ~1.4e-4 apart on others (AVX2 EPYC: 74,157 vs 74,166; 1,427 of
#: 10.57M). Gates on instruction counts must allow at least this much.
INSTRUCTION_TOLERANCE = 0.002
#: Shared objects whose instructions count as the inference engine's: onnxruntime's own libraries
#: and the C++ runtime it calls. The interpreter and the C library's allocator are left out: their
#: counts depend on heap state that differs from process to process.
ENGINE_OBJECTS = ("/onnxruntime/", "libonnxruntime", "libstdc++", "libgcc_s", "libgomp", "libm.so")


def aligned(array, alignment=4096):
    """A copy of ``array`` whose data starts on an ``alignment`` boundary.

    Kernels copy and read inputs with alignment-dependent head and tail loops; page-aligned inputs
    make their instruction counts the same in every process.
    """
    array = np.ascontiguousarray(array)
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def run_count(spec):
    """Run ``runs`` inferences of the single model, each between two marker calls callgrind acts on.

    ``getloadavg`` and ``ctermid`` are libc functions that neither Python nor onnxruntime calls
    while running a model: callgrind zeroes its counters on entering the first and dumps them on
    entering the second, so each dump holds one inference alone. They are reached through ``os``
    (CPython calls them directly), not ctypes, because callgrind does not see calls made through
    libffi as calls.
    """
    inputs = harness.load_inputs(spec["inputs"])
    (name, path), = spec["models"].items()
    session = harness.make_session(path, spec)
    feeds = [{key: aligned(value) for key, value in feed.items()} for feed in harness.feeds_for(session, inputs)]
    for w in range(max(len(feeds), int(spec.get("warmup", 1)))):  # every input shape seen at least once
        session.run(None, feeds[w % len(feeds)])
    if spec.get("handshake"):
        wait_for_instrumentation(Path(spec["handshake"]))
    for r in range(int(spec["runs"])):
        feed = feeds[r % len(feeds)]
        os.getloadavg()
        session.run(None, feed)
        os.ctermid()
    return {name: {"runs": int(spec["runs"])}}


def wait_for_instrumentation(folder: Path, poll_s: float = 0.02) -> None:
    """Tell the parent this process (pid in ``READY_FILE``) has warmed up, then wait until it has
    switched callgrind's instrumentation on and says so (``GO_FILE``). The warm-up then runs under
    valgrind uninstrumented, several times faster; the counted inferences are fully instrumented."""
    import time

    (folder / READY_FILE).write_text(str(os.getpid()), encoding="ascii")
    while not (folder / GO_FILE).exists():
        time.sleep(poll_s)


def engine_instructions(path: Path) -> int:
    """Instructions (Ir, self cost) a callgrind dump attributes to ``ENGINE_OBJECTS``.

    Reads the callgrind format: ``ob=`` sets the object of the following functions; a cost line
    right after ``calls=`` is a call's inclusive cost (already counted in the callee) and is skipped.
    """
    names: dict[str, str] = {}
    current = None
    after_call = False
    total = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(("ob=", "cob=")):
                match = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if match.group(2):
                    names[match.group(1)] = match.group(2)
                if line.startswith("ob="):
                    current = names.get(match.group(1), "")
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                elif current and any(part in current for part in ENGINE_OBJECTS):
                    total += int(line.split()[-1])
    return total


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    result = run_count(spec)
    result[harness.MACHINE_KEY] = harness.machine()
    with open(argv[2], "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
