"""Question (1), batch size: gradient noise against the batch size, measured with per-example gradients."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .common import CIFAR_TRAIN_IMAGES, HANDOUT_BATCH_SIZE, HANDOUT_EPOCHS, DemoData, new_figure, normalized, save_demo_figure, single_thread, steps_per_epoch


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
    ax[0, 0].loglog(noise.batch_size, noise.measured_sq_error, "o", label=f"measured ({draws} draws each)")
    ax[0, 0].loglog(noise.batch_size, noise.theory_sq_error, "-", label="tr(Sigma)/B * (N-B)/(N-1)")
    ax[0, 0].set(title=f"E|g_B - g|^2 vs batch size (N = {n})", xlabel="batch size B", ylabel="squared error")
    ax[0, 1].semilogx(noise.batch_size, noise.mean_cosine_to_full, "o-", color="C2")
    ax[0, 1].set(title="cosine(mini-batch grad, full grad)", xlabel="batch size B", ylim=(0, 1.02))
    bars = ax[0, 2].bar([str(b) for b in epoch.batch_size], epoch.steps_per_epoch,
                        color=["C1" if b == HANDOUT_BATCH_SIZE else "C0" for b in epoch.batch_size])
    ax[0, 2].bar_label(bars, fontsize=8)
    ax[0, 2].set(title=f"steps per epoch, {CIFAR_TRAIN_IMAGES:,} images (orange: handout)", xlabel="batch size",
                 ylabel=f"ceil({CIFAR_TRAIN_IMAGES} / B)")
    ax[0, 2].set_yscale("log")
    for a in ax[0]:
        a.grid(alpha=0.3)
    ax[0, 0].legend(fontsize=8)
    return save_demo_figure(fig, fig_dir, "batch_size.png", synthetic=data.synthetic, which=" in the first two panels")
