"""Fault injection: each probe of issue 10 (and the run-directory parts of issue 13) as a test.

Bad input or a fault in the environment ends with one line on stderr and exit 2 (3 for a diverged
run); nothing the user had is lost; a checkpoint is read as data and never runs code.
"""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import cvlab.core.engine as engine
from cvlab.cli import main
from cvlab.core.engine import fit
from cvlab.core.errors import Diverged, RunDirError
from cvlab.core.runs import RunDir, load_run

from conftest import StopAfter, signal_mid_epoch, tiny_config

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


def flip_bytes_in_largest_member(path, count=4096):
    """XOR `count` bytes in the middle of the largest member of a torch.save zip (a tensor's storage), as a bad
    disk or copy would; the archive's structure stays valid. Returns the member's name."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len + member.file_size // 2 - count // 2
    for i in range(start, start + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return member.filename


@pytest.mark.parametrize("command", ["evaluate", "export", "resume"])
def test_damaged_bytes_inside_a_checkpoint_are_refused_naming_the_member(trained, tmp_path, capsys, command):
    """Bytes changed inside a tensor (a bad disk or copy) no longer load as wrong weights: the zip's CRC-32
    of each member is checked first, and every reader refuses with one line naming the member."""
    run = copy_run(trained, tmp_path / "run")
    member = flip_bytes_in_largest_member(run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    argv = {"evaluate": ("evaluate", run, "--device", "cpu"),
            "export": ("export", run, "--out", tmp_path / "model.pt"),
            "resume": ("train", "--resume", "--out", run, "--epochs", 2)}[command]
    code, err = cli(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    assert "last.pt is damaged: its member" in err[0] and member in err[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before and not (tmp_path / "model.pt").exists()


def test_checkpoint_holds_only_tensors_and_plain_values(trained):
    state = torch.load(trained / "last.pt", weights_only=True)  # no allow-list needed
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"][1], list)


# ---------------------------------------------------------------------------- one writer per run directory

def test_second_writer_is_refused_naming_the_holder(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                  "started": "2026-01-01T00:00:00"}))
        before = (run / "last.pt").read_bytes()
        code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
        assert code == 2 and len(err) == 1 and f"in use by process {holder.pid}" in err[0]
        assert (run / "last.pt").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and the next start takes it over.
    code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
    assert code == 0 and not (run / "run.lock").exists()
    assert load_run(run).metrics["epochs_done"] == 2


def write_lock(run, host, age_seconds, pid=4242):
    """A run.lock as another writer leaves it, its heartbeat (modification time) `age_seconds` old."""
    lock = run / "run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00+0000"}))
    beat = time.time() - age_seconds
    os.utime(lock, (beat, beat))
    return lock


@pytest.mark.parametrize("holder", ["another host", "a reused pid on this host"])
def test_a_lock_without_heartbeat_is_taken_over_naming_its_holder(trained, tmp_path, capsys, holder):
    from cvlab.core.lock import LOCK_STALE_SECONDS
    run = copy_run(trained, tmp_path / "run")
    host, pid = ("stopped-instance-7f3a", 4242) if holder == "another host" else (socket.gethostname(), os.getpid())
    write_lock(run, host, LOCK_STALE_SECONDS + 60, pid)
    assert RunDir(run).lock.holder() is None
    code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
    assert code == 0, err
    why = ("no heartbeat for 6 min, more than the 5 min limit" if holder == "another host"
           else "its pid is now this process's (a restart reused it)")
    assert len(err) == 1 and err[0].startswith("cvlab: warning: taking over the stale lock") and \
        f"of process {pid} on {host} (since 2026-01-01T00:00:00+0000): {why}" in err[0]
    assert not (run / "run.lock").exists() and load_run(run).metrics["epochs_done"] == 2


def test_a_stopped_process_on_this_host_keeps_its_lock_however_old_its_heartbeat(trained, tmp_path, capsys):
    """Ctrl-Z or a laptop's sleep stops the holder longer than the stale limit: its pid still lives, so its lock
    is not stale, and a second start is refused with one line saying how to continue or end the holder."""
    from cvlab.core.lock import LOCK_STALE_SECONDS
    run = copy_run(trained, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        write_lock(run, socket.gethostname(), LOCK_STALE_SECONDS + 3600, holder.pid)
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        assert RunDir(run).lock.holder()["pid"] == holder.pid
        code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
        assert code == 2 and len(err) == 1 and f"in use by process {holder.pid}" in err[0], err
        if sys.platform.startswith("linux"):
            assert f"stopped: continue it with 'kill -CONT {holder.pid}'" in err[0], err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_whose_lock_was_taken_over_stops_and_writes_nothing(tmp_path):
    """The holder was stopped while another host's start took its lock over: at its next write it stops with
    one line, leaving every file as the new holder has it."""
    out = tmp_path / "run"
    snapshot = {}

    def taken_over(row):
        if row["epoch"] == 1:
            write_lock(out, "other-instance", 0, pid=4242)
            snapshot.update({p.name: p.read_bytes() for p in out.iterdir()})

    with pytest.raises(RunDirError) as caught:
        fit(tiny_config(epochs=3), out, on_epoch_end=taken_over, **QUIET)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("stopped without writing: the lock") and \
        "now held by process 4242 on other-instance" in message, message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot  # nothing written, the new lock kept
    assert load_run(out).metrics["epochs_done"] == 1


RACE_STARTER = """
import sys, time, warnings
from pathlib import Path
import cvlab.core.lock as L

real = L.RunLock._take_over
def slow_take_over(self, *args, **kwargs):  # widen the window between finding the lock stale and taking it
    time.sleep(0.3)
    return real(self, *args, **kwargs)
L.RunLock._take_over = slow_take_over
warnings.simplefilter("ignore")
folder, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
lock = L.RunLock(folder / "run.lock", folder)
try:
    lock.acquire()
except L.RunDirError:
    print("refused")
else:
    print("held")
    time.sleep(1.5)  # hold it while the other starters try
    lock.release()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: the take-over there is not atomic")
def test_of_several_starters_that_find_one_stale_lock_exactly_one_takes_it_over(tmp_path):
    """Four starters find a stale lock (its process gone) at the same moment: exactly one holds the folder,
    the others are refused (with a remove-then-create take-over one could delete the lock another had just
    made, and two held it)."""
    import cvlab
    folder = tmp_path / "run"
    folder.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (folder / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(),
                                                 "started": "2026-01-01T00:00:00+0000"}))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(cvlab.__file__).resolve().parents[1])}
    starters = [subprocess.Popen([sys.executable, "-c", RACE_STARTER, str(folder), str(go)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)  # all four are waiting for the go
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in starters)
    assert outcomes == ["held", "refused", "refused", "refused"], outcomes
    assert not (folder / "run.lock").exists()


def test_a_fresh_lock_from_another_host_is_refused_saying_when_it_goes_stale(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    lock = write_lock(run, "other-instance", 60)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    assert RunDir(run).status() == "running" and RunDir(run).lock.holder()["host"] == "other-instance"
    (run / "metrics.json").write_bytes(before["metrics.json"])
    code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
    stale_at = time.strftime("%H:%M:%S", time.localtime(lock.stat().st_mtime + 300))
    assert code == 2 and len(err) == 1, err
    assert "is in use by process 4242 on other-instance (since 2026-01-01T00:00:00+0000), last heartbeat 60 s ago" \
        in err[0] and f"counts as stale at {stale_at}, 5 min after its last heartbeat" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing changed, the lock kept
    os.utime(lock, (time.time() - 301, time.time() - 301))  # five minutes on, with no heartbeat
    assert RunDir(run).lock.holder() is None
    (run / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    assert RunDir(run).status() == "interrupted"


def test_a_heartbeat_from_the_future_does_not_block_for_as_long_as_the_clocks_disagree(trained, tmp_path, capsys):
    """Another host's lock touched "tomorrow" (its clock a day ahead): stale, taken over with one line saying
    so (it read "last heartbeat -86391 s ago" and blocked for a day)."""
    run = copy_run(trained, tmp_path / "run")
    write_lock(run, "fast-clock-host", -86400)
    code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
    assert code == 0 and len(err) == 1, err
    assert "its heartbeat is 24 h 0 min in the future (that host's clock is ahead by more than the 5 min limit)" \
        in err[0], err
    write_lock(run, "fast-clock-host", -60)  # within the limit: still a live holder, said without a minus sign
    code, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", 2)
    assert code == 2 and "last heartbeat 60 s in the future by this host's clock" in err[0], err


def test_the_holder_keeps_the_heartbeat_while_it_trains(tmp_path, monkeypatch):
    import cvlab.core.lock as lock_module
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    run = RunDir(tmp_path / "run")
    lock = tmp_path / "run" / "run.lock"
    with run.open(resume=False):
        os.utime(lock, (1e9, 1e9))  # as if it had not beaten for years
        deadline = time.monotonic() + 10
        while lock.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.stat().st_mtime > time.time() - 60  # the background thread touched it
    assert not lock.exists() and run.lock._heartbeat is None
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 3600.0)
    with run.open(resume=False):
        os.utime(lock, (1e9, 1e9))
        run.write_metrics({"status": "running"})  # every epoch end beats too
        assert lock.stat().st_mtime > time.time() - 60
    seen = []  # every epoch of a run beats
    monkeypatch.setattr(lock_module.RunLock, "beat", lambda self: seen.append(self.held))
    fit(tiny_config(epochs=2), tmp_path / "two", **QUIET)
    assert seen.count(True) >= 2


def test_two_new_runs_into_one_folder(tmp_path):
    out = tmp_path / "run"
    with RunDir(out).open(resume=False):  # another writer, in this process, holds the folder
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            fit(tiny_config(epochs=1), out, **QUIET)
    assert not out.exists()  # the holder created it and wrote nothing: it is gone again
    fit(tiny_config(epochs=1), out, **QUIET)
    assert not (out / "run.lock").exists()


def test_status_of_a_killed_run_is_interrupted(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    (run / "run.lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname()}))  # no such pid
    assert RunDir(run).status() == "interrupted"
    assert RunDir(trained).status() == "complete" and RunDir(tmp_path / "none").status() == "new"


# ---------------------------------------------------------------------------- non-finite values

def poison_after(epoch, trainers):
    """on_epoch_end: after `epoch`, fill the weights with NaN, so the next step's loss is NaN."""
    def callback(row):
        if row["epoch"] == epoch:
            with torch.no_grad():
                for p in trainers[-1].model.parameters():
                    p.fill_(float("nan"))
    return callback


def test_nonfinite_loss_stops_training_as_diverged(tmp_path, monkeypatch):
    trainers = []
    real = engine.build_trainer
    monkeypatch.setattr(engine, "build_trainer", lambda cfg, *a, **k: trainers.append(real(cfg, *a, **k)) or trainers[-1])
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"non-finite loss at epoch 2, step 1/6"):
        fit(tiny_config(epochs=3), out, on_epoch_end=poison_after(1, trainers), **QUIET)
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["status"] == "diverged" and metrics["epochs_done"] == 1
    assert metrics["diverged"] == {"epoch": 2, "step": 1, "steps_per_epoch": 6}
    assert RunDir(out).load_checkpoint()["epoch"] == 1 and len(load_run(out).history) == 1
    assert not (out / "run.lock").exists()


def test_diverging_learning_rate_exits_3_with_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *TINY_ARGS, "--lr", "1000", "--set", "optimizer=sgd", "--out", out)
    assert code == 3 and len(err) == 1 and "non-finite loss at epoch" in err[0]
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["status"] == "diverged"


def test_metrics_are_strict_json(tmp_path):
    from cvlab.core.runs import write_json
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail) == {"a": None, "b": [None, 1.0]}


# ---------------------------------------------------------------------------- resume as documented

TINY_ARGS = ["--synthetic", "--epochs", "2", "--device", "cpu", "--no-progress", "--batch-size", "50",
             "--set", "model=tiny_resnet18", "--set", "synthetic_train=300", "--set", "synthetic_test=100",
             "--set", "eval_batch_size=100", "--set", "shuffle=true", "--set", "normalization=cifar100",
             "--set", "download=false"]


def test_documented_resume_command_continues_with_the_runs_own_config(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=2, crop_padding=4, hflip=True), out, on_epoch_end=StopAfter(1), **QUIET)
    code, err = cli(capsys, "train", "--resume", "--out", out, "--lr", "0.5")
    assert code == 2 and len(err) == 1 and "cannot change lr" in err[0]
    code, err = cli(capsys, "train", "--resume", "--out", out, "--device", "cpu", "--no-progress")
    assert code == 0, err
    run = load_run(out)
    assert run.metrics["status"] == "complete" and len(run.history) == 2


def test_the_hint_after_an_early_ctrl_c_works(tmp_path, capsys, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    lines = []
    with monkeypatch.context() as patch:
        patch.setattr(engine, "run_epoch", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_config(epochs=1), tmp_path / "run", log=lines.append)
    hint = lines[-1].split("continue with: python -m cvlab ")[1].split()
    assert hint[:2] == ["train", "--resume"]
    assert main(hint) == 0
    assert load_run(tmp_path / "run").metrics["status"] == "complete"


@pytest.mark.parametrize("damage", ["missing", "corrupt", "not a config"])
def test_bad_config_json_on_resume_is_one_line(trained, tmp_path, capsys, damage):
    run = copy_run(trained, tmp_path / "run")
    if damage == "missing":
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text("{not json" if damage == "corrupt" else '{"lr": "fast"}')
    code, err = cli(capsys, "train", "--resume", "--out", run)
    assert code == 2 and len(err) == 1 and "config.json" in err[0]


# ---------------------------------------------------------------------------- extending a run

def test_extending_a_constant_schedule_run_equals_a_straight_run(tmp_path, capsys):
    import pandas as pd
    timing = ["epoch_seconds", "images_per_second"]
    fit(tiny_config(epochs=2, crop_padding=4, hflip=True), tmp_path / "straight", **QUIET)
    fit(tiny_config(epochs=1, crop_padding=4, hflip=True), tmp_path / "extended", **QUIET)
    code, err = cli(capsys, "train", "--resume", "--out", tmp_path / "extended", "--epochs", 2)
    assert code == 0, err
    straight, extended = load_run(tmp_path / "straight"), load_run(tmp_path / "extended")
    pd.testing.assert_frame_equal(straight.history.drop(columns=timing), extended.history.drop(columns=timing))
    assert extended.config["epochs"] == 2 and extended.metrics["epochs_planned"] == 2
    a, b = (RunDir(tmp_path / n).load_checkpoint()["model"] for n in ("straight", "extended"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extending_a_length_shaped_schedule_is_refused(tmp_path, capsys):
    fit(tiny_config(epochs=1, schedule="cosine"), tmp_path / "run", **QUIET)
    code, err = cli(capsys, "train", "--resume", "--out", tmp_path / "run", "--epochs", 2)
    assert code == 2 and len(err) == 1 and "'cosine' schedule" in err[0] and "start a new run" in err[0]
    fit(tiny_config(epochs=2), tmp_path / "two", **QUIET)
    with pytest.raises(RunDirError, match="already trained 2 epochs"):
        fit(tiny_config(epochs=1), tmp_path / "two", resume=True, **QUIET)


# ---------------------------------------------------------------------------- best.pt

def test_best_checkpoint_is_chosen_by_validation_accuracy(tmp_path):
    out = tmp_path / "run"
    fit(tiny_config(epochs=3, val_size=100, lr=3e-3), out, **QUIET)
    run = load_run(out)
    best = RunDir(out).load_checkpoint("best")
    assert best["epoch"] == run.metrics["best"]["epoch"] and best["selected_by"] == "val_acc"
    assert best["val_acc"] == run.history["val_acc"].max()
    torch.load(out / "best.pt", weights_only=True)
    fit(tiny_config(epochs=1), tmp_path / "noval", **QUIET)
    assert not (tmp_path / "noval" / "best.pt").exists()
    with pytest.raises(RunDirError, match="validation split"):
        RunDir(tmp_path / "noval").load_checkpoint("best")


# ---------------------------------------------------------------------------- bad input and the environment

@pytest.mark.parametrize("where", ["proc", "under a file"])
def test_unusable_out_is_one_line_and_creates_nothing(tmp_path, capsys, where):
    (tmp_path / "file.txt").write_text("x")
    out = "/proc/cvlab-run" if where == "proc" else tmp_path / "file.txt" / "run"
    code, err = cli(capsys, "train", *TINY_ARGS, "--out", out)
    assert code == 2 and len(err) == 1 and "cannot create" in err[0]
    assert not os.path.exists(out)


def test_data_root_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    for argv in (["train", "--data-root", tmp_path / "file.txt", "--out", tmp_path / "run"],
                 ["data", "download", "--data-root", tmp_path / "file.txt"],
                 ["data", "download", "--data-root", tmp_path / "file.txt" / "sub"]):
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and ("is a file" in err[0] or "lies under" in err[0]), err
    assert not (tmp_path / "run").exists()


def test_offline_download_creates_nothing_and_names_no_part_file(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root, out = tmp_path / "data", tmp_path / "run"
    code, err = cli(capsys, "train", "--data-root", root, "--out", out)
    assert code == 2 and len(err) == 1 and "no network" in err[0] and ".part" not in err[0]
    assert not root.exists() and not out.exists()
    code, err = cli(capsys, "data", "download", "--data-root", root)
    assert code == 2 and len(err) == 1 and ".part" not in err[0] and not root.exists()


@pytest.mark.parametrize("text", [b"epochs: 2\nlr: \xff\xfe\n", b"epochs: [1,\n  lr: 3\n"])
def test_bad_config_file_is_one_line(tmp_path, capsys, text):
    (tmp_path / "c.yaml").write_bytes(text)
    code, err = cli(capsys, "train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and len(err) == 1 and "c.yaml" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--seed", "99999999999999999999"],
     "argument --seed: seed must be in [0, 4294967295], got 99999999999999999999"),
    (["train", "--epochs", "10000000000000000000000"],
     "argument --epochs: epochs must be in [1, 10000], got 10000000000000000000000"),
    (["train", "--batch-size", "1000000000"], "batch_size must be in [1, 50000], got 1000000000"),
    (["train", "--subset", "1000000"], "subset must be in [0, 50000], got 1000000"),
    (["train", "--set", "synthetic_train=100000000"], "synthetic_train must be in [1, 50000], got 100000000"),
    (["train", "--set", "test_subset=20000"], "test_subset must be in [0, 10000], got 20000"),
    (["train", "--set", "eval_batch_size=99999999999"], "eval_batch_size must be in [1, 50000]"),
    (["ablate", "--budget", "smoke", "--seeds", "0,99999999999999999999"],
     "--seeds: each seed must be in [0, 4294967295], got 99999999999999999999"),
    (["ablate", "--budget", "smoke", "--epochs", "10000000000000000000000"], "epochs must be in [1, 10000]"),
    (["ablate", "--budget", "smoke", "--parallel", "1000"], "--parallel: expected an integer in [1, 64], got 1000"),
    (["theory", "--seed", "99999999999999999999"], "--seed: expected an integer in [0, 4294967295]"),
])
def test_absurd_numbers_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    try:
        code = main([*argv, "--out", str(out)])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_absurd_numbers_in_a_config_file_are_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("seed: 99999999999999999999\n")
    code, err = cli(capsys, "train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and len(err) == 1 and "seed must be in [0, 4294967295], got 99999999999999999999" in err[0]
    assert not (tmp_path / "run").exists()


def test_subset_larger_than_the_data_is_refused(tmp_path):
    from cvlab.core.errors import DataError
    with pytest.raises(DataError, match="subset = 1,000 asks for more images than the 300"):
        fit(tiny_config(subset=1000), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_fractional_labels_are_refused(cifar_folder, tmp_path):
    from cvlab.core.errors import DataError
    from test_data import corrupt_copy, edit_entry, load

    def edit(entry):
        entry["fine_labels"] = [float(v) for v in entry["fine_labels"]]
        entry["fine_labels"][3] = 2.5
    root = corrupt_copy(cifar_folder, tmp_path, "train", edit_entry(edit))
    with pytest.raises(DataError, match=r"'fine_labels' holds 2.5, not an integer"):
        load(root, check_md5=False)


def test_disk_full_while_saving_keeps_a_status_and_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    import cvlab.core.runs as runs

    out = tmp_path / "run"
    real = runs.atomic_write_bytes

    def full(path, data):
        if path.name == "last.pt" and (path.parent / "last.pt").exists():  # the second save fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)
    with monkeypatch.context() as patch:
        patch.setattr(runs, "atomic_write_bytes", full)
        with pytest.raises(RunDirError, match="no space left on device.*keeps epoch 1"):
            fit(tiny_config(epochs=2), out, **QUIET)
    assert RunDir(out).status() == "interrupted" and RunDir(out).load_checkpoint()["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not (out / "run.lock").exists()
    fit(None, out, resume=True, **QUIET)
    assert load_run(out).metrics["status"] == "complete"


def test_orphan_temp_files_are_cleaned_at_the_next_start(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    for name in (".last.pt.k3j4h5", ".metrics.json.0badc0de.tmp"):
        (run / name).write_bytes(b"half a file")
    fit(tiny_config(epochs=2), run, resume=True, **QUIET)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_run_files_share_one_mode_that_honors_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        fit(tiny_config(epochs=1, val_size=100), tmp_path / "run", **QUIET)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes) == {"config.json", "history.csv", "metrics.json", "last.pt", "best.pt"}
    assert set(modes.values()) == {0o640}


def test_ablate_reads_run_directories_safely(trained, tmp_path, capsys):
    from cvlab.experiments.ablate import run_status
    from cvlab.core.config import from_dict

    run = copy_run(trained, tmp_path / "ablate" / "handout-s0")
    (run / "metrics.json").write_text("{broken")
    code, err = cli(capsys, "ablate", "--budget", "smoke", "--presets", "handout", "--out", tmp_path / "ablate",
                    "--table-only")
    assert code == 2 and len(err) == 1 and "metrics.json" in err[0]
    # a run stopped before its first epoch is resumed (started again), as `train` does
    cfg = from_dict(json.loads((trained / "config.json").read_text()))
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text((trained / "config.json").read_text())
    assert run_status(started, cfg) == "resume"


def test_ablation_goes_on_after_a_diverged_run(tmp_path, monkeypatch):
    from cvlab.experiments import ablate

    budget = ablate.Budget("tiny", "test", dict(model="tiny_resnet18", synthetic=True, synthetic_train=300,
                                                synthetic_test=100, epochs=1, batch_size=50, eval_batch_size=100,
                                                device="cpu", progress=False, download=False))
    real = engine.run_epoch

    def diverge_for_seed_1(t, epoch, *rest):
        if t.cfg.seed == 1:
            raise engine.NonFiniteLoss(epoch, 1, len(t.train_loader))
        return real(t, epoch, *rest)
    monkeypatch.setattr(engine, "run_epoch", diverge_for_seed_1)
    result = ablate.run_ablation(["handout"], seeds=[0, 1], out=tmp_path, budget=budget, log=lambda s: None)
    assert list(result.runs["seed"]) == [0]
    assert RunDir(tmp_path / "handout-s1").status() == "diverged"
    assert ablate.run_status(tmp_path / "handout-s1", ablate.budget_config("handout", budget, seed=1)) == "diverged"
    assert json.loads((tmp_path / "handout-s1" / "metrics.json").read_text())["status"] == "diverged"


# ---------------------------------------------------------------------------- second probe round (issue 18, item 4)
# Each probe of the second round that fell short, as a test: one line and exit 2 (or a correct result),
# checked before the work starts, nothing on disk overwritten or left behind.

def cli_out(capsys, *argv):
    """Run the CLI in-process: (exit code, stdout, stderr lines)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def one_line(code, err, fragment):
    assert code == 2 and len(err) == 1 and err[0].startswith("cvlab: error:") and fragment in err[0], (code, err)


def as_diverged(run, nan_weights=True):
    """Make `run` look like a run that diverged after epoch 1 whose weights evaluate to NaN."""
    if nan_weights:
        state = torch.load(run / "last.pt", weights_only=True)
        for tensor in state["model"].values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        torch.save(state, run / "last.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(status="diverged", diverged={"epoch": 2, "step": 1, "steps_per_epoch": 6})
    metrics["final"]["test_loss"] = None  # what strict JSON records for a NaN
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_evaluate_a_diverged_run(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    as_diverged(run)
    code, out, err = cli_out(capsys, "evaluate", run, "--device", "cpu", "--json", "-")
    record = json.loads(out, parse_constant=pytest.fail)  # strict JSON: NaN is null
    assert code == 0 and not err and record["test_loss"] is None and record["recorded"]["test_loss"] is None
    code, out, err = cli_out(capsys, "evaluate", run, "--device", "cpu")
    assert code == 0 and not err
    assert "test loss not finite" in out and "(identical)" in out and "this run diverged" in out


def test_evaluate_and_export_with_a_corrupt_metrics_json(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    (run / "metrics.json").write_text("{broken")
    one_line(*cli(capsys, "evaluate", run, "--device", "cpu"), "metrics.json is unreadable or not valid JSON")
    one_line(*cli(capsys, "export", run, "--out", tmp_path / "m.pt"), "metrics.json is unreadable")
    assert not (tmp_path / "m.pt").exists()


def png(path, size=(40, 40)):
    from PIL import Image
    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


@pytest.mark.parametrize("mismatch", ["config names another model", "tensors of other shapes"])
def test_checkpoint_of_another_run_is_one_line_everywhere(trained, tmp_path, capsys, mismatch):
    run = copy_run(trained, tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    if mismatch == "config names another model":
        state["config"]["model"] = "cifar_resnet18"
        expected = "was saved by another run: its config names model 'cifar_resnet18'"
    else:
        state["model"]["fc.weight"] = torch.zeros(10, state["model"]["fc.weight"].shape[1])
        expected = "1 tensor(s) of another shape, e.g. fc.weight (10, 128) in the file, (100, 128) in the model"
    torch.save(state, run / "last.pt")
    image = png(tmp_path / "cat.png")
    for argv in (["evaluate", run, "--device", "cpu"], ["predict", run, image, "--device", "cpu"],
                 ["export", run, "--out", tmp_path / "m.pt"]):
        one_line(*cli(capsys, *argv), expected)
    assert not (tmp_path / "m.pt").exists()


def test_predict_grid_without_suffix_refuses_the_file_it_would_write(trained, tmp_path, capsys):
    image = png(tmp_path / "cat.png")
    (tmp_path / "grid.png").write_bytes(b"mine")
    one_line(*cli(capsys, "predict", trained, image, "--device", "cpu", "--grid", tmp_path / "grid"),
             f"{tmp_path / 'grid.png'} already exists")
    assert (tmp_path / "grid.png").read_bytes() == b"mine"
    code, out, _ = cli_out(capsys, "predict", trained, image, "--device", "cpu", "--grid", tmp_path / "new")
    assert code == 0 and f"wrote {tmp_path / 'new.png'}" in out and (tmp_path / "new.png").stat().st_size > 0


def test_output_paths_are_checked_before_the_work(trained, tmp_path, capsys, monkeypatch):
    import cvlab.experiments.analysis as analysis
    import cvlab.experiments.export as export
    import cvlab.experiments.predict as predict

    def no_work(*args, **kwargs):
        pytest.fail("the work started before the output path was checked")
    monkeypatch.setattr(analysis, "evaluate_run", no_work)
    monkeypatch.setattr(predict, "predict_files", no_work)
    monkeypatch.setattr(export, "load_trained_model", no_work)
    image, missing = png(tmp_path / "cat.png"), tmp_path / "nope"
    probes = [(["evaluate", trained, "--json", missing / "x.json"], "the folder"),
              (["evaluate", trained, "--json", tmp_path], "is a folder; give a file name inside it"),
              (["evaluate", trained, "--json", ""], "--json needs a file name"),
              (["predict", trained, image, "--grid", missing / "g.png"], "the folder"),
              (["predict", trained, image, "--grid", tmp_path / "g.xyz"], "the suffix .xyz is not one of .png"),
              (["export", trained, "--out", missing / "m.pt"], "the folder"),
              (["export", trained, "--out", tmp_path / "m.onnx"], "names the torch file, which is not an ONNX graph"),
              (["export", trained, "--out", tmp_path / "m.pt", "--onnx"], None)]
    (tmp_path / "m.onnx").write_bytes(b"mine")
    for argv, fragment in probes:
        code, err = cli(capsys, *argv)
        one_line(code, err, fragment or f"{tmp_path / 'm.onnx'} already exists")
        assert "--force" not in err[0] or "already exists" in err[0]
    assert not missing.exists() and (tmp_path / "m.onnx").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "m.onnx"]


def test_report_options_are_checked_before_any_notebook(tmp_path, capsys):
    pytest.importorskip("papermill")
    pytest.importorskip("jupyter_client")
    for bad in ("-5", "0", "nan"):
        with pytest.raises(SystemExit) as stop:
            main(["report", "--profile", "smoke", "--cell-timeout", bad])
        assert stop.value.code == 2
    capsys.readouterr()
    (tmp_path / "file").write_text("mine")
    one_line(*cli(capsys, "report", "--profile", "smoke", "--no-estimate", "--out", tmp_path / "file"),
             "is a file, not a folder")
    one_line(*cli(capsys, "report", "--profile", "smoke", "--no-estimate", "--kernel", "nokernel",
                  "--out", tmp_path / "rep"), "no Jupyter kernel named 'nokernel'")
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("command", ["evaluate --json", "export", "predict --grid"])
def test_a_full_disk_under_an_output_file_is_one_line_and_leaves_nothing(trained, tmp_path, capsys, small_disk,
                                                                          command):
    """evaluate --json, export and predict --grid on a full disk: one line naming the file, exit 2, no file
    (not even an empty one, which the rerun would refuse as existing) and no temp file; after making room the
    same command works."""
    from PIL import Image
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    target = small_disk.path / {"evaluate --json": "eval.json", "export": "model.pt", "predict --grid": "grid.png"}[command]
    argv = {"evaluate --json": ("evaluate", trained, "--device", "cpu", "--json", target),
            "export": ("export", trained, "--out", target),
            "predict --grid": ("predict", trained, image, "--device", "cpu", "--grid", target)}[command]
    small_disk.fill(leave=0 if command == "evaluate --json" else 8192)  # a JSON of a few KB: nothing left
    code, err = cli(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"cvlab: error: cannot write {target} (no space left on device)"), err
    assert small_disk.names() == []
    small_disk.make_room()
    code, err = cli(capsys, *argv)
    assert code == 0 and target.stat().st_size > 0, err


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_checkpoint_whose_weights_hold_strings_is_one_line_for_every_reader(trained, tmp_path, capsys, command):
    """Plain values where tensors belong (the names and shapes right): evaluate, predict and export say so in one
    line, as resume does, instead of a traceback from inside load_state_dict."""
    from PIL import Image
    run = copy_run(trained, tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dim() == 0)  # a 0-d tensor: its "shape" matches a str's
    state["model"][name] = "not a tensor"
    if state.get("ema"):
        state["ema"]["module"][name] = "not a tensor"
    torch.save(state, run / "last.pt")
    Image.new("RGB", (40, 30)).save(tmp_path / "cat.png")
    argv = {"evaluate": ("evaluate", run, "--device", "cpu"),
            "predict": ("predict", run, tmp_path / "cat.png", "--device", "cpu"),
            "export": ("export", run, "--out", tmp_path / "model.pt")}[command]
    one_line(*cli(capsys, *argv), f"value(s) that are not tensors, e.g. {name} is a str")
    assert not (tmp_path / "model.pt").exists()


def test_a_test_loss_that_is_not_finite_is_said_in_the_final_line(tmp_path, monkeypatch):
    """Training losses finite, the test loss NaN (e.g. weights that overflow only on test images): the run ends
    "complete", and its last line says which epochs' figures mean nothing."""
    real = engine.evaluate
    calls = []

    def nan_on_test(step, loader, *args, **kwargs):
        figures = real(step, loader, *args, **kwargs)
        calls.append(1)
        return {**figures, "loss": float("nan")} if len(calls) == 2 else figures
    monkeypatch.setattr(engine, "evaluate", nan_on_test)
    lines = []
    fit(tiny_config(epochs=2), tmp_path / "run", log=lines.append)
    assert load_run(tmp_path / "run").metrics["status"] == "complete"
    assert lines[-1].startswith("warning: the test or validation loss was not finite in 1 epoch(s) (2) although "
                                "the training losses were"), lines[-1]


def test_the_resume_hint_is_shell_quoted(tmp_path):
    """A run directory with a space or `$(...)` in its path: the line printed on Ctrl-C pastes into a shell as is."""
    import shlex
    out = tmp_path / "my runs $(touch pwned)"
    lines = []
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=2), out, log=lines.append, on_epoch_end=StopAfter(1))
    hint = lines[-1].split("continue with: ", 1)[1]
    assert shlex.split(hint) == ["python", "-m", "cvlab", "train", "--resume", "--out", str(out)], hint


@pytest.mark.parametrize("damage", ["metrics.json folder", "config.json fifo", "history.csv text",
                                    "history.csv epochs", "history.csv columns"])
def test_damaged_run_files_are_one_line_and_never_hang(trained, tmp_path, capsys, damage):
    """metrics.json as a folder, config.json as a FIFO (reading it waited forever), a history.csv that is not
    one cvlab wrote: evaluate and load_run say so in one line."""
    run = copy_run(trained, tmp_path / "run")
    name, kind = damage.split()
    target = run / name
    target.unlink()
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        rows = (trained / "history.csv").read_text().splitlines()
        if kind == "text":
            rows[1] = ",".join(["1", "lots"] + rows[1].split(",")[2:])
        elif kind == "epochs":
            rows[1] = ",".join(["7"] + rows[1].split(",")[1:])
        else:
            rows = [",".join(r.split(",")[1:]) for r in rows]  # the epoch column gone
        target.write_text("\n".join(rows) + "\n")
    fragment = {"folder": "metrics.json is a folder", "fifo": "config.json is not a regular file",
                "text": "column train_loss holds something other than numbers",
                "epochs": "its epochs are not 1, 2, 3, ... in order", "columns": "no column epoch"}[kind]
    if name == "history.csv":
        with pytest.raises(RunDirError, match=re.escape(fragment)):
            load_run(run)
    else:
        done = subprocess.run([sys.executable, "-m", "cvlab", "evaluate", str(run), "--device", "cpu"],
                              capture_output=True, text=True, timeout=60)  # a FIFO hung it forever
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr


def test_disk_full_at_the_lock_leaves_no_lock_and_says_why(tmp_path, monkeypatch):
    import errno

    real = os.fdopen

    def full(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return f
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", full)
        with pytest.raises(RunDirError, match=r"cannot write the lock .*run.lock \(no space left on device\)"):
            fit(tiny_config(epochs=1), out, **QUIET)
    assert not out.exists()  # no 0-byte run.lock, no empty folder: the next start is not told to wait
    out.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", full)
        with pytest.raises(RunDirError, match="no space left"):
            RunDir(out).lock.acquire()
    assert list(out.iterdir()) == []


def test_num_classes_below_the_datas_classes_is_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    one_line(*cli(capsys, "train", *TINY_ARGS, "--num-classes", "10", "--out", out),
             "num_classes = 10, but the data has labels up to 99")
    assert not out.exists()


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from cvlab.core.errors import DataError
    from cvlab.experiments.predict import prepare_image

    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert prepare_image(tmp_path / "grey16.png").unique().tolist() == [128]  # mid-grey, not near-white
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match="floating-point pixels are not supported"):
        prepare_image(tmp_path / "float.tiff")


def test_ablate_devices_are_checked(tmp_path, capsys, monkeypatch):
    import cvlab.core.device as device

    monkeypatch.setattr(device, "device_count", lambda kind: 2 if kind == "cuda" else 0)
    out = tmp_path / "ablate"
    base = ["ablate", "--budget", "smoke", "--presets", "handout", "--out", out]
    one_line(*cli(capsys, *base, "--devices", "cuda:7"),
             "cannot place runs on cuda:7: this machine has cuda:0 to cuda:1")
    one_line(*cli(capsys, *base, "--devices", "npu:0"), "this machine has no npu device")
    one_line(*cli(capsys, *base, "--devices", "cuda:0,cuda:1", "--parallel", "3"), "disagree")
    one_line(*cli(capsys, *base, "--table-only"), "holds none of the planned run directories")
    assert not out.exists()


def test_ablate_uses_a_single_listed_device(tmp_path, monkeypatch):
    from cvlab.experiments import ablate, parallel

    placed = []

    def record(jobs, slots, log_dir, log):
        placed.extend((job.label, slot.name) for job, slot in zip(jobs, slots))
        raise KeyboardInterrupt  # enough: the run was sent to the listed device
    monkeypatch.setattr(parallel, "run_jobs", record)
    budget = ablate.Budget("tiny", "test", dict(model="tiny_resnet18", synthetic=True, synthetic_train=300,
                                                synthetic_test=100, epochs=1, device="cpu", progress=False))
    with pytest.raises(KeyboardInterrupt):
        ablate.run_ablation(["handout"], out=tmp_path, budget=budget, devices="cpu", log=lambda s: None)
    assert placed == [("handout-s0", "cpu")]


def test_damaged_checkpoints_are_one_plain_line(trained, tmp_path, capsys):
    import pickle

    from cvlab.core.errors import cause

    run = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    (run / "last.pt").write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))  # a raw pickle
    code, err = cli(capsys, "evaluate", run, "--device", "cpu")
    one_line(code, err, "not written by torch.save")  # one line: no torch warning asking to file an issue
    assert not marker.exists()
    (run / "last.pt").write_bytes(b"")
    one_line(*cli(capsys, "evaluate", run, "--device", "cpu"), "last.pt is not a readable checkpoint (empty)")
    assert cause(EOFError()) == "EOFError" and cause(ValueError("bad\nmore")) == "ValueError: bad"


def test_resume_without_last_pt_but_with_epochs_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    (run / "last.pt").unlink()
    history = (run / "history.csv").read_text()
    one_line(*cli(capsys, "train", "--resume", "--out", run),
             "history.csv records finished epochs but last.pt is missing")
    assert (run / "history.csv").read_text() == history


def test_empty_out_and_empty_config_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in ("train", "ablate"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--out", ""])
        assert stop.value.code == 2 and "expected a path, got ''" in capsys.readouterr().err
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    one_line(*cli(capsys, "train", "--config", tmp_path / "empty.yaml", "--out", tmp_path / "run"),
             "empty.yaml is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def test_subset_that_is_not_a_multiple_of_100_says_what_it_keeps(cifar_folder):
    from cvlab.core.data import load_cifar100, subset

    data = load_cifar100(cifar_folder, check_md5=False, expected_sizes=None)
    with pytest.warns(UserWarning, match=r"subset = 150 is not a multiple of 100: .* so 100 images are used"):
        assert len(subset(data.train, 150)) == 100


def test_byte_flipped_archive_is_a_crc_error(cifar_archive, tmp_path):
    import shutil

    from cvlab.core.data import ARCHIVE, load_cifar100
    from cvlab.core.errors import DataError

    blob = (cifar_archive / ARCHIVE).read_bytes()
    for offset in (len(blob) // 50, len(blob) // 3, len(blob) - 6):  # in the data, in the middle, in the trailer
        root = tmp_path / str(offset)
        root.mkdir()
        flipped = bytearray(blob)
        flipped[offset] ^= 0xFF
        (root / ARCHIVE).write_bytes(bytes(flipped))
        with pytest.raises(DataError, match=r"cannot read archive \((CRC check failed|Incorrect length)"):
            load_cifar100(root, check_md5=False, expected_sizes=None)
        shutil.rmtree(root)


def test_malicious_data_never_gets_the_structure_checks_note(cifar_folder, tmp_path):
    import pickle
    import warnings

    from cvlab.core.data import load_cifar100
    from cvlab.core.errors import DataError
    from test_data import corrupt_copy

    marker = tmp_path / "pwned"
    root = corrupt_copy(cifar_folder, tmp_path, "train", lambda b: pickle.dumps({"data": Payload(marker)}))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DataError, match="not a CIFAR-100 pickle"):
        warnings.simplefilter("always")
        load_cifar100(root, expected_sizes=None)  # MD5 checked: it differs
    assert not [w for w in caught if "structure checks passed" in str(w.message)] and not marker.exists()


def test_a_lost_data_parallel_peer_is_one_line(tmp_path, capsys, monkeypatch):
    import cvlab.core.engine as engine_module
    from cvlab.core.distributed import lost_peer

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:35221: Connection reset by peer. This is typically caused by a remote worker")
    assert lost_peer(gloo) is None  # one process: not a data-parallel run, the traceback stays
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert lost_peer(RuntimeError("shape mismatch")) is None
    monkeypatch.setattr(engine_module, "fit", lambda *a, **k: (_ for _ in ()).throw(gloo))
    code, err = cli(capsys, "train", *TINY_ARGS, "--out", tmp_path / "run")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("cvlab: error: process 0: another process of this data-parallel run stopped "
                             "(connection reset by peer)") and "--resume" in err[0]


# ---------------------------------------------------------------------------- stopped by a signal mid-epoch

@pytest.mark.parametrize("sig,code,reason", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
@pytest.mark.slow
def test_a_signal_mid_epoch_stops_cleanly_and_the_resume_is_exact(tmp_path, capsys, sig, code, reason):
    import pandas as pd
    timing = ["epoch_seconds", "images_per_second"]
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert cli(capsys, "train", *TINY_ARGS, "--out", straight)[0] == 0
    steps_per_epoch = 300 // 50
    returncode, stdout, stderr = signal_mid_epoch(tmp_path, [sys.executable, "-m", "cvlab", "train", *TINY_ARGS,
                                                             "--out", out], sig, at_step=steps_per_epoch + 3)
    assert returncode == code, (stdout, stderr)
    assert len(stderr) == 1 and stderr[0] == ("cvlab: stopped by SIGTERM" if code == 143 else "cvlab: interrupted")
    hint = stdout[-1]
    assert hint == f"interrupted by {reason}{' (SIGINT)' if code == 130 else ''} after epoch 1; continue with: " \
                   f"python -m cvlab train --resume --out {out}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["status"], metrics["epochs_done"]) == ("interrupted", 1)
    assert RunDir(out).status() == "interrupted" and RunDir(out).load_checkpoint()["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "history.csv", "last.pt", "metrics.json"]  # no lock
    code, err = cli(capsys, *hint.split("continue with: python -m cvlab ")[1].split())
    assert code == 0, err
    resumed, whole = load_run(out), load_run(straight)
    assert resumed.metrics["status"] == "complete"
    pd.testing.assert_frame_equal(resumed.history.drop(columns=timing), whole.history.drop(columns=timing))
    a, b = RunDir(out).load_checkpoint()["model"], RunDir(straight).load_checkpoint()["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_raises_terminated_once_and_the_previous_handler_comes_back():
    from cvlab.core import signals
    from cvlab.core.errors import Terminated
    before = signal.getsignal(signal.SIGTERM)
    with signals.sigterm_as_interrupt():
        with signals.sigterm_as_interrupt():  # nested (the CLI, then fit): one handler
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("SIGTERM did not raise")
            except Terminated as exc:
                assert isinstance(exc, KeyboardInterrupt) and exc.exit_code == 143
                os.kill(os.getpid(), signal.SIGTERM)  # a second one while the first is handled: ignored
                time.sleep(0.2)
    assert signal.getsignal(signal.SIGTERM) is before
