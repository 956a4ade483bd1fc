"""scripts/gpu_acceptance.sh: argument checks and its environment stage in dry-run mode (the full dry run,
a few minutes on a CPU, is documented in docs/performance.md and run by hand)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cvlab.core.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_acceptance.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_bad_arguments_exit_2_with_one_line():
    for args, message in ((["--stage", "bogus"], "unknown stage 'bogus'"), (["--frobnicate"], "unknown argument")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_help_lists_the_stages():
    out = run("--help").stdout
    assert all(stage in out for stage in ("tests", "fast", "bench", "handout", "--dry-run", ".devdata"))


def test_env_stage_dry_run(tmp_path: Path):
    result = run("--dry-run", "--stage", "env", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    env = (tmp_path / "out" / "env.txt").read_text()
    for text in ("dry_run 1 device cpu", "torch", "capabilities Capabilities(kind='cpu'", "tf32"):
        assert text in env
    assert (tmp_path / "out" / "stages-env.tsv").read_text().startswith("stage\texit")
