"""`cvlab doctor`: the report, the data check, the self-test and the exit codes (tiny sizes, CPU)."""
from __future__ import annotations

import pytest

from cvlab.cli import main
from cvlab.experiments import doctor
from cvlab.experiments.doctor import Check, Sizes, run_doctor

TINY = Sizes(models=("tiny_resnet18",), batch=8, steps=4, lr=0.05, resume_model="tiny_resnet18")


@pytest.fixture()
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(doctor, "CPU_SIZES", TINY)


def test_report_without_selftest(tmp_path, capsys):
    assert main(["doctor", "--device", "cpu", "--data-root", str(tmp_path / "none"), "--no-selftest"]) == 0
    out = capsys.readouterr().out
    for text in ("versions     python", "torch ", "device       cpu", "fused optimizer kernels",
                 "presets here", "handout", "fast, best", "data         none at", "resources    disk",
                 "all checks passed"):
        assert text in out
    assert len(out.splitlines()) <= 24  # one screen


def test_selftest_passes_on_the_cpu(tmp_path, tiny_sizes, capsys):
    assert main(["doctor", "--device", "cpu", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("train tiny_resnet18", "save/resume", "eval vs CPU"):
        assert f"PASS  {name}" in out
    assert "largest weight difference 0 (allowed 0)" in out  # bit-exact resume on the CPU
    assert out.rstrip().splitlines()[-1].startswith("all checks passed")


def test_a_failing_check_is_named_and_exits_1(tmp_path, tiny_sizes, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_resume", lambda device, sizes: Check("save/resume", False, "differs"))
    assert main(["doctor", "--device", "cpu", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  save/resume" in out and out.rstrip().splitlines()[-1].startswith("FAILED: save/resume")


def test_an_exception_in_a_check_is_a_failure_not_a_crash(monkeypatch):
    def broken(device, sizes, model):
        raise RuntimeError("CUDA error: no kernel image is available")
    monkeypatch.setattr(doctor, "check_training", broken)
    monkeypatch.setattr(doctor, "check_resume", lambda device, sizes: Check("save/resume", True, "ok"))
    import torch
    checks = doctor.self_test(torch.device("cpu"), TINY)
    assert [(c.name, c.ok) for c in checks] == [("train tiny_resnet18", False), ("save/resume", True),
                                                ("eval vs CPU", False)]
    assert "no kernel image" in checks[0].detail


def test_data_check(cifar_folder, tmp_path):
    """Found, not the official bytes, and not 50,000/10,000 images: a failed data check."""
    report = run_doctor("cpu", str(cifar_folder), selftest=False, out=lambda line: None)
    assert [c.name for c in report.failed] == ["data"]
    assert any("BROKEN" in line for line in report.lines)
    report = run_doctor("cpu", str(tmp_path), selftest=False, out=lambda line: None)
    assert not report.failed and any("none at" in line for line in report.lines)


def test_official_md5_is_enough(tmp_path, monkeypatch):
    """Official files are recognised by their MD5 alone, without loading the images."""
    from cvlab.core import data
    (tmp_path / data.ARCHIVE).write_bytes(b"pretend")
    monkeypatch.setitem(data.OFFICIAL_MD5, data.ARCHIVE, data.md5_of(b"pretend"))
    failed, line = doctor.check_data(tmp_path)
    assert failed is None and "official CIFAR-100" in line


def _mismatched_torchvision(monkeypatch, tmp_path):
    """A torchvision that fails to import as one built for another torch does (its C++ operators missing)."""
    import sys

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(fake.parent))


def test_a_torchvision_built_for_another_torch_is_one_failed_check_without_traceback(tmp_path, monkeypatch, capsys):
    import torch

    _mismatched_torchvision(monkeypatch, tmp_path)
    assert main(["doctor", "--device", "cpu", "--data-root", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    failed = [line for line in out.splitlines() if "FAIL  torch/torchvision" in line]
    assert len(failed) == 1 and "operator torchvision::nms does not exist" in failed[0]
    assert f"torch {torch.__version__}" in failed[0] and f"torchvision=={doctor.matching_torchvision(torch.__version__)}" in failed[0]
    assert "Traceback" not in out and "self-test skipped" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED: torch/torchvision")


def test_matching_torchvision_follows_the_release_pairs():
    assert doctor.matching_torchvision("2.5.1+cpu") == "0.20" and doctor.matching_torchvision("2.0.0") == "0.15"
    assert doctor.matching_torchvision("1.13.1") == ""


def test_a_part_that_raises_is_a_failed_check_and_the_report_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "preset_plans", lambda device, caps: 1 / 0)
    assert main(["doctor", "--device", "cpu", "--data-root", str(tmp_path / "none"), "--no-selftest"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  presets                  ZeroDivisionError: division by zero" in out
    assert "resources    disk" in out and "Traceback" not in out
