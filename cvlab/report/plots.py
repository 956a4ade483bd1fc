"""Figures from run directories and data splits (matplotlib), never from hand-typed numbers.

    run = cvlab.runs.load_run("runs/01_baseline")
    save_figure(loss_curves(run), "figures/01_baseline_loss.png")

Every figure made from synthetic data carries a SYNTHETIC stamp on its face. Titles and labels are
Chinese when matplotlib finds a CJK font (cjk_font), else English, said once (CJK_HINT). A font needs no root:
every font file in $CVLAB_FONTS, ~/.local/share/fonts, ~/.fonts or the repository's fonts/ folder, and the
fonts of the PyPI package mplfonts (Noto Sans CJK SC) when it is installed, are registered with matplotlib
(font_dirs, register_fonts). save_figure enlarges the text of a figure wider than an A4 page so it prints legibly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..core.paths import REPO_ROOT
from ..core.runs import Run, load_run

COLORS = {"train": "#1f77b4", "test": "#d62728", "top5": "#9467bd"}
# Fonts with Chinese glyphs, in order of preference (Linux, Windows, macOS).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
             "Microsoft YaHei", "SimHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")
CJK_FILES = ("notosanscjk", "sourcehansans", "wqy-", "msyh", "simhei", "pingfang", "stheiti")
PRINT_WIDTH_IN = 7.3    # A4 width less the report's margins, inches
MIN_PRINTED_PT = 7.5    # smallest text size on the printed page, points
MIN_LEGEND_PT = 6.0     # legends: a little smaller, they sit on the curves
_cjk: list[str | None] = []  # the font found, once looked up


FONTS_ENV = "CVLAB_FONTS"          # folders (os.pathsep-separated) whose font files matplotlib should know
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
CJK_HINT = ("figures in English: matplotlib finds no Chinese font; for Chinese (no root needed) pip install mplfonts, "
            f"or put a .ttf/.otf/.ttc with Chinese glyphs into {REPO_ROOT / 'fonts'} (or a folder named by ${FONTS_ENV})")


def font_dirs() -> list[Path]:
    """Folders whose font files cvlab registers with matplotlib: $CVLAB_FONTS, the user's own font folders
    (fontconfig reads them too), the repository's fonts/ (git-ignored; under the checkout, so it survives a
    ModelArts restart), and the fonts folder of the PyPI package mplfonts when it is installed."""
    import importlib.util

    listed = [Path(d).expanduser() for d in os.environ.get(FONTS_ENV, "").split(os.pathsep) if d.strip()]
    home = Path.home()
    dirs = [*listed, home / ".local" / "share" / "fonts", home / ".fonts", REPO_ROOT / "fonts"]
    spec = importlib.util.find_spec("mplfonts")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(loc) / "fonts" for loc in spec.submodule_search_locations]
    return dirs


def register_fonts(dirs: Sequence[Path]) -> list[Path]:
    """Add every font file under `dirs` (searched recursively) to matplotlib's font list; the files added.
    A file matplotlib cannot read is skipped: a broken font never stops a figure."""
    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    added = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in FONT_SUFFIXES or str(path) in known or not path.is_file():
                continue
            try:
                font_manager.fontManager.addfont(str(path))
            except (OSError, RuntimeError, ValueError):
                continue
            known.add(str(path))
            added.append(path)
    return added


ZH_SAMPLE = "训练测试损失准确率"  # characters every figure title needs


def covers_chinese(path: Path) -> bool:
    """Whether the font file has glyphs for ZH_SAMPLE (its character map, read by matplotlib's FreeType)."""
    from matplotlib.ft2font import FT2Font

    try:
        charmap = FT2Font(str(path)).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return False
    return all(ord(ch) in charmap for ch in ZH_SAMPLE)


def chinese_family(paths: Sequence[Path]) -> str | None:
    """The family name of the first font file in `paths` with Chinese glyphs (any name: a user's own font)."""
    from matplotlib.font_manager import FontProperties

    return next((FontProperties(fname=str(p)).get_name() for p in paths if covers_chinese(p)), None)


def cjk_font(say: Callable[[str], None] = print) -> str | None:
    """The first CJK font matplotlib can use, put first in font.sans-serif; None when there is none, said once
    through `say` (CJK_HINT, in Chinese). Looks in font_dirs() first, then in the system's fonts (also those
    installed after matplotlib built its font cache, found by file name)."""
    if _cjk:
        return _cjk[0]
    from matplotlib import font_manager, rcParams

    def known() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in CJK_FONTS if n in names), None)

    found = known()
    if found is None:  # a font the user added without root: known by name, else any with Chinese glyphs
        added = register_fonts(font_dirs())
        found = known() or chinese_family(added)
    if found is None:
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower() for key in CJK_FILES):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        found = known()
    if found:
        rcParams["font.sans-serif"] = [found, *[f for f in rcParams["font.sans-serif"] if f != found]]
        rcParams["axes.unicode_minus"] = False  # not every CJK font has U+2212
    else:
        say("注意：matplotlib 没有找到中文字体，图中的文字用英文。无需 root：pip install mplfonts，"
            f"或把含中文字形的 .ttf/.otf/.ttc 放进 {REPO_ROOT / 'fonts'}（或 ${FONTS_ENV} 指向的文件夹），然后重启内核")
    _cjk.append(found)
    return found


def zh(chinese: str, english: str) -> str:
    """`chinese` where a CJK font is available to matplotlib, else `english`."""
    return chinese if cjk_font() else english


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def stamp_synthetic(fig: Figure, note: str = "") -> None:
    """Write SYNTHETIC across the figure so it cannot be mistaken for a CIFAR-100 result; `note` (e.g.
    which panels) goes in red above the figure. Every figure helper in cvlab stamps with this one."""
    fig.text(0.5, 0.5, "SYNTHETIC", transform=fig.transFigure, rotation=25, fontsize=64, color="red",
             alpha=0.18, ha="center", va="center", weight="bold", zorder=100)
    if note:
        fig.text(0.5, 1.0, note, transform=fig.transFigure, ha="center", va="bottom", color="crimson",
                 fontsize=12, weight="bold")


def run_caption(run: Run) -> str:
    """One line under a figure: data (real/synthetic, sizes), device, seed, epochs."""
    ds = run.metrics.get("dataset", {})
    data = "SYNTHETIC data" if run.synthetic else "CIFAR-100"
    sizes = f"{ds.get('n_train', '?'):,} train / {ds.get('n_test', '?'):,} test" if ds else "sizes unknown"
    device = run.metrics.get("device_type") or run.config.get("device", "?")
    epochs = f"{len(run.history)}/{run.config.get('epochs', '?')} epochs"
    return (f"{run.config.get('preset', '?')} ({run.config.get('model', '?')}), {data}: {sizes}, "
            f"batch {run.config.get('batch_size', '?')}, {epochs}, {device}, seed {run.config.get('seed', '?')}")


def _finish(fig: Figure, run: Run, title: str) -> Figure:
    fig.suptitle(title + ("  [SYNTHETIC]" if run.synthetic else ""), fontsize=12)
    fig.text(0.5, 0.01, run_caption(run), ha="center", va="bottom", fontsize=8, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if run.synthetic:
        stamp_synthetic(fig)
    return fig


def loss_curves(run: Run | str | Path) -> Figure:
    """Train and test loss per epoch (the handout's deliverable), the lowest test loss marked."""
    run = _as_run(run)
    h = run.history.sort_values("epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(h["epoch"], h["train_loss"], "o-", color=COLORS["train"], ms=4, label=zh("训练损失（epoch 平均）", "train loss (epoch mean)"))
    ax.plot(h["epoch"], h["test_loss"], "s-", color=COLORS["test"], ms=4, label=zh("测试损失（epoch 结束时）", "test loss (end of epoch)"))
    low = run.summary()
    ax.axvline(low["min_test_loss_epoch"], color="0.5", ls="--", lw=1,
               label=zh(f"测试损失最低 {low['min_test_loss']:.3f}（第 {int(low['min_test_loss_epoch'])} 个 epoch）",
                        f"lowest test loss {low['min_test_loss']:.3f} (epoch {int(low['min_test_loss_epoch'])})"))
    _epoch_axes(ax, h["epoch"], zh("交叉熵损失", "cross-entropy loss"))
    return _finish(fig, run, zh("训练损失与测试损失随 epoch 的变化", "Train and test loss per epoch"))


def accuracy_curves(run: Run | str | Path) -> Figure:
    """Train and test top-1 accuracy per epoch (percent), test top-5 dashed."""
    run = _as_run(run)
    h = run.history.sort_values("epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(h["epoch"], 100 * h["train_acc"], "o-", color=COLORS["train"], ms=4, label=zh("训练 top-1", "train top-1"))
    ax.plot(h["epoch"], 100 * h["test_acc"], "s-", color=COLORS["test"], ms=4, label=zh("测试 top-1", "test top-1"))
    ax.plot(h["epoch"], 100 * h["test_top5"], "^--", color=COLORS["top5"], ms=4, label=zh("测试 top-5", "test top-5"))
    _epoch_axes(ax, h["epoch"], zh("准确率 (%)", "accuracy (%)"))
    return _finish(fig, run, zh("训练与测试准确率随 epoch 的变化", "Train and test accuracy per epoch"))


def _epoch_axes(ax, epochs, ylabel: str) -> None:
    """Labels, grid and legend of a per-epoch plot, with integer epoch ticks."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _integer_epochs(ax, epochs)


def _integer_epochs(ax, epochs) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:
        e = float(epochs.iloc[0])
        ax.set_xlim(e - 1, e + 1)


def sample_grid(images, labels, names: Sequence[str], synthetic: bool, columns: int = 8,
                title: str | None = None) -> Figure:
    """A grid of uint8 images (N, 3, 32, 32) with their class names."""
    title = title or zh("训练图像", "Training images")
    n = len(labels)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_title(names[int(labels[i])], fontsize=8)
    fig.suptitle(title + ("  [SYNTHETIC]" if synthetic else ""), fontsize=11)
    fig.tight_layout()
    if synthetic:
        stamp_synthetic(fig)
    return fig


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # formats save_figure writes (matplotlib's savefig)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save as PNG (folders created) and close the figure, so notebooks show the saved file once. The file is
    rendered in memory and written atomically: a full disk leaves no empty or partial image behind."""
    import io

    from ..core.runs import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    legible_in_print(fig)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def legible_in_print(fig: Figure) -> None:
    """Enlarge the text of a figure wider than an A4 page (it is shrunk to the page width when printed) so
    that no text prints smaller than MIN_PRINTED_PT (at most 2.2x its size): titles, labels, notes, tick labels
    and figure-level legends; a legend inside a panel may print at MIN_LEGEND_PT and gets an opaque frame."""
    from matplotlib.text import Text

    scale = fig.get_figwidth() / PRINT_WIDTH_IN
    if scale <= 1.05:
        return
    ticks = _size_tick_labels(fig, scale)
    panel_legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    legend_texts = {id(t) for legend in panel_legends for t in legend.get_texts()}
    for text in fig.findobj(Text):  # figure-level legends are found here too: below the panels, sized as text
        size = text.get_fontsize()
        smallest = MIN_LEGEND_PT if id(text) in legend_texts else MIN_PRINTED_PT  # legends sit on the curves
        if text.get_text() and id(text) not in ticks and size / scale < smallest:
            text.set_fontsize(_legible_size(size, smallest, scale))
    for legend in panel_legends:  # a legend drawn over curves: an opaque box keeps both readable
        legend.get_frame().set_alpha(0.9)


def _legible_size(size: float, smallest: float, scale: float) -> float:
    """The size that prints at `smallest` once shrunk by `scale`, at most 2.2x `size`."""
    return min(smallest * scale, 2.2 * size)


def _size_tick_labels(fig: Figure, scale: float) -> set[int]:
    """Enlarge every axis's tick labels (major and minor) as legible_in_print enlarges text; the ids of the tick
    label Texts. Set on the axis, not on each label: a label has no text before the figure is drawn, and the
    ticks drawn later take the axis's size."""
    ticks = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for which in ("major", "minor"):
                labels = axis.get_ticklabels(minor=which == "minor")
                ticks.update(id(t) for t in labels)
                size = labels[0].get_fontsize() if labels else None
                if size is not None and size / scale < MIN_PRINTED_PT:
                    axis.set_tick_params(which=which, labelsize=_legible_size(size, MIN_PRINTED_PT, scale))
    return ticks


# ---------------------------------------------------------------------------- predictions

def prediction_grid(images, captions: Sequence[str], synthetic: bool, title: str,
                    wrong: Sequence[bool] | None = None, subtitles: Sequence[str] | None = None,
                    columns: int = 8) -> Figure:
    """uint8 images (each (3, H, W)) in a grid, each with its caption; a `wrong` image gets a red frame
    and a red caption (marked with an x, so the mark survives greyscale printing)."""
    n = len(captions)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    # constrained layout reserves each caption's height (two lines when wrong), so no caption overprints the
    # image above it (tight_layout let them overlap in print)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.45, rows * 2.0 + 0.5), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        bad = bool(wrong[i]) if wrong is not None else False
        ax.set_title(("x " if bad else "") + captions[i], fontsize=7, color="#c00000" if bad else "black")
        if subtitles is not None:
            ax.set_xlabel(subtitles[i], fontsize=6, color="0.35")
        for spine in ax.spines.values():
            spine.set_edgecolor("#c00000" if bad else "0.8")
            spine.set_linewidth(2.5 if bad else 0.5)
    fig.suptitle(title + ("  [SYNTHETIC]" if synthetic else ""), fontsize=11)
    if synthetic:
        stamp_synthetic(fig)
    return fig


def prediction_examples(pred, n: int = 32, columns: int = 8) -> Figure:
    """The first `n` images of the evaluated split (no picking) with predicted / true class; errors in red.

    `pred`: cvlab.experiments.analysis.Predictions with its images.
    """
    n = min(n, len(pred.fine))
    guess = pred.predicted[:n].tolist()
    truth = pred.fine[:n].tolist()
    captions = [f"{pred.fine_names[g]}\n" + zh(f"（真实：{pred.fine_names[t]}）", f"(true: {pred.fine_names[t]})")
                if g != t else pred.fine_names[g] for g, t in zip(guess, truth)]
    wrong = [g != t for g, t in zip(guess, truth)]
    split = zh({"test": "测试集", "val": "验证集"}.get(pred.split, pred.split), pred.split)
    title = zh(f"{split}前 {n} 张图像：预测类别，预测错误时括号内为真实类别（错 {sum(wrong)} 张；"
               f"{pred.run.name} 的 {pred.weights} 权重）",
               f"First {n} {pred.split} images: predicted class, true class when wrong "
               f"({sum(wrong)} of {n} wrong; {pred.weights} weights of {pred.run.name})")
    return prediction_grid(pred.images[:n], captions, pred.synthetic, title, wrong=wrong, columns=columns)


def superclass_confusion_heatmap(pred) -> Figure:
    """20x20 heatmap: share (%) of each true superclass's images whose predicted fine class lies in each
    superclass; the diagonal is superclass accuracy. `pred`: cvlab.experiments.analysis.Predictions."""
    from ..experiments.analysis import superclass_confusion

    counts = superclass_confusion(pred).double()
    share = 100 * counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    names = pred.coarse_names
    fig, ax = plt.subplots(figsize=(9.5, 8.2))
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=100)
    for i in range(len(names)):
        for j in range(len(names)):
            value = share[i, j].item()
            if value >= 5 or i == j:
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if value > 55 else "black")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel(zh("预测类别所属的超类", "superclass of the predicted class"))
    ax.set_ylabel(zh("真实超类", "true superclass"))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02,
                 label=zh("占该真实超类图像的百分比", "% of the true superclass's images"))
    total = int(counts.sum().item())
    accuracy = 100 * counts.diag().sum().item() / max(1, total)
    fig.suptitle(zh(f"超类混淆矩阵（{pred.split}，{total:,} 张图像，超类准确率 {accuracy:.1f}%；"
                    f"{pred.run.name} 的 {pred.weights} 权重）",
                    f"Superclass confusion ({pred.split}, {total:,} images, superclass accuracy {accuracy:.1f}%; "
                    f"{pred.weights} weights of {pred.run.name})") + ("  [SYNTHETIC]" if pred.synthetic else ""),
                 fontsize=10)
    fig.tight_layout()
    if pred.synthetic:
        stamp_synthetic(fig)
    return fig
