"""The report: notebooks committed clean, profiles, parameters, kernel, HTML/PDF export, and the smoke
profile end to end (every notebooks/0*.ipynb present, synthetic data, CPU) through the command line."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

nbformat = pytest.importorskip("nbformat")  # the report extras; a GPU image without them still collects `-m gpu`

from cvlab.coursework import baseline
from cvlab.report import plots, publish, runner, source, submission
from cvlab.core.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CONTRACT = {  # notebook -> parameters its cell must declare (HELPERS.md notebook contract)
    "01_baseline": {"PRESET", "EPOCHS", "BATCH_SIZE", "SUBSET", "RUN_DIR"},
    "02_theory": {"BUDGET", "BASELINE_RUN_DIR"},
    "03_improvements": {"BUDGET", "SEEDS", "RUNS_DIR"},
}
COMMON = {"DATA_ROOT", "DEVICE", "SYNTHETIC", "SEED"}  # every notebook; a profile also sets BUDGET (02, 03) here


# ---------------------------------------------------------------------------- notebooks as committed

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    assert "papermill" not in nb.metadata, f"{path.name} is an executed copy (papermill metadata)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_parameters_follow_the_contract(path):
    declared = runner.read_parameters(path)  # raises unless one cell of NAME = literal lines
    assert COMMON | CONTRACT.get(path.stem, set()) <= set(declared)


MAX_CELL_LINES = 45  # notebooks narrate and call cvlab; logic longer than this belongs in the package


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_hand_edited_source_that_calls_cvlab(path):
    """All three notebooks follow one convention: edited by hand, first code cell the parameters, short cells."""
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: the first code cell must be the parameters"
    long = [i for i, c in enumerate(code) if len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"{path.name}: code cells {long} exceed {MAX_CELL_LINES} lines; move the logic into cvlab"
    assert any("import cvlab" in c.source or "from cvlab" in c.source for c in code)


def test_baseline_notebook_is_present():
    assert (REPO / "notebooks" / "01_baseline.ipynb") in NOTEBOOKS


def test_profiles_give_every_contract_notebook_its_parameters():
    for name in ("smoke", "quick", "full"):
        profile = runner.load_profile(name)
        assert COMMON <= set(profile.common)
        for stem, keys in CONTRACT.items():
            assert keys <= set(profile.notebooks[stem]) | set(profile.common), (name, stem)
    smoke = runner.load_profile("smoke")
    assert smoke.common["SYNTHETIC"] is True and smoke.common["DEVICE"] == "cpu"
    assert runner.load_profile("full").common["SYNTHETIC"] is False
    quick = runner.load_profile("quick")  # real data at a CPU budget, the report's theory setting
    assert quick.common["SYNTHETIC"] is False and quick.common["DEVICE"] == "cpu"
    assert quick.common["BUDGET"] == "quick"   # one size vocabulary: notebook 02 at the report's setting, 03 at "quick"


def test_present_notebooks_declare_what_the_profiles_set():
    for name in ("smoke", "quick", "full"):
        warnings = []
        runner.resolve_parameters(NOTEBOOKS, runner.load_profile(name), [], warnings.append)
        assert not warnings


# ---------------------------------------------------------------------------- parameters

def _notebook(path: Path, params: str, markdown: str = "# 标题") -> Path:
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(markdown), cell])
    nbformat.write(nb, str(path))
    return path


def test_parameters_merge_profile_then_overrides(tmp_path):
    a = _notebook(tmp_path / "01_a.ipynb", 'DEVICE = "auto"  # a = b\nEPOCHS = 100\nSYNTHETIC = False\nLR = 0.1')
    b = _notebook(tmp_path / "02_b.ipynb", 'DEVICE = "auto"\nQUICK = True')
    profile = runner.Profile("t", "", {"DEVICE": "cpu", "SEED": 0}, {"01_a": {"EPOCHS": 2}, "02_b": {"QUICK": False}})
    got = runner.resolve_parameters([a, b], profile, [("SYNTHETIC", "true"), ("LR", "0.5"), ("02.DEVICE", "cuda")],
                                    lambda t: None)
    assert got[a] == {"DEVICE": "cpu", "EPOCHS": 2, "SYNTHETIC": True, "LR": 0.5}
    assert got[b] == {"DEVICE": "cuda", "QUICK": False}
    with pytest.raises(UsageError, match="no notebook declares NOPE"):
        runner.resolve_parameters([a, b], profile, [("NOPE", "1")], lambda t: None)
    with pytest.raises(UsageError, match="-p EPOCHS: epochs must be an integer"):
        runner.resolve_parameters([a], profile, [("EPOCHS", "three")], lambda t: None)
    with pytest.raises(UsageError, match=r"-p EPOCHS: epochs must be in \[1, 10000\]"):  # a Config field: its range too
        runner.resolve_parameters([a], profile, [("EPOCHS", "0")], lambda t: None)
    with pytest.raises(UsageError, match="-p LR: lr must be a finite number"):
        runner.resolve_parameters([a], profile, [("LR", "nan")], lambda t: None)
    with pytest.raises(UsageError, match="-p QUICK: QUICK must be true or false"):  # not a field: its default's type
        runner.resolve_parameters([b], profile, [("QUICK", "maybe")], lambda t: None)


def test_parameters_cell_must_hold_literals(tmp_path):
    bad = _notebook(tmp_path / "01_bad.ipynb", "import os\nX = os.getcwd()")
    with pytest.raises(UsageError, match="line 1 is not NAME = literal"):
        runner.read_parameters(bad)


def test_unknown_profile_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown profile"):
        runner.load_profile("nope")


# ---------------------------------------------------------------------------- kernel

def test_kernel_spec_detection():
    assert runner._runs_this_interpreter("python")
    assert runner._runs_this_interpreter(sys.executable)
    assert not runner._runs_this_interpreter("/nonexistent/bin/python9")


@pytest.mark.slow
def test_kernel_registered_when_none_runs_this_python(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(KernelSpecManager, "get_all_specs", lambda self: {})
    name = runner.ensure_kernel(log=lambda t: None)
    spec = json.loads((tmp_path / "kernels" / name / "kernel.json").read_text())
    assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve()


# ---------------------------------------------------------------------------- export

def test_html_export_is_offline_with_math_and_chinese(tmp_path):
    path = _notebook(tmp_path / "01_m.ipynb", "X = 1", "# 训练损失\n\n标准化 $x' = (x - \\mu) / \\sigma$\n\n$$\\frac{a}{b}$$")
    html = publish.export_html(path, tmp_path / "01_m.html", tmp_path, no_input=True).read_text(encoding="utf-8")
    assert "训练损失" in html and html.count("<math") == 2 and "\\frac" not in html
    assert "<script" not in html  # no require.js / MathJax / mermaid from a CDN
    assert "X = 1" not in html  # --no-input hides code


def test_pdf_missing_tools_are_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "find_browser", lambda: None)
    monkeypatch.setitem(sys.modules, "playwright", None)  # import fails
    path, note = publish.export_pdf(tmp_path / "x.html", tmp_path / "x.pdf", tmp_path / "x.ipynb")
    assert path is None and note == publish.PRINT_FROM_BROWSER and "\n" not in note
    assert all(word in note for word in ("Chrome or Edge", "Ctrl+P", "Headers and footers off", "CVLAB_CHROMIUM"))


def test_report_says_once_that_it_makes_no_pdf_and_no_chinese_figures(monkeypatch):
    """No Chromium and no CJK font (a ModelArts user without root): one line each, and no PDF attempted."""
    monkeypatch.setattr(runner, "pdf_route", lambda: None)
    monkeypatch.setattr(plots, "_cjk", [None])  # looked up already: none found
    lines: list[str] = []
    assert runner.say_missing_tools(True, lines.append) is False
    assert lines == [plots.CJK_HINT, publish.PRINT_FROM_BROWSER]
    monkeypatch.setattr(runner, "pdf_route", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(plots, "_cjk", ["Noto Sans CJK SC"])
    lines.clear()
    assert runner.say_missing_tools(True, lines.append) is True and lines == []
    assert runner.say_missing_tools(False, lines.append) is False and lines == []  # --no-pdf: nothing to say


# ---------------------------------------------------------------------------- baseline helpers and plots

def _history(test_losses):
    n = len(test_losses)
    return pd.DataFrame({"epoch": range(1, n + 1), "train_loss": [4.0 - 0.3 * i for i in range(n)],
                         "train_acc": [0.1 * (i + 1) for i in range(n)], "test_loss": test_losses,
                         "test_acc": [0.05 * (i + 1) for i in range(n)], "test_top5": [0.2] * n, "lr": [1e-4] * n,
                         "epoch_seconds": [1.0] * n, "images_per_second": [100.0] * n})


def test_curve_summary_finds_where_test_loss_turns_up():
    up = baseline.curve_summary(_history([4.0, 3.0, 2.5, 2.9]))
    assert up["turned_up"] and up["min_test_loss_epoch"] == 3 and up["test_loss_rise"] == pytest.approx(0.4)
    down = baseline.curve_summary(_history([4.0, 3.0, 2.5]))
    assert not down["turned_up"] and down["min_test_loss_epoch"] == 3
    flat = baseline.curve_summary(_history([4.0, 3.0, 3.001]))
    assert not flat["turned_up"]


def _run_dir(tmp_path, synthetic: bool, test_losses) -> Path:
    from cvlab.core.config import make_config
    from cvlab.core.runs import write_history, write_json

    path = tmp_path / ("syn" if synthetic else "real")
    path.mkdir()
    write_json(path / "config.json", make_config("handout", synthetic=synthetic, epochs=len(test_losses)).to_dict())
    write_history(path / "history.csv", _history(test_losses).to_dict("records"))
    write_json(path / "metrics.json", {"dataset": {"synthetic": synthetic, "n_train": 300, "n_test": 200,
                                                   "subset": 300}, "device": "cpu", "epochs_done": len(test_losses)})
    return path


def test_discussion_and_figures_are_labelled_synthetic(tmp_path):
    from cvlab.core.runs import load_run

    syn = load_run(_run_dir(tmp_path, True, [4.0, 3.0, 2.5, 2.9]))
    text = baseline.discussion_zh(syn)
    assert "SYNTHETIC" in text and "第 3 个 epoch 最低（2.500）" in text and "过拟合" in text
    fig = plots.loss_curves(syn)
    assert any(t.get_text() == "SYNTHETIC" for t in fig.texts)
    out = plots.save_figure(fig, tmp_path / "figs" / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bn = {"images": 300, "train_mode_acc": 0.8, "eval_mode_acc": 0.02}
    assert "BN 的 running 统计量还没跟上" in baseline.discussion_zh(syn, bn)
    assert "泛化差距" in baseline.discussion_zh(syn, {**bn, "eval_mode_acc": 0.75})
    real = load_run(_run_dir(tmp_path, False, [4.0, 3.0]))
    assert "SYNTHETIC" not in baseline.discussion_zh(real)
    assert not any("SYNTHETIC" in t.get_text() for t in plots.accuracy_curves(real).texts)


@pytest.mark.parametrize("drawn", [False, True])
def test_a_wide_figure_prints_its_tick_labels_and_legends_legibly(drawn):
    """legible_in_print sizes every text of a figure twice the page's width for print: tick labels (whose text is
    empty until the figure is drawn), a figure-level legend below the panels and a legend inside a panel; a
    figure already drawn (shown in a notebook) gets the same sizes, not twice the enlargement."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    fig = Figure(figsize=(2 * plots.PRINT_WIDTH_IN, 3), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot([1, 2, 3], [3, 1, 2], label="inside")
    inside = left.legend()
    right.semilogx([1, 10, 100], [1, 2, 3], label="below")
    below = fig.legend(loc="outside lower center")
    right.set_title("title")
    FigureCanvasAgg(fig)
    if drawn:
        fig.draw_without_rendering()
    plots.legible_in_print(fig)
    fig.draw_without_rendering()
    printed = lambda texts: {round(t.get_fontsize() / 2, 6) for t in texts if t.get_text()}  # noqa: E731
    ticks = [t for a in fig.axes for axis in (a.xaxis, a.yaxis) for t in axis.get_ticklabels(which="both")]
    assert printed(ticks) == {plots.MIN_PRINTED_PT}
    assert printed(below.get_texts()) == {plots.MIN_PRINTED_PT} and printed(inside.get_texts()) == {plots.MIN_LEGEND_PT}
    assert inside.get_frame().get_alpha() == 0.9
    assert min(printed(fig.findobj(Text))) >= plots.MIN_LEGEND_PT


@pytest.fixture
def fonts(monkeypatch, tmp_path):
    """matplotlib's font list as a copy the test may change (restored after), no CJK font found yet, no user
    font folder but the test's own: $CVLAB_FONTS unset, HOME and the repository's fonts/ in tmp_path, no mplfonts."""
    import importlib.util

    from matplotlib import font_manager, rcParams

    manager = font_manager.fontManager
    monkeypatch.setattr(manager, "ttflist", list(manager.ttflist))
    monkeypatch.setattr(plots, "_cjk", [])
    monkeypatch.setitem(rcParams, "font.sans-serif", list(rcParams["font.sans-serif"]))
    monkeypatch.delenv(plots.FONTS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(plots, "REPO_ROOT", tmp_path / "repo")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mplfonts" else real_find_spec(name, *a))
    yield manager
    manager._findfont_cached.cache_clear()  # no lookup may keep pointing at the test's files


def _dejavu() -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _cjk_font_file() -> Path | None:
    """A font file with Chinese glyphs on this machine (system fonts, or mplfonts' Noto Sans CJK), None without."""
    import importlib.util

    from matplotlib import font_manager

    candidates = [Path(p) for p in font_manager.findSystemFonts()]
    spec = importlib.util.find_spec("mplfonts")
    if spec is not None and spec.submodule_search_locations:
        candidates += sorted(Path(spec.submodule_search_locations[0], "fonts").glob("*.otf"))
    keys = ("notosanscjk", "sourcehansans", "wqy", "simhei", "droidsansfallback")
    return next((p for p in candidates if any(k in p.name.lower() for k in keys) and plots.covers_chinese(p)), None)


def test_fonts_in_the_documented_folders_are_registered_with_matplotlib(fonts, tmp_path, monkeypatch):
    folder = tmp_path / "my fonts"
    (folder / "sub").mkdir(parents=True)
    copy = folder / "sub" / "Copied-DejaVu.ttf"
    shutil.copyfile(_dejavu(), copy)
    (folder / "broken.ttf").write_bytes(b"not a font")
    (folder / "notes.txt").write_text("not a font either")
    monkeypatch.setenv(plots.FONTS_ENV, f"{folder}{os.pathsep}{tmp_path / 'missing'}")
    dirs = plots.font_dirs()
    assert dirs[:2] == [folder, tmp_path / "missing"]
    assert tmp_path / "home" / ".local" / "share" / "fonts" in dirs and tmp_path / "repo" / "fonts" in dirs
    assert plots.register_fonts(dirs) == [copy]  # the broken file and the text file are skipped
    assert str(copy) in {f.fname for f in fonts.ttflist}
    assert plots.register_fonts(dirs) == []  # once only
    assert not plots.covers_chinese(copy) and plots.chinese_family([copy]) is None


def test_mplfonts_fonts_folder_is_one_of_the_font_folders(fonts, tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.ModuleSpec("mplfonts", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "site" / "mplfonts")]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "mplfonts" else None)
    assert plots.font_dirs()[-1] == tmp_path / "site" / "mplfonts" / "fonts"


def test_a_cjk_font_the_user_adds_without_root_makes_the_figures_chinese(fonts, tmp_path, monkeypatch):
    """The font is nowhere matplotlib looks by itself: only in $CVLAB_FONTS, under a name of the user's choosing."""
    import warnings

    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    source = _cjk_font_file()
    if source is None:
        pytest.skip("no font with Chinese glyphs here (Debian: fonts-noto-cjk; or pip install mplfonts)")
    fonts.ttflist[:] = [f for f in fonts.ttflist if f.name not in plots.CJK_FONTS and Path(f.fname) != source]
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    folder = tmp_path / "fonts"
    folder.mkdir()
    (folder / f"my-chinese-font{source.suffix}").symlink_to(source)
    said: list[str] = []
    assert plots.cjk_font(say=said.append) is None and len(said) == 1  # not there yet: English, said once
    monkeypatch.setattr(plots, "_cjk", [])
    monkeypatch.setenv(plots.FONTS_ENV, str(folder))
    found = plots.cjk_font(say=said.append)
    assert found is not None and len(said) == 1 and plots.zh("训练损失", "train loss") == "训练损失"
    fig, ax = plt.subplots()
    ax.set_title("训练损失与测试损失随 epoch 的变化")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig.canvas.draw()
    plt.close(fig)


def test_without_a_cjk_font_figures_are_english_and_one_line_says_how_to_get_chinese(fonts, monkeypatch):
    from matplotlib import font_manager

    fonts.ttflist[:] = [f for f in fonts.ttflist if not any(k in Path(f.fname).name.lower() for k in plots.CJK_FILES)
                        and f.name not in plots.CJK_FONTS and "CJK" not in f.name]
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    said: list[str] = []
    assert plots.cjk_font(say=said.append) is None
    assert plots.zh("训练损失", "train loss") == "train loss" and len(said) == 1  # said once, not per figure
    assert "pip install mplfonts" in said[0] and "fonts" in said[0] and "root" in said[0]
    assert "pip install mplfonts" in plots.CJK_HINT and "\n" not in plots.CJK_HINT


def test_handout_lambda_block_does_not_pickle_but_cvlab_does():
    table = baseline.pickle_table()
    assert table.iloc[0]["pickle.dumps"].startswith(("AttributeError", "PicklingError", "TypeError"))
    assert all(v.startswith("ok") for v in table.iloc[1:]["pickle.dumps"])
    assert all(v.startswith("ok") for v in table.iloc[1:]["torch.save"])


def test_normalization_table_and_stem_sensitivity():
    images = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    images[:, :, :16] = 0
    table = baseline.normalization_table(images)
    mean = table.loc["R", "data_mean"]
    assert table.loc["R", "after_handout_mean"] == pytest.approx((mean - 0.1307) / 0.3081, abs=1e-3)
    from cvlab.core.models import build_model
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    change = baseline.stem_sensitivity(build_model("handout_resnet18"), noise).iloc[:, 0]
    assert change.iloc[0] < 0.005  # a shift/scale shared by all channels is absorbed by the first BN
    assert change.iloc[1] > change.iloc[0]  # per-channel constants are not one affine map: a small change


# ---------------------------------------------------------------------------- the report end to end

def _report(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvlab", "report", "--notebooks", str(tmp_path / "notebooks"),
                           "--no-pdf", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


GENERATED = {"notebooks", "runs", "reports", "figures", "data", ".git"}
STUDENT = {"name": "张三", "id": "2023012345", "class": "计科2101"}
SUBMISSION_ARGS = ("--submission", "--student-name", STUDENT["name"], "--student-id", STUDENT["id"],
                   "--student-class", STUDENT["class"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`cvlab report --profile smoke` on a copy of notebooks/ in a mirror of the repository (the
    other top-level entries, e.g. answers/, linked), so runs, figures and reports land in tmp."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    for entry in REPO.iterdir():
        if entry.name not in GENERATED:
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    done = _report(root, "--profile", "smoke", *SUBMISSION_ARGS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_smoke_report_runs_every_notebook_without_errors(smoke):
    out = smoke / "reports" / "smoke"
    manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [n["notebook"] for n in manifest["notebooks"]] == [p.name for p in NOTEBOOKS]
    assert all(n["status"] == "ok" for n in manifest["notebooks"])
    for path in NOTEBOOKS:
        nb = nbformat.read(str(out / path.name), as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
        assert (out / path.name).with_suffix(".html").is_file()


@pytest.mark.slow
def test_smoke_report_tables_have_chinese_headers(smoke):
    """Every table a submitted cell shows goes through tables.zh: no English column name of cvlab's is left."""
    from cvlab.report import tables

    english = {k for k, v in tables.COLUMNS_ZH.items() if k != v}
    for path in NOTEBOOKS:
        nb = nbformat.read(str(smoke / "reports" / "smoke" / path.name), as_version=4)
        shown = [c for c in nb.cells if c.cell_type == "code" and "notebook-only" not in c.metadata.get("tags", [])]
        headers = {h for c in shown for o in c.outputs if "text/html" in o.get("data", {})
                   for h in re.findall(r"<th[^>]*>([^<]*)</th>", o["data"]["text/html"])}
        assert headers, f"{path.name}: no table shown"
        assert not headers & english, f"{path.name}: English table headers {sorted(headers & english)}"


@pytest.mark.slow
def test_smoke_baseline_run_dir_and_figures(smoke):
    run = smoke / "runs" / "smoke" / "01_baseline"
    history = pd.read_csv(run / "history.csv")
    assert len(history) == runner.load_profile("smoke").notebooks["01_baseline"]["EPOCHS"]
    assert json.loads((run / "metrics.json").read_text())["dataset"]["synthetic"] is True
    for name in ("01_samples.png", "01_baseline_loss.png", "01_baseline_accuracy.png"):
        assert (smoke / "figures" / name).stat().st_size > 10_000


@pytest.mark.slow
def test_smoke_html_has_chinese_headings_and_the_loss_curve_embedded(smoke):
    html = (smoke / "reports" / "smoke" / "01_baseline.html").read_text(encoding="utf-8")
    for heading in ("任务与数据", "逐层输出形状", "讲义代码的问题", "训练损失与测试损失曲线", "讨论"):
        assert heading in html
    loss_png = base64.b64encode((smoke / "figures" / "01_baseline_loss.png").read_bytes()).decode()
    assert f"data:image/png;base64,{loss_png}" in html
    assert "<script" not in html and "<math" in html
    assert "合成数据（SYNTHETIC" in html  # the discussion says the numbers are synthetic


@pytest.mark.slow
def test_pdf_export_with_chromium(smoke, tmp_path):
    if publish.find_browser() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    html = smoke / "reports" / "smoke" / "01_baseline.html"
    path, note = publish.export_pdf(html, tmp_path / "01.pdf", html.with_suffix(".ipynb"))
    assert path is not None, note
    assert path.read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_failing_notebook_exits_nonzero_naming_cell_and_error(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    path = _notebook(folder / "01_fails.ipynb", "STEPS = 2")
    nb = nbformat.read(str(path), as_version=4)
    nb.cells += [nbformat.v4.new_code_cell("print('setup')"),
                 nbformat.v4.new_code_cell("if STEPS <= 0:\n    raise ValueError(f'STEPS must be positive, got {STEPS}')"),
                 nbformat.v4.new_code_cell("print('never reached')")]
    nbformat.write(nb, str(path))
    # STEPS is not a Config field: only the notebook itself can refuse -1 (EPOCHS -1 is refused before running)
    done = _report(tmp_path, "--profile", "smoke", "-p", "STEPS", "-1")
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and err.startswith("cvlab: error: "), done.stderr
    assert "01_fails.ipynb failed in cell In [4]" in err  # parameters, injected parameters, setup, then this
    assert "ValueError: STEPS must be positive, got -1" in err
    partial = nbformat.read(str(tmp_path / "reports" / "smoke" / "01_fails.ipynb"), as_version=4)
    assert [c.execution_count for c in partial.cells if c.cell_type == "code"][-1] is None  # kept, stopped there
    manifest = json.loads((tmp_path / "reports" / "smoke" / "report.json").read_text(encoding="utf-8"))
    assert manifest["notebooks"][0]["status"] == "failed"


@pytest.mark.slow
def test_bad_parameter_type_is_a_usage_error(smoke):
    done = _report(smoke, "--profile", "smoke", "-p", "EPOCHS", "three")
    assert done.returncode == 2 and "must be an integer" in done.stderr


@pytest.mark.slow
def test_theory_notebook_runs_without_cifar100(smoke, tmp_path):
    """Q2, Q5 and Q6 need no data: notebook 02 still runs them and says what to do for Q1, Q3 and Q4."""
    out = tmp_path / "out"
    done = _report(smoke, "--profile", "smoke", "--only", "02", "--no-estimate", "-p", "SYNTHETIC", "false",
                   "-p", "DATA_ROOT", str(tmp_path / "empty"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    nb = nbformat.read(str(out / "02_theory.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "没有在" in text and "找到 CIFAR-100" in text
    rendered = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if "text/markdown" in o.get("data", {})]
    assert len([r for r in rendered if r.startswith("### (")]) == 6        # all six answers are shown
    q5 = next(r for r in rendered if r.startswith("### (5)"))
    assert "〔本次未计算〕" not in q5 and "{{" not in q5


TRAIN_CELL = """from pathlib import Path
from cvlab.core.config import make_config
from cvlab.core.engine import fit
cfg = make_config("handout", model="tiny_resnet18", synthetic=True, synthetic_train=300, synthetic_test=100,
                  epochs=EPOCHS, batch_size=50, eval_batch_size=100, lr=1e-3, shuffle=True, normalization="cifar100",
                  device="cpu", progress=False, download=False)
fit(cfg, RUN_DIR, resume=(Path(RUN_DIR) / "last.pt").exists())
print("trained")"""


@pytest.mark.slow
def test_sigterm_stops_a_training_notebook_cleanly_and_the_same_command_resumes_it(tmp_path):
    """The kernel runs in a process group of its own: the report passes SIGTERM on to it, `fit` in the cell
    stops as in a terminal, papermill keeps the partial notebook, and the report says how to continue."""
    import signal
    from conftest import signal_mid_epoch
    from cvlab.core.runs import RunDir, load_run

    folder, run, out = tmp_path / "notebooks", tmp_path / "run", tmp_path / "reports"
    folder.mkdir()
    path = _notebook(folder / "01_train.ipynb", f"EPOCHS = 2\nRUN_DIR = {str(run)!r}")
    nb = nbformat.read(str(path), as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(TRAIN_CELL), nbformat.v4.new_code_cell("print('after training')")]
    nbformat.write(nb, str(path))
    args = ["report", "--notebooks", folder, "--no-pdf", "--no-estimate", "--profile", "smoke", "--out", out]
    code, stdout, stderr = signal_mid_epoch(tmp_path, [sys.executable, "-m", "cvlab", *args], signal.SIGTERM,
                                            at_step=6 + 3)  # epoch 2, step 3, in the kernel (cell In [2])
    assert code == 143, (stdout, stderr)
    assert stderr[-1] == (f"cvlab: 01_train.ipynb stopped by SIGTERM in cell In [2]; partial notebook kept at "
                          f"{out / '01_train.ipynb'}; run the same command again to continue (each training run "
                          "resumes from its last finished epoch)"), stderr
    assert "Traceback" not in "\n".join(stderr)
    partial = nbformat.read(str(out / "01_train.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in partial.cells if c.cell_type == "code" for o in c.outputs)
    assert f"interrupted by SIGTERM after epoch 1; continue with: python -m cvlab train --resume --out {run}" in text
    assert "trained" not in text and "after training" not in text
    assert RunDir(run).status() == "interrupted" and not (run / "run.lock").exists()
    manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert manifest["notebooks"][0]["status"] == "interrupted"
    done = subprocess.run([sys.executable, "-m", "cvlab", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = load_run(run)
    assert resumed.metrics["status"] == "complete" and list(resumed.history.epoch) == [1, 2]


@pytest.mark.slow
def test_sigterm_during_a_cell_that_does_not_train_ends_the_report_at_once(tmp_path):
    """A SIGTERM that ends the kernel outright (a cell that sleeps: nothing there turns it into an interrupt)
    ends the report with 143 within seconds, the partial notebook kept and report.json saying interrupted
    (the report used to wait forever on the kernel's zombie)."""
    import os
    import signal
    import time

    folder, out, ready = tmp_path / "notebooks", tmp_path / "reports", tmp_path / "ready"
    folder.mkdir()
    path = _notebook(folder / "01_sleep.ipynb", "EPOCHS = 1")
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\n"
                                              "time.sleep(300)"))
    nbformat.write(nb, str(path))
    child = subprocess.Popen([sys.executable, "-m", "cvlab", "report", "--notebooks", str(folder), "--no-pdf",
                              "--no-estimate", "--profile", "smoke", "--out", str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)  # hung forever before
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert child.returncode == 143, stderr
    assert lines[-1].startswith("cvlab: 01_sleep.ipynb stopped by SIGTERM") and "Traceback" not in stderr, stderr
    assert not [line for line in lines if "Kernel died" in line], stderr
    manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert manifest["notebooks"][0]["status"] == "interrupted"
    nbformat.read(str(out / "01_sleep.ipynb"), as_version=4)  # the partial notebook is whole


@pytest.mark.slow
def test_a_disk_that_fills_while_a_notebook_runs_ends_the_report_with_one_line(tmp_path, small_disk):
    """The executed notebook is saved after every cell: on a full disk the report ends with one line naming
    the file (exit 2, no traceback), the last whole save stays valid JSON, and no temp file is left."""
    folder, out = tmp_path / "notebooks", small_disk.path / "reports"
    folder.mkdir()
    path = _notebook(folder / "01_big.ipynb", "EPOCHS = 1")
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('x' * 400_000)"))  # more than the disk has left
    nbformat.write(nb, str(path))
    out.mkdir()
    small_disk.fill(leave=64 * 1024)
    done = _report(tmp_path, "--no-estimate", "--profile", "smoke", "--out", str(out))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith(f"cvlab: error: cannot write {out / '01_big.ipynb'} (no space left on device) "
                                "while 01_big.ipynb ran; its last whole save is kept"), lines[-1]
    kept = nbformat.read(str(out / "01_big.ipynb"), as_version=4)  # whole JSON, saved before the big cell
    assert "x" * 1000 not in json.dumps(kept)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- the submission document

CHAPTERS = ("一、实验目的", "二、实验内容", "三、实验步骤与结果", "四、问题解答", "五、改进方法与结果", "六、结论", "附录 A")
NOT_FOR_GRADERS = ("Traceback", "Warning", "KeyboardInterrupt", "IPKernelApp")


def _visible_text(html: str) -> str:
    import re
    from html import unescape
    html = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.slow
def test_submission_document_has_cover_contents_chapters_and_appendix(smoke):
    from cvlab.core.config import LADDER, PARENT

    html = (smoke / "reports" / "smoke" / "submission.html").read_text(encoding="utf-8")
    text = _visible_text(html)
    for value in (*STUDENT.values(), submission.COURSE, submission.PROJECT, submission.TITLE):
        assert value in text, value
    assert "目　录" in text and all(f'href="#{a}"' in html for a in ("aims", "chapter-01", "conclusion", "appendix"))
    for chapter in CHAPTERS:
        assert text.count(chapter) >= 2, chapter  # in the contents and as a heading
    assert "问题解答" in text and all(f"({i})" in text for i in range(1, 7))  # Q1-Q6 in chapter 4
    rungs = [n for n in LADDER if n in PARENT and n not in ("fast", "best")]
    for name in rungs:
        assert f'_derive("{name}"' in text, name
        for obj in source.rung_objects(name):
            assert obj.__qualname__.split(".")[-1] in text, (name, obj.__qualname__)
    assert "ResNet_18 = torch.nn.Sequential(" in html and "def handout_resnet18" in html  # side by side
    assert "cvlab/core/config.py:" in text and "来源：" in text and "合成数据 SYNTHETIC" in text
    assert html.count('class="provenance"') == 3  # one line per chapter (三, 四, 五); the details in appendix B
    assert "附录 B" in text and "流程检查" in text  # a smoke document says it is a pipeline check
    for leftover in ("本 notebook", "python -m cvlab", "/tmp/", "第 02 章", "第 03 章", "本次的数字与提交的结果",
                     "DATA_ROOT=", "epoch train_loss"):  # how-to, CLI, machine paths, notebook numbering, raw logs
        assert leftover not in text, leftover
    assert not [w for w in NOT_FOR_GRADERS if w in text]
    assert "<script" not in html and 'src="http' not in html  # offline


@pytest.mark.slow
def test_submission_pdf_is_a4_with_page_numbers_in_the_contents(smoke, tmp_path):
    if publish.find_browser() is None or shutil.which("pdftotext") is None:
        pytest.skip("needs Chromium and pdftotext (apt-get install chromium poppler-utils)")
    out = smoke / "reports" / "smoke"
    manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
    params = {Path(n["notebook"]).stem: n["parameters"] for n in manifest["notebooks"]}
    student = submission.Student(STUDENT["name"], STUDENT["id"], STUDENT["class"], "2026-01-01")
    made = submission.build_submission(out, student, "smoke", smoke / "notebooks", params, pdf=True, log=lambda _: None)
    pdf = out / "submission.pdf"
    assert pdf in made and pdf.read_bytes()[:5] == b"%PDF-"
    pages = submission.pdf_pages_text(pdf)
    assert STUDENT["name"] in pages[0] and STUDENT["id"] in pages[0]
    contents = pages[1]
    import re
    assert all(chapter in contents for chapter in CHAPTERS)
    numbers = [int(n) for n in re.findall(r"^\s*(\d+)\s*$", contents, re.M)]  # the page numbers, one a line
    assert len(numbers) >= len(CHAPTERS) and numbers[0] == 3 and numbers == sorted(numbers) and numbers[-1] <= len(pages)
    assert not [w for page in pages for w in NOT_FOR_GRADERS if w in page]
    assert "流程检查" in pages[0] and all("流程检查" in page for page in pages[1:] if page.strip())  # every page
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
    assert "(A4)" in info or not shutil.which("pdfinfo")


def _wide_tables(html_path: Path, browser: str, tmp: Path, width_mm: int = 186) -> list:
    """Tables wider than an A4 page's printable width, measured by headless Chromium on the print layout."""
    import re
    script = ("<script>document.addEventListener('DOMContentLoaded', () => {"
              " const right = document.body.getBoundingClientRect().right; const wide = [];"
              " document.querySelectorAll('table').forEach((t) => { const r = t.getBoundingClientRect();"
              "  if (r.right > right + 1) wide.push((t.textContent || '').trim().slice(0, 50)); });"
              " const out = document.createElement('pre'); out.id = 'cvlab-wide'; out.textContent = JSON.stringify(wide);"
              " document.body.appendChild(out); });</script>")
    page = html_path.read_text(encoding="utf-8").replace("@media print", "@media all").replace(
        "</head>", f"<style>body {{ width: {width_mm}mm !important; margin: 0 !important; padding: 0 !important; }}"
                   f"</style>{script}</head>", 1)
    copy = tmp / html_path.name
    copy.write_text(page, encoding="utf-8")
    done = subprocess.run([browser, *publish.headless_browser_args(str(tmp / "profile")), "--window-size=1200,900",
                           "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=300)
    found = re.search(r'<pre id="cvlab-wide">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-500:]
    import html as html_lib
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.slow
def test_no_table_is_wider_than_an_a4_page(smoke, tmp_path):
    browser = publish.find_browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    out = smoke / "reports" / "smoke"
    for html in sorted(out.glob("*.html")):
        assert _wide_tables(html, browser, tmp_path) == [], html.name


def test_table_font_shrinks_wide_tables_and_never_breaks_words_when_avoidable():
    narrow = [["epoch", "loss"], ["1", "4.6"]]
    assert publish.table_font(narrow) == (publish.TABLE_DEFAULT_EM, False)
    wide = [[f"column_name_{i}" for i in range(6)], [f"{i}.123456" for i in range(6)]]
    em, tight = publish.table_font(wide)
    assert publish.TABLE_MIN_EM <= em < publish.TABLE_DEFAULT_EM and not tight
    assert publish.table_font([[f"a_very_long_column_name_{i}" for i in range(20)]])[1]  # last resort


def test_submission_needs_name_and_id_from_options_or_the_student_file(tmp_path):
    with pytest.raises(UsageError, match="--student-name"):
        submission.resolve_student(None, "1", None, None)
    file = tmp_path / "student.yaml"
    file.write_text("name: 李四\nid: '007'\nclass: 计科\n", encoding="utf-8")
    student = submission.resolve_student(None, None, None, file)
    assert (student.name, student.student_id, student.class_name) == ("李四", "007", "计科") and student.date
    assert submission.resolve_student("王五", None, None, file).name == "王五"  # options override the file


@pytest.mark.parametrize("field", ["name", "id", "class"])
@pytest.mark.parametrize("value", ["计科\n\n<a href='javascript:alert(1)'>x</a>", "张\r三", "张\x00三", "a\tb",
                                   "张\u202e三", "张\u2028三", "张" * 101],
                         ids=["blank-line", "cr", "nul", "tab", "bidi-override", "line-separator", "101-chars"])
def test_submission_fields_are_one_line_of_plain_text_of_bounded_length(tmp_path, field, value):
    """A newline (a blank line ends the cover's HTML block, so the rest became live markup), another control
    or format character, or more than 100 characters is refused with one line naming the field; the same
    from the student file."""
    options = {"name": "张三", "id": "2023012345", "class": "计科2101", field: value}
    with pytest.raises(UsageError) as caught:
        submission.resolve_student(options["name"], options["id"], options["class"], None)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--student-{field} "), message
    file = tmp_path / "student.yaml"
    file.write_text(json.dumps(options, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    with pytest.raises(UsageError, match=f"student.yaml {field}: "):
        submission.resolve_student(None, None, None, file)
    ok = submission.resolve_student(" 张三 ", "2023012345", "计科 2101 班", None)  # inner spaces are plain text
    assert (ok.name, ok.class_name) == ("张三", "计科 2101 班")


def test_headings_demoted_outside_code_and_found_in_page_text():
    text = "## 3. 讲义代码的问题\n```python\n# 获取测试集\n```\n### 3.1 标准化"
    assert submission.demote_headings(text) == "### 3. 讲义代码的问题\n```python\n# 获取测试集\n```\n#### 3.1 标准化"
    headings = [submission.Heading("a", "一、实验目的"), submission.Heading("b", "A.2\u3000+crop-flip", 2)]
    pages = ["cover", "目录 一、实验目的 A.2 +crop-flip", "一、实验目的", "x", "A.2\n中间\n+crop-flip"]
    assert submission.number_headings(headings, pages) == 2 and [h.page for h in headings] == [3, 5]


def test_contents_numbers_match_headings_read_as_kangxi_radicals():
    """pypdf reads some glyphs of Noto Sans CJK as Kangxi radicals (⼀ U+2F00 for 一, ⽬ for 目): still the same heading."""
    headings = [submission.Heading("a", "一、实验目的"), submission.Heading("b", "附录 A\u3000源代码")]
    pages = ["cover", "contents", "3 / 9\n⼀、实验⽬的\n1. 了解", "4 / 9\n附录  A \u2003源代码"]
    assert submission.number_headings(headings, pages) == 2 and [h.page for h in headings] == [3, 4]


def test_contents_page_numbers_come_from_pypdf_where_pdftotext_is_missing(tmp_path, monkeypatch):
    pytest.importorskip("pypdf")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    pdf = tmp_path / "draft.pdf"
    with PdfPages(pdf) as pages:
        for text in ("cover", "contents", "Heading Alpha", "more text", "Heading Beta"):
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.1, 0.9, text)
            pages.savefig(fig)
            plt.close(fig)
    real_which = shutil.which
    monkeypatch.setattr(submission.shutil, "which", lambda name, *a, **k: None if name == "pdftotext" else real_which(name))
    texts = submission.pdf_pages_text(pdf)
    assert texts is not None and len(texts) == 5
    headings = [submission.Heading("a", "Heading Alpha"), submission.Heading("b", "Heading Beta")]
    assert submission.number_headings(headings, texts) == 2 and [h.page for h in headings] == [3, 5]
    monkeypatch.setitem(sys.modules, "pypdf", None)  # neither tool: no numbers, no error
    assert submission.pdf_pages_text(pdf) is None


# ---------------------------------------------------------------------------- live feedback in a notebook run by hand

@pytest.mark.slow
def test_interactive_cpu_run_stops_a_long_training_and_says_what_to_change(monkeypatch):
    from cvlab.core.config import make_config
    from cvlab.report import notebook

    monkeypatch.setattr(notebook, "interactive", lambda: True)
    with pytest.raises(notebook.LongRun, match="EPOCHS = 3") as stopped:
        notebook.live_training(make_config("handout", device="cpu"))   # the handout's 100 epochs on a CPU
    assert "confirm=True" in stopped.value._render_traceback_()[0]
    small = make_config("handout", device="cpu", epochs=1, subset=200, test_subset=100, synthetic=True, progress=False)
    live = notebook.live_training(small)
    assert live.cfg.progress and live.on_epoch_end is not None and live.on_step is not None


def test_report_kernels_are_not_interactive(monkeypatch):
    from cvlab.report import notebook

    monkeypatch.setenv(notebook.REPORT_ENV, "1")
    live = notebook.live_training(object())  # not even looked at under `cvlab report`
    assert live.on_epoch_end is None and live.on_step is None


def test_stylesheets_are_css_files_shipped_with_the_package():
    import re

    import nbformat

    from cvlab.report import publish

    # the package-data line of pyproject.toml (read as text: tomllib is Python 3.11+, cvlab supports 3.9)
    data = re.search(r'^"cvlab\.report" = \[(.*)\]$', (REPO / "pyproject.toml").read_text(), re.M)
    assert data and '"*.css"' in data.group(1)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 标题")])
    body, _ = publish.offline_html_exporter(True, extra_css=publish.stylesheet("submission.css")).from_notebook_node(nb)
    for name in ("publish.css", "submission.css"):
        rules = publish.stylesheet(name)
        assert "@media print" in rules and rules.split("*/", 1)[1].strip()[:60] in body, name


def test_the_report_says_how_much_disk_its_runs_take_and_how_to_free_it(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    run = tmp_path / "runs" / "smoke" / "01_baseline"
    ladder = tmp_path / "runs" / "smoke" / "03_improvements" / "smoke" / "handout-s0"
    for folder in (run, ladder):
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"x" * 3 * 2**20)
        (folder / "history.csv").write_bytes(b"y" * 2**20)
    params = [{"RUN_DIR": "../runs/smoke/01_baseline"}, {"BASELINE_RUN_DIR": "../runs/smoke/01_baseline"},
              {"RUNS_DIR": "../runs/smoke/03_improvements", "DATA_ROOT": ""}]
    folders = runner.run_folders(params, notebooks)
    assert folders == [run.resolve(), (tmp_path / "runs" / "smoke" / "03_improvements").resolve()]
    line = runner.disk_use_line(folders)
    assert "8 MB" in line and "6 MB of it checkpoints" in line and "delete the folder" in line
    assert runner.disk_use_line([]) == ""


@pytest.mark.slow
def test_a_headless_cpu_run_stops_cleanly_and_keeps_the_message(tmp_path, monkeypatch):
    """`jupyter nbconvert --execute` (nbclient, no stdin) of a notebook whose training would be long on the CPU:
    no error, the stop message in the cell's output, the cells below skipped."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("CVLAB_REPORT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from cvlab.core.config import make_config\nfrom cvlab.report import notebook\n"
                                  "live = notebook.live_training(make_config('handout', device='cpu'))"),
        nbformat.v4.new_code_cell("raise SystemExit('this cell must not run')"),
        nbformat.v4.new_code_cell("print('nor this one')")])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "EPOCHS = 3" in text and "后面的格子都没有执行" in text
    assert all(o.get("output_type") != "error" for c in nb.cells for o in c.outputs)
    assert not nb.cells[1].outputs and not nb.cells[2].outputs



# ---------------------------------------------------------------------------- the submission's parts, one by one

def _executed_notebook():
    import nbformat
    v4 = nbformat.v4
    cells = [v4.new_markdown_cell("# 标题\n\n本章复现讲义。"),
             v4.new_markdown_cell("怎么运行：`python -m cvlab report`"),
             v4.new_code_cell("PRESET = 'handout'"),
             v4.new_code_cell("setup()"),
             v4.new_markdown_cell("## 1. 数据\n\n见第 2 节和第 4、5 节；改进见第 03 章 §2.1。<!-- notebook-only -->用 `-p` 改参数。"
                                  "<!-- /notebook-only -->"),
             v4.new_code_cell("fit()"),
             v4.new_code_cell("show()"),
             v4.new_markdown_cell("### 2.1 小节\n```python\n# 2. not a heading\n```"),
             v4.new_markdown_cell("## 小结\n\n- 第 02 章回答问题。")]
    cells[1].metadata["tags"] = ["notebook-only"]
    cells[2].metadata["tags"] = ["parameters"]
    cells[3].outputs = [v4.new_output("stream", name="stdout", text="cvlab 0.1 from /home/me/cvlab\n")]
    cells[5].metadata["tags"] = ["training-log"]
    cells[5].outputs = [v4.new_output("stream", name="stdout", text="epoch train_loss\n    1  4.6\n")]
    cells[6].outputs = [v4.new_output("stream", name="stdout",
                                      text="注意：/tmp/x/cifar-100-python differs\n数据：/tmp/x/cifar-100-python 中的 200 张\n"),
                        v4.new_output("display_data", data={"text/markdown": "实现：`f`（见附录 A<!-- notebook-only -->；"
                                                                             "或 inspect<!-- /notebook-only -->）"})]
    return v4.new_notebook(cells=cells)


def test_the_submission_leaves_out_what_speaks_to_the_notebooks_user_and_numbers_its_own_chapters():
    notes: list[str] = []
    body, conclusion = submission.split_notebook(_executed_notebook(), chapter=3, notes=notes)
    text = "\n".join(c.source for c in body) + "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                                                        for c in body if c.cell_type == "code" for o in c.outputs)
    assert "怎么运行" not in text and "改参数" not in text and "inspect" not in text and "见附录 A" in text
    assert "epoch train_loss" not in text and "/tmp/" not in text and "/home/" not in text
    assert "数据：cifar-100-python 中的 200 张" in text and notes == ["注意：cifar-100-python differs"]
    assert "### 3.1\u3000数据" in text and "#### 3.2.1\u3000小节" in text and "# 2. not a heading" in text
    assert "见第 3.2 节和第 3.4、3.5 节" in text and "改进见第五章 5.2.1 节" in text
    assert [c.source for c in conclusion] == ["\n- 第四章回答问题。"]


def test_a_pipeline_check_says_so_on_the_cover_and_every_page_and_a_full_document_does_not():
    student = submission.Student("张三", "1")
    for budget in ("smoke", "quick"):
        check = submission.pipeline_check(budget)
        assert "流程检查" in check and "不是实验结果" in check
        assert "流程检查" in submission.cover_html(student, budget, check)
        assert "@top-center" in submission.running_header_css(check) and "流程检查" in submission.running_header_css(check)
    assert submission.pipeline_check("full") == "" and submission.running_header_css("") == ""
    assert "流程检查" not in submission.cover_html(student, "full", "")


def test_parameters_table_is_chinese_without_paths():
    table = submission.parameters_table_zh({"01_baseline": {"DATA_ROOT": "", "EPOCHS": 2, "SYNTHETIC": True,
                                                            "RUN_DIR": "../runs/x"},
                                            "03_improvements": {"BUDGET": "smoke", "RUNS_DIR": "../runs/y"}})
    assert "epoch 数" in table and "预算 (budget)" in table and "| 是 |" in table and "第三章" in table
    assert "DATA_ROOT" not in table and "../runs" not in table


def test_code_listings_wrap_under_their_own_indentation():
    code = submission.code_html("def f(x):\n    if x:\n        return x  # a comment\n\n    return 0")
    assert "\n" not in code  # one raw-HTML block: a blank line would end it
    assert code.count('class="code-line"') == 5
    assert 'padding-left: 12ch; text-indent: -12ch">        <span class="k">return' in code
    assert 'padding-left: 4ch; text-indent: -4ch"><span class="k">def' in code


def test_report_tables_have_chinese_headers_and_readable_numbers():
    from cvlab.report import tables

    assert [tables.number_zh(v) for v in (3.4126e-15, -2.5e-4, 0.0, float("inf"), float("nan"), 0.0296, 11223140,
                                          True)] == \
        ["3.4×10⁻¹⁵", "-2.5×10⁻⁴", "0", "∞", "—", "0.0296", "11,223,140", "是"]
    frame = pd.DataFrame([{"epoch": 1, "train_loss": 4.72261, "test_acc": 0.02, "epoch_seconds": 0.0}])
    shown = tables.zh(frame)
    assert list(shown.columns) == ["epoch", "训练损失", "测试准确率", "用时 (s)"]
    assert shown.iloc[0].tolist() == ["1", "4.7226", "0.02", "0"]
    pivot = pd.DataFrame({"optimizer": ["Adam"], "surface": ["quadratic, kappa=100"], "best_lr": [0.1]}).pivot(
        index="optimizer", columns="surface", values="best_lr")
    shown = tables.zh(pivot)  # notebook 02's pivots: index, column and axis names all Chinese
    assert list(shown.columns) == ["二次函数，κ=100"] and shown.columns.name == "曲面" and shown.index.name == "优化器"
    words = pd.DataFrame({"network": ["plain"], "true": ["plain"], "predicted": ["residual"]})
    shown = tables.zh(words)  # a word is translated in its own column only: "plain" is also a CIFAR-100 class
    assert shown.iloc[0].tolist() == ["普通网络", "plain", "residual"]
    # a plain row-number index stays out of the HTML a report prints; a named index (the pivot's) stays in
    html = tables.zh(pd.DataFrame({"optimizer": ["SGD", "Adam"], "final_loss": [0.5, 0.25]}))._repr_html_()
    assert "<th>0</th>" not in html and "<th>1</th>" not in html and "SGD" in html and "优化器" in html
    assert "<th>Adam</th>" in tables.zh(pivot)._repr_html_()
    assert tables.zh(words).style.hide(axis="index") is not None   # still a DataFrame for the callers that style it


def test_the_ladder_says_when_its_gains_are_within_the_noise(tmp_path):
    from types import SimpleNamespace

    from cvlab.report import tables

    runs = []
    for name in ("handout", "+crop-flip"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"dataset": {"n_test": 1000}}))
        runs.append(tmp_path / name)
    near_chance = SimpleNamespace(run_dirs=runs, table=pd.DataFrame({"test_acc": [0.012, 0.015], "gain": [None, 0.003]}))
    text = tables.noise_floor_zh(near_chance)
    assert "1,000 张测试图像" in text and "不能据此判断哪一级更好" in text and "随机猜测" in text
    learnt = SimpleNamespace(run_dirs=runs, table=pd.DataFrame({"test_acc": [0.30, 0.40], "gain": [None, 0.10]}))
    assert "有 1 级的增益超过两倍标准误" in tables.noise_floor_zh(learnt)


def test_a_presets_listing_is_its_derive_call_even_when_a_dict_keyed_by_its_name_comes_first(tmp_path, monkeypatch):
    text = ('TEXTS = {"+x": "an idea"}\n'
            'PRESETS = {"base": (\n    "the base", {})}\n'
            '_derive("+x", "base", "+ " + TEXTS["+x"], lr=1.0)\n')
    monkeypatch.setattr(source, "read_source", lambda path, where: text)
    assert source.preset_listing("+x", None).text.startswith('_derive("+x"')
    assert '"the base"' in source.preset_listing("base", None).text  # a preset without _derive: its entry


@pytest.mark.parametrize("stop", [KeyboardInterrupt, "Terminated"])
def test_a_second_stop_leaves_report_json_saying_interrupted(tmp_path, monkeypatch, stop):
    """A second Ctrl-C (or SIGTERM) while the first is handled stops the report at once: report.json says
    "interrupted" for that notebook, not "not run"."""
    from cvlab.core.errors import Terminated
    stop = Terminated if stop == "Terminated" else stop
    folder, out = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    _notebook(folder / "01_a.ipynb", "EPOCHS = 1")

    def second_stop(*args, **kwargs):
        raise stop()
    monkeypatch.setattr(runner, "execute", second_stop)
    monkeypatch.setattr(runner, "ensure_kernel", lambda log: "python3")
    with pytest.raises(stop):
        runner.run_report("smoke", notebooks_dir=folder, out=out, pdf=False, estimate=False, log=lambda t: None)
    entry = json.loads((out / "report.json").read_text(encoding="utf-8"))["notebooks"][0]
    assert entry["status"] == "interrupted" and "stopped by a second" in entry["error"], entry


def test_no_section_heading_of_the_appendix_stands_alone_in_its_cell():
    """Chromium keeps a heading with its next sibling only: an appendix entry's heading shares its cell with the
    entry's text and code (a heading alone in its cell ended page 52 of a quick submission)."""
    import re

    from cvlab.report import submission
    doc = submission.Document()
    submission.appendix(doc, None, "测试", {"handout", "+shuffle"})
    sections = [c.source for c in doc.cells if 'class="section"' in c.source]
    assert len(sections) >= 10
    for text in sections:
        after = re.split(r"</h2>", text, maxsplit=1)[1]
        assert after.strip(), text[:80]
