"""Source code for the submission's appendix: each ladder rung's preset definition and the functions it
switches on, read from the cvlab checkout at a given commit (git), with file and line references.

    listing = preset_listing("+crop-flip", commit)       # the _derive(...) call in cvlab/core/config.py
    for obj in rung_objects("+crop-flip"):               # augment.random_crop, augment.random_hflip
        print(object_listing(obj, commit).header)

The map from config fields to the code they switch on (`_field_code`) is the one place that says which
function implements which switch (notebook 03 names where its functions live with `notebook.show_source`).
"""
from __future__ import annotations

import ast
import inspect
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.paths import REPO_ROOT


@dataclass
class Listing:
    """Lines `start`..`end` of `path` (relative to the repository) as read at `commit` (or the working tree)."""

    title: str
    path: str
    start: int
    end: int
    text: str
    commit: str           # the commit read, or "working tree"

    @property
    def header(self) -> str:
        return f"{self.path}:{self.start}-{self.end} @ {self.commit[:10]}"


def _field_code() -> dict[str, list[Callable[..., Any]]]:
    from ..core import augment, ema, engine, loader, models, optim

    return {
        "normalization": [loader.normalize_constants, loader.TensorLoader.to_float],
        "shuffle": [loader.TensorLoader.__iter__],
        "crop_padding": [augment.random_crop],
        "hflip": [augment.random_hflip],
        "cutout": [augment.cutout],
        "model": [models.CifarResNet18, models.BasicBlock],
        "optimizer": [optim.build_optimizer],
        "schedule": [optim.LRShape, optim.build_scheduler],
        "weight_decay": [optim.build_optimizer],
        "wd_exclude_norm_bias": [optim.parameter_groups],
        "label_smoothing": [engine.TrainStep],
        "zero_init_last_bn": [models.zero_init_last_bn],
        "mix": [augment.build_mix, augment.mix_pairs, augment.cutmix_box, augment.paste_box],
        "policy": [augment.make_policy, augment.apply_policy],
        "ema_decay": [ema.WeightEMA],
        "tta_flip": [engine.EvalStep],
        "dropout": [models.handout_resnet18],
    }


def changed_fields(name: str) -> dict[str, Any]:
    """The fields preset `name` sets differently from its parent (all of its fields for `handout`)."""
    from ..core.config import PARENT, PRESETS

    own = PRESETS[name][1]
    parent = PRESETS[PARENT[name]][1] if name in PARENT else {}
    return {k: v for k, v in own.items() if parent.get(k, object()) != v}


def rung_objects(name: str) -> list[Callable[..., Any]]:
    """The functions and classes the changes of preset `name` switch on, in field order, without repeats."""
    code = _field_code()
    found: list[Callable[..., Any]] = []
    for key in changed_fields(name):
        for obj in code.get(key, []):
            if obj not in found:
                found.append(obj)
    return found


# ---------------------------------------------------------------------------- reading source at a commit

def resolve_commit(recorded: str | None) -> tuple[str | None, str]:
    """(commit to read the source at, or None for the working tree; a note for the reader).

    `recorded` is a run's `versions.git_commit`, possibly with '-dirty'."""
    if not recorded:
        return None, "运行没有记录 commit：源代码取自当前工作区"
    commit = recorded.removesuffix("-dirty")
    try:
        subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                       capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None, f"运行时的 commit {commit[:10]} 不在本仓库中：源代码取自当前工作区"
    if recorded.endswith("-dirty"):
        return commit, (f"源代码取自产生结果的 commit {commit[:10]}；运行时工作区另有未提交的改动（-dirty），"
                        "这些改动不在下面的代码中")
    return commit, f"源代码取自产生结果的 commit {commit[:10]}"


def read_source(path: str, commit: str | None) -> str:
    """The text of `path` (relative to the repository) at `commit`, or in the working tree when None."""
    if commit is None:
        return (REPO_ROOT / path).read_text(encoding="utf-8")
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{commit}:{path}"], capture_output=True,
                          timeout=20)
    if done.returncode != 0:
        raise FileNotFoundError(f"{path} not in commit {commit[:10]}")
    return done.stdout.decode("utf-8")


def _find(tree: ast.AST, qualname: str) -> ast.AST | None:
    node: ast.AST | None = tree
    for part in qualname.split("."):
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            return None
    return node


def _lines(text: str, node: ast.AST) -> tuple[int, int, str]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = text.splitlines()[start - 1:node.end_lineno]
    return start, node.end_lineno, "\n".join(lines)


def object_listing(obj: Callable[..., Any], commit: str | None) -> Listing:
    """The definition of a cvlab function or class as it reads at `commit` (else the working tree)."""
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(REPO_ROOT).as_posix()
    qualname = obj.__qualname__
    module = obj.__module__.removeprefix("cvlab.")
    for where in ([commit, None] if commit else [None]):
        try:
            text = read_source(path, where)
        except FileNotFoundError:
            continue
        node = _find(ast.parse(text), qualname)
        if node is not None:
            start, end, body = _lines(text, node)
            return Listing(f"{module}.{qualname}", path, start, end, body, where or "working tree")
    raise LookupError(f"{qualname} not found in {path}")


def preset_listing(name: str, commit: str | None) -> Listing:
    """The lines of cvlab/core/config.py that define preset `name` (its `_derive(...)` call or its PRESETS entry,
    a (description, fields) tuple; other dicts keyed by preset names, e.g. ARCHITECTURAL, are not definitions)."""
    path = "cvlab/core/config.py"
    for where in ([commit, None] if commit else [None]):
        try:
            text = read_source(path, where)
        except FileNotFoundError:
            continue
        nodes = list(ast.walk(ast.parse(text)))
        for node in nodes:  # its _derive call first: a dict of texts keyed by preset name is not its definition
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_derive" and node.args \
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value == name:
                start, end, body = _lines(text, node)
                return Listing(f"preset {name}", path, start, end, body, where or "working tree")
        for node in nodes:
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == name and isinstance(value, ast.Tuple):
                        lines = text.splitlines()[key.lineno - 1:value.end_lineno]
                        return Listing(f"preset {name}", path, key.lineno, value.end_lineno, "\n".join(lines),
                                       where or "working tree")
    raise LookupError(f"preset {name} not found in {path}")


def reference(obj: Callable[..., Any]) -> str:
    """'cvlab/core/augment.py:28 augment.random_crop' for the working tree (the notebooks' pointer)."""
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(REPO_ROOT).as_posix()
    line = inspect.getsourcelines(obj)[1]
    return f"{obj.__module__.removeprefix('cvlab.')}.{obj.__qualname__} ({path}:{line})"
