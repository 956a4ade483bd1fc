"""A run directory on disk: config.json, history.csv, metrics.json, last.pt, best.pt.

`RunDir` is the one home of what happens to a run directory: preparing it (refusing to reuse a
run unless resuming), one writer at a time (a lock file), its status, which settings a resumption
may change, and the one checkpoint loader (`torch.load(..., weights_only=True)`: a checkpoint is
data, never code). `load_run` / `load_runs` read runs back into pandas for notebooks and tables.
What a training run writes here (checkpoints, metrics.json) is core/record.py's; the summary of a
history is core/summary.py's.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import secrets
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .config import Config, check_value, from_dict, with_overrides
from .errors import ConfigError, RunDirError, cause, first_line
from .lock import RunLock
from .summary import summarize_history

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
        self.lock = RunLock(self.file(LOCK), self.path)  # one writer at a time (core/lock.py)
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

    def config(self, values: dict | None = None) -> Config:
        """config.json (or `values` read from it) as a validated Config; one line when it is not one."""
        try:
            return from_dict(self.read_config() if values is None else values)
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
        if status == "running" and self.lock.holder() is None:
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
            self.lock.acquire()
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
        self.lock.release()
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

    # ------------------------------------------------------------ resuming

    def prepare(self, requested: Config | dict | None, resume: bool) -> Config:
        """Every check before a run starts, and the config it runs with; nothing is created. A new run:
        `requested` (a Config). A resumed one: config.json with the fields of `requested` (a Config, or a dict
        of fields such as the command line's options; None = none) that a resumption may change (see
        `resume_changes`): the one resume merge."""
        self.check_start(resume)
        if not resume:
            if requested is None:
                raise RunDirError("fit needs a config unless it resumes a run")
            return requested
        saved = self.read_config()
        base = self.config(saved)
        if requested is None:
            return base
        values = ({k: check_value(k, v) for k, v in requested.items()} if isinstance(requested, dict)
                  else requested.to_dict())
        changes = resume_changes(saved, values, self.path)
        resumable = {k: values[k] for k in RESUMABLE_FIELDS if k in values}
        return with_overrides(base, {**resumable, **changes})

    # ------------------------------------------------------------ writing

    # Each write first checks that a lock this RunDir took is still its own (RunLock.check_owned): a process
    # whose lock was taken over while it was stopped stops with one line instead of writing beside the new holder.

    def write_config(self, cfg) -> None:
        self.lock.check_owned()
        write_json(self.file(CONFIG), cfg.to_dict())

    def write_history(self, rows: list[dict]) -> None:
        self.lock.check_owned()
        write_history(self.file(HISTORY), rows)

    def write_metrics(self, metrics: dict) -> None:
        """metrics.json (written at every epoch end, so the lock's heartbeat beats here too)."""
        self.lock.check_owned()
        write_json(self.file(METRICS), metrics)
        self.lock.beat()

    def save_checkpoint(self, state: dict, which: str = "last") -> None:
        self.lock.check_owned()
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
