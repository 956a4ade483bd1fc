"""Question (4), residual blocks: gradients at initialisation and a short training run, plain against residual."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import DemoData, legend_below, moving_average, new_figure, normalized, save_demo_figure, single_thread, zh


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


def he_init(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation of every conv weight, Var(w) = 2 / fan_in (sigma_w^2 = 2, so
    chi = 1 for ReLU), biases zero: the control for PyTorch's default, Var(w) = 1 / (3 fan_in)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# (network, batchnorm, init) of the gradient runs: PyTorch's default init with and without BN, and
# the plain net without BN again with He init, to separate what depth does from what the init does.
GRADIENT_RUNS = (("plain", True, "default"), ("residual", True, "default"), ("plain", False, "default"),
                 ("residual", False, "default"), ("plain", False, "he"))


def residual_gradients(x: torch.Tensor, y: torch.Tensor, blocks: int, seed: int = 0) -> dict:
    """Conv weight-gradient norms at initialisation, keyed (network, batchnorm, init) as in GRADIENT_RUNS."""
    out = {}
    for net, bn, init in GRADIENT_RUNS:
        torch.manual_seed(seed)
        model = DepthNet(blocks, net == "residual", bn, width=16)
        out[net, bn, init] = conv_gradient_norms(he_init(model) if init == "he" else model, x, y)
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
    """(a) dL/dW per conv layer at init, plain vs residual, 32 layers, with and without BN (PyTorch's default
    init), and the plain net without BN with He init as a control;
    (b) a short Adam run of a shallow plain, a deep plain and a deep residual net (all with BN).
    `steps` overrides the training steps (quick: 120, thorough: 600)."""
    import pandas as pd

    steps = steps or (120 if quick else 600)
    tail = max(1, steps // 5)
    x, y = normalized(data.train), data.train.fine
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(y), generator=gen)[:128]
    with single_thread():
        grads = residual_gradients(x[probe], y[probe], blocks=15, seed=seed)
        curves = {}
        for name, (blocks, residual) in DEGRADATION_MODELS.items():
            torch.manual_seed(seed)
            model = DepthNet(blocks, residual, bn=True, width=8, pool=4)
            curves[name] = train_steps(model, x, y, steps, batch=64, lr=1e-3, seed=seed)
    grad_rows = [{"network": net, "batchnorm": bn, "init": init, "first_layer": g[0], "middle_layer": g[len(g) // 2],
                  "last_conv_layer": g[-1]} for (net, bn, init), g in grads.items()]
    train_rows = [{"model": name, "steps": steps, f"mean_loss_last_{tail}_steps": float(np.mean(c[-tail:])),
                   "initial_loss": c[0]} for name, c in curves.items()]
    figure = _plot_residual(fig_dir, grads, curves, data, steps)
    return {"figure": figure, "gradients": pd.DataFrame(grad_rows), "training": pd.DataFrame(train_rows),
            "gradient_norms": grads, "curves": curves, "data": data.description}


_ZH_NET = {"plain": "普通网络 (plain)", "residual": "残差网络 (residual)"}


def _net_label(net: str, layers: int, he: bool = False) -> str:
    """Legend text of a network: the same text (hence one legend entry) in every panel it appears in."""
    return zh(f"{_ZH_NET.get(net, net)}，{layers} 层" + ("，He 初始化" if he else ""),
              f"{net}, {layers} layers" + (", He init" if he else ""))


def _plot_residual(fig_dir, grads: dict, curves: dict, data: DemoData, steps: int) -> Path:
    fig, ax = new_figure(3, panel=(4.8, 4.0))
    for col, bn in enumerate((True, False)):
        for (net, has_bn, init), g in grads.items():
            if has_bn == bn:
                he = init == "he"
                ax[0, col].semilogy(range(1, len(g) + 1), np.maximum(g, 1e-30),
                                    "^--" if he else ("o-" if net == "plain" else "s-"), ms=3,
                                    label=_net_label(net, len(g) + 1, he),  # the convs and the classifier
                                    color="C1" if he else ("C3" if net == "plain" else "C0"))
        floored = any(min(g) < 1e-30 for (_, has_bn, _), g in grads.items() if has_bn == bn)
        ax[0, col].set(title=zh(f"初始化时的梯度，32 层，{'有' if bn else '无'} BatchNorm",
                                f"gradient at init, 32 layers, {'with' if bn else 'no'} BN"),
                       xlabel=zh("卷积层（1 = 输入端）", "conv layer (1 = input side)"),
                       ylabel=zh("权重梯度 |∂L/∂W|", "|dL/dW|") + (zh("（0 画在 1e-30）", " (0 drawn at 1e-30)") if floored else ""))
        ax[0, col].grid(alpha=0.3)
    for i, (name, c) in enumerate(curves.items()):
        s = moving_average(c, 10)
        kind, layers = name.split(", ")
        ax[0, 2].plot(np.arange(len(s)) + len(c) - len(s) + 1, s, color=["C2", "C3", "C0"][i],
                      label=_net_label(kind, int(layers.split()[0])))
    ax[0, 2].set(title=zh("训练损失，Adam 1e-3，批量大小 64（有 BN）", "training loss, Adam 1e-3, batch 64 (BN)"),
                 xlabel=zh("步数 (step)", "step"), ylabel=zh("交叉熵（10 步滑动平均）", "cross-entropy (10-step mean)"))
    ax[0, 2].grid(alpha=0.3)
    # one legend below all three panels (inside, it covered curves): a network has the same colour and entry
    # wherever it appears
    entries = {}
    for a in (ax[0, 1], ax[0, 2]):
        for handle, label in zip(*a.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    legend_below(fig, list(entries.values()), list(entries), ncol=2,
                 title=zh("未注明的都是 PyTorch 默认初始化", "default PyTorch init unless noted"))
    return save_demo_figure(fig, fig_dir, "residual_vs_plain.png", synthetic=data.synthetic,
                            which=zh("（三幅图都是）", ", all three panels"))
