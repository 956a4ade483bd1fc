"""What every theory demo shares: one CPU thread, figures, the images the demos train on, and the handout
network's training pass and test."""
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
from ...report.plots import save_figure, stamp_synthetic, zh

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
    """A matplotlib Figure without pyplot (no global state, works under any backend); its text, tick labels and
    legends are sized for the A4 page when it is saved (report.plots.save_figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def moving_average(values, window: int):
    """Means of `window` consecutive values (numpy's "valid" convolution: len(values) - window + 1 of them);
    the window is clipped to 1..len(values)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    window = max(1, min(window, len(v)))
    return np.convolve(v, np.ones(window) / window, mode="valid")


def legend_below(fig, handles, labels, ncol: int, title: str | None = None):
    """One legend for the whole figure, below its panels, where it covers no curve."""
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, title=title)


def plain_log_ticks(fig) -> None:
    """Log axes that span less than a decade get round ticks written plainly (4.5, not 4.5x10^0)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    for a in fig.axes:
        for axis, limits in ((a.xaxis, a.get_xlim()), (a.yaxis, a.get_ylim())):
            low, high = sorted(limits)
            if axis.get_scale() == "log" and 0 < low and high < 10 * low:
                axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())


def save_demo_figure(fig, fig_dir: str | Path, name: str, synthetic: bool = False, which: str = "") -> Path:
    """Save `fig` as fig_dir/name with the report's one figure helper (log axes of less than a decade
    written plainly), stamped SYNTHETIC when it is (`which`: the panels made from synthetic data, e.g.
    zh("（前两幅图）", " in the first two panels"))."""
    plain_log_ticks(fig)
    if synthetic:
        stamp_synthetic(fig, zh("合成数据 (SYNTHETIC)，不是 CIFAR-100", "SYNTHETIC data (not CIFAR-100)") + which)
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


# ---------------------------------------------------------------------------- the handout network in a demo

def handout_net(seed: int):
    """The handout's ResNet-18 with seed `seed`'s initial weights (the same for every setting a demo compares)."""
    from ...core.models import build_model

    torch.manual_seed(seed)
    return build_model("handout_resnet18")


def step_losses(step, loader: TensorLoader) -> Iterator[tuple[float, int]]:
    """One training pass of `step` (engine.TrainStep) over `loader`: each step's loss, read at once (on the
    CPU a read costs nothing), and its batch size."""
    step.model.train()
    for x, y in loader:
        yield float(step.step(x, y)[0]), len(y)


def evaluate_on(model, split: Split) -> dict:
    """engine.evaluate of `model` on `split` (batches of 500, the CIFAR-100 normalization, the CPU)."""
    from ...core.engine import EvalStep, evaluate

    return evaluate(EvalStep(model, CPU), TensorLoader(split, 500, CPU, "cifar100"))
