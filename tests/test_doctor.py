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
