"""scripts/gpu_acceptance.sh: argument checks, its plan (three calls that fit the device slot, with the kill grace
counted; the commands docs/performance.md gives), each call's check of the earlier calls' files, the torch floor
of the env stage, and its environment stage in dry-run mode (the full dry run, a minute or two on a CPU, is
documented in docs/performance.md and run by hand)."""
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


def run(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    # The script's Python is this interpreter (PYTHON), not whatever python3 is first on PATH: the suite may run
    # from a virtual environment that is not activated.
    env = {**os.environ, "PYTHON": sys.executable, **env_vars}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def test_bad_arguments_exit_2_with_one_line():
    for args, message in ((["--stage", "bogus"], "unknown stage 'bogus'"), (["--frobnicate"], "unknown argument"),
                          (["--step", "4"], "unknown step '4'"), (["--left", "600"], "unknown argument"),
                          ([], "give --step")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, args


def test_help_lists_the_steps_and_stages():
    out = run("--help").stdout
    assert all(word in out for word in ("tests", "doctor", "bench", "handout", "compiled", "fast", "--plan",
                                        "--step", "--dry-run", ".devdata"))


def plan_figures(out: str) -> dict:
    """start seconds -> (device time without a rerun, with one rerun of call 3), as --plan prints them."""
    found = re.findall(r"^start\s+(\d+) s:\s+(\d+) s .*? without a rerun .*?,\s+(\d+) s .*? with one rerun", out, re.M)
    return {int(start): (int(none), int(one)) for start, none, one in found}


def test_the_plan_fits_the_slot_after_a_slow_start_and_a_rerun_after_a_quick_one():
    result = run("--plan")
    assert result.returncode == 0, result.stderr
    figures = plan_figures(result.stdout)
    assert set(figures) == {60, 240}  # the device-time estimate for a quick and a slow machine start
    assert figures[240][0] <= 15 * 60  # the three calls fit after the slowest start
    assert figures[60][1] <= 15 * 60  # and a rerun of call 3 after a quick one
    assert figures[240][1] - figures[240][0] == figures[60][1] - figures[60][0] > 240  # a rerun: fast and more
    fast = re.search(r"^\s+fast\s+(\d+) \+ (\d+)$", result.stdout, re.M)
    assert fast and int(fast.group(1)) >= 240 and int(fast.group(2)) > 0  # fast's 30 epochs with room; kill grace
    # The plan refuses limits that do not fit.
    too_long = run("--plan", LIMIT_FAST="400")
    assert too_long.returncode == 1 and "does not fit" in too_long.stderr


def test_each_calls_timeout_counts_every_stages_limit_and_kill_grace():
    out = run("--plan").stdout
    script = SCRIPT.read_text()
    grace = int(re.search(r"^GRACE=(\d+)", script, re.M).group(1))
    assert 'timeout -s INT -k "$GRACE"' in script  # the grace the stages run with is the one counted
    assert f"`timeout -k {grace}`" in out
    calls = re.findall(r"^call \d .*?^\s+timeout_s\s+\d+$", out, re.M | re.S)
    timeouts = [int(t) for t in re.findall(r"timeout_s=(\d+)", out)]
    assert len(calls) == len(timeouts) == 3
    for text, timeout_s in zip(calls, timeouts):
        stages = [(int(limit), int(kill)) for limit, kill in re.findall(r"^\s+[a-z]+\s+(\d+) \+ (\d+)$", text, re.M)]
        assert stages and all(kill == grace for _, kill in stages)
        assert timeout_s > sum(limit + kill for limit, kill in stages)  # and a margin for the call itself
        assert f"timeout_s {timeout_s:4d}" in text
    assert "compiled" not in "".join(calls) and "--stage compiled" in out  # it cannot fit after call 1
    bench = re.search(r"^\s+bench\s+(\d+)", out, re.M)
    assert int(bench.group(1)) >= 45 * 4 // 3  # the bench's ~35-45 s of work with a third to spare


def test_the_docs_give_the_plans_three_commands_and_totals():
    out = run("--plan").stdout
    calls = [line for line in out.splitlines() if line.startswith("run(")]
    assert len(calls) == 3
    assert '.devdata/part-0", ".devdata/assemble.sh"' in calls[0] and '.devdata/part-1"' in calls[1]
    assert '.devdata/part-2"' in calls[2] and all(f'--step {n}"' in c for n, c in zip((1, 2, 3), calls))
    text = DOC.read_text(encoding="utf-8")
    for call in calls:
        assert call in text, f"docs/performance.md lacks: {call}"
    for start, (none, one) in plan_figures(out).items():
        assert f"{none} s" in text and f"{one} s" in text, f"docs/performance.md lacks the totals for {start} s"
    assert "status" not in text[text.index("### The GPU acceptance run"):text.index("## JSON report fields")]


def test_a_call_missing_an_earlier_calls_part_says_in_one_line_which_call_to_repeat(tmp_path: Path):
    def call(step: str, *files: str) -> subprocess.CompletedProcess:
        devdata = tmp_path / f"devdata-{step}-{'-'.join(files)}"
        devdata.mkdir()
        for name in files:
            (devdata / name).write_text("")
        return run("--dry-run", "--step", step, "--out", str(tmp_path / "out"), DEVDATA=str(devdata))
    for step, files, words in (("1", (), "call 1 did not bring"), ("1", ("part-0",), "repeat call 1 with"),
                               ("2", ("part-1",), "repeat call 1, then"),  # a fresh machine at call 2
                               ("2", ("part-0", "assemble.sh"), "call 2 did not bring"),
                               ("3", ("part-0", "assemble.sh", "part-2"), "repeat call 2, then"),
                               ("3", ("assemble.sh", "part-1", "part-2"), "repeat call 1, then")):
        result = call(step, *files)
        assert result.returncode == 3 and result.stdout == "", (step, files, result.stdout)
        assert len(result.stderr.splitlines()) == 1 and words in result.stderr, (step, files, result.stderr)
    assert not (tmp_path / "out").exists()  # it stopped before anything ran


def test_an_older_torch_ends_the_env_stage_at_once_in_one_line(tmp_path: Path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text('__version__ = "2.0.1+cu118"\n')
    floor = re.search(r'"torch>=([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    result = run("--dry-run", "--stage", "env,tests", "--out", str(tmp_path / "out"), PYTHONPATH=str(tmp_path))
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.splitlines() == [
        f"gpu_acceptance: torch 2.0.1+cu118 on this machine is older than the floor torch>={floor} (pyproject.toml): "
        f"use a device image with torch >= {floor}"]
    assert (tmp_path / "out" / "stages-env-tests.tsv").read_text().splitlines()[1].startswith("env\t3\t")
    assert not (tmp_path / "out" / "tests.txt").exists()


@pytest.mark.slow
def test_env_stage_dry_run(tmp_path: Path):
    result = run("--dry-run", "--stage", "env", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    env = (tmp_path / "out" / "env.txt").read_text()
    for text in ("dry_run 1 device cpu", "torch", "capabilities Capabilities(kind='cpu'", "tf32"):
        assert text in env
    assert (tmp_path / "out" / "stages-env.tsv").read_text().startswith("stage\texit")
    # Stdout is the stage table alone: its head, one row per stage, the verdict (the logs are files).
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[:4] == ["stage", "exit", "seconds", "limit"], lines
    assert lines[1].split()[:2] == ["env", "0"] and lines[2] == "gpu_acceptance: env passed"
