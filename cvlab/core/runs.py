"""A run directory on disk and its lifecycle: config.json, history.csv, metrics.json, last.pt, best.pt.

`RunDir` is the one home of what happens to a run directory: preparing it (refusing to reuse a
run unless resuming), one writer at a time (a lock file), its status, which settings a resumption
may change, and the one checkpoint loader (`torch.load(..., weights_only=True)`: a checkpoint is
data, never code). `summarize_history` is the one summary of a history (final, best-by-validation,
lowest test loss). `load_run` / `load_runs` read runs back into pandas for notebooks and tables.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pickle
import platform
import random
import re
import secrets
import shlex
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .. import __version__
from . import device as devices
from .errors import Diverged, NonFiniteLoss, RunDirError, cause, disk_error, first_line
from .lock import RunLock
from .models import count_parameters
from .signals import stop_reason

# `t` below is an engine.Trainer (model, optimizer, scheduler, scaler, EMA, loader, config, device): used by
# its attributes only, so that this module, which engine imports, imports nothing of engine.
Trainer = Any

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
                   "lr", "epoch_seconds", "images_per_second"]
CONFIG, HISTORY, METRICS, CHECKPOINT, BEST, LOCK = ("config.json", "history.csv", "metrics.json", "last.pt",
                                                    "best.pt", "run.lock")
CHECKPOINTS = {"last": CHECKPOINT, "best": BEST}
RUN_FILES = (CONFIG, HISTORY, METRICS, CHECKPOINT, BEST)

# Fields that may differ between a run and its resumption: where and how it executes, not what it computes.
RESUMABLE_FIELDS = {"data_root", "download", "device", "progress", "log_every", "compile", "compile_warmup",
                    "optimizer_impl", "cudnn_benchmark", "tensorboard"}
# Learning-rate schedules whose shape does not depend on the number of epochs: such runs may be extended.
EXTENDABLE_SCHEDULES = ("constant",)


# ---------------------------------------------------------------------------- files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file.

    The file gets the mode any new file gets (0666 minus the umask), and the temp file is removed
    when the write fails (disk full, Ctrl-C); a `kill -9` can leave one, which `RunDir` cleans up."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # named after the file meant, not its temp file: the one line quotes it
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None, so it serializes as strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (non-finite numbers become null), written atomically."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_history(path: Path, rows: list[dict]) -> None:
    columns = HISTORY_COLUMNS + [k for k in (rows[0] if rows else {}) if k not in HISTORY_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically. `state` must hold only tensors and plain Python values
    (dict, list, tuple, str, int, float, bool, None), so that `load_checkpoint` can read it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def check_member_checksums(path: Path) -> None:
    """One-line RunDirError when a member of the zip archive `path` does not match the CRC-32 that torch.save
    recorded for it: damaged bytes (a bad disk, copy or download) would otherwise load as wrong weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - an unreadable archive is a damaged file
        raise RunDirError(f"{path} is not a readable checkpoint (truncated or corrupt: {cause(exc)})") from None
    if bad is not None:
        raise RunDirError(f"{path} is damaged: its member {bad} does not match the checksum torch.save recorded "
                          "(a bad disk, copy or download); use another copy, or train again")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, as data only.

    `torch.load(weights_only=True)` with an explicit allow-list: a file that holds any other object
    (e.g. one whose unpickling would call a function) is refused and nothing of it runs. A missing,
    empty, truncated or foreign file raises RunDirError with one line."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a raw pickle is never unpickled
        what = "empty" if path.stat().st_size == 0 else "truncated, or not written by torch.save (no zip archive)"
        raise RunDirError(f"{path} is not a readable checkpoint ({what})")
    check_member_checksums(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch asks to file an issue
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # torch 2.1's own loader
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # the refused class as each torch words it: "GLOBAL posix.system" (2.4+), "Unsupported class posix.system" (2.1)
        found = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(exc))
        if found:
            raise RunDirError(f"refusing to load {path}: it holds an object of type {found.group(1)}, not only "
                              "tensors and plain values (not a checkpoint cvlab wrote; it may try to run code)") from None
        reason = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
        raise RunDirError(f"{path} is not a readable checkpoint (corrupt or not a checkpoint: "
                          f"{reason.group(1).strip() if reason else first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is bad input
        raise RunDirError(f"{path} is not a readable checkpoint (truncated or corrupt: {cause(exc)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunDirError(f"{path} is not a cvlab checkpoint (expected a dict with model weights)")
    return state


# ---------------------------------------------------------------------------- the history summary

def select_best(history: list[dict]) -> dict | None:
    """The epoch with the highest validation accuracy (first on ties) and its figures; None without a
    validation split. The test set never takes part in the choice."""
    rows = [r for r in history if _finite(r.get("val_acc"))]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["val_acc"])
    return {"selected_by": "val_acc", "epoch": row["epoch"], "val_acc": row["val_acc"], "val_loss": row["val_loss"],
            "test_acc": row["test_acc"], "test_top5": row["test_top5"]}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize_history(history: Iterable[dict]) -> dict:
    """The one summary of a run's per-epoch rows (in epoch order): first and final figures, the best epoch
    by validation accuracy (`best`, None without a validation split), the epoch with the lowest test loss,
    and, for reference only, the highest test accuracy (choosing an epoch by it would overfit the test set)."""
    rows = sorted(history, key=lambda r: r["epoch"])
    if not rows:
        return {"epochs": 0, "first": {}, "final": {}, "best": None, "min_test_loss": None,
                "min_test_loss_epoch": None, "best_test_acc": None, "best_test_acc_epoch": None,
                "total_seconds": 0.0, "mean_images_per_second": None}
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "val_loss", "val_acc", "val_top5")
    scored = [r for r in rows if _finite(r.get("test_loss"))] or rows
    low = min(scored, key=lambda r: r["test_loss"] if _finite(r.get("test_loss")) else math.inf)
    top = max(scored, key=lambda r: r["test_acc"] if _finite(r.get("test_acc")) else -math.inf)
    return {
        "epochs": len(rows),
        "first": {k: rows[0][k] for k in keys if k in rows[0]},
        "final": {k: rows[-1][k] for k in keys if k in rows[-1]},
        "best": select_best(rows),
        "min_test_loss": low.get("test_loss"), "min_test_loss_epoch": low.get("epoch"),
        "best_test_acc": top.get("test_acc"), "best_test_acc_epoch": top.get("epoch"),
        "total_seconds": float(sum(r.get("epoch_seconds", 0.0) for r in rows)),
        "mean_images_per_second": sum(r.get("images_per_second", 0.0) for r in rows) / len(rows),
    }


# ---------------------------------------------------------------------------- resuming

def resume_changes(saved: dict, requested: dict, run: Path | str = "the run") -> dict:
    """The fields of `requested` that a resumption of the run saved as `saved` may take: the
    RESUMABLE_FIELDS, and `epochs` (extending the run) when its schedule does not depend on the length.
    Any other difference raises RunDirError with one line."""
    changes = {k: v for k, v in requested.items() if k in saved and saved[k] != v and k != "preset"}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_FIELDS and k != "epochs"}
    if refused:
        names = ", ".join(f"{k} ({saved[k]!r} -> {v!r})" for k, v in refused.items())
        raise RunDirError(f"cannot change {names} when resuming {run}; resume with the run's own settings "
                          "(python -m cvlab train --resume --out DIR) or start a new run")
    if "epochs" in changes:
        check_extension(saved, changes["epochs"], run)
    return changes


def check_extension(saved: dict, epochs: int, run: Path | str = "the run") -> None:
    """Refuse (one line) to change a run's length when its learning-rate schedule depends on it."""
    if saved.get("schedule") not in EXTENDABLE_SCHEDULES:
        raise RunDirError(
            f"cannot change epochs ({saved.get('epochs')} -> {epochs}) when resuming {run}: its "
            f"{saved.get('schedule')!r} schedule is shaped by the total number of epochs, so a longer run would "
            f"have had other learning rates from the start; start a new run with --epochs {epochs} instead")
    if saved.get("warmup"):  # a warmup given as a share of the run also depends on its length
        raise RunDirError(f"cannot change epochs ({saved.get('epochs')} -> {epochs}) when resuming {run}: its "
                          f"warmup (warmup={saved['warmup']}) is a share of the run's length; start a new run with "
                          f"--epochs {epochs} instead")


# ---------------------------------------------------------------------------- the run directory

class RunDir:
    """One run directory and what may happen to it.

        run = RunDir("runs/demo")
        run.status()                                   # "new", "started", "running", "complete", ...
        state = run.load_checkpoint("last", map_location="cpu")   # data only, never code
        with run.open(resume=False):                   # lock held; created only now
            ...
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = RunLock(self.file(LOCK), self.path)
        self._created = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint_path(self, which: str = "last") -> Path:
        if which not in CHECKPOINTS:
            raise RunDirError(f"unknown checkpoint {which!r}; choose from {', '.join(CHECKPOINTS)}")
        return self.path / CHECKPOINTS[which]

    # ------------------------------------------------------------ reading

    def has_checkpoint(self, which: str = "last") -> bool:
        return self.checkpoint_path(which).is_file()

    def load_checkpoint(self, which: str = "last", map_location: Any = "cpu") -> dict:
        """The checkpoint `which` ("last" or "best") as data (see `load_checkpoint`); one-line errors."""
        path = self.checkpoint_path(which)
        if not path.is_file():
            hint = ("best.pt is written only for runs with a validation split (val_size > 0)" if which == "best"
                    else f"train it first with 'python -m cvlab train --out {self.path}'")
            raise RunDirError(f"{self.path} has no {path.name}; {hint}")
        return load_checkpoint(path, map_location)

    def read_config(self) -> dict:
        """config.json as a dict; one line when it is missing or not a JSON object."""
        path = self.file(CONFIG)
        _refuse_non_file(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path} has no {CONFIG}; it is not a run directory") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path} is unreadable or not valid JSON ({first_line(exc)}); "
                              "restore it or start a new run") from None
        if not isinstance(values, dict):
            raise RunDirError(f"{path} must hold a JSON object of config keys")
        return values

    def config(self):
        """config.json as a validated Config (one line when it is not one)."""
        from .config import from_dict
        from .errors import ConfigError
        try:
            return from_dict(self.read_config())
        except ConfigError as exc:
            raise RunDirError(f"{self.file(CONFIG)} does not hold a valid config: {exc}") from None

    def read_metrics(self) -> dict:
        """metrics.json as a dict, {} when there is none; one line when it is corrupt."""
        path = self.file(METRICS)
        if not path.exists():
            return {}
        _refuse_non_file(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path} is unreadable or not valid JSON ({first_line(exc)})") from None
        return values if isinstance(values, dict) else {}

    def has_run(self) -> bool:
        """Whether a finished epoch exists here (a checkpoint or a history)."""
        return self.has_checkpoint("last") or self.file(HISTORY).exists()

    def status(self) -> str:
        """"new" (no run), "started" (config only: stopped before its first epoch ended), or the status in
        metrics.json: "running", "complete", "interrupted", "diverged". A run that says "running"
        while no live process holds its lock was killed: "interrupted"."""
        if not self.file(CONFIG).exists() and not self.has_run():
            return "new"
        if not self.has_run():  # no finished epoch: stopped early, or diverged in the first one
            return "diverged" if self.read_metrics().get("status") == "diverged" else "started"
        status = self.read_metrics().get("status") or "interrupted"
        if status == "running" and self.lock_holder() is None:
            return "interrupted"
        return status

    # ------------------------------------------------------------ preparing

    def check_start(self, resume: bool) -> None:
        """Raise RunDirError (one line) when a run cannot start (or resume) here; creates nothing."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory; choose another --out")
        if resume:
            if not self.has_checkpoint("last") and not self.file(CONFIG).exists():
                raise RunDirError(f"cannot resume: {path} has no {CHECKPOINT}; start a new run without --resume")
            if not self.has_checkpoint("last") and self.file(HISTORY).exists():
                raise RunDirError(f"cannot resume {path}: its {HISTORY} records finished epochs but {CHECKPOINT} is "
                                  f"missing; restore {CHECKPOINT}, or start a new run in another --out")
            return
        if self.has_run():
            raise RunDirError(f"{path} already holds a run; pass --resume to continue it or choose another --out")
        ancestor = path
        while not ancestor.exists():
            if ancestor.is_symlink():
                raise RunDirError(f"cannot create {path}: {ancestor} is a broken symbolic link")
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise RunDirError(f"cannot create {path}: {ancestor} is a file, not a directory; choose another --out")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot create {path}: {ancestor} is not writable; choose another --out")

    def create(self) -> None:
        """Make the folder (and its parents); one line when the system refuses."""
        if self.path.is_dir():
            return
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise RunDirError(f"cannot create {self.path}: {exc.strerror or exc}; choose another --out") from None
        self._created = True

    def open(self, resume: bool) -> "RunDir":
        """Check the start, create the folder, take the lock and clean up temp files from a killed run.
        Use as a context manager: the lock is released on exit, and a folder this call created is
        removed again when nothing was written into it."""
        self.check_start(resume)
        self.create()
        try:
            self.acquire_lock()
            self.check_start(resume)  # again, now that no one else writes here
            self.remove_temp_files()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; remove the folder when this RunDir created it and it stayed empty."""
        self.release_lock()
        if self._created:
            try:
                self.path.rmdir()  # only succeeds when empty
            except OSError:
                pass
            self._created = False

    def remove_temp_files(self) -> list[Path]:
        """Delete temp files that an interrupted atomic write (kill -9) left behind."""
        removed = []
        for name in RUN_FILES:
            for tmp in self.path.glob(f".{name}.*"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    # ------------------------------------------------------------ one writer (core/lock.py)

    def lock_holder(self) -> dict | None:
        """{pid, host, started} of a live holder of run.lock, else None (see RunLock.holder)."""
        return self._lock.holder()

    def acquire_lock(self) -> None:
        self._lock.acquire()

    def heartbeat(self) -> None:
        self._lock.beat()

    def release_lock(self) -> None:
        self._lock.release()

    # ------------------------------------------------------------ resuming

    def prepare(self, requested, resume: bool):
        """Every check before a run starts, and the config it runs with, once; nothing is created. A new run:
        `requested` (a Config). A resumed one: config.json with the fields of `requested` (a Config, or a dict
        of fields; None = none) that a resumption may change (see `resume_changes`)."""
        from .config import from_dict
        self.check_start(resume)
        if not resume:
            if requested is None:
                raise RunDirError("fit needs a config unless it resumes a run")
            return requested
        if requested is None:
            return self.config()
        values = requested if isinstance(requested, dict) else requested.to_dict()
        saved = self.read_config()
        changes = resume_changes(saved, values, self.path)
        resumable = {k: values[k] for k in RESUMABLE_FIELDS if k in values}
        return from_dict({**saved, **resumable, **changes})

    # ------------------------------------------------------------ writing

    # Each write first checks that a lock this RunDir took is still its own (RunLock.check_owned): a process
    # whose lock was taken over while it was stopped stops with one line instead of writing beside the new holder.

    def write_config(self, cfg) -> None:
        self._lock.check_owned()
        write_json(self.file(CONFIG), cfg.to_dict())

    def write_history(self, rows: list[dict]) -> None:
        self._lock.check_owned()
        write_history(self.file(HISTORY), rows)

    def write_metrics(self, metrics: dict) -> None:
        """metrics.json (written at every epoch end, so the lock's heartbeat beats here too)."""
        self._lock.check_owned()
        write_json(self.file(METRICS), metrics)
        self.heartbeat()

    def save_checkpoint(self, state: dict, which: str = "last") -> None:
        self._lock.check_owned()
        save_checkpoint(self.checkpoint_path(which), state)


def _refuse_non_file(path: Path) -> None:
    """One line when a run file exists but is not a regular file: reading a FIFO would wait forever, a folder
    fails deep inside."""
    if path.exists() and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise RunDirError(f"{path} is {what}; a run directory holds it as a file: restore it or start a new run")


# ---------------------------------------------------------------------------- reading runs back

@dataclass
class Run:
    """A run read back from disk."""

    path: Path
    config: dict
    history: "Any"  # pandas.DataFrame
    metrics: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def synthetic(self) -> bool:
        return bool(self.metrics.get("dataset", {}).get("synthetic", self.config.get("synthetic", False)))

    def summary(self) -> dict:
        """`summarize_history` of this run's history."""
        return summarize_history(self.history.to_dict("records"))


def load_run(path: str | Path) -> Run:
    """Read config, history and metrics of a run directory."""
    import pandas as pd

    run = RunDir(path)
    if not run.file(HISTORY).exists() or not run.file(CONFIG).exists():
        raise RunDirError(f"{run.path} is not a run directory (needs {CONFIG} and {HISTORY}); "
                          "train one with 'python -m cvlab train'")
    _refuse_non_file(run.file(HISTORY))
    try:
        history = pd.read_csv(run.file(HISTORY))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run.file(HISTORY)} is unreadable ({first_line(exc)})") from None
    problem = history_problem(history)
    if problem:
        raise RunDirError(f"{run.file(HISTORY)} is not a history cvlab wrote ({problem}); restore it, or train "
                          "the run again")
    return Run(run.path, run.read_config(), history, run.read_metrics())


def history_problem(history: "Any") -> str | None:
    """What keeps a history.csv DataFrame from being a run's per-epoch record (the HISTORY_COLUMNS, numbers
    only, epochs 1, 2, ... in order), in a few words; None when it is one."""
    import pandas as pd

    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        return f"no column {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
    text = [c for c in history.columns if not pd.api.types.is_numeric_dtype(history[c])]
    if text:
        return f"column {text[0]} holds something other than numbers"
    if list(history["epoch"]) != list(range(1, len(history) + 1)):
        return "its epochs are not 1, 2, 3, ... in order"
    return None


def load_runs(paths: Iterable[str | Path]) -> "Any":
    """Histories of several runs in one long DataFrame with `run`, `preset`, `seed`, `synthetic` columns."""
    import pandas as pd

    frames = []
    for p in paths:
        run = load_run(p)
        frame = run.history.copy()
        frame.insert(0, "run", run.name)
        frame.insert(1, "preset", run.config.get("preset"))
        frame.insert(2, "seed", run.config.get("seed"))
        frame.insert(3, "synthetic", run.synthetic)
        frames.append(frame)
    if not frames:
        raise RunDirError("no run directories given")
    return pd.concat(frames, ignore_index=True)

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

    def __init__(self, run: "RunDir", t: Trainer, resume: bool, log: Callable[[str], None],
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
        run, t, cfg, start_epoch = self.run, self.t, self.t.cfg, 0
        if self.resume and run.has_checkpoint("last"):
            # Read to the CPU whatever the device: each load_state_dict places its tensors, and generator states
            # must stay CPU byte tensors (Generator.set_state refuses CUDA/NPU tensors).
            start_epoch, self.history = restore(t, run.load_checkpoint("last", map_location="cpu"))
            if cfg.epochs < start_epoch:
                raise RunDirError(f"cannot resume {run.path} with epochs {cfg.epochs}: it has already trained "
                                  f"{start_epoch} epochs")
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
            from .config import from_dict
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
