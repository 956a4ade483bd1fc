"""A run directory on disk: config.json, history.csv, metrics.json, last.pt; and loading
runs back into pandas for notebooks, plots and tables.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import RunDirError

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
                   "lr", "epoch_seconds", "images_per_second"]
CONFIG, HISTORY, METRICS, CHECKPOINT = "config.json", "history.csv", "metrics.json", "last.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_history(path: Path, rows: list[dict]) -> None:
    columns = HISTORY_COLUMNS + [k for k in (rows[0] if rows else {}) if k not in HISTORY_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def prepare_run_dir(path: str | Path, resume: bool) -> Path:
    """Create the run directory, refusing to reuse one that holds a run unless resuming."""
    path = Path(path)
    # A folder whose run was stopped before its first epoch ended holds no result: it may be started again.
    has_run = (path / CHECKPOINT).exists() or (path / HISTORY).exists()
    if resume:
        if not (path / CHECKPOINT).exists():
            raise RunDirError(f"cannot resume: {path} has no {CHECKPOINT}; start a new run without --resume")
        return path
    if has_run:
        raise RunDirError(f"{path} already holds a run; pass --resume to continue it or choose another --out")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def load_run(path: str | Path) -> Run:
    """Read config, history and metrics of a run directory."""
    import pandas as pd

    path = Path(path)
    if not (path / HISTORY).exists() or not (path / CONFIG).exists():
        raise RunDirError(f"{path} is not a run directory (needs {CONFIG} and {HISTORY}); "
                          "train one with 'python -m cvlab train'")
    config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    metrics = json.loads((path / METRICS).read_text(encoding="utf-8")) if (path / METRICS).exists() else {}
    history = pd.read_csv(path / HISTORY)
    return Run(path, config, history, metrics)


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
