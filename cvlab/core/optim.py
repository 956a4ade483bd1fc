"""The optimizer and the learning-rate schedule a Config asks for (what `build_trainer` gives its TrainStep)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import device as devices
from .config import Config


def optimizer_impl_kwargs(impl: str, params: list[torch.Tensor], optimizer: str = "adam") -> dict:
    """Constructor flags choosing the update kernels for parameters on one device: decided in
    cvlab.core.device (fused/foreach only where the installed torch has them for that device)."""
    device = params[0].device if params else torch.device("cpu")
    kernels, _ = devices.decide_optimizer_kernels(impl, optimizer, devices.probe(device))
    return devices.OPTIMIZER_KWARGS[kernels]


def parameter_groups(cfg: Config, model: nn.Module) -> list[dict]:
    """One group for all trainable parameters, or with `wd_exclude_norm_bias` two: weights of
    convolutions and linear layers (decayed), and 1-D parameters, i.e. BN weights/biases and all
    biases (not decayed: the "no bias decay" heuristic of He et al. 2019; notebook 03 §2.9 says
    what it changes in these networks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.wd_exclude_norm_bias:
        return [{"params": params}]
    decayed = [p for p in params if p.ndim > 1]
    exempt = [p for p in params if p.ndim <= 1]
    return [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: nn.Module, impl: dict | None = None) -> torch.optim.Optimizer:
    """The configured optimizer; `impl` = kernel flags from the device plan, else decided here."""
    params = parameter_groups(cfg, model)
    if impl is None:
        impl = optimizer_impl_kwargs(cfg.optimizer_impl, [p for group in params for p in group["params"]],
                                     cfg.optimizer)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **impl)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **impl)
    return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **impl)


@dataclass
class LRShape:
    """LR multiplier per step: linear warmup 0 -> 1, then constant, cosine to 0, or linear
    decay to 0 ("onecycle": the triangular one-cycle policy, Smith 2018)."""

    kind: str
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 - t  # onecycle


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total_steps = cfg.epochs * steps_per_epoch
    shape = LRShape(cfg.schedule, total_steps, round(cfg.warmup * total_steps))  # warmup: a fraction of the run
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
