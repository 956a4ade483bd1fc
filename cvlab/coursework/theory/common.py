"""What every theory demo shares: one CPU thread, figures, and the images the demos train on."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ...core.data import SPLIT_SIZES, Split, load_for_config, locate
from ...core.loader import TensorLoader
from ...core.paths import resolve_data_root
from ...report.plots import save_figure, stamp_synthetic, zh  # noqa: F401  (zh: the demos' figure text)

CIFAR_TRAIN_IMAGES = SPLIT_SIZES["train"]  # images in the CIFAR-100 training set
HANDOUT_BATCH_SIZE = 1024       # the handout's batch_size
HANDOUT_EPOCHS = 100            # the handout's iteration_num (it counts epochs)
CPU = torch.device("cpu")


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


def new_figure(ncols: int, nrows: int = 1, panel: tuple[float, float] = (4.6, 3.6)):
    """A matplotlib Figure without pyplot (no global state, works under any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_demo_figure(fig, fig_dir: str | Path, name: str, synthetic: bool = False, which: str = "") -> Path:
    """Save `fig` as fig_dir/name with the report's one figure helper, stamped SYNTHETIC (`which`: the
    panels made from synthetic data, e.g. "in the first two panels") when it is."""
    if synthetic:
        stamp_synthetic(fig, f"SYNTHETIC data (not CIFAR-100){which}")
    return save_figure(fig, Path(fig_dir) / name)


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
    from ...core.config import make_config

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


def normalized(split: Split) -> torch.Tensor:
    loader = TensorLoader(split, len(split), CPU, "cifar100")
    return loader.to_float(loader.images)
