"""Question (1), batch size: gradient noise against the batch size, measured with per-example gradients."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .common import (CIFAR_TRAIN_IMAGES, HANDOUT_BATCH_SIZE, HANDOUT_EPOCHS, DemoData, legend_below,
                     moving_average, new_figure, normalized, save_demo_figure, single_thread, steps_per_epoch, zh)


class NoiseNet(nn.Module):
    """A small CNN without BatchNorm, so per-example gradients are well defined."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(F.avg_pool2d(x, 4)))      # 8x8
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N, P): the flattened gradient of each example's loss (torch.func.vmap over grad)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))
    rows = []
    for i in range(0, len(y), chunk):
        per = g(params, x[i:i + chunk], y[i:i + chunk])
        rows.append(torch.cat([per[k].flatten(1) for k in params], 1))
    return torch.cat(rows)


def minibatch_noise(grads: torch.Tensor, batch_sizes: list[int], draws: int, seed: int = 0):
    """For each batch size B: mean squared distance of the mini-batch gradient (B examples
    drawn without replacement) from the full-batch gradient, the theory
    tr(Sigma)/B * (N-B)/(N-1), and the mean cosine similarity to the full gradient."""
    import pandas as pd

    n = grads.shape[0]
    full = grads.mean(0)
    trace = ((grads - full) ** 2).sum(1).mean().item()  # tr(Sigma), population covariance
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in batch_sizes:
        pick = torch.zeros(draws, n, dtype=grads.dtype)  # row d: 1/B on the B examples of draw d
        for d in range(draws):
            pick[d, torch.randperm(n, generator=gen)[:b]] = 1.0 / b
        mb = pick @ grads
        rows.append({"batch_size": b, "measured_sq_error": ((mb - full) ** 2).sum(1).mean().item(),
                     "theory_sq_error": trace / b * (n - b) / (n - 1),
                     "mean_cosine_to_full": F.cosine_similarity(mb, full[None], dim=1).mean().item()})
    return pd.DataFrame(rows), trace, full.square().sum().item()


def batch_size_demo(fig_dir: str | Path, data: DemoData, quick: bool = True, seed: int = 0,
                    n_examples: int | None = None) -> dict:
    """Gradient noise vs batch size on a fixed (initialised) model, and steps per epoch for
    CIFAR-100's 50,000 training images, the handout's batch 1024 marked. The noise is measured
    over the first `n_examples` training images (quick: 1024, thorough: 4096)."""
    import pandas as pd

    n = min(len(data.train), n_examples or (1024 if quick else 4096))
    draws = 100 if quick else 400
    x, y = normalized(data.train)[:n], data.train.fine[:n]
    with single_thread():
        torch.manual_seed(seed)
        grads = per_example_gradients(NoiseNet(), x, y)
        sizes = [2 ** k for k in range(0, int(math.log2(n)))]
        noise, trace, full_sq = minibatch_noise(grads, sizes, draws, seed)
    sizes_epoch = [2 ** k for k in range(5, 13)]
    epoch = pd.DataFrame({"batch_size": sizes_epoch,
                          "steps_per_epoch": [steps_per_epoch(CIFAR_TRAIN_IMAGES, b) for b in sizes_epoch]})
    epoch["steps_in_100_epochs"] = epoch.steps_per_epoch * HANDOUT_EPOCHS
    figure = _plot_batch(fig_dir, noise, epoch, n, draws, data)
    return {"figure": figure, "noise": noise, "steps": epoch, "n_examples": n, "draws": draws,
            "parameters": grads.shape[1],
            "trace_sigma": trace, "full_grad_sq_norm": full_sq, "noise_scale_B_simple": trace / full_sq,
            "data": data.description}


def _plot_batch(fig_dir, noise, epoch, n: int, draws: int, data: DemoData) -> Path:
    fig, ax = new_figure(3, panel=(4.6, 3.7))
    batch = zh("批量大小 B (batch size)", "batch size B")
    ax[0, 0].loglog(noise.batch_size, noise.measured_sq_error, "o", label=zh(f"实测（每种批量大小抽 {draws} 次）", f"measured ({draws} draws each)"))
    ax[0, 0].loglog(noise.batch_size, noise.theory_sq_error, "-", label=zh("理论 tr(Σ)/B·(N−B)/(N−1)", "tr(Sigma)/B * (N-B)/(N-1)"))
    ax[0, 0].set(title=zh(f"小批量梯度的误差 E|g_B − g|²（N = {n}）", f"E|g_B - g|^2 vs batch size (N = {n})"),
                 xlabel=batch, ylabel=zh("平方误差", "squared error"))
    ax[0, 1].semilogx(noise.batch_size, noise.mean_cosine_to_full, "o-", color="C2")
    ax[0, 1].set(title=zh("小批量梯度与全量梯度的余弦相似度", "cosine(mini-batch grad, full grad)"), xlabel=batch,
                 ylabel="cos(g_B, g)", ylim=(0, 1.02))
    bars = ax[0, 2].bar([str(b) for b in epoch.batch_size], epoch.steps_per_epoch,
                        color=["C1" if b == HANDOUT_BATCH_SIZE else "C0" for b in epoch.batch_size])
    ax[0, 2].bar_label(bars)
    ax[0, 2].set(title=zh(f"每个 epoch 的步数，{CIFAR_TRAIN_IMAGES:,} 张图（橙色：讲义）",
                          f"steps per epoch, {CIFAR_TRAIN_IMAGES:,} images (orange: handout)"),
                 xlabel=zh("批量大小 (batch size)", "batch size"),
                 ylabel=zh(f"步数 = ceil({CIFAR_TRAIN_IMAGES} / B)", f"ceil({CIFAR_TRAIN_IMAGES} / B)"))
    ax[0, 2].set_yscale("log")
    ax[0, 2].set_ylim(top=2 * max(epoch.steps_per_epoch))  # room for the tallest bar's label
    ax[0, 2].tick_params(axis="x", labelrotation=45)        # eight four-digit labels side by side would touch
    for a in ax[0]:
        a.grid(alpha=0.3)
    # below the first panel, whose points fill its diagonal (inside, the legend covered some of them)
    fig.legend(*ax[0, 0].get_legend_handles_labels(), loc="outside lower left", ncol=2)
    return save_demo_figure(fig, fig_dir, "batch_size.png", synthetic=data.synthetic,
                            which=zh("（前两幅图）", " in the first two panels"))


# ---------------------------------------------------------------------------- the effect on training

BASE_LR, BASE_BATCH = 0.1, 256   # the linear scaling rule the answer quotes: lr = 0.1 * B / 256 (Goyal et al. 2017)


def scaled_lr(batch_size: int) -> float:
    """SGD's learning rate for `batch_size` by the linear scaling rule, 0.1 per 256 images."""
    return BASE_LR * batch_size / BASE_BATCH


def batch_training_demo(fig_dir: str | Path, data: DemoData, quick: bool = True, seed: int = 0,
                        batch_sizes: tuple[int, ...] | None = None, epochs: int | None = None,
                        n_train: int | None = None) -> dict:
    """The handout's ResNet-18 trained from the same initial weights at several batch sizes, SGD with
    momentum 0.9 and the learning rate scaled linearly with the batch (scaled_lr), constant, no warmup, for
    the same number of epochs, i.e. the same images seen, on a class-balanced subset; shuffled every epoch.
    Returns per-step training losses, per-epoch test loss/accuracy and a table. Defaults: quick 500 images,
    1 epoch, batches (16, 64); thorough 2,000 images, 2 epochs, batches (32, 128, 512)."""
    import pandas as pd

    from ...core.data import subset
    from ...core.engine import TrainStep
    from ...core.loader import TensorLoader
    from .common import CPU, evaluate_on, handout_net, step_losses

    batch_sizes = batch_sizes or ((16, 64) if quick else (32, 128, 512))
    epochs = epochs or (1 if quick else 2)
    n = min(len(data.train), n_train or (500 if quick else 2000))
    train = subset(data.train, n, balanced=n >= 100)
    steps, epochs_rows = {}, []
    with single_thread():
        for b in batch_sizes:
            model = handout_net(seed)  # the same initial weights for every batch size
            opt = torch.optim.SGD(model.parameters(), lr=scaled_lr(b), momentum=0.9)
            step = TrainStep(model, opt, CPU)
            loader = TensorLoader(train, b, CPU, "cifar100", shuffle=True, seed=seed)
            losses, seen = [], []
            for epoch in range(1, epochs + 1):
                for loss, images in step_losses(step, loader):
                    losses.append(loss)
                    seen.append((seen[-1] if seen else 0) + images)
                te = evaluate_on(model, data.test)
                epochs_rows.append({"batch_size": b, "lr": scaled_lr(b), "epoch": epoch, "images_seen": seen[-1],
                                    "steps": len(losses), "test_loss": te["loss"], "test_acc": te["acc"]})
            steps[b] = pd.DataFrame({"images_seen": seen, "train_loss": losses})
    history = pd.DataFrame(epochs_rows)
    last = history.groupby("batch_size").tail(1).set_index("batch_size")
    tail = {b: float(s.train_loss.tail(max(1, len(s) // 4)).mean()) for b, s in steps.items()}
    table = pd.DataFrame([{"batch_size": b, "lr": scaled_lr(b), "steps": int(last.loc[b, "steps"]),
                           "images_seen": int(last.loc[b, "images_seen"]),
                           "train_loss_last_quarter": tail[b], "final_test_loss": float(last.loc[b, "test_loss"]),
                           "final_test_acc": float(last.loc[b, "test_acc"])} for b in batch_sizes])
    figure = _plot_batch_training(fig_dir, steps, history, data, n, epochs, seed)
    return {"figure": figure, "table": table, "steps": steps, "history": history, "n_train": n,
            "n_test": len(data.test), "epochs": epochs, "batch_sizes": list(batch_sizes), "data": data.description}


def _plot_batch_training(fig_dir, steps: dict, history, data: DemoData, n: int, epochs: int, seed: int) -> Path:
    fig, ax = new_figure(2, panel=(5.0, 3.8))
    for i, (b, s) in enumerate(steps.items()):
        window = max(1, min(8, len(s) // 4))
        ax[0, 0].plot(s.images_seen[window - 1:], moving_average(s.train_loss, window), color=f"C{i}",
                      label=zh(f"B={b}，lr={scaled_lr(b):g}，{len(s)} 步", f"B={b}, lr={scaled_lr(b):g}, {len(s)} steps"))
        h = history[history.batch_size == b]
        ax[0, 1].plot(h.images_seen, h.test_loss, "o-", color=f"C{i}")
    ax[0, 0].set(title=zh(f"讲义的 ResNet-18，SGD 动量 0.9，lr = 0.1·B/256\n{n} 张训练图，{epochs} 个 epoch，CPU，seed {seed}",
                          f"handout ResNet-18, SGD m=0.9, lr = 0.1 B/256\n{n} train images, {epochs} epochs, CPU, seed {seed}"),
                 xlabel=zh("已看过的训练图像数", "training images seen"),
                 ylabel=zh("训练损失（≤ 8 步滑动平均）", "train loss (mean of <= 8 steps)"))
    ax[0, 1].set(title=zh(f"每个 epoch 后的测试损失\n（{len(data.test)} 张测试图）", f"test loss after each epoch\n({len(data.test)} test images)"),
                 xlabel=zh("已看过的训练图像数", "training images seen"), ylabel=zh("交叉熵 (cross-entropy)", "cross-entropy"))
    for a in ax[0]:
        a.grid(alpha=0.3)
    # both panels use the same colours: one legend below them (inside, it sat on the loss curves)
    legend_below(fig, *ax[0, 0].get_legend_handles_labels(), ncol=len(steps),
                 title=zh("批量大小 B (batch size)，学习率，步数", "batch size, learning rate, steps"))
    return save_demo_figure(fig, fig_dir, "batch_size_training.png", synthetic=data.synthetic)
