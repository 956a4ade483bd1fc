"""Decisions by capability (cvlab.core.device), each branch tested by faking the capability: no GPU needed."""
from __future__ import annotations

import types
import warnings

import pytest
import torch

from cvlab.core import device as devices
from cvlab.core.config import make_config
from cvlab.core.device import Capabilities, decide_compile, decide_optimizer_kernels, decide_precision, make_plan
from cvlab.core.errors import UsageError

ALL = frozenset({"adam", "adamw", "sgd"})


def cuda(capability, name="NVIDIA GPU", fused=ALL, compile=True):
    return Capabilities(kind="cuda", name=name, capability=capability, bf16=devices.cuda_bf16_native(capability),
                        fp16=True, fused=fused, foreach=ALL, compile=compile,
                        compile_note="" if compile else "no Triton")


H100, A100, T4, V100, P100 = cuda((9, 0), "H100"), cuda((8, 0), "A100"), cuda((7, 5), "T4"), cuda((7, 0), "V100"), \
    cuda((6, 0), "P100")
NPU_910B = Capabilities(kind="npu", name="Ascend910B3", bf16=True, fp16=True, compile=False, compile_note="npu")
NPU_910A = Capabilities(kind="npu", name="Ascend910A", bf16=False, fp16=True, compile=False, compile_note="npu")
CPU = Capabilities(kind="cpu", name="cpu", bf16=True, fp16=False, fused=ALL, foreach=ALL, compile=True)
MPS = Capabilities(kind="mps", name="mps", bf16=True, fp16=True, compile=False, compile_note="mps")


# ---------------------------------------------------------------------------- precision

@pytest.mark.parametrize("caps, expected", [(H100, "bf16"), (A100, "bf16"), (T4, "fp16"), (V100, "fp16"),
                                            (P100, "fp32"), (NPU_910B, "bf16"), (NPU_910A, "fp16"),
                                            (CPU, "fp32"), (MPS, "fp32")])
def test_auto_precision_by_capability(caps, expected):
    precision, note = decide_precision("auto", caps)
    assert precision == expected
    assert (note is not None) == (caps is P100)  # only the fallback below tensor cores is worth a note


@pytest.mark.parametrize("caps", [H100, T4, NPU_910A, CPU, MPS])
def test_fp32_is_fp32_everywhere(caps):
    assert decide_precision("fp32", caps) == ("fp32", None)


def test_explicit_requests_that_cannot_run_are_usage_errors():
    with pytest.raises(UsageError, match="fp16 autocast is not supported on the CPU"):
        decide_precision("fp16", CPU)
    with pytest.raises(UsageError, match="bf16 is not supported natively on T4"):
        decide_precision("bf16", T4)
    with pytest.raises(UsageError, match="Ascend910A"):
        decide_precision("bf16", NPU_910A)
    assert decide_precision("bf16", CPU) == ("bf16", None)  # asked for: CPU autocast runs bf16
    assert decide_precision("fp16", T4) == ("fp16", None)


def test_fp16_plans_carry_a_grad_scaler():
    cfg = make_config("fast")
    assert make_plan(cfg, T4).grad_scaler and make_plan(cfg, NPU_910A).grad_scaler
    assert not make_plan(cfg, H100).grad_scaler and not make_plan(cfg, NPU_910B).grad_scaler


def test_cuda_bf16_reads_the_compute_capability_not_the_emulating_api(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a T4 (emulation); the probe must say no."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(devices, "kernels_available", lambda optimizer, flag, device: True)
    monkeypatch.setattr(devices, "_triton_works", lambda: True)
    caps = devices._probe(torch.device("cuda"))
    assert (caps.kind, caps.name, caps.capability, caps.bf16, caps.fp16) == ("cuda", "Tesla T4", (7, 5), False, True)
    assert caps.fused == ALL and caps.compile
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert devices._probe(torch.device("cuda")).bf16


def fake_npu(monkeypatch, name, api=None):
    npu = types.SimpleNamespace(get_device_name=lambda device=None: name)
    if api is not None:
        npu.is_bf16_supported = api
    monkeypatch.setattr(torch, "npu", npu, raising=False)


@pytest.mark.parametrize("name, expected", [("Ascend910B1", True), ("Ascend910B3", True), ("Ascend910B4_1", True),
                                            ("Ascend910_9391", True), ("Ascend910_9362", True),
                                            ("Ascend910A", False), ("Ascend910ProA", False), ("Ascend910ProB", False),
                                            ("Ascend910B", False), ("Ascend910PremiumA", False),
                                            ("Ascend310P3", False)])
def test_npu_bf16_by_chip_name_where_torch_npu_has_no_api(monkeypatch, name, expected):
    fake_npu(monkeypatch, name)
    assert devices.npu_bf16_native(name) is expected


def test_npu_bf16_asks_torch_npu_first(monkeypatch):
    fake_npu(monkeypatch, "Ascend910B3", api=lambda: False)
    assert devices.npu_bf16_native("Ascend910B3") is False
    fake_npu(monkeypatch, "Ascend910A", api=lambda: True)
    assert devices.npu_bf16_native("Ascend910A") is True
    fake_npu(monkeypatch, "Ascend910A", api=lambda: 1 / 0)  # a broken API: the name decides
    assert devices.npu_bf16_native("Ascend910A") is False


def test_npu_probe_and_grad_scaler(monkeypatch):
    fake_npu(monkeypatch, "Ascend910A", api=lambda: False)

    class NpuScaler:
        pass

    torch.npu.amp = types.SimpleNamespace(GradScaler=NpuScaler)
    monkeypatch.setattr(devices, "kernels_available", lambda optimizer, flag, device: False)
    npu = types.SimpleNamespace(type="npu", index=None)  # torch.device("npu") needs torch_npu installed
    caps = devices._probe(npu)
    assert (caps.kind, caps.bf16, caps.fp16, caps.compile) == ("npu", False, True, False)
    assert "NPU" in caps.compile_note
    plan = make_plan(make_config("fast"), caps)
    assert (plan.precision, plan.grad_scaler, plan.optimizer_kernels) == ("fp16", True, "default")
    assert isinstance(devices.make_grad_scaler(npu), NpuScaler)


# ---------------------------------------------------------------------------- optimizer kernels

@pytest.mark.parametrize("impl, optimizer, caps, kernels, noted", [
    ("auto", "adam", H100, "fused", False),
    ("auto", "sgd", T4, "fused", False),
    ("auto", "sgd", cuda((9, 0), fused=frozenset({"adam", "adamw"})), "default", True),  # torch without fused SGD
    ("auto", "adam", CPU, "default", False),        # torch's default off CUDA, nothing to say
    ("auto", "adam", NPU_910B, "default", False),
    ("default", "adam", H100, "default", False),    # the handout preset: what a plain torch.optim.Adam gets
    ("fused", "adam", CPU, "fused", False),
    ("fused", "adam", MPS, "default", True),
    ("foreach", "sgd", H100, "foreach", False),
    ("foreach", "sgd", NPU_910A, "default", True),
    ("forloop", "adamw", H100, "forloop", False),
])
def test_optimizer_kernels_only_where_torch_has_them(impl, optimizer, caps, kernels, noted):
    got, note = decide_optimizer_kernels(impl, optimizer, caps)
    assert got == kernels and (note is not None) == noted
    if note:
        assert "\n" not in note and "torch's default" in note


def test_kernel_probe_reads_the_installed_torch(monkeypatch):
    cpu = torch.device("cpu")
    assert devices.kernels_available("sgd", "foreach", cpu)  # every supported torch has foreach SGD

    class OldSGD(torch.optim.Optimizer):  # a torch whose SGD has no `fused` argument
        def __init__(self, params, lr=0.1, momentum=0, foreach=None):
            super().__init__(params, dict(lr=lr))

    class RefusingAdam(torch.optim.Adam):  # takes `fused` but not for this device
        def __init__(self, params, lr=1e-3, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
            super().__init__(params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", OldSGD)
    monkeypatch.setattr(torch.optim, "Adam", RefusingAdam)
    assert not devices.kernels_available("sgd", "fused", cpu)
    assert not devices.kernels_available("adam", "fused", cpu)


def test_engine_kernel_flags_follow_the_decisions(monkeypatch):
    from cvlab.core.optim import optimizer_impl_kwargs
    params = [torch.zeros(2, requires_grad=True)]
    monkeypatch.setattr(devices, "probe", lambda device: CPU)
    assert optimizer_impl_kwargs("auto", params) == {}
    assert optimizer_impl_kwargs("default", params) == {}
    assert optimizer_impl_kwargs("fused", params) == {"fused": True}
    assert optimizer_impl_kwargs("forloop", params) == {"foreach": False}
    monkeypatch.setattr(devices, "probe", lambda device: MPS)
    assert optimizer_impl_kwargs("fused", params) == {}


# ---------------------------------------------------------------------------- compile, autotuning, presets

def test_compile_only_where_it_works(monkeypatch):
    assert decide_compile(True, H100) == (True, None)
    assert decide_compile(False, NPU_910B) == (False, None)
    for caps in (NPU_910B, MPS, cuda((7, 5), compile=False)):
        on, note = decide_compile(True, caps)
        assert not on and note.startswith("compile off: ")
    assert not devices.compile_support("npu")[0] and not devices.compile_support("mps")[0]
    monkeypatch.setattr(devices, "_triton_works", lambda: False)
    works, note = devices.compile_support("cuda")
    assert not works and "Triton" in note
    assert devices.compile_support("cpu")[0] == devices._cxx_found()
    monkeypatch.setattr(devices, "_cxx_found", lambda: False)
    works, note = devices.compile_support("cpu")
    assert not works and "C++ compiler" in note


def test_handout_preset_is_exact_on_every_device():
    """The handout's kernels everywhere: fp32, torch's default Adam, no autotuning, no compile, NCHW."""
    for caps in (H100, T4, P100, NPU_910B, NPU_910A, CPU, MPS):
        plan = make_plan(make_config("handout"), caps)
        assert (plan.precision, plan.grad_scaler, plan.optimizer_kernels, plan.compile, plan.channels_last,
                plan.cudnn_benchmark, plan.notes) == ("fp32", False, "default", False, False, False, ())


def test_fast_preset_by_device():
    fast = make_config("fast")
    h100 = make_plan(fast, H100)
    assert (h100.precision, h100.optimizer_kernels, h100.channels_last, h100.cudnn_benchmark) == \
        ("bf16", "fused", True, True)
    assert make_plan(fast, T4).precision == "fp16" and make_plan(fast, V100).optimizer_kernels == "fused"
    cpu = make_plan(fast, CPU)
    assert (cpu.precision, cpu.optimizer_kernels, cpu.cudnn_benchmark) == ("fp32", "default", False)
    compiled = make_plan(make_config("fast", compile=True), NPU_910B)
    assert not compiled.compile and len(compiled.notes) == 1


def test_apply_plan_sets_autotuning_on_cuda_only_and_warns_each_note(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    plan = make_plan(make_config("fast", compile=True, optimizer_impl="foreach"), NPU_910A)
    with pytest.warns(UserWarning) as caught:
        devices.apply_plan(plan, torch.device("cpu"))
    assert [str(w.message) for w in caught] == list(plan.notes) and len(plan.notes) == 2
    assert torch.backends.cudnn.benchmark is False
    devices.apply_plan(make_plan(make_config("fast"), H100), torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


def test_build_trainer_follows_the_plan(monkeypatch):
    """A compile request where compile does not work trains eagerly, with one warning."""
    from conftest import tiny_config
    from cvlab.core.engine import build_trainer
    monkeypatch.setattr(devices, "probe", lambda device: Capabilities(
        kind="cpu", name="cpu", bf16=True, compile=False, compile_note="no C++ compiler (faked)"))
    with pytest.warns(UserWarning) as caught:
        t = build_trainer(tiny_config(compile=True, optimizer_impl="fused", epochs=1))
    assert [str(w.message).split(":")[0] for w in caught] == ["optimizer_impl fused", "compile off"]
    assert t.train_step.model is t.model and not t.plan.compile
    assert t.plan.optimizer_kernels == "default" and not t.optimizer.defaults.get("fused")


def test_real_cpu_probe():
    caps = devices.probe(torch.device("cpu"))
    assert caps.kind == "cpu" and caps.bf16 and not caps.fp16 and caps.capability is None
    assert "adam" in caps.foreach
    assert devices.probe(torch.device("cpu")) is caps  # read once
    assert set(devices.tf32_state()) == {"cudnn_conv", "matmul", "float32_matmul_precision", "api"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_tf32_state_reads_the_api_the_installed_torch_has(monkeypatch):
    """torch >= 2.9 has `fp32_precision` ("none" defers to the parent); reading the old `allow_tf32` flags after
    the new API was used raises there. Older releases have only `allow_tf32`."""
    import types

    class Refusing:  # torch >= 2.9 after someone set fp32_precision: the old flag raises
        fp32_precision = "tf32"

        @property
        def allow_tf32(self):
            raise RuntimeError("mixing allow_tf32 and fp32_precision is not supported")

    backends = types.SimpleNamespace(fp32_precision="ieee",
                                     cudnn=types.SimpleNamespace(fp32_precision="none", conv=Refusing()),
                                     cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(fp32_precision="none")))
    monkeypatch.setattr(torch, "backends", backends)
    state = devices.tf32_state()
    assert (state["cudnn_conv"], state["matmul"], state["api"]) == (True, False, "fp32_precision")
    old = types.SimpleNamespace(cudnn=types.SimpleNamespace(allow_tf32=True),
                                cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=True)))
    monkeypatch.setattr(torch, "backends", old)  # torch 2.1: no fp32_precision anywhere
    state = devices.tf32_state()
    assert (state["cudnn_conv"], state["matmul"], state["api"]) == (True, True, "allow_tf32")
