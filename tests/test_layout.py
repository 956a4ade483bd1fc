"""The package's layers (docs/architecture.md): imports only point down, so there is no import loop."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cvlab"
# Each layer may import itself and the layers listed after it.
LAYERS = ["cli", "coursework", "report", "experiments", "core"]
ALLOWED = {
    "core": {"core"},
    "experiments": {"experiments", "core"},
    "report": {"report", "experiments", "core"},
    "coursework": {"coursework", "report", "experiments", "core"},
    "cli": set(LAYERS),
}


def cvlab_imports(path: Path, source: str | None = None) -> set[str]:
    """The cvlab subpackages (core, experiments, ...) that the module at `path` imports, absolute or relative."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]  # ("cvlab", "core") for cvlab/core/engine.py
    found = set()
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if len(target) < 2 else [target]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        for parts in names:
            if len(parts) >= 2 and parts[0] == "cvlab" and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


MODULES = sorted(p for layer in ALLOWED for p in (PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_point_down_the_layers(path):
    layer = path.relative_to(PACKAGE).parts[0]
    upward = cvlab_imports(path) - ALLOWED[layer]
    assert not upward, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(upward)}, a layer above it"


def test_the_layer_check_sees_every_import_form():
    """The checker itself: relative, deep relative and absolute imports of other layers are all found."""
    engine = PACKAGE / "core" / "engine.py"
    assert cvlab_imports(engine, "from ..report import plots") == {"report"}
    assert cvlab_imports(engine, "from ..experiments.bench import x") == {"experiments"}
    assert cvlab_imports(engine, "import cvlab.cli") == {"cli"}
    assert cvlab_imports(engine, "from .runs import RunDir") == {"core"}
    assert cvlab_imports(PACKAGE / "coursework" / "theory" / "q1_batch_size.py", "from ...core.data import x") == {"core"}


# ---------------------------------------------------------------------------- the Python 3.9 floor

# ModelArts' Ascend images run Python 3.9, which this machine does not have: the floor is kept by reading the
# code. vermin finds library calls and syntax newer than 3.9 (zip(strict=...), match, str.removeprefix is 3.9
# and fine, ...); its union-type heuristic also flags `X | Y` in annotations that `from __future__ import
# annotations` keeps unevaluated, so runtime unions are found here instead.
PY39_CHECKED = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "scripts"]
RUNTIME_TYPE_NAMES = {"None", "int", "float", "str", "bool", "bytes", "list", "dict", "tuple", "set", "type",
                      "Path", "Any"}


def runtime_unions(source: str) -> list[int]:
    """Lines where `X | Y` of types is evaluated when the module runs: in any annotation of a module without
    `from __future__ import annotations`, and outside annotations (isinstance(x, int | str), aliases) always."""
    tree = ast.parse(source)
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                    and any(a.name == "annotations" for a in n.names) for n in tree.body)
    annotations = set()
    for node in ast.walk(tree):
        for ann in _annotations_of(node):
            annotations.update(id(n) for n in ast.walk(ann))
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
            continue
        if id(node) in annotations:
            if not postponed:
                lines.append(node.lineno)
        elif _names_a_type(node.left) or _names_a_type(node.right):
            lines.append(node.lineno)
    return sorted(set(lines))


def _annotations_of(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        return [a.annotation for a in every if a.annotation] + ([node.returns] if node.returns else [])
    if isinstance(node, ast.AnnAssign):
        return [node.annotation]
    return []


def _names_a_type(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Subscript):
        node = node.value
    return isinstance(node, ast.Name) and node.id in RUNTIME_TYPE_NAMES


def newer_than_python39(paths: list[Path]) -> list[str]:
    """One line per construct that Python 3.9 cannot run: vermin's findings, then runtime `X | Y` unions."""
    pytest.importorskip("vermin")
    import subprocess
    import sys
    # its command line, in a child (it has no `python -m vermin`): the options are stabler than its API
    run = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "-q", "-t=3.9-",
                          "--no-tips", "--violations", "--no-parse-comments", *map(str, paths)],
                         capture_output=True, text=True)
    found = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    if run.returncode not in (0, 1) or (run.returncode == 1 and not found):
        raise AssertionError(f"vermin failed: {run.stderr.strip()[-500:]}")
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*.py")))]
    for file in files:
        found += [f"{file}:{line}: X | Y of types evaluated at runtime (Python 3.10+)"
                  for line in runtime_unions(file.read_text(encoding="utf-8"))]
    return found


def test_the_code_runs_on_python_3_9():
    found = newer_than_python39([p for p in PY39_CHECKED if p.exists()])
    assert not found, "constructs newer than Python 3.9 (pyproject's floor):\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "for a, b in zip([1], [2], strict=True):\n    pass\n",                      # 3.10 keyword
    "def f(x):\n    match x:\n        case 1:\n            return 2\n",          # 3.10 syntax
    "def f(x: int | None):\n    return x\n",                                   # evaluated annotation
    "import dataclasses\n@dataclasses.dataclass\nclass C:\n    x: str | None = None\n",
    "from __future__ import annotations\nok = isinstance(3, int | str)\n",     # runtime union, future or not
    "import tomllib\n",                                                        # 3.11 module
])
def test_the_python_39_check_fails_on_a_newer_line(tmp_path, line):
    (tmp_path / "newer.py").write_text(line)
    assert newer_than_python39([tmp_path / "newer.py"])


def test_the_python_39_check_accepts_postponed_annotations(tmp_path):
    (tmp_path / "ok.py").write_text("from __future__ import annotations\n\ndef f(x: int | None) -> list[str] | None:"
                                    "\n    y: dict[str, int] | None = None\n    return [str(x)] if y is None else None\n")
    assert newer_than_python39([tmp_path / "ok.py"]) == []


def test_what_a_notebook_writes_under_a_relative_path_is_git_ignored():
    """A notebook run by hand works in notebooks/: RUN_DIR = "runs/x" makes notebooks/runs/x, whose files
    (and a lock or temp file anywhere) must not end up in a commit."""
    import shutil
    import subprocess
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a checkout")
    paths = ["notebooks/runs/x/metrics.json", "notebooks/runs/x/history.csv", "notebooks/reports/smoke/01.html",
             "notebooks/data/cifar-100-python/meta", "docs/results/x/run.lock", "runs/x/.metrics.json.1a2b.tmp"]
    done = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", *paths], capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(paths), done.stdout
    kept = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", "docs/results/x/metrics.json"],
                          capture_output=True, text=True)
    assert kept.returncode == 1  # result files the project commits stay visible
