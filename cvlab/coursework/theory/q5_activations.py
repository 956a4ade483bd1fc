"""Question (5), activation functions: derivatives, saturation, and the gradient through a deep MLP with its
mean-field prediction."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import legend_below, new_figure, save_demo_figure, single_thread, zh


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
    from matplotlib.ticker import MaxNLocator

    with single_thread():
        table = activation_table()
        grads = depth_gradients(depth=20, seed=seed)  # deeper, float32 sigmoid gradients underflow to 0
    depth = len(next(iter(grads.values())))
    fig, ax = new_figure(3, panel=(4.8, 3.8))
    x = torch.linspace(-6, 6, 1201, requires_grad=True)
    colors = dict(zip(ACTIVATIONS, [f"C{i}" for i in range(len(ACTIVATIONS))]))
    sat = table.set_index("activation")["|f'| < 0.01 for x >"]
    for a in ax[0, :2]:
        a.axvspan(-6, -sat["sigmoid"], color="0.82", lw=0)
        a.axvspan(sat["sigmoid"], 6, color="0.82", lw=0, label=zh("sigmoid 饱和：|f'| < 0.01", "sigmoid' < 0.01"))
        a.axvspan(-sat["sigmoid"], -sat["tanh"], color="0.92", lw=0)
        a.axvspan(sat["tanh"], sat["sigmoid"], color="0.92", lw=0, label=zh("tanh 饱和：|f'| < 0.01", "tanh' < 0.01"))
    for name, (fn, _) in ACTIVATIONS.items():
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        style = "--" if name in ("LeakyReLU", "SiLU") else "-"
        ax[0, 0].plot(x.detach(), y.detach(), style, color=colors[name], label=name, lw=1.6)
        ax[0, 1].plot(x.detach(), g, style, color=colors[name], lw=1.6)
        ax[0, 2].semilogy(range(1, depth + 1), grads[name], style, color=colors[name], lw=1.6)
    ax[0, 0].set(title=zh("激活函数 f(x)", "f(x)"), xlabel="x", ylim=(-1.5, 3))
    ax[0, 1].set(title=zh("导数 f'(x)（灰色：饱和区）", "f'(x)  (grey: saturated)"), xlabel="x", ylim=(-0.2, 1.2))
    ax[0, 2].set(title=zh(f"{depth} 层 MLP，He 初始化：每层的 |∂L/∂W|", f"{depth}-layer MLP, He init: |dL/dW| per layer"),
                 xlabel=zh("层（1 = 输入端）", "layer (1 = input side)"), ylabel=zh("权重梯度的范数", "weight-gradient norm"))
    # one legend for all three panels, below them: the same colours everywhere, and inside it covered curves
    handles, labels = ax[0, 0].get_legend_handles_labels()
    legend_below(fig, handles, labels, ncol=(len(labels) + 1) // 2)
    ax[0, 2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in ax[0]:
        a.grid(alpha=0.3)
    ratio = pd.Series({k: v[0] / v[-1] for k, v in grads.items()}, name="first/last layer gradient")
    theory = {k: mean_field(ACTIVATIONS[k][0], depth) for k in ("sigmoid", "tanh", "ReLU")}
    mean = pd.DataFrame(theory).T.assign(measured_ratio=ratio[list(theory)])
    return {"figure": save_demo_figure(fig, fig_dir, "activations.png"), "table": table,
            "depth": depth, "gradient_ratio": ratio, "mean_field": mean}
