"""Figures from run directories and data splits (matplotlib), never from hand-typed numbers.

    run = cvlab.runs.load_run("runs/01_baseline")
    save_figure(loss_curves(run), "figures/01_baseline_loss.png")

Every figure made from synthetic data carries a SYNTHETIC stamp on its face. Figure text is
English on purpose: matplotlib's default fonts have no CJK glyphs on most machines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..core.runs import Run, load_run

COLORS = {"train": "#1f77b4", "test": "#d62728", "top5": "#9467bd"}


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def stamp_synthetic(fig: Figure) -> None:
    """Write SYNTHETIC across the figure so it cannot be mistaken for a CIFAR-100 result."""
    fig.text(0.5, 0.5, "SYNTHETIC", transform=fig.transFigure, rotation=25, fontsize=64, color="red",
             alpha=0.18, ha="center", va="center", weight="bold", zorder=100)


def run_caption(run: Run) -> str:
    """One line under a figure: data (real/synthetic, sizes), device, seed, epochs."""
    ds = run.metrics.get("dataset", {})
    data = "SYNTHETIC data" if run.synthetic else "CIFAR-100"
    sizes = f"{ds.get('n_train', '?'):,} train / {ds.get('n_test', '?'):,} test" if ds else "sizes unknown"
    device = run.metrics.get("device_type") or run.config.get("device", "?")
    epochs = f"{len(run.history)}/{run.config.get('epochs', '?')} epochs"
    return (f"{run.config.get('preset', '?')} ({run.config.get('model', '?')}), {data}: {sizes}, "
            f"batch {run.config.get('batch_size', '?')}, {epochs}, {device}, seed {run.config.get('seed', '?')}")


def _finish(fig: Figure, run: Run, title: str) -> Figure:
    fig.suptitle(title + ("  [SYNTHETIC]" if run.synthetic else ""), fontsize=12)
    fig.text(0.5, 0.01, run_caption(run), ha="center", va="bottom", fontsize=8, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if run.synthetic:
        stamp_synthetic(fig)
    return fig


def loss_curves(run: Run | str | Path) -> Figure:
    """Train and test loss per epoch (the handout's deliverable), the lowest test loss marked."""
    run = _as_run(run)
    h = run.history.sort_values("epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(h["epoch"], h["train_loss"], "o-", color=COLORS["train"], ms=4, label="train loss (epoch mean)")
    ax.plot(h["epoch"], h["test_loss"], "s-", color=COLORS["test"], ms=4, label="test loss (end of epoch)")
    best = h.loc[h["test_loss"].idxmin()]
    ax.axvline(best["epoch"], color="0.5", ls="--", lw=1,
               label=f"lowest test loss {best['test_loss']:.3f} (epoch {int(best['epoch'])})")
    _epoch_axes(ax, h["epoch"], "cross-entropy loss")
    return _finish(fig, run, "Train and test loss per epoch")


def accuracy_curves(run: Run | str | Path) -> Figure:
    """Train and test top-1 accuracy per epoch (percent), test top-5 dashed."""
    run = _as_run(run)
    h = run.history.sort_values("epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(h["epoch"], 100 * h["train_acc"], "o-", color=COLORS["train"], ms=4, label="train top-1")
    ax.plot(h["epoch"], 100 * h["test_acc"], "s-", color=COLORS["test"], ms=4, label="test top-1")
    ax.plot(h["epoch"], 100 * h["test_top5"], "^--", color=COLORS["top5"], ms=4, label="test top-5")
    _epoch_axes(ax, h["epoch"], "accuracy (%)")
    return _finish(fig, run, "Train and test accuracy per epoch")


def _epoch_axes(ax, epochs, ylabel: str) -> None:
    """Labels, grid and legend of a per-epoch plot, with integer epoch ticks."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _integer_epochs(ax, epochs)


def _integer_epochs(ax, epochs) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:
        e = float(epochs.iloc[0])
        ax.set_xlim(e - 1, e + 1)


def sample_grid(images, labels, names: Sequence[str], synthetic: bool, columns: int = 8,
                title: str = "Training images") -> Figure:
    """A grid of uint8 images (N, 3, 32, 32) with their class names."""
    n = len(labels)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_title(names[int(labels[i])], fontsize=8)
    fig.suptitle(title + ("  [SYNTHETIC]" if synthetic else ""), fontsize=11)
    fig.tight_layout()
    if synthetic:
        stamp_synthetic(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save as PNG (folders created) and close the figure, so notebooks show the saved file once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
