"""GPU tests: `python -m pytest -m gpu` on a machine with a CUDA device (scripts/gpu_acceptance.sh runs them).

Collected everywhere, skipped without a CUDA device. Each uses the tiny model on a few hundred synthetic
images, so the whole file takes seconds on a GPU (plus one torch.compile warm-up, about a minute).
"""
from __future__ import annotations

import pytest
import torch

from conftest import StopAfter, tiny_config
from cvlab.core import device as devices

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (run `python -m pytest -m gpu` on a GPU machine)")]

CUDA = torch.device("cuda")


def sm() -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(CUDA))


def gpu_config(**overrides):
    return tiny_config(device="cuda", **overrides)


def train_losses(t, epochs: int) -> list[float]:
    from cvlab.core.engine import train_one_epoch
    return [train_one_epoch(t.train_step, t.train_loader)["loss"] for _ in range(epochs)]


def weights(model: torch.nn.Module) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def deterministic(monkeypatch):
    """cuDNN's deterministic kernels, no autotuning: the same inputs give the same bits."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


# ---------------------------------------------------------------------------- capability decisions, for real

def test_the_probe_matches_this_gpu():
    caps = devices.probe(CUDA)
    assert caps.kind == "cuda" and caps.capability == sm() and caps.fp16
    assert caps.bf16 == (sm() >= (8, 0))
    expected = "bf16" if sm() >= (8, 0) else "fp16" if sm() >= (7, 0) else "fp32"
    assert devices.resolve_precision("auto", CUDA) == expected


def test_handout_preset_keeps_torch_defaults_on_the_gpu():
    from cvlab.core.engine import build_trainer
    t = build_trainer(gpu_config(epochs=1, model="handout_resnet18", synthetic_train=200, synthetic_test=100))
    assert t.plan.precision == "fp32" and t.plan.optimizer_kernels == "default" and not t.plan.compile
    assert torch.backends.cudnn.benchmark is False
    group = t.optimizer.param_groups[0]
    assert not group.get("fused") and group.get("foreach") in (None, False) and t.scaler is None


# ---------------------------------------------------------------------------- precision

@pytest.mark.skipif(torch.cuda.is_available() and sm() < (8, 0), reason="bf16 needs sm >= 8.0")
def test_bf16_steps_lower_the_loss():
    from cvlab.core.engine import build_trainer
    t = build_trainer(gpu_config(precision="bf16", channels_last=True, epochs=4))
    assert t.precision == "bf16" and t.scaler is None
    with devices.autocast(CUDA, "bf16"):
        x, _ = next(iter(t.test_loader))
        assert t.model(x).dtype == torch.bfloat16
    losses = train_losses(t, 4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.skipif(torch.cuda.is_available() and sm() < (7, 0), reason="fp16 tensor cores need sm >= 7.0")
def test_fp16_steps_use_the_grad_scaler():
    from cvlab.core.engine import build_trainer
    t = build_trainer(gpu_config(precision="fp16", epochs=4))
    assert isinstance(t.scaler, torch.amp.GradScaler) and t.scaler.is_enabled()
    losses = train_losses(t, 4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # An overflowing step is skipped and the scale halved: the weights stay as they were.
    before, scale = weights(t.model), t.scaler.get_scale()
    x = torch.full((4, 3, 32, 32), float("inf"), device=CUDA)
    t.train_step.step(x, torch.zeros(4, dtype=torch.long, device=CUDA))
    assert t.scaler.get_scale() == scale / 2
    after = weights(t.model)
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


# ---------------------------------------------------------------------------- optimizer kernels

@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_fused_kernels_follow_the_foreach_trajectory(optimizer, deterministic):
    from cvlab.core.engine import build_trainer
    assert optimizer in devices.probe(CUDA).fused
    extra = dict(lr=0.05, momentum=0.9) if optimizer == "sgd" else {}
    runs = {}
    for impl in ("fused", "foreach"):
        t = build_trainer(gpu_config(optimizer=optimizer, optimizer_impl=impl, epochs=3, **extra))
        assert t.plan.optimizer_kernels == impl and bool(t.optimizer.param_groups[0].get(impl))
        runs[impl] = train_losses(t, 3)
    assert runs["fused"] == pytest.approx(runs["foreach"], rel=2e-3)


def test_auto_kernels_are_fused_on_cuda():
    from cvlab.core.engine import build_trainer
    t = build_trainer(gpu_config(optimizer="sgd", momentum=0.9, lr=0.05, optimizer_impl="auto", epochs=1))
    assert t.plan.optimizer_kernels == "fused" and t.optimizer.param_groups[0]["fused"]


# ---------------------------------------------------------------------------- compile

def test_compile_warm_up_leaves_the_run_unchanged(deterministic):
    """The warm-up compiles every batch shape, then restores weights, optimizer and RNG; the compiled run
    then follows the eager one (inductor's kernels round differently: float tolerance)."""
    from cvlab.core.engine import build_trainer
    if not devices.probe(CUDA).compile:
        pytest.skip(devices.probe(CUDA).compile_note)
    cfg = gpu_config(epochs=2, optimizer_impl="forloop", channels_last=True)
    eager = build_trainer(cfg)
    start = weights(eager.model)
    eager_losses = train_losses(eager, 2)
    compiled = build_trainer(tiny_config(device="cuda", epochs=2, optimizer_impl="forloop", channels_last=True,
                                         compile=True))
    assert compiled.warmup_seconds > 0 and compiled.train_step.model is not compiled.model
    restored = weights(compiled.model)
    assert all(torch.equal(start[k], restored[k]) for k in start)
    assert not compiled.optimizer.state
    assert train_losses(compiled, 2) == pytest.approx(eager_losses, rel=1e-2)


# ---------------------------------------------------------------------------- data on the device

def test_device_resident_loader_and_batched_augmentation():
    from cvlab.core.augment import build_augment, build_mix
    from cvlab.core.loader import TensorLoader
    from cvlab.core.data import in_memory_data
    data = in_memory_data(256, 64, seed=0)
    cfg = gpu_config(crop_padding=4, hflip=True, cutout=8, policy="trivialaugment", mix="cutmix", mix_prob=1.0)
    plain_gpu = TensorLoader(data.train, 64, CUDA, "cifar100", channels_last=True)
    plain_cpu = TensorLoader(data.train, 64, torch.device("cpu"), "cifar100")
    assert plain_gpu.images.device.type == "cuda" and plain_gpu.images.dtype == torch.uint8
    for (xg, yg), (xc, yc) in zip(plain_gpu, plain_cpu):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)

    def loader():
        return TensorLoader(data.train, 64, CUDA, "cifar100", shuffle=True, augment=build_augment(cfg), seed=3,
                            channels_last=True, mix=build_mix(cfg))

    first, second = loader(), loader()
    state = first.state_dict()
    a = [(x.clone(), y.clone()) for x, y in first]
    b = [(x.clone(), y.clone()) for x, y in second]
    for (xa, ya), (xb, yb) in zip(a, b):  # same seeds, same batches, on the device
        assert xa.is_cuda and ya.shape == (64, 100) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], next(iter(plain_gpu))[0])  # the augmentation did something
    again = loader()
    again.load_state_dict(state)
    assert all(torch.equal(x, xa) for (x, _), (xa, _) in zip(again, a))  # a saved state replays the epoch


# ---------------------------------------------------------------------------- resume and evaluation

def test_exact_resume_on_the_device(tmp_path, deterministic):
    import pandas as pd
    from cvlab.core.engine import fit
    from cvlab.core.runs import load_run
    cfg = gpu_config(epochs=3, schedule="cosine", warmup=0.3, optimizer="sgd", lr=0.05, nesterov=True,
                     weight_decay=5e-4, crop_padding=4, hflip=True, ema_decay=0.9, precision="auto")
    quiet = lambda s: None  # noqa: E731
    timing = ["epoch_seconds", "images_per_second"]
    whole = load_run(fit(cfg, tmp_path / "whole", log=quiet)).history.drop(columns=timing)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", on_epoch_end=StopAfter(2), log=quiet)
    resumed = load_run(fit(cfg, tmp_path / "cut", resume=True, log=quiet))
    pd.testing.assert_frame_equal(resumed.history.drop(columns=timing), whole)
    a = torch.load(tmp_path / "whole" / "last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_evaluation_is_deterministic_and_matches_the_cpu(precision, deterministic):
    from cvlab.core.engine import EvalStep, build_trainer, evaluate
    from cvlab.core.device import EVAL_TOLERANCE
    t = build_trainer(gpu_config(precision=precision, channels_last=True, tta_flip=True, epochs=2))
    train_losses(t, 2)
    first, second = evaluate(t.eval_step, t.test_loader), evaluate(t.eval_step, t.test_loader)
    assert first == second  # bit for bit, twice in a row
    cpu = build_trainer(tiny_config(device="cpu", precision="fp32", tta_flip=True, epochs=2))
    cpu.model.load_state_dict({k: v.cpu() for k, v in t.model.state_dict().items()})
    reference = evaluate(EvalStep(cpu.model, torch.device("cpu"), "fp32", True), cpu.test_loader)
    assert first["loss"] == pytest.approx(reference["loss"], rel=EVAL_TOLERANCE[t.precision])
    # Near-ties among 100 logits of a barely trained model may flip under bf16/fp16 rounding, hardly under TF32.
    assert abs(first["acc"] - reference["acc"]) <= (0.03 if t.precision == "fp32" else 0.15)
