"""Question (2), epoch: what one pass over the data is, counted on cvlab's own TensorLoader."""
from __future__ import annotations

from pathlib import Path

import torch

from ...core.data import Split
from ...core.loader import TensorLoader
from .common import CIFAR_TRAIN_IMAGES, CPU, HANDOUT_BATCH_SIZE, HANDOUT_EPOCHS, new_figure, save_demo_figure, zh


def _batch_of_each_image(loader: TensorLoader) -> torch.Tensor:
    """For a loader whose labels are image indices: the batch number each image fell in."""
    where = torch.empty(loader.num_images, dtype=torch.long)
    for b, (_, idx) in enumerate(loader):
        where[idx] = b
    return where


def batchmates_kept(first: torch.Tensor, second: torch.Tensor) -> float:
    """Of all pairs of images that share a batch in epoch 1, the fraction that share a batch
    again in epoch 2 (1.0: the same batches every epoch)."""
    n_batches = int(max(first.max(), second.max())) + 1
    pairs = lambda counts: (counts * (counts - 1)).sum().item()  # ordered pairs within each group
    both = torch.bincount(first * n_batches + second, minlength=n_batches ** 2)
    return pairs(both) / pairs(torch.bincount(first, minlength=n_batches))


def epoch_demo(fig_dir: str | Path, n_images: int = CIFAR_TRAIN_IMAGES, batch_size: int = HANDOUT_BATCH_SIZE,
               epochs: int = HANDOUT_EPOCHS, seed: int = 0) -> dict:
    """What one epoch is, measured on cvlab's own TensorLoader: steps per epoch, last batch
    size, total steps, and whether batches repeat across epochs with and without shuffling."""
    split = Split(torch.zeros(n_images, 3, 1, 1, dtype=torch.uint8), torch.arange(n_images),
                  torch.zeros(n_images, dtype=torch.long))  # labels = image index
    result: dict = {"n_images": n_images, "batch_size": batch_size, "epochs": epochs}
    fig, ax = new_figure(2, panel=(4.4, 4.0))
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n_images, generator=gen)[:3000]
    for col, shuffle in enumerate((False, True)):
        loader = TensorLoader(split, batch_size, CPU, "cifar100", shuffle=shuffle, seed=seed)
        sizes = [len(idx) for _, idx in loader]
        first, second = _batch_of_each_image(loader), _batch_of_each_image(loader)
        result["shuffle" if shuffle else "no_shuffle"] = {
            "steps_per_epoch": len(loader), "last_batch": sizes[-1], "images_per_epoch": sum(sizes),
            "batchmates_kept": batchmates_kept(first, second)}
        ax[0, col].plot(first[sample], second[sample], ".", ms=2, alpha=0.5)
        ax[0, col].set(title=zh(f"shuffle={shuffle}{'（讲义的设置）' if not shuffle else '（每个 epoch 重新打乱）'}",
                                f"shuffle={shuffle}{' (the handout)' if not shuffle else ''}"),
                       xlabel=zh("第 1 个 epoch 中所在的批次序号", "batch index in epoch 1"),
                       ylabel=zh("第 2 个 epoch 中所在的批次序号", "batch index in epoch 2"))
        ax[0, col].grid(alpha=0.3)
    result["total_steps"] = result["no_shuffle"]["steps_per_epoch"] * epochs
    steps, last = result["no_shuffle"]["steps_per_epoch"], result["no_shuffle"]["last_batch"]
    fig.suptitle(zh(f"{n_images:,} 张图，批量大小 {batch_size}：每个 epoch {steps} 步（最后一批 {last} 张）；抽 3,000 张图看它们落在哪一批",
                    f"{n_images:,} images, batch {batch_size}: {steps} steps per epoch (last batch {last}); "
                    "where 3,000 images land"), fontsize=10)
    result["figure"] = save_demo_figure(fig, fig_dir, "epoch_batches.png")
    return result
