"""Fault injection: each probe of issue 10 (and the run-directory parts of issue 13) as a test.

Bad input or a fault in the environment ends with one line on stderr and exit 2 (3 for a diverged
run); nothing the user had is lost; a checkpoint is read as data and never runs code.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import cvlab.core.engine as engine
from cvlab.cli import main
from cvlab.core.engine import fit
from cvlab.core.errors import Diverged, RunDirError
from cvlab.core.runs import RunDir, load_checkpoint, load_run

from conftest import StopAfter, tiny_config

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 1-epoch run, copied by tests that damage it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(tiny_config(epochs=1), out, **QUIET)
    return out


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def cli(capsys, *argv):
    """Run the CLI in-process: (exit code, stderr lines)."""
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


class Payload:
    """Unpickling this object would create a file: the proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(run_dir, marker, key="scheduler"):
    """Replace one value of last.pt with an object whose unpickling runs a shell command."""
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state[key] = Payload(marker)
    torch.save(state, run_dir / "last.pt")


# ---------------------------------------------------------------------------- checkpoints never run code

def test_crafted_checkpoint_is_refused_on_resume(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    craft(run, marker)
    code, err = cli(capsys, "train", "--resume", "--out", run)
    assert code == 2 and len(err) == 1 and "refusing to load" in err[0]
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_by_every_reader(trained, tmp_path):
    from cvlab.coursework.baseline import bn_mode_check
    from cvlab.core.data import load_for_config
    from cvlab.experiments.ablate import run_ablation
    from cvlab.experiments.analysis import predict_run

    run = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    craft(run, marker, key="model")
    with pytest.raises(RunDirError, match="refusing to load"):
        predict_run(run, device="cpu")
    with pytest.raises(RunDirError, match="refusing to load"):
        bn_mode_check(run, load_for_config(tiny_config()).train, n=10)
    with pytest.raises(RunDirError, match="refusing to load"):
        RunDir(run).load_checkpoint("last")
    with pytest.raises(RunDirError, match="refusing to load"):
        fit(None, run, resume=True, **QUIET)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, "truncate"])
def test_damaged_checkpoint_is_one_line(trained, tmp_path, capsys, content):
    run = copy_run(trained, tmp_path / "run")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2] if content == "truncate" else content)
    code, err = cli(capsys, "train", "--resume", "--out", run)
    assert code == 2 and len(err) == 1 and "not a readable checkpoint" in err[0]


def test_checkpoint_holds_only_tensors_and_plain_values(trained):
    state = torch.load(trained / "last.pt", weights_only=True)  # no allow-list needed
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"][1], list)
