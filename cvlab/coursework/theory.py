"""Demonstrations behind the six theory answers in answers/: each one computes its evidence
on the CPU in seconds (``quick=True``) or up to a few minutes (``quick=False``), writes one
figure to ``fig_dir`` and returns the numbers it measured, so the answers and notebook
02_theory quote measurements, never typed-in values.

    from cvlab.coursework import theory
    out = theory.optimizer_demo("figures")        # {"figure": Path, "table": DataFrame, ...}
    data = theory.load_demo_data("", synthetic=True)
    theory.residual_demo("figures", data)

Figures use English labels (no CJK font is assumed); a figure made from synthetic data
says SYNTHETIC on its face. Everything runs single-threaded with fixed seeds, so the
numbers repeat exactly on the same machine and torch version.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.augment import compose, random_crop, random_hflip
from ..core.data import SPLIT_SIZES, Split, TensorLoader, load_for_config, locate, subset
from ..core.engine import EvalStep, TrainStep, evaluate, train_one_epoch
from ..core.errors import RunDirError
from ..core.paths import resolve_data_root
from ..core.runs import load_run

CIFAR_TRAIN_IMAGES = SPLIT_SIZES["train"]  # images in the CIFAR-100 training set
HANDOUT_BATCH_SIZE = 1024       # the handout's batch_size
HANDOUT_EPOCHS = 100            # the handout's iteration_num (it counts epochs)
CPU = torch.device("cpu")


# ============================================================================ shared helpers

@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny tensors gain nothing from more, and a fixed thread
    count keeps floating-point reductions (hence the numbers) identical run to run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def steps_per_epoch(n_images: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one pass over `n_images`: ceil(n / b), or floor with drop_last."""
    return n_images // batch_size if drop_last else -(-n_images // batch_size)


def _figure(ncols: int, nrows: int = 1, panel: tuple[float, float] = (4.6, 3.6)):
    """A matplotlib Figure without pyplot (no global state, works under any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, fig_dir: str | Path, name: str, synthetic: bool = False, which: str = "") -> Path:
    if synthetic:
        fig.suptitle(f"SYNTHETIC DATA (not CIFAR-100){which}", color="crimson", fontsize=13, fontweight="bold")
    path = Path(fig_dir)
    path.mkdir(parents=True, exist_ok=True)
    path = path / name
    fig.savefig(path, dpi=110)
    return path


@dataclass
class DemoData:
    """Images for the demonstrations that train or differentiate a network."""

    train: Split
    test: Split
    synthetic: bool
    description: str  # e.g. "CIFAR-100, 2,000 train / 1,000 test (class-balanced subset)"


def find_data_root(data_root: str | Path = "") -> Path | None:
    """The data folder by the one rule (`cvlab.core.paths.resolve_data_root`) when it holds CIFAR-100, else None."""
    root = resolve_data_root(data_root)
    return root if locate(root) is not None else None


def load_demo_data(data_root: str | Path, synthetic: bool, n_train: int = 2000, n_test: int = 1000) -> DemoData:
    """Class-balanced CIFAR-100 subsets from `data_root` (no download), or cvlab's synthetic
    CIFAR-format data of the same size. Raises DataError naming the folder when it is missing."""
    from ..core.config import make_config

    if synthetic:
        cfg = make_config(synthetic=True, synthetic_train=n_train, synthetic_test=n_test)
    else:
        cfg = make_config(data_root=str(data_root), download=False, subset=n_train, test_subset=n_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # md5 of re-packed copies; structure is still checked
        data = load_for_config(cfg)
    name = "SYNTHETIC CIFAR-format data" if synthetic else "CIFAR-100 (class-balanced subsets)"
    return DemoData(data.train, data.test, synthetic,
                    f"{name}: {len(data.train):,} train / {len(data.test):,} test images")


def _normalized(split: Split) -> torch.Tensor:
    loader = TensorLoader(split, len(split), CPU, "cifar100")
    return loader.to_float(loader.images)


# ============================================================================ (5) activation functions

ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "sigmoid": (torch.sigmoid, "1 / (1 + e^-x)"),
    "tanh": (torch.tanh, "(e^x - e^-x) / (e^x + e^-x)"),
    "ReLU": (F.relu, "max(0, x)"),
    "LeakyReLU": (lambda x: F.leaky_relu(x, 0.01), "max(0.01x, x)"),
    "PReLU": (lambda x: F.prelu(x, torch.full((1,), 0.25, dtype=x.dtype)), "max(ax, x), a learned (init 0.25)"),
    "ELU": (F.elu, "x if x > 0 else e^x - 1"),
    "GELU": (F.gelu, "x * Phi(x)"),
    "SiLU": (F.silu, "x * sigmoid(x)"),
}


def activation_table(x_max: float = 8.0, points: int = 16001) -> "object":
    """Per activation: range on [-x_max, x_max], f'(0), max f', f'(-5), f'(5), the x below and
    above which |f'| stays < 0.01 (saturation; -inf/inf: not within +-x_max), and E[f(z)], z ~ N(0, 1)."""
    import pandas as pd

    x = torch.linspace(-x_max, x_max, points, dtype=torch.float64, requires_grad=True)
    z = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    density = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    rows = []
    for name, (fn, formula) in ACTIVATIONS.items():
        y = fn(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        y, g, xs = y.detach(), grad.detach(), x.detach()
        live = torch.nonzero(g.abs() >= 0.01).flatten()  # where the gradient is still >= 0.01
        left = xs[live[0] - 1].item() if live.numel() and live[0] > 0 else float("-inf")
        right = xs[live[-1] + 1].item() if live.numel() and live[-1] < points - 1 else float("inf")
        mean = torch.trapezoid(fn(z) * density, z).item()
        rows.append({"activation": name, "formula": formula, "min_f": y.min().item(), "max_f": y.max().item(),
                     "f'(0)": g[points // 2].item(), "max f'": g.max().item(),
                     "f'(-5)": g[(xs - -5).abs().argmin()].item(), "f'(5)": g[(xs - 5).abs().argmin()].item(),
                     "|f'| < 0.01 for x <": left, "|f'| < 0.01 for x >": right,
                     "E[f(z)], z~N(0,1)": mean})
    return pd.DataFrame(rows)


def depth_gradients(depth: int = 20, width: int = 256, batch: int = 512, seed: int = 0) -> dict[str, list[float]]:
    """Per activation: the weight-gradient norm of each hidden layer of a `depth`-layer MLP
    (He/Kaiming-normal init, zero bias, random inputs and labels), first layer first."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    for name, (fn, _) in ACTIVATIONS.items():
        torch.manual_seed(seed)
        layers = [nn.Linear(width, width) for _ in range(depth)]
        for layer in layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        head = nn.Linear(width, 10)
        h = x
        for layer in layers:
            h = fn(layer(h))
        F.cross_entropy(head(h), y).backward()
        out[name] = [layer.weight.grad.norm().item() for layer in layers]
    return out


def mean_field(fn: Callable[[torch.Tensor], torch.Tensor], depth: int, weight_var: float = 2.0,
               input_var: float = 1.0) -> dict[str, float]:
    """Mean-field prediction for a wide `depth`-layer MLP with Var(w) = weight_var / n_in, zero bias
    (Poole et al. 2016; Schoenholz et al. 2017): the pre-activation variance q_l = weight_var * E[f(h)^2],
    h ~ N(0, q_{l-1}), the gradient factor per layer chi_l = weight_var * E[f'(h)^2] (> 1: gradients grow
    toward the input, < 1: they vanish), and the predicted |dL/dW_1| / |dL/dW_depth| =
    sqrt(chi_2 ... chi_depth) * sqrt(E[x^2] / E[f(h_{depth-1})^2])."""
    z = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    density = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    expect = lambda v: torch.trapezoid(v * density, z).item()  # noqa: E731
    q, chis, second_moments = weight_var * input_var, [], [input_var]
    for _ in range(depth):
        h = (math.sqrt(q) * z).requires_grad_()
        y = fn(h)
        (grad,) = torch.autograd.grad(y.sum(), h)
        chis.append(weight_var * expect(grad.detach() ** 2))
        second_moments.append(expect(y.detach() ** 2))
        q = weight_var * second_moments[-1]
    ratio = math.sqrt(math.prod(chis[1:]) * second_moments[0] / second_moments[depth - 1])
    return {"q_last": q, "chi_last": chis[-1], "predicted_ratio": ratio}


def activation_demo(fig_dir: str | Path, quick: bool = True, seed: int = 0) -> dict:
    """Activation functions and their derivatives (saturating regions shaded), plus how the
    gradient reaching each layer of a 20-layer MLP depends on the activation, beside its mean-field
    prediction (`quick` is accepted for a uniform signature: this demo takes seconds either way)."""
    import pandas as pd

    with single_thread():
        table = activation_table()
        grads = depth_gradients(depth=20, seed=seed)  # deeper, float32 sigmoid gradients underflow to 0
    depth = len(next(iter(grads.values())))
    fig, ax = _figure(3, panel=(4.8, 3.8))
    x = torch.linspace(-6, 6, 1201, requires_grad=True)
    colors = dict(zip(ACTIVATIONS, [f"C{i}" for i in range(len(ACTIVATIONS))]))
    sat = table.set_index("activation")["|f'| < 0.01 for x >"]
    for a in ax[0, :2]:
        a.axvspan(-6, -sat["sigmoid"], color="0.82", lw=0)
        a.axvspan(sat["sigmoid"], 6, color="0.82", lw=0, label="sigmoid' < 0.01")
        a.axvspan(-sat["sigmoid"], -sat["tanh"], color="0.92", lw=0)
        a.axvspan(sat["tanh"], sat["sigmoid"], color="0.92", lw=0, label="tanh' < 0.01")
    for name, (fn, _) in ACTIVATIONS.items():
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        style = "--" if name in ("LeakyReLU", "SiLU") else "-"
        ax[0, 0].plot(x.detach(), y.detach(), style, color=colors[name], label=name, lw=1.6)
        ax[0, 1].plot(x.detach(), g, style, color=colors[name], label=name, lw=1.6)
        ax[0, 2].semilogy(range(1, depth + 1), grads[name], style, color=colors[name], label=name, lw=1.6)
    ax[0, 0].set(title="f(x)", xlabel="x", ylim=(-1.5, 3))
    ax[0, 1].set(title="f'(x)  (grey: saturated)", xlabel="x", ylim=(-0.2, 1.2))
    ax[0, 2].set(title=f"{depth}-layer MLP, He init: |dL/dW| per layer", xlabel="layer (1 = input side)",
                 ylabel="weight-gradient norm")
    ax[0, 0].legend(fontsize=8, loc="upper left")
    ax[0, 1].legend(fontsize=7, loc="upper left", ncol=1)
    ax[0, 2].legend(fontsize=7, loc="lower right", ncol=2)
    for a in ax[0]:
        a.grid(alpha=0.3)
    ratio = pd.Series({k: v[0] / v[-1] for k, v in grads.items()}, name="first/last layer gradient")
    theory = {k: mean_field(ACTIVATIONS[k][0], depth) for k in ("sigmoid", "tanh", "ReLU")}
    mean = pd.DataFrame(theory).T.assign(measured_ratio=ratio[list(theory)])
    return {"figure": _save(fig, fig_dir, "activations.png"), "table": table,
            "depth": depth, "gradient_ratio": ratio, "mean_field": mean}


# ============================================================================ (6) optimizers

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


def lr_grid(quick: bool) -> list[float]:
    """Learning rates tried for every optimizer: 1e-3 .. 1, half decades (quick) or quarter decades."""
    per_decade = 2 if quick else 4
    return [10 ** (k / per_decade) for k in range(-3 * per_decade, 1)]


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
    from the same grid at the same step count: trajectories and loss-vs-step curves."""
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
                             "best_lr": lrs[best], "steps": steps, "final_loss": losses[-1, best].item(),
                             "final_point": tuple(round(v, 4) for v in path[-1, best].tolist())})
    table = pd.DataFrame(rows)
    figure = _plot_optimizers(fig_dir, runs, table)
    return {"figure": figure, "table": table, "lr_grid": lrs}


# Trajectory panels: the SGD family and the adaptive family, each with plain SGD for reference.
FAMILIES = {"SGD family": ("SGD", "Momentum", "Nesterov"),
            "adaptive": ("SGD", "AdaGrad", "RMSProp", "Adam", "AdamW")}


def _plot_optimizers(fig_dir, runs: dict, table) -> Path:
    fig, ax = _figure(len(SURFACES), 3, panel=(5.0, 4.0))
    colors = {n: f"C{i}" for i, n in enumerate(OPTIMIZERS)}
    for col, (surface, (fn, start, (xlim, ylim), _, _)) in enumerate(SURFACES.items()):
        gx, gy = torch.meshgrid(torch.linspace(*xlim, 300, dtype=torch.float64),
                                torch.linspace(*ylim, 300, dtype=torch.float64), indexing="xy")
        z = fn(torch.stack([gx, gy], -1))
        levels = np.logspace(-2, math.log10(z.max().item()), 14)
        rows = table[table.surface == surface].set_index("optimizer")
        for row, (family, names) in enumerate(FAMILIES.items()):
            a = ax[row, col]
            a.contour(gx, gy, z, levels=levels, colors="0.7", linewidths=0.6)
            for name in names:
                path = runs[surface, name][1]
                style = dict(ls="--", lw=2.2, color="0.15") if name == "SGD" else dict(lw=1.3, color=colors[name])
                a.plot(path[:, 0], path[:, 1], label=f"{name} (lr {rows.best_lr[name]:.3g})", **style)
            a.plot(*start, "ko", ms=5)
            a.plot(1, 1, "k*", ms=12)
            a.set(xlim=xlim, ylim=ylim, title=f"{surface}: {family}", xlabel="x", ylabel="y")
            a.legend(fontsize=7, loc="lower right")
        for name in OPTIMIZERS:
            style = dict(ls="--", lw=2.2, color="0.15") if name == "SGD" else dict(lw=1.3, color=colors[name])
            ax[2, col].semilogy(runs[surface, name][0].clamp_min(1e-16), label=name, **style)
        ax[2, col].set(title=f"{surface}: loss vs step", xlabel="step", ylabel="f(x, y)  (floored at 1e-16)")
        ax[2, col].grid(alpha=0.3)
    ax[2, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), title="lr: see above")
    fig.suptitle("torch.optim on 2-D surfaces; each optimizer at its best lr from the same grid "
                 "(start: dot, minimum: star)", fontsize=11)
    return _save(fig, fig_dir, "optimizers.png")


# ============================================================================ (4) residual vs plain

class DepthBlock(nn.Module):
    """Two 3x3 convs (same width); with `residual`, the input is added before the last ReLU
    (the handout's block without a downsample). `bn=False` drops BatchNorm and keeps conv bias."""

    def __init__(self, width: int, residual: bool, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x if self.residual else out)


class DepthNet(nn.Module):
    """2 * blocks + 2 weight layers: a `pool` x `pool` average pool of the 32x32 image, a stride-2
    3x3 stem (feature maps 8x8 for pool=2, 4x4 for pool=4), `blocks` DepthBlocks, global
    average pool, linear classifier. PyTorch's default initialisation, as a student's nn.Conv2d gets."""

    def __init__(self, blocks: int, residual: bool, bn: bool = True, width: int = 8, num_classes: int = 100,
                 pool: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.AvgPool2d(pool), nn.Conv2d(3, width, 3, stride=2, padding=1, bias=not bn),
                                  nn.BatchNorm2d(width) if bn else nn.Identity(), nn.ReLU())
        self.blocks = nn.Sequential(*[DepthBlock(width, residual, bn) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def conv_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Norm of dL/dW for every conv layer in forward order after one backward pass (train mode)."""
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, nn.Conv2d)]


def residual_gradients(x: torch.Tensor, y: torch.Tensor, blocks: int, seed: int = 0) -> dict:
    """Conv weight-gradient norms at initialisation for plain/residual, with/without BN."""
    out = {}
    for bn in (True, False):
        for residual in (False, True):
            torch.manual_seed(seed)
            model = DepthNet(blocks, residual, bn, width=16)
            out["residual" if residual else "plain", bn] = conv_gradient_norms(model, x, y)
    return out


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float,
                seed: int) -> list[float]:
    """Adam on random mini-batches (with replacement across steps); the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# name -> (blocks, residual): a shallow plain net, a deep plain net, the deep net with shortcuts
DEGRADATION_MODELS = {"plain, 8 layers": (3, False), "plain, 32 layers": (15, False),
                      "residual, 32 layers": (15, True)}


def residual_demo(fig_dir: str | Path, data: DemoData, quick: bool = True, seed: int = 0,
                  steps: int | None = None) -> dict:
    """(a) dL/dW per conv layer at init, plain vs residual, 32 layers, with and without BN;
    (b) a short Adam run of a shallow plain, a deep plain and a deep residual net (all with BN).
    `steps` overrides the training steps (quick: 120, thorough: 600)."""
    import pandas as pd

    steps = steps or (120 if quick else 600)
    tail = max(1, steps // 5)
    x, y = _normalized(data.train), data.train.fine
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(y), generator=gen)[:128]
    with single_thread():
        grads = residual_gradients(x[probe], y[probe], blocks=15, seed=seed)
        curves = {}
        for name, (blocks, residual) in DEGRADATION_MODELS.items():
            torch.manual_seed(seed)
            model = DepthNet(blocks, residual, bn=True, width=8, pool=4)
            curves[name] = train_steps(model, x, y, steps, batch=64, lr=1e-3, seed=seed)
    grad_rows = [{"network": net, "batchnorm": bn, "first_layer": g[0], "middle_layer": g[len(g) // 2],
                  "last_conv_layer": g[-1]} for (net, bn), g in grads.items()]
    train_rows = [{"model": name, "steps": steps, f"mean_loss_last_{tail}_steps": float(np.mean(c[-tail:])),
                   "initial_loss": c[0]} for name, c in curves.items()]
    figure = _plot_residual(fig_dir, grads, curves, data, steps)
    return {"figure": figure, "gradients": pd.DataFrame(grad_rows), "training": pd.DataFrame(train_rows),
            "gradient_norms": grads, "curves": curves, "data": data.description}


def _smooth(values: list[float], window: int = 10) -> np.ndarray:
    v = np.asarray(values)
    window = max(1, min(window, len(v)))
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def _plot_residual(fig_dir, grads: dict, curves: dict, data: DemoData, steps: int) -> Path:
    fig, ax = _figure(3, panel=(4.8, 3.8))
    for col, bn in enumerate((True, False)):
        for (net, has_bn), g in grads.items():
            if has_bn == bn:
                ax[0, col].semilogy(range(1, len(g) + 1), np.maximum(g, 1e-30), "o-" if net == "plain" else "s-",
                                    ms=3, label=net, color="C3" if net == "plain" else "C0")
        ax[0, col].set(title=f"gradient at init, 32 layers, {'with' if bn else 'no'} BatchNorm",
                       xlabel="conv layer (1 = input side)", ylabel="|dL/dW|  (floored at 1e-30)")
        ax[0, col].grid(alpha=0.3)
        ax[0, col].legend(fontsize=8)
    for i, (name, c) in enumerate(curves.items()):
        s = _smooth(c)
        ax[0, 2].plot(np.arange(len(s)) + len(c) - len(s) + 1, s, color=["C2", "C3", "C0"][i], label=name)
    ax[0, 2].set(title="training loss, Adam 1e-3, batch 64 (BN)", xlabel="step",
                 ylabel="cross-entropy (10-step mean)")
    ax[0, 2].grid(alpha=0.3)
    ax[0, 2].legend(fontsize=8)
    return _save(fig, fig_dir, "residual_vs_plain.png", synthetic=data.synthetic, which=", all three panels")


# ============================================================================ (1) batch size

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
    x, y = _normalized(data.train)[:n], data.train.fine[:n]
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
    fig, ax = _figure(3, panel=(4.6, 3.7))
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
    return _save(fig, fig_dir, "batch_size.png", synthetic=data.synthetic, which=" in the first two panels")


# ============================================================================ (2) epoch

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
    fig, ax = _figure(2, panel=(4.4, 4.0))
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
        ax[0, col].set(title=f"shuffle={shuffle}{' (the handout)' if not shuffle else ''}",
                       xlabel="batch index in epoch 1", ylabel="batch index in epoch 2")
        ax[0, col].grid(alpha=0.3)
    result["total_steps"] = result["no_shuffle"]["steps_per_epoch"] * epochs
    fig.suptitle(f"{n_images:,} images, batch {batch_size}: {result['no_shuffle']['steps_per_epoch']} steps per "
                 f"epoch (last batch {result['no_shuffle']['last_batch']}); where 3,000 images land", fontsize=10)
    result["figure"] = _save(fig, fig_dir, "epoch_batches.png")
    return result


# ============================================================================ (3) overfitting

MISSING_BASELINE = ("no baseline run at {path}: this part reads the handout run's history. Train it with "
                    "'python -m cvlab train --preset handout --out {absolute}' (or run notebooks/01_baseline.ipynb)")


def run_gap(run_dir: str | Path) -> dict:
    """Train/test figures of a run directory: the epoch of lowest test loss, the final gap
    (test loss - train loss, train acc - test acc) and how far test loss rose after its minimum."""
    run = load_run(run_dir)
    h = run.history
    best = int(h.test_loss.idxmin())
    last = h.iloc[-1]
    return {"run": str(run.path), "synthetic": run.synthetic, "epochs": int(last.epoch),
            "n_train": run.metrics.get("dataset", {}).get("n_train"),
            "min_test_loss": float(h.test_loss.min()), "min_test_loss_epoch": int(h.epoch[best]),
            "final_train_loss": float(last.train_loss), "final_test_loss": float(last.test_loss),
            "final_loss_gap": float(last.test_loss - last.train_loss),
            "test_loss_rise_after_min": float(last.test_loss - h.test_loss.min()),
            "final_train_acc": float(last.train_acc), "final_test_acc": float(last.test_acc),
            "final_acc_gap": float(last.train_acc - last.test_acc), "history": h}


def overfitting_from_run(run_dir: str | Path, fig_dir: str | Path) -> dict:
    """The baseline's train/test loss and accuracy per epoch with the minimum of test loss
    marked; when the run is missing: {"missing": message naming the run and the command}."""
    from matplotlib.ticker import MaxNLocator
    try:
        gap = run_gap(run_dir)
    except RunDirError:
        return {"missing": MISSING_BASELINE.format(path=run_dir, absolute=Path(run_dir).resolve())}
    h = gap["history"]
    fig, ax = _figure(2, panel=(4.8, 3.7))
    ax[0, 0].plot(h.epoch, h.train_loss, label="train loss")
    ax[0, 0].plot(h.epoch, h.test_loss, label="test loss")
    ax[0, 0].axvline(gap["min_test_loss_epoch"], color="0.5", ls=":", label="min test loss")
    ax[0, 0].set(title=f"{Path(gap['run']).name}: loss per epoch", xlabel="epoch", ylabel="cross-entropy")
    ax[0, 1].plot(h.epoch, h.train_acc, label="train acc")
    ax[0, 1].plot(h.epoch, h.test_acc, label="test acc")
    ax[0, 1].set(title=f"{Path(gap['run']).name}: accuracy per epoch", xlabel="epoch", ylabel="top-1 accuracy")
    for a in ax[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    gap["figure"] = _save(fig, fig_dir, "overfitting_baseline.png", synthetic=gap["synthetic"])
    return gap


def small_cnn(num_classes: int = 100, width: int = 16) -> nn.Sequential:
    """Two conv layers and a wide linear head on 16x16 inputs: quick to train, quick to overfit."""
    return nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 16, num_classes))


# name -> (augmentation of the uint8 batch or None, AdamW weight decay)
REGULARIZERS = {
    "none": (None, 0.0),
    "augment (crop 4 + flip)": (compose(lambda x, g: random_crop(x, 4, g), random_hflip), 0.0),
    "weight decay 0.5": (None, 0.5),
}


def regularization_demo(fig_dir: str | Path, data: DemoData, quick: bool = True, seed: int = 0,
                        epochs: int | None = None, n_train: int | None = None) -> dict:
    """The same small CNN trained on few images with no regularization, with augmentation and
    with weight decay (AdamW, lr 1e-3); train loss measured on the clean training images.
    Overrides: `epochs` (quick 12, thorough 40), `n_train` (quick 500, thorough all of data.train)."""
    import pandas as pd

    epochs = epochs or (12 if quick else 40)
    n = n_train or (500 if quick else len(data.train))
    train = subset(data.train, n, balanced=n >= 100)  # n/100 images per class, original order
    histories = {}
    with single_thread():
        for name, (augment, wd) in REGULARIZERS.items():
            torch.manual_seed(seed)
            model = small_cnn()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=wd)
            train_step, eval_step = TrainStep(model, opt, CPU), EvalStep(model, CPU)  # constant lr: no schedule
            loader = TensorLoader(train, 50, CPU, "cifar100", shuffle=True, augment=augment, seed=seed)
            clean = TensorLoader(train, 500, CPU, "cifar100")
            test = TensorLoader(data.test, 500, CPU, "cifar100")
            rows = []
            for epoch in range(1, epochs + 1):
                train_one_epoch(train_step, loader)
                tr, te = evaluate(eval_step, clean), evaluate(eval_step, test)
                rows.append({"epoch": epoch, "train_loss": tr["loss"], "test_loss": te["loss"],
                             "train_acc": tr["acc"], "test_acc": te["acc"]})
            histories[name] = pd.DataFrame(rows)
    table = pd.DataFrame([{"setting": k, "final_train_loss": h.train_loss.iloc[-1],
                           "final_test_loss": h.test_loss.iloc[-1],
                           "loss_gap": h.test_loss.iloc[-1] - h.train_loss.iloc[-1],
                           "final_train_acc": h.train_acc.iloc[-1], "final_test_acc": h.test_acc.iloc[-1],
                           "min_test_loss_epoch": int(h.epoch[h.test_loss.idxmin()])}
                          for k, h in histories.items()])
    figure = _plot_regularization(fig_dir, histories, data, len(train), epochs)
    return {"figure": figure, "table": table, "histories": histories, "n_train": len(train),
            "n_test": len(data.test), "epochs": epochs, "data": data.description}


def _plot_regularization(fig_dir, histories: dict, data: DemoData, n_train: int, epochs: int) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(2, panel=(5.0, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        ax[0, 0].plot(h.epoch, h.train_loss, "--", color=f"C{i}", label=f"{name}: train")
        ax[0, 0].plot(h.epoch, h.test_loss, "-", color=f"C{i}", label=f"{name}: test")
        ax[0, 1].plot(h.epoch, h.test_loss - h.train_loss, "-", color=f"C{i}", label=name)
    ax[0, 0].set(title=f"small CNN, {n_train} train images, {epochs} epochs", xlabel="epoch",
                 ylabel="cross-entropy (train: clean images)")
    ax[0, 1].set(title="generalization gap: test loss - train loss", xlabel="epoch", ylabel="loss gap")
    for a in ax[0]:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[0, 0].legend(fontsize=7)
    ax[0, 1].legend(fontsize=8)
    return _save(fig, fig_dir, "regularization.png", synthetic=data.synthetic)
