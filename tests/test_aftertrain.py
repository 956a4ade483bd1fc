"""After training: `cvlab evaluate`, `predict`, `export` on tiny synthetic runs (and safe checkpoint loading)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvlab.cli import main
from cvlab.core.engine import fit
from cvlab.core.runs import load_run
from cvlab.experiments.analysis import evaluate_run, load_trained_model
from cvlab.experiments.predict import prepare_image

from conftest import tiny_config


def quiet(_):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs: `ema` (validation split, weight EMA, 2 epochs) and `plain` (1 epoch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("aftertrain")
    ema = fit(tiny_config(epochs=2, val_size=100, ema_decay=0.9), root / "ema", log=quiet)
    plain = fit(tiny_config(epochs=1), root / "plain", log=quiet)
    torch.set_num_threads(before)
    return {"ema": ema, "plain": plain}


def cli(capsys, *args):
    """(exit code, stdout, stderr lines) of `python -m cvlab ARGS` run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def one_error_line(code, err, fragment):
    assert code == 2 and len(err) == 1 and err[0].startswith("cvlab: error:") and fragment in err[0], err


# ---------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("name", ["ema", "plain"])
def test_evaluate_last_reproduces_metrics_json_exactly(runs, name, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, stdout, _ = cli(capsys, "evaluate", runs[name], "--device", "cpu", "--json", out)
    assert code == 0 and "(identical)" in stdout
    record = json.loads(out.read_text())
    final = load_run(runs[name]).metrics["final"]
    for key in ("test_loss", "test_acc", "test_top5"):
        assert record[key] == final[key], key  # the same bits, not approximately
    assert record["parameters"] == ("ema" if name == "ema" else "model") and record["synthetic"] is True


def test_evaluate_by_superclass_and_other_weights(runs, capsys):
    code, stdout, _ = cli(capsys, "evaluate", runs["ema"], "--device", "cpu", "--weights", "raw",
                          "--by-superclass", "--tta", "--json", "-")
    assert code == 0
    record = json.loads(stdout)
    assert record["parameters"] == "model" and record["tta_flip"] is True
    assert len(record["superclasses"]) == 20 and sum(r["images"] for r in record["superclasses"]) == 100
    ema = evaluate_run(runs["ema"], "ema", device="cpu")
    assert ema.trained.parameters == "ema" and ema.top1 == load_run(runs["ema"]).metrics["final"]["test_acc"]


def test_evaluate_best_reproduces_metrics_json_best(runs, capsys):
    code, stdout, _ = cli(capsys, "evaluate", runs["ema"], "--weights", "best", "--device", "cpu", "--json", "-")
    record = json.loads(stdout)
    best = load_run(runs["ema"]).metrics["best"]
    assert code == 0 and record["checkpoint"] == "best.pt" and record["epoch"] == best["epoch"]
    assert record["test_acc"] == best["test_acc"] and record["test_top5"] == best["test_top5"]


@pytest.mark.parametrize("run,weights,fragment", [
    ("plain", "best", "no validation split"),
    ("plain", "ema", "kept no weight EMA"),
])
def test_evaluate_missing_weights_exit_2(runs, run, weights, fragment, capsys):
    code, _, err = cli(capsys, "evaluate", runs[run], "--weights", weights, "--device", "cpu")
    one_error_line(code, err, fragment)


def test_evaluate_refuses_a_missing_run_and_an_existing_json(runs, tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", tmp_path / "nothing")
    one_error_line(code, err, "has no last.pt")
    out = tmp_path / "eval.json"
    out.write_text("mine")
    code, _, err = cli(capsys, "evaluate", runs["plain"], "--json", out)
    one_error_line(code, err, "already exists")
    assert out.read_text() == "mine"


class _Payload:
    """A pickle that would create a file when unpickled by an unsafe loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_never_runs_code(runs, tmp_path, capsys):
    run = tmp_path / "crafted"
    run.mkdir()
    (run / "config.json").write_text((runs["plain"] / "config.json").read_text())
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "config": {}}, run / "last.pt")
    code, _, err = cli(capsys, "evaluate", run, "--device", "cpu")
    one_error_line(code, err, "refusing to load")
    assert not marker.exists()


def _logits_as_before(trained, split, device, tta_flip):
    """run_logits as it was before it called engine.evaluate (its own copy of the accumulator): the reference."""
    import torch.nn.functional as F

    from cvlab.core import device as devices
    from cvlab.core.engine import EvalStep
    from cvlab.core.loader import TensorLoader

    cfg = trained.config
    loader = TensorLoader(split, cfg.eval_batch_size, device, cfg.normalization, channels_last=cfg.channels_last)
    step = EvalStep(trained.model, device, devices.resolve_precision(cfg.precision, device), tta_flip)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    chunks = []
    with torch.inference_mode():
        for x, y in loader:
            logits = step.logits(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            correct5 += (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(dim=1).sum()
            chunks.append(logits.cpu())
    seen = len(split)
    return torch.cat(chunks), {"loss": loss_sum.item() / seen, "acc": correct.item() / seen,
                               "top5": correct5.item() / seen}


@pytest.mark.parametrize("name,tta_flip", [("ema", False), ("plain", True)])
def test_run_logits_through_engine_evaluate_gives_the_same_bits_as_its_own_accumulator(runs, name, tta_flip):
    """run_logits is engine.evaluate(keep_logits=True): figures and logits bit-identical to the copy it replaced."""
    from cvlab.core.data import load_for_config
    from cvlab.experiments.analysis import run_logits

    cpu = torch.device("cpu")
    trained = load_trained_model(runs[name], cpu)
    test = load_for_config(trained.config).test
    logits, figures = run_logits(trained, test, cpu, tta_flip)
    ref_logits, ref_figures = _logits_as_before(trained, test, cpu, tta_flip)
    assert figures == ref_figures  # exact floats, not approximately
    assert logits.dtype == torch.float32 and logits.device == cpu and torch.equal(logits, ref_logits)
    from cvlab.core.engine import EvalStep, evaluate
    from cvlab.core.loader import TensorLoader
    kept = evaluate(EvalStep(trained.model, cpu), TensorLoader(test, 64, cpu, trained.config.normalization),
                    keep_logits=True)
    assert torch.equal(kept["targets"], test.fine) and kept["logits"].shape == (len(test), 100)


# ---------------------------------------------------------------------------- predict

def _write_images(folder):
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (60, 90, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.randint(0, 256, (50, 40, 3), dtype=np.uint8)).save(folder / "tall.jpg", quality=90)
    Image.fromarray(rng.randint(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    return [folder / "wide.png", folder / "tall.jpg", folder / "alpha.png"]


def test_predict_prints_top5_per_image_and_saves_a_grid(runs, tmp_path, capsys):
    paths = _write_images(tmp_path)
    grid = tmp_path / "grid.png"
    code, stdout, _ = cli(capsys, "predict", runs["plain"], *paths, "--device", "cpu", "--grid", grid)
    assert code == 0 and "SYNTHETIC" in stdout
    lines = stdout.splitlines()
    for path in paths:
        at = lines.index(str(path))
        ranked = lines[at + 1: at + 6]
        assert [line.split(".")[0].strip() for line in ranked] == ["1", "2", "3", "4", "5"]
        probs = [float(line.split()[-1].rstrip("%")) for line in ranked]
        assert probs == sorted(probs, reverse=True)
    assert grid.stat().st_size > 0 and Image.open(grid).format == "PNG"


def test_predict_sees_a_test_image_as_evaluate_does(runs, tmp_path, capsys):
    """A 32x32 PNG of a test image passes through unchanged: predict's probabilities are evaluate's softmax."""
    pred = evaluate_run(runs["plain"], device="cpu").predictions
    path = tmp_path / "test0.png"
    Image.fromarray(pred.images[0].permute(1, 2, 0).numpy()).save(path)
    assert torch.equal(prepare_image(path), pred.images[0])
    code, stdout, _ = cli(capsys, "predict", runs["plain"], path, "--device", "cpu", "--top", "1")
    probs = pred.logits[0].softmax(0)
    name = pred.fine_names[int(probs.argmax())]
    assert code == 0 and f"1. {name}" in stdout and f"{100 * probs.max().item():.2f}%" in stdout


def test_prepare_image_crops_the_centre_and_converts_to_rgb(tmp_path):
    image = np.zeros((40, 80), dtype=np.uint8)
    image[:, 20:60] = 200  # the central 40x40 square is uniform grey; the sides are black
    Image.fromarray(image, "L").save(tmp_path / "grey.png")
    x = prepare_image(tmp_path / "grey.png")
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and bool((x == 200).all())


@pytest.mark.parametrize("content,fragment", [
    (None, "no image file"),
    (b"not an image at all", "cannot read"),
    ("truncated", "cannot read"),
])
def test_predict_bad_image_exit_2_one_line(runs, tmp_path, content, fragment, capsys):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        path.write_bytes(content)
    code, _, err = cli(capsys, "predict", runs["plain"], path, "--device", "cpu")
    one_error_line(code, err, fragment)


# ---------------------------------------------------------------------------- export

def test_export_round_trip_weights_only_same_logits(runs, tmp_path, capsys):
    out = tmp_path / "model.pt"
    code, stdout, _ = cli(capsys, "export", runs["ema"], "--out", out)
    assert code == 0 and str(out) in stdout
    # The README's three lines:
    import cvlab
    ckpt = torch.load(out, weights_only=True)
    model = cvlab.build_model(**ckpt["build"]).eval(); model.load_state_dict(ckpt["state_dict"])

    assert len(ckpt["class_names"]) == 100 and len(ckpt["superclass_names"]) == 20
    assert ckpt["input"]["size"] == [3, 32, 32] and len(ckpt["input"]["mean"]) == 3
    assert ckpt["weights"]["parameters"] == "ema" and ckpt["config"]["ema_decay"] == 0.9
    assert ckpt["cvlab_version"] == cvlab.__version__ and ckpt["metrics"]["synthetic"] is True
    trained = load_trained_model(runs["ema"], "cpu")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), trained.model(x))


def test_export_never_overwrites_without_force(runs, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    code, _, err = cli(capsys, "export", runs["plain"], "--out", out)
    one_error_line(code, err, "already exists")
    assert out.read_bytes() == b"precious"
    code, _, _ = cli(capsys, "export", runs["plain"], "--out", out, "--force")
    assert code == 0 and torch.load(out, weights_only=True)["weights"]["parameters"] == "model"


def test_export_onnx_writes_and_checks_or_says_why_not(runs, tmp_path, capsys):
    import importlib.util
    out = tmp_path / "model.pt"
    code, stdout, _ = cli(capsys, "export", runs["plain"], "--out", out, "--onnx")
    assert code == 0
    note = stdout.strip().splitlines()[-1]
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        assert note.startswith("no ONNX file written") and not out.with_suffix(".onnx").exists()
    else:
        assert out.with_suffix(".onnx").exists()
        if importlib.util.find_spec("onnxruntime") is not None:
            assert "ONNX Runtime matches torch" in note


# ---------------------------------------------------------------------------- TensorBoard

def test_tensorboard_writes_every_history_column_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = fit(tiny_config(epochs=2, val_size=100, tensorboard=True), tmp_path / "run", log=quiet)
    events = EventAccumulator(str(run / "tb")).Reload()
    history = load_run(run).history
    for tag, column in (("loss/train", "train_loss"), ("accuracy/test", "test_acc"), ("accuracy/val", "val_acc"),
                        ("lr", "lr"), ("speed/images_per_second", "images_per_second")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(list(history[column]), rel=1e-6)


def test_tensorboard_missing_is_one_note_and_training_goes_on(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    lines, rows = [], []
    run = fit(tiny_config(epochs=1, tensorboard=True), tmp_path / "run", log=lines.append, on_epoch_end=rows.append)
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: tensorboard is not installed")
    assert len(rows) == 1 and len(load_run(run).history) == 1 and not (run / "tb").exists()


def test_tensorboard_may_be_switched_on_when_resuming(tmp_path):
    from conftest import StopAfter
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=2), tmp_path / "run", log=quiet, on_epoch_end=StopAfter(1))
    run = fit(tiny_config(epochs=2, tensorboard=True), tmp_path / "run", resume=True, log=quiet)
    assert len(load_run(run).history) == 2


def test_train_tensorboard_option(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, stdout, _ = cli(capsys, "train", "--synthetic", "--epochs", "1", "--batch-size", "100", "--device", "cpu",
                          "--no-progress", "--set", "model=tiny_resnet18", "--set", "synthetic_train=200",
                          "--set", "synthetic_test=100", "--tensorboard", "--out", tmp_path / "run")
    assert code == 0 and stdout.count("note: tensorboard is not installed") == 1
    assert load_run(tmp_path / "run").config["tensorboard"] is True
