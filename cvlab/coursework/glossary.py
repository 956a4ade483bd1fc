"""The Chinese terms of the report text (answers/, answers/templates/, the notebooks' Markdown, the wording
functions): one term per concept, and the variants that are not used. tests/test_theory_results.py scans the
texts for the rejected variants.

    from cvlab.coursework import glossary
    glossary.violations("按手册的设置")   # [("讲义 (handout)", "手册", "按手册的设置")]
"""
from __future__ import annotations

import re

# concept: (the term used, regular expressions of the variants that are not)
GLOSSARY: dict[str, tuple[str, tuple[str, ...]]] = {
    "handout": ("讲义", ("手册",)),
    "normalization": ("归一化", ("标准化",)),                        # (x - mean) / std of the inputs
    "batch normalization": ("批量归一化", ("批归一化", "批标准化", "批量标准化", "批量规范化", "批规范化")),
    "data augmentation": ("数据增强", ("增广",)),
    # batch size: 批量大小; 小批量 (a minibatch), 大批量 (large-batch training) and 批量归一化 are other concepts
    "batch size": ("批量大小", ("批大小", "批次大小", "批尺寸", r"(?<![小大])批量(?!大小|归一化|运行)")),
    # the first conv (+ BN, ReLU) before the residual stages: 起始层, with "(stem)" beside it once
    "stem": ("起始层", ("起始卷积层", "初始层", r"(?<![（(`\w])stem(?![\w`）)])")),
    "last quarter of the steps": ("最后 1/4 的迭代步", ("四分之一步",)),
}


def violations(text: str) -> list[tuple[str, str, str]]:
    """(concept's term, rejected variant found, the text around it) for every rejected variant in `text`."""
    found = []
    for concept, (term, rejected) in GLOSSARY.items():
        for pattern in rejected:
            for match in re.finditer(pattern, text):
                found.append((f"{term} ({concept})", match.group(0),
                              text[max(0, match.start() - 15):match.end() + 15].replace("\n", " ")))
    return found
