"""One data-root rule (cvlab.core.paths.resolve_data_root) for every notebook, the report runner and the CLI:
the explicit value, else $CVLAB_DATA, else the repository's data/ folder, whatever the working directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the report extras; a GPU image without them still collects `-m gpu`

from cvlab.core.paths import REPO_ROOT, resolve_data_root
from cvlab.report import runner

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))

# Runs a notebook's parameters cell and the cell that sets `data_root`, once from notebooks/ (as papermill
# does) and once from the repository root (as a user who opens the notebook there might), and prints both.
PROBE = """
import json, os, sys
cells = json.loads(sys.argv[1])
found = []
for cwd in sys.argv[2:]:
    os.chdir(cwd)
    scope = {}
    for source in cells:
        exec(compile(source, "<cell>", "exec"), scope)
    found.append(str(scope["data_root"]))
print("DATA_ROOTS=" + json.dumps(found))
"""


def _setup_cells(path: Path) -> list[str]:
    code = [c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    setup = next(s for s in code[1:] if "data_root = notebook.setup(DATA_ROOT)" in s)  # the one setup() of every notebook
    return [code[0], setup]


def _probe(path: Path, env_data: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "CVLAB_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if env_data:
        env["CVLAB_DATA"] = env_data
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(_setup_cells(path)), str(REPO / "notebooks"),
                           str(REPO)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("DATA_ROOTS="))
    return json.loads(line.split("=", 1)[1])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
@pytest.mark.slow
def test_each_notebook_finds_the_repository_data_folder_from_any_cwd(path, tmp_path):
    assert _probe(path, None) == [str(REPO / "data")] * 2
    assert _probe(path, str(tmp_path)) == [str(tmp_path)] * 2  # $CVLAB_DATA wins over data/


def test_the_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("CVLAB_DATA", raising=False)
    assert resolve_data_root("") == REPO_ROOT / "data"
    monkeypatch.setenv("CVLAB_DATA", str(tmp_path))
    assert resolve_data_root("") == tmp_path
    assert resolve_data_root("/elsewhere") == Path("/elsewhere")


def test_report_makes_a_relative_data_root_relative_to_where_it_was_typed(tmp_path, monkeypatch):
    nb = tmp_path / "notebooks" / "01_a.ipynb"
    nb.parent.mkdir()
    cell = nbformat.v4.new_code_cell('DATA_ROOT = ""\nEPOCHS = 1')
    cell.metadata["tags"] = ["parameters"]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(nb))
    profile = runner.Profile("t", "", {"DATA_ROOT": ""}, {})
    monkeypatch.chdir(tmp_path)
    got = runner.resolve_parameters([nb], profile, [("DATA_ROOT", "./data")], lambda t: None)
    assert got[nb]["DATA_ROOT"] == str(tmp_path / "data")      # not notebooks/data, where papermill runs
    got = runner.resolve_parameters([nb], profile, [], lambda t: None)
    assert got[nb]["DATA_ROOT"] == ""                          # empty: the notebook applies the one rule
