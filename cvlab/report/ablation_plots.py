"""Figures for the improvement ladder, all drawn from tensors or run directories (never typed-in numbers):
what each augmentation does to a few images, overlaid test curves, the gain of each rung, and
per-superclass accuracy. A figure made from synthetic data says SYNTHETIC on its face (plots.stamp_synthetic);
save them with plots.save_figure, the one figure helper.
"""
from __future__ import annotations

import torch

from ..core import augment as aug
from .plots import stamp_synthetic, zh


def _stamp(fig, synthetic: bool) -> None:
    if synthetic:
        stamp_synthetic(fig)


def augmentation_rows(images: torch.Tensor, seed: int = 0) -> list[tuple[str, torch.Tensor, list[str]]]:
    """(name, uint8 batch, per-image captions) for the original and each augmentation in cvlab.augment,
    each applied with a generator seeded by `seed`. Mixed rows pair image i with image i+1 (cyclically)."""
    def g() -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    n = images.shape[0]
    rows = [("original", images, [""] * n),
            ("crop 4 + flip", aug.random_hflip(aug.random_crop(images, 4, g()), g()), [""] * n),
            ("cutout 8", aug.cutout(images, 8, g()), [""] * n)]
    for name in ("trivialaugment", "randaugment", "autoaugment"):
        rows.append((name, aug.apply_policy(images, aug.make_policy(name), g()), [""] * n))
    x = images.float() / 255
    swap = torch.tensor([1, 0])  # each image of a pair takes the other as its partner
    for name, method in (("mixup", aug.mixup), ("cutmix", aug.cutmix)):
        mixed, captions = [], []
        for i in range(n):
            pair = x[[i, (i + 1) % n]]
            # alpha 1 as in the presets; a generator per column so every column shows another draw
            out, soft = method(pair, torch.eye(2), torch.Generator().manual_seed(seed * 1000 + i), 1.0, perm=swap)
            mixed.append(out[0])
            captions.append(f"{soft[0, 0]:.2f}/{soft[0, 1]:.2f}")
        rows.append((name, (torch.stack(mixed) * 255).round().clamp(0, 255).to(torch.uint8), captions))
    return rows


def augmentation_gallery(images: torch.Tensor, seed: int = 0, synthetic: bool = False, title: str | None = None):
    """A grid: one row per augmentation, one column per image (uint8 (N, 3, 32, 32)). Mixup/CutMix
    captions give the target weights of the image and its partner (they sum to 1)."""
    import matplotlib.pyplot as plt

    rows = augmentation_rows(images, seed)
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.2, 1.3 * len(rows)), squeeze=False)
    for r, (name, batch, captions) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if captions[c]:
                ax.set_title(captions[c], fontsize=7, pad=2)
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title or (zh("数据增强的效果", "Augmentations") + (" (SYNTHETIC images)" if synthetic else "")),
                 fontsize=11)
    _stamp(fig, synthetic)
    fig.tight_layout()
    return fig


def ladder_curves(histories, order: list[str] | None = None, synthetic: bool = False):
    """Test loss and test accuracy per epoch, one line per preset (mean over seeds), from a long
    DataFrame as returned by cvlab.runs.load_runs."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter, ScalarFormatter

    names = list(dict.fromkeys(list(order or []) + list(histories["preset"])))
    names = [n for n in names if n in set(histories["preset"])]
    mean = histories.groupby(["preset", "epoch"], sort=False)[["test_loss", "test_acc"]].mean().reset_index()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("viridis", max(2, len(names)))
    for i, name in enumerate(names):
        rows = mean[mean["preset"] == name]
        ax_loss.plot(rows["epoch"], rows["test_loss"], marker=".", color=cmap(i), label=name)
        ax_acc.plot(rows["epoch"], 100 * rows["test_acc"], marker=".", color=cmap(i), label=name)
    # A log axis only where the losses span more than a decade (an early epoch with unsettled BN statistics
    # can be 100x the rest); plain decimals either way ("4.62", not "4.618x10^0"), no offset notation.
    losses = mean["test_loss"][mean["test_loss"] > 0]
    log_axis = len(losses) > 0 and losses.max() / losses.min() > 10
    ax_loss.set(xlabel="epoch", title=zh("测试损失", "test loss"),
                ylabel=zh("测试损失（对数坐标）", "test loss (log scale)") if log_axis else zh("测试损失", "test loss"))
    if log_axis:
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax_loss.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax_acc.set(xlabel="epoch", ylabel=zh("测试 top-1 (%)", "test top-1 (%)"), title=zh("测试准确率", "test accuracy"))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, also for a 2-epoch budget
    ax_acc.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _stamp(fig, synthetic)
    fig.tight_layout()
    return fig


def gains_bar(table, synthetic: bool = False, title: str = ""):
    """Horizontal bars: the test top-1 gain (percentage points) of each preset over the row it is compared to
    (mean over seeds; the table's seeds column says how many)."""
    import matplotlib.pyplot as plt

    rows = table[table["compared_to"] != ""]
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(rows) + 1.2))
    gains = 100 * rows["gain"]
    colours = ["tab:green" if g > 0 else "tab:red" for g in gains]
    labels = [f"{p}  (vs {c})" for p, c in zip(rows["preset"], rows["compared_to"])]
    ax.barh(labels, gains, color=colours)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(zh("测试 top-1 的增益（百分点）", "gain in test top-1 (percentage points)"))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _stamp(fig, synthetic)
    fig.tight_layout()
    return fig


def superclass_bars(frame, synthetic: bool = False, title: str = ""):
    """Fine-class and superclass accuracy per superclass (from cvlab.analysis.per_superclass_accuracy)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.3 * len(frame) + 1.2))
    y = range(len(frame))
    ax.barh([i + 0.2 for i in y], 100 * frame["superclass_acc"], height=0.4, label=zh("超类正确", "superclass correct"))
    ax.barh([i - 0.2 for i in y], 100 * frame["fine_acc"], height=0.4, label=zh("细类正确", "fine class correct"))
    ax.set_yticks(list(y), frame["superclass"], fontsize=8)
    ax.set_xlabel(zh("准确率 (%)", "accuracy (%)"))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    _stamp(fig, synthetic)
    fig.tight_layout()
    return fig


def evidence_figure(table, runs, histories, title: str = ""):
    """The measured ladder in one figure. Left: each rung's final test top-1 (each seed a dot, the mean a bar
    with its seed band, +-1 std, where a rung has several seeds). Right: the test-loss curves of the first and
    last rung (mean over seeds, the band from the lowest to the highest seed). From ablate.ladder_table's
    (table, runs) and load_runs' histories."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(table["preset"])
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 0.3 * len(names) + 2.2),
                                          gridspec_kw={"width_ratios": [1.5, 1]})
    means = 100 * table["test_acc"]
    stds = 100 * table["test_acc_std"].fillna(0)
    ax_acc.barh(names, means, xerr=stds, color="tab:blue", alpha=0.35, error_kw={"capsize": 3})
    for i, name in enumerate(names):
        seeds = runs[runs["preset"] == name]["test_acc"]
        ax_acc.plot(100 * seeds, [i] * len(seeds), "k.", markersize=4)
    ax_acc.invert_yaxis()
    ax_acc.set_xlabel(zh("最后一个 epoch 的测试 top-1 (%)；点 = 各种子，误差线 = ±1 标准差",
                         "final test top-1 (%); dots = seeds, bars = +-1 std"))
    ax_acc.grid(axis="x", alpha=0.3)
    ends = [names[0], names[-1]]
    colours = {names[0]: "tab:gray", names[-1]: "tab:green"}
    for name in ends:
        rows = histories[histories["preset"] == name].groupby("epoch")["test_loss"]
        epochs = list(rows.mean().index)
        ax_loss.plot(epochs, rows.mean(), marker=".", color=colours[name], label=name)
        ax_loss.fill_between(epochs, rows.min(), rows.max(), color=colours[name], alpha=0.2)
    ax_loss.set(xlabel="epoch", ylabel=zh("测试损失", "test loss"),
                title=zh("首尾两级的测试损失（阴影 = 各种子的范围）", "test loss of the first and last rung"))
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _stamp(fig, bool(runs["synthetic"].any()))
    fig.tight_layout()
    return fig
