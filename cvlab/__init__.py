"""cvlab: ResNet-18 on CIFAR-100, from the course handout to a measured improvement ladder.

Layout (see docs/architecture.md): `cvlab.core` (config, data, augment, models, engine, runs),
`cvlab.experiments` (ablate, analysis, bench), `cvlab.report` (runner, plots, notebook helpers),
`cvlab.coursework` (baseline checks, theory demos), `cvlab.cli` (the command line).

The names below are the documented entry points; they are imported on first use, so
`import cvlab` stays cheap (no torch import).
"""

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "Config": "cvlab.core.config", "make_config": "cvlab.core.config", "load_config": "cvlab.core.config",
    "PRESETS": "cvlab.core.config", "with_overrides": "cvlab.core.config",
    "fit": "cvlab.core.engine", "build_trainer": "cvlab.core.engine",
    "load_run": "cvlab.core.runs", "load_runs": "cvlab.core.runs", "RunDir": "cvlab.core.runs",
    "load_checkpoint": "cvlab.core.runs",
    "build_model": "cvlab.core.models", "load_cifar100": "cvlab.core.data",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cvlab' has no attribute {name!r}")
