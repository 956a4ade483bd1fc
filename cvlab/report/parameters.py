"""Each report notebook's parameters -> its work: one function per notebook, called by the notebook (through
report.notebook) and by report.plan's estimate before a report starts. Keyword names are the notebooks'
parameters in lower case; defaults are those of their parameters cells."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def baseline_config(preset: str = "handout", epochs: int = 100, batch_size: int = 1024, subset: int = 0,
                    test_subset: int = 0, synthetic: bool = False, seed: int = 0, device: str = "auto",
                    data_root: str = ""):
    """Notebook 01's training config (the handout's run at the handout's settings by default)."""
    from ..core.config import make_config

    return make_config(preset, epochs=epochs, batch_size=batch_size, data_root=str(data_root), device=device,
                       subset=subset, test_subset=test_subset, synthetic=synthetic, seed=seed, progress=False)


def theory_quick(budget: str = "subset") -> bool:
    """Notebook 02's demo setting for a report budget: seconds per demo (QUICK) only for "smoke"; every
    other budget runs the report's setting, whose numbers are the committed answers' (docs/results/theory.json)."""
    from ..experiments.ablate import get_budget

    return get_budget(budget).name == "smoke"


@dataclass(frozen=True)
class Improvements:
    """Notebook 03's ablation: the budget, the seeds, and the config fields every run gets."""

    budget: Any                                   # experiments.ablate.Budget
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return bool(self.overrides.get("synthetic"))


def improvements(budget: str = "subset", seeds: int = 1, seed: int = 0, synthetic: bool = False,
                 device: str = "auto", data_root: str = "") -> Improvements:
    """Notebook 03's ablation from its parameters (run it with ablate.run_ablation(imp.budget.presets,
    imp.seeds, runs_dir, imp.budget, imp.overrides))."""
    from ..experiments.ablate import get_budget

    b = get_budget(budget)
    overrides: dict[str, Any] = {"device": device, "progress": False, "data_root": str(data_root)}
    if synthetic or b.overrides.get("synthetic"):
        overrides["synthetic"] = True
    return Improvements(b, list(range(seed, seed + seeds)), overrides)
