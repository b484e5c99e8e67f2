"""Which device and which precision training and prediction run on.

Shared by :mod:`autoseg.trainers` and :mod:`autoseg.inference`, so ``--device`` and
``--precision`` mean the same on every command and ``auto`` picks the same on the same machine.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from autoseg.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple MPS is not available to torch")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: choose auto, cpu, cuda or mps")
    return torch.device(name)


_CPU_BF16: bool | None = None


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 autocast pays off on this CPU; decided once per process.

    On Linux the CPU flags say whether bf16 is native (AVX512-BF16 or AMX); elsewhere a
    small convolution is timed in both precisions. Emulated bf16 is slower than fp32.
    """
    global _CPU_BF16
    if _CPU_BF16 is not None:
        return _CPU_BF16
    ok = False
    try:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("no oneDNN")
        conv = nn.Conv3d(4, 8, 3, padding=1)
        x = torch.randn(1, 4, 8, 16, 16)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        if y.dtype != torch.bfloat16 or not torch.isfinite(y).all():
            raise RuntimeError("bf16 conv failed")
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            flags = cpuinfo.read_text(errors="ignore")
            ok = "avx512_bf16" in flags or "amx_bf16" in flags
        else:
            def timed(enabled: bool) -> float:
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                        conv(x)
                    best = min(best, time.perf_counter() - t)
                return best
            ok = timed(True) < 0.9 * timed(False)
    except Exception:
        ok = False
    _CPU_BF16 = ok
    return ok


def resolve_precision(requested: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision {requested}: choose auto, fp32, bf16 or fp16")
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            requested = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            requested = "fp32"  # MPS autocast coverage is still partial
    if requested == "fp32":
        return None, False
    if requested == "bf16":
        return torch.bfloat16, False
    if device.type == "cpu":
        raise UserError("--precision fp16 is not supported on CPU; use bf16 or fp32")
    return torch.float16, device.type == "cuda"
