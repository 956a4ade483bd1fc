"""Train one epoch, evaluate, and fit: the loop that turns a Config into a run directory.

A `TrainStep` (model, optimizer, precision, scaler, optional schedule and EMA) and an `EvalStep` (model,
precision, test-time flip) are built once per run; `train_one_epoch` and `evaluate` drive them over a loader.

Metrics are accumulated on the device and read once per epoch (plus one read every
`log_every` steps for the progress bar), so the step itself never waits for the host.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from . import device as devices
from . import distributed
from .augment import build_augment, build_mix
from .config import Config, from_dict
from .data import Cifar100, Split, TensorLoader, load_for_config
from .ema import WeightEMA
from .errors import Diverged, RunDirError, first_line
from .models import build_model, count_parameters
from .paths import REPO_ROOT
from .runs import RunDir, disk_error, select_best, summarize_history
from .tblog import with_tensorboard


# ---------------------------------------------------------------------------- optimizer and schedule

def optimizer_impl_kwargs(impl: str, params: list[torch.Tensor], optimizer: str = "adam") -> dict:
    """Constructor flags choosing the update kernels for parameters on one device: decided in
    cvlab.core.device (fused/foreach only where the installed torch has them for that device)."""
    device = params[0].device if params else torch.device("cpu")
    kernels, _ = devices.decide_optimizer_kernels(impl, optimizer, devices.probe(device))
    return devices.OPTIMIZER_KWARGS[kernels]


def parameter_groups(cfg: Config, model: nn.Module) -> list[dict]:
    """One group for all trainable parameters, or with `wd_exclude_norm_bias` two: weights of
    convolutions and linear layers (decayed), and 1-D parameters, i.e. BN weights/biases and all
    biases (not decayed: the "no bias decay" heuristic of He et al. 2019; notebook 03 §2.9 says
    what it changes in these networks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.wd_exclude_norm_bias:
        return [{"params": params}]
    decayed = [p for p in params if p.ndim > 1]
    exempt = [p for p in params if p.ndim <= 1]
    return [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: nn.Module, impl: dict | None = None) -> torch.optim.Optimizer:
    """The configured optimizer; `impl` = kernel flags from the device plan, else decided here."""
    params = parameter_groups(cfg, model)
    if impl is None:
        impl = optimizer_impl_kwargs(cfg.optimizer_impl, [p for group in params for p in group["params"]],
                                     cfg.optimizer)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **impl)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **impl)
    return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **impl)


@dataclass
class LRShape:
    """LR multiplier per step: linear warmup 0 -> 1, then constant, cosine to 0, or linear
    decay to 0 ("onecycle": the triangular one-cycle policy, Smith 2018)."""

    kind: str
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 - t  # onecycle


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total_steps = cfg.epochs * steps_per_epoch
    shape = LRShape(cfg.schedule, total_steps, round(cfg.warmup * total_steps))  # warmup: a fraction of the run
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)


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
                    desc: str = "train") -> dict:
    """One pass of `step` over `loader`; returns mean loss, top-1 and top-5 accuracy (fractions), images, seconds,
    and `nonfinite_step`: None, or the (1-based) step of the first non-finite loss, where the pass stopped early.
    Metrics stay on the device until the end (one read per epoch, plus one every `log_every` steps with `progress`)."""
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
        if progress and i % log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if not finite.item():
                break  # diverged: the rest of the epoch would train on NaN
    devices.synchronize(step.device)
    seconds = time.perf_counter() - start
    loss_total, correct_total, correct5_total, seen = distributed.sum_counts(loss_sum, correct, correct5, seen)
    return {"loss": loss_total / seen, "acc": correct_total / seen, "top5": correct5_total / seen,
            "images": seen, "seconds": seconds,
            "nonfinite_step": None if finite.item() else int(finite_steps.item()) + 1}


@torch.inference_mode()
def evaluate(step: EvalStep, loader: TensorLoader, progress: bool = False, desc: str = "test") -> dict:
    """Mean loss (no label smoothing), top-1 and top-5 accuracy of `step`'s logits over `loader`."""
    step.model.eval()
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), device=step.device, dtype=torch.long)
    correct5 = torch.zeros((), device=step.device, dtype=torch.long)
    seen = 0
    for x, y in _progress(loader, desc, progress):
        logits = step.logits(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        correct5 += _top_k_correct(logits, y, 5)
        seen += y.shape[0]
    loss_total, correct_total, correct5_total, seen = distributed.sum_counts(loss_sum, correct, correct5, seen)
    return {"loss": loss_total / seen, "acc": correct_total / seen, "top5": correct5_total / seen}


# ---------------------------------------------------------------------------- fit

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global RNG states as tensors and plain values (a checkpoint must hold nothing else)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def git_commit() -> str | None:
    """The commit of the cvlab checkout, with '-dirty' when it has local changes; None outside git."""
    repo = REPO_ROOT
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


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

    @property
    def train_model(self) -> nn.Module:
        return self.train_step.model

    @property
    def eval_model(self) -> nn.Module:
        return self.eval_step.model

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
    group, device = distributed.join(device, cfg.batch_size)  # one process without torchrun
    plan = devices.make_plan(cfg, devices.probe(device))  # precision, kernels, compile: decided by capability
    devices.apply_plan(plan, device)
    precision = plan.precision
    data = load_for_config(cfg) if data is None else data
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
    optimizer = build_optimizer(cfg, model, plan.optimizer_kwargs)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    scaler = devices.make_grad_scaler(device) if plan.grad_scaler else None
    train_step = TrainStep(train_model, optimizer, device, precision, scaler, cfg.label_smoothing, scheduler, ema)
    eval_step = EvalStep(ema.module if ema is not None else plain_eval_model, device, precision, cfg.tta_flip)
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
    """Run the training and evaluation steps once for every batch shape the loaders produce, then restore
    the model, optimizer, grad scaler and global RNG: compilation and autotuning happen here, outside the timed
    epochs, and the run computes what it would have computed without the warm-up. Returns its seconds."""
    model_state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    optimizer_state = copy.deepcopy(t.optimizer.state_dict())
    scaler_state = copy.deepcopy(t.scaler.state_dict()) if t.scaler is not None else None
    rng = rng_state()  # dropout or random augmentations would otherwise draw from it
    # The schedule must not advance and the EMA must not average warm-up steps; evaluation runs the compiled model.
    train_step = dataclasses.replace(t.train_step, scheduler=None, ema=None)
    eval_step = t.eval_step if t.group.parallel else dataclasses.replace(t.eval_step, model=t.train_model)
    devices.synchronize(t.device)
    start = time.perf_counter()
    train = TensorLoader(_shape_probe(t.train_loader), t.train_loader.batch_size, t.device, t.cfg.normalization,
                         augment=t.train_loader.augment, channels_last=t.cfg.channels_last,
                         drop_last=t.train_loader.drop_last, mix=t.train_loader.mix, shard=t.train_loader.shard,
                         equal_shards=t.train_loader.equal_shards)
    test = TensorLoader(_shape_probe(t.test_loader), t.test_loader.batch_size, t.device, t.cfg.normalization,
                        channels_last=t.cfg.channels_last, shard=t.test_loader.shard)
    train_one_epoch(train_step, train, desc="warm-up")
    evaluate(eval_step, test, desc="warm-up")
    devices.synchronize(t.device)
    seconds = time.perf_counter() - start
    t.model.load_state_dict(model_state)
    t.optimizer.load_state_dict(optimizer_state)
    if scaler_state is not None:
        t.scaler.load_state_dict(scaler_state)
    set_rng_state(rng)
    return seconds


def checkpoint_state(t: Trainer, epoch: int, history: list[dict]) -> dict:
    """Everything a resumption needs, as tensors and plain values only (see runs.load_checkpoint)."""
    return {
        "epoch": epoch,
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "config": t.cfg.to_dict(),
        "history": history,
        "rng": rng_state(),
        "loader": t.train_loader.state_dict(),
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "cvlab_version": __version__,
    }


def best_state(t: Trainer, row: dict) -> dict:
    """best.pt: the weights of the epoch with the highest validation accuracy so far (model and, when the
    run keeps one, the EMA it was evaluated with), with the config; the same format as last.pt."""
    return {
        "epoch": row["epoch"],
        "model": t.model.state_dict(),
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "config": t.cfg.to_dict(),
        "selected_by": "val_acc",
        "val_acc": row["val_acc"],
        "cvlab_version": __version__,
    }


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "config", "history", "rng", "loader")


def restore(t: Trainer, state: dict) -> tuple[int, list[dict]]:
    """Load a last.pt state into the trainer; (epochs done, history). One line when it is incomplete."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise RunDirError(f"the checkpoint lacks {', '.join(missing)}; it cannot be resumed")
    try:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        if t.scaler is not None and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        t.train_loader.load_state_dict(state["loader"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise RunDirError(f"the checkpoint does not fit this run ({type(exc).__name__}: {first_line(exc)})") from None
    if t.ema is not None:
        if not state.get("ema"):
            raise RunDirError("the checkpoint has no EMA state to resume the weight average from")
        t.ema.load_state_dict(state["ema"])
    return int(state["epoch"]), list(state["history"])


def summarize(t: Trainer, history: list[dict], status: str, seconds: float) -> dict:
    """metrics.json: status, final and best figures (see runs.summarize_history), time, device, versions."""
    s = summarize_history(history)
    final = {k: None for k in ("train_loss", "train_acc", "test_loss", "test_acc", "test_top5")}
    final.update({k: v for k, v in s["final"].items() if k != "epoch"})
    return {
        "status": status,
        "epochs_done": s["epochs"],
        "epochs_planned": t.cfg.epochs,
        "final": final,
        # The epoch a user should pick: chosen on the validation split only; its test figures are reported, not used.
        "best": s["best"],
        # For reference only: picking the epoch by test accuracy would overfit the test set.
        "best_test_acc": s["best_test_acc"],
        "best_test_acc_epoch": s["best_test_acc_epoch"],
        "evaluated_weights": "ema" if t.ema is not None else "model",
        "tta_flip": t.cfg.tta_flip,
        "total_seconds": round(seconds, 2),
        "compile_warmup_seconds": round(t.warmup_seconds, 2),
        "mean_images_per_second": s["mean_images_per_second"],
        "device": devices.device_name(t.device),
        "device_type": t.device.type,
        **t.group.describe(),  # world_size, backend: the data-parallel processes (1, None without torchrun)
        "precision": t.precision,
        "plan": dataclasses.asdict(t.plan) if t.plan is not None else None,  # kernels, compile, notes
        "parameters": count_parameters(t.model),
        "seed": t.cfg.seed,
        "dataset": t.dataset,
        "versions": {"cvlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "git_commit": t.commit},
    }


class NonFiniteLoss(Exception):
    """Raised by `run_epoch` when a training loss was NaN or infinite."""

    def __init__(self, epoch: int, step: int, steps: int):
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}/{steps}")
        self.epoch, self.step, self.steps = epoch, step, steps


def run_epoch(t: Trainer, epoch: int) -> dict:
    """Train one epoch, then evaluate (EMA weights when enabled) on the validation and test sets: a history row.
    Raises NonFiniteLoss (before evaluating) when a training loss was not finite."""
    lr = t.optimizer.param_groups[0]["lr"]
    epoch_start = time.perf_counter()
    train = train_one_epoch(t.train_step, t.train_loader, t.cfg.progress, t.cfg.log_every,
                            desc=f"epoch {epoch}/{t.cfg.epochs}")
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


def fit(cfg: Config | None, out: str | Path, resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> Path:
    """Train `cfg` for its epochs, writing the run directory `out` after every epoch.

    With `resume`, continue from `out/last.pt` (its config.json wins; `cfg` may be None, and may only
    change what runs.resume_changes allows: where it runs, and the epochs of a constant-schedule run).
    A run stopped before its first epoch ended starts again from its config.json.
    Nothing is created before the start is known to be valid (settings, data); one process at a time
    writes the directory (run.lock). Ctrl-C leaves it valid up to the last finished epoch; a non-finite
    loss stops training with status "diverged" and raises errors.Diverged.
    """
    distributed.join(devices.resolve_device(cfg.device if cfg is not None else "auto"),
                     cfg.batch_size if cfg is not None else None)
    if not distributed.is_main_process():
        return _follow()  # under torchrun: rank 0 does all of this, the others train in step with it
    run = RunDir(out)
    try:
        run.check_start(resume)
        if resume:
            cfg = run.resume_config(cfg)
        elif cfg is None:
            raise RunDirError("fit needs a config unless it resumes a run")
    except Exception as exc:
        distributed.share({"error": str(exc)})  # the others stop with rank 0's message instead of waiting
        raise
    distributed.share({"config": cfg.to_dict(), "resume": resume, "run_dir": str(run.path)})
    t = build_trainer(cfg)  # loads the data: a start that fails here leaves nothing behind
    with run.open(resume):
        return _train(t, run, resume, on_epoch_end, log)


def _train(t: Trainer, run: RunDir, resume: bool, on_epoch_end, log) -> Path:
    cfg = t.cfg
    start_epoch, history = 0, []
    if resume and run.has_checkpoint("last"):
        start_epoch, history = restore(t, run.load_checkpoint("last", map_location=t.device))
        if cfg.epochs < start_epoch:
            raise RunDirError(f"cannot resume {run.path} with epochs {cfg.epochs}: it has already trained "
                              f"{start_epoch} epochs")
        log(f"resuming {run.path} after epoch {start_epoch}")
        distributed.warn_if_resized(run.path / "metrics.json", t.group, log)
    if not resume or not run.has_checkpoint("last") or run.read_config().get("epochs") != cfg.epochs:
        # A new run, a restart of one stopped before its first epoch, or an extended run: its config as it now is.
        saved = run.read_config() if resume else {}
        run.write_config(cfg if not saved else from_dict({**saved, "epochs": cfg.epochs}))
    log(f"{cfg.preset}: {cfg.model} ({count_parameters(t.model):,} parameters) on {devices.device_name(t.device)}, "
        f"{t.precision}; {t.dataset['n_train']:,} train / {t.dataset['n_test']:,} test images"
        f"{' (SYNTHETIC)' if t.dataset['synthetic'] else ''}; {len(t.train_loader)} steps/epoch; run dir {run.path}")
    if t.warmup_seconds:
        log(f"compile warm-up: {t.warmup_seconds:.1f} s (not counted in epoch times)")
    on_epoch_end = with_tensorboard(cfg.tensorboard, run.path, on_epoch_end, log)  # RUN/tb, when asked for
    log(HEADER + (VAL_HEADER if t.val_loader is not None else ""))
    elapsed = sum(r["epoch_seconds"] for r in history)
    best = select_best(history)
    best_val = best["val_acc"] if best else -math.inf
    resume_hint = f"python -m cvlab train --resume --out {run.path}"
    status = "running"
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            row = run_epoch(t, epoch)
            saved_epochs = len(history)
            try:
                if row.get("val_acc") is not None and row["val_acc"] > best_val:
                    run.save_checkpoint(best_state(t, row), "best")  # before last.pt: a resume redoes this epoch
                    best_val = row["val_acc"]
                run.save_checkpoint(checkpoint_state(t, epoch, history + [row]), "last")
                saved_epochs += 1
                history.append(row)
                elapsed += row["epoch_seconds"]
                run.write_history(history)
                status = "complete" if epoch == cfg.epochs else "running"
                run.write_metrics(summarize(t, history, status, elapsed))
            except OSError as exc:
                try:
                    run.write_metrics(summarize(t, history[:saved_epochs], "interrupted", elapsed))
                except OSError:
                    pass
                raise RunDirError(f"cannot save epoch {epoch} in {run.path} ({disk_error(exc)}); the run directory "
                                  f"keeps epoch {saved_epochs}; make room, then continue with: {resume_hint}") from None
            log(format_row(row))
            if on_epoch_end is not None:
                on_epoch_end(row)
    except KeyboardInterrupt:
        run.write_metrics(summarize(t, history, "interrupted", elapsed))
        log(f"interrupted after epoch {len(history)}; continue with: {resume_hint}")
        raise
    except NonFiniteLoss as exc:
        metrics = summarize(t, history, "diverged", elapsed)
        metrics["diverged"] = {"epoch": exc.epoch, "step": exc.step, "steps_per_epoch": exc.steps}
        run.write_metrics(metrics)
        raise Diverged(f"training diverged: {exc}; {run.path} keeps its last good epoch ({len(history)}); "
                       "lower the learning rate and start a new run") from None
    if status != "complete":  # nothing left to train (resumed a finished run)
        run.write_metrics(summarize(t, history, "complete", elapsed))
    return run.path


def _follow() -> Path:
    """A data-parallel process other than rank 0: the same trainer and epochs as rank 0 (its config and
    checkpoint), every collective in step with it, nothing written and nothing printed."""
    start = distributed.share()
    if "error" in start:
        raise RunDirError(start["error"])
    cfg, run = from_dict({**start["config"], "progress": False}), RunDir(start["run_dir"])
    t = build_trainer(cfg)
    start_epoch = 0
    if start["resume"] and run.has_checkpoint("last"):
        start_epoch, _ = restore(t, run.load_checkpoint("last", map_location=t.device))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        run_epoch(t, epoch)
    return run.path
