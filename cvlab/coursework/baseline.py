"""Helpers for notebook 01 (the handout's baseline): evidence about what the handout's code
gets wrong, and a discussion of a run's curves computed from its history.

Each function measures something and returns a table or a dict; the notebook narrates.
"""
from __future__ import annotations

import io
import math
import pickle
import time
from typing import Any

import torch
from torch import nn

from ..core.data import HANDOUT_MEAN, HANDOUT_STD, CIFAR100_MEAN, CIFAR100_STD, Split, channel_stats
from ..core.loader import TensorLoader
from ..core.models import HandoutBasicBlock, build_model
from ..core.paths import REPO_ROOT
from ..core.runs import Run
from ..experiments.handout import LambdaShortcutBlock

CHANNELS = ("R", "G", "B")


# ---------------------------------------------------------------------------- normalization

def normalization_table(images: torch.Tensor):
    """Per-channel mean/std of uint8 images (0..1 scale), and what each normalization makes of them.

    A good normalization gives mean ~0 and std ~1 in every channel.
    """
    import pandas as pd

    stats = channel_stats(images)
    rows = []
    for c, (mean, std) in enumerate(stats):
        hm, hs = HANDOUT_MEAN[0], HANDOUT_STD[0]
        cm, cs = CIFAR100_MEAN[c], CIFAR100_STD[c]
        rows.append({
            "channel": CHANNELS[c], "data_mean": mean, "data_std": std,
            "handout_mean_std": f"{hm} / {hs}",
            "after_handout_mean": round((mean - hm) / hs, 3), "after_handout_std": round(std / hs, 3),
            "after_cifar100_mean": round((mean - cm) / cs, 3), "after_cifar100_std": round(std / cs, 3),
        })
    return pd.DataFrame(rows).set_index("channel")


def stem_sensitivity(model: nn.Sequential, images: torch.Tensor, batch: int = 256):
    """How much the output of the stem's BatchNorm (first conv + BN, training mode) changes when the
    handout's constants are replaced: relative L2 difference, same weights, same images.

    The unpadded first conv is linear and BN removes any per-channel shift and scale, so a
    normalization that is one affine map for all channels is absorbed almost completely.
    """
    import pandas as pd
    from ..core.loader import normalize_constants

    stem = nn.Sequential(model[0], model[1]).train()
    x = images[:batch].float().div(255.0)
    cpu = torch.device("cpu")
    with torch.no_grad():
        reference = stem((x - normalize_constants("handout", cpu)[0]) / normalize_constants("handout", cpu)[1])
        rows = []
        for name, (mean, std) in {"none (ToTensor only)": (torch.zeros(1), torch.ones(1)),
                                  "cifar100 (per-channel)": normalize_constants("cifar100", cpu)}.items():
            out = stem((x - mean) / std)
            rows.append({"normalization instead of the handout's": name,
                         "relative change after first BN": round(float((out - reference).norm() / reference.norm()), 4)})
    return pd.DataFrame(rows).set_index("normalization instead of the handout's")


# ---------------------------------------------------------------------------- shuffling

def first_batch_labels(split: Split, batch_size: int, shuffle: bool, epochs: int = 2, seed: int = 0,
                       show: int = 12):
    """The first labels of the first batch in each epoch, as cvlab's loader serves them."""
    import pandas as pd

    loader = TensorLoader(split, batch_size, torch.device("cpu"), "cifar100", shuffle=shuffle, seed=seed)
    rows = []
    for epoch in range(1, epochs + 1):
        _, y = next(iter(loader))
        rows.append({"shuffle": shuffle, "epoch": epoch,
                     f"first {min(show, len(y))} labels": " ".join(str(int(v)) for v in y[:show]),
                     "distinct classes in batch": int(torch.unique(y).numel()), "batch size": int(len(y))})
    return pd.DataFrame(rows)


def same_first_batch(split: Split, batch_size: int, shuffle: bool, seed: int = 0) -> bool:
    """Whether epochs 1 and 2 start with exactly the same batch (labels and order)."""
    loader = TensorLoader(split, batch_size, torch.device("cpu"), "cifar100", shuffle=shuffle, seed=seed)
    first = next(iter(loader))[1]
    second = next(iter(loader))[1]
    return bool(torch.equal(first, second))


# ---------------------------------------------------------------------------- model.cuda() every step

def to_device_seconds(model: nn.Module, device: torch.device, repeats: int = 50) -> float:
    """Seconds per `model.to(device)` call on a model already there: what the handout's
    per-step `model.cuda()` costs (it walks every parameter and buffer each time)."""
    model.to(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model.to(device)
    return (time.perf_counter() - start) / repeats


def tensor_count(model: nn.Module) -> int:
    """Parameters and buffers that `.to()` visits."""
    return sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())


def pickle_check(obj: Any) -> dict:
    """Try `pickle.dumps` and `torch.save` of a whole object; report the outcome of each."""
    out = {}
    for name, dump in (("pickle.dumps", pickle.dumps), ("torch.save", lambda o: torch.save(o, io.BytesIO()))):
        try:
            result = dump(obj)
            size = len(result) if isinstance(result, bytes) else None
            out[name] = "ok" + (f" ({size:,} bytes)" if size else "")
        except Exception as exc:  # what a user would see: the exception type and message
            out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return out


def pickle_table():
    """Whole-model pickling: the handout's lambda block versus cvlab's blocks and model."""
    import pandas as pd

    candidates = {
        "handout block (lambda x: x)": LambdaShortcutBlock(64, 64),
        "cvlab HandoutBasicBlock (nn.Identity)": HandoutBasicBlock(64, 64),
        "cvlab handout_resnet18 (whole model)": build_model("handout_resnet18"),
    }
    return pd.DataFrame([{"object": k, **pickle_check(v)} for k, v in candidates.items()]).set_index("object")


# ---------------------------------------------------------------------------- shape walk

def shape_walk_table(model: nn.Sequential, input_shape: tuple[int, ...] = (1, 3, 32, 32)):
    """One row per top-level layer: its type, output shape and parameter count."""
    import pandas as pd
    from ..core.models import shape_walk

    rows = []
    for i, ((name, shape), layer) in enumerate(zip(shape_walk(model, input_shape), model)):
        rows.append({"layer": i, "type": name, "output shape": "x".join(str(s) for s in shape),
                     "parameters": sum(p.numel() for p in layer.parameters())})
    return pd.DataFrame(rows).set_index("layer")


def spatial_sizes(model: nn.Sequential, input_size: int = 32) -> list[int]:
    """Input size, then the spatial size after each layer that still has one (the 32 -> 30 -> 15 ... walk)."""
    from ..core.models import shape_walk

    sizes = [input_size]
    for _, shape in shape_walk(model, (1, 3, input_size, input_size)):
        if len(shape) == 4 and shape[-1] != sizes[-1]:
            sizes.append(shape[-1])
    return sizes


# ---------------------------------------------------------------------------- BN statistics

def bn_mode_check(run_dir, split: Split, n: int = 1000, batch_size: int = 500) -> dict:
    """The run's final model on its first `n` training images, BatchNorm in train mode (batch
    statistics, as during training) and in eval mode (running averages, as at test time).

    A model that fits these images in train mode but not in eval mode has running statistics that
    have not caught up (few steps, BN momentum 0.1): its test numbers then understate what it learned.
    """
    import torch.nn.functional as F
    from ..experiments.analysis import load_trained_model

    trained = load_trained_model(run_dir, "cpu", "raw")  # the trained weights themselves, not an EMA
    model = trained.model
    part = split.take(torch.arange(min(n, len(split))))
    loader = TensorLoader(part, batch_size, torch.device("cpu"), trained.config.normalization)
    out = {"images": len(part)}
    for mode in ("train", "eval"):
        model.train(mode == "train")  # train mode also updates the running stats: this is a throwaway copy
        loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = model(x)
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
        out[f"{mode}_mode_acc"], out[f"{mode}_mode_loss"] = correct / len(part), loss / len(part)
    return out


# ---------------------------------------------------------------------------- discussion

TURN_UP_TOLERANCE = 0.01  # a rise of the test loss under 1% of its minimum counts as flat


def curve_summary(history) -> dict:
    """Facts about a run's curves (from summary.summarize_history): where the test loss is lowest, whether it
    turned up, the train/test gap."""
    from ..core.summary import summarize_history

    s = summarize_history(history.to_dict("records"))
    first, last = s["first"], s["final"]
    at_min = history.loc[history.epoch == s["min_test_loss_epoch"]].iloc[0]
    after = history.loc[history.epoch >= s["min_test_loss_epoch"]]
    after_min = after.loc[after.test_acc.idxmin()]
    return {
        "epochs": s["epochs"],
        "first_train_loss": float(first["train_loss"]), "final_train_loss": float(last["train_loss"]),
        "first_test_loss": float(first["test_loss"]), "final_test_loss": float(last["test_loss"]),
        "min_test_loss": float(s["min_test_loss"]), "min_test_loss_epoch": int(s["min_test_loss_epoch"]),
        "test_loss_rise": float(last["test_loss"] - s["min_test_loss"]),
        # "turned up": the last test loss is more than TURN_UP_TOLERANCE (relative) above its minimum
        "turned_up": bool(last["test_loss"] > s["min_test_loss"] * (1 + TURN_UP_TOLERANCE)),
        "final_train_acc": float(last["train_acc"]), "final_test_acc": float(last["test_acc"]),
        "acc_gap": float(last["train_acc"] - last["test_acc"]),
        "loss_gap": float(last["test_loss"] - last["train_loss"]),
        "best_test_acc": float(s["best_test_acc"]), "best_test_acc_epoch": int(s["best_test_acc_epoch"]),
        "final_epoch": int(last["epoch"]),
        # the test accuracy where the test loss is lowest, and its lowest value after that epoch: a test loss that
        # rises while the accuracy holds is over-confidence, not worse classification
        "test_acc_at_min_loss": float(at_min["test_acc"]),
        "min_test_acc_after": float(after["test_acc"].min()), "min_test_acc_after_epoch": int(after_min["epoch"]),
    }


def device_zh(device: str) -> str:
    """A run's device string said in Chinese: 'cpu (x86_64, 1 threads)' -> 'CPU（x86_64，1 个线程）';
    anything else (a GPU's name) unchanged."""
    import re

    match = re.fullmatch(r"cpu \((.+), (\d+) threads?\)", str(device))
    return f"CPU（{match.group(1)}，{match.group(2)} 个线程）" if match else str(device)


def test_trend_zh(s: dict) -> str:
    """What a run's test curves say about overfitting (`s`: curve_summary), test loss and test accuracy read
    separately: a test loss that rises while the test accuracy does not fall is over-confidence on the images
    it gets wrong, which is overfitting by the loss but not by the accuracy."""
    lowest, e_min, last = s["min_test_loss"], s["min_test_loss_epoch"], s["final_epoch"]
    if s["epochs"] < 2:
        return "只有 1 个 epoch，看不出测试损失的走势，也无从判断过拟合（overfitting）"
    if not s["turned_up"]:
        if e_min == last:
            return (f"测试损失在最后一个 epoch（第 {last} 个）仍是最低（{lowest:.3f}），还没有回升；"
                    "要看到过拟合的拐点需要训练更多 epoch")
        return (f"测试损失在第 {e_min} 个 epoch 最低（{lowest:.3f}），之后基本持平（最后一个 epoch 只高 "
                f"{s['test_loss_rise']:.3f}，不到 1%），还不能判断是否开始过拟合")
    rise = (f"测试损失在第 {e_min} 个 epoch 最低（{lowest:.3f}），到第 {last} 个 epoch 回升到 {s['final_test_loss']:.3f}"
            f"（升高 {s['test_loss_rise']:.3f}）")
    then, now = s["test_acc_at_min_loss"], s["final_test_acc"]
    if now < then:
        return (rise + f"；测试准确率也从第 {e_min} 个 epoch 的 {then:.2%} 降到 {now:.2%}：模型在训练集上继续变好、"
                "在测试集上变差，按损失和按准确率看都是过拟合（overfitting）")
    dip = (f"（中间在第 {s['min_test_acc_after_epoch']} 个 epoch 一度降到 {s['min_test_acc_after']:.2%}）"
           if s["min_test_acc_after"] < then - 0.01 else "")
    best = "，也是本次运行的最高值" if s["best_test_acc_epoch"] == last else ""
    return (rise + f"。但测试准确率没有变差：第 {last} 个 epoch 的 {now:.2%} 不低于测试损失最低的第 {e_min} 个 epoch 的 "
            f"{then:.2%}{best}{dip}。升高的是损失而不是错误率：交叉熵看的是模型给正确类别的概率，模型对分错的测试图给出越来越"
            "自信的错误预测（过度自信，over-confidence）时，即使准确率不变，损失也会上升。所以按测试损失看过拟合（overfitting）"
            "已经开始，按测试准确率看到这个 epoch 为止还没有")


def describe_run_zh(run: Run) -> str:
    """One Chinese line with what a number needs beside it: config, data, device, seeds, time."""
    c, m = run.config, run.metrics
    ds = m.get("dataset", {})
    data = "合成数据（SYNTHETIC，不是 CIFAR-100）" if run.synthetic else "真实 CIFAR-100"
    subset = "（类别均衡子集）" if ds.get("subset") else "（全部）"
    shuffle = "每个 epoch 打乱" if c.get("shuffle") else "不打乱"
    norm = "MNIST 的归一化常数" if c.get("normalization") == "handout" else "CIFAR-100 逐通道归一化"
    ips = m.get("mean_images_per_second")
    speed = f"，平均 {ips:,.0f} 张/秒（训练）" if ips else ""
    return (f"预设 `{c.get('preset')}`（模型 `{c.get('model')}`，{c.get('optimizer')}，lr {c.get('lr')}，"
            f"批量大小 {c.get('batch_size')}，{shuffle}，{norm}）；数据：{data}，训练 {ds.get('n_train', 0):,} 张"
            f"{subset} / 测试 {ds.get('n_test', 0):,} 张；设备：{device_zh(m.get('device', '?'))}，精度 {m.get('precision', '?')}；"
            f"1 个种子（seed {c.get('seed')}）；完成 {m.get('epochs_done', len(run.history))}/{c.get('epochs')} 个 epoch，"
            f"用时 {m.get('total_seconds', 0):,.0f} 秒{speed}。")


def discussion_zh(run: Run, bn: dict | None = None) -> str:
    """A short Chinese Markdown discussion of the run's curves; every number comes from its history
    (and from `bn_mode_check` when given)."""
    s = curve_summary(run.history)
    lines = []
    if run.synthetic:
        lines.append("**注意：以下数字来自合成数据（SYNTHETIC），只用于检查流程，不代表 CIFAR-100 上的结果。**\n")
    lines.append(f"- 本次运行：{describe_run_zh(run)}")
    lines.append(f"- 训练损失（train loss）从第 1 个 epoch 的 {s['first_train_loss']:.3f} "
                 f"变为第 {s['final_epoch']} 个 epoch 的 {s['final_train_loss']:.3f}；"
                 f"测试损失（test loss）从 {s['first_test_loss']:.3f} 变为 {s['final_test_loss']:.3f}。")
    lines.append(f"- {test_trend_zh(s)}。")
    gap_pp = 100 * s["acc_gap"]
    size = "已经明显" if gap_pp >= 10 else "还不大"
    lines.append(f"- 最后一个 epoch：训练准确率 {s['final_train_acc']:.1%}，测试准确率 {s['final_test_acc']:.1%}，"
                 f"差距 {gap_pp:.1f} 个百分点（{size}）；测试损失比训练损失"
                 f"{'高' if s['loss_gap'] >= 0 else '低'} {abs(s['loss_gap']):.3f}。")
    chance = math.log(run.config.get("num_classes", 100))
    if abs(s["final_test_loss"] - chance) < 0.02 * chance:
        lines.append(f"- 最后的测试损失 {s['final_test_loss']:.3f} 与 ln({run.config.get('num_classes', 100)}) = {chance:.3f} "
                     "相差不到 2%，也就是对所有类别均匀猜测时的损失：评估模式下的模型在测试集上几乎等于瞎猜。")
    if bn is not None:
        steps = s["epochs"] * -(-int(run.metrics.get("dataset", {}).get("n_train", 0)) // int(run.config.get("batch_size", 1)))
        lines.append(f"- 用最终模型在前 {bn['images']:,} 张训练图像上检查 BN：训练模式（batch 统计量）准确率 "
                     f"{bn['train_mode_acc']:.1%}，评估模式（滑动平均的 running 统计量，测试时用的就是它）{bn['eval_mode_acc']:.1%}。")
        if bn["train_mode_acc"] - bn["eval_mode_acc"] >= 0.10:
            lines.append(f"  评估模式下连训练图像都分不好，说明本次训练/测试的差距主要来自 BN 的 running 统计量还没跟上"
                         f"（一共只训练了 {steps} 步，BN 的动量为 0.1），而不只是过拟合（步数更多时这部分差距应当缩小，本次运行没有测量）。")
        else:
            lines.append("  两种模式相差不到 10 个百分点，训练/测试的差距主要反映的是泛化差距（过拟合）。")
    lines.append(f"- 测试准确率最高 {s['best_test_acc']:.1%}（第 {s['best_test_acc_epoch']} 个 epoch）。"
                 "按测试集挑选 epoch 会高估泛化能力，此数只作参考，报告以最后一个 epoch 为准。")
    lines.append("- 读图提示：训练损失是 epoch 内各 batch 的平均（模型边训练边变化、BN 处于训练模式），"
                 "测试损失是在 epoch 结束时用评估模式（eval mode）算的，两者的差距因此不完全是过拟合。")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the committed CPU run

# The handout preset on the full CIFAR-100, trained on a CPU for as many epochs as a background run allowed;
# its config.json, history.csv and metrics.json are committed here, so the answers can show the handout
# network's own behaviour. How many of the 100 epochs it holds is read from the files, never typed in.
HANDOUT_CPU_RUN = REPO_ROOT / "docs" / "results" / "handout-cpu-full"


def cpu_run_label_zh(run: Run) -> str:
    """'在 CPU 上训练了 100 个 epoch 中的前 N 个', N and 100 from the run's own files."""
    planned = run.metrics.get("epochs_planned") or run.config.get("epochs")
    return f"在 CPU 上训练了 {planned} 个 epoch 中的前 {len(run.history)} 个"


# RunDir.status() in Chinese: metrics.json's own word, except that a run which says "running" while no live
# process holds its lock was stopped ("interrupted")
STATUS_ZH = {"complete": "已完成（complete）", "interrupted": "中途停止（interrupted）", "running": "正在运行（running）",
             "diverged": "发散后停止（diverged）", "started": "第 1 个 epoch 结束前停止（started）", "new": "没有运行（new）"}


def run_status_zh(path) -> str:
    """The status of a run directory as RunDir.status() reads it (not metrics.json's word alone), in Chinese."""
    from ..core.runs import RunDir

    status = RunDir(path).status()
    return STATUS_ZH.get(status, status)


def reference_run_zh(path=HANDOUT_CPU_RUN) -> str:
    """What to expect from the handout's settings: the committed CPU run's curves discussed in Chinese
    (discussion_zh), labelled with how many of its epochs it holds; one line when it is not there."""
    from ..core.errors import RunDirError
    from ..core.runs import load_run

    try:
        run = load_run(path)
    except RunDirError:
        return f"（没有找到提交的参照运行 `{path}`。）"
    return (f"**参照：讲义的设置在完整 CIFAR-100 上的一次运行**（`docs/results/{run.path.name}`，"
            f"{cpu_run_label_zh(run)}，状态：{run_status_zh(run.path)}）\n\n" + discussion_zh(run))
