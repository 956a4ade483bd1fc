"""`python -m cvlab doctor`: what a student runs first on a new machine.

Reports the environment (Python, torch, torchvision, CUDA/cuDNN or torch_npu), the device and what it
can do, what each preset gets there (precision, optimizer kernels, channels_last, compile, cuDNN
autotuning: `cvlab.core.device.make_plan`), the data root, free disk and memory; then a self-test on
the device, under a minute:

- train: both models, a few steps each with the `fast` preset's settings on that device (its precision,
  kernels, channels_last, augmentation, optimizer; constant learning rate, no warmup) on one batch of
  learnable synthetic images: every loss finite, and the last two steps' mean below the first step's.
- save/resume: `fit` for 2 epochs straight, and 1 epoch, stopped, then resumed for the second: the
  two runs' final weights agree (bit for bit on the CPU; within RESUME_TOLERANCE on accelerators,
  where cuDNN may pick other kernels in a new process state).
- eval vs CPU: the trained cifar_resnet18 evaluated on the device (its precision, channels_last, the
  device-side loader) against the same weights in fp32 on the CPU: the largest logit difference,
  relative to the largest CPU logit, within core.device.EVAL_TOLERANCE[precision], and so the mean loss.

No check downloads anything or needs the real data set. The data check reads the files' MD5 sums
(a few seconds), not the 60,000 images.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..core import device as devices
from ..core.config import PRESETS, make_config

RESUME_TOLERANCE = 1e-4  # accelerators: largest weight difference relative to the largest weight


@dataclass(frozen=True)
class Sizes:
    """How much the self-test trains: the CLI picks by device; tests pass smaller ones."""

    models: tuple[str, ...] = ("handout_resnet18", "cifar_resnet18")
    batch: int = 16
    steps: int = 8
    lr: float = 0.05
    resume_model: str = "handout_resnet18"


CPU_SIZES = Sizes()
ACCELERATOR_SIZES = Sizes(batch=256, steps=15)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# ---------------------------------------------------------------------------- what is there

def _versions() -> str:
    import numpy as np
    from ..core.paths import git_commit
    commit = git_commit()
    return (f"python {platform.python_version()} · torch {torch.__version__} · torchvision {_installed('torchvision')}"
            f" · numpy {np.__version__} · cvlab {__version__}" + (f" (git {commit[:12]})" if commit else ""))


def _installed(package: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def matching_torchvision(torch_version: str) -> str:
    """The torchvision release series built for `torch_version` ('2.5.1+cpu' -> '0.20'): torch 2.N pairs with
    torchvision 0.(N+15) since torch 2.0 / torchvision 0.15; '' for a version outside that rule."""
    parts = torch_version.split("+")[0].split(".")
    if len(parts) < 2 or parts[0] != "2" or not parts[1].isdigit():
        return ""
    return f"0.{int(parts[1]) + 15}"


def check_torchvision() -> Check | None:
    """A failed Check when torchvision does not import with this torch (a pair from different releases fails with
    'operator torchvision::nms does not exist'), naming the versions and the pair to install; None when it does."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        wanted = matching_torchvision(torch.__version__)
        fix = (f"install the torchvision built for this torch: pip install torchvision=={wanted}.*"
               f" (the CPU wheel: add --index-url https://download.pytorch.org/whl/cpu)" if wanted
               else "install the torchvision release made for this torch")
        return Check("torch/torchvision", False,
                     f"torchvision {_installed('torchvision')} does not work with torch {torch.__version__} "
                     f"({type(exc).__name__}: {first[:120]}); {fix}")
    return None


def _backend_versions(device: torch.device) -> str:
    if device.type == "npu":
        import torch_npu
        return f"torch_npu {torch_npu.__version__}; CANN {getattr(torch.version, 'cann', 'unknown')}"
    if device.type == "cuda":
        driver = ""
        try:
            import subprocess
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            driver = f"; driver {out.stdout.split()[0]}" if out.returncode == 0 and out.stdout.split() else ""
        except (OSError, subprocess.SubprocessError):
            pass
        return f"CUDA {torch.version.cuda} · cuDNN {torch.backends.cudnn.version()}{driver}"
    built = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return f"{built}; no accelerator in use"


def describe_device(device: torch.device, caps: devices.Capabilities) -> list[str]:
    cap = f", sm {caps.capability[0]}.{caps.capability[1]}" if caps.capability else ""
    memory = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        memory = f", {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    kernels = ", ".join(sorted(caps.fused)) or "none"
    compile_ = "yes" if caps.compile else f"no ({caps.compile_note})"
    lines = [f"device       {device} = {caps.name}{cap}{memory}",
             f"             bf16: {'yes' if caps.bf16 else 'no'} · fp16: {'yes' if caps.fp16 else 'no'} · "
             f"fused optimizer kernels: {kernels} · torch.compile: {compile_}"]
    if device.type == "cuda":
        tf32 = devices.tf32_state()
        lines.append(f"             TF32: cuDNN convolutions {'on' if tf32['cudnn_conv'] else 'off'}, matmul "
                     f"{'on' if tf32['matmul'] else 'off'} (PyTorch's {tf32['api']} settings, left as they are)")
    return lines


def preset_plans(device: torch.device, caps: devices.Capabilities) -> list[str]:
    """One line per distinct plan, naming the presets that get it."""
    groups: dict[tuple, list[str]] = {}
    for name in PRESETS:
        cfg = make_config(name, device=device.type)
        try:
            plan = devices.make_plan(cfg, caps)
            key = (plan.precision + ("+GradScaler" if plan.grad_scaler else ""), plan.optimizer_kernels,
                   plan.channels_last, plan.compile, plan.cudnn_benchmark, cfg.optimizer)
        except Exception as exc:  # a precision this device cannot run: say so, do not stop
            key = (f"error: {exc}", "", False, False, False, cfg.optimizer)
        groups.setdefault(key, []).append(name)
    yes = {True: "yes", False: "no"}
    lines = [f"  {'precision':<16} {'optimizer':<16} {'NHWC':<5} {'compile':<8} {'autotune':<9} presets"]
    for (precision, kernels, nhwc, comp, tune, optimizer), names in groups.items():
        shown = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... ({len(names)} presets)"
        lines.append(f"  {precision:<16} {optimizer + ' ' + kernels:<16} {yes[nhwc]:<5} {yes[comp]:<8} "
                     f"{yes[tune]:<9} {shown}")
    return lines


def check_data(root: Path) -> tuple[Check | None, str]:
    """(a failed Check or None, one line): where the data is and whether its files are the official ones
    (MD5 of the archive or of the three pickles; a copy that differs is then loaded and validated)."""
    import warnings
    from ..core.data import ARCHIVE, OFFICIAL_MD5, file_md5, load_cifar100, locate
    found = locate(root)
    if found is None:
        return None, (f"data         none at {root} (not needed for the self-test); "
                      "get it: python -m cvlab data download")
    kind, path = found
    start = time.perf_counter()
    files = {ARCHIVE: path} if kind == "archive" else {n: path / n for n in ("meta", "train", "test")}
    differs = [n for n, p in files.items() if file_md5(p) != OFFICIAL_MD5[n]]
    if not differs:
        return None, f"data         {path}: official CIFAR-100 (MD5 of the {kind}; images not loaded)"
    try:  # not the official bytes: load it and check every structural rule instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = load_cifar100(root, download=False)
    except Exception as exc:
        return Check("data", False, f"{path}: {exc}", time.perf_counter() - start), f"data         {path}: BROKEN"
    return None, (f"data         {path}: MD5 differs from the official release ({', '.join(differs)}), "
                  f"structure valid: {len(data.train):,} train / {len(data.test):,} test images")


def _memory() -> str:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        avail, total = (int(info[k].split()[0]) / 2**20 for k in ("MemAvailable", "MemTotal"))
        return f"memory {avail:.1f} of {total:.1f} GiB available"
    except (OSError, KeyError, ValueError):
        return "memory unknown"


def resources(root: Path) -> str:
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    return f"resources    disk {free:.1f} GiB free at {where}; {_memory()}; {os.cpu_count()} CPU cores"


# ---------------------------------------------------------------------------- self-test

def selftest_config(device: torch.device, sizes: Sizes, model: str, **changes):
    """The fast preset's settings on `device`, with a constant learning rate (no warmup): a few steps must
    lower the loss."""
    values = dict(model=model, device=device.type, synthetic=True, synthetic_train=sizes.batch,
                  synthetic_test=sizes.batch, batch_size=sizes.batch, eval_batch_size=sizes.batch,
                  epochs=sizes.steps, schedule="constant", warmup=0.0, lr=sizes.lr, progress=False,
                  download=False)
    values.update(changes)
    return make_config("fast", **values)


def check_training(device: torch.device, sizes: Sizes, model: str):
    """Train `sizes.steps` steps on one batch; returns (Check, trainer)."""
    from ..core.engine import build_trainer, train_one_epoch
    start = time.perf_counter()
    t = build_trainer(selftest_config(device, sizes, model))
    losses = [train_one_epoch(t.train_step, t.train_loader)["loss"] for _ in range(sizes.steps)]
    seconds = time.perf_counter() - start
    finite = all(math.isfinite(x) for x in losses)
    falling = finite and sum(losses[-2:]) / 2 < losses[0]
    detail = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {sizes.steps} steps of {sizes.batch}"
    if not finite:
        detail += " (not finite)"
    elif not falling:
        detail += " (not falling)"
    return Check(f"train {model}", finite and falling, detail, seconds), t


def check_resume(device: torch.device, sizes: Sizes) -> Check:
    """2 epochs straight against 1 epoch, an interruption, and a resumed second epoch."""
    from ..core.engine import fit
    from ..core.runs import CHECKPOINT, load_checkpoint
    start = time.perf_counter()
    cfg = selftest_config(device, sizes, sizes.resume_model, synthetic_train=2 * sizes.batch, epochs=2)

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    quiet = lambda line: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="cvlab-doctor-") as tmp:
        straight = fit(cfg, Path(tmp) / "straight", log=quiet)
        try:
            fit(cfg, Path(tmp) / "resumed", on_epoch_end=stop_after_first, log=quiet)
        except KeyboardInterrupt:
            pass
        resumed = fit(cfg, Path(tmp) / "resumed", resume=True, log=quiet)
        a = load_checkpoint(straight / CHECKPOINT)["model"]  # to the CPU, as data only
        b = load_checkpoint(resumed / CHECKPOINT)["model"]
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    scale = max(a[k].double().abs().max().item() for k in a if a[k].is_floating_point())
    limit = 0.0 if device.type == "cpu" else RESUME_TOLERANCE * scale
    detail = f"2 epochs straight vs 1 + resumed 1: largest weight difference {diff:.2g} (allowed {limit:.2g})"
    return Check("save/resume", diff <= limit, detail, time.perf_counter() - start)


def check_eval_vs_cpu(t) -> Check:
    """The device's evaluation of `t.model` against the same weights in fp32 on the CPU."""
    from ..core.data import Split
    from ..core.loader import TensorLoader
    from ..core.engine import EvalStep
    start = time.perf_counter()
    cfg, cpu = t.cfg, torch.device("cpu")
    loader = t.test_loader
    split = Split(loader.images.cpu(), loader.labels.cpu(), loader.labels.cpu())
    cpu_loader = TensorLoader(split, loader.batch_size, cpu, cfg.normalization)
    cpu_model = copy.deepcopy(t.model).to(cpu).to(memory_format=torch.contiguous_format).eval()
    on_device = EvalStep(t.model, t.device, t.precision, cfg.tta_flip)
    on_cpu = EvalStep(cpu_model, cpu, "fp32", cfg.tta_flip)
    t.model.eval()
    with torch.inference_mode():
        dev = torch.cat([on_device.logits(x).cpu() for x, _ in loader])
        ref = torch.cat([on_cpu.logits(x) for x, _ in cpu_loader])
    labels = split.fine
    rel = ((dev - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    loss_dev = torch.nn.functional.cross_entropy(dev, labels).item()
    loss_ref = torch.nn.functional.cross_entropy(ref, labels).item()
    limit = devices.EVAL_TOLERANCE[t.precision]
    ok = math.isfinite(rel) and rel <= limit and abs(loss_dev - loss_ref) <= limit * max(1.0, abs(loss_ref))
    detail = (f"{t.precision}{', NHWC' if cfg.channels_last else ''} vs CPU fp32: largest logit difference "
              f"{rel:.1e} of the largest logit (allowed {limit:.0e}); loss {loss_dev:.4f} vs {loss_ref:.4f}")
    return Check("eval vs CPU", ok, detail, time.perf_counter() - start)


def self_test(device: torch.device, sizes: Sizes) -> list[Check]:
    checks: list[Check] = []
    trained = None
    for model in sizes.models:
        try:
            check, t = check_training(device, sizes, model)
            trained = t
        except Exception as exc:
            check = Check(f"train {model}", False, f"{type(exc).__name__}: {exc}")
        checks.append(check)
    for name, run in (("save/resume", lambda: check_resume(device, sizes)),
                      ("eval vs CPU", lambda: check_eval_vs_cpu(trained))):
        if name == "eval vs CPU" and trained is None:
            checks.append(Check(name, False, "no trained model to evaluate (training failed)"))
            continue
        try:
            checks.append(run())
        except Exception as exc:
            checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return checks


# ---------------------------------------------------------------------------- the whole report

def stage(report: Report, say, name: str, lines) -> None:
    """Say the lines `lines()` returns; an exception there becomes a failed check of that name (one line, no
    traceback), and the report goes on with the next part."""
    try:
        for line in lines():
            say(line)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        check = Check(name, False, f"{type(exc).__name__}: {first[:160]}")
        report.checks.append(check)
        say(f"  FAIL  {name:<24} {check.detail}")


def run_doctor(device_name: str = "auto", data_root: str | None = None, sizes: Sizes | None = None,
               selftest: bool = True, out=print) -> Report:
    """Print the report line by line through `out`; returns it with every check."""
    import warnings
    from ..core.paths import resolve_data_root
    start = time.perf_counter()
    report = Report()

    def say(line: str) -> None:
        report.lines.append(line)
        out(line)

    device = devices.resolve_device(device_name)
    caps = devices.probe(device)
    say(f"cvlab doctor · {time.strftime('%Y-%m-%d %H:%M:%S')}")
    say(f"versions     {_versions()}")
    broken = check_torchvision()
    if broken is not None:  # augmentation policies and the data's transforms need it: no self-test without it
        report.checks.append(broken)
        say(f"  FAIL  {broken.name:<24} {broken.detail}")
    stage(report, say, "backend", lambda: [f"backend      {_backend_versions(device)}"])
    stage(report, say, "device", lambda: describe_device(device, caps))
    say("presets here (python -m cvlab presets for what each one is):")
    stage(report, say, "presets", lambda: preset_plans(device, caps))
    root = resolve_data_root(data_root or "")

    def data_lines() -> list[str]:
        failed, line = check_data(root)
        if failed is not None:
            report.checks.append(failed)
        return [line]

    stage(report, say, "data", data_lines)
    stage(report, say, "resources", lambda: [resources(root)])
    if selftest and broken is None:
        sizes = sizes or (CPU_SIZES if device.type == "cpu" else ACCELERATOR_SIZES)
        plan = devices.make_plan(selftest_config(device, sizes, sizes.models[0]), caps)
        say(f"self-test on {device} with the fast preset's settings ({plan.precision}, {plan.optimizer_kernels} "
            f"SGD kernels, NHWC {'yes' if plan.channels_last else 'no'}, crop+flip on the device):")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plan's notes are already in the table above
            checks = self_test(device, sizes)
        for check in checks:
            say(f"  {'PASS' if check.ok else 'FAIL'}  {check.name:<24} {check.detail} ({check.seconds:.1f} s)")
        report.checks.extend(checks)
    elif selftest:
        say("self-test skipped: it trains with torchvision's transforms (fix torch/torchvision first)")
    failed = report.failed
    total = time.perf_counter() - start
    say(f"all checks passed ({total:.0f} s)" if not failed else
        f"FAILED: {', '.join(c.name for c in failed)} ({total:.0f} s)")
    return report
