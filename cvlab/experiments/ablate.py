"""Run a list of presets x seeds under one budget and compare them from their run directories.

    python -m cvlab ablate --budget smoke                         # synthetic, about a minute on a CPU
    python -m cvlab ablate --budget subset --data-root /work/cifar --seeds 0
    python -m cvlab ablate --budget full --presets handout,+crop-flip,fast --seeds 0,1,2 --device cuda
    python -m cvlab ablate --budget subset --out runs/ablate-subset --table-only
    python -m cvlab ablate --budget evidence --data-root /work/cifar --out docs/results/cpu-evidence   # resumable

A budget fixes what every run shares (data, epochs, sometimes the model) so that the rungs differ
only in their own change. Each run writes `OUT/<preset>-s<seed>/`; finished runs with the same
config are reused, interrupted ones resumed. The table is built from the run directories alone and
written as OUT/ladder.csv, OUT/ladder.md and (one row per run) OUT/runs.csv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..core.config import LADDER, PARENT, Config, changes_text, make_config, parse_pairs, with_overrides
from ..core.errors import Diverged, RunDirError, UsageError
from ..core.runs import RESUMABLE_FIELDS, RunDir, atomic_write_text, load_run

LADDER_CSV, LADDER_MD, RUNS_CSV = "ladder.csv", "ladder.md", "runs.csv"


@dataclass(frozen=True)
class Budget:
    """What every run of an ablation shares: config overrides and the default list of presets."""

    name: str
    description: str
    overrides: dict[str, Any]
    presets: tuple[str, ...] = tuple(LADDER)
    # Seeds beyond the first: `seeded` presets always get them; with `seed_effects`, so does every rung whose
    # first-seed gain reaches EFFECT_SIGMAS x the seed noise measured on the seeded presets (see run_evidence).
    extra_seeds: tuple[int, ...] = ()
    seeded: tuple[str, ...] = ()
    seed_effects: bool = False


RUNGS = tuple(LADDER)  # the recipes fast and best are made of rungs and are not on the ladder
EFFECT_SIGMAS = 2.0  # a gain is an effect when |gain| >= EFFECT_SIGMAS x the seeds' standard deviation
# Short budgets train a few rungs only; a row then differs from the row it is compared with by several rungs'
# changes, which the table's `changes` column lists.
SMOKE_RUNGS = ("handout", "+crop-flip", "+onecycle", "+cutmix", "+tta-flip")
QUICK_RUNGS = ("handout", "+cifar-norm", "+crop-flip", "+onecycle", "+label-smoothing")

BUDGETS: dict[str, Budget] = {b.name: b for b in (
    Budget("smoke", "SYNTHETIC data (100 train / 100 validation / 100 test images), 2 epochs, five rungs of the "
           "ladder, the handout model for every rung: checks the pipeline in about a minute on a CPU; its "
           "numbers mean nothing",
           dict(synthetic=True, subset=100, val_size=100, test_subset=100, epochs=2, model="handout_resnet18"),
           SMOKE_RUNGS),
    Budget("subset", "real CIFAR-100, class-balanced: 4,000 training images (40 per class) taken after holding "
           "out 1,000 for validation (the last 10 of each class), 2,000 test images (the first 20 of each class), "
           "3 epochs, the rungs of the ladder with the handout model for every rung (the CIFAR ResNet-18 is "
           "~3.5x slower on a CPU, so +cifar-stem is the same run as +tta-flip and is skipped); a CPU budget",
           dict(subset=4000, val_size=1000, test_subset=2000, epochs=3, model="handout_resnet18"), RUNGS),
    Budget("evidence", "real CIFAR-100 at a CPU budget where each rung's effect can be measured: 5,000 training "
           "images (the first 50 of each class), the first 2,000 test images of each class's order (20 per class), "
           "no validation split (the final epoch is reported, nothing is selected on the test set), 4 epochs, "
           "every rung with its own model (the CIFAR ResNet-18 only on the last rung, +cifar-stem); seed 0 for "
           "every rung, seeds 1 and 2 for the handout baseline, the final rung and every rung whose seed-0 gain "
           "reaches twice the seed noise",
           dict(subset=5000, val_size=0, test_subset=2000, epochs=4), RUNGS,
           extra_seeds=(1, 2), seeded=("handout", RUNGS[-1]), seed_effects=True),
    Budget("quick", "real CIFAR-100, class-balanced: 2,000 training images (20 per class) taken after holding "
           "out 1,000 for validation (the last 10 of each class), 1,000 test images (the first 10 of each class), "
           "2 epochs, five rungs of the ladder with the handout model for every rung: checks the whole pipeline on "
           "real data in a few minutes on a CPU; near-chance accuracies that cannot rank the rungs",
           dict(subset=2000, val_size=1000, test_subset=1000, epochs=2, model="handout_resnet18"), QUICK_RUNGS),
    Budget("full", "real CIFAR-100: 45,000 training / 5,000 validation / 10,000 test images, each preset's own "
           "model and epochs, the whole ladder including fast and best (a GPU job)", dict(val_size=5000)),
)}


@dataclass
class PlannedRun:
    preset: str
    seed: int
    config: Config
    run_dir: Path


@dataclass
class Ablation:
    """What `run_ablation` did: the table, the run directories, and the presets it skipped (and why)."""

    table: Any  # pandas.DataFrame, one row per preset
    runs: Any   # pandas.DataFrame, one row per run
    run_dirs: list[Path]
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path | None = None


# ---------------------------------------------------------------------------- planning

def budget_config(preset: str, budget: Budget, overrides: dict[str, Any] | None = None, seed: int = 0) -> Config:
    """The preset, then the budget's overrides, then `overrides`, with `seed`. The warmup is a fraction
    of the run, so it keeps its share of the schedule when the budget changes the epochs."""
    return with_overrides(make_config(preset), {**budget.overrides, **(overrides or {}), "seed": seed})


def comparable(cfg: Config) -> dict:
    """What makes two runs the same computation: the config without its name and how it executes."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_FIELDS and k != "preset"}


def plan(presets: Iterable[str], seeds: Iterable[int], out: str | Path, budget: Budget,
         overrides: dict[str, Any] | None = None) -> tuple[list[PlannedRun], dict[str, str]]:
    """The runs to make, in order, and the presets skipped because under this budget they are the
    same run as an earlier preset (e.g. a model change when the budget fixes the model)."""
    out = Path(out)
    runs, skipped, seen = [], {}, {}
    presets, seeds = list(presets), list(seeds)
    if not presets or not seeds:
        raise UsageError("an ablation needs at least one preset and one seed")
    if len(set(presets)) != len(presets):
        raise UsageError(f"a preset is listed twice: {', '.join(presets)}")
    for preset in presets:
        first = budget_config(preset, budget, overrides, seeds[0])
        key = repr(sorted(comparable(first).items()))
        if key in seen:
            skipped[preset] = f"same run as {seen[key]} under this budget"
            continue
        seen[key] = preset
        for seed in seeds:
            cfg = budget_config(preset, budget, overrides, seed)
            runs.append(PlannedRun(preset, seed, cfg, out / f"{preset}-s{seed}"))
    return runs, skipped


# ---------------------------------------------------------------------------- running

def run_status(run_dir: Path, cfg: Config) -> str:
    """'new', 'complete' (same config, finished), 'diverged' (same config, stopped at a non-finite loss: not
    trained again), or 'resume' (including a run stopped before its first epoch, which then starts again);
    raises when the folder holds a run with other settings."""
    run = RunDir(run_dir)
    status = run.status()
    if status == "new":
        return "new"
    saved = run.config()
    if comparable(saved) != comparable(cfg):
        diff = sorted(k for k, v in comparable(cfg).items() if comparable(saved).get(k) != v)
        raise RunDirError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                          "choose another output folder or delete it")
    return status if status in ("complete", "diverged") else "resume"


def run_ablation(presets: Iterable[str] | None = None, seeds: Iterable[int] = (0,), out: str | Path = "runs/ablate",
                 budget: str | Budget = "subset", overrides: Iterable[str] | dict[str, Any] = (),
                 log: Callable[[str], None] = print, devices: str | None = None,
                 parallel: int | None = None) -> Ablation:
    """Train every preset x seed under `budget` (skipping finished runs), then build the table.

    `overrides` ("key=value" strings or a dict) apply to every run after the budget, e.g. data_root,
    device, progress. Returns an Ablation and writes ladder.csv, ladder.md and runs.csv into `out`.
    `devices` ("cuda:0,cuda:1") or `parallel` (N devices of the runs' type, or N CPU processes) train
    several runs at once, one process per run (see experiments.parallel); the table is the same.
    """
    from ..core.engine import fit
    from .parallel import Job, device_slots, run_jobs

    budget = get_budget(budget)
    extra = _overrides(overrides)
    presets = list(presets) if presets is not None else list(budget.presets)
    runs, skipped = plan(presets, seeds, out, budget, extra)
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    slots = device_slots(devices, parallel, runs[0].config.device)
    jobs = []
    for i, run in enumerate(runs, 1):
        status = run_status(run.run_dir, run.config)
        log(f"[{i}/{len(runs)}] {run.preset} seed {run.seed}: {run.run_dir} ({status})")
        if status in ("new", "resume") and slots:  # placed where --devices/--parallel said, even on one device
            jobs.append(Job(f"{run.preset}-s{run.seed}", run.config, run.run_dir, status == "resume"))
        elif status in ("new", "resume"):
            try:
                fit(run.config, run.run_dir, resume=status == "resume", log=log)
            except Diverged as exc:  # the table shows the run with its status; the other runs go on
                log(f"{run.preset} seed {run.seed}: {exc}")
    if jobs:
        run_jobs(jobs, slots, Path(out) / "logs", log)
    done = [r.run_dir for r in runs if RunDir(r.run_dir).has_run()]  # a run that diverged in epoch 1 has no row
    return write_tables(out, done, order=presets, skipped=skipped, budget=budget)


def run_evidence(budget: str | Budget, out: str | Path, overrides: Iterable[str] | dict[str, Any] = (),
                 log: Callable[[str], None] = print, **placement: Any) -> Ablation:
    """A budget's whole seed plan, resumable (finished runs are kept, interrupted ones resumed): every rung at
    the first seed; the budget's `seeded` presets at its extra seeds, which measure the seed noise; then, when
    `seed_effects`, every rung whose first-seed gain reaches EFFECT_SIGMAS x that noise, and the row it is
    compared with, at the extra seeds too. The table is built from all of them."""
    budget = get_budget(budget)
    presets = list(budget.presets)
    run_ablation(presets, (0,), out, budget, overrides, log, **placement)
    seeds = (0, *budget.extra_seeds)
    run_ablation(list(budget.seeded), seeds, out, budget, overrides, log, **placement)
    if budget.seed_effects and budget.extra_seeds:
        table = ladder_table(_finished_dirs(out, budget, overrides, presets, seeds), presets)[0]
        wanted = set()
        for r in table.to_dict("records"):
            if r["verdict"] == "needs seeds":
                wanted.update({r["preset"], r["compared_to"]} - set(budget.seeded))
        if wanted:
            log(f"rungs with a gain past {EFFECT_SIGMAS:g} sigma at one seed, trained at seeds "
                f"{', '.join(map(str, budget.extra_seeds))} too: {', '.join(p for p in presets if p in wanted)}")
            run_ablation([p for p in presets if p in wanted], seeds, out, budget, overrides, log, **placement)
    return write_tables(out, _finished_dirs(out, budget, overrides, presets, seeds), order=presets, budget=budget)


def _overrides(overrides: Iterable[str] | dict[str, Any]) -> dict[str, Any]:
    return dict(overrides) if isinstance(overrides, dict) else parse_pairs(overrides)


def _finished_dirs(out: str | Path, budget: Budget, overrides, presets: list[str], seeds: tuple[int, ...]) -> list[Path]:
    """The planned run directories that hold at least one finished epoch."""
    return [r.run_dir for r in plan(presets, seeds, out, budget, _overrides(overrides))[0] if RunDir(r.run_dir).has_run()]


def get_budget(budget: str | Budget) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise UsageError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    return BUDGETS[budget]


# ---------------------------------------------------------------------------- the table

def run_row(run_dir: str | Path) -> dict:
    """One run's figures, read from its run directory: final epoch, best validation epoch, time, speed."""
    run = load_run(run_dir)
    s = run.summary()
    if not s["epochs"]:
        raise RunDirError(f"{run_dir} has no finished epoch")
    last, best = s["final"], s["best"]
    return {
        "preset": run.config.get("preset"), "seed": run.config.get("seed"), "run": str(run.path),
        "status": run.metrics.get("status"), "synthetic": run.synthetic,
        "device": run.metrics.get("device"), "model": run.config.get("model"),
        "epochs": int(last["epoch"]), "n_train": run.metrics.get("dataset", {}).get("n_train"),
        "test_acc": float(last["test_acc"]), "test_top5": float(last["test_top5"]),
        "test_loss": float(last["test_loss"]), "train_acc": float(last["train_acc"]),
        "train_loss": float(last["train_loss"]),
        "best_val_acc": float(best["val_acc"]) if best else math.nan,
        "best_val_epoch": int(best["epoch"]) if best else None,
        "test_acc_at_best_val": float(best["test_acc"]) if best else math.nan,
        "seconds": s["total_seconds"],
        "images_per_second": float(s["mean_images_per_second"]),
    }


def ladder_table(run_dirs: Iterable[str | Path], order: Iterable[str] | None = None):
    """(table, runs): per preset, mean and std over seeds of the final test top-1/top-5, best validation
    accuracy, train/test gap (final train accuracy minus test accuracy), time and speed, and the gain in
    test top-1 over the preset it derives from (its parent when present in the table, else the row above)."""
    import pandas as pd

    runs = pd.DataFrame([run_row(d) for d in run_dirs])
    if runs.empty:
        raise RunDirError("no run directories to tabulate")
    runs["gap"] = runs["train_acc"] - runs["test_acc"]
    names = list(dict.fromkeys([p for p in (order or []) if p in set(runs["preset"])] + list(runs["preset"])))
    rows = []
    for name in names:
        group = runs[runs["preset"] == name]
        row = {"preset": name, "seeds": len(group), "epochs": int(group["epochs"].max()),
               "n_train": group["n_train"].iloc[0], "synthetic": bool(group["synthetic"].any())}
        for col in ("test_acc", "test_top5", "best_val_acc", "gap", "train_acc"):
            row[col] = group[col].mean()
            row[f"{col}_std"] = group[col].std(ddof=1) if len(group) > 1 else math.nan
        row["seconds"] = group["seconds"].mean()
        row["images_per_second"] = group["images_per_second"].mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    by_name = dict(zip(table["preset"], table["test_acc"]))
    configs = {name: load_run(runs[runs["preset"] == name]["run"].iloc[0]).config for name in names}
    compared, gains, changes = [], [], []
    for i, name in enumerate(table["preset"]):
        ref = PARENT.get(name) if PARENT.get(name) in by_name else (table["preset"][i - 1] if i else None)
        compared.append(ref or "")
        gains.append(by_name[name] - by_name[ref] if ref else math.nan)
        changes.append(config_changes(configs[name], configs[ref]) if ref else "")
    table["compared_to"], table["gain"], table["changes"] = compared, gains, changes
    sigma = seed_noise(table)
    seeds = dict(zip(table["preset"], table["seeds"]))
    table["noise"] = sigma
    table["verdict"] = [verdict(g, sigma, min(seeds[n], seeds[r]) if r else 0)
                        for n, r, g in zip(table["preset"], compared, gains)]
    return table, runs


def seed_noise(table) -> float:
    """The seeds' standard deviation of test top-1 at this budget, pooled over the rows with several seeds
    (root mean variance); NaN when no row has more than one seed."""
    variances = [std ** 2 for std, n in zip(table["test_acc_std"], table["seeds"]) if n > 1 and not math.isnan(std)]
    return math.sqrt(sum(variances) / len(variances)) if variances else math.nan


def verdict(gain: float, sigma: float, seeds: int) -> str:
    """'effect' when |gain| >= EFFECT_SIGMAS x sigma with both rows at 3 or more seeds; 'no measurable effect'
    when below; 'needs seeds' when a single seed shows a large gain; '' for the first row or no noise estimate."""
    if math.isnan(gain) or math.isnan(sigma):
        return ""
    if abs(gain) < EFFECT_SIGMAS * sigma:
        return "no measurable effect"
    return "effect" if seeds >= 3 else "needs seeds"


def config_changes(config: dict, reference: dict) -> str:
    """The fields in which two runs' saved configs differ (how they execute, their name and seed left out),
    as 'key=value, ...' with this run's values: exactly what a row changes relative to the row in `vs`."""
    skip = set(RESUMABLE_FIELDS) | {"preset", "seed"}
    return changes_text({k: v for k, v in config.items() if k not in skip and reference.get(k) != v})


def _pct(value: float, std: float = math.nan, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return text + (f" ± {100 * std:.2f}" if not math.isnan(std) else "")


TABLE_HEADER = ["preset", "seeds", "test top-1 %", "test top-5 %", "best val %", "train−test gap (pp)",
                "gain (pp)", "vs", "verdict", "changes vs that row", "time (s)", "img/s"]


def markdown_table(table, header: list[str] | None = None, changes: bool = True) -> str:
    """The table as GitHub Markdown, accuracies in percent (mean ± std over seeds when there are several);
    `header`: other names for TABLE_HEADER's columns (e.g. the report's Chinese ones); `changes=False` leaves
    out the "changes vs that row" column (a page too narrow for it lists the changes below the table)."""
    header = list(header or TABLE_HEADER)
    skip = None if changes else TABLE_HEADER.index("changes vs that row")
    if skip is not None:
        del header[skip]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.to_dict("records"):
        cells = [f"`{r['preset']}`", str(r["seeds"]), _pct(r["test_acc"], r["test_acc_std"]),
                 _pct(r["test_top5"], r["test_top5_std"]), _pct(r["best_val_acc"], r["best_val_acc_std"]),
                 _pct(r["gap"], r["gap_std"], signed=True), _pct(r["gain"], signed=True),
                 f"`{r['compared_to']}`" if r["compared_to"] else "", r.get("verdict", "") or "",
                 r.get("changes", "") or "",
                 f"{r['seconds']:.0f}",
                 f"{r['images_per_second']:.0f}"]
        if skip is not None:
            del cells[skip]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _noise_note(table) -> str:
    sigma = float(table["noise"].iloc[0]) if len(table) else math.nan
    if math.isnan(sigma):
        return "Verdict: none (no row has several seeds, so the seed noise is unknown)."
    return (f"Verdict: seed noise sigma = {100 * sigma:.2f} pp (test top-1 std over seeds, pooled over the rows with "
            f"several seeds); effect = |gain| >= {EFFECT_SIGMAS:g} sigma with both rows at 3 or more seeds; no "
            f"measurable effect = |gain| < {EFFECT_SIGMAS:g} sigma; needs seeds = a large gain seen with one seed.")


def write_tables(out: str | Path, run_dirs: Iterable[str | Path], order: Iterable[str] | None = None,
                 skipped: dict[str, str] | None = None, budget: Budget | None = None) -> Ablation:
    """Build the table from run directories and write ladder.csv, ladder.md and runs.csv into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d) for d in run_dirs]
    table, runs = ladder_table(run_dirs, order)
    synthetic = bool(runs["synthetic"].any())
    notes = [f"# Ablation{' (SYNTHETIC data: the numbers mean nothing)' if synthetic else ''}", ""]
    if budget is not None:
        notes.append(f"Budget `{budget.name}`: {budget.description}.")
    notes += [f"Device: {', '.join(sorted(set(map(str, runs['device']))))}. "
              f"Seeds: {', '.join(map(str, sorted(set(runs['seed']))))}. "
              f"Models: {', '.join(sorted(set(runs['model'])))}.",
              "Accuracies at the final epoch; best val = highest validation accuracy over the epochs; gap = final "
              "train accuracy (on augmented/mixed batches, during the epoch) minus test accuracy; gain = test top-1 "
              "minus the row named in `vs`; changes = the config fields in which this row's runs differ from that row's "
              "(read from their config.json); time = training + evaluation seconds per run.",
              _noise_note(table), ""]
    for name, why in (skipped or {}).items():
        notes.append(f"- `{name}` skipped: {why}.")
    atomic_write_text(out / LADDER_MD, "\n".join(notes) + ("\n" if skipped else "") + "\n" + markdown_table(table))
    atomic_write_text(out / LADDER_CSV, table.to_csv(index=False))
    atomic_write_text(out / RUNS_CSV, runs.to_csv(index=False))
    return Ablation(table, runs, run_dirs, dict(skipped or {}), out)
