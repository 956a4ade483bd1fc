"""Device choice (cuda > npu > mps > cpu) and the autocast context used everywhere.

Adding a backend is one entry here: the engine only calls `resolve_device`,
`resolve_precision` and `autocast`.
"""
from __future__ import annotations

import contextlib

import torch

from .config import ACCELERATORS
from .errors import UsageError


def npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the "npu" device with torch)
    except ImportError:
        return False
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "npu":
        return npu_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return False


def resolve_device(name: str) -> torch.device:
    """'auto' picks the first available of ACCELERATORS (cuda, npu, mps), else the cpu; an explicit
    name must exist."""
    if name == "auto":
        for kind in ACCELERATORS:
            if _available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    if not _available(name):
        raise UsageError(f"device {name!r} is not available here; use --device auto or cpu")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("npu", "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 on GPUs/NPUs that support it, fp16 on older GPUs (V100, T4), fp32 on CPU."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UsageError("fp16 autocast is not supported on the CPU; use --set precision=bf16 or fp32")
        return precision
    if device.type == "cpu":
        return "fp32"
    return "bf16" if bf16_supported(device) else "fp16"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """An autocast context for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def needs_grad_scaler(precision: str) -> bool:
    return precision == "fp16"


def device_name(device: torch.device) -> str:
    """Human-readable name of the accelerator (e.g. 'NVIDIA H100 80GB HBM3') or the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "npu":
        return torch.npu.get_device_name(device)
    if device.type == "cpu":
        import platform
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()
