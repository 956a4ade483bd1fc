"""Tables for the Chinese report, built from what the experiments recorded (never typed-in numbers)."""
from __future__ import annotations

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


assert len(LADDER_HEADER_ZH) == len(ablate.TABLE_HEADER), "one Chinese name per column of ablate.TABLE_HEADER"
