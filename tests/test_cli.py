import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cvlab.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


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
    (["train", "--epochs", "0"], "argument --epochs: epochs must be in [1, 10000], got 0"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "lr=fast"], "lr must be a number"),
    (["train", "--lr", "inf"], "argument --lr: lr must be a finite number, got 'inf'"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--device", "tpu"], "device must be one of auto, cpu, cuda, npu, mps"),
    (["data", "check", "--data-root", "/nonexistent/cvlab"], "no CIFAR-100 at /nonexistent/cvlab"),
    (["frobnicate"], "invalid choice"),
])
@pytest.mark.slow
def test_bad_usage_exits_2_with_one_line(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]


@pytest.mark.slow
def test_presets_and_models_list_one_line_each():
    out = run_cli("presets").stdout.strip().splitlines()
    assert out[0].startswith("handout ")
    models = run_cli("models").stdout
    assert "11,223,140" in models and "11,220,132" in models


@pytest.mark.slow
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


@pytest.mark.slow
def test_data_check_reports_counts(cifar_folder):
    result = run_cli("data", "check", "--data-root", str(cifar_folder), "--json")
    # 200 images is not the real data set: the size check refuses it with one line.
    assert result.returncode == 2 and "expected 50000 train images" in result.stderr
    synthetic = run_cli("data", "check", "--synthetic")
    assert synthetic.returncode == 0 and "SYNTHETIC" in synthetic.stdout and "100 fine" in synthetic.stdout


# ---------------------------------------------------------------------------- options generated from Config

def run_main(capsys, *args):
    """`main(args)` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def parse(*args):
    return build_parser().parse_args(list(args))


def test_train_help_lists_every_config_field(capsys):
    from cvlab.core.config import FIELDS
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    for spec in FIELDS.values():
        option = "--" + spec.name.replace("_", "-")
        assert option in out, option
        if spec.type is bool and spec.name != "preset":
            assert "--no-" + spec.name.replace("_", "-") in out
    for documented in ("--preset", "--config", "--epochs N", "--batch-size N", "--lr X", "--subset N", "--seed N",
                       "--no-progress", "--set KEY=VALUE", "--data-root DIR", "--synthetic", "--out DIR", "--resume",
                       "{auto,cpu,cuda,npu,mps}", "{adam,adamw,sgd}", "(default: 1024)"):
        assert documented in out, documented
    code, out, _ = run_main(capsys, "presets", "--fields")
    lines = [line for line in out.strip().splitlines() if not line.startswith("# ")]  # "# data": a section
    assert code == 0 and [line.split()[0] for line in lines] == list(FIELDS) and "sgd" in out
    assert {spec.section for spec in FIELDS.values()} == {"run", "model", "data", "optimization", "execution"}


def test_only_the_options_given_override_the_preset():
    from cvlab.cli.common import explicit_overrides
    from cvlab.cli.train import config_from_args
    from cvlab.core.config import make_config

    args = parse("train", "--preset", "fast", "--epochs", "1", "--no-progress", "--zero-init-last-bn",
                 "--set", "lr=0.1", "--set", "shuffle=off")
    assert explicit_overrides(args) == {"epochs": 1, "progress": False, "zero_init_last_bn": True, "lr": 0.1,
                                        "shuffle": False}
    assert config_from_args(args) == make_config("fast", epochs=1, progress=False, lr=0.1, shuffle=False)
    assert explicit_overrides(parse("train", "--resume", "--out", "x")) == {}
    assert explicit_overrides(parse("train", "--lr", "0.5", "--set", "lr=0.25")) == {"lr": 0.25}  # --set wins


@pytest.mark.parametrize("preset", ["fast", "best", "+onecycle"])
def test_presets_with_a_warmup_take_one_epoch(preset):
    from cvlab.cli.train import config_from_args
    cfg = config_from_args(parse("train", "--preset", preset, "--epochs", "1"))
    assert cfg.epochs == 1 and cfg.warmup == 0.15 and cfg.preset == preset


def test_config_file_then_options(tmp_path):
    from cvlab.cli.train import config_from_args
    (tmp_path / "c.yaml").write_text("preset: mine\nepochs: 7\nlr: 1e-3\nshuffle: yes\n")
    cfg = config_from_args(parse("train", "--config", str(tmp_path / "c.yaml"), "--epochs", "2"))
    assert (cfg.preset, cfg.epochs, cfg.lr, cfg.shuffle) == ("mine", 2, 1e-3, True)


@pytest.mark.parametrize("args,fragment", [
    (["--lr", "inf"], "lr must be a finite number"),
    (["--set", "weight_decay=inf"], "weight_decay must be a finite number"),
    (["--set", "warmup_epochs=nan"], "config key 'warmup_epochs' was renamed warmup"),
    (["--set", "weight_decay=nan"], "weight_decay must be a finite number"),
    (["--warmup=-inf"], "warmup must be a finite number"),
    (["--momentum", "nan"], "momentum must be a finite number"),
])
def test_non_finite_numbers_are_one_line_errors(capsys, tmp_path, args, fragment):
    code, _, err = run_main(capsys, "train", "--synthetic", "--out", str(tmp_path / "run"), *args)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_ablate_options_and_set_use_the_config_rules(capsys, tmp_path):
    from cvlab.cli.common import explicit_overrides
    args = parse("ablate", "--budget", "smoke", "--epochs", "1", "--no-progress", "--set", "lr=0.5")
    assert explicit_overrides(args) == {"epochs": 1, "progress": False, "lr": 0.5}
    for bad, fragment in ((["--set", "lr=inf"], "lr must be a finite number"),
                          (["--set", "hflip=maybe"], "hflip must be true or false"),
                          (["--device", "tpu"], "device must be one of")):
        code, _, err = run_main(capsys, "ablate", "--budget", "smoke", "--out", str(tmp_path / "a"), *bad)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists()


def test_fast_preset_runs_one_epoch(tmp_path, capsys):
    """`--preset fast --epochs 1` (warmup 15% of the steps, EMA, flip TTA) trains: tiny model, synthetic data."""
    code, out, err = run_main(capsys, "train", "--preset", "fast", "--epochs", "1", "--synthetic", "--model",
                              "tiny_resnet18", "--batch-size", "50", "--device", "cpu", "--no-progress",
                              "--set", "synthetic_train=200", "--set", "synthetic_test=100",
                              "--out", str(tmp_path / "run"))
    assert code == 0, err
    import json
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["preset"], saved["epochs"], saved["warmup"]) == ("fast", 1, 0.15)


def test_device_names_are_listed_once():
    """Every --device option offers config.DEVICES (the tuple cvlab.core.device resolves)."""
    from cvlab.core.config import DEVICES
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    offered = {name: a.choices for name, p in commands.items() for a in p._actions if a.dest == "device"}
    assert {"train", "ablate"} <= set(offered)  # and every optional command that has the option (bench, doctor, ...)
    assert all(tuple(c) == DEVICES for c in offered.values()), offered


@pytest.mark.slow
def test_output_into_a_closed_pipe_is_not_a_traceback():
    """`python -m cvlab presets | head -1`: the reader closes the pipe early; no BrokenPipeError traceback."""
    done = subprocess.run(f"{shlex.quote(sys.executable)} -m cvlab presets | head -1", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("handout") and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--cell-timeout", "1e300"], "argument --cell-timeout: expected a number more than 0 and at most 2592000"),
    (["--cell-timeout", "nan"], "argument --cell-timeout: expected a number more than 0"),
    (["--price-per-hour", "nan"], "argument --price-per-hour: expected a number at least 0"),
    (["--price-per-hour", "inf"], "argument --price-per-hour: expected a number at least 0"),
    (["--price-per-hour", "-3"], "argument --price-per-hour: expected a number at least 0"),
    (["--auto-stop-hours", "-1"], "argument --auto-stop-hours: expected a number at least 0"),
    (["--auto-stop-hours", "inf"], "argument --auto-stop-hours: expected a number at least 0"),
])
def test_report_numbers_are_finite_and_bounded_when_parsed(capsys, tmp_path, args, fragment):
    """A cell timeout beyond Jupyter's timers (it failed with OverflowError once the kernel had started), a nan,
    inf or negative price or auto-stop time: one line, exit 2, before anything starts."""
    code, out, err = run_main(capsys, "report", "--out", str(tmp_path / "out"), *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()
    assert parse("report", "--price-per-hour", "0", "--auto-stop-hours", "0", "--cell-timeout", "600").cell_timeout == 600


def test_an_output_option_naming_a_folder_is_refused_before_a_suffix_is_added(tmp_path):
    """`predict --grid FOLDER` wrote FOLDER.png beside the folder."""
    from cvlab.core.errors import UsageError
    from cvlab.core.paths import check_output_file

    folder = tmp_path / "figures"
    folder.mkdir()
    with pytest.raises(UsageError, match=f"--grid {folder} is a folder; give a file name inside it"):
        check_output_file(folder, False, "--grid", ".png", (".png",))
    assert check_output_file(tmp_path / "grid", False, "--grid", ".png", (".png",)) == tmp_path / "grid.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


SLOW_TORCH_IMPORT = """
import importlib.abc, os, sys, time
from pathlib import Path

class SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            Path(os.environ["CVLAB_TEST_READY"]).touch()
            time.sleep(30)
        return None

sys.meta_path.insert(0, SlowTorch())
"""


@pytest.mark.slow
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
    """Ctrl-C during the seconds `python -m cvlab` spends importing torch: exit 130 and the usual one line, no
    traceback."""
    import os
    import signal
    import time
    import cvlab
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_TORCH_IMPORT)
    ready = tmp_path / "ready"
    env = {**os.environ, "CVLAB_TEST_READY": str(ready),
           "PYTHONPATH": os.pathsep.join([str(hook), str(Path(cvlab.__file__).resolve().parents[1])])}
    child = subprocess.Popen([sys.executable, "-m", "cvlab", "presets"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130 and stderr.strip().splitlines() == ["cvlab: interrupted"], stderr
