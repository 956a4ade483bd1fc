"""Batched augmentations on uint8 image tensors (B, 3, H, W), run on the training device.

Each function takes the batch and a torch.Generator on the batch's device and returns a new
batch of the same shape and dtype; a seeded generator makes the result reproducible.
`build_augment(cfg)` composes the ones a config switches on.
"""
from __future__ import annotations

from typing import Callable

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by `padding` pixels, then crop back to H x W at a random offset
    per image (the standard CIFAR "crop 32, padding 4")."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability `p`."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def compose(*steps: Augment) -> Augment:
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x
    return apply


def build_augment(cfg) -> Augment | None:
    """The uint8 batch augmentation a config asks for, or None when it asks for none."""
    steps: list[Augment] = []
    if cfg.crop_padding > 0:
        steps.append(lambda x, g: random_crop(x, cfg.crop_padding, g))
    if cfg.hflip:
        steps.append(random_hflip)
    return compose(*steps) if steps else None
