"""The measuring process: runs ONNX models with onnxruntime and reports latency, memory and outputs.

This file is deliberately self-contained (standard library, numpy and onnxruntime only) because the
ssh and qemu runners copy it, alone, to the device or the emulated sysroot and run it there with that
machine's Python. It is driven by a JSON spec and writes a JSON result::

    python harness.py SPEC.json RESULT.json

Spec keys: ``models`` ({name: onnx path}), ``inputs`` (an ``.npz`` whose keys are
``"<index>/<input name>"``), ``model_inputs`` (optional {name: ``.npz``} for models that take
other token ids for the same texts, e.g. a trimmed vocabulary), ``warmup``, ``runs`` (timed rounds, at least), ``min_time_s`` (keep
adding rounds until the timed part lasted this long, so fast models get enough samples for stable
tail percentiles), ``threads``, ``inter_op_threads``, ``providers``,
``provider_options``, ``session_options``, ``graph_optimization_level``, ``affinity`` (CPU ids or
null), ``memory`` (bool), ``outputs`` (an ``.npz`` path to save each model's outputs to, or null),
``mode`` (``"latency"``, ``"memory"`` or ``"count"``). The result maps each model name to its figures
(or ``{"error": ...}``) and ``"__machine__"`` to the architecture and versions it ran on.

Latency mode times every model on the same inputs, interleaved round-robin with the model order
rotated every round, so a load spike on a shared machine hits all models alike and their ratios stay
fair. Besides wall-clock latency it records the CPU time of the calling thread per inference
(``cpu_ms``): with one intra-op thread that is the inference's own compute, unaffected by time spent
preempted on a loaded machine. Peak memory is measured per model in a fresh child process (``memory`` mode) as the rise of the
process's peak resident set over its size just before the session was created: the model's own
weights, arena and activations, not the interpreter's.

Count mode runs ``runs`` inferences of one model, each between calls to two libc marker functions,
so ``valgrind --tool=callgrind --zero-before=getloadavg --dump-before=ctermid`` dumps the
instructions of each inference alone, not interpreter start-up or session creation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

#: Key of the result entry describing the machine (every other key is a model name).
MACHINE_KEY = "__machine__"


#: CPU features that decide which INT8 kernels onnxruntime runs (x86: AVX2 u8s8 saturates without
#: VNNI; ARM: dot-product and i8mm instructions).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm",
             "sve", "sme")


def cpu_isa(cpuinfo="/proc/cpuinfo"):
    """The INT8-relevant instruction-set features of this CPU, from ``/proc/cpuinfo`` (x86 ``flags``
    or ARM ``Features``); an empty list where that file cannot be read."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def machine():
    """Where this harness ran: CPU architecture and ISA, Python and onnxruntime versions."""
    import platform

    import onnxruntime

    return {"arch": platform.machine(), "isa": cpu_isa(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}


def load_inputs(path):
    """Read the ``.npz`` of inputs back into a list of {input name: array}, in index order."""
    feeds = {}
    with np.load(path) as archive:
        for key in archive.files:
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = archive[key]
    return [feeds[i] for i in sorted(feeds)]


def make_session(model, spec):
    """An ``InferenceSession`` of ``model`` (a path, or serialized ONNX bytes) configured exactly as
    ``spec`` says (the device profile's runtime section; see :func:`session_options`). Every
    onnxruntime session edgeslim creates is made here."""
    import onnxruntime as ort

    options = session_options(spec)
    providers = spec.get("providers") or ["CPUExecutionProvider"]
    provider_options = spec.get("provider_options") or {}
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        sess_options=options,
        providers=[(p, provider_options.get(p, {})) for p in providers],
    )


def session_options(spec):
    """``SessionOptions`` from a spec: ``threads`` (0 = onnxruntime's choice), ``inter_op_threads``,
    ``graph_optimization_level``, ``session_options`` (config entries), and for edgeslim's own uses
    ``profile_prefix`` (profile every node), ``optimized_model`` (write the optimized graph there)
    and ``custom_ops`` (shared libraries of custom operators, e.g. onnxruntime-extensions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = int(spec.get("log_severity", 3))
    options.intra_op_num_threads = int(spec.get("threads", 1))
    options.inter_op_num_threads = int(spec.get("inter_op_threads", 1))
    level = spec.get("graph_optimization_level", "all")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    for key, value in (spec.get("session_options") or {}).items():
        options.add_session_config_entry(key, str(value))
    if spec.get("profile_prefix"):
        options.enable_profiling = True
        options.profile_file_prefix = spec["profile_prefix"]
    if spec.get("optimized_model"):
        options.optimized_model_filepath = spec["optimized_model"]
    for library in spec.get("custom_ops") or []:
        options.register_custom_ops_library(library)
    return options


def feeds_for(session, inputs):
    """Keep only the inputs this model declares (e.g. a model without ``token_type_ids``)."""
    wanted = [i.name for i in session.get_inputs()]
    feeds = []
    for example in inputs:
        missing = [name for name in wanted if name not in example]
        if missing:
            raise ValueError(f"model input(s) {missing} not in the provided inputs {sorted(example)}")
        feeds.append({name: example[name] for name in wanted})
    return feeds


def percentiles(samples_ms):
    """p50/p90/p99/mean/n of latency samples in milliseconds (numpy's linear interpolation)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "n": int(values.size),
    }


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def pin(affinity):
    if affinity and hasattr(os, "sched_setaffinity"):
        available = os.sched_getaffinity(0)
        chosen = [cpu for cpu in affinity if cpu in available]
        if chosen:
            os.sched_setaffinity(0, chosen)


def _status_kb(field):
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_memory(spec, model_path, inputs):
    """Peak resident MB one model adds to a process (session creation plus inference)."""
    import resource

    base_kb = _status_kb("VmRSS")
    session = make_session(model_path, spec)
    feeds = feeds_for(session, inputs)
    for i in range(max(2, min(int(spec.get("warmup", 1)), 5))):
        session.run(None, feeds[i % len(feeds)])
    peak_kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if base_kb is None:
        base_kb = 0
    return max(0.0, (peak_kb - base_kb) / 1024.0)


def run_latency(spec):
    """Interleaved timing of every model; returns {name: {latency_ms, throughput}} plus outputs."""
    pin(spec.get("affinity"))
    shared = load_inputs(spec["inputs"])
    own = spec.get("model_inputs") or {}
    sessions, feeds, failed = {}, {}, {}
    for name, path in spec["models"].items():
        try:
            sessions[name] = make_session(path, spec)
            feeds[name] = feeds_for(sessions[name], load_inputs(own[name]) if name in own else shared)
        except Exception as exc:  # one broken model must not stop the others being measured
            sessions.pop(name, None)
            failed[name] = {"error": _one_line(exc)}
    names = list(sessions)
    saved = {}
    for name in names:  # warm-up, and one pass over every input for the outputs
        for i, feed in enumerate(feeds[name]):
            outputs = sessions[name].run(None, feed)
            if spec.get("outputs"):
                for out_meta, value in zip(sessions[name].get_outputs(), outputs):
                    saved[f"{name}/{i}/{out_meta.name}"] = np.asarray(value)
        for w in range(int(spec.get("warmup", 0))):
            sessions[name].run(None, feeds[name][w % len(feeds[name])])
    samples = {name: [] for name in names}
    cpu_samples = {name: [] for name in names}
    runs = int(spec.get("runs", 0))
    min_time_ns = float(spec.get("min_time_s") or 0) * 1e9
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    began = clock()
    r = 0
    while names and (r < runs or clock() - began < min_time_ns):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            feed = feeds[name][r % len(feeds[name])]
            session = sessions[name]
            cpu_start = cpu_clock()
            start = clock()
            session.run(None, feed)
            end = clock()
            cpu_samples[name].append((cpu_clock() - cpu_start) / 1e6)
            samples[name].append((end - start) / 1e6)
        r += 1
    if spec.get("outputs"):
        np.savez(spec["outputs"], **saved)
    result = dict(failed)
    for name in names:
        cell = {"latency_ms": None, "throughput": None, "providers": sessions[name].get_providers()}
        if samples[name]:
            stats = percentiles(samples[name])
            cell = {"latency_ms": stats, "throughput": 1000.0 / stats["mean"],
                    "cpu_ms": percentiles(cpu_samples[name])}
            cell["providers"] = sessions[name].get_providers()
            if spec.get("samples"):
                cell["samples_ms"] = samples[name]
                cell["cpu_samples_ms"] = cpu_samples[name]
            if spec.get("node_placement"):
                cell["node_placement"] = node_placement(spec["models"][name], spec, feeds[name][0])
        result[name] = cell
    return result


def node_placement(model_path, spec, feed):
    """Share of the model's node runs on each execution provider, from onnxruntime's own profile of
    one inference (``{"nodes": n, "by_provider": {provider: share}}``): whether a GPU really ran it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeslim-profile-") as tmp:
        session = make_session(model_path, dict(spec, profile_prefix=os.path.join(tmp, "profile")))
        session.run(None, feed)
        with open(session.end_profiling(), encoding="utf-8") as handle:
            events = json.load(handle)
    counts = {}
    for event in events:
        provider = (event.get("args") or {}).get("provider")
        if event.get("cat") == "Node" and provider and event.get("name", "").endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
    total = sum(counts.values())
    return {"nodes": total, "by_provider": {p: round(c / total, 4) for p, c in sorted(counts.items())} if total else {}}


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
    inputs = load_inputs(spec["inputs"])
    (name, path), = spec["models"].items()
    session = make_session(path, spec)
    feeds = [{key: aligned(value) for key, value in feed.items()} for feed in feeds_for(session, inputs)]
    for w in range(max(2 * len(feeds), int(spec.get("warmup", 1)))):  # every input shape seen twice
        session.run(None, feeds[w % len(feeds)])
    for r in range(int(spec["runs"])):
        feed = feeds[r % len(feeds)]
        os.getloadavg()
        session.run(None, feed)
        os.ctermid()
    return {name: {"runs": int(spec["runs"])}}


def main(argv):
    spec_path, result_path = argv[1], argv[2]
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    mode = spec.get("mode", "latency")
    if mode == "count":
        result = run_count(spec)
    elif mode == "memory":
        pin(spec.get("affinity"))
        (name, path), = spec["models"].items()
        result = {name: {"peak_memory_mb": measure_memory(spec, path, load_inputs(spec["inputs"]))}}
    else:
        result = run_latency(spec)
        if spec.get("memory"):
            for name, path in spec["models"].items():
                if "error" not in result[name]:
                    result[name]["peak_memory_mb"] = memory_in_child(spec, name, path, spec_path)
    result[MACHINE_KEY] = machine()
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


def memory_in_child(spec, name, path, spec_path):
    """Run ``memory`` mode for one model in a fresh interpreter, so models never share a peak."""
    child_spec = dict(spec, mode="memory", models={name: path}, outputs=None,
                      inputs=(spec.get("model_inputs") or {}).get(name, spec["inputs"]))
    base = os.path.splitext(spec_path)[0] + f".mem-{abs(hash(name))}"
    with open(base + ".json", "w", encoding="utf-8") as handle:
        json.dump(child_spec, handle)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), base + ".json", base + ".out.json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    with open(base + ".out.json", encoding="utf-8") as handle:
        return json.load(handle)[name]["peak_memory_mb"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
