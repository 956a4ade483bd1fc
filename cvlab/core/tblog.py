"""Optional TensorBoard scalars (`train --tensorboard`, or `tensorboard = true` in a config): after every
epoch, each history column (losses, accuracies, learning rate, images/s) under RUN/tb, for live curves:

    python -m cvlab train --preset handout --tensorboard --out runs/demo
    tensorboard --logdir runs            # every run's curves side by side

history.csv stays the record; TensorBoard is a view of it. It needs the `tensorboard` package
(`pip install -e ".[tensorboard]"`); without it, training goes on after a one-line note.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

TB_DIR = "tb"

# TensorBoard tag -> history column; columns a run lacks (val_* without a validation split) are skipped.
SCALARS = {
    "loss/train": "train_loss", "loss/test": "test_loss", "loss/val": "val_loss",
    "accuracy/train": "train_acc", "accuracy/test": "test_acc", "accuracy/test_top5": "test_top5",
    "accuracy/val": "val_acc", "accuracy/val_top5": "val_top5",
    "lr": "lr", "speed/images_per_second": "images_per_second", "speed/epoch_seconds": "epoch_seconds",
}
MISSING_NOTE = ("note: tensorboard is not installed, so no TensorBoard scalars are written "
                "(pip install -e '.[tensorboard]'); history.csv is written as always")


class TensorBoardLogger:
    """An `on_epoch_end` callback: a history row's scalars at step = epoch, flushed every epoch.

    The event file is opened at the first row (the run directory exists by then) and closed with the logger.
    """

    def __init__(self, run_dir: str | Path, then: Callable[[dict], None] | None = None) -> None:
        self.writer = None
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / TB_DIR
        self.then = then  # the caller's own on_epoch_end, called after the scalars are written

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir))
        for tag, column in SCALARS.items():
            value = row.get(column)
            if value is not None:
                self.writer.add_scalar(tag, float(value), int(row["epoch"]))
        self.writer.flush()
        if self.then is not None:
            self.then(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __del__(self) -> None:  # fit drops the logger when it returns or raises: close the event file then
        self.close()


def with_tensorboard(enabled: bool, run_dir: str | Path, on_epoch_end: Callable[[dict], None] | None,
                     log: Callable[[str], None] = print) -> Callable[[dict], None] | None:
    """`on_epoch_end`, preceded by a TensorBoardLogger for `run_dir` when `enabled` and tensorboard is
    installed; when it is not, the same callback after one line through `log`."""
    if not enabled:
        return on_epoch_end
    try:
        return TensorBoardLogger(run_dir, then=on_epoch_end)
    except ImportError:
        log(MISSING_NOTE)
        return on_epoch_end
