"""The one summary of a run's per-epoch rows (history.csv): first and final figures, the best epoch by validation
accuracy, the lowest test loss. Read by metrics.json's writer (core/record.py) and by runs read back from disk
(core/runs.py)."""
from __future__ import annotations

import math
from typing import Any, Iterable


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
