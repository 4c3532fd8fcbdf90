"""Which INT8 kernels a CPU runs, and what quantization they need to be right.

onnxruntime's u8s8 INT8 kernels add pairs of u8 x s8 products in 16 bits on x86 without VNNI (AVX2,
AVX-512 without VNNI) and saturate there; 7-bit weights (``reduce_range``, onnxruntime's guidance)
cannot overflow. VNNI (AVX-512 VNNI, AVX-VNNI, AMX) and ARM kernels need nothing. This module reads
this host's features from CPUID, as onnxruntime's kernel dispatch does, and decides ``reduce_range``
for a recipe's devices.
"""

from __future__ import annotations

import functools

from edgeslim.targets.harness import ISA_FLAGS, cpu_isa


def int8_saturates_here() -> bool:
    """Whether onnxruntime's u8s8 INT8 kernels can saturate on this CPU: x86 without VNNI (AVX2 and
    AVX-512 without it add pairs of u8 x s8 products in 16 bits). onnxruntime's guidance there is
    7-bit weights (``reduce_range``), which cannot overflow; VNNI and ARM kernels need nothing."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not set(cpu_features()) & VNNI


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...]:
    """The CPU's INT8-relevant features as its CPUID instruction reports them (what onnxruntime's
    kernel dispatch reads; under an emulator that is the emulated CPU), else ``/proc/cpuinfo``.

    CPUID is read by py-cpuinfo (about a second, once per process). Its flag names are mapped to the
    kernel's (``avx512vnni`` -> ``avx512_vnni``); it does not report AVX-VNNI, so a CPU with AVX-VNNI but
    no AVX-512 VNNI is taken as saturating: ``reduce_range`` costs it a little accuracy, never a wrong result."""
    try:
        from cpuinfo.cpuinfo import _get_cpu_info_from_cpuid

        flags = set(_get_cpu_info_from_cpuid().get("flags") or [])
    except Exception:  # noqa: BLE001 - no CPUID probe here (not x86, no exec memory): the kernel's view
        flags = set()
    if not flags:
        return tuple(cpu_isa())
    renamed = {"avx512vnni": "avx512_vnni", "amxint8": "amx_int8"}
    flags = {renamed.get(flag, flag) for flag in flags}
    return tuple(flag for flag in ISA_FLAGS if flag in flags)


def resolve_reduce_range(reduce_range: bool | None) -> bool:
    """``reduce_range`` as given, or (``None``, the default) what this CPU needs (see above)."""
    return int8_saturates_here() if reduce_range is None else bool(reduce_range)


VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}


def device_saturates(profile) -> bool:
    """Whether u8s8 INT8 can saturate on a device: an x86 CPU without VNNI. Local and cuda devices are
    this host; another x86 device counts as saturating unless its profile lists a VNNI feature in
    ``target.isa`` (7-bit weights cost a little accuracy; a saturating kernel costs far more)."""
    if profile.target.arch != "x86_64":
        return False
    if profile.access.kind in ("local", "cuda"):
        return int8_saturates_here()
    return not set(profile.target.isa or ()) & VNNI


def reduce_range_for(profiles) -> bool:
    """The ``reduce_range`` default for a recipe: on when any of its devices (or, with none, this
    host) would saturate u8s8 INT8 kernels."""
    return any(device_saturates(p) for p in profiles) if profiles else int8_saturates_here()
