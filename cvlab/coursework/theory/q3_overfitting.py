"""Question (3), overfitting: the baseline run's train/test gap and a small CNN with and without regularization."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...core.augment import compose, random_crop, random_hflip
from ...core.data import subset
from ...core.loader import TensorLoader
from ...core.engine import TrainStep, train_one_epoch
from ...core.errors import RunDirError
from ...core.runs import load_run
from .common import CPU, DemoData, evaluate_on, legend_below, new_figure, save_demo_figure, single_thread, zh


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
    fig, ax = new_figure(2, panel=(4.8, 3.7))
    name = Path(gap["run"]).name
    best = gap["min_test_loss_epoch"]
    for col, (train, test, ylabel, what) in enumerate(
            ((h.train_loss, h.test_loss, zh("交叉熵损失 (cross-entropy)", "cross-entropy"), ("损失", "loss")),
             (100 * h.train_acc, 100 * h.test_acc, zh("top-1 准确率 (%)", "top-1 accuracy (%)"), ("准确率", "accuracy")))):
        a = ax[0, col]
        a.plot(h.epoch, train, color="C0", label=zh("训练集 (train)", "train"))
        a.plot(h.epoch, test, color="C1", label=zh("测试集 (test)", "test"))
        a.axvline(best, color="0.5", ls=":", label=zh(f"测试损失最低的 epoch（第 {best} 个）", f"lowest test loss (epoch {best})"))
        a.set(title=zh(f"{name}：每个 epoch 的{what[0]}", f"{name}: {what[1]} per epoch"), xlabel="epoch", ylabel=ylabel)
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    # both panels share colours and the marked epoch: one legend below them, off the curves
    legend_below(fig, *ax[0, 0].get_legend_handles_labels(), ncol=3)
    gap["figure"] = save_demo_figure(fig, fig_dir, "overfitting_baseline.png", synthetic=gap["synthetic"])
    return gap


def small_cnn(num_classes: int = 100, width: int = 16) -> nn.Sequential:
    """Two conv layers and a wide linear head on 16x16 inputs: quick to train, quick to overfit."""
    return nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 16, num_classes))


LR = 1e-3  # AdamW's learning rate in regularization_demo, constant (no schedule)
WEIGHT_DECAY = 0.5  # the weight-decay row's decoupled decay: each step multiplies the weights by 1 - LR * 0.5

# name -> (augmentation of the uint8 batch or None, AdamW weight decay)
REGULARIZERS = {
    "none": (None, 0.0),
    "augment (crop 4 + flip)": (compose(lambda x, g: random_crop(x, 4, g), random_hflip), 0.0),
    f"weight decay {WEIGHT_DECAY:g}": (None, WEIGHT_DECAY),
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
            opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=wd)
            train_step = TrainStep(model, opt, CPU)  # constant lr: no schedule
            loader = TensorLoader(train, 50, CPU, "cifar100", shuffle=True, augment=augment, seed=seed)
            rows = []
            for epoch in range(1, epochs + 1):
                train_one_epoch(train_step, loader)
                tr, te = evaluate_on(model, train), evaluate_on(model, data.test)  # train: the clean images
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


# the Chinese names of REGULARIZERS' settings in the figure ("{}": the value that ends the English name)
_ZH_SETTING = {"none": "无正则化", "augment": "数据增强 (augmentation)：随机裁剪 4 + 水平翻转",
               "weight": "权重衰减 (weight decay) {}"}


def _plot_regularization(fig_dir, histories: dict, data: DemoData, n_train: int, epochs: int) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(2, panel=(5.0, 3.8))
    handles, labels = [], []
    for i, (name, h) in enumerate(histories.items()):
        ax[0, 0].plot(h.epoch, h.train_loss, "--", color=f"C{i}")
        ax[0, 0].plot(h.epoch, h.test_loss, "-", color=f"C{i}")
        handles += ax[0, 1].plot(h.epoch, h.test_loss - h.train_loss, "-", color=f"C{i}")
        labels.append(zh(_ZH_SETTING.get(name.split(" ")[0], name).replace("{}", name.split(" ")[-1]), name))
    handles += [Line2D([], [], color="0.3", ls="--"), Line2D([], [], color="0.3", ls="-")]
    labels += [zh("虚线：训练集 (train)", "dashed: train"), zh("实线：测试集 (test)", "solid: test")]
    ax[0, 0].set(title=zh(f"小 CNN，{n_train} 张训练图，{epochs} 个 epoch", f"small CNN, {n_train} train images, {epochs} epochs"),
                 xlabel="epoch", ylabel=zh("交叉熵（训练损失在未做数据增强的图上算）", "cross-entropy (train: clean images)"))
    ax[0, 1].set(title=zh("泛化差距 (generalization gap)：测试损失 − 训练损失", "generalization gap: test loss - train loss"),
                 xlabel="epoch", ylabel=zh("损失差距", "loss gap"))
    for a in ax[0]:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    # one legend below both panels: the settings by colour, train/test by line style (inside, it covered curves)
    legend_below(fig, handles, labels, ncol=2)  # column-major: settings left, line styles right
    return save_demo_figure(fig, fig_dir, "regularization.png", synthetic=data.synthetic)
