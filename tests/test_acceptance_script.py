"""scripts/gpu_acceptance.sh: argument checks, its plan (three calls that fit the device slot, the commands
docs/performance.md gives) and its environment stage in dry-run mode (the full dry run, a few minutes on a
CPU, is documented in docs/performance.md and run by hand)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvlab.core.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_acceptance.sh"
DOC = REPO_ROOT / "docs" / "performance.md"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args: str) -> subprocess.CompletedProcess:
    # The script's Python is this interpreter (PYTHON), not whatever python3 is first on PATH: the suite may run
    # from a virtual environment that is not activated.
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def test_bad_arguments_exit_2_with_one_line():
    for args, message in ((["--stage", "bogus"], "unknown stage 'bogus'"), (["--frobnicate"], "unknown argument"),
                          (["--step", "4"], "unknown step '4'"), (["--step", "2", "--left", "soon"], "--left"),
                          ([], "give --step")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, args


def test_help_lists_the_steps_and_stages():
    out = run("--help").stdout
    assert all(word in out for word in ("tests", "doctor", "bench", "handout", "compiled", "fast", "--plan",
                                        "--step", "--dry-run", ".devdata"))


def test_the_plan_fits_in_11_minutes_with_the_machine_start_and_leaves_a_rerun():
    result = run("--plan")
    assert result.returncode == 0, result.stderr
    total = int(re.search(r"^total\s+(\d+) s", result.stdout, re.M).group(1))
    assert total < 11 * 60
    machine = int(re.search(r"^machine\s+(\d+) s", result.stdout, re.M).group(1))
    assert machine >= 240  # the device tool's start of a fresh machine, at most
    rerun = int(re.search(r"^rerun\s+(\d+) s", result.stdout, re.M).group(1))
    assert total + rerun <= 15 * 60
    fast = re.search(r"^\s+fast\s+(\d+)$", result.stdout, re.M)
    assert fast and int(fast.group(1)) >= 240  # fast's 30 epochs with room
    # The plan refuses limits that do not fit.
    env = {**os.environ, "LIMIT_FAST": "400"}
    too_long = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, env=env, timeout=60)
    assert too_long.returncode == 1 and "does not fit" in too_long.stderr


def test_the_docs_give_the_plans_three_commands():
    calls = [line for line in run("--plan").stdout.splitlines() if line.startswith("run(")]
    assert len(calls) == 3
    assert '.devdata/part-0", ".devdata/assemble.sh"' in calls[0] and '.devdata/part-1"' in calls[1]
    assert 'command="bash .devdata/assemble.sh data && ' in calls[2] and '.devdata/part-2"' in calls[2]
    text = DOC.read_text(encoding="utf-8")
    for call in calls:
        assert call in text, f"docs/performance.md lacks: {call}"


@pytest.mark.slow
def test_env_stage_dry_run(tmp_path: Path):
    result = run("--dry-run", "--stage", "env", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    env = (tmp_path / "out" / "env.txt").read_text()
    for text in ("dry_run 1 device cpu", "torch", "capabilities Capabilities(kind='cpu'", "tf32"):
        assert text in env
    assert (tmp_path / "out" / "stages-env.tsv").read_text().startswith("stage\texit")
