"""The submission: one A4 PDF and one self-contained HTML (实验报告) from a profile's executed notebooks.

    python -m cvlab report --profile quick --submission --student-name 张三 --student-id 2023012345

Cover (course, student, date), contents with page numbers, then the handout's parts as chapters:
实验目的 / 实验内容 / 实验步骤与结果 (notebook 01) / 问题解答 (02) / 改进方法与结果 (03) / 结论 (the
notebooks' closing sections), and an appendix with the source code of every ladder rung, read from the
commit that produced the runs. The body is the executed notebooks' own cells with code hidden; every
figure and table carries a provenance line (device, precision, data, epochs, seeds, commit) read from
the run directories. Student details come from the options or a small YAML file (STUDENT_FILE).
"""
from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UsageError
from ..core.runs import atomic_write_text
from . import source

COURSE, PROJECT, TITLE = "计算机视觉技术基础", "实践项目一", "ResNet-18 实现图像分类"
STUDENT_FILE = "student.yaml"   # name / id / class (/ date), filled in once; options override it
SUBMISSION_NAME = "submission"
# The handout's own words for its first two parts (实验目的, 实验内容): the assignment, quoted.
HANDOUT_AIMS = ["了解图像分类任务", "了解深度学习技术在图像分类领域的应用", "学习神经网络的设计与实现"]
HANDOUT_CONTENT = "基于 CIFAR100 数据集，使用 Resnet 模型进行图像分类任务。"
# notebook stem prefix -> (chapter number, chapter title, conclusion subsection title)
NOTEBOOK_CHAPTERS = {"01": ("三", "实验步骤与结果", "基线"), "02": ("四", "问题解答", "问题解答"),
                     "03": ("五", "改进方法与结果", "改进")}
CONCLUSION_HEADING = re.compile(r"^#{1,6}\s*(\d+\.\s*)?小结")
PARAMETERS_HEADING = re.compile(r"^#{1,6}\s*参数")
# Cells tagged NOTEBOOK_ONLY, and text between the two markers inside a Markdown cell, speak to whoever runs the
# notebook (how to run it, the CLI, what the repository has committed): the submission leaves them out.
NOTEBOOK_ONLY = "notebook-only"
NOTEBOOK_ONLY_TEXT = re.compile(r"<!--\s*notebook-only\s*-->.*?<!--\s*/notebook-only\s*-->\n?", re.S)
# Cells tagged TRAINING_LOG print one line per epoch: the submission shows the per-epoch table instead.
TRAINING_LOG = "training-log"
# Budgets whose numbers check the pipeline and are not results: the document says so on every page.
PIPELINE_CHECK_BUDGETS = {"smoke": "合成数据，几步训练", "quick": "真实数据的很小子集、2 个 epoch"}
PIPELINE_CHECK = "流程检查"
# An absolute path of this machine (/tmp/..., /home/...) in a program's output: not for the reader.
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+@~-]+/)+[\w.+@~-]*")


@dataclass
class Student:
    name: str
    student_id: str
    class_name: str = ""
    date: str = ""


STUDENT_FIELD_MAX = 100  # characters of one cover field


def check_field(value: str, where: str) -> None:
    """A cover field is one line of plain text, at most STUDENT_FIELD_MAX characters: a newline or another
    control or format character (a blank line would end the cover's HTML block and let the rest of the field
    become markup) is refused with one UsageError line naming the field (`where`) and the character."""
    import unicodedata
    for i, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise UsageError(f"{where} holds a control character (U+{ord(char):04X} at position {i + 1}); "
                             "give it as one line of plain text")
    if len(value) > STUDENT_FIELD_MAX:
        raise UsageError(f"{where} is {len(value)} characters long, more than the {STUDENT_FIELD_MAX} a cover "
                         "field takes; shorten it")


def resolve_student(name: str | None, student_id: str | None, class_name: str | None,
                    path: Path | None = None) -> Student:
    """Options first, then the student file (`path`, else ./student.yaml when present); name and id required."""
    import yaml

    values: dict[str, Any] = {}
    file = path or Path(STUDENT_FILE)
    if path is not None and not path.is_file():
        raise UsageError(f"--student-file {path}: no such file")
    if file.is_file():
        try:
            values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{file} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UsageError(f"{file} must map name, id, class (and optionally date) to values")
    student = Student(str(name or values.get("name") or "").strip(), str(student_id or values.get("id") or "").strip(),
                      str(class_name or values.get("class") or "").strip(),
                      str(values.get("date") or time.strftime("%Y-%m-%d")).strip())
    for label, option, key in (("name", name, "name"), ("student_id", student_id, "id"),
                               ("class_name", class_name, "class"), ("date", None, "date")):
        check_field(getattr(student, label), f"--student-{key}" if option else f"{file} {key}:")
    if not student.name or not student.student_id:
        raise UsageError("--submission needs --student-name and --student-id "
                         f"(or a {STUDENT_FILE} with name: and id:)")
    return student


# ---------------------------------------------------------------------------- provenance

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _join(values) -> str:
    return ", ".join(str(v) for v in sorted(set(values), key=str)) or "?"


def run_provenance(run_dirs: list[Path]) -> tuple[str, list[str]]:
    """One line (device, precision, data, epochs, seeds, commit) for the runs in `run_dirs`, and their commits."""
    metrics = [m for m in (_read_json(d / "metrics.json") for d in run_dirs) if m]
    if not metrics:
        return "", []
    datasets = [m.get("dataset", {}) for m in metrics]
    synthetic = any(d.get("synthetic") for d in datasets)
    sizes = _join(f"{d.get('n_train', '?'):,} / {d.get('n_test', '?'):,}" if isinstance(d.get("n_train"), int)
                  else "?" for d in datasets)
    whole = all(not d.get("subset") and not d.get("test_subset") for d in datasets)
    commits = [m.get("versions", {}).get("git_commit") or "" for m in metrics]
    data = "合成数据 SYNTHETIC（数字没有意义）" if synthetic else "CIFAR-100 真实数据"
    line = (f"设备 {_join(m.get('device', '?') for m in metrics)} ｜ 精度 {_join(m.get('precision', '?') for m in metrics)}"
            f" ｜ 数据 {data}，{'全量' if whole else '子集'}，训练/测试 {sizes} 张"
            f" ｜ epoch {_join(m.get('epochs_done', '?') for m in metrics)}"
            f" ｜ 种子 {_join(m.get('seed', '?') for m in metrics)}"
            f" ｜ {len(metrics)} 次运行 ｜ commit {_join(c[:10] + ('-dirty' if c.endswith('-dirty') else '') for c in commits)}")
    return line, commits


def notebook_provenance(stem: str, params: dict[str, Any], notebooks_dir: Path, report_commit: str) -> tuple[str, list[str]]:
    """The provenance line for the results of one notebook (and the commits of its runs)."""
    if stem.startswith("01"):
        return run_provenance([notebooks_dir / params.get("RUN_DIR", "../runs/01_baseline")])
    if stem.startswith("03"):
        root = notebooks_dir / params.get("RUNS_DIR", "../runs/03_improvements") / str(params.get("BUDGET", "subset"))
        return run_provenance(sorted(p.parent for p in root.glob("*/metrics.json")))
    if stem.startswith("02"):
        from .parameters import theory_quick

        synthetic, budget = params.get("SYNTHETIC", False), params.get("BUDGET", "subset")
        data = "合成数据 SYNTHETIC（数字没有意义）" if synthetic else "CIFAR-100 真实数据，类别均衡子集"
        return (f"设备 cpu（演示固定在 CPU 上）｜ 精度 fp32 ｜ 数据 {data}（Q2、Q5 和 Q6 的二维曲面不用图像）"
                f" ｜ BUDGET={budget}（QUICK={theory_quick(budget)}）｜ 种子 {params.get('SEED', 0)}"
                " ｜ 第 (3) 题的基线曲线来自第三章的运行"
                f" ｜ commit {report_commit[:10] or '?'}（生成报告时）"), []
    return "", []


# ---------------------------------------------------------------------------- notebook cells -> chapters

def demote_headings(markdown: str, levels: int = 1) -> str:
    """Every Markdown heading `levels` deeper (outside fenced code), at most h6."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6})(\s)", line)):
            line = "#" * min(6, len(m.group(1)) + levels) + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out)


def _provenance_html(line: str) -> str:
    return f'<div class="provenance">来源：{html.escape(line)}（各章的参数见附录 B）</div>'


def scrub_paths(text: str) -> str:
    """`text` with this machine's absolute paths reduced to their last part ('/tmp/x/cifar-100-python' ->
    'cifar-100-python'): where a file lay on the author's machine is not part of the report."""
    return MACHINE_PATH.sub(lambda m: Path(m.group(0).rstrip("/")).name or m.group(0), text)


def clean_output(output: dict, notes: list[str] | None = None) -> dict | None:
    """An output as the submission shows it: no stderr, warnings or errors; source listings become their
    one-line reference (the code is in the appendix); no machine paths; program notes ('注意：...', e.g. the
    data's checksum) moved to `notes` (appendix B); Markdown headings two levels deeper."""
    if output.get("output_type") == "error":
        return None
    if output.get("output_type") == "stream":
        if output.get("name") == "stderr":
            return None
        output = copy.deepcopy(output)
        lines = []
        for line in scrub_paths(output.get("text", "")).splitlines(keepends=True):
            if line.startswith("注意："):
                if notes is not None and line.strip() not in notes:
                    notes.append(line.strip())
                continue
            lines.append(line)
        output["text"] = "".join(lines)
        return output if output["text"].strip() else None
    if output.get("metadata", {}).get("cvlab") == "source":
        return None
    data = output.get("data", {})
    if "text/markdown" in data:
        output = copy.deepcopy(output)
        output["data"]["text/markdown"] = demote_headings(scrub_paths(NOTEBOOK_ONLY_TEXT.sub("", data["text/markdown"])), 2)
    return output


CHAPTER_ARABIC = {"三": 3, "四": 4, "五": 5}
_NUMBERED_HEADING = re.compile(r"^(#{1,6})\s+(\d+(?:\.\d+)*)\.?\s+")
_CHAPTER_REF = re.compile(r"第\s*0?([1-3])\s*章(?:\s*§\s*(\d+(?:\.\d+)*))?")
_SECTION_REF = re.compile(r"(?<![\d.(（§])(\d+(?:\.\d+)*)((?:\s*[、和与]\s*\d+(?:\.\d+)*)*)\s*节")


def renumber(markdown: str, chapter: int, sections: bool = True) -> str:
    """A notebook's Markdown in the document's numbering: its numbered headings ('### 3.1 标准化') and section
    references ('第 4、5 节', '见 2.9 节') prefixed with the chapter's number (3 -> '3.3.1'), and references to
    the notebooks ('第 02 章', '第 01 章 §3.1') turned into the document's chapters ('第四章', '第三章 3.3.1 节').
    `sections` False leaves section numbers alone (a notebook without numbered sections)."""
    def chapter_ref(m: re.Match) -> str:
        number, title, _ = NOTEBOOK_CHAPTERS[f"0{m.group(1)}"]
        section = f" {CHAPTER_ARABIC[number]}.{m.group(2)} 节" if m.group(2) else ""
        return f"第{number}章{section}"

    def section_ref(m: re.Match) -> str:
        refs = re.sub(r"\d+(?:\.\d+)*", lambda n: f"{chapter}.{n.group(0)}", m.group(1) + m.group(2))
        return f"{refs} 节"

    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            if sections:
                line = _NUMBERED_HEADING.sub(lambda m: f"{m.group(1)} {chapter}.{m.group(2)}\u3000", line)
                line = _SECTION_REF.sub(section_ref, line)
            line = _CHAPTER_REF.sub(chapter_ref, line)
        out.append(line)
    return "\n".join(out)


def split_notebook(nb, chapter: int = 0, notes: list[str] | None = None) -> tuple[list, list]:
    """(body cells, conclusion cells) of an executed notebook: parameters, setup output and notebook-only
    cells and text dropped, training logs dropped (the per-epoch table stays), headings two levels deeper and
    numbered in the document's chapter `chapter` (0: left as they are), the title line dropped."""
    body: list = []
    conclusion: list = []
    target = body
    after_parameters = False
    seen_title = False
    sections = any(_NUMBERED_HEADING.match(line) for c in nb.cells if c.cell_type == "markdown"
                   for line in c.source.splitlines())
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            after_parameters = True
            continue
        if NOTEBOOK_ONLY in tags:
            continue
        cell = copy.deepcopy(cell)
        if cell.cell_type == "markdown":
            text = NOTEBOOK_ONLY_TEXT.sub("", cell.source)
            if not text.strip() or PARAMETERS_HEADING.match(text.lstrip()):
                continue
            if CONCLUSION_HEADING.match(text.lstrip()):
                target = conclusion
                text = "\n".join(text.lstrip().splitlines()[1:])  # the section title becomes 6.x
            elif not seen_title and text.lstrip().startswith("# "):
                text = "\n".join(text.lstrip().splitlines()[1:])
            seen_title = True
            text = demote_headings(text, 1)
            cell.source = renumber(text, chapter, sections) if chapter else text
            target.append(cell)
            continue
        if cell.cell_type != "code":
            continue
        if after_parameters:  # the setup cell: versions and paths, not results
            after_parameters = False
            cell.outputs = []
        outputs = []
        for output in cell.get("outputs", []):
            if TRAINING_LOG in tags and output.get("output_type") == "stream":
                continue
            kept = clean_output(output, notes)
            if kept is None:
                continue
            if chapter and "text/markdown" in kept.get("data", {}):
                kept["data"]["text/markdown"] = renumber(kept["data"]["text/markdown"], chapter, sections)
            outputs.append(kept)
        cell.outputs = outputs
        target.append(cell)
    return body, conclusion


def notebook_errors(nb) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


# ---------------------------------------------------------------------------- front matter and appendix

def _md(text: str):
    import nbformat
    return nbformat.v4.new_markdown_cell(text)


@dataclass
class Heading:
    anchor: str
    text: str
    level: int = 1
    page: int | None = None


@dataclass
class Document:
    cells: list = field(default_factory=list)
    headings: list[Heading] = field(default_factory=list)
    check: str = ""   # pipeline_check's words: on the cover and in every page's running header

    def heading(self, anchor: str, text: str, level: int = 1, css: str = "chapter", body: str = "") -> None:
        """A heading in the contents; `body`, Markdown, follows it in the same cell: Chromium keeps a heading with
        its next sibling only, so a heading alone in its cell could end a page (seen with the appendix entries)."""
        self.headings.append(Heading(anchor, text, level))
        tag = f"h{level}"
        self.cells.append(_md(f'<{tag} id="{anchor}" class="{css}">{html.escape(text)}</{tag}>'
                              + (f"\n\n{body}" if body else "")))


def pipeline_check(budget: str) -> str:
    """The Chinese words for a budget whose numbers only check the pipeline ('' for one that gives results)."""
    what = PIPELINE_CHECK_BUDGETS.get(budget)
    return f"{PIPELINE_CHECK}（预算 {budget}：{what}）：本报告的数字只说明流程能跑通，不是实验结果" if what else ""


def cover_html(student: Student, profile: str, check: str = "") -> str:
    """The cover page; `check` (pipeline_check's words) is printed in a box above the student's details."""
    rows = [("课程", COURSE), ("项目", f"{PROJECT} · {TITLE}"), ("姓名", student.name), ("学号", student.student_id),
            ("班级", student.class_name or "（未填写）"), ("日期", student.date)]
    table = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    box = f'<p class="cover-check">{html.escape(check)}</p>' if check else ""
    return (f'<div class="cover"><p class="cover-course">{COURSE}</p><p class="cover-kind">实验报告</p>'
            f'<p class="cover-title">{PROJECT} · {TITLE}</p>{box}<table class="cover-table">{table}</table></div>')


def running_header_css(check: str) -> str:
    """A running header on every page but the cover that repeats `check` ('' when there is nothing to say)."""
    if not check:
        return ""
    text = check.replace("\\", "\\\\").replace('"', '\\"')
    return ("@media print { @page { @top-center { content: \"" + text + "\"; font-size: 8.5pt; color: #a00; } }"
            " @page :first { @top-center { content: none; } } }")


def toc_html(headings: list[Heading]) -> str:
    items = []
    for h in headings:
        page = f'<span class="toc-page">{h.page}</span>' if h.page else '<span class="toc-page"></span>'
        items.append(f'<li class="toc-l{h.level}"><a href="#{h.anchor}">{html.escape(h.text)}</a>'
                     f'<span class="toc-dots"></span>{page}</li>')
    return f'<div class="toc"><h1 class="toc-title">目　录</h1><ul>{"".join(items)}</ul></div>'


def _code_block(listing: source.Listing) -> str:
    return f'<p class="listing">{html.escape(listing.title)} — {html.escape(listing.header)}</p>\n\n' \
           f"{code_html(listing.text)}\n"


def code_html(code: str) -> str:
    """Highlighted Python as one raw-HTML block whose lines wrap under their own indentation (a hanging indent
    per line: a wrapped line of a nested block stays inside it), with no literal line break (see _one_line)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    marked = highlight(code, PythonLexer(), HtmlFormatter(nowrap=True)).rstrip("\n").split("\n")
    lines = []
    for raw, shown in zip(code.split("\n"), marked):
        hang = len(raw) - len(raw.lstrip(" ")) + 4  # a wrapped part starts 4 columns right of its line
        lines.append(f'<span class="code-line" style="padding-left: {hang}ch; text-indent: -{hang}ch">'
                     f"{shown or '&#8203;'}</span>")
    return f'<div class="highlight hl-python code-listing"><pre>{"".join(lines)}</pre></div>'


def _one_line(code: str) -> str:
    """Escaped code whose line breaks are character references: a raw-HTML block in Markdown ends at a
    blank line, after which a '# comment' line would turn into a heading."""
    return html.escape(code).replace("\n", "&#10;")


def appendix(doc: Document, commit: str | None, note: str, trained: set[str]) -> None:
    """Appendix A: the handout's network beside cvlab's; each rung's preset and the code it switches on."""
    from ..core import config, models

    doc.heading("appendix", "附录 A　源代码")
    doc.cells.append(_md(
        f"讲义要求\"提供你的思路和源代码\"。本附录从 `cvlab` 包中逐级摘出每一级改进的预设定义（preset）和它打开的函数，"
        f"每段代码标出文件与行号。{note}。思路与实验结果见第五章。"))
    handout = (Path(__file__).resolve().parent / "handout_network.py.txt").read_text(encoding="utf-8")
    ours = [source.object_listing(obj, commit) for obj in (models.HandoutBasicBlock, models.handout_resnet18)]
    right = "\n\n".join(f"# {l.header}\n{l.text}" for l in ours)
    doc.heading("appendix-network", "A.1　讲义的网络与 cvlab 的复现", level=2, css="section", body=(
        "左：讲义第三部分 (2) 中印出的网络（原样，包括缺少的右括号）；右：`cvlab.core.models` 中的复现"
        "（`lambda` 捷径换成可序列化的 `nn.Identity`，其余层与参数相同，11,223,140 个参数）。\n\n"
        f'<table class="side-by-side"><tr><th>讲义</th><th>cvlab</th></tr><tr>'
        f"<td><pre>{_one_line(handout)}</pre></td><td><pre>{_one_line(right)}</pre></td></tr></table>"))
    shown: dict[str, str] = {}
    rungs = [n for n in config.LADDER if n in config.PARENT and n not in ("fast", "best")]
    for i, name in enumerate(rungs, start=2):
        anchor = f"appendix-{i}"
        changes = config.changes_text(config.preset_changes(name))
        parts = [f"相对 `{config.PARENT[name]}` 改动的配置项：`{html.escape(changes)}`"
                 f"（{'本报告训练了这一级' if name in trained else '本报告的预算没有单独训练这一级'}；思路见第五章）",
                 "预设定义：", _code_block(source.preset_listing(name, commit))]
        for obj in source.rung_objects(name):
            listing = source.object_listing(obj, commit)
            if listing.title in shown:
                parts.append(f"`{listing.title}`：见 {shown[listing.title]}。")
                continue
            shown[listing.title] = f"A.{i}"
            parts.append(_code_block(listing))
        doc.heading(anchor, f"A.{i}　{name}", level=2, css="section", body="\n\n".join(parts))
    ends = [n for n in ("fast", "best") if n in config.PRESETS]
    if ends:
        i = len(rungs) + 2
        doc.heading(f"appendix-{i}", f"A.{i}　阶梯的两个终点：{' 与 '.join(ends)}", level=2, css="section",
                    body="\n\n".join(
            f"**{n}**：相对 `{config.PARENT.get(n, 'handout')}` 改动的配置项：`{html.escape(config.changes_text(config.preset_changes(n)))}`"
            "\n\n" + _code_block(source.preset_listing(n, commit))
            for n in ends))


# ---------------------------------------------------------------------------- the document

def _executed(out: Path, prefix: str) -> Path | None:
    found = sorted(out.glob(f"{prefix}*.ipynb"))
    return found[0] if found else None


PARAMETER_NAMES_ZH = {"PRESET": "预设 (preset)", "EPOCHS": "epoch 数", "BATCH_SIZE": "批量大小 (batch size)",
                      "SUBSET": "训练图像（张，0 为全部）", "TEST_SUBSET": "测试图像（张，0 为全部）",
                      "SYNTHETIC": "合成数据", "SEED": "随机种子", "SEEDS": "每个预设的种子数", "DEVICE": "设备",
                      "BUDGET": "预算 (budget)"}


def parameters_table_zh(params: dict[str, dict]) -> str:
    """One Markdown table: each chapter's parameters that describe the experiment (paths left out), in Chinese."""
    shown = [k for k in PARAMETER_NAMES_ZH if any(k in p for p in params.values())]
    stems = [stem for stem in params if stem[:2] in NOTEBOOK_CHAPTERS]
    value = lambda v: "是" if v is True else "否" if v is False else str(v)  # noqa: E731
    header = "| 参数 | " + " | ".join(f"第{NOTEBOOK_CHAPTERS[s[:2]][0]}章" for s in stems) + " |"
    rows = [f"| {PARAMETER_NAMES_ZH[k]} | " + " | ".join(value(params[s][k]) if k in params[s] else "—" for s in stems)
            + " |" for k in shown]
    return "\n".join([header, "|---" * (len(stems) + 1) + "|", *rows])


def appendix_runs(doc: Document, params: dict[str, dict], provenance: dict[str, str], notes: list[str]) -> None:
    """Appendix B: each chapter's provenance line and parameters, and the programs' notes on the data."""
    doc.heading("appendix-runs", "附录 B　运行记录与参数")
    lines = [f"- 第{NOTEBOOK_CHAPTERS[prefix][0]}章：{html.escape(line)}" for prefix, line in provenance.items() if line]
    parts = ["各章的结果来自下列运行（设备、精度、数据、epoch、种子与代码版本 commit 从运行目录读出）：", "\n".join(lines),
             "各章的参数：", parameters_table_zh(params)]
    if notes:
        parts += ["运行时程序给出的提示（原文）：", "\n".join(f"- {html.escape(n)}" for n in notes)]
    doc.cells.append(_md("\n\n".join(parts)))


def build_notebook(out: Path, student: Student, profile: str, notebooks_dir: Path, params: dict[str, dict],
                   report_commit: str):
    """The submission as one notebook (Markdown and output cells only) and its headings."""
    import nbformat

    executed = {prefix: _executed(out, prefix) for prefix in NOTEBOOK_CHAPTERS}
    missing = [p for p, path in executed.items() if path is None]
    if missing:
        raise UsageError(f"--submission needs the executed notebooks {', '.join(missing)} in {out}; "
                         "run the report without --only first")
    budget = params.get(executed["03"].stem, {}).get("BUDGET", "subset")
    doc = Document()
    doc.check = pipeline_check(budget)
    doc.cells.append(_md(cover_html(student, profile, doc.check)))
    doc.cells.append(_md("<!-- toc -->"))
    doc.heading("aims", "一、实验目的")
    doc.cells.append(_md("\n".join(f"{i}. {a}" for i, a in enumerate(HANDOUT_AIMS, 1))))
    doc.heading("content", "二、实验内容", css="chapter-continued")
    doc.cells.append(_md(
        f"{HANDOUT_CONTENT}按讲义第四部分的要求：用讲义的 ResNet-18 训练并画出 train loss 与 test loss 随 epoch 的变化（第三章），"
        f"回答六个问题（第四章），改进模型并用训练结果证明改进有效（第五章，源代码见附录 A）。"
        "每章开头一行注明结果的来源（设备、数据、epoch、种子），各章的参数见附录 B。"
        + (f"\n\n**{html.escape(doc.check)}。**" if doc.check else "")))
    conclusions, commits, provenance, notes = [], [], {}, []
    for prefix, path in executed.items():
        nb = nbformat.read(str(path), as_version=4)
        errors = notebook_errors(nb)
        if errors:
            raise UsageError(f"{path.name} holds an error ({errors[0][:80]}); fix it and run the report again")
        number, title, short = NOTEBOOK_CHAPTERS[prefix]
        line, run_commits = notebook_provenance(path.stem, params.get(path.stem, {}), notebooks_dir, report_commit)
        commits += run_commits
        provenance[prefix] = line
        body, conclusion = split_notebook(nb, CHAPTER_ARABIC[number], notes)
        doc.heading(f"chapter-{prefix}", f"{number}、{title}")
        if line:
            doc.cells.append(_md(_provenance_html(line)))
        doc.cells.extend(body)
        conclusions.append((short, conclusion))
    doc.heading("conclusion", "六、结论")
    for i, (short, cells) in enumerate(conclusions, 1):
        doc.cells.append(_md(f"## 6.{i}　{short}"))
        doc.cells.extend(cells)
    commit, note = source.resolve_commit(next((c for c in commits if c), report_commit or None))
    appendix(doc, commit, note, _trained_presets(budget))
    appendix_runs(doc, {p.stem: params.get(p.stem, {}) for p in executed.values()}, provenance, notes)
    return nbformat.v4.new_notebook(cells=doc.cells, metadata={"language_info": {"name": "python"}}), doc


def _trained_presets(budget: str) -> set[str]:
    from ..experiments import ablate
    try:
        return set(ablate.get_budget(budget).presets)
    except UsageError:
        return set()


def render_html(nb, out_html: Path, source_dir: Path, headings: list[Heading], check: str = "") -> None:
    from .publish import fit_tables, offline_html_exporter, stylesheet

    exporter = offline_html_exporter(no_input=True, extra_css=stylesheet("submission.css") + running_header_css(check))
    nb = copy.deepcopy(nb)
    fit_tables(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source == "<!-- toc -->":
            cell.source = toc_html(headings)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(source_dir), "name": SUBMISSION_NAME}})
    body = re.sub(r"<title>.*?</title>", f"<title>{COURSE} · {PROJECT} · 实验报告</title>", body, count=1, flags=re.S)
    atomic_write_text(out_html, body)  # core.runs: a full disk leaves no half document


def pdf_pages_text(pdf: Path) -> list[str] | None:
    """The text of each page: pdftotext (poppler), else pypdf (pure Python, from PyPI); None where neither is."""
    if shutil.which("pdftotext"):
        done = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, timeout=120)
        if done.returncode == 0:
            return done.stdout.decode("utf-8", "replace").split("\f")
    try:
        from pypdf import PdfReader
    except ImportError:
        return None
    try:
        return [page.extract_text() or "" for page in PdfReader(str(pdf)).pages]
    except Exception:  # pypdf's errors have no common base; an unreadable draft only costs the page numbers
        return None


def number_headings(headings: list[Heading], pages: list[str], first_body_page: int = 3) -> int:
    """Set each heading's page from the PDF's text (searched in order from the body's first page); the count found."""
    # NFKC: pypdf reads some CJK glyphs as their Kangxi radicals (U+2F00 for 一), pdftotext as the ideographs
    squash = lambda s: re.sub(r"\s+", "", unicodedata.normalize("NFKC", s))  # noqa: E731
    texts = [squash(p) for p in pages]
    page, found = first_body_page - 1, 0
    for h in headings:
        parts = [squash(part) for part in h.text.split("\u3000")]  # "A.3　+crop-flip": both on one page
        for i in range(page, len(texts)):
            if all(part in texts[i] for part in parts):
                h.page, page, found = i + 1, i, found + 1
                break
    return found


def build_submission(out: Path, student: Student, profile: str, notebooks_dir: Path, params: dict[str, dict],
                     pdf: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Write out/submission.html (and .pdf with headless Chromium); the paths written."""
    from ..core.engine import git_commit
    from .publish import PRINT_FROM_BROWSER, chromium_pdf, find_browser

    nb, doc = build_notebook(out, student, profile, notebooks_dir, params, git_commit() or "")
    html_path, pdf_path = out / f"{SUBMISSION_NAME}.html", out / f"{SUBMISSION_NAME}.pdf"
    render_html(nb, html_path, notebooks_dir, doc.headings, doc.check)
    made = [html_path]
    if not pdf:
        return made
    browser = find_browser()
    if browser is None:
        log(f"submission: {PRINT_FROM_BROWSER}")
        return made
    with tempfile.TemporaryDirectory(prefix="cvlab-submission-") as tmp:
        draft = Path(tmp) / "draft.pdf"
        note = chromium_pdf(browser, html_path, draft)
        if note:
            log(f"submission: PDF not made: {note}")
            return made
        pages = pdf_pages_text(draft)
        if pages is None:
            log("submission: contents without page numbers (neither pdftotext nor pypdf: pip install pypdf)")
            shutil.copyfile(draft, pdf_path)
        else:
            number_headings(doc.headings, pages)
            render_html(nb, html_path, notebooks_dir, doc.headings, doc.check)
            note = chromium_pdf(browser, html_path, pdf_path)
            if note:
                log(f"submission: PDF not made: {note}")
                return made
    made.append(pdf_path)
    return made
