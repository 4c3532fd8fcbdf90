"""INT8 that is right on every x86 ISA, checked on an emulated AVX2-only CPU.

onnxruntime's u8s8 INT8 kernels saturate on x86 without VNNI. This host may well have VNNI, so the
quantization runs under ``qemu-x86_64 -cpu Haswell`` (AVX2, no AVX-512, no VNNI: QEMU's TCG does
not emulate AVX-512), where onnxruntime's kernel dispatch, which reads CPUID, picks the AVX2 kernels
exactly as on such a host, and edgeslim's ISA rule (also from CPUID) must turn on ``reduce_range``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _quantize_models import example_inputs, export_torchscript, tiny_bert
from edgeslim.errors import EdgeslimError

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, onnxruntime as ort
from edgeslim.quantize import ort as quantize_ort
from edgeslim.targets import isa
from edgeslim.quantize.specs import quantize_dynamic_int8
feeds = dict(np.load(sys.argv[2] + "/feeds.npz"))

def run(path):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]

src = sys.argv[2] + "/model.onnx"
fp32 = run(src)
def error(path):
    return float(np.abs(fp32 - run(path)).max() / np.abs(fp32).max())
out = {"features": list(isa.cpu_features()), "saturates": isa.int8_saturates_here()}
for per_channel in (False, True):
    raw = quantize_ort.quantize_dynamic(src, sys.argv[2] + f"/raw{per_channel}.onnx", per_channel=per_channel,
                                        reduce_range=False)
    auto = quantize_ort.quantize_dynamic(src, sys.argv[2] + f"/auto{per_channel}.onnx", per_channel=per_channel)
    out[f"full_range_pc{int(per_channel)}"] = error(str(raw))
    out[f"auto_pc{int(per_channel)}"] = error(str(auto))
out["baseline"] = error(str(quantize_dynamic_int8(src, sys.argv[2] + "/baseline.onnx")))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def haswell(tmp_path_factory):
    """``qemu-x86_64 -cpu Haswell`` as a command prefix (fetched from Debian's packages if needed)."""
    import platform

    from edgeslim.targets.qemu_setup import qemu_user_binary

    if platform.machine() != "x86_64":
        pytest.skip("emulating an x86 CPU model needs an x86_64 host here")
    try:
        binary = qemu_user_binary("x86_64", log=lambda message: None)
    except EdgeslimError as exc:
        pytest.skip(f"qemu-x86_64 cannot be set up here: {exc}")
    return [str(binary), "-cpu", "Haswell"]


def test_int8_is_right_on_an_avx2_only_cpu(haswell, tmp_path):
    model = tiny_bert(tmp_path / "hf")
    export_torchscript(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "feeds.npz", **example_inputs())
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    done = subprocess.run(haswell + [sys.executable, str(script), str(REPO), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the emulated CPU is AVX2-only, and edgeslim sees it so (from CPUID, as onnxruntime does)
    assert "avx2" in result["features"] and "avx512_vnni" not in result["features"] and result["saturates"]
    # the precondition: full-range u8s8 INT8 saturates there (tens of percent off the fp32 logits)
    assert result["full_range_pc0"] > 0.2 and result["full_range_pc1"] > 0.2
    # edgeslim's default (and the INT8 teacher baseline) picks 7-bit weights there and stays close
    assert result["auto_pc0"] < 0.10 and result["auto_pc1"] < 0.10 and result["baseline"] < 0.10
