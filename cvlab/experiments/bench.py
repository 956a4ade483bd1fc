"""`python -m cvlab bench`: training and evaluation throughput of the handout's loop against the cvlab path.

    python -m cvlab bench                                         # both models, both paths, this device
    python -m cvlab bench --device cpu --batch-size 128 --steps 3 --windows 3 --json bench.json
    python -m cvlab bench --device cuda --precision fp32,bf16 --channels-last yes --compile no,yes

Both paths train the same model from the same initial weights on the same in-memory synthetic uint8
images (no data set needed) with the handout's optimizer (Adam, lr 1e-4) and its normalization:

- handout: the handout's loop as written: a torchvision-style Dataset that turns each image into a PIL
  image and applies ToTensor + Normalize, a DataLoader with 0 workers, fp32, `model.cuda()` (here
  `model.to(device)`) and `x.cuda()` on every step, the loss formatted into its progress message every
  10 steps (a host sync; the message is built but not printed), and `.item()` per test batch.
- cvlab: TensorLoader (uint8 images resident on the device, batched to float and normalized there) and
  the engine's `train_one_epoch` / `evaluate` built by `build_trainer`, with the switches given here:
  precision, channels_last, torch.compile (its warm-up reported apart, not timed), optimizer kernels.

A timed window is one pass of the path's own epoch function over `--steps` batches; throughput is the
median over `--windows` windows after `--warmup` untimed steps. Each contender runs (warm-up included)
with its own cuDNN autotuning setting (`torch.backends.cudnn.benchmark` is process-wide): off for the
handout loop, as its code runs; the cvlab path's plan for the others. The windows of all contenders of a
model are interleaved (window k of each before window k+1 of any), so load from other processes on a
shared machine hits them alike. Windows are timed with CUDA events on GPUs and with perf_counter plus
a device synchronize elsewhere; on the CPU the process's CPU time is recorded too (images per CPU
second), which waiting for a core on a busy machine does not inflate. "data" times the loader alone
(batches produced and on the device, no model), so `data share` = the part of a training step spent
producing its batch when the two run one after the other, as they do in both paths.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products,
2 FLOPs per multiply-add): forward per image, and training (forward + backward, about 3x forward).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..core import device as devices
from ..core.config import make_config
from ..core.data import SPLIT_SIZES, Cifar100, Split, in_memory_data
from ..core.loader import TensorLoader
from ..core.models import build_model, count_parameters
from .handout import handout_loader, handout_test, handout_train

SCHEMA = "cvlab.bench/1"
PATHS = ("handout", "cvlab")
HANDOUT_LR = 1e-4  # the handout's Adam learning rate
CIFAR_TRAIN, CIFAR_TEST = SPLIT_SIZES["train"], SPLIT_SIZES["test"]  # images per epoch for the projected epoch times

# The JSON report's fields (documented in docs/performance.md; tests check both against a real run).
REPORT_FIELDS = ("schema", "created", "command", "environment", "settings", "flops", "results", "ratios",
                 "complete", "bench_seconds", "load_average_1m_end")
RESULT_FIELDS = ("model", "path", "precision", "channels_last", "compile", "optimizer_impl", "cudnn_benchmark",
                 "batch_size",
                 "eval_batch_size", "compile_warmup_seconds", "train_images_per_second", "train_windows",
                 "train_images_per_cpu_second", "last_train_loss", "eval_images_per_second", "eval_windows",
                 "eval_images_per_cpu_second", "data_images_per_second", "data_windows", "data_images_per_cpu_second",
                 "data_share_of_train_step", "train_tflops_per_second", "eval_tflops_per_second",
                 "projected_epoch_seconds", "projected_100_epochs_seconds")
RATIO_FIELDS = ("model", "precision", "channels_last", "compile", "optimizer_impl", "same_numerics",
                "train_speedup", "eval_speedup", "data_speedup", "train_speedup_cpu_time", "eval_speedup_cpu_time")
FLOPS_FIELDS = ("parameters", "forward_flops_per_image", "train_flops_per_image", "train_to_forward")


# ---------------------------------------------------------------------------- data, timing, FLOPs

class Window:
    """Seconds of device work inside a `with` block: CUDA events on GPUs, else perf_counter + synchronize;
    and the CPU seconds this process used meanwhile (all its threads)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.cpu_seconds = device, 0.0, 0.0

    def __enter__(self) -> "Window":
        devices.synchronize(self.device)
        self.cpu0 = time.process_time()
        if self.device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000.0
        else:
            devices.synchronize(self.device)
            self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.cpu0


def time_once(run: Callable[[], int], device: torch.device) -> tuple[float, float]:
    """(images per second, images per CPU second) of one call of `run`, which returns its images."""
    with Window(device) as w:
        images = run()
    return images / w.seconds, images / max(w.cpu_seconds, 1e-9)


def data_passes(run: Callable[[], int], device: torch.device, min_seconds: float = 0.25) -> int:
    """Loader passes per data window so that a window lasts about `min_seconds` (the first pass warms up)."""
    with Window(device) as w:
        run()
    return max(1, min(50, math.ceil(min_seconds / max(w.seconds, 1e-6))))


def count_flops(model_name: str) -> dict:
    """Forward and training (forward + backward) FLOPs per image, counted on a CPU copy in train mode."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(model_name)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    fwd, bwd = forward.get_total_flops() / 2, backward.get_total_flops() / 2
    return {"parameters": count_parameters(model), "forward_flops_per_image": int(fwd),
            "train_flops_per_image": int(fwd + bwd), "train_to_forward": round((fwd + bwd) / fwd, 3)}


def drain(loader, device: torch.device) -> int:
    """Produce every batch of `loader` on `device` without a model; returns the images."""
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        n += y.shape[0]
    return n


# ---------------------------------------------------------------------------- the two paths

@dataclass
class Settings:
    device: torch.device
    models: list[str]
    paths: list[str]
    batch_size: int
    eval_batch_size: int
    steps: int
    windows: int
    warmup: int
    precisions: list[str]
    channels_last: list[bool]
    compile: list[bool]
    optimizer_impl: list[str]
    augment: bool
    seed: int

    @property
    def n_train(self) -> int:
        return self.steps * self.batch_size

    @property
    def n_test(self) -> int:
        return self.steps * self.eval_batch_size


@dataclass
class Contender:
    """One path ready to be timed: its row's identity fields and the three things a window runs."""

    row: dict
    train: Callable[[], int]  # one training pass over the bench's training images; returns the images
    test: Callable[[], int]  # one evaluation pass over the bench's test images
    data: Callable[[], int]  # one loader pass, batches produced on the device, no model
    last_loss: Callable[[], float]  # mean training loss of the last window (NaN: a broken variant; equal
                                    # across fp32 contenders of a model with the default optimizer kernels)

    @property
    def cudnn_benchmark(self) -> bool:
        return self.row["cudnn_benchmark"]


@contextlib.contextmanager
def cudnn_autotuning(enabled: bool):
    """torch.backends.cudnn.benchmark = `enabled` inside the block (it is process-wide), restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def handout_contender(s: Settings, model_name: str, data: Cifar100) -> Contender:
    with cudnn_autotuning(False):  # the handout's code leaves PyTorch's default: no autotuning
        return _handout_contender(s, model_name, data)


def _handout_contender(s: Settings, model_name: str, data: Cifar100) -> Contender:
    torch.manual_seed(s.seed)
    model = build_model(model_name).to(s.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=HANDOUT_LR)
    train_loader, test_loader = handout_loader(data.train, s.batch_size), handout_loader(data.test, s.batch_size)
    if s.warmup:
        warm = data.train.take(torch.arange(min(s.warmup * s.batch_size, len(data.train))))
        handout_train(model, optimizer, handout_loader(warm, s.batch_size), s.device)
        handout_test(model, handout_loader(warm, s.batch_size), s.device)
    losses: list[torch.Tensor] = []

    def train() -> int:
        losses[:] = handout_train(model, optimizer, train_loader, s.device)
        return len(train_loader.dataset)

    def test() -> int:
        handout_test(model, test_loader, s.device)
        return len(test_loader.dataset)

    row = {"model": model_name, "path": "handout", "precision": "fp32", "channels_last": False, "compile": False,
           "optimizer_impl": "default", "cudnn_benchmark": False, "batch_size": s.batch_size,
           "eval_batch_size": s.batch_size,
           "compile_warmup_seconds": 0.0}
    def last_loss() -> float:  # the last window's mean, as the engine reports it
        return float(torch.stack(losses).mean())

    return Contender(row, train, test, lambda: drain(train_loader, s.device), last_loss)


def cvlab_config(s: Settings, model_name: str, precision: str, channels_last: bool, compile_: bool, impl: str):
    return make_config("handout", model=model_name, batch_size=s.batch_size, eval_batch_size=s.eval_batch_size,
                       epochs=1, device=s.device.type, precision=precision, channels_last=channels_last,
                       compile=compile_, optimizer_impl=impl, cudnn_benchmark=True, seed=s.seed, progress=False,
                       shuffle=s.augment, crop_padding=4 if s.augment else 0, hflip=s.augment)


def head(loader: TensorLoader, batches: int, normalization: str, augment: bool = False) -> TensorLoader:
    """A loader over the first `batches` batches of `loader` (same batch size and memory format)."""
    n = batches * loader.batch_size
    split = Split(loader.images[:n], loader.labels[:n], loader.labels[:n])
    return TensorLoader(split, loader.batch_size, loader.device, normalization,
                        augment=loader.augment if augment else None, channels_last=loader.channels_last)


def cvlab_contender(s: Settings, model_name: str, data: Cifar100, precision: str, channels_last: bool,
                    compile_: bool, impl: str) -> Contender:
    from ..core.engine import build_trainer

    before = torch.backends.cudnn.benchmark
    t = build_trainer(cvlab_config(s, model_name, precision, channels_last, compile_, impl), data)
    torch.backends.cudnn.benchmark = before  # build_trainer applied the plan process-wide; measure() sets it per window
    with cudnn_autotuning(t.plan.cudnn_benchmark):
        _cvlab_warm_up(s, t)
    return _cvlab_contender(s, model_name, t, channels_last, compile_, impl)


def _cvlab_warm_up(s: Settings, t) -> None:
    from ..core.engine import evaluate, train_one_epoch
    if s.warmup:
        norm = t.cfg.normalization
        train_one_epoch(t.train_step, head(t.train_loader, s.warmup, norm, augment=True))
        evaluate(t.eval_step, head(t.test_loader, s.warmup, norm))


def _cvlab_contender(s: Settings, model_name: str, t, channels_last: bool, compile_: bool, impl: str) -> Contender:
    from ..core.engine import evaluate, train_one_epoch
    last: dict = {}

    def train() -> int:
        last.update(train_one_epoch(t.train_step, t.train_loader))
        return t.train_loader.num_images

    def test() -> int:
        evaluate(t.eval_step, t.test_loader)
        return t.test_loader.num_images

    def data_only() -> int:
        n = 0
        for x, y in t.train_loader:
            n += y.shape[0]
        return n

    row = {"model": model_name, "path": "cvlab", "precision": t.precision, "channels_last": channels_last,
           "compile": compile_, "optimizer_impl": impl, "cudnn_benchmark": t.plan.cudnn_benchmark,
           "batch_size": s.batch_size,
           "eval_batch_size": s.eval_batch_size, "compile_warmup_seconds": round(t.warmup_seconds, 2)}
    return Contender(row, train, test, data_only, lambda: last["loss"])


def measure(contenders: list[Contender], s: Settings,
            on_window: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Time every contender, interleaved: window k of each before window k+1 of any, so a change in the
    machine's load (a shared CPU) hits every contender alike and the ratios stay fair. Each contender runs
    with its own cuDNN autotuning setting. `on_window(rows)` sees the rows as measured so far (None where a
    figure has no window yet) after every round of windows, so a run stopped early keeps what it measured."""
    rates: list[dict[str, list[tuple[float, float]]]] = [{"train": [], "eval": [], "data": []} for _ in contenders]

    def timed(c: Contender, run: Callable[[], int]) -> tuple[float, float]:
        with cudnn_autotuning(c.cudnn_benchmark):
            return time_once(run, s.device)

    def rows() -> list[dict]:
        return [measured_row(c, r, s.device) for c, r in zip(contenders, rates)]

    for kind in ("train", "eval"):
        for _ in range(s.windows):
            for c, r in zip(contenders, rates):
                r[kind].append(timed(c, c.train if kind == "train" else c.test))
            if on_window is not None:
                on_window(rows())
    passes = []
    for c in contenders:
        with cudnn_autotuning(c.cudnn_benchmark):
            passes.append(data_passes(c.data, s.device))
    for window in range(s.windows):
        for c, r, k in zip(contenders, rates, passes):
            r["data"].append(timed(c, lambda: sum(c.data() for _ in range(k))))
        if on_window is not None and window < s.windows - 1:  # the caller publishes the finished rows
            on_window(rows())
    return rows()


def measured_row(c: Contender, rates: dict[str, list[tuple[float, float]]], device: torch.device) -> dict:
    """The row of contender `c` from the windows measured so far (None and [] where there are none yet)."""
    row = dict(c.row)
    for kind in ("train", "eval", "data"):
        row.update(summarize_rates(kind, rates[kind], device) if rates[kind] else
                   {f"{kind}_images_per_second": None, f"{kind}_windows": [], f"{kind}_images_per_cpu_second": None})
        if kind == "train":
            row["last_train_loss"] = c.last_loss() if rates["train"] else None
    return row


def is_measured(row: dict) -> bool:
    """Whether every window of the row was measured (a stopped run leaves rows without their later figures)."""
    return all(row.get(f"{kind}_images_per_second") is not None for kind in ("train", "eval", "data"))


def summarize_rates(prefix: str, rates: list[tuple[float, float]], device: torch.device) -> dict:
    """Median images/s, every window's images/s, and (CPU only) the median images per CPU second:
    on a shared CPU the time a process waits for a core is not its own cost, its CPU time is."""
    wall = [w for w, _ in rates]
    cpu = statistics.median(c for _, c in rates) if device.type == "cpu" else None
    return {f"{prefix}_images_per_second": statistics.median(wall), f"{prefix}_windows": [round(w, 2) for w in wall],
            f"{prefix}_images_per_cpu_second": cpu}


def derive(row: dict, flops: dict) -> dict:
    """Data share, TFLOP/s and projected CIFAR-100 epoch times from the measured rates (None until all are)."""
    if not is_measured(row):
        row.update({k: None for k in ("data_share_of_train_step", "train_tflops_per_second",
                                      "eval_tflops_per_second", "projected_epoch_seconds",
                                      "projected_100_epochs_seconds")})
        return row
    train, test = row["train_images_per_second"], row["eval_images_per_second"]
    row["data_share_of_train_step"] = train / row["data_images_per_second"]
    row["train_tflops_per_second"] = flops["train_flops_per_image"] * train / 1e12
    row["eval_tflops_per_second"] = flops["forward_flops_per_image"] * test / 1e12
    row["projected_epoch_seconds"] = CIFAR_TRAIN / train + CIFAR_TEST / test
    row["projected_100_epochs_seconds"] = 100 * row["projected_epoch_seconds"]
    return row


def _ratio(row: dict, base: dict, key: str) -> float | None:
    return row[key] / base[key] if row[key] and base[key] else None


def ratios(rows: list[dict]) -> list[dict]:
    """Each cvlab row against the handout row of the same model, measured in the same run."""
    rows = [r for r in rows if is_measured(r)]
    base = {r["model"]: r for r in rows if r["path"] == "handout"}
    out = []
    for r in rows:
        if r["path"] != "cvlab" or r["model"] not in base:
            continue
        b = base[r["model"]]
        out.append({"model": r["model"], "precision": r["precision"], "channels_last": r["channels_last"],
                    "compile": r["compile"], "optimizer_impl": r["optimizer_impl"],
                    "same_numerics": r["precision"] == "fp32",
                    "train_speedup": r["train_images_per_second"] / b["train_images_per_second"],
                    "eval_speedup": r["eval_images_per_second"] / b["eval_images_per_second"],
                    "data_speedup": r["data_images_per_second"] / b["data_images_per_second"],
                    "train_speedup_cpu_time": _ratio(r, b, "train_images_per_cpu_second"),
                    "eval_speedup_cpu_time": _ratio(r, b, "eval_images_per_cpu_second")})
    return out


# ---------------------------------------------------------------------------- report

def environment(device: torch.device) -> dict:
    from ..core.paths import git_commit
    import torchvision
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"device": devices.device_name(device), "device_type": device.type, "cpu": cpu,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
           "versions": {"cvlab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                        "python": platform.python_version(), "numpy": np.__version__, "git_commit": git_commit()}}
    if device.type == "cuda":
        env["versions"].update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        tf32 = devices.tf32_state()
        env["tf32"] = {"matmul": tf32["matmul"], "cudnn": tf32["cudnn_conv"], "api": tf32["api"]}
    return env


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def spread(windows: list[float]) -> float:
    """(max - min) / median of the windows: how noisy a figure is."""
    return (max(windows) - min(windows)) / statistics.median(windows)


# (header, width, cell) of each table column; width 0 = left-aligned text
COLUMNS: list[tuple[str, int, Callable[[dict], str]]] = [
    ("model", -17, lambda r: r["model"]),
    ("path", -7, lambda r: r["path"]),
    ("prec", -4, lambda r: r["precision"]),
    ("cl", -3, lambda r: yes_no(r["channels_last"])),
    ("comp", -4, lambda r: yes_no(r["compile"])),
    ("optim", -7, lambda r: r["optimizer_impl"]),
    ("train img/s", 11, lambda r: f"{r['train_images_per_second']:.1f}"),
    ("spread", 6, lambda r: f"{100 * spread(r['train_windows']):.0f}%"),
    ("train/CPU s", 11, lambda r: "-" if r["train_images_per_cpu_second"] is None else
     f"{r['train_images_per_cpu_second']:.1f}"),
    ("eval img/s", 10, lambda r: f"{r['eval_images_per_second']:.1f}"),
    ("data img/s", 10, lambda r: f"{r['data_images_per_second']:.0f}"),
    ("data%", 6, lambda r: f"{100 * r['data_share_of_train_step']:.1f}%"),
    ("train TF/s", 10, lambda r: f"{r['train_tflops_per_second']:.3f}"),
    ("epoch s*", 8, lambda r: f"{r['projected_epoch_seconds']:.1f}"),
]


def format_table(report: dict, markdown: bool = False) -> str:
    """The results as a fixed-width table (or Markdown), then FLOPs, ratios and compile times."""
    results = [r for r in report["results"] if is_measured(r)]
    if markdown:
        lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
                 "|" + "|".join("---" if w < 0 else "---:" for _, w, _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(cell(r) for _, _, cell in COLUMNS) + " |" for r in results]
    else:
        lines = [" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w, _ in COLUMNS)]
        lines.append("-" * len(lines[0]))
        lines += [" ".join(f"{cell(r):<{-w}}" if w < 0 else f"{cell(r):>{w}}" for _, w, cell in COLUMNS)
                  for r in results]
    bullet = "- " if markdown else ""
    notes = [f"spread: (max - min) / median of the {report['settings']['windows']} timed training windows; "
             "train/CPU s: training images per CPU second of this process (CPU device only); "
             "epoch s*: projected seconds for one CIFAR-100 epoch (50,000 train + 10,000 test images) "
             "at the measured rates"]
    for name, f in report["flops"].items():
        notes.append(f"{name}: {f['parameters']:,} params, {f['forward_flops_per_image'] / 1e9:.3f} GFLOP/image "
                     f"forward, {f['train_flops_per_image'] / 1e9:.3f} GFLOP/image training "
                     f"({f['train_to_forward']:.2f}x forward)")
    for q in report["ratios"]:
        note = "same numerics" if q["same_numerics"] else f"{q['precision']} vs the handout's fp32"
        notes.append(f"cvlab / handout  {q['model']:<17} {q['precision']:<4} cl={yes_no(q['channels_last'])} "
                     f"compile={yes_no(q['compile'])} optim={q['optimizer_impl']:<7}: train {q['train_speedup']:.2f}x, "
                     f"eval {q['eval_speedup']:.2f}x, data {q['data_speedup']:.1f}x"
                     + (f"; per CPU second: train {q['train_speedup_cpu_time']:.2f}x, eval {q['eval_speedup_cpu_time']:.2f}x"
                        if q["train_speedup_cpu_time"] else "") + f" ({note})")
    unfinished = len(report["results"]) - len(results)
    if unfinished:
        notes.append(f"{unfinished} row(s) not fully measured (the run was stopped): see their windows in the JSON")
    for r in results:
        if r["compile"]:
            notes.append(f"compile warm-up (not timed) {r['model']} {r['precision']} cl={yes_no(r['channels_last'])}: "
                         f"{r['compile_warmup_seconds']:.1f} s")
    return "\n".join(lines + [""] * markdown + [bullet + n for n in notes])


def canonical_command(s: Settings) -> str:
    def flags(values: list[bool]) -> str:
        return ",".join(yes_no(v) for v in values)
    args = ["python", "-m", "cvlab", "bench", "--device", s.device.type, "--models", ",".join(s.models),
            "--paths", ",".join(s.paths), "--batch-size", str(s.batch_size), "--eval-batch-size",
            str(s.eval_batch_size), "--steps", str(s.steps), "--windows", str(s.windows), "--warmup", str(s.warmup),
            "--precision", ",".join(s.precisions), "--channels-last", flags(s.channels_last),
            "--compile", flags(s.compile), "--optimizer-impl", ",".join(s.optimizer_impl), "--seed", str(s.seed)]
    return shlex.join(args + (["--augment"] if s.augment else []) + [f"--threads={torch.get_num_threads()}"])


def run_bench(s: Settings, log: Callable[[str], None] = print,
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Measure every (model, path, variant); `on_row(report)` sees the partial report after every round of
    windows (rows still being measured have None where a figure has no window yet) and after each model."""
    data = in_memory_data(s.n_train, s.n_test, s.seed)
    env = environment(s.device)
    log(f"cvlab bench on {env['device']} ({env['cpu']}), torch {torch.__version__}, {env['torch_threads']} threads; "
        f"batch {s.batch_size} (eval {s.eval_batch_size}), {s.windows} windows x {s.steps} steps after "
        f"{s.warmup} warm-up steps; synthetic uint8 data in memory")
    started = time.perf_counter()
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": canonical_command(s),
        "environment": env,
        "settings": {"models": s.models, "paths": s.paths, "batch_size": s.batch_size,
                     "eval_batch_size": s.eval_batch_size, "steps": s.steps, "windows": s.windows,
                     "warmup": s.warmup, "precision": s.precisions, "channels_last": s.channels_last,
                     "compile": s.compile, "optimizer_impl": s.optimizer_impl, "augment": s.augment, "seed": s.seed,
                     "train_images": s.n_train, "eval_images": s.n_test, "optimizer": f"adam lr={HANDOUT_LR}",
                     "normalization": "handout", "data": "synthetic random uint8 in memory"},
        "flops": {m: count_flops(m) for m in s.models},
        "results": [],
        "ratios": [],
        "complete": False,
        "bench_seconds": 0.0,
        "load_average_1m_end": None,
    }

    finished: list[dict] = []

    def publish(in_progress: list[dict]) -> None:  # the finished rows and those still being measured
        report["results"] = finished + [derive(row, report["flops"][row["model"]]) for row in in_progress]
        report["ratios"] = ratios(report["results"])
        report["bench_seconds"] = round(time.perf_counter() - started, 1)
        report["load_average_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        if on_row is not None:
            on_row(report)

    variants = list(itertools.product(s.precisions, s.channels_last, s.compile, s.optimizer_impl))
    for model_name in s.models:
        contenders = []
        if "handout" in s.paths:
            log(f"  {model_name}: preparing the handout loop")
            contenders.append(handout_contender(s, model_name, data))
        if "cvlab" in s.paths:
            for precision, cl, comp, impl in variants:
                log(f"  {model_name}: preparing cvlab {precision} channels_last={yes_no(cl)} compile={yes_no(comp)} "
                    f"optimizer={impl}")
                contenders.append(cvlab_contender(s, model_name, data, precision, cl, comp, impl))
        log(f"  {model_name}: timing {len(contenders)} contenders, interleaved")
        rows = measure(contenders, s, on_window=publish)
        finished.extend(derive(row, report["flops"][row["model"]]) for row in rows)
        publish([])
        del contenders
    report["complete"] = True
    if on_row is not None:
        on_row(report)
    return report
