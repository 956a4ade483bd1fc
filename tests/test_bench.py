"""`python -m cvlab bench` at a tiny size: runs in seconds, writes the documented JSON, rejects bad options."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cvlab.experiments import bench
from cvlab.cli import main
from cvlab.core.data import in_memory_data

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"



@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    before = torch.get_num_threads()
    rc = main(["bench", "--device", "cpu", "--models", "handout_resnet18", "--batch-size", "4", "--steps", "2",
               "--windows", "2", "--warmup", "1", "--optimizer-impl", "auto,fused", "--threads", "1",
               "--json", str(out)])
    torch.set_num_threads(before)
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def report(report_file):
    return json.loads(report_file.read_text())


def test_report_has_the_documented_fields(report):
    assert tuple(report) == bench.REPORT_FIELDS
    assert report["schema"] == bench.SCHEMA
    assert [(r["path"], r["optimizer_impl"]) for r in report["results"]] == [
        ("handout", "default"), ("cvlab", "auto"), ("cvlab", "fused")]
    for row in report["results"]:
        assert tuple(row) == bench.RESULT_FIELDS
        assert len(row["train_windows"]) == 2 and row["train_images_per_second"] > 0
        assert row["train_images_per_second"] == pytest.approx(sum(row["train_windows"]) / 2, abs=0.01)  # median
        assert 0 < row["data_share_of_train_step"] < 1
        assert row["last_train_loss"] == pytest.approx(row["last_train_loss"])  # finite, not NaN
    handout, auto, fused = (r["last_train_loss"] for r in report["results"])
    assert auto == pytest.approx(handout, rel=1e-6)  # same data, weights and kernels: the same training
    assert fused == pytest.approx(handout, rel=1e-3)
    for ratio in report["ratios"]:
        assert tuple(ratio) == bench.RATIO_FIELDS and ratio["same_numerics"] is True
    assert tuple(report["flops"]["handout_resnet18"]) == bench.FLOPS_FIELDS
    assert report["settings"]["train_images"] == 8 and report["environment"]["torch_threads"] == 1
    assert report["command"].startswith("python -m cvlab bench --device cpu --models handout_resnet18")


def test_show_prints_a_saved_report(report_file, report, capsys):
    assert main(["bench", "--show", str(report_file), "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| handout_resnet18 ")]
    assert len(rows) == 3 and f"{report['results'][0]['train_images_per_second']:.1f}" in rows[0]
    assert out.rstrip().endswith(report["command"])


def test_every_json_field_is_documented():
    text = DOC.read_text(encoding="utf-8")
    names = bench.REPORT_FIELDS + bench.RESULT_FIELDS + bench.RATIO_FIELDS + bench.FLOPS_FIELDS
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"fields not documented in {DOC}: {missing}"


def test_flops_match_a_count_by_hand():
    """Forward FLOPs of the handout network from the layer shapes: 2 * MACs of convs and the classifier."""
    model = bench.build_model("handout_resnet18")
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += 2 * output.numel() * module.in_features

    for m in model.modules():
        m.register_forward_hook(hook)
    model(torch.zeros(1, 3, 32, 32))
    counted = bench.count_flops("handout_resnet18")
    assert counted["forward_flops_per_image"] == total
    assert 2.9 < counted["train_to_forward"] < 3.01  # backward ~2x forward (first conv needs no input grad)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "expected an integer in [1, 50000], got 0"),
    (["--steps", "x"], "expected an integer in [1, 10000], got 'x'"),
    (["--steps", "100000000000"], "--steps: expected an integer in [1, 10000], got 100000000000"),
    (["--seed", "99999999999999999999"], "expected an integer in [0, 4294967295]"),
    (["--models", "resnet50"], "--models"),
    (["--paths", "handout,fast"], "--paths"),
    (["--precision", "fp16"], "fp16"),  # no fp16 autocast on the CPU
    (["--precision", "fp64"], "--precision"),
    (["--channels-last", "maybe"], "--channels-last"),
    (["--optimizer-impl", "turbo"], "--optimizer-impl"),
    (["--json", "/nonexistent-folder/bench.json"], "--json"),
    (["--show", "/nonexistent-folder/bench.json"], "--show"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    try:
        rc = main(["bench", "--device", "cpu"] + argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err


def test_bench_flags_take_the_config_bool_words():
    from cvlab.cli.bench import _flags
    from cvlab.core.errors import UsageError
    assert _flags("Yes,off,true,0", "--compile") == [True, False]
    with pytest.raises(UsageError, match="--compile must be a comma-separated list of 1/true/yes/on or 0/false/no/off"):
        _flags("maybe", "--compile")


def test_each_path_is_timed_with_its_own_cudnn_setting_and_rows_are_written_as_measured(monkeypatch):
    """torch.backends.cudnn.benchmark is process-wide: the handout loop runs without autotuning (as its code
    does) even after a cvlab trainer switched it on; the report is published after every round of windows."""
    real = bench.time_once
    s = bench.Settings(device=torch.device("cpu"), models=["handout_resnet18"], paths=["handout", "cvlab"],
                       batch_size=2, eval_batch_size=2, steps=1, windows=2, warmup=0, precisions=["fp32"],
                       channels_last=[False], compile=[False], optimizer_impl=["default"], augment=False, seed=0)
    data = in_memory_data(s.n_train, s.n_test, s.seed)
    handout = bench.handout_contender(s, "handout_resnet18", data)
    cvlab = bench.cvlab_contender(s, "handout_resnet18", data, "fp32", False, False, "default")
    cvlab.row["cudnn_benchmark"] = True  # what the plan gives on CUDA (False on the CPU)
    flags = []
    monkeypatch.setattr(bench, "time_once", lambda run, device: (flags.append(torch.backends.cudnn.benchmark),
                                                                    real(run, device))[1])
    published = []
    before = torch.backends.cudnn.benchmark
    rows = bench.measure([handout, cvlab], s, on_window=lambda rows: published.append(rows))
    assert flags == [False, True] * 6  # train, eval, data: 2 windows each, handout then cvlab
    assert torch.backends.cudnn.benchmark == before
    assert [r["cudnn_benchmark"] for r in rows] == [False, True] and all(bench.is_measured(r) for r in rows)
    assert len(published) == 5  # after each round but the last (the caller publishes the finished rows)
    first = published[0]
    assert first[0]["train_windows"] and first[0]["eval_images_per_second"] is None
