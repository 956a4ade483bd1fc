"""Presets train, the engine's EMA/validation/TTA pieces resume exactly, and the ablation runner
builds its table from run directories. Synthetic data only, a few dozen images per run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from cvlab.experiments.ablate import LADDER_CSV, LADDER_MD, RUNS_CSV, Budget, budget_config, ladder_table, run_ablation
from cvlab.experiments.analysis import confused_pairs, per_superclass_accuracy, predict_run
from cvlab.core.config import LADDER, PARENT, PRESETS, make_config
from cvlab.core.errors import ConfigError
from cvlab.core.engine import build_trainer, evaluate, fit, train_one_epoch
from cvlab.core.errors import RunDirError
from cvlab.core.models import MODELS, CifarResNet18, build_model, count_parameters
from cvlab.core.runs import HISTORY_COLUMNS, load_run
from conftest import StopAfter



TIMING = ["epoch_seconds", "images_per_second"]
# 300 synthetic training images: 100 validation (the last of each class), a few dozen for training;
# "tiny_resnet" is the CIFAR ResNet-18 code at 1/16 of the width, registered by the fixture below,
# so that a training step takes milliseconds instead of seconds on a shared CPU.
TINY = dict(synthetic=True, synthetic_train=300, synthetic_test=100, progress=False, device="cpu",
            download=False, model="tiny_resnet")


def tiny_resnet(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet18:
    return CifarResNet18(num_classes, widths=(4, 8, 16, 32), dropout=dropout)


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_resnet", (tiny_resnet, "CIFAR ResNet-18 at 1/16 width (tests only)"))


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_and_trains_two_steps(preset):
    model = make_config(preset).model
    assert count_parameters(build_model(model)) == {"handout_resnet18": 11_223_140, "cifar_resnet18": 11_220_132}[model]
    # every switch of the preset, on the narrow model
    cfg = make_config(preset, **TINY, subset=4, subset_balanced=False, test_subset=4, batch_size=2,
                      eval_batch_size=4)
    t = build_trainer(cfg)
    before = [p.detach().clone() for p in t.model.parameters()]
    stats = train_one_epoch(t.train_step, t.train_loader)
    assert stats["images"] == 4 and math.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
    assert 0 <= evaluate(t.eval_step, t.test_loader)["acc"] <= 1


def test_ladder_adds_one_change_per_rung():
    from cvlab.core.config import RECIPES
    assert LADDER[0] == "handout" and LADDER[-1] == "+cifar-stem" and not set(RECIPES) & set(LADDER)
    for name in LADDER[1:]:
        parent = PRESETS[PARENT[name]][1]
        changed = {k for k, v in PRESETS[name][1].items() if parent.get(k, v) != v or k not in parent}
        assert changed and PRESETS[name][0].startswith(f"= {PARENT[name]} ")
        assert LADDER.index(PARENT[name]) == LADDER.index(name) - 1
    assert all(PARENT[recipe] == LADDER[-1] for recipe in RECIPES)  # recipes made of the whole ladder


def test_each_rung_changes_one_idea():
    """One idea per rung: one field, one group of fields that only make sense together, or the model as a
    declared architectural change. +sgd once also moved the batch size, +cifar-norm paired two fixes."""
    from cvlab.core.config import ARCHITECTURAL, preset_changes, rung_is_one_idea
    for name in LADDER[1:]:
        assert rung_is_one_idea(name), (name, sorted(preset_changes(name)))
    assert set(preset_changes("+sgd")) == {"optimizer", "nesterov", "lr"}  # momentum 0.9 is the default
    assert preset_changes("+batch-256") == {"batch_size": 256}
    assert preset_changes("+shuffle") == {"shuffle": True} and preset_changes("+cifar-norm") == {"normalization": "cifar100"}
    assert preset_changes("+weight-decay") == {"weight_decay": 5e-4}
    assert preset_changes("+onecycle") == {"schedule": "onecycle", "warmup": 0.15}
    assert [n for n in LADDER if "model" in preset_changes(n)] == list(ARCHITECTURAL) == ["+cifar-stem"]


def test_the_one_idea_check_fails_on_a_bundled_rung(monkeypatch):
    """The check can fail: a rung that moves the batch size with the optimizer, or the model unmarked."""
    from cvlab.core import config
    monkeypatch.setitem(config.PRESETS, "bundled", ("= +crop-flip bundled", {**config.PRESETS["+crop-flip"][1],
                                                                              "optimizer": "sgd", "batch_size": 256}))
    monkeypatch.setitem(config.PARENT, "bundled", "+crop-flip")
    assert not config.rung_is_one_idea("bundled")
    monkeypatch.setitem(config.PRESETS, "bundled", ("= +crop-flip new model", {**config.PRESETS["+crop-flip"][1],
                                                                                "model": "cifar_resnet18"}))
    assert not config.rung_is_one_idea("bundled")


def test_the_recipes_train_what_the_ladder_adds_up_to():
    """fast and best are the whole ladder (with the CIFAR model) plus their own run settings."""
    top = make_config("+cifar-stem")
    assert (top.optimizer, top.nesterov, top.weight_decay, top.schedule, top.batch_size, top.lr, top.model) == (
        "sgd", True, 5e-4, "onecycle", 256, 0.2, "cifar_resnet18")
    fast = make_config("fast")
    assert (fast.optimizer, fast.nesterov, fast.weight_decay, fast.schedule, fast.warmup, fast.batch_size, fast.lr,
            fast.wd_exclude_norm_bias, fast.epochs, fast.model) == ("sgd", True, 5e-4, "onecycle", 0.15, 512, 0.4, True,
                                                                     30, "cifar_resnet18")
    with pytest.raises(ConfigError, match=r"\+onecycle"):
        make_config("+sgd-onecycle")


def tiny_run(**overrides):
    values = dict(TINY, subset=100, test_subset=100, epochs=2, batch_size=25, eval_batch_size=100, lr=1e-3)
    values.update(overrides)
    return make_config("handout", **values)



def test_resume_with_ema_mixing_policy_and_validation_repeats_history(tmp_path):
    cfg = tiny_run(val_size=100, ema_decay=0.9, tta_flip=True, mix="mixup_cutmix", mix_prob=0.5,
                   policy="trivialaugment", cutout=8, crop_padding=4, hflip=True, normalization="cifar100",
                   optimizer="sgd", lr=0.05, nesterov=True, weight_decay=5e-4, wd_exclude_norm_bias=True,
                   schedule="onecycle", warmup=0.25, label_smoothing=0.1, zero_init_last_bn=True)
    whole = load_run(fit(cfg, tmp_path / "whole", log=quiet))
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "split", log=quiet, on_epoch_end=StopAfter(1))
    assert len(load_run(tmp_path / "split").history) == 1
    resumed = load_run(fit(cfg, tmp_path / "split", resume=True, log=quiet))
    pd.testing.assert_frame_equal(whole.history.drop(columns=TIMING), resumed.history.drop(columns=TIMING))
    h = whole.history
    assert list(h.columns) == HISTORY_COLUMNS + ["val_loss", "val_acc", "val_top5"]
    best = whole.metrics["best"]
    assert best["selected_by"] == "val_acc" and best["val_acc"] == h["val_acc"].max()
    assert best["test_acc"] == h.loc[h["val_acc"].idxmax(), "test_acc"]
    assert whole.metrics["evaluated_weights"] == "ema" and whole.metrics["dataset"]["n_val"] == 100
    state = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert state["ema"]["updates"] == 2 * 4  # 100 images / batch 25, two epochs
    # the checkpointed EMA, re-evaluated, gives the logged final test figures
    pred = predict_run(tmp_path / "whole", device="cpu")
    assert pred.weights == "ema" and pred.accuracy == pytest.approx(h["test_acc"].iloc[-1])
    sup = per_superclass_accuracy(pred)
    assert sup["images"].sum() == 100 and sup["fine_acc"].between(0, 1).all()
    pairs = confused_pairs(pred, top=5)
    assert len(pairs) <= 5 and (pairs["count"].diff().dropna() <= 0).all()


def test_no_validation_split_keeps_the_contract_columns(tmp_path):
    run = load_run(fit(tiny_run(epochs=1), tmp_path / "run", log=quiet))
    assert list(run.history.columns) == HISTORY_COLUMNS and run.metrics["best"] is None


def test_budget_keeps_the_warmup_share_and_applies_overrides():
    budget = Budget("t", "test", dict(epochs=10, subset=500))
    cfg = budget_config("+onecycle", budget, {"lr": 0.1}, seed=3)
    assert (cfg.epochs, cfg.warmup, cfg.subset, cfg.lr, cfg.seed) == (10, 0.15, 500, 0.1, 3)
    assert cfg.preset == "+onecycle"


def test_ablation_runs_skips_duplicates_and_tabulates_from_run_dirs(tmp_path):
    budget = Budget("tiny", "test budget", dict(TINY, subset=100, val_size=100, test_subset=100, epochs=1,
                                                batch_size=50, eval_batch_size=100))
    presets = ["handout", "+tta-flip", "+cifar-stem"]
    result = run_ablation(presets, [0, 1], tmp_path, budget, log=quiet)
    assert result.skipped == {"+cifar-stem": "same run as +tta-flip under this budget"}
    assert sorted(p.name for p in result.run_dirs) == ["+tta-flip-s0", "+tta-flip-s1", "handout-s0", "handout-s1"]
    table = result.table.set_index("preset")
    for preset in ("handout", "+tta-flip"):
        finals = [load_run(tmp_path / f"{preset}-s{s}").history["test_acc"].iloc[-1] for s in (0, 1)]
        assert table.loc[preset, "test_acc"] == pytest.approx(sum(finals) / 2)
        assert table.loc[preset, "test_acc_std"] == pytest.approx(pd.Series(finals).std())
        assert table.loc[preset, "seeds"] == 2
    assert table.loc["+tta-flip", "compared_to"] == "handout"  # its parent +ema was not run
    assert table.loc["+tta-flip", "gain"] == pytest.approx(table.loc["+tta-flip", "test_acc"]
                                                            - table.loc["handout", "test_acc"])
    for name in (LADDER_CSV, LADDER_MD, RUNS_CSV):
        assert (tmp_path / name).stat().st_size > 0
    assert "SYNTHETIC" in (tmp_path / LADDER_MD).read_text()
    assert len(pd.read_csv(tmp_path / RUNS_CSV)) == 4
    # a second call reuses the finished runs (no training) and gives the same table
    mtime = (tmp_path / "handout-s0" / "last.pt").stat().st_mtime_ns
    again = run_ablation(presets, [0, 1], tmp_path, budget, log=quiet)
    assert (tmp_path / "handout-s0" / "last.pt").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again.table, result.table)
    with pytest.raises(RunDirError):  # same folder, different settings
        run_ablation(["handout"], [0], tmp_path, budget, overrides=["lr=0.5"], log=quiet)


def write_fake_run(path, preset, seed, accs, val=None):
    """A run directory written by hand, to check the arithmetic of the table alone."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"preset": preset, "seed": seed, "model": "m"}))
    rows = []
    for i, acc in enumerate(accs, 1):
        row = {"epoch": i, "train_loss": 1.0, "train_acc": acc + 0.1, "test_loss": 2.0, "test_acc": acc,
               "test_top5": acc + 0.2, "lr": 0.1, "epoch_seconds": 10.0, "images_per_second": 100.0 * i}
        if val is not None:
            row.update(val_loss=2.0, val_acc=val[i - 1], val_top5=0.5)
        rows.append(row)
    pd.DataFrame(rows).to_csv(path / "history.csv", index=False)
    (path / "metrics.json").write_text(json.dumps({"status": "complete", "dataset": {"synthetic": False,
                                                                                       "n_train": 10}}))
    return path


def test_table_arithmetic_from_hand_written_run_dirs(tmp_path):
    dirs = [write_fake_run(tmp_path / "a0", "handout", 0, [0.1, 0.2], val=[0.3, 0.25]),
            write_fake_run(tmp_path / "a1", "handout", 1, [0.1, 0.4], val=[0.2, 0.5]),
            write_fake_run(tmp_path / "b0", "+cifar-norm", 0, [0.3, 0.5])]
    table, runs = ladder_table(dirs, order=["handout", "+cifar-norm"])
    t = table.set_index("preset")
    assert t.loc["handout", "test_acc"] == pytest.approx(0.3)
    assert t.loc["handout", "test_acc_std"] == pytest.approx(pd.Series([0.2, 0.4]).std())
    assert t.loc["handout", "best_val_acc"] == pytest.approx((0.3 + 0.5) / 2)
    assert t.loc["handout", "gap"] == pytest.approx(0.1)
    assert t.loc["handout", "seconds"] == 20.0 and t.loc["handout", "images_per_second"] == 150.0
    assert t.loc["+cifar-norm", "gain"] == pytest.approx(0.2) and math.isnan(t.loc["+cifar-norm", "best_val_acc"])
    assert runs.loc[runs["run"].str.endswith("a0"), "best_val_epoch"].item() == 1


def test_cli_presets_and_ablate_table_only(tmp_path, capsys):
    from cvlab.cli import main

    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in LADDER)
    write_fake_run(tmp_path / "handout-s0", "handout", 0, [0.1, 0.2])
    assert main(["ablate", "--budget", "smoke", "--presets", "handout,+cifar-norm", "--out", str(tmp_path),
                 "--table-only"]) == 0
    assert "`handout`" in capsys.readouterr().out and (tmp_path / LADDER_CSV).exists()
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--budget", "nope"])
    assert exc.value.code == 2
    assert main(["ablate", "--presets", "no-such", "--out", str(tmp_path / "x")]) == 2


def test_superclass_table_breaks_accuracy_ties_by_name():
    from cvlab.experiments.analysis import Predictions

    coarse_names = [f"super_{c:02d}" for c in range(20)][::-1]        # index order is not name order
    fine = torch.arange(100)
    coarse = fine // 5
    pred = Predictions(torch.zeros(100, 100), fine, coarse, [f"c{i}" for i in range(100)], coarse_names,
                       "test", "model", True, Path("."))
    table = per_superclass_accuracy(pred)            # every prediction is class 0: 19 superclasses tie at 0
    ties = table[table["fine_acc"] == 0]["superclass"].tolist()
    assert len(ties) == 19 and ties == sorted(ties)


@pytest.mark.parametrize("gain, sigma, seeds, expected", [
    (0.021, 0.01, 3, "effect"), (-0.021, 0.01, 3, "effect"), (0.019, 0.01, 3, "no measurable effect"),
    (0.021, 0.01, 1, "needs seeds"), (0.005, 0.01, 1, "no measurable effect"), (0.05, math.nan, 3, ""),
    (math.nan, 0.01, 3, "")])
def test_an_effect_needs_twice_the_seed_noise_and_three_seeds(gain, sigma, seeds, expected):
    from cvlab.experiments.ablate import verdict
    assert verdict(gain, sigma, seeds) == expected


def test_the_evidence_plan_seeds_the_ends_and_the_large_gains(tmp_path):
    """run_evidence: every rung at seed 0, the seeded presets at every seed, then the rungs whose seed-0 gain
    passes twice the noise (and the row they are compared with); a second call trains nothing."""
    from cvlab.experiments.ablate import run_evidence
    budget = Budget("tiny-evidence", "test budget", dict(TINY, subset=100, val_size=0, test_subset=100, epochs=1,
                                                         batch_size=50, eval_batch_size=100),
                    ("handout", "+shuffle", "+cifar-norm"), extra_seeds=(1, 2), seeded=("handout", "+cifar-norm"),
                    seed_effects=True)
    result = run_evidence(budget, tmp_path, log=quiet)
    table = result.table.set_index("preset")
    assert table.loc["handout", "seeds"] == table.loc["+cifar-norm", "seeds"] == 3
    sigma = table["noise"].iloc[0]
    assert sigma == pytest.approx(math.sqrt((table.loc["handout", "test_acc_std"] ** 2
                                             + table.loc["+cifar-norm", "test_acc_std"] ** 2) / 2))
    shuffle_seeds = table.loc["+shuffle", "seeds"]
    assert shuffle_seeds in (1, 3) and (shuffle_seeds == 3 or table.loc["+shuffle", "verdict"] == "no measurable effect")
    assert table.loc["+shuffle", "verdict"] != "needs seeds"  # a large one-seed gain got its seeds
    mtime = (tmp_path / "handout-s2" / "last.pt").stat().st_mtime_ns
    run_evidence(budget, tmp_path, log=quiet)
    assert (tmp_path / "handout-s2" / "last.pt").stat().st_mtime_ns == mtime
    assert "seed noise sigma" in (tmp_path / LADDER_MD).read_text()


def test_the_report_claims_an_effect_only_where_the_numbers_show_one():
    """ladder_findings_zh says a rung raises or lowers top-1 only for the verdict "effect"."""
    import pandas as pd
    from cvlab.report.tables import ladder_findings_zh
    table = pd.DataFrame([
        dict(preset="handout", compared_to="", gain=math.nan, seeds=3, verdict="", noise=0.01),
        dict(preset="+a", compared_to="handout", gain=0.05, seeds=3, verdict="effect", noise=0.01),
        dict(preset="+b", compared_to="+a", gain=0.015, seeds=3, verdict="no measurable effect", noise=0.01),
        dict(preset="+c", compared_to="+b", gain=-0.04, seeds=3, verdict="effect", noise=0.01),
        dict(preset="+d", compared_to="+c", gain=0.03, seeds=1, verdict="needs seeds", noise=0.01)])
    found = ladder_findings_zh(table)
    assert len(found) == 4
    assert "提高了 5.00 个百分点" in found[0] and "可测量的效果" in found[0]
    assert "测不出效果" in found[1] and "提高" not in found[1]
    assert "降低了 4.00 个百分点" in found[2]
    assert "暂不作结论" in found[3] and "效果" not in found[3].replace("暂不作结论", "")


def test_an_effect_says_whether_it_moved_the_fit_or_the_gap():
    """An effect's sentence reads the two rows' training accuracies: same direction as the test accuracy is the
    fit of the training set, the opposite direction the train-test gap; the target's shortfall names the harms."""
    import pandas as pd
    from cvlab.report.tables import _target_zh, ladder_findings_zh
    table = pd.DataFrame([
        dict(preset="handout", compared_to="", gain=math.nan, seeds=3, verdict="", noise=0.01, train_acc=0.10, test_acc=0.05),
        dict(preset="+a", compared_to="handout", gain=0.05, seeds=3, verdict="effect", noise=0.01, train_acc=0.20, test_acc=0.10),
        dict(preset="+b", compared_to="+a", gain=-0.04, seeds=3, verdict="effect", noise=0.01, train_acc=0.50, test_acc=0.06)])
    up, down = ladder_findings_zh(table)
    assert "10.00% → 20.00%" in up and "同向" in up and "拟合" in up
    assert "20.00% → 50.00%" in down and "反向" in down and "差距" in down
    short = _target_zh(table, "+b")
    assert "没有达到" in short and "`+b` -4.00" in short and "`+a`（10.00%" in short


def test_the_conclusion_names_only_the_rungs_the_committed_evidence_shows_an_effect_for():
    """notebook 03's conclusion (tables.evidence_summary_zh) lists exactly the committed rungs whose verdict is
    "effect", each with its gain, and says whether the target was met."""
    import re
    from cvlab.core.config import LADDER
    from cvlab.report import tables
    dirs = tables.evidence_runs()
    if not dirs:
        pytest.skip("no committed evidence runs")
    table, _ = ladder_table(dirs, LADDER)
    summary = tables.evidence_summary_zh()
    effect_part = summary.split("有可测量效果的级为")[1].split("；")[0] if "有可测量效果的级为" in summary else ""
    named = re.findall(r"`([^`]+)` ([+-]\d+\.\d+)", effect_part)
    effects = table[table["verdict"] == "effect"]
    assert [n for n, _ in named] == list(effects["preset"])
    assert [g for _, g in named] == [f"{100 * g:+.2f}" for g in effects["gain"]]
    assert "目标没有达到" in summary or "目标达到" in summary
