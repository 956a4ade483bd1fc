"""Train one epoch, evaluate, and fit: the loop that turns a Config into a run directory.

A `TrainStep` (model, optimizer, precision, scaler, optional schedule and EMA) and an `EvalStep` (model,
precision, test-time flip) are built once per run; `train_one_epoch` and `evaluate` drive them over a loader.

Metrics are accumulated on the device and read once per epoch (plus one read every
`log_every` steps for the progress bar), so the step itself never waits for the host.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from . import distributed, signals
from .augment import build_augment, build_mix
from .config import Config, from_dict
from .data import Cifar100, Split, check_num_classes, load_for_config
from .loader import TensorLoader
from .ema import WeightEMA
from .errors import NonFiniteLoss, RunDirError
from .models import build_model, count_parameters
from .optim import build_optimizer, build_scheduler
from .paths import git_commit
from .record import Follower, Recording, WallClock, restore, snapshot
from .runs import RunDir
from .tblog import with_tensorboard


# ---------------------------------------------------------------------------- steps and epochs

@dataclass
class TrainStep:
    """One optimizer step on a batch, with everything that step needs and nothing else: the model, its
    optimizer, the device and precision (autocast), the grad scaler for fp16, label smoothing, and, when
    present, a per-step LR scheduler and a weight EMA updated after every step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    label_smoothing: float = 0.0
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: WeightEMA | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, update; returns the detached mean loss (float32) and logits, still on the device.
        `y` holds class indices, or soft targets (B, classes) when the batch was mixed."""
        with devices.autocast(self.device, self.precision):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return loss.detach(), logits.detach()


@dataclass
class EvalStep:
    """The logits of an eval-mode model under the run's device and precision, optionally averaged with
    those of the mirrored images (test-time flip)."""

    model: nn.Module
    device: torch.device
    precision: str = "fp32"
    tta_flip: bool = False  # average the logits of each image and its mirror

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of `x`; with tta_flip, the mean over x and x flipped left-right."""
        with devices.autocast(self.device, self.precision):
            logits = self.model(x).float()
            if self.tta_flip:
                logits = (logits + self.model(x.flip(3)).float()) / 2
        return logits


def _top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (topk == labels[:, None]).any(dim=1).sum()


def _progress(loader, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(loader, desc=desc, total=len(loader), leave=False, disable=not enabled, dynamic_ncols=True)


def train_one_epoch(step: TrainStep, loader: TensorLoader, progress: bool = False, log_every: int = 10,
                    desc: str = "train", on_step: Callable[[int, int], None] | None = None) -> dict:
    """One pass of `step` over `loader`; returns mean loss, top-1 and top-5 accuracy (fractions), images, seconds,
    and `nonfinite_step`: None, or the (1-based) step of the first non-finite loss, where the pass stopped early.
    Metrics stay on the device until the end (one read per epoch, plus one every `log_every` steps with `progress`;
    every step on the CPU, where a read costs nothing and steps are slow). `on_step(step, steps)` is called
    after each step (1-based), e.g. for a time estimate."""
    step.model.train()
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), device=step.device, dtype=torch.long)
    correct5 = torch.zeros((), device=step.device, dtype=torch.long)
    # Non-finite losses are tracked on the device (no host sync per step) and read where the loop syncs anyway.
    finite = torch.ones((), device=step.device, dtype=torch.bool)
    finite_steps = torch.zeros((), device=step.device, dtype=torch.long)  # steps before the first non-finite loss
    seen = 0
    devices.synchronize(step.device)
    start = time.perf_counter()
    bar = _progress(loader, desc, progress)
    for i, (x, y) in enumerate(bar):
        loss, logits = step.step(x, y)
        labels = y if y.ndim == 1 else y.argmax(dim=1)  # soft targets (mixing) count by their main class
        loss_sum += loss * labels.shape[0]
        correct += (logits.argmax(dim=1) == labels).sum()
        correct5 += _top_k_correct(logits, labels, 5)
        seen += labels.shape[0]
        finite &= torch.isfinite(loss)
        finite_steps += finite
        # The progress bar's live loss: a read every log_every steps on request, and every step on the CPU,
        # where a read costs nothing and steps are slow.
        if progress and (i % log_every == 0 or step.device.type == "cpu"):
            bar.set_postfix(loss=f"{loss.item():.4f}")  # sync-ok: progress only
            if not finite.item():  # sync-ok: progress only (the read above has already waited)
                break  # diverged: the rest of the epoch would train on NaN
        if on_step is not None:
            on_step(i + 1, len(loader))
    devices.synchronize(step.device)
    seconds = time.perf_counter() - start
    loss_total, correct_total, correct5_total, seen = distributed.sum_counts(loss_sum, correct, correct5, seen)
    return {"loss": loss_total / seen, "acc": correct_total / seen, "top5": correct5_total / seen,
            "images": seen, "seconds": seconds,
            "nonfinite_step": None if finite.item() else int(finite_steps.item()) + 1}


@torch.inference_mode()
def evaluate(step: EvalStep, loader: TensorLoader, progress: bool = False, desc: str = "test",
             keep_logits: bool = False) -> dict:
    """Mean loss (no label smoothing), top-1 and top-5 accuracy of `step`'s logits over `loader`.
    With `keep_logits`, also "logits" (float32, N x classes) and "targets" (N labels) of this process's images,
    in the loader's order, on the CPU (read once at the end)."""
    step.model.eval()
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), device=step.device, dtype=torch.long)
    correct5 = torch.zeros((), device=step.device, dtype=torch.long)
    seen = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in _progress(loader, desc, progress):
        logits = step.logits(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        correct5 += _top_k_correct(logits, y, 5)
        seen += y.shape[0]
        if keep_logits:
            kept.append((logits, y))
    loss_total, correct_total, correct5_total, seen = distributed.sum_counts(loss_sum, correct, correct5, seen)
    result = {"loss": loss_total / seen, "acc": correct_total / seen, "top5": correct5_total / seen}
    if keep_logits:
        result["logits"] = torch.cat([logits for logits, _ in kept]).cpu()
        result["targets"] = torch.cat([y for _, y in kept]).cpu()
    return result


# ---------------------------------------------------------------------------- fit

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


HEADER = f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} {'top5':>6} " \
         f"{'lr':>9} {'seconds':>8} {'img/s':>8}"


VAL_HEADER = f" {'val_loss':>8} {'val_acc':>7}"


def format_row(row: dict) -> str:
    text = (f"{row['epoch']:>5d} {row['train_loss']:>10.4f} {row['train_acc']:>9.4f} {row['test_loss']:>9.4f} "
            f"{row['test_acc']:>8.4f} {row['test_top5']:>6.3f} {row['lr']:>9.2e} {row['epoch_seconds']:>8.1f} "
            f"{row['images_per_second']:>8.0f}")
    if "val_acc" in row:
        text += f" {row['val_loss']:>8.4f} {row['val_acc']:>7.4f}"
    return text


@dataclass
class Trainer:
    """Everything `fit` builds from a config; exposed so notebooks and benchmarks can reuse it.

    The trainer owns its two steps: `train_step` (model, optimizer, scaler, schedule, EMA) and `eval_step`
    (the weights that validation and test accuracy are measured on: the EMA when there is one)."""

    cfg: Config
    device: torch.device
    precision: str
    model: nn.Module              # the plain module (its state is what checkpoints hold)
    train_step: TrainStep         # its model is the compiled one when cfg.compile, else `model`
    eval_step: EvalStep
    train_loader: TensorLoader
    test_loader: TensorLoader
    dataset: dict = field(default_factory=dict)
    val_loader: TensorLoader | None = None  # the validation split, when cfg.val_size > 0
    commit: str | None = None               # git commit of the code that built this trainer (read once)
    warmup_seconds: float = 0.0             # untimed compile warm-up before epoch 1 (see `warm_up`)
    plan: devices.Plan | None = None        # what the device gave the config (precision, kernels, compile)
    group: distributed.Group = field(default_factory=distributed.Group)  # data-parallel processes (torchrun)

    # The training step's state, which every checkpoint saves and a resume restores.
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train_step.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.train_step.scheduler

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.train_step.scaler

    @property
    def ema(self) -> WeightEMA | None:
        return self.train_step.ema


def build_trainer(cfg: Config, data: Cifar100 | None = None) -> Trainer:
    """Data on the device, model, optimizer, schedule: ready for `run_epochs`.

    `data` replaces `load_for_config(cfg)` (used as given, no subsets), e.g. in-memory data for benchmarks.
    """
    device = devices.resolve_device(cfg.device)
    group, device = distributed.placement(device)  # the group fit joined (torchrun); one process without it
    distributed.check_batch(cfg.batch_size, group.world_size)
    plan = devices.make_plan(cfg, devices.probe(device))  # precision, kernels, compile: decided by capability
    devices.apply_plan(plan, device)
    precision = plan.precision
    data = load_for_config(cfg) if data is None else data
    check_num_classes(data, cfg.num_classes)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.num_classes, zero_init_last=cfg.zero_init_last_bn,
                        dropout=cfg.dropout).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parallel_model, model = distributed.wrap(model, group, device, cfg.sync_bn)  # DDP with several processes
    # Static shapes: one graph per batch shape (full and last batch, train and eval) instead of a dynamic one.
    train_model = torch.compile(parallel_model, dynamic=False) if plan.compile else parallel_model
    # Several processes evaluate the bare module: DDP's forward would wait for the others at every batch.
    plain_eval_model = train_model if not group.parallel else (torch.compile(model, dynamic=False) if plan.compile
                                                                else model)
    shard = (group.rank, group.world_size)
    train_loader = TensorLoader(data.train, cfg.batch_size, device, cfg.normalization, shuffle=cfg.shuffle,
                                augment=build_augment(cfg), seed=cfg.seed, channels_last=cfg.channels_last,
                                mix=build_mix(cfg), shard=shard, equal_shards=True)
    test_loader = TensorLoader(data.test, cfg.eval_batch_size, device, cfg.normalization,
                               channels_last=cfg.channels_last, shard=shard)
    val_loader = None if data.val is None else TensorLoader(data.val, cfg.eval_batch_size, device,
                                                            cfg.normalization, channels_last=cfg.channels_last,
                                                            shard=shard)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # Evaluation runs the EMA's weights when there is one: compiled like the rest when the plan compiles.
    eval_model = plain_eval_model if ema is None else (torch.compile(ema.module, dynamic=False) if plan.compile
                                                        else ema.module)
    optimizer = build_optimizer(cfg, model, plan.optimizer_kwargs)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    scaler = devices.make_grad_scaler(device) if plan.grad_scaler else None
    train_step = TrainStep(train_model, optimizer, device, precision, scaler, cfg.label_smoothing, scheduler, ema)
    eval_step = EvalStep(eval_model, device, precision, cfg.tta_flip)
    dataset = {"name": "synthetic-cifar100-format" if data.synthetic else "cifar100",
               "n_train": len(data.train), "n_test": len(data.test), "synthetic": data.synthetic,
               "subset": cfg.subset, "subset_balanced": cfg.subset_balanced, "test_subset": cfg.test_subset,
               "n_val": len(data.val) if data.val is not None else 0, "source": data.source}
    t = Trainer(cfg, device, precision, model, train_step, eval_step, train_loader, test_loader, dataset,
                val_loader, git_commit(), plan=plan, group=group)
    if plan.compile and cfg.compile_warmup:
        t.warmup_seconds = warm_up(t)
    return t


def _shape_probe(loader: TensorLoader) -> Split:
    """The loader's first images, enough for one full batch and one last (partial) batch."""
    n, b = loader.num_images, loader.batch_size
    index = torch.arange(min(n, b), device=loader.labels.device)
    if n > b and n % b and not loader.drop_last:
        index = torch.cat([index, index[: n % b]])
    return Split(loader.images[index], loader.labels[index], loader.labels[index])


def warm_up(t: Trainer) -> float:
    """Run the training step and the evaluation step (the very modules the epochs use: the EMA's when there is
    one) once for every batch shape the loaders produce (training, validation and test, full and last batch),
    then restore the trainer's state (record.snapshot: model, optimizer, grad scaler, global RNG, ...):
    compilation and autotuning happen here, outside the timed epochs, and the run computes what it would have
    computed without the warm-up. Returns its seconds."""
    state = snapshot(t)  # the global RNG too: dropout or random augmentations would draw from it
    # The schedule must not advance and the EMA must not average warm-up steps (its weights are only evaluated).
    train_step = dataclasses.replace(t.train_step, scheduler=None, ema=None)
    devices.synchronize(t.device)
    start = time.perf_counter()
    train_one_epoch(train_step, t.train_loader.like(_shape_probe(t.train_loader)), desc="warm-up")
    for loader in (t.val_loader, t.test_loader):
        if loader is not None:
            evaluate(t.eval_step, loader.like(_shape_probe(loader)), desc="warm-up")
    devices.synchronize(t.device)
    seconds = time.perf_counter() - start
    restore(t, state)
    return seconds


def run_epoch(t: Trainer, epoch: int, on_step: Callable[[int, int, int], None] | None = None) -> dict:
    """Train one epoch, then evaluate (EMA weights when enabled) on the validation and test sets: a history row.
    Raises NonFiniteLoss (before evaluating) when a training loss was not finite."""
    lr = t.optimizer.param_groups[0]["lr"]
    epoch_start = time.perf_counter()
    train = train_one_epoch(t.train_step, t.train_loader, t.cfg.progress, t.cfg.log_every,
                            desc=f"epoch {epoch}/{t.cfg.epochs}",
                            on_step=(lambda i, n: on_step(epoch, i, n)) if on_step is not None else None)
    if train.get("nonfinite_step") is not None:
        raise NonFiniteLoss(epoch, train["nonfinite_step"], len(t.train_loader))
    distributed.broadcast_buffers(t.model, t.ema.module if t.ema is not None else None)
    val = evaluate(t.eval_step, t.val_loader, t.cfg.progress, desc="val") if t.val_loader is not None else None
    test = evaluate(t.eval_step, t.test_loader, t.cfg.progress)
    row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
           "test_loss": test["loss"], "test_acc": test["acc"], "test_top5": test["top5"], "lr": lr,
           "epoch_seconds": round(time.perf_counter() - epoch_start, 3),
           "images_per_second": round(train["images"] / train["seconds"], 1)}
    if val is not None:  # extra columns go after the contract's
        row.update(val_loss=val["loss"], val_acc=val["acc"], val_top5=val["top5"])
    return row


def fit(cfg: Config | dict | None, out: str | Path, resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None, log: Callable[[str], None] = print,
        on_step: Callable[[int, int, int], None] | None = None) -> Path:
    """Train `cfg` for its epochs, writing the run directory `out` after every epoch.

    With `resume`, continue from `out/last.pt` (its config.json wins; `cfg`, a Config or a dict of fields such
    as the command line's options, or None, may only change what runs.resume_changes allows: where it runs,
    and the epochs of a constant-schedule run).
    A run stopped before its first epoch ended starts again from its config.json.
    Nothing is created before the start is known to be valid (settings, data); one process at a time
    writes the directory (run.lock). Ctrl-C or SIGTERM (errors.Terminated) leaves it valid up to the last
    finished epoch, with status "interrupted" and the lock released; a non-finite loss stops training with
    status "diverged" and raises errors.Diverged. `on_step(epoch, step, steps)` is called after every
    training step (e.g. report.plan.StepEstimate).
    """
    clock = WallClock()  # end-to-end wall time, start-up included
    with signals.sigterm_as_interrupt():  # SIGTERM stops the run as Ctrl-C does (errors.Terminated)
        # torchrun's group (no-op without), with a given Config's device and batch: the CLI always gives one (on
        # --resume, the one RunDir.prepare merged); a resume given no Config joins on the default device.
        given = cfg if isinstance(cfg, Config) else None
        distributed.join(devices.resolve_device(given.device if given else "auto"), given.batch_size if given else None)
        main = distributed.is_main_process()  # under torchrun, rank 0 writes; the others train in step, silent
        run, cfg, resume = _prepare(RunDir(out), cfg, resume)  # every check and the resume merge, once
        t = build_trainer(cfg)                             # loads the data: a start that fails here leaves nothing
        record = Recording(run, t, resume, log, clock) if main else Follower(run, t, resume)
        log, on_step = (log, on_step) if main else (_quiet, None)
        with record:                                       # lock; on exit, the status and the lock released
            start_epoch = record.start()                   # last.pt into the trainer (resume), then config.json
            log(banner(t, run.path))
            on_epoch_end = with_tensorboard(cfg.tensorboard, run.path, on_epoch_end, log) if main else None
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                row = run_epoch(t, epoch, on_step)         # train, then evaluate; NonFiniteLoss when it diverged
                record.save_epoch(row)                     # best.pt, last.pt, history.csv, metrics.json
                log(format_row(row))
                if on_epoch_end is not None:
                    on_epoch_end(row)
            if main:
                note = nonfinite_evaluation(record.history)
                if note:
                    log(f"warning: {note}")
    return run.path


def nonfinite_evaluation(history: list[dict]) -> str | None:
    """One line when an epoch's test (or validation) loss was NaN or infinite although training went on (the
    training losses were finite): a run that ends "complete" with figures that mean nothing; else None."""
    bad = [r["epoch"] for r in history
           if any(isinstance(r.get(k), float) and not math.isfinite(r[k]) for k in ("test_loss", "val_loss"))]
    if not bad:
        return None
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return (f"the test or validation loss was not finite in {len(bad)} epoch(s) ({shown}) although the training losses were: "
            "the weights give NaN or infinite outputs on the test images, so those epochs' figures mean nothing "
            "(metrics.json holds null for them); lower the learning rate, or check the data")


def banner(t: Trainer, path: Path) -> str:
    """What a run prints before its first epoch: model, device, precision, data, steps, run directory, and the
    header of the per-epoch table."""
    cfg = t.cfg
    lines = [f"{cfg.preset}: {cfg.model} ({count_parameters(t.model):,} parameters) on "
             f"{devices.device_name(t.device)}, {t.precision}; {t.dataset['n_train']:,} train / "
             f"{t.dataset['n_test']:,} test images{' (SYNTHETIC)' if t.dataset['synthetic'] else ''}; "
             f"{len(t.train_loader)} steps/epoch; run dir {path}"]
    if t.warmup_seconds:
        lines.append(f"compile warm-up: {t.warmup_seconds:.1f} s (not counted in epoch times)")
    lines.append(HEADER + (VAL_HEADER if t.val_loader is not None else ""))
    return "\n".join(lines)


def _prepare(run: RunDir, cfg: Config | dict | None, resume: bool) -> tuple[RunDir, Config, bool]:
    """RunDir.prepare on rank 0, whose start (run directory, config, resume) or one-line error reaches the other
    processes of a data-parallel run, which would otherwise wait for rank 0 forever."""
    if not distributed.is_main_process():
        start = distributed.share()
        if "error" in start:
            raise RunDirError(start["error"])
        return RunDir(start["run_dir"]), from_dict({**start["config"], "progress": False}), start["resume"]
    try:
        cfg = run.prepare(cfg, resume)
    except Exception as exc:
        distributed.share({"error": str(exc)})
        raise
    distributed.share({"config": cfg.to_dict(), "resume": resume, "run_dir": str(run.path)})
    return run, cfg, resume


def _quiet(_: str) -> None:
    """The log of a data-parallel process other than rank 0."""
