"""Question (6), optimizers: torch.optim's optimizers on three 2-D surfaces at their best learning rates."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .common import (CPU, evaluate_on, handout_net, legend_below, new_figure, save_demo_figure, single_thread,
                     step_losses, zh)


def _quadratic(angle_degrees: float, kappa: float = 100.0):
    """f(w) = 1/2 (w - w*)^T R diag(1, kappa) R^T (w - w*), w* = (1, 1); rows of W are points."""
    t = math.radians(angle_degrees)
    rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    scale = torch.tensor([1.0, kappa], dtype=torch.float64)

    def f(w: torch.Tensor) -> torch.Tensor:
        v = (w - 1.0) @ rot.to(w.dtype)
        return 0.5 * (v ** 2 * scale.to(w.dtype)).sum(-1)
    return f


def rosenbrock(w: torch.Tensor) -> torch.Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)."""
    return (1 - w[..., 0]) ** 2 + 100 * (w[..., 1] - w[..., 0] ** 2) ** 2


# name -> (function, start, (xlim, ylim) of the contour plot, steps quick, steps thorough)
SURFACES = {
    "quadratic, kappa=100": (_quadratic(0.0), (-3.0, 2.0), ((-3.5, 2.5), (-0.5, 2.5)), 100, 300),
    "same, rotated 30 deg": (_quadratic(30.0), (-3.0, 2.0), ((-3.5, 2.5), (-1.5, 2.5)), 100, 300),
    "Rosenbrock": (rosenbrock, (-1.5, 2.0), ((-2.0, 2.0), (-1.0, 3.0)), 300, 1000),
}

# name -> torch.optim constructor (params with per-group lr) and the settings it uses
OPTIMIZERS: dict[str, tuple[Callable, str]] = {
    "SGD": (lambda p: torch.optim.SGD(p), "no momentum"),
    "Momentum": (lambda p: torch.optim.SGD(p, momentum=0.9), "SGD, momentum 0.9"),
    "Nesterov": (lambda p: torch.optim.SGD(p, momentum=0.9, nesterov=True), "SGD, Nesterov momentum 0.9"),
    "AdaGrad": (lambda p: torch.optim.Adagrad(p), "torch defaults"),
    "RMSProp": (lambda p: torch.optim.RMSprop(p, alpha=0.99), "alpha 0.99"),
    "Adam": (lambda p: torch.optim.Adam(p, betas=(0.9, 0.999)), "betas (0.9, 0.999)"),
    "AdamW": (lambda p: torch.optim.AdamW(p, betas=(0.9, 0.999), weight_decay=0.01), "betas (0.9, 0.999), weight decay 0.01"),
}


# The grid's ends, as powers of ten: wide enough that every optimizer's best rate on every surface lies
# strictly inside it (optimizer_demo reports any that does not), so no best is an artefact of the grid.
LR_DECADES = (-4, 2)


def lr_grid(quick: bool, decades: tuple[int, int] = LR_DECADES) -> list[float]:
    """Learning rates tried for every optimizer: 1e-4 .. 100, half decades (quick) or quarter decades."""
    per_decade = 2 if quick else 4
    return [10 ** (k / per_decade) for k in range(decades[0] * per_decade, decades[1] * per_decade + 1)]


def optimize(fn: Callable, start: tuple[float, float], name: str, lrs: list[float], steps: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run torch.optim optimizer `name` from `start` once per learning rate (one param group
    each, so all rates advance together). Returns losses (steps+1, n_lr) and points (steps+1, n_lr, 2)."""
    points = [torch.tensor(start, dtype=torch.float64, requires_grad=True) for _ in lrs]
    opt = OPTIMIZERS[name][0]([{"params": [p], "lr": lr} for p, lr in zip(points, lrs)])
    losses, path = [], []
    for _ in range(steps):
        w = torch.stack(points)
        loss = fn(w)
        losses.append(loss.detach())
        path.append(w.detach())
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    w = torch.stack(points).detach()
    losses.append(fn(w))
    path.append(w)
    return torch.stack(losses), torch.stack(path)


def _best_lr(losses: torch.Tensor, tail: int = 10) -> int:
    """Index of the rate with the lowest mean log10 loss over the last `tail` steps (finite only)."""
    score = torch.log10(losses[-tail:].clamp_min(1e-300)).mean(0)
    score = torch.where(torch.isfinite(score), score, torch.full_like(score, float("inf")))
    return int(score.argmin())


def optimizer_demo(fig_dir: str | Path, quick: bool = True) -> dict:
    """Seven torch.optim optimizers on three 2-D surfaces, each with its best learning rate
    from the same grid at the same step count: trajectories and loss-vs-step curves. The table's
    `interior` says whether that best rate lies strictly inside the grid (else the grid is too narrow).
    Ties (several rates reaching the same floor, e.g. exactly 0 in float64) go to the smallest rate."""
    import pandas as pd

    lrs = lr_grid(quick)
    rows, runs = [], {}
    with single_thread(), np.errstate(all="ignore"):
        for surface, (fn, start, _, steps_quick, steps_full) in SURFACES.items():
            steps = steps_quick if quick else steps_full
            for name in OPTIMIZERS:
                losses, path = optimize(fn, start, name, lrs, steps)
                best = _best_lr(losses)
                runs[surface, name] = (losses[:, best], path[:, best])
                rows.append({"surface": surface, "optimizer": name, "settings": OPTIMIZERS[name][1],
                             "best_lr": lrs[best], "interior": 0 < best < len(lrs) - 1,
                             "steps": steps, "final_loss": losses[-1, best].item(),
                             "final_point": tuple(round(v, 4) for v in path[-1, best].tolist())})
    table = pd.DataFrame(rows)
    figure = _plot_optimizers(fig_dir, runs)
    return {"figure": figure, "table": table, "lr_grid": lrs}


ZH_SURFACES = {"quadratic, kappa=100": "二次函数 (κ=100)", "same, rotated 30 deg": "同一函数旋转 30°", "Rosenbrock": "Rosenbrock 函数"}
ZH_FAMILIES = {"SGD family": "SGD 类", "adaptive": "自适应类 (adaptive)"}

# Trajectory panels: the SGD family and the adaptive family, each with plain SGD for reference.
FAMILIES = {"SGD family": ("SGD", "Momentum", "Nesterov"),
            "adaptive": ("SGD", "AdaGrad", "RMSProp", "Adam", "AdamW")}
LOSS_FLOOR = 1e-16  # the loss panels draw smaller losses (exact zeros in float64) at this value


def _plot_optimizers(fig_dir, runs: dict) -> Path:
    from matplotlib.lines import Line2D

    fig, ax = new_figure(len(SURFACES), 3, panel=(5.0, 4.0))
    colors = {n: f"C{i}" for i, n in enumerate(OPTIMIZERS)}
    styles = {n: dict(ls="--", lw=2.2, color="0.15") if n == "SGD" else dict(lw=1.3, color=colors[n]) for n in OPTIMIZERS}
    for col, (surface, (fn, start, (xlim, ylim), _, _)) in enumerate(SURFACES.items()):
        gx, gy = torch.meshgrid(torch.linspace(*xlim, 300, dtype=torch.float64),
                                torch.linspace(*ylim, 300, dtype=torch.float64), indexing="xy")
        z = fn(torch.stack([gx, gy], -1))
        levels = np.logspace(-2, math.log10(z.max().item()), 14)
        for row, (family, names) in enumerate(FAMILIES.items()):
            a = ax[row, col]
            a.contour(gx, gy, z, levels=levels, colors="0.7", linewidths=0.6)
            for name in names:
                path = runs[surface, name][1]
                a.plot(path[:, 0], path[:, 1], **styles[name])
            a.plot(*start, "ko", ms=5)
            a.plot(1, 1, "k*", ms=12)
            a.set(xlim=xlim, ylim=ylim, title=zh(f"{ZH_SURFACES[surface]}：{ZH_FAMILIES[family]}", f"{surface}: {family}"),
                  xlabel="x", ylabel="y")
        floored = False
        for name in OPTIMIZERS:
            losses = runs[surface, name][0]
            floored |= bool((losses < LOSS_FLOOR).any())
            ax[2, col].semilogy(losses.clamp_min(LOSS_FLOOR), label=name, **styles[name])
        ax[2, col].set(title=zh(f"{ZH_SURFACES[surface]}：损失随步数", f"{surface}: loss vs step"),
                       xlabel=zh("步数 (step)", "step"),
                       ylabel="f(x, y)" + (zh(f"（下限 {LOSS_FLOOR:g}）", f"  (floored at {LOSS_FLOOR:g})") if floored else ""))
        ax[2, col].grid(alpha=0.3)
    # one legend below the grid (inside, legends covered trajectories): an optimizer has one colour in every
    # panel; its best rate is in the demo's table (best_lr)
    handles, labels = ax[2, 0].get_legend_handles_labels()
    handles += [Line2D([], [], ls="", marker="o", ms=5, color="k"), Line2D([], [], ls="", marker="*", ms=12, color="k")]
    labels += [zh("起点", "start"), zh("最小值 (1, 1)", "minimum (1, 1)")]
    legend_below(fig, handles, labels, ncol=len(labels))
    fig.suptitle(zh("torch.optim 在三个二维曲面上：步数相同，每个优化器取同一学习率网格中最好的学习率（见表 best_lr）",
                    "torch.optim on 2-D surfaces: the same steps, each optimizer at its best lr from the same grid "
                    "(the table's best_lr)"))
    return save_demo_figure(fig, fig_dir, "optimizers.png")


# ---------------------------------------------------------------------------- the handout network on real images

# name -> (torch.optim constructor for (params, lr), log10 of the first rates tried). The three starting rates are
# centred where the report's setting (1,000 images, 64 steps of batch 32, seed 0) found each best on 2026-11-28;
# they only save runs: the grid still widens by half decades until the best is inside it, on any data. The
# handout's Adam(lr=1e-4) is among Adam's. AdamW is left out: without weight decay it is Adam, and its decoupled
# decay matters over long training, not in a few dozen steps.
NETWORK_LR_STEP = 0.5  # log10 spacing of the rates network_demo tries (half a decade), and of its widening
NETWORK_OPTIMIZERS: dict[str, tuple[Callable, tuple[float, ...]]] = {
    "SGD": (lambda p, lr: torch.optim.SGD(p, lr=lr), (-2.5, -2.0, -1.5)),
    "SGD+momentum": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), (-3.0, -2.5, -2.0)),
    "AdaGrad": (lambda p, lr: torch.optim.Adagrad(p, lr=lr), (-4.0, -3.5, -3.0)),
    "RMSProp": (lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.99), (-5.0, -4.5, -4.0)),
    "Adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), (-4.5, -4.0, -3.5)),
}


def _train_network(name: str, lr: float, train, epochs: int, batch: int, seed: int) -> dict:
    """The handout ResNet-18 from seed `seed`'s weights, trained by optimizer `name` at `lr` (constant):
    the per-step training losses, their mean over the last quarter of the steps (the score; inf when a loss
    is not finite) and the trained model."""
    from ...core.engine import TrainStep
    from ...core.loader import TensorLoader

    model = handout_net(seed)
    step = TrainStep(model, NETWORK_OPTIMIZERS[name][0](model.parameters(), lr), CPU)
    loader = TensorLoader(train, batch, CPU, "cifar100", shuffle=True, seed=seed)
    losses: list[float] = []
    for _ in range(epochs):
        for loss, _ in step_losses(step, loader):
            losses.append(loss)
            if not math.isfinite(loss):
                return {"losses": losses, "score": math.inf, "model": None}
    return {"losses": losses, "score": float(np.mean(losses[-max(1, len(losses) // 4):])), "model": model}


def _sweep(name: str, train, epochs: int, batch: int, seed: int, max_widen: int) -> tuple[dict[float, dict], float]:
    """Optimizer `name` at the three starting rates (log10), widened by half decades on the side where the
    best lies until the best is inside the rates tried (at most `max_widen` more per side). Returns every
    rate's result (only the best keeps its model) and the best rate's log10."""
    start = NETWORK_OPTIMIZERS[name][1]
    tried: dict[float, dict] = {}
    best, grid = None, list(start)
    for _ in range(2 * max_widen + 1):
        for e in grid:
            tried[e] = _train_network(name, 10 ** e, train, epochs, batch, seed)
            if best is None or tried[e]["score"] < tried[best]["score"]:
                if best is not None:
                    tried[best]["model"] = None
                best = e
            else:
                tried[e]["model"] = None
        exps = sorted(tried)
        if best == exps[0] and exps[0] > start[0] - NETWORK_LR_STEP * max_widen:
            grid = [exps[0] - NETWORK_LR_STEP]
        elif best == exps[-1] and exps[-1] < start[-1] + NETWORK_LR_STEP * max_widen:
            grid = [exps[-1] + NETWORK_LR_STEP]
        else:
            break
    return tried, best


def network_demo(fig_dir: str | Path, data, quick: bool = True, seed: int = 0, n_train: int | None = None,
                 epochs: int | None = None, batch: int = 32, max_widen: int = 3) -> dict:
    """Five optimizers on the handout ResNet-18 and real images (a class-balanced subset), the same budget
    (images, epochs, batch, initial weights, data order) for each, each at its best constant rate: the mean
    training loss over the last quarter of the steps decides, and the half-decade grid is widened (up to
    `max_widen` times per side) until that best rate is inside it; the best run is then tested on the test
    subset. Defaults: quick 256 images, 1 epoch (8 steps); thorough 1,000 images, 2 epochs (64 steps)."""
    import pandas as pd

    from ...core.data import subset

    n = min(len(data.train), n_train or (256 if quick else 1000))
    epochs = epochs or (1 if quick else 2)
    train = subset(data.train, n, balanced=n >= 100)
    rows, sweeps, curves = [], [], {}
    with single_thread():
        for name in NETWORK_OPTIMIZERS:
            tried, best = _sweep(name, train, epochs, batch, seed, max_widen)
            exps = sorted(tried)
            sweeps += [{"optimizer": name, "lr": 10 ** e, "score": tried[e]["score"]} for e in exps]
            r = tried[best]
            te = evaluate_on(r["model"], data.test) if r["model"] is not None else {"loss": math.nan, "acc": math.nan}
            curves[name] = r["losses"]
            rows.append({"optimizer": name, "best_lr": 10 ** best, "interior": exps[0] < best < exps[-1],
                         "rates_tried": len(exps), "train_loss_last_quarter": r["score"],
                         "first_loss": r["losses"][0], "final_test_loss": te["loss"], "final_test_acc": te["acc"],
                         "steps": len(r["losses"])})
    table, sweep = pd.DataFrame(rows), pd.DataFrame(sweeps)
    figure = _plot_network(fig_dir, curves, sweep, table, data, n, epochs, batch, seed)
    return {"figure": figure, "table": table, "sweep": sweep, "curves": curves, "n_train": n, "epochs": epochs,
            "batch": batch, "n_test": len(data.test), "seed": seed, "data": data.description,
            "synthetic": data.synthetic}


def _smooth(values: list[float], window: int) -> np.ndarray:
    """Running mean over the last `window` steps (fewer at the start)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def _plot_network(fig_dir, curves: dict, sweep, table, data, n: int, epochs: int, batch: int, seed: int) -> Path:
    fig, ax = new_figure(2, panel=(5.0, 3.8))
    best = table.set_index("optimizer").best_lr
    window = max(1, len(next(iter(curves.values()))) // 8)
    for i, (name, losses) in enumerate(curves.items()):
        steps = range(1, len(losses) + 1)
        ax[0, 0].plot(steps, losses, color=f"C{i}", lw=0.6, alpha=0.35)
        ax[0, 0].plot(steps, _smooth(losses, window), color=f"C{i}", lw=1.8, label=f"{name} (lr {best[name]:.3g})")
        s = sweep[sweep.optimizer == name]
        ax[0, 1].semilogx(s.lr, s.score.where(np.isfinite(s.score)), "o-", color=f"C{i}")
        ax[0, 1].plot(best[name], s.score[s.lr == best[name]].iloc[0], "*", ms=13, color=f"C{i}", mec="k")
    ax[0, 0].set(title=zh(f"训练损失：{n} 张图，{epochs} 个 epoch，batch {batch}\n各自最佳的恒定学习率（细线：每步；粗线：{window} 步滑动平均）",
                          f"training loss: {n} images, {epochs} epoch(s), batch {batch}\n"
                          f"each at its best constant lr (thin: per step; thick: {window}-step mean)"),
                 xlabel=zh("步数 (step)", "step"), ylabel=zh("训练损失（交叉熵）", "training loss (cross-entropy)"))
    ax[0, 1].set(title=zh("学习率扫描：最后四分之一步的平均训练损失\n（星号：最佳；发散的不画）",
                          "lr sweep: mean training loss over the last quarter\n(star: best; diverged: not shown)"),
                 xlabel=zh("学习率 (learning rate)", "learning rate"), ylabel=zh("训练损失", "training loss"))
    per_epoch = len(next(iter(curves.values()))) // epochs
    for e in range(1, epochs):
        ax[0, 0].axvline(e * per_epoch + 0.5, color="0.5", ls=":", lw=1)
        ax[0, 0].text(e * per_epoch + 1, ax[0, 0].get_ylim()[1], zh(f"第 {e + 1} 个 epoch：图像第二次出现", f"epoch {e + 1}: images seen again"),
                      fontsize=8, color="0.35", va="top")
    for a in ax[0]:
        a.grid(alpha=0.3)
    # one legend below both panels: inside either it would cover curves or points
    fig.legend(*ax[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=len(curves))
    fig.suptitle(zh(f"讲义的 ResNet-18，同一初始权重和数据顺序（seed {seed}），CPU",
                    f"the handout's ResNet-18, same initial weights and data order (seed {seed}), CPU"), fontsize=11)
    return save_demo_figure(fig, fig_dir, "optimizers_network.png", synthetic=data.synthetic)
