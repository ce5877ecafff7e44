"""Which floating-point precision a run on the CPU can afford.

bf16 autocast halves a CPU step on processors that compute in bf16 natively (AVX512-BF16, AMX),
but elsewhere PyTorch emulates it, 10-40x slower than fp32: a 2-core AVX2 machine took 40 s a
step of the tiny demo instead of 0.9 s. So a bf16 precision asked for on a CPU is kept only
where the CPU has native bf16 and PyTorch may use it, and becomes ``32-true`` otherwise, with
one line that says so and why. GPUs are never touched.

``FUNDUS_LIT_CPU_BF16`` overrides the detection: ``native`` keeps bf16 on any CPU (to study its
numerics), ``emulated`` always falls back (to reproduce a machine without native bf16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

ENV = "FUNDUS_LIT_CPU_BF16"

#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` levels at which it still uses bf16 instructions
_ONEDNN_BF16 = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")


@dataclass(frozen=True)
class CpuBf16:
    """Whether bf16 runs natively on this CPU, and the evidence for the message."""

    native: bool
    reason: str


def cpu_bf16() -> CpuBf16:
    """Native bf16 needs the instructions (AVX512-BF16 or AMX) and oneDNN, which runs the
    convolutions and matrix products, allowed to use them: ``ONEDNN_MAX_CPU_ISA=AVX2`` emulates
    bf16 even on a CPU that has them (measured 13x slower than fp32 on ResNet-18)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("native", "emulated"):
        return CpuBf16(forced == "native", f"{ENV}={forced}")
    if forced:
        raise ValueError(f"{ENV} must be 'native' or 'emulated', got {forced!r}")
    instructions = [
        name
        for name, probe in (
            ("AVX512-BF16", getattr(torch.cpu, "_is_avx512_bf16_supported", None)),
            ("AMX", getattr(torch.cpu, "_is_amx_tile_supported", None)),
        )
        if probe is not None and probe()
    ]
    if not instructions:
        capability = torch.backends.cpu.get_cpu_capability()
        return CpuBf16(False, f"this CPU has no native bf16 (its best vector unit: {capability})")
    found = "/".join(instructions)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip().upper()
        if cap and not any(level in cap for level in _ONEDNN_BF16):
            return CpuBf16(False, f"the CPU has {found} but {name}={cap} keeps oneDNN from it")
    return CpuBf16(True, f"native bf16 ({found})")


def runs_on_cpu(accelerator: object) -> bool:
    """Whether Lightning will train on the CPU with this ``trainer.accelerator`` value."""
    name = str(accelerator if accelerator is not None else "auto").lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def cpu_precision(requested: object) -> tuple[str | int | None, str | None]:
    """``(precision, message)`` for a run on the CPU: bf16 kept where it is native, ``32-true``
    where it is emulated; the message (None when nothing is worth saying) says which and why."""
    if requested is None or "bf16" not in str(requested):
        return requested, None
    found = cpu_bf16()
    if found.native:
        return requested, f"precision {requested} on the CPU: {found.reason}"
    return "32-true", (
        f"precision {requested} -> 32-true: {found.reason}, and emulated bf16 is 10-40x slower "
        f"than fp32 (set {ENV}=native to keep it)"
    )
