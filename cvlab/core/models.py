"""The handout's ResNet-18, the standard CIFAR ResNet-18, and a name -> builder registry.

Shape walk of the handout network on a 32x32 input (no padding in the stem):
32 -> conv3x3 -> 30 -> maxpool2 -> 15 -> blocks 64: 15 -> 128: 8 -> 256: 4 -> 512: 2 -> avgpool2 -> 1.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


class HandoutBasicBlock(nn.Module):
    """The handout's residual block: two 3x3 convs (with bias) and BN; a 1x1 strided conv
    without BN as the shortcut only where the stride is not 1.

    The handout uses `lambda x: x` as the identity shortcut, which cannot be pickled;
    nn.Identity is the same function and pickles.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1:
            self.downsample: nn.Module = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride))
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


def handout_resnet18(num_classes: int = 100, dropout: float = 0.0) -> nn.Sequential:
    """The handout's network as printed (with its missing closing parenthesis fixed).

    11,223,140 parameters for 100 classes. `dropout` > 0 inserts nn.Dropout before the
    classifier (not in the handout; it shifts the classifier's index in the state dict).
    """
    head = [nn.Dropout(dropout)] if dropout > 0 else []
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, stride=1),  # no padding: 32 -> 30
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 30 -> 15
        HandoutBasicBlock(64, 64, stride=1),
        HandoutBasicBlock(64, 64, stride=1),
        HandoutBasicBlock(64, 128, stride=2),
        HandoutBasicBlock(128, 128, stride=1),
        HandoutBasicBlock(128, 256, stride=2),
        HandoutBasicBlock(256, 256, stride=1),
        HandoutBasicBlock(256, 512, stride=2),
        HandoutBasicBlock(512, 512, stride=1),
        nn.AvgPool2d(2),  # 2 -> 1
        nn.Flatten(),
        *head,
        nn.Linear(512, num_classes),
    )


class BasicBlock(nn.Module):
    """Standard ResNet basic block (He et al. 2016): bias-free convs, BN in the projection shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 adapted to 32x32 images: 3x3 stride-1 padded stem, no max-pool, global average pool.

    11,220,132 parameters for 100 classes.
    """

    def __init__(self, num_classes: int = 100, widths: tuple[int, ...] = (64, 128, 256, 512),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, inplanes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)]
            inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # no parameters: state dict unchanged
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def cifar_resnet18(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet18:
    return CifarResNet18(num_classes, dropout=dropout)


def zero_init_last_bn(model: nn.Module) -> int:
    """Set gamma = 0 in the last BN of every residual branch, so each block starts as its shortcut
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1). Returns the number of blocks changed."""
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, HandoutBasicBlock))]
    for block in blocks:
        nn.init.zeros_(block.bn2.weight)
    return len(blocks)


def tiny_resnet18(num_classes: int = 100) -> CifarResNet18:
    """The CIFAR ResNet-18 topology at 1/4 width (16..128 channels): for tests and smoke runs only."""
    return CifarResNet18(num_classes, widths=(16, 32, 64, 128))


# name -> (builder, one-line description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "handout_resnet18": (handout_resnet18, "the handout's ResNet-18: unpadded 3x3 stem + 2x2 max-pool, 1x1 shortcut without BN"),
    "cifar_resnet18": (cifar_resnet18, "standard CIFAR ResNet-18: padded 3x3 stem, no max-pool, BN in the shortcut"),
    "tiny_resnet18": (tiny_resnet18, "cifar_resnet18 at 1/4 width: for tests and smoke runs, not a ResNet-18 result"),
}


def build_model(name: str, num_classes: int = 100, *, zero_init_last: bool = False,
                dropout: float = 0.0) -> nn.Module:
    """Build a registered model by name; optionally zero-init the last BN of each block and
    put dropout before the classifier."""
    if name not in MODELS:
        from .errors import ConfigError
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = MODELS[name][0](num_classes=num_classes, **({"dropout": dropout} if dropout > 0 else {}))
    if zero_init_last:
        zero_init_last_bn(model)
    return model


def state_dict_mismatch(model: nn.Module, state: dict) -> str | None:
    """What keeps `state` from loading into `model` (missing, unexpected or reshaped tensors), in one
    line; None when it fits."""
    if not isinstance(state, dict):
        return f"the weights are a {type(state).__name__}, not a dict of tensors"
    own = model.state_dict()
    not_tensors = [k for k in own if k in state and not isinstance(state[k], torch.Tensor)]
    if not_tensors:  # e.g. a string where a (0-d) tensor belongs: load_state_dict would raise deep inside torch
        k = not_tensors[0]
        return f"{len(not_tensors)} value(s) that are not tensors, e.g. {k} is a {type(state[k]).__name__}"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensor(s) of another shape, e.g. {k} {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shape_walk(model: nn.Sequential, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> list[tuple[str, tuple[int, ...]]]:
    """Each top-level layer's name and output shape for one input (d2l's "shape walk")."""
    x = torch.zeros(input_shape)
    rows = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            rows.append((layer.__class__.__name__, tuple(x.shape)))
    model.train(was_training)
    return rows
