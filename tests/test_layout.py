"""The package's layers (docs/architecture.md): imports only point down, so there is no import loop."""
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
