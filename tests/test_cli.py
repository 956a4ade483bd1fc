import subprocess
import sys

import pytest

from cvlab.cli import build_parser, main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cvlab", *args], capture_output=True, text=True, cwd=cwd)


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def test_help_for_every_subcommand(capsys):
    names = subcommands()
    assert {"train", "presets", "models", "data"} <= set(names)
    for name in [None] + names:
        with pytest.raises(SystemExit) as exit_:
            main(([name] if name else []) + ["--help"])
        assert exit_.value.code == 0
        assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("args,fragment", [
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "lr=fast"], "lr must be float"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--device", "tpu"], "invalid choice"),
    (["data", "check", "--data-root", "/nonexistent/cvlab"], "no CIFAR-100 at /nonexistent/cvlab"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_exits_2_with_one_line(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]


def test_presets_and_models_list_one_line_each():
    out = run_cli("presets").stdout.strip().splitlines()
    assert out[0].startswith("handout ")
    models = run_cli("models").stdout
    assert "11,223,140" in models and "11,220,132" in models


def test_train_synthetic_writes_run_dir_and_refuses_to_overwrite(tmp_path):
    args = ["train", "--synthetic", "--epochs", "1", "--batch-size", "100", "--device", "cpu", "--no-progress",
            "--set", "synthetic_train=200", "--set", "synthetic_test=100", "--out", str(tmp_path / "run")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "SYNTHETIC" in first.stdout
    for name in ("config.json", "history.csv", "metrics.json", "last.pt"):
        assert (tmp_path / "run" / name).exists()
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_data_check_reports_counts(cifar_folder):
    result = run_cli("data", "check", "--data-root", str(cifar_folder), "--json")
    # 200 images is not the real data set: the size check refuses it with one line.
    assert result.returncode == 2 and "expected 50000 train images" in result.stderr
    synthetic = run_cli("data", "check", "--synthetic")
    assert synthetic.returncode == 0 and "SYNTHETIC" in synthetic.stdout and "100 fine" in synthetic.stdout
