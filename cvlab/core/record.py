"""The trainer's side of a run directory: what a training run writes into it, and reads back when it resumes.

The checkpoint's content (`checkpoint_state`, `best_state`, the RNG states) and its way back into a trainer
(`restore`); metrics.json (`summarize`, with the wall time of `WallClock`); and `Recording`, rank 0's context
around the epoch loop, with `Follower`, what the other processes of a data-parallel run do in its place. The
directory itself (files, lock, resume rules, loading) is core/runs.py's.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import platform
import random
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from .. import __version__
from . import device as devices
from .config import Config, from_dict
from .distributed import Group
from .ema import WeightEMA
from .errors import Diverged, NonFiniteLoss, RunDirError, cause, disk_error
from .loader import TensorLoader
from .models import count_parameters
from .runs import RunDir
from .signals import stop_reason
from .summary import select_best, summarize_history


class Trainer(Protocol):
    """What this module reads of an engine.Trainer. engine imports this module, so the trainer is described
    here by its attributes instead of imported."""

    cfg: Config
    device: torch.device
    precision: str
    model: nn.Module
    train_loader: TensorLoader
    dataset: dict
    commit: str | None
    warmup_seconds: float
    plan: devices.Plan | None
    group: Group

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler: ...

    @property
    def scaler(self) -> torch.amp.GradScaler | None: ...

    @property
    def ema(self) -> WeightEMA | None: ...


# ---------------------------------------------------------------------------- the checkpoint and metrics format

def rng_state() -> dict:
    """The global RNG states as tensors and plain values (a checkpoint must hold nothing else)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    npu = getattr(torch, "npu", None)  # torch_npu registers torch.npu with the CUDA-like RNG calls
    if npu is not None and npu.is_available():
        state["npu"] = npu.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npu = getattr(torch, "npu", None)
    if "npu" in state and npu is not None and npu.is_available():  # dropout on an NPU resumes exactly
        npu.set_rng_state_all([s.cpu() for s in state["npu"]])


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
        raise RunDirError(f"the checkpoint does not fit this run ({cause(exc)})") from None
    if t.ema is not None:
        if not state.get("ema"):
            raise RunDirError("the checkpoint has no EMA state to resume the weight average from")
        t.ema.load_state_dict(state["ema"])
    return int(state["epoch"]), list(state["history"])


def resumed_start(run: RunDir, t: Trainer, resume: bool) -> tuple[int, list[dict]]:
    """(epochs done, their history rows) of the run `t` starts: a resumed run's last.pt restored into `t`; (0, [])
    for a new run, or a resumed one stopped before its first epoch ended. Every process of a run starts here
    (Recording on rank 0, Follower on the others)."""
    if not (resume and run.has_checkpoint("last")):
        return 0, []
    # Read to the CPU whatever the device: each load_state_dict places its tensors, and generator states
    # must stay CPU byte tensors (Generator.set_state refuses CUDA/NPU tensors).
    start_epoch, history = restore(t, run.load_checkpoint("last", map_location="cpu"))
    if t.cfg.epochs < start_epoch:
        raise RunDirError(f"cannot resume {run.path} with epochs {t.cfg.epochs}: it has already trained "
                          f"{start_epoch} epochs")
    return start_epoch, history


def snapshot(t: Trainer) -> dict:
    """A copy of the trainer's state, as `restore` takes it back: `checkpoint_state`, detached from the live
    tensors (e.g. for steps whose effect must not last: engine.warm_up)."""
    return copy.deepcopy(checkpoint_state(t, 0, []))


@dataclass
class WallClock:
    """The end-to-end wall time of a training call (`fit`): start-up (from the call to the first epoch: data,
    model, compile warm-up, resume), the epochs, and the saving after each (checkpoints, history). `total_seconds`
    in metrics.json sums only the epochs; this is what a user waits for."""

    started: float = field(default_factory=time.perf_counter)
    before: float = 0.0                # wall seconds of the earlier sessions of a resumed run
    startup: float | None = None       # seconds from the call to the start of this session's first epoch
    saving: float = 0.0                # seconds spent saving after this session's epochs
    saves: int = 0

    def epochs_begin(self) -> None:
        if self.startup is None:
            self.startup = time.perf_counter() - self.started

    def saved(self, seconds: float) -> None:
        self.saving, self.saves = self.saving + seconds, self.saves + 1

    def describe(self, history: list[dict], epochs: int) -> dict:
        """wall_seconds (all sessions), startup_seconds and save_seconds (this session), and the projection
        startup + epochs x (mean epoch + mean save) of the whole planned run from the epochs done (None before one)."""
        epoch_mean = sum(r["epoch_seconds"] for r in history) / len(history) if history else None
        save_mean = self.saving / self.saves if self.saves else 0.0
        projected = None if epoch_mean is None or self.startup is None else \
            round(self.startup + epochs * (epoch_mean + save_mean), 1)
        return {"wall_seconds": round(self.before + time.perf_counter() - self.started, 2),
                "startup_seconds": None if self.startup is None else round(self.startup, 2),
                "save_seconds": round(self.saving, 2), "projected_wall_seconds": projected}


def summarize(t: Trainer, history: list[dict], status: str, seconds: float, clock: WallClock | None = None) -> dict:
    """metrics.json: status, final and best figures (see summary.summarize_history), time, device, versions."""
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
        "total_seconds": round(seconds, 2),  # the epochs' own seconds (training and evaluation), summed
        # End to end (start-up, epochs, saving) and the projection of the planned epochs from those done: WallClock.
        **(clock.describe(history, t.cfg.epochs) if clock is not None else {}),
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


# ---------------------------------------------------------------------------- one run's recording

class Recording:
    """Rank 0's side of a training run, as a context manager around the epoch loop: the lock on enter;
    `start` restores last.pt into the trainer and writes config.json; `save_epoch` writes best.pt, last.pt,
    history.csv and metrics.json after every epoch; on exit metrics.json gets the status (complete,
    interrupted by Ctrl-C or SIGTERM, diverged) and the lock is released."""

    def __init__(self, run: RunDir, t: Trainer, resume: bool, log: Callable[[str], None],
                 clock: WallClock | None = None):
        self.run, self.t, self.resume, self.log = run, t, resume, log
        self.clock = clock or WallClock()
        self.history: list[dict] = []
        self.elapsed = 0.0            # the epochs' own seconds, summed (metrics.json's total_seconds)
        self.best_val = -math.inf
        self.status = "running"
        self.started = False          # set by `start`: only then does the exit write a status
        self.hint = f"python -m cvlab train --resume --out {shlex.quote(str(run.path))}"  # pasteable as is

    def __enter__(self) -> "Recording":
        self.run.open(self.resume)
        return self

    def start(self) -> int:
        """Restore last.pt (a resumed run) and write config.json; the number of epochs already done."""
        run, t, cfg = self.run, self.t, self.t.cfg
        start_epoch, self.history = resumed_start(run, t, self.resume)
        if start_epoch:
            self.log(f"resuming {run.path} after epoch {start_epoch}")
            earlier = self._earlier_metrics()
            try:
                self.clock.before = float(earlier.get("wall_seconds") or 0.0)  # earlier sessions' wall time
            except (TypeError, ValueError):
                pass
            if earlier.get("world_size", t.group.world_size) != t.group.world_size:
                self.log(f"warning: the run was trained with {earlier['world_size']} process(es), it resumes with "
                         f"{t.group.world_size}: same batches, other augmentation draws than an uninterrupted run")
        saved = run.read_config() if self.resume else {}
        if saved.get("epochs") != cfg.epochs or not run.has_checkpoint("last"):
            # A new run, a restart of one stopped before its first epoch, or an extended run.
            run.write_config(cfg if not saved else from_dict({**saved, "epochs": cfg.epochs}))
        self.elapsed = sum(r["epoch_seconds"] for r in self.history)
        best = select_best(self.history)
        self.best_val = best["val_acc"] if best else -math.inf
        self.clock.epochs_begin()
        self.started = True
        return start_epoch

    def _earlier_metrics(self) -> dict:
        """metrics.json of the earlier sessions; {} when unreadable (that costs only their wall time)."""
        try:
            metrics = self.run.read_metrics()
        except RunDirError:
            return {}
        return metrics if isinstance(metrics, dict) else {}

    def save_epoch(self, row: dict) -> None:
        """best.pt (a new best validation accuracy), last.pt, history.csv, metrics.json. A full disk stops the
        run with one line; the run directory then keeps the epochs whose last.pt was written."""
        run, t, epoch = self.run, self.t, row["epoch"]
        save_start = time.perf_counter()
        try:
            if row.get("val_acc") is not None and row["val_acc"] > self.best_val:
                run.save_checkpoint(best_state(t, row), "best")  # before last.pt: a resume redoes this epoch
                self.best_val = row["val_acc"]
            run.save_checkpoint(checkpoint_state(t, epoch, self.history + [row]), "last")
            self.history.append(row)
            self.elapsed += row["epoch_seconds"]
            run.write_history(self.history)
            self.clock.saved(time.perf_counter() - save_start)
            self.status = "complete" if epoch == t.cfg.epochs else "running"
            run.write_metrics(summarize(t, self.history, self.status, self.elapsed, self.clock))
        except OSError as exc:
            self._write_quietly("interrupted")
            raise RunDirError(f"cannot save epoch {epoch} in {run.path} ({disk_error(exc)}); the run directory "
                              f"keeps epoch {len(self.history)}; make room, then continue with: {self.hint}") from None

    def _write_quietly(self, status: str) -> None:
        try:
            self.run.write_metrics(summarize(self.t, self.history, status, self.elapsed, self.clock))
        except OSError:
            pass

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.started:
                pass  # stopped before the epochs began: metrics.json stays as it was
            elif exc_type is None:
                if self.status != "complete":  # nothing left to train (resumed a finished run)
                    self.run.write_metrics(summarize(self.t, self.history, "complete", self.elapsed, self.clock))
            elif issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (errors.Terminated)
                self.run.write_metrics(summarize(self.t, self.history, "interrupted", self.elapsed, self.clock))
                self.log(f"interrupted by {stop_reason(exc)} after epoch {len(self.history)}; "
                         f"continue with: {self.hint}")
            elif issubclass(exc_type, NonFiniteLoss):
                metrics = summarize(self.t, self.history, "diverged", self.elapsed, self.clock)
                metrics["diverged"] = {"epoch": exc.epoch, "step": exc.step, "steps_per_epoch": exc.steps}
                self.run.write_metrics(metrics)
                raise Diverged(f"training diverged: {exc}; {self.run.path} keeps its last good epoch "
                               f"({len(self.history)}); lower the learning rate and start a new run") from None
        finally:
            self.run.close()


class Follower:
    """What a data-parallel process other than rank 0 does where rank 0 records its run (Recording, in
    engine.fit): start as rank 0 does (its checkpoint, when it resumes) and write nothing, so that every
    collective of the epochs runs in step with rank 0."""

    def __init__(self, run: RunDir, t: Trainer, resume: bool) -> None:
        self.run, self.t, self.resume = run, t, resume

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start(self) -> int:
        """The last finished epoch: rank 0's last.pt restored into this process's trainer, as Recording.start does."""
        return resumed_start(self.run, self.t, self.resume)[0]

    def save_epoch(self, row: dict) -> None:
        """Nothing: rank 0 writes the run directory."""
