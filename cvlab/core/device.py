"""The device, what it and the installed torch can do, and every decision that depends on that.

One place for all of it: `probe(device)` reads the capabilities once (`Capabilities`), `make_plan(cfg,
caps)` turns a config's requests into what runs there (`Plan`), with a one-line note for each request
that cannot be honoured as asked. The engine, `cvlab bench` and `cvlab doctor` only call these.

Decisions (each unit-tested with faked capabilities in tests/test_device.py):

- precision "auto": CUDA compute capability >= 8.0 -> bf16 (native bf16 tensor cores; cuDNN has no native
  bf16 convolutions below sm80, and `torch.cuda.is_bf16_supported()` counts emulation by default, so
  cvlab reads the capability); sm 7.0-7.5 (V100, T4) -> fp16 with a GradScaler; below sm 7.0 -> fp32
  (no tensor cores). Ascend NPU -> bf16 on chips that have it (910B, 910_93 and later: torch_npu's
  `torch.npu.is_bf16_supported()`, or the chip name where that API is missing), else fp16 with a
  GradScaler (910A/910ProA/910ProB). CPU and MPS -> fp32. An explicit bf16 where the chip has none, or
  fp16 on the CPU, is a UsageError.
- optimizer kernels (`optimizer_impl`): "default" = torch's own choice (what the handout's plain
  `torch.optim.Adam(...)` gets: multi-tensor foreach on CUDA, a per-parameter loop on the CPU); "auto" =
  fused where this torch has a fused kernel for the optimizer on this device and the device is CUDA,
  else torch's default; "fused"/"foreach" where this torch has them, else torch's default with a note;
  "forloop" everywhere.
- torch.compile: on CUDA with a working Triton, on the CPU with a C++ compiler; never on NPUs (inductor
  has no NPU backend) or MPS (inductor's Metal backend is a prototype); elsewhere off with a note.
- cuDNN autotuning (`cudnn_benchmark`): applied on CUDA only, as configured (the handout preset keeps
  PyTorch's default, off).
- TF32: cvlab never changes PyTorch's TF32 flags. PyTorch's defaults let cuDNN use TF32 for
  convolutions on sm >= 8.0 GPUs (`torch.backends.cudnn.allow_tf32 = True`) and keep matrix products in
  full fp32 (`torch.backends.cuda.matmul.allow_tf32 = False`), so "fp32" on such a GPU computes what the
  handout's own code computes there. `tf32_state()` reports the flags.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import re
import shutil
import warnings
from dataclasses import dataclass

import torch

from .config import ACCELERATORS
from .errors import UsageError

# ---------------------------------------------------------------------------- which device


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


def device_count(kind: str) -> int:
    """How many devices of `kind` ("cuda", "npu") this process sees; 0 when none or the backend is missing."""
    if not _available(kind):
        return 0
    return torch.cuda.device_count() if kind == "cuda" else torch.npu.device_count() if kind == "npu" else 1


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


# ---------------------------------------------------------------------------- what it can do

OPTIMIZER_CLASSES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}  # config name -> torch.optim class name
# Ascend chips with bf16 (torch_npu: SocVersion >= Ascend910B1): 910B1-B4, the 910_93xx (A3) series and later.
NPU_BF16 = re.compile(r"^Ascend(910B\d|910_9\d|910C|950)")


@dataclass(frozen=True)
class Capabilities:
    """What one device and the installed torch can do; `probe` reads it, tests build it by hand."""

    kind: str                                # "cuda", "npu", "mps" or "cpu"
    name: str                                # e.g. "NVIDIA H100 80GB HBM3", "Ascend910B3"
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (9, 0)
    bf16: bool = False                       # bf16 autocast runs here (natively on GPUs and NPUs)
    fp16: bool = False                       # fp16 autocast runs here (not on the CPU)
    fused: frozenset = frozenset()           # optimizers ("adam", "adamw", "sgd") with fused kernels here
    foreach: frozenset = frozenset()         # optimizers with multi-tensor (foreach) kernels here
    compile: bool = False                    # torch.compile works here
    compile_note: str = ""                   # why not, when it does not
    torch_version: str = torch.__version__


def cuda_bf16_native(capability: tuple[int, int]) -> bool:
    """Native bf16 (tensor cores and cuDNN convolutions) from sm 8.0 (A100, RTX 30) on."""
    return tuple(capability) >= (8, 0)


def npu_bf16_native(name: str) -> bool:
    """bf16 on an Ascend NPU: torch_npu's own answer where it has `torch.npu.is_bf16_supported`, else the
    chip name (910B1-4, 910_93xx and later yes; 910A, 910ProA, 910ProB, 310P no)."""
    api = getattr(getattr(torch, "npu", None), "is_bf16_supported", None)
    if api is not None:
        try:
            return bool(api())
        except Exception:  # an old or broken torch_npu: fall back to the name
            pass
    return bool(NPU_BF16.match(name))


def _optimizer_class(optimizer: str):
    return getattr(torch.optim, OPTIMIZER_CLASSES[optimizer])


def kernels_available(optimizer: str, flag: str, device: torch.device) -> bool:
    """True when this torch's `optimizer` accepts `flag` ("fused" or "foreach") = True for parameters on
    `device` and takes a step with it (tried on a one-element parameter)."""
    cls = _optimizer_class(optimizer)
    if flag not in inspect.signature(cls).parameters:
        return False
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        p.grad = torch.ones_like(p)
        cls([p], lr=0.1, **{flag: True}).step()
    except Exception:  # RuntimeError/ValueError "not supported on this device", missing kernels, ...
        return False
    return True


def _triton_works() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return bool(has_triton())


def _cxx_found() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl"))


def compile_support(kind: str) -> tuple[bool, str]:
    """(works, why not) for torch.compile on a device of this kind with this torch."""
    dynamo = getattr(getattr(torch, "_dynamo", None), "is_dynamo_supported", None)
    if dynamo is not None and not dynamo():
        return False, f"torch.compile is not supported by torch {torch.__version__} on this Python"
    if kind == "npu":
        return False, "torch.compile is not used on Ascend NPUs (inductor has no NPU backend)"
    if kind == "mps":
        return False, "torch.compile is not used on MPS (inductor's Metal backend is a prototype)"
    if kind == "cuda" and not _triton_works():
        return False, "torch.compile needs a working Triton for CUDA (missing, or this GPU is older than sm 7.0)"
    if kind == "cpu" and not _cxx_found():
        return False, "torch.compile needs a C++ compiler for the CPU (none found on PATH)"
    return True, ""


def _probe(device: torch.device) -> Capabilities:
    kind = device.type
    name = device_name(device)
    capability = None
    if kind == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        if torch.version.hip:  # ROCm: its own bf16 answer; the "capability" is not NVIDIA's
            supported = torch.cuda.is_bf16_supported
            bf16 = bool(supported(including_emulation=False) if "including_emulation"
                        in inspect.signature(supported).parameters else supported())
        else:
            bf16 = cuda_bf16_native(capability)
    elif kind == "npu":
        bf16 = npu_bf16_native(name)
    else:
        bf16 = kind in ("cpu", "mps")
    works, note = compile_support(kind)
    return Capabilities(kind=kind, name=name, capability=capability, bf16=bf16, fp16=kind != "cpu",
                        fused=frozenset(o for o in OPTIMIZER_CLASSES if kernels_available(o, "fused", device)),
                        foreach=frozenset(o for o in OPTIMIZER_CLASSES if kernels_available(o, "foreach", device)),
                        compile=works, compile_note=note)


@functools.lru_cache(maxsize=None)
def _probe_cached(kind: str, index: int | None) -> Capabilities:
    return _probe(torch.device(kind, index) if index is not None else torch.device(kind))


def probe(device: torch.device) -> Capabilities:
    """The capabilities of `device` (read once per device and process)."""
    return _probe_cached(device.type, device.index)


probe.cache_clear = _probe_cached.cache_clear  # type: ignore[attr-defined]  # for tests


# ---------------------------------------------------------------------------- decisions

OPTIMIZER_KWARGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False},
                    "default": {}}


def decide_precision(requested: str, caps: Capabilities) -> tuple[str, str | None]:
    """(precision, note): 'auto' by the device (module docstring); an explicit value as asked, or a
    UsageError where it cannot run."""
    if requested == "auto":
        if caps.kind == "cuda" and caps.capability is not None and tuple(caps.capability) < (7, 0):
            return "fp32", f"precision auto -> fp32 on {caps.name} (sm {caps.capability[0]}.{caps.capability[1]}: no tensor cores)"
        if caps.kind in ("cuda", "npu"):
            return ("bf16" if caps.bf16 else "fp16"), None
        return "fp32", None
    if requested == "fp16" and not caps.fp16:
        raise UsageError(f"fp16 autocast is not supported on the {caps.kind.upper()}; "
                         "use --set precision=bf16 or fp32")
    if requested == "bf16" and not caps.bf16:
        raise UsageError(f"bf16 is not supported natively on {caps.name}; use --set precision=fp16 "
                         "(with a GradScaler), auto or fp32")
    return requested, None


def decide_optimizer_kernels(impl: str, optimizer: str, caps: Capabilities) -> tuple[str, str | None]:
    """(kernels, note): one of OPTIMIZER_KWARGS' keys for `optimizer_impl` = `impl` (module docstring)."""
    if impl == "default" or impl == "forloop":
        return impl, None
    if impl == "auto":
        if caps.kind == "cuda":
            if optimizer in caps.fused:
                return "fused", None
            return "default", (f"optimizer_impl auto: torch {caps.torch_version} has no fused {optimizer} kernel "
                               f"for {caps.kind}; using torch's default")
        return "default", None
    available = caps.fused if impl == "fused" else caps.foreach
    if optimizer in available:
        return impl, None
    return "default", (f"optimizer_impl {impl}: torch {caps.torch_version} has no {impl} {optimizer} kernel for "
                       f"{caps.kind}; using torch's default")


def decide_compile(requested: bool, caps: Capabilities) -> tuple[bool, str | None]:
    if not requested or caps.compile:
        return requested, None
    return False, f"compile off: {caps.compile_note}"


@dataclass(frozen=True)
class Plan:
    """What a config gets on one device: the decisions above, and a note for each request changed."""

    precision: str
    grad_scaler: bool        # fp16: scale the loss so small gradients survive
    optimizer_kernels: str   # "fused", "foreach", "forloop" or "default" (torch's own choice)
    compile: bool
    channels_last: bool
    cudnn_benchmark: bool    # what torch.backends.cudnn.benchmark is set to (CUDA; False elsewhere)
    notes: tuple[str, ...] = ()

    @property
    def optimizer_kwargs(self) -> dict:
        return dict(OPTIMIZER_KWARGS[self.optimizer_kernels])


def make_plan(cfg, caps: Capabilities) -> Plan:
    """The plan for `cfg` (a Config) on a device with `caps`; raises UsageError for an impossible precision."""
    precision, p_note = decide_precision(cfg.precision, caps)
    kernels, k_note = decide_optimizer_kernels(cfg.optimizer_impl, cfg.optimizer, caps)
    compiled, c_note = decide_compile(cfg.compile, caps)
    return Plan(precision=precision, grad_scaler=needs_grad_scaler(precision), optimizer_kernels=kernels,
                compile=compiled, channels_last=cfg.channels_last,
                cudnn_benchmark=bool(cfg.cudnn_benchmark) and caps.kind == "cuda",
                notes=tuple(n for n in (p_note, k_note, c_note) if n))


def apply_plan(plan: Plan, device: torch.device) -> None:
    """Set the process-wide backend flags the plan needs, and warn once per note."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    for note in plan.notes:
        warnings.warn(note, stacklevel=3)


def tf32_state() -> dict:
    """PyTorch's TF32 switches as they stand (cvlab never changes them), read through the API the installed
    torch has: `fp32_precision` (torch >= 2.9, where touching the old `allow_tf32` flags after the new API was
    used raises) or `allow_tf32` (older releases). `api` says which."""
    conv = _fp32_precision(["cudnn", "conv"])
    matmul = _fp32_precision(["cuda", "matmul"])
    if conv is not None and matmul is not None:
        return {"cudnn_conv": conv == "tf32", "matmul": matmul == "tf32",
                "float32_matmul_precision": torch.get_float32_matmul_precision(), "api": "fp32_precision"}
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "api": "allow_tf32"}


def _fp32_precision(path: list[str]) -> str | None:
    """The effective `fp32_precision` of torch.backends.<path> ("tf32" or "ieee"): "none" defers to the parent
    (cudnn.conv -> cudnn -> backends). None where this torch has no such API."""
    nodes = [torch.backends]
    for name in path:
        nodes.append(_attribute(nodes[-1], name))
    if any(n is None for n in nodes) or not isinstance(_attribute(nodes[-1], "fp32_precision"), str):
        return None
    for node in reversed(nodes):
        value = _attribute(node, "fp32_precision") or "none"
        if value != "none":
            return value
    return "ieee"


def _attribute(obj, name: str):
    """getattr(obj, name, None), also where torch answers an unknown name with AssertionError (torch 2.1's
    torch.backends.cuda.matmul does)."""
    try:
        return getattr(obj, name, None)
    except AssertionError:
        return None


# ---------------------------------------------------------------------------- precision helpers

def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast runs on `device` (natively on GPUs and NPUs)."""
    return probe(device).bf16


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 where native, fp16 on older GPUs (V100, T4) and NPUs (910A), fp32 on CPU/MPS."""
    return decide_precision(precision, probe(device))[0]


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# How far a device's evaluation may differ from the same weights in fp32 on the CPU, by precision: the largest
# |logit difference| / largest |CPU logit| (and the mean loss, relatively). fp32 leaves room for TF32 convolutions
# (PyTorch's default on sm >= 8.0), bf16 keeps ~3 significant digits. `cvlab doctor` and the GPU tests check it.
EVAL_TOLERANCE = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 6e-2}


def autocast(device: torch.device, precision: str):
    """An autocast context for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def needs_grad_scaler(precision: str) -> bool:
    return precision == "fp16"


def make_grad_scaler(device: torch.device):
    """A GradScaler for fp16 on `device` (torch_npu's own on NPUs, where it has one)."""
    if device.type == "npu":
        npu_amp = getattr(getattr(torch, "npu", None), "amp", None)
        if npu_amp is not None and hasattr(npu_amp, "GradScaler"):
            return npu_amp.GradScaler()
    return torch.amp.GradScaler(device.type)
