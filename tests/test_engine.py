import json

import pandas as pd
import pytest
import torch

from cvlab.core.engine import fit
from cvlab.core.optim import LRShape
from cvlab.core.errors import RunDirError
from cvlab.core.runs import HISTORY_COLUMNS, load_run, load_runs

from conftest import StopAfter, tiny_config

TIMING = ["epoch_seconds", "images_per_second"]


def test_handout_model_on_learnable_data_lowers_loss_and_beats_chance(tmp_path):
    run = load_run(fit(tiny_config(model="handout_resnet18", epochs=3), tmp_path / "run", log=lambda s: None))
    h = run.history
    assert list(h.columns[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert len(h) == 3
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    assert h.test_acc.iloc[-1] > 5 / 100  # chance is 1/100
    assert ((h.test_top5 >= h.test_acc) & (h.test_acc <= 1)).all()
    assert run.metrics["status"] == "complete"
    assert run.metrics["dataset"] == {**run.metrics["dataset"], "n_train": 300, "n_test": 100, "synthetic": True}
    assert run.metrics["versions"]["torch"] == torch.__version__
    assert (tmp_path / "run" / "last.pt").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3


def test_same_seed_same_history(tmp_path):
    cfg = tiny_config(epochs=1, crop_padding=4, hflip=True)
    a = load_run(fit(cfg, tmp_path / "a", log=lambda s: None)).history.drop(columns=TIMING)
    b = load_run(fit(cfg, tmp_path / "b", log=lambda s: None)).history.drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)



def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path):
    cfg = tiny_config(epochs=3, schedule="cosine", warmup=1 / 3, optimizer="sgd", lr=0.05, nesterov=True,
                      weight_decay=5e-4, crop_padding=4, hflip=True)
    whole = load_run(fit(cfg, tmp_path / "whole", log=lambda s: None)).history.drop(columns=TIMING)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", on_epoch_end=StopAfter(2), log=lambda s: None)
    partial = load_run(tmp_path / "cut")
    assert len(partial.history) == 2 and partial.metrics["status"] == "interrupted"
    resumed = load_run(fit(cfg, tmp_path / "cut", resume=True, log=lambda s: None))
    assert resumed.metrics["status"] == "complete"
    pd.testing.assert_frame_equal(resumed.history.drop(columns=TIMING), whole)


def test_run_dir_is_never_overwritten_and_resume_keeps_its_config(tmp_path):
    cfg = tiny_config(epochs=1)
    fit(cfg, tmp_path / "run", log=lambda s: None)
    before = (tmp_path / "run" / "history.csv").read_text()
    with pytest.raises(RunDirError, match="already holds a run"):
        fit(cfg, tmp_path / "run", log=lambda s: None)
    with pytest.raises(RunDirError, match=r"cannot change lr"):
        fit(tiny_config(epochs=1, lr=0.5), tmp_path / "run", resume=True, log=lambda s: None)
    assert (tmp_path / "run" / "history.csv").read_text() == before
    with pytest.raises(RunDirError, match="has no last.pt"):
        fit(cfg, tmp_path / "empty", resume=True, log=lambda s: None)


def test_load_runs_concatenates_with_labels(tmp_path):
    fit(tiny_config(epochs=1, seed=1), tmp_path / "s1", log=lambda s: None)
    frame = load_runs([tmp_path / "s1"])
    assert set(["run", "preset", "seed", "synthetic"]) <= set(frame.columns)
    assert frame.synthetic.all() and frame.seed.iloc[0] == 1


@pytest.mark.parametrize("kind,expect_mid,expect_end", [("constant", 1.0, 1.0), ("cosine", 0.5, 0.0),
                                                        ("onecycle", 0.5, 0.0)])
def test_lr_shapes(kind, expect_mid, expect_end):
    shape = LRShape(kind, total_steps=110, warmup_steps=10)
    assert shape(0) == pytest.approx(0.1) and shape(9) == pytest.approx(1.0)
    assert shape(60) == pytest.approx(expect_mid)
    assert shape(110) == pytest.approx(expect_end)


def test_run_stopped_before_its_first_epoch_can_be_started_again(tmp_path, monkeypatch):
    import cvlab.core.engine as engine

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine, "run_epoch", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_config(epochs=1), tmp_path / "run", log=lambda s: None)
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "last.pt").exists()
    assert load_run(fit(tiny_config(epochs=1), tmp_path / "run", log=lambda s: None)).metrics["status"] == "complete"
