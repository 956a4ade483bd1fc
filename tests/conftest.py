"""Shared fixtures: tiny synthetic CIFAR-100 data in the official format, tiny configs."""
from __future__ import annotations

import pytest
import torch

from cvlab.core.config import make_config
from cvlab.core.data import write_synthetic



@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """A small synthetic data root holding cifar-100-python/ (200 train, 100 test images)."""
    root = tmp_path_factory.mktemp("cifar-folder")
    write_synthetic(root, n_train=200, n_test=100, seed=0)
    return root


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory):
    """The same data as cifar-100-python.tar.gz."""
    root = tmp_path_factory.mktemp("cifar-archive")
    write_synthetic(root, n_train=200, n_test=100, seed=0, archive=True)
    return root


def tiny_config(**overrides):
    """A 1/4-width ResNet-18 on 300 synthetic images: about a second per epoch on a CPU."""
    values = dict(model="tiny_resnet18", synthetic=True, synthetic_train=300, synthetic_test=100, epochs=2, batch_size=50,
                  eval_batch_size=100, lr=1e-3, shuffle=True, normalization="cifar100", device="cpu",
                  progress=False, download=False)
    values.update(overrides)
    return make_config("handout", **values)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP hand-offs, which cost milliseconds per op on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StopAfter:
    """An on_epoch_end callback that simulates Ctrl-C after the given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt
