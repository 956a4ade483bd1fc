"""Shared fixtures: tiny synthetic CIFAR-100 data in the official format, tiny configs."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cvlab.core.config import make_config
from cvlab.core.data import write_synthetic



@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """A small synthetic data root holding cifar-100-python/ (200 train, 100 test images)."""
    root = tmp_path_factory.mktemp("cifar-folder")
    write_synthetic(root, n_train=200, n_test=100, seed=0)
    return root


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory):
    """The same data as cifar-100-python.tar.gz."""
    root = tmp_path_factory.mktemp("cifar-archive")
    write_synthetic(root, n_train=200, n_test=100, seed=0, archive=True)
    return root


def tiny_config(**overrides):
    """A 1/4-width ResNet-18 on 300 synthetic images: about a second per epoch on a CPU."""
    values = dict(model="tiny_resnet18", synthetic=True, synthetic_train=300, synthetic_test=100, epochs=2, batch_size=50,
                  eval_batch_size=100, lr=1e-3, shuffle=True, normalization="cifar100", device="cpu",
                  progress=False, download=False)
    values.update(overrides)
    return make_config("handout", **values)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP hand-offs, which cost milliseconds per op on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StopAfter:
    """An on_epoch_end callback that simulates Ctrl-C after the given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


# Loaded at the start of a child interpreter (as sitecustomize): step N of the run (counted over the whole run,
# in the process of rank CVLAB_TEST_WAIT_RANK) first touches a file and waits, so that a signal the test then
# sends lands in the middle of an epoch every time. The step itself is unchanged.
WAIT_AT_STEP = """
import os, time
from pathlib import Path
import cvlab.core.engine as engine

real_step, calls = engine.TrainStep.step, []

def step(self, x, y):
    calls.append(1)
    if len(calls) == int(os.environ["CVLAB_TEST_WAIT_AT_STEP"]) and \\
            os.environ.get("RANK", "0") == os.environ.get("CVLAB_TEST_WAIT_RANK", "0"):
        Path(os.environ["CVLAB_TEST_READY"]).touch()
        time.sleep(120)
    return real_step(self, x, y)

engine.TrainStep.step = step
"""


def signal_mid_epoch(tmp_path, command, sig, at_step, rank=0, timeout=180):
    """Start `command` (a `python -m cvlab train ...` or a torchrun of it), send it `sig` once the training
    step `at_step` has begun (in process `rank`), and return (exit code, stdout lines, non-empty stderr lines)."""
    import cvlab
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(WAIT_AT_STEP)
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    root = str(Path(cvlab.__file__).resolve().parents[1])  # the cvlab under test
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CVLAB_TEST_READY": str(ready),
           "CVLAB_TEST_WAIT_AT_STEP": str(at_step), "CVLAB_TEST_WAIT_RANK": str(rank), "CVLAB_DIST_TIMEOUT": "60",
           "PYTHONPATH": os.pathsep.join([str(hook), root, os.environ.get("PYTHONPATH", "")])}
    # a shell's background job (`pytest &`) ignores SIGINT, and so would the child: give it back Python's Ctrl-C
    child = subprocess.Popen([str(c) for c in command], cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached the step"
            time.sleep(0.05)
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, stdout.splitlines(), [line for line in stderr.splitlines() if line.strip()]


def cvlab_frames(stderr_lines) -> list[str]:
    """The traceback lines of `stderr_lines` whose file is one of cvlab's own modules (the package under test),
    whatever the path around it holds: a virtual environment or a checkout named like cvlab-venv or
    ~/cvlab/.venv puts "cvlab" into every traceback line of torch or torchrun, too."""
    import re
    import cvlab
    package = Path(cvlab.__file__).resolve().parent
    found = []
    for line in stderr_lines:
        match = re.match(r'\s*File "([^"]+)", line \d+', line)
        if match and Path(match.group(1)).resolve().is_relative_to(package):
            found.append(line)
    return found


class SmallDisk:
    """A small tmpfs mounted at `path`; `fill(leave)` takes all but about `leave` bytes of it."""

    def __init__(self, path: Path):
        self.path = path

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        with open(self.path / "filler", "ab") as f:
            try:
                f.write(b"\0" * max(0, self.free() - leave))
                f.flush()
            except OSError:
                pass
            while self.free() > leave:  # page rounding: top up until at most `leave` bytes are free
                try:
                    f.write(b"\0" * 4096)
                    f.flush()
                except OSError:
                    break

    def make_room(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != "filler")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs under tmp_path (needs root and `mount`; skipped otherwise), unmounted afterwards."""
    import shutil
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
