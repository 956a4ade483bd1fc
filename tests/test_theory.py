"""The theory demonstrations: each runs on the CPU in seconds, writes its figure, and
measures what the answers in answers/ claim."""
from __future__ import annotations

import math
import re

import pytest
import torch

from cvlab.coursework import theory
from cvlab.core.config import make_config
from cvlab.core.runs import write_history, write_json


@pytest.fixture(scope="module")
def data():
    return theory.load_demo_data("", synthetic=True, n_train=400, n_test=200)


def test_steps_per_epoch_for_the_handout():
    assert theory.steps_per_epoch(50_000, 1024) == 49          # 48 full batches + one of 848
    assert theory.steps_per_epoch(50_000, 1024, drop_last=True) == 48
    assert theory.steps_per_epoch(50_000, 128) == 391
    assert theory.steps_per_epoch(1024, 1024) == 1


def test_activation_demo(tmp_path):
    out = theory.activation_demo(tmp_path)
    assert out["figure"].is_file() and out["figure"].stat().st_size > 10_000
    t = out["table"].set_index("activation")
    assert t.loc["sigmoid", "max f'"] == pytest.approx(0.25, abs=1e-6)
    assert t.loc["tanh", "f'(0)"] == pytest.approx(1.0)
    # tanh' = 1 - tanh^2 < 0.01  <=>  |x| > atanh(sqrt(0.99))
    assert t.loc["tanh", "|f'| < 0.01 for x >"] == pytest.approx(math.atanh(math.sqrt(0.99)), abs=2e-3)
    assert t.loc["ReLU", "|f'| < 0.01 for x <"] == pytest.approx(0.0, abs=1e-9)
    assert math.isinf(t.loc["LeakyReLU", "|f'| < 0.01 for x <"])
    assert t.loc["ReLU", "E[f(z)], z~N(0,1)"] == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-4)
    ratio = out["gradient_ratio"]
    assert ratio["sigmoid"] < 1e-6                              # vanishes through 20 sigmoid layers
    assert 0.1 < ratio["ReLU"] < 10                             # He init keeps ReLU's gradient scale


def test_optimizer_demo_orders_the_ill_conditioned_quadratic(tmp_path):
    out = theory.optimizer_demo(tmp_path, quick=True)
    assert out["figure"].is_file()
    quad = out["table"][out["table"].surface == "quadratic, kappa=100"].set_index("optimizer")
    assert set(quad.index) == set(theory.OPTIMIZERS)
    assert quad.final_loss.map(math.isfinite).all()
    assert (quad.steps == quad.steps.iloc[0]).all()             # same step count for everyone
    assert quad.final_loss["Adam"] < quad.final_loss["SGD"]
    assert quad.final_loss["Momentum"] < quad.final_loss["SGD"]
    assert quad.final_loss["Nesterov"] < quad.final_loss["SGD"]


def test_optimize_runs_every_learning_rate_independently():
    lrs = [1e-3, 1e-2]
    losses, path = theory.optimize(theory.rosenbrock, (-1.5, 2.0), "SGD", lrs, steps=5)
    assert losses.shape == (6, 2) and path.shape == (6, 2, 2)
    for i, lr in enumerate(lrs):  # same as a hand-written gradient step
        w = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
        theory.rosenbrock(w).backward()
        assert torch.allclose(path[1, i], w.detach() - lr * w.grad)


def test_residual_demo_plain_gradients_vanish_without_bn(tmp_path, data):
    out = theory.residual_demo(tmp_path, data, steps=8)
    assert out["figure"].is_file()
    g = out["gradient_norms"]
    plain, residual = g["plain", False, "default"], g["residual", False, "default"]
    assert plain[0] < residual[0]                               # early layer, no BatchNorm
    assert plain[0] < 1e-3 * plain[-1]                          # ... vanishing towards the input
    he = g["plain", False, "he"]                                # the control: same net, He init
    assert he[0] > 1e3 * plain[0]                               # the init, not depth alone, makes it vanish
    assert len(g["plain", True, "default"]) == 31               # stem + 15 blocks x 2 convs
    curves = out["curves"]
    assert set(curves) == set(theory.DEGRADATION_MODELS)
    assert all(len(c) == 8 and all(math.isfinite(v) for v in c) for c in curves.values())


def test_batch_size_demo_matches_sampling_theory(tmp_path, data):
    out = theory.batch_size_demo(tmp_path, data, n_examples=256)
    assert out["figure"].is_file()
    noise = out["noise"]
    ratio = noise.measured_sq_error / noise.theory_sq_error
    assert ((ratio > 0.7) & (ratio < 1.3)).all(), ratio
    assert noise.measured_sq_error.is_monotonic_decreasing
    steps = out["steps"].set_index("batch_size")
    assert steps.loc[1024, "steps_per_epoch"] == 49 and steps.loc[1024, "steps_in_100_epochs"] == 4900


def test_minibatch_noise_of_the_full_batch_is_zero():
    grads = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    table, trace, _ = theory.minibatch_noise(grads, [16], draws=3)
    assert table.measured_sq_error[0] == pytest.approx(0.0, abs=1e-10)
    assert table.theory_sq_error[0] == pytest.approx(0.0, abs=1e-12)


def test_epoch_demo_counts_the_handout_schedule(tmp_path):
    out = theory.epoch_demo(tmp_path)
    assert out["figure"].is_file()
    assert out["no_shuffle"]["steps_per_epoch"] == 49 and out["no_shuffle"]["last_batch"] == 848
    assert out["no_shuffle"]["images_per_epoch"] == 50_000 and out["total_steps"] == 4900
    assert out["no_shuffle"]["batchmates_kept"] == 1.0          # the handout sees identical batches
    expected = (1024 - 1) / (50_000 - 1)                        # chance a batchmate stays one
    assert out["shuffle"]["batchmates_kept"] == pytest.approx(expected, abs=0.002)


def _fake_run(path, synthetic: bool):
    path.mkdir()
    write_json(path / "config.json", make_config("handout", synthetic=synthetic, epochs=4).to_dict())
    rows = [{"epoch": e, "train_loss": tr, "train_acc": ta, "test_loss": te, "test_acc": ea, "test_top5": 0.5,
             "lr": 1e-4, "epoch_seconds": 1.0, "images_per_second": 100.0}
            for e, tr, ta, te, ea in [(1, 4.0, 0.1, 3.9, 0.1), (2, 3.0, 0.3, 3.5, 0.2),
                                      (3, 2.0, 0.5, 3.4, 0.25), (4, 1.0, 0.8, 3.8, 0.24)]]
    write_history(path / "history.csv", rows)
    write_json(path / "metrics.json", {"dataset": {"synthetic": synthetic, "n_train": 500}})


def test_overfitting_from_run_reads_the_gap(tmp_path):
    _fake_run(tmp_path / "run", synthetic=True)
    out = theory.overfitting_from_run(tmp_path / "run", tmp_path / "fig")
    assert out["figure"].is_file()
    assert out["min_test_loss_epoch"] == 3 and out["min_test_loss"] == pytest.approx(3.4)
    assert out["final_loss_gap"] == pytest.approx(2.8)
    assert out["test_loss_rise_after_min"] == pytest.approx(0.4)
    assert out["final_acc_gap"] == pytest.approx(0.56)
    assert out["synthetic"] is True and out["n_train"] == 500


def test_overfitting_from_run_names_the_missing_run(tmp_path):
    out = theory.overfitting_from_run(tmp_path / "nothing", tmp_path / "fig")
    assert "figure" not in out
    assert str(tmp_path / "nothing") in out["missing"]
    assert "python -m cvlab train --preset handout" in out["missing"]
    assert not (tmp_path / "fig").exists()


def test_regularization_demo_runs_each_setting(tmp_path, data):
    out = theory.regularization_demo(tmp_path, data, epochs=2, n_train=200)
    assert out["figure"].is_file()
    table = out["table"]
    assert list(table.setting) == list(theory.REGULARIZERS)
    assert table[["final_train_loss", "final_test_loss"]].map(math.isfinite).all().all()
    assert all(len(h) == 2 for h in out["histories"].values())
    assert out["n_train"] == 200 and out["n_test"] == 200


def test_handout_stem_bn_cancels_a_constant_input_offset():
    """answers/q5: the MNIST constants shift each input channel by a constant; through the
    handout's unpadded stem conv that is a per-channel constant, which BatchNorm subtracts."""
    from cvlab.core.models import handout_resnet18

    torch.manual_seed(0)
    stem = handout_resnet18()[:2].train().double()              # Conv2d(3, 64, 3, padding=0), BatchNorm2d
    x = torch.rand(8, 3, 32, 32, dtype=torch.float64)
    offset = torch.tensor([1.22, 1.15, 1.01], dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(stem(x), stem(x + offset), atol=1e-9)


def test_notebook_02_follows_the_contract():
    import ast
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")

    repo = Path(__file__).resolve().parent.parent
    nb = nbformat.read(repo / "notebooks" / "02_theory.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)   # committed without outputs
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0]
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(params[0].source).body
              for t in node.targets}
    assert values == {"BUDGET": "subset", "BASELINE_RUN_DIR": "../runs/01_baseline", "DATA_ROOT": "",
                      "DEVICE": "auto", "SYNTHETIC": False, "SEED": 0}
    import re
    rendered = [m for c in code for m in re.findall(r'^answer\("(\w+)"\)', c.source, re.M)]
    assert rendered == ["q1_batch_size", "q2_epoch", "q3_overfitting", "q4_resnet", "q5_activations",
                        "q6_optimizers"]
    for name in rendered:
        text = (repo / "answers" / "templates" / f"{name}.md").read_text(encoding="utf-8")
        assert "**参考文献**" in text and "**本项目实测**" in text


def test_notebook_02_defaults_to_the_reports_setting():
    """Run All on notebook 02 gives the report's numbers: its BUDGET default means the setting of the committed
    docs/results/theory.json and of the report's real-data profiles (quick, full), and its seed theirs."""
    import ast
    from pathlib import Path

    import nbformat
    import yaml

    from cvlab.coursework.theory import results as tr

    repo = Path(__file__).resolve().parent.parent
    nb = nbformat.read(repo / "notebooks" / "02_theory.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(params.source).body for t in node.targets}
    committed = tr.read_results(tr.RESULTS_FILE)["setting"]
    from cvlab.report.notebook import theory_quick

    assert theory_quick(values["BUDGET"]) is committed["quick"] is False and values["SEED"] == committed["seed"]
    for profile in ("quick", "full"):
        spec = yaml.safe_load((repo / "cvlab" / "report" / "profiles" / f"{profile}.yaml").read_text(encoding="utf-8"))
        assert theory_quick(spec["common"]["BUDGET"]) is committed["quick"], profile
    assert theory_quick("smoke") is True


def test_batch_training_demo_sees_the_same_images_at_every_batch_size(tmp_path, data):
    out = theory.batch_training_demo(tmp_path, data, batch_sizes=(20, 100), epochs=1, n_train=200)
    assert out["figure"].is_file()
    t = out["table"].set_index("batch_size")
    assert list(t.images_seen) == [200, 200]                   # same images seen ...
    assert list(t.steps) == [10, 2]                             # ... in B-times fewer steps
    assert t.lr[100] == pytest.approx(5 * t.lr[20]) and t.lr[100] == pytest.approx(0.1 * 100 / 256)  # linear rule
    assert all(math.isfinite(v) for v in t.train_loss_last_quarter)
    assert set(out["history"].epoch) == {1} and out["n_train"] == 200


def test_network_demo_gives_every_optimizer_the_same_budget(tmp_path, data):
    out = theory.network_demo(tmp_path, data, n_train=100, epochs=1, batch=50, max_widen=1)
    assert out["figure"].is_file()
    t = out["table"].set_index("optimizer")
    assert list(t.index) == list(theory.NETWORK_OPTIMIZERS)
    assert set(t.steps) == {2} and {len(c) for c in out["curves"].values()} == {2}   # same images, same steps
    for name, row in t.iterrows():
        s = out["sweep"][out["sweep"].optimizer == name]
        assert row.rates_tried == len(s) >= len(theory.NETWORK_OPTIMIZERS[name][1])
        assert row.best_lr == s.lr[s.score.idxmin()]                                  # the best is the lowest score
        assert row.interior == (s.lr.min() < row.best_lr < s.lr.max())
        assert 0 <= row.final_test_acc <= 1 and math.isfinite(row.final_test_loss)


def test_network_sweep_widens_until_the_best_rate_is_inside(monkeypatch):
    """The rate grid grows by half decades on the side where the best lies, and stops after max_widen."""
    from cvlab.coursework.theory import q6_optimizers as q6

    def fake(target):
        return lambda name, lr, *a: {"losses": [1.0], "score": (math.log10(lr) - target) ** 2, "model": object()}

    monkeypatch.setitem(q6.NETWORK_OPTIMIZERS, "SGD", (None, (-1.5, -1.0, -0.5)))   # the first three rates
    monkeypatch.setattr(q6, "_train_network", fake(-0.4))
    tried, best = q6._sweep("SGD", None, 1, 1, 0, max_widen=3)
    assert best == -0.5                                                 # nearest -0.4 ...
    assert sorted(tried) == [-1.5, -1.0, -0.5, 0.0]                     # ... once 0.0 shows it is a minimum
    assert [k for k, v in tried.items() if v["model"] is not None] == [best]   # only the best keeps its model
    monkeypatch.setattr(q6, "_train_network", fake(5.0))                # far above the grid
    tried, best = q6._sweep("SGD", None, 1, 1, 0, max_widen=2)
    assert sorted(tried) == [-1.5, -1.0, -0.5, 0.0, 0.5] and best == 0.5   # two widenings, then it stops at the edge


def _figure_texts(fig) -> list[str]:
    """Every title, axis label, legend entry and title, and figure-level text of a matplotlib figure."""
    texts = [t.get_text() for t in fig.texts] + ([fig._suptitle.get_text()] if fig._suptitle else [])
    legends = list(fig.legends)
    for a in fig.axes:
        texts += [a.get_title(), a.get_xlabel(), a.get_ylabel()]
        legends += [a.get_legend()] if a.get_legend() else []
    texts += [t.get_text() for leg in legends for t in [*leg.get_texts(), leg.get_title()]]
    return [t for t in texts if t.strip()]


def _capture_figures(monkeypatch, save: bool = False) -> dict:
    """{file name: Figure} of every figure the demos save from now on; `save`: still write them, as the
    report does (laid out, text enlarged for print), else skip the file."""
    from cvlab.coursework.theory import common

    figures, real = {}, common.save_figure

    def capture(fig, path):
        figures[path.name] = fig
        return real(fig, path) if save else path
    monkeypatch.setattr(common, "save_figure", capture)
    return figures


@pytest.fixture(scope="module")
def theory_figures(tmp_path_factory, data):
    """Every theory figure notebook 02 shows except Q6's network one, made at the smallest settings on
    synthetic data and saved as the report saves them: {file name: Figure}."""
    tmp = tmp_path_factory.mktemp("theory-figures")
    with pytest.MonkeyPatch.context() as mp:
        figures = _capture_figures(mp, save=True)
        _fake_run(tmp / "run", synthetic=True)
        theory.overfitting_from_run(tmp / "run", tmp)
        theory.batch_size_demo(tmp, data, n_examples=256)
        theory.batch_training_demo(tmp, data, batch_sizes=(50, 100), epochs=1, n_train=200)
        theory.epoch_demo(tmp)
        theory.regularization_demo(tmp, data, epochs=1, n_train=200)
        theory.residual_demo(tmp, data, steps=2)
        theory.activation_demo(tmp)
        theory.optimizer_demo(tmp, quick=True)
    assert len(figures) == 8
    return figures


CJK = re.compile(r"[\u4e00-\u9fff]")
ENGLISH_PHRASE = re.compile(r"[A-Za-z]{3,}[ ,:]+[A-Za-z]{3,}")   # two English words in a row


def test_theory_figures_speak_chinese_when_a_cjk_font_exists(theory_figures, tmp_path, data, monkeypatch):
    """The report is Chinese: where matplotlib has a CJK font, every title of every demo figure is Chinese, and
    no label, legend entry or note is an English phrase without Chinese (single terms like "epoch" may stay)."""
    from cvlab.report import plots

    if plots.cjk_font() is None:
        pytest.skip("no CJK font for matplotlib here (Debian: fonts-noto-cjk)")
    for name, fig in theory_figures.items():
        titles = [a.get_title() for a in fig.axes if a.get_title()] + ([fig._suptitle.get_text()] if fig._suptitle else [])
        assert titles and all(CJK.search(t) for t in titles), (name, [t for t in titles if not CJK.search(t)])
        english = [t for t in _figure_texts(fig) if ENGLISH_PHRASE.search(t) and not CJK.search(t)]
        assert not english, (name, english)
    figures = _capture_figures(monkeypatch)     # Q6's network figure: its titles
    theory.network_demo(tmp_path, data, n_train=100, epochs=1, batch=50, max_widen=0)
    titles = [a.get_title() for a in figures["optimizers_network.png"].axes if a.get_title()]
    assert titles and all(CJK.search(t) for t in titles), titles


def test_theory_figures_print_legibly(theory_figures):
    """Shrunk to the width of the A4 page, no text of a demo figure prints smaller than 7 pt, and no legend
    sits on a panel (legends go below or beside the panels, where they cover no curve)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from cvlab.report.plots import PRINT_WIDTH_IN

    for name, fig in theory_figures.items():
        FigureCanvasAgg(fig)
        fig.draw_without_rendering()                  # the layout savefig drew
        renderer = fig.canvas.get_renderer()
        scale = max(1.0, fig.get_figwidth() / PRINT_WIDTH_IN)
        small = {t.get_text() for t in fig.findobj(Text) if t.get_text().strip() and t.get_fontsize() / scale < 7}
        assert not small, (name, small)
        for legend in list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(a.get_window_extent(renderer)) for a in fig.axes), name


def test_log_axes_of_less_than_a_decade_are_written_plainly(tmp_path):
    """4.4, not 4.4x10^0: a log axis within one decade gets round, plainly written ticks; wider ones keep 10^k."""
    from cvlab.coursework.theory import common

    fig, ax = common.new_figure(2)
    ax[0, 0].semilogy([1, 2, 3], [4.3, 4.9, 5.3])
    ax[0, 1].semilogy([1, 2, 3], [1e-3, 1.0, 1e3])
    common.save_demo_figure(fig, tmp_path, "log.png")
    narrow = [t.get_text() for t in ax[0, 0].yaxis.get_ticklabels(which="both") if t.get_text()]
    wide = [t.get_text() for t in ax[0, 1].yaxis.get_ticklabels() if t.get_text()]
    assert len(narrow) >= 2 and all(re.fullmatch(r"[0-9.]+", t) for t in narrow), narrow
    assert any("10^" in t for t in wide), wide


def test_theory_figures_fall_back_to_english_without_a_cjk_font(tmp_path, monkeypatch):
    """Without a CJK font the same figures carry English text, not boxes where the glyphs would be."""
    from cvlab.report import plots

    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    figures = _capture_figures(monkeypatch)
    theory.epoch_demo(tmp_path)
    theory.activation_demo(tmp_path)
    assert len(figures) == 2
    for name, fig in figures.items():
        texts = _figure_texts(fig)
        assert texts and not any(CJK.search(t) for t in texts), name
