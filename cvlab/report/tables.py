"""Tables for the Chinese report, built from what the experiments recorded (never typed-in numbers)."""
from __future__ import annotations

import math

from ..experiments import ablate

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
        lines.append(f"预算 `{budget.name}`：{budget.description}。")
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
    lines = []
    for r in table.to_dict("records"):
        if not r.get("compared_to"):
            continue
        gain, what = 100 * r["gain"], f"`{r['preset']}` 相对 `{r['compared_to']}`"
        if r["verdict"] == "effect":
            direction = "提高" if gain > 0 else "降低"
            lines.append(f"{what}：测试 top-1 {direction}了 {abs(gain):.2f} 个百分点，超过种子噪声 σ = {noise} "
                         f"个百分点的 2 倍（两行都有 {min(r['seeds'], 3)} 个以上的种子），在本预算下是可测量的效果。")
        elif r["verdict"] == "needs seeds":
            lines.append(f"{what}：单个种子上相差 {gain:+.2f} 个百分点，超过 2σ，但还没有 3 个种子，暂不作结论。")
        elif r["verdict"] == "no measurable effect":
            lines.append(f"{what}：相差 {gain:+.2f} 个百分点，不到种子噪声 σ = {noise} 个百分点的 2 倍："
                         "本预算下测不出效果（这不等于无效：正则化、EMA、测试时增强等通常要更长的训练才显出作用）。")
        else:
            lines.append(f"{what}：相差 {gain:+.2f} 个百分点；没有多个种子，无法估计噪声，不作结论。")
    return lines


assert len(LADDER_HEADER_ZH) == len(ablate.TABLE_HEADER), "one Chinese name per column of ablate.TABLE_HEADER"
