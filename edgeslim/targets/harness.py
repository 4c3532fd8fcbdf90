"""The measuring process: runs ONNX models with onnxruntime and reports latency, memory and outputs.

Self-contained (standard library, numpy and onnxruntime only): the ssh and qemu runners copy it, alone,
to the device or the emulated sysroot and run ``python harness.py SPEC.json RESULT.json`` there.

Spec keys: ``models`` ({name: onnx path}); ``inputs`` (``.npz`` of ``"<index>/<input name>"``) and
``model_inputs`` ({name: ``.npz``} for models with their own token ids for the same texts); ``warmup``,
``runs``, ``min_time_s``; the session's ``threads``, ``inter_op_threads``, ``providers``,
``provider_options``, ``session_options``, ``graph_optimization_level``; ``affinity``; ``memory``;
``outputs`` (``.npz`` to save outputs to); ``samples``; ``node_placement``; ``new_tokens``; and ``mode``:
``latency`` (:func:`run_latency`: interleaved timing), ``decode`` (:func:`run_decode`: greedy
generation of decoders) or ``memory`` (:func:`measure_memory`, in a fresh child per model); the
instruction count has its own driver beside this file (``instructions.py``). The result maps each model name to its figures (or
``{"error": ...}``) and ``"__machine__"`` to the architecture, ISA and versions it ran on.
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
    if spec.get("parent_mode") == "decode":  # a decoder: the prompt's prefill, through its KV cache
        decoder = Decoder(session)
        for i in range(max(2, min(int(spec.get("warmup", 1)), 5))):
            decoder.prefill(inputs[i % len(inputs)]["input_ids"])
    else:
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
    one inference (``{"nodes": n, "by_provider": {provider: share}, "fallback_ops": {op: runs}}``):
    whether a GPU really ran it, and which operator types fell back to another provider than the
    first one asked for (the kernels that provider lacks, e.g. dynamic quantization on CUDA)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeslim-profile-") as tmp:
        session = make_session(model_path, dict(spec, profile_prefix=os.path.join(tmp, "profile")))
        session.run(None, feed)
        with open(session.end_profiling(), encoding="utf-8") as handle:
            events = json.load(handle)
    first = (spec.get("providers") or ["CPUExecutionProvider"])[0]
    counts, fallback = {}, {}
    for event in events:
        args = event.get("args") or {}
        provider = args.get("provider")
        if event.get("cat") == "Node" and provider and event.get("name", "").endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
            if provider != first:
                fallback[args.get("op_name", "?")] = fallback.get(args.get("op_name", "?"), 0) + 1
    total = sum(counts.values())
    return {"nodes": total, "by_provider": {p: round(c / total, 4) for p, c in sorted(counts.items())} if total else {},
            "fallback_ops": dict(sorted(fallback.items()))}


class Decoder:
    """Greedy generation with one session of an exported decoder, batch 1: Optimum's
    ``text-generation-with-past`` layout (``input_ids``, ``attention_mask``, ``position_ids``,
    ``past_key_values.N.key|value`` in; ``logits`` and ``present.N.key|value`` out), or a graph without
    cache inputs, which is then re-run on the whole sequence at each step."""

    def __init__(self, session):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_names = set(inputs)
        self.past = [name for name in inputs if name.startswith("past_key_values")]
        self.outputs = [o.name for o in session.get_outputs()]
        self.empty_past = {}
        for name in self.past:
            dims = inputs[name].shape
            if not isinstance(dims[1], int) or not isinstance(dims[3], int):
                raise ValueError("the ONNX decoder's past_key_values inputs have no fixed head count/size; re-export it")
            dtype = np.float16 if "float16" in inputs[name].type else np.float32
            self.empty_past[name] = np.zeros((1, dims[1], 0, dims[3]), dtype=dtype)

    @property
    def has_cache(self):
        return bool(self.past)

    def forward(self, ids, cache, total):
        """Logits of the positions in ``ids`` ([1, n]) after ``total - n`` cached tokens, and the new cache."""
        n = ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64)}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(total - n, total, dtype=np.int64)[None, :]
        if self.past:
            feeds.update(cache if cache is not None else self.empty_past)
        named = dict(zip(self.outputs, self.session.run(None, feeds)))
        present = {name.replace("present", "past_key_values", 1): value
                   for name, value in named.items() if name.startswith("present")}
        return named["logits"], present

    def prefill(self, prompt_ids):
        """Run the prompt; return (first greedy token, state for :meth:`step`)."""
        logits, cache = self.forward(prompt_ids, None, prompt_ids.shape[1])
        return int(np.argmax(logits[0, -1])), (prompt_ids, cache)

    def step(self, token, state):
        """Feed one token (through the cache, or the whole sequence without one); next greedy token."""
        ids, cache = state
        ids = np.concatenate([ids, np.array([[token]], dtype=np.int64)], axis=1)
        if self.has_cache:
            logits, cache = self.forward(ids[:, -1:], cache, ids.shape[1])
        else:
            logits, cache = self.forward(ids, None, ids.shape[1])
        return int(np.argmax(logits[0, -1])), (ids, cache)

    def greedy(self, prompt_ids, new_tokens):
        token, state = self.prefill(prompt_ids)
        tokens = [token]
        while len(tokens) < new_tokens:
            token, state = self.step(token, state)
            tokens.append(token)
        return tokens


def run_decode(spec):
    """Interleaved greedy generation of every decoder model on the prompts (each input's ``input_ids``):
    per model the prefill latency (prompt -> first token), decode ms per token, tokens/s, and with
    ``outputs`` the greedy tokens of each prompt (``model/i/tokens``) for parity checks."""
    pin(spec.get("affinity"))
    shared = load_inputs(spec["inputs"])
    own = spec.get("model_inputs") or {}
    new_tokens = int(spec.get("new_tokens", 20))
    decoders, prompts, result, saved = {}, {}, {}, {}
    for name, path in spec["models"].items():
        try:
            decoders[name] = Decoder(make_session(path, spec))
            prompts[name] = [feed["input_ids"] for feed in (load_inputs(own[name]) if name in own else shared)]
            for i, ids in enumerate(prompts[name]):
                tokens = decoders[name].greedy(ids, new_tokens)
                if spec.get("outputs"):
                    saved[f"{name}/{i}/tokens"] = np.asarray(tokens, dtype=np.int64)
        except Exception as exc:  # one broken model must not stop the others being measured
            decoders.pop(name, None)
            result[name] = {"error": _one_line(exc)}
    names = list(decoders)
    prefill = {name: [] for name in names}
    per_token = {name: [] for name in names}
    warmup, runs = int(spec.get("warmup", 0)), int(spec.get("runs", 0))
    clock = time.perf_counter_ns
    for r in range(warmup + runs):
        shift = r % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            ids = prompts[name][r % len(prompts[name])]
            start = clock()
            token, state = decoders[name].prefill(ids)
            after_prefill = clock()
            for _ in range(new_tokens - 1):
                token, state = decoders[name].step(token, state)
            end = clock()
            if r >= warmup:
                prefill[name].append((after_prefill - start) / 1e6)
                per_token[name].append((end - after_prefill) / 1e6 / max(new_tokens - 1, 1))
    if spec.get("outputs"):
        np.savez(spec["outputs"], **saved)
    for name in names:
        cell = {"latency_ms": None, "throughput": None, "providers": decoders[name].session.get_providers(),
                "new_tokens": new_tokens}
        if prefill[name]:
            total_ms = [p + t * (new_tokens - 1) for p, t in zip(prefill[name], per_token[name])]
            cell.update(latency_ms=percentiles(prefill[name]), throughput=1000.0 / float(np.mean(total_ms)),
                        decode_tokens_per_s=1000.0 / float(np.mean(per_token[name])))
            if spec.get("samples"):
                cell["samples_ms"] = per_token[name]
        result[name] = cell
    return result


def main(argv):
    spec_path, result_path = argv[1], argv[2]
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    mode = spec.get("mode", "latency")
    if mode == "decode":
        result = run_decode(spec)
        if spec.get("memory"):
            for name, path in spec["models"].items():
                if "error" not in result[name]:
                    result[name]["peak_memory_mb"] = memory_in_child(spec, name, path, spec_path)
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
    child_spec = dict(spec, mode="memory", parent_mode=spec.get("mode", "latency"), models={name: path}, outputs=None,
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
