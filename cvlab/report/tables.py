"""Tables for the Chinese report, built from what the experiments recorded (never typed-in numbers)."""
from __future__ import annotations

import functools
import json
import math
import numbers
from pathlib import Path

from ..experiments import ablate

# The English column (and index) names of cvlab's tables, as the report shows them. One home for them, so a
# table shown in a notebook reads in Chinese without its producer (coursework, experiments) knowing about it.
COLUMNS_ZH = {
    # run histories (history.csv)
    "epoch": "epoch", "train_loss": "训练损失", "train_acc": "训练准确率", "test_loss": "测试损失",
    "test_acc": "测试准确率", "test_top5": "测试 top-5", "lr": "学习率", "epoch_seconds": "用时 (s)",
    "images_per_second": "图像/秒", "val_loss": "验证损失", "val_acc": "验证准确率",
    # notebook 01's evidence (coursework.baseline)
    "layer": "层", "type": "类型", "output shape": "输出形状", "parameters": "参数量",
    "channel": "通道", "data_mean": "数据均值", "data_std": "数据标准差", "handout_mean_std": "讲义的均值/标准差",
    "after_handout_mean": "讲义常数标准化后均值", "after_handout_std": "讲义常数标准化后标准差",
    "after_cifar100_mean": "CIFAR-100 常数标准化后均值", "after_cifar100_std": "CIFAR-100 常数标准化后标准差",
    "normalization instead of the handout's": "替换讲义常数的标准化",
    "relative change after first BN": "第一个 BN 输出的相对变化",
    "none (ToTensor only)": "不标准化（只有 ToTensor）", "cifar100 (per-channel)": "CIFAR-100 逐通道常数",
    "shuffle": "打乱", "distinct classes in batch": "batch 中的类别数", "batch size": "batch 大小",
    "object": "对象", "handout block (lambda x: x)": "讲义的残差块（lambda x: x）",
    "cvlab HandoutBasicBlock (nn.Identity)": "cvlab 的 HandoutBasicBlock（nn.Identity）",
    "cvlab handout_resnet18 (whole model)": "cvlab 的 handout_resnet18（整个模型）",
    "images": "图像数", "train_mode_acc": "训练模式准确率", "train_mode_loss": "训练模式损失",
    "eval_mode_acc": "评估模式准确率", "eval_mode_loss": "评估模式损失",
    # notebook 03 (config presets, analysis.confused_pairs)
    "preset": "预设", "parent": "上一级", "changes": "相对上一级改动的配置项",
    "true": "真实类别", "predicted": "预测类别", "count": "张数", "share_of_true": "占该真实类别的比例",
    "same_superclass": "同一超类",
    # notebook 02 (coursework.theory)
    "batch_size": "batch 大小", "measured_sq_error": "实测平方误差", "theory_sq_error": "理论平方误差",
    "mean_cosine_to_full": "与全量梯度的平均余弦", "measured_over_theory": "实测/理论",
    "steps_per_epoch": "每个 epoch 的步数", "steps_in_100_epochs": "100 个 epoch 的步数", "steps": "步数",
    "images_seen": "见过的图像数", "train_loss_last_quarter": "最后四分之一步的训练损失",
    "final_test_loss": "最终测试损失", "final_test_acc": "最终测试准确率", "final_train_loss": "最终训练损失",
    "final_train_acc": "最终训练准确率", "last_batch": "最后一批的图像数", "images_per_epoch": "每个 epoch 的图像数",
    "batchmates_kept": "同批图像保留比例", "no_shuffle": "不打乱", "setting": "设置", "loss_gap": "损失差距",
    "min_test_loss_epoch": "测试损失最低的 epoch", "network": "网络", "batchnorm": "BN", "init": "初始化",
    "first_layer": "第一层", "middle_layer": "中间层", "last_conv_layer": "最后一个卷积层", "model": "模型",
    "mean_loss_last_24_steps": "最后 24 步的平均损失", "initial_loss": "初始损失", "first_loss": "初始损失",
    "activation": "激活函数", "formula": "公式", "min_f": "f 的最小值", "max_f": "f 的最大值",
    "max f'": "f' 的最大值", "q_last": "最后一层的 q", "chi_last": "最后一层的 χ",
    "predicted_ratio": "预测的比值", "measured_ratio": "实测的比值", "surface": "曲面", "optimizer": "优化器",
    "best_lr": "最佳学习率", "interior": "在网格内部", "rates_tried": "试过的学习率个数",
}
# Words inside cvlab's table cells, by the column (or axis) that holds them: a word is translated only there, since
# the same word elsewhere means something else ("plain" is also a CIFAR-100 class in notebook 03's confusion table).
TERMS_ZH = {
    "network": {"plain": "普通网络", "residual": "残差网络"},
    "init": {"default": "默认", "he": "He 初始化"},
    "setting": {"none": "无", "augment (crop 4 + flip)": "数据增强（裁剪 4 + 翻转）", "weight decay 0.5": "权重衰减 0.5"},
    "model": {"plain, 8 layers": "普通网络，8 层", "plain, 32 layers": "普通网络，32 层",
              "residual, 32 layers": "残差网络，32 层"},
    "surface": {"quadratic, kappa=100": "二次函数，κ=100", "same, rotated 30 deg": "同上，旋转 30°"},
    "optimizer": {"SGD+momentum": "SGD+动量（momentum）", "Momentum": "动量（Momentum）"},
}
VALUES_ZH = {True: "是", False: "否"}
SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def number_zh(value) -> str:
    """A number as a report prints it: thousands separated, at most 4 decimals, never '1e-15' or 'inf'
    (a magnitude below 0.001 prints as 1.0×10⁻¹⁵, an infinity as ∞)."""
    if type(value).__name__ in ("bool", "bool_"):  # numpy's bool is no Python bool
        return VALUES_ZH[bool(value)]
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:  # a vanishing gradient of 3e-15 is the point of its table: not "0", not "3e-15"
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}×10{str(int(exponent)).translate(SUPERSCRIPTS)}"
    decimals = 0 if abs(value) >= 1000 else 2 if abs(value) >= 10 else 4
    return f"{value:,.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:,.0f}"


@functools.lru_cache(maxsize=None)
def _report_frame() -> type:
    """The DataFrame class `zh` returns: its notebook HTML leaves out a plain row-number index (0, 1, 2, ...), which
    in a printed report is the program's, not the table's; a named or meaningful index is kept. Made once, on first
    use (pandas is imported lazily here)."""
    import pandas as pd

    class ReportFrame(pd.DataFrame):
        @property
        def _constructor(self):
            return ReportFrame

        def _repr_html_(self):
            if self.index.name is None and self.index.equals(pd.RangeIndex(len(self))):
                return self.to_html(index=False, notebook=True)
            return super()._repr_html_()

    return ReportFrame


def zh(frame):
    """`frame` (a pandas DataFrame of cvlab's) with Chinese column, index and value names and report-style numbers;
    its notebook HTML leaves out a plain row-number index."""
    import pandas as pd

    out = frame.apply(lambda column: column.map(_terms(column.name)))
    out = out.rename(columns=_terms(frame.columns.name, COLUMNS_ZH), index=_terms(frame.index.name, COLUMNS_ZH))
    out.index.names = [COLUMNS_ZH.get(n, n) for n in out.index.names]
    out.columns.names = [COLUMNS_ZH.get(n, n) for n in out.columns.names]
    if isinstance(out.index, pd.RangeIndex):
        out = out.reset_index(drop=True)
    return _report_frame()(out.apply(lambda column: column.map(number_zh)).astype(str))


def _terms(column, names: dict | None = None):
    """label -> the Chinese word TERMS_ZH gives it in `column`, else its name in `names`, else itself."""
    words = {**(names or {}), **TERMS_ZH.get(column, {})}
    return lambda label: words.get(label, label) if isinstance(label, str) else label


def budget_description_zh(budget: "ablate.Budget") -> str:
    """What a budget trains, in Chinese, from its overrides and its presets (the data size, epochs, rungs)."""
    o = budget.overrides
    data = "合成数据 (SYNTHETIC)" if o.get("synthetic") else "真实 CIFAR-100"
    sizes = [f"{name} {o[key]:,} 张" for name, key in (("训练", "subset"), ("验证", "val_size"), ("测试", "test_subset"))
             if o.get(key)]
    epochs = f"每级 {o['epochs']} 个 epoch" if o.get("epochs") else "各预设自己的 epoch 数"
    model = f"，所有级都用模型 {o['model']}" if o.get("model") else ""
    return f"{data}，{'、'.join(sizes) or '完整数据集'}，{epochs}，训练阶梯中的 {len(budget.presets)} 级{model}"

# ablate.TABLE_HEADER in Chinese, short enough to fit an A4 page without breaking inside a word
LADDER_HEADER_ZH = ["预设", "种子数", "测试 top-1 %", "测试 top-5 %", "最佳验证 %", "训练−测试差 (pp)",
                    "增益 (pp)", "对照", "结论", "相对对照的改动", "时间 (s)", "图像/秒"]
VERDICT_ZH = {"effect": "有效果", "no measurable effect": "本预算下测不出效果", "needs seeds": "需要更多种子", "": ""}


def ladder_markdown_zh(result: "ablate.Ablation", budget: "ablate.Budget | None" = None) -> str:
    """The ladder comparison (ablate's ladder.md) in Chinese: a note on the data and settings, then the table."""
    runs = result.runs
    lines = []
    if bool(runs["synthetic"].any()):
        lines.append("**合成数据 (SYNTHETIC)：下表的数字没有意义，只说明流程能跑通。**\n")
    if budget is not None:
        lines.append(f"预算 `{budget.name}`：{budget_description_zh(budget)}。")
    lines.append(f"设备：{', '.join(sorted(set(map(str, runs['device']))))}；"
                 f"种子：{', '.join(map(str, sorted(set(runs['seed']))))}；"
                 f"模型：{', '.join(sorted(set(runs['model'])))}。\n")
    lines += [f"- `{name}` 未单独训练：{why}" for name, why in result.skipped.items()]
    # The changes go below the table: as an eleventh column they would push it past an A4 page's width.
    changes = [f"- `{r['preset']}` 相对 `{r['compared_to']}`：{r['changes']}"
               for r in result.table.to_dict("records") if r.get("compared_to") and r.get("changes")]
    rows = result.table.copy()
    if "verdict" in rows:
        rows["verdict"] = rows["verdict"].map(VERDICT_ZH)
    table = ablate.markdown_table(rows, LADDER_HEADER_ZH, changes=False)
    if changes:
        table += "\n每一行相对“对照”一列所列预设改动的配置项（从两者的 config.json 读出）：\n\n" + "\n".join(changes) + "\n"
    return "\n".join(lines) + "\n\n" + table


def ladder_findings_zh(table) -> list[str]:
    """One Chinese sentence per rung, derived from the table alone: a rung is said to work (or to hurt) only
    when its verdict is "effect" (|gain| >= 2 sigma of the seed noise, both rows at 3 or more seeds)."""
    sigma = float(table["noise"].iloc[0]) if len(table) else math.nan
    noise = f"{100 * sigma:.2f}" if not math.isnan(sigma) else "未知"
    records = table.to_dict("records")
    by_name = {r["preset"]: r for r in records}
    lines = []
    for r in records:
        if not r.get("compared_to"):
            continue
        gain, what = 100 * r["gain"], f"`{r['preset']}` 相对 `{r['compared_to']}`"
        if r["verdict"] == "effect":
            direction = "提高" if gain > 0 else "降低"
            lines.append(f"{what}：测试 top-1 {direction}了 {abs(gain):.2f} 个百分点，超过种子噪声 σ = {noise} "
                         f"个百分点的 2 倍（两行都有 {min(r['seeds'], 3)} 个以上的种子），在本预算下是可测量的效果。"
                         + _fit_or_gap_zh(r, by_name.get(r["compared_to"])))
        elif r["verdict"] == "needs seeds":
            lines.append(f"{what}：单个种子上相差 {gain:+.2f} 个百分点，超过 2σ，但还没有 3 个种子，暂不作结论。")
        elif r["verdict"] == "no measurable effect":
            lines.append(f"{what}：相差 {gain:+.2f} 个百分点，不到种子噪声 σ = {noise} 个百分点的 2 倍："
                         "本预算下测不出效果（这不等于无效：正则化、EMA、测试时增强等通常要更长的训练才显出作用）。")
        else:
            lines.append(f"{what}：相差 {gain:+.2f} 个百分点；没有多个种子，无法估计噪声，不作结论。")
    return lines


def _fit_or_gap_zh(row: dict, before: dict | None) -> str:
    """Whether a measured effect moved the fit of the training set or the train-test gap, read from the two rows'
    final training accuracies (on augmented batches, during the epoch); empty when the table has none."""
    if before is None or any(math.isnan(float(x.get("train_acc", math.nan))) for x in (row, before)):
        return ""
    train_change, test_change = row["train_acc"] - before["train_acc"], row["gain"]
    change = f"训练准确率 {100 * before['train_acc']:.2f}% → {100 * row['train_acc']:.2f}%"
    if train_change * test_change > 0:
        return (f"{change}，与测试准确率同向变化：这一级在本预算下改变的是拟合训练集的快慢（两者都还很低时即欠拟合的程度），"
                "而不是训练与测试之间的差距。")
    return f"{change}，与测试准确率反向变化：这一级改变的是训练与测试之间的差距（泛化）。"


assert len(LADDER_HEADER_ZH) == len(ablate.TABLE_HEADER), "one Chinese name per column of ablate.TABLE_HEADER"


def _test_images(run_dirs) -> int:
    sizes = [json.loads((Path(d) / "metrics.json").read_text(encoding="utf-8")).get("dataset", {}).get("n_test")
             for d in run_dirs]
    return min((n for n in sizes if isinstance(n, int) and n > 0), default=0)


def noise_floor_zh(result: "ablate.Ablation", classes: int = 100) -> str:
    """Why this ladder's gains can or cannot rank the rungs, in Chinese, from its own numbers: the standard
    error of a difference of two test accuracies measured on the same n test images, sqrt(2 p (1-p) / n) at
    the ladder's mean accuracy p, set against the largest gain and against chance (1 / classes)."""
    table = result.table
    n = _test_images(result.run_dirs)
    if not n or table.empty:
        return ""
    p = float(table["test_acc"].mean())
    se = math.sqrt(2 * max(p * (1 - p), 1e-12) / n)
    gains = table["gain"].dropna().abs()
    largest = float(gains.max()) if len(gains) else 0.0
    above = int((gains >= 2 * se).sum())
    chance = 1 / classes
    text = (f"**这些数字能不能给各级排序？** 每一级只在 {n:,} 张测试图像上测了一次，平均 top-1 为 {100 * p:.2f}%"
            f"（随机猜测为 {100 * chance:.0f}%）。在这个准确率下，两级测试准确率之差仅由测试集的抽样就有约 "
            f"{100 * se:.2f} 个百分点的标准误（√(2p(1−p)/n)），还没算换一个种子带来的波动。")
    if above == 0:
        text += (f"表中最大的增益为 {100 * largest:.2f} 个百分点，小于两倍标准误（{200 * se:.2f}），"
                 "所以这些差异与噪声无法区分，**不能据此判断哪一级更好**；它们只说明每一级都能训练、评估并写出结果。")
    else:
        text += (f"表中有 {above} 级的增益超过两倍标准误（{200 * se:.2f} 个百分点），但每级只有一个种子，"
                 "要确认还需要多个种子的均值与标准差。")
    if p < 3 * chance:
        text += f"平均准确率不到随机猜测的 3 倍：网络几乎还没有学到东西，这个预算本来就只用于检查流程。"
    return text


# The committed CPU evidence ladder (issue 27): `cvlab ablate --budget evidence --out docs/results/cpu-evidence`
# trains it (resumable); the finished run directories are committed (config.json, history.csv, metrics.json).
EVIDENCE_ROOT = Path(__file__).resolve().parents[2] / "docs" / "results" / "cpu-evidence"
EVIDENCE_HEADER_ZH = ["预设", "相对上一级的改动", "种子数", "测试 top-1 %", "增益 (pp)", "结论"]


def evidence_table(dirs: list[Path]):
    """(ladder table, runs table) of the committed evidence's run directories, in ladder order."""
    from ..core.config import LADDER
    return ablate.ladder_table(dirs, LADDER)


def evidence_runs(root: Path = EVIDENCE_ROOT) -> list[Path]:
    """The finished run directories of the committed evidence ladder."""
    from ..core.runs import RunDir
    return sorted(d for d in root.glob("*-s*") if d.is_dir() and RunDir(d).status() == "complete") if root.is_dir() else []


def committed_evidence(root: Path = EVIDENCE_ROOT):
    """(Markdown, figure or None): the committed evidence ladder as the report shows it: where it comes from, a
    table (rung, change, seeds, top-1 mean ± std, gain, verdict), one sentence per rung (ladder_findings_zh), the
    final rung against the handout's settings, and ablation_plots.evidence_figure. Labelled as committed evidence,
    not this run's result; says which planned rungs are not trained yet."""
    from ..core.runs import load_runs
    from .ablation_plots import evidence_figure

    dirs = evidence_runs(root)
    if not dirs:
        return ("**已提交的 CPU 证据（evidence ladder）尚未生成**：仓库中还没有训练完成的运行目录"
                f"（`{root.name}/`；命令 `python -m cvlab ablate --budget evidence`）。", None)
    table, runs = evidence_table(dirs)
    budget = ablate.BUDGETS["evidence"]
    o = budget.overrides
    lines = [f"**已提交的证据（不是本次运行的结果）**：预算 `evidence`，真实 CIFAR-100：{o['subset']:,} 张训练图像"
             f"（每类前 {o['subset'] // 100} 张）、{o['test_subset']:,} 张测试图像（每类 {o['test_subset'] // 100} 张）、"
             f"{o['epochs']} 个 epoch、不划验证集（报告最后一个 epoch，不在测试集上挑选）；"
             f"设备 {', '.join(sorted(set(map(str, runs['device']))))}；种子 "
             f"{', '.join(map(str, sorted(set(runs['seed']))))}。",
             ""]
    missing = [n for n in budget.presets if n not in set(table["preset"])]
    if missing:
        lines.append(f"计划的 {len(budget.presets)} 级中已完成 {len(table)} 级；尚未训练：{'、'.join(f'`{n}`' for n in missing)}"
                     "（命令可续跑，完成后本节自动更新）。\n")
    head = "| " + " | ".join(EVIDENCE_HEADER_ZH) + " |\n|" + "---|" * len(EVIDENCE_HEADER_ZH) + "\n"
    rows = []
    for r in table.to_dict("records"):
        top1 = f"{100 * r['test_acc']:.2f}" + (f" ± {100 * r['test_acc_std']:.2f}" if r["seeds"] > 1 else "")
        gain = f"{100 * r['gain']:+.2f}" if r["compared_to"] else "–"
        rows.append(f"| `{r['preset']}` | {r['changes'] or '（讲义的设置）'} | {r['seeds']} | {top1} | {gain} | "
                    f"{VERDICT_ZH.get(r['verdict'], r['verdict'])} |")
    lines.append(head + "\n".join(rows) + "\n")
    lines.append(noise_rule_zh(table))
    lines += ["", *[f"- {line}" for line in ladder_findings_zh(table)], "", _target_zh(table, budget.presets[-1])]
    histories = load_runs(dirs)
    return "\n".join(lines), evidence_figure(table, runs, histories, title="")


def evidence_summary_zh(root: Path = EVIDENCE_ROOT) -> str:
    """The committed evidence in two sentences for a conclusion, from its table alone: the rungs with a measured
    effect and their gains, and the final rung against the handout's settings; empty without committed runs."""
    dirs = evidence_runs(root)
    if not dirs:
        return ""
    table, _ = evidence_table(dirs)
    rows = table.to_dict("records")
    effects = [r for r in rows if r["verdict"] == "effect"]
    quiet = sum(r["verdict"] == "no measurable effect" for r in rows)
    text = "**已提交的 CPU 证据**（预算 `evidence`，真实 CIFAR-100 子集，见上文“已提交的 CPU 证据”一节）："
    if effects:
        text += ("有可测量效果的级为 " + "、".join(f"`{r['preset']}` {100 * r['gain']:+.2f}" for r in effects)
                 + " 个百分点（相对各自的上一级）")
    else:
        text += "还没有哪一级有可测量的效果"
    text += f"；其余 {quiet} 级在该预算下测不出效果。" + _target_zh(table, ablate.BUDGETS["evidence"].presets[-1])
    return text


def noise_rule_zh(table) -> str:
    """The verdict rule with this table's seed noise, in Chinese."""
    sigma = float(table["noise"].iloc[0]) if len(table) else math.nan
    rule = (f"判定规则：增益的绝对值至少是种子噪声 σ 的 {ablate.EFFECT_SIGMAS:g} 倍、且两行都有 3 个以上的种子，"
            "才算“有效果”；小于 2σ 记为“本预算下测不出效果”；单个种子上超过 2σ 记为“需要更多种子”。")
    if math.isnan(sigma):
        return rule + "现在还没有哪一级有多个种子，σ 未知，所以暂不下结论。"
    return rule + f"σ = {100 * sigma:.2f} 个百分点（有多个种子的各行测试 top-1 标准差的合并值）。"


def _target_zh(table, final: str) -> str:
    """The final rung against the handout's settings at the same budget: the target is +10 points, mean of 3
    seeds, with the gain at least 5 times the seeds' standard deviation."""
    target = ("目标：最后一级（`" + final + "`）比讲义的设置在同一预算下高至少 10 个百分点（3 个种子的均值），"
              "且增益至少是种子标准差的 5 倍。")
    rows = table.set_index("preset")
    if "handout" not in rows.index or final not in rows.index:
        return target + "最后一级还没有训练，目标尚未检验。"
    first, last = rows.loc["handout"], rows.loc[final]
    gain, sigma = 100 * (last["test_acc"] - first["test_acc"]), 100 * float(table["noise"].iloc[0])
    seeds = min(first["seeds"], last["seeds"])
    text = target + f"现在两者相差 {gain:+.2f} 个百分点（各 {seeds} 个种子"
    if seeds < 3 or math.isnan(sigma):
        return text + "），种子还不够，目标尚未检验。"
    met = gain >= 10 and gain >= 5 * sigma
    text += f"，σ = {sigma:.2f}）：目标{'达到' if met else '没有达到'}。"
    return text if met else text + _shortfall_zh(table)


def _shortfall_zh(table) -> str:
    """What the budget can and cannot show when the final rung misses the target, from the table's numbers: the
    rungs with a measured harm (which the cumulative ladder carries to the end) and the highest row."""
    hurt = [r for r in table.to_dict("records") if r["verdict"] == "effect" and r["gain"] < 0]
    top = table.loc[table["test_acc"].idxmax()]
    text = ""
    if hurt:
        text += ("阶梯是累加的，本预算下有可测量害处的级（" + "、".join(f"`{r['preset']}` {100 * r['gain']:+.2f}" for r in hurt)
                 + " 个百分点）也留在了最后一级里。")
    text += (f"本预算下测试 top-1 最高的一行是 `{top['preset']}`（{100 * top['test_acc']:.2f}%；这是在测试集上看的，只用来说明预算，"
             "不用来挑选配方）。这个预算（几个 epoch、每类几十张图）分辨得出的是让网络更快拟合训练集的改动；"
             "为长训练设计的正则化与平均（增强、标签平滑、EMA、TTA）在这里测不出作用，需要用 `full` 预算在 GPU 上检验。")
    return text


def committed_evidence_zh(root: Path = EVIDENCE_ROOT) -> str:
    """The committed evidence's Markdown alone (see committed_evidence)."""
    return committed_evidence(root)[0]
