"""The handout's code as printed, in one place: its residual block with the `lambda x: x` shortcut, its
per-item torchvision data path, and its `train` / `test` loops. The benchmark times these against cvlab's
path (experiments.bench); notebook 01 shows what the lambda costs (coursework.baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import HANDOUT_MEAN, HANDOUT_STD, Split
from ..core.models import HandoutBasicBlock


class LambdaShortcutBlock(HandoutBasicBlock):
    """The handout's residual block as printed: the identity shortcut is `lambda x: x`."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__(inplanes, planes, stride)
        if stride == 1:
            del self.downsample  # drop cvlab's registered nn.Identity ...
            self.downsample = lambda x: x  # ... for the handout's lambda, a plain attribute


class HandoutStyleDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR100 does per item: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, split: Split) -> None:
        import torchvision.transforms as T
        self.data = split.images.permute(0, 2, 3, 1).contiguous().numpy()  # torchvision keeps (N, 32, 32, 3)
        self.targets = split.fine.tolist()
        self.transform = T.Compose([T.ToTensor(), T.Normalize(HANDOUT_MEAN, HANDOUT_STD)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        img, target = self.data[index], self.targets[index]
        return self.transform(Image.fromarray(img)), target


def handout_loader(split: Split, batch_size: int) -> torch.utils.data.DataLoader:
    """The handout's `DataLoader(train, batch_size=batch_size)`: no shuffle, 0 workers, no pinned memory."""
    return torch.utils.data.DataLoader(HandoutStyleDataset(split), batch_size=batch_size)


def handout_train(model: nn.Module, optimizer: torch.optim.Optimizer, loader, device: torch.device,
                  epoch: int = 0) -> list[torch.Tensor]:
    """The handout's `train(model, epoch, train_loader)`; returns the per-step losses (detached)."""
    model.train()
    losses = []
    for step, (x, y) in enumerate(loader):
        model = model.to(device)  # the handout's `model = model.cuda()` on every step
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        output = model(x)
        loss = F.cross_entropy(output, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if step % 10 == 0:
            'Epoch: {}, Step {}, Loss: {}'.format(epoch, step, loss)  # formats the tensor: a host sync
    return losses


def handout_test(model: nn.Module, loader, device: torch.device) -> float:
    """The handout's `test(model, test_loader)`; returns the accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            model = model.to(device)
            x, y = x.to(device), y.to(device)
            output = model(x)
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(y.view_as(pred)).sum().item()
    return correct / len(loader.dataset) * 100
