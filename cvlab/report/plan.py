"""What a report will train, and about how long that takes here, printed before the notebooks start.

    plans = plan_report({"01_baseline": {...}, "03_improvements": {...}})
    rates = measure_rates({p.model for p in plans if p.model}, device)   # a few seconds of warm-up
    for line in describe(plans, rates, device_label): print(line)

Each notebook's parameters give its training runs (runs x epochs x images); a short warm-up on
random images measures training and evaluation images per second for each model on the device
the notebooks will use, and the estimate is images / rate. It ignores data loading, figures and
per-epoch overheads, and a busy machine is slower than its warm-up: read it as an order of magnitude.
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..core.config import Config
from ..core.data import SPLIT_SIZES
from ..core.units import duration

# What the plan cannot count in training images (notebook 02's demos: the handout's ResNet-18 in Q1 and Q6 on a
# subset, small CNNs and 2-D surfaces elsewhere; each notebook's data loading, figures, re-evaluation and export)
# is a measured time, valid at the speed the warm-up measured in the same run. The plan scales it by that speed
# against the warm-up of this run (speed_factor): a machine twice as busy is about twice as slow at both.
# Measured together: docs/results/quick-report-run.log (2026-11-28, OMP_NUM_THREADS=1, load 0.55 before and 1.56
# after): warm-up 194 train img/s (handout model, batch 128); notebook 02 at the report's setting 329 s, notebooks
# 01 and 03 besides their epochs 23 s and 17 s.
CALIBRATION_MODEL = "handout_resnet18"
CALIBRATION_RATE = 194.0          # train images per second in that run's warm-up
# Synthetic data (the smoke profile: small, generated data, QUICK demos): docs/results/smoke-report-load1.log
# (2026-12-07, load ~1, the calibration measured in its own session as the kernels run: 207 img/s, so x0.94):
# notebook 02 took 56 s -> 60 s at CALIBRATION_RATE; 01 took 12 s with ~2 s of runs, 03 20 s with ~9 s of runs ->
# 11 s and 12 s besides the runs. (The earlier fit, from a run whose calibration ran in the report's own process,
# saw the machine 3.4x slower than its kernels did and gave 40, 7 and 5 s: estimates 27-33% low.)
THEORY_SECONDS = {True: 60, False: 320}      # notebook 02, QUICK (smoke) / the report's setting, at CALIBRATION_RATE
# (notebook, synthetic data) -> seconds besides the epochs at CALIBRATION_RATE. Real data: the quick run above.
NOTEBOOK_OVERHEAD_SECONDS = {("01", False): 25, ("03", False): 17, ("01", True): 11, ("03", True): 12}


CALIBRATION = "calibration"       # the key of calibration_rate's measurement in a rates dict


def calibration_rate(batch: int = 128) -> float:
    """Train images per second of CALIBRATION_MODEL on the CPU with one thread, as CALIBRATION_RATE was measured
    (OMP_NUM_THREADS=1): one untimed step, one timed. Notebook 02's demos run on one CPU thread whatever the device,
    and a loaded machine slows a multi-threaded warm-up far more than them (threads spinning against each other)."""
    from ..core.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(CALIBRATION_MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        return _rate(step, model.train, batch, 1, torch.device("cpu"), lambda device: None)
    finally:
        torch.set_num_threads(threads)


def speed_factor(rates: dict) -> float:
    """How many times slower than the calibration run this machine is now: CALIBRATION_RATE against the
    one-thread calibration measurement in `rates` (else the warm-up of CALIBRATION_MODEL); 1 without either."""
    rate = rates.get(CALIBRATION) or rates.get(CALIBRATION_MODEL)
    return CALIBRATION_RATE / rate[0] if rate and rate[0] > 0 else 1.0


@dataclass
class PlannedTraining:
    """Runs of one model in one notebook that share their budget."""

    notebook: str
    model: str            # "" for notebook 02's demos (no ResNet-18)
    runs: int
    epochs: int
    train_images: int     # per run and epoch
    eval_images: int      # validation + test images evaluated per run and epoch
    batch_size: int
    note: str = ""
    fixed_seconds: float | None = None   # work without a ResNet-18 (notebook 02): measured seconds, not images
    synthetic: bool = False              # generated data: less to load and draw than CIFAR-100

    @property
    def images(self) -> tuple[int, int]:
        return (self.runs * self.epochs * self.train_images, self.runs * self.epochs * self.eval_images)


def split_sizes(cfg: Config) -> tuple[int, int]:
    """(training images, validation + test images) one epoch of `cfg` touches."""
    train_total = cfg.synthetic_train if cfg.synthetic else SPLIT_SIZES["train"]
    test_total = cfg.synthetic_test if cfg.synthetic else SPLIT_SIZES["test"]
    available = train_total - cfg.val_size
    train = min(cfg.subset, available) if cfg.subset else available
    test = min(cfg.test_subset, test_total) if cfg.test_subset else test_total
    return train, cfg.val_size + test


def planned_trainings(notebook: str, cfgs: list[Config], note: str = "") -> list[PlannedTraining]:
    """The training `cfgs` plan for `notebook`, runs of the same size counted together (report's plan and a
    notebook's own estimate when run by hand)."""
    groups: dict[tuple, PlannedTraining] = {}
    for cfg in cfgs:
        train, evaluated = split_sizes(cfg)
        key = (cfg.model, cfg.epochs, train, evaluated, cfg.batch_size)
        if key in groups:
            groups[key].runs += 1
        else:
            groups[key] = PlannedTraining(notebook, cfg.model, 1, cfg.epochs, train, evaluated, cfg.batch_size, note,
                                          synthetic=bool(cfg.synthetic))
    return list(groups.values())


def _call(fn: Callable, params: dict[str, Any]) -> Any:
    """`fn` called with the notebook parameters it takes (its keyword names are the parameters in lower case)."""
    taken = inspect.signature(fn).parameters
    return fn(**{k.lower(): v for k, v in params.items() if k.lower() in taken})


def finished(run_dir: Path, cfg: Config) -> bool:
    """Whether `run_dir` holds `cfg`'s run, complete (ablate.run_status, the rule the notebooks' reuse follows): a
    notebook run again trains nothing there. A folder holding other settings counts as not finished (the notebook
    then says why it cannot use it)."""
    from ..core.errors import RunDirError
    from ..experiments.ablate import run_status

    try:
        return run_status(run_dir, cfg) == "complete"
    except RunDirError:
        return False


def left_to_train(stem: str, runs: list[tuple[Config, Path | None]], note: str = "") -> list[PlannedTraining]:
    """planned_trainings of the runs not finished yet; when every run is finished, one group of 0 runs that says
    so (the notebook still loads data, draws and exports)."""
    left = [cfg for cfg, run_dir in runs if run_dir is None or not finished(run_dir, cfg)]
    if left or not runs:
        return planned_trainings(stem, left, note)
    cfg = runs[0][0]
    train, evaluated = split_sizes(cfg)
    return [PlannedTraining(stem, cfg.model, 0, cfg.epochs, train, evaluated, cfg.batch_size,
                            f"{note + ', ' if note else ''}all {len(runs)} run(s) already trained: reused",
                            synthetic=bool(cfg.synthetic))]


def plan_notebook(stem: str, params: dict[str, Any], notebooks_dir: Path | None = None) -> list[PlannedTraining]:
    """The training one notebook will do with `params` (its resolved papermill parameters), built by the
    function the notebook itself calls (report.parameters, which the notebooks reach through report.notebook).
    With `notebooks_dir` (where the kernels run: RUN_DIR and RUNS_DIR are relative to it), runs already complete
    are left out: a report run again reuses them."""
    from . import parameters

    def under(rel: str | None) -> Path | None:   # a folder parameter as the kernels see it; None: unknown
        return notebooks_dir / rel if notebooks_dir is not None and rel else None

    if stem.startswith("01"):
        return left_to_train(stem, [(_call(parameters.baseline_config, params), under(params.get("RUN_DIR")))])
    if stem.startswith("02"):
        quick = _call(parameters.theory_quick, params)
        setting = "QUICK" if quick else "the report's setting"
        return [PlannedTraining(stem, "", 0, 0, 0, 0, 0, f"theory demos on the CPU ({setting}; the handout's "
                                "ResNet-18 in Q1 and Q6, small networks elsewhere)", fixed_seconds=THEORY_SECONDS[quick])]
    if stem.startswith("03"):
        from ..experiments import ablate

        imp = _call(parameters.improvements, params)
        runs_dir = under(params.get("RUNS_DIR"))
        out = runs_dir / imp.budget.name if runs_dir is not None else None   # the notebook's runs_dir
        runs, _ = ablate.plan(imp.budget.presets, imp.seeds, out or "runs", imp.budget, imp.overrides)
        return left_to_train(stem, [(r.config, r.run_dir if out is not None else None) for r in runs],
                             f"budget {imp.budget.name}")
    return []


def plan_report(params: dict[str, dict[str, Any]], notebooks_dir: Path | None = None) -> list[PlannedTraining]:
    """Every notebook's planned training, in notebook order (stem -> its parameters); see plan_notebook."""
    return [p for stem, values in params.items() for p in plan_notebook(stem, values, notebooks_dir)]


def measure_rates(models: set[str], device: torch.device, batch_size: int = 0, steps: int = 0,
                  batches: set[tuple[str, int]] = frozenset()) -> dict:
    """model -> (training, evaluation) images per second on `device`, fp32, from `steps` timed steps
    after one untimed step on random 32x32 images (batch 128, CPU: 1 step; elsewhere: batch 256, 3 steps).
    On a CPU a batch of 32 measured 2.5x fewer images per second than the report's batches of 256 train at
    (61 vs 111-174 img/s, handout model, one thread): per-image cost falls with the batch, so the warm-up
    uses a batch near the ones it predicts. `batches` ((model, batch) pairs, batch capped at 1024) adds a
    training rate measured at that batch under the key (model, batch): on a CPU, batches of 1024 trained at
    ~130 img/s where batches of 256 reached ~190 (report --profile quick, handout model, one thread)."""
    from ..core.device import synchronize
    from ..core.models import build_model

    cpu = device.type == "cpu"
    batch, steps = batch_size or (128 if cpu else 256), steps or (1 if cpu else 3)
    rates = {}
    for name in sorted(models):
        model = build_model(name).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 100, (batch,), device=device)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        def eval_step() -> None:
            with torch.inference_mode():
                model(x)

        rates[name] = (_rate(train_step, model.train, batch, steps, device, synchronize),
                       _rate(eval_step, model.eval, batch, steps, device, synchronize))
        for b in sorted({min(b, 1024) for m, b in batches if m == name} - {batch}):
            x = torch.randn(b, 3, 32, 32, device=device)
            y = torch.randint(0, 100, (b,), device=device)
            rates[(name, b)] = (_rate(train_step, model.train, b, steps, device, synchronize), rates[name][1])
    return rates


def measure_here(models: set[str], device: torch.device, batches: set[tuple[str, int]] = frozenset()) -> dict:
    """The warm-up (measure_rates) and the one-thread calibration, in this process."""
    rates = measure_rates(models, device, batches=batches)
    rates[CALIBRATION] = (calibration_rate(), 0.0)  # the speed the measured times scale with
    return rates


def measure_like_a_kernel(models: set[str], device: str, batches: set[tuple[str, int]] = frozenset(),
                          timeout: float = 900.0) -> dict:
    """measure_here run in a new process in its own session, as papermill starts each notebook's kernel. Where the
    scheduler shares the CPU between sessions first (Linux's autogroup, on by default on desktop and many server
    kernels), a warm-up in the report's own process competes with everything its terminal runs, while a kernel
    competes as one more session: measured here on a 2-core machine with two busy loops in the terminal's session,
    the in-process warm-up saw 37-43 img/s where notebooks 01 and 03 then trained at 87-131. Falls back to this
    process where the child cannot run."""
    import json
    import subprocess
    import sys

    spec = json.dumps({"models": sorted(models), "device": device, "batches": sorted(batches)})
    try:  # in this process's environment: the report calls it inside runner.kernel_environment, as the kernels run
        done = subprocess.run([sys.executable, "-m", "cvlab.report.plan", spec], capture_output=True, text=True,
                              start_new_session=True, timeout=timeout, check=True)
        return {tuple(k) if isinstance(k, list) else k: (train, evaluated)
                for k, train, evaluated in json.loads(done.stdout.strip().splitlines()[-1])}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        from ..core.device import resolve_device
        return measure_here(models, resolve_device(device), batches)


def _rate(step: Callable[[], None], mode: Callable, batch: int, steps: int, device, synchronize) -> float:
    mode()
    step()  # untimed: allocations, kernel selection
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch * steps / max(time.perf_counter() - start, 1e-9)


def estimate_seconds(plan: PlannedTraining, rates: dict[str, tuple[float, float]]) -> float | None:
    """Seconds for `plan`: its images at the warm-up's rates, or its measured time scaled to this machine's speed."""
    if plan.fixed_seconds is not None:
        return float(plan.fixed_seconds) * speed_factor(rates)
    if plan.model not in rates:
        return None
    train, evaluated = plan.images
    train_rate, eval_rate = rates.get((plan.model, min(plan.batch_size, 1024)), rates[plan.model])
    return train / train_rate + evaluated / eval_rate


def notebook_seconds(plans: list[PlannedTraining], rates: dict) -> dict[str, float]:
    """Each notebook's estimated seconds: its planned training at the warm-up's rates plus, where measured, what is
    not training (data, figures, evaluation, export) scaled to this machine's speed; the totals `describe` prints."""
    factor = speed_factor(rates)
    seconds: dict[str, float] = {}
    for p in plans:
        seconds[p.notebook] = seconds.get(p.notebook, 0.0) + (estimate_seconds(p, rates) or 0.0)
    for notebook, overhead in overhead_seconds(plans).items():
        seconds[notebook] += overhead * factor
    return seconds


def overhead_seconds(plans: list[PlannedTraining]) -> dict[str, float]:
    """notebook -> its measured time besides training (NOTEBOOK_OVERHEAD_SECONDS, at CALIBRATION_RATE), for the
    notebooks that train, in notebook order; a notebook without a measured time is left out."""
    found = {}
    for notebook in sorted({p.notebook for p in plans if p.model}):
        synthetic = any(p.synthetic for p in plans if p.notebook == notebook)
        if (notebook[:2], synthetic) in NOTEBOOK_OVERHEAD_SECONDS:
            found[notebook] = NOTEBOOK_OVERHEAD_SECONDS[(notebook[:2], synthetic)]
    return found


def revision_factor(planned: dict[str, float], measured: dict[str, float]) -> float:
    """How much longer than planned the finished notebooks took (measured / planned, summed over those with an
    estimate; 1 before any): the warm-up saw the machine for seconds, a notebook for minutes, so the estimates of
    the notebooks still to run are revised by it, as `train` revises its own after the first steps."""
    done = [name for name, seconds in measured.items() if planned.get(name)]
    return sum(measured[n] for n in done) / sum(planned[n] for n in done) if done else 1.0


def cost_lines(total_seconds: float, price_per_hour: float | None, auto_stop_hours: float | None) -> list[str]:
    """The estimated cost at `price_per_hour`, and a warning when the run outlasts an instance's auto-stop time."""
    lines = []
    hours = total_seconds / 3600
    if price_per_hour:
        lines.append(f"  cost: ~{hours:.1f} h x {price_per_hour:g} per hour = ~{hours * price_per_hour:.2f} "
                     "(same currency as --price-per-hour; the estimate, not a quote)")
    if auto_stop_hours and hours > auto_stop_hours:
        lines.append(f"  warning: the estimate (~{duration(total_seconds)}) is longer than {auto_stop_hours:g} h, the "
                     "auto-stop time given (--auto-stop-hours); a ModelArts notebook instance stops then and the training "
                     "with it: extend auto-stop in the console, or run it again afterwards: notebooks resume from the "
                     "last finished epoch (RUN_DIR), the CLI with train --resume --out RUN (docs/modelarts.md, section 6)")
    return lines


class StepEstimate:
    """After the first measured training steps, log once how long the whole run will take.

        fit(cfg, out, on_step=StepEstimate(cfg, eval_images, log))

    Called after every training step with (epoch, step, steps per epoch). Step 1 of the first epoch seen is
    not timed (allocations, kernel selection); the estimate comes after `min_steps` timed steps and at least
    `min_seconds`, or at the end of that epoch. Evaluation is counted as forward passes at a third of the
    per-image cost of a training step (measured ratio on the CPU: see the report's warm-up lines)."""

    def __init__(self, epochs: int, batch_size: int, eval_images: int, log: Callable[[str], None] = print,
                 min_steps: int = 3, min_seconds: float = 5.0) -> None:
        self.epochs, self.batch_size, self.eval_images, self.log = epochs, batch_size, eval_images, log
        self.min_steps, self.min_seconds = min_steps, min_seconds
        self.start: float | None = None
        self.first_step = 0
        self.seconds: float | None = None  # the estimate, once made

    def __call__(self, epoch: int, step: int, steps: int) -> None:
        if self.seconds is not None:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start, self.first_step = now, step
            return
        timed, elapsed = step - self.first_step, now - self.start
        if not ((timed >= self.min_steps and elapsed >= self.min_seconds) or step == steps):
            return
        per_step = elapsed / max(timed, 1)
        steps_left = steps * (self.epochs - epoch + 1) - step
        eval_seconds = (self.epochs - epoch + 1) * self.eval_images * per_step / self.batch_size / 3
        self.seconds = steps_left * per_step + eval_seconds
        self.log(f"estimate: {per_step:.2f} s per step over the first {timed} timed steps -> "
                 f"~{duration(self.seconds)} left for {self.epochs - epoch + 1} epoch(s) of {steps} steps "
                 f"(evaluation ~{duration(eval_seconds)} of it)")


def describe(plans: list[PlannedTraining], rates: dict[str, tuple[float, float]], device_label: str,
             price_per_hour: float | None = None, auto_stop_hours: float | None = None) -> list[str]:
    """Lines for the console: one per planned group, the warm-up rates, the total estimate, and (when given a
    price per hour or an auto-stop time) the cost and an auto-stop warning."""
    factor = speed_factor(rates)
    lines = [f"plan (estimate from a short warm-up on {device_label}, fp32; what is not training is a measured time "
             f"scaled to this warm-up: x{factor:.1f} the time measured at {CALIBRATION_RATE:.0f} img/s, "
             "docs/results/quick-report-run.log; read it as +-30% or worse when the load changes during the run):"]
    for name, (train, evaluated) in rates.items():
        if name == CALIBRATION:
            lines.append(f"  calibration {CALIBRATION_MODEL}, CPU, 1 thread, batch 128: {train:,.0f} train img/s")
            continue
        label = f"{name[0]}, batch {name[1]}" if isinstance(name, tuple) else name
        lines.append(f"  warm-up {label}: {train:,.0f} train img/s, {evaluated:,.0f} eval img/s")
    for notebook, seconds in overhead_seconds(plans).items():
        lines.append(f"  {notebook}: data, figures, evaluation and export ~{duration(seconds * factor)}")
    for p in plans:
        seconds = estimate_seconds(p, rates)
        if not p.model:
            lines.append(f"  {p.notebook}: {p.note}: ~{duration(seconds)} ({p.fixed_seconds:.0f} s at "
                         f"{CALIBRATION_RATE:.0f} img/s x{factor:.1f})")
            continue
        lines.append(f"  {p.notebook}: {p.runs} run(s) x {p.epochs} epoch(s) x {p.train_images:,} train images "
                     f"(+ {p.eval_images:,} evaluated per epoch), {p.model}, batch {p.batch_size}"
                     f"{', ' + p.note if p.note else ''}: ~{duration(seconds) if seconds is not None else '?'}")
    per_notebook = notebook_seconds(plans, rates)
    lines.append("  per notebook: " + ", ".join(f"{name} ~{duration(s)}" for name, s in sorted(per_notebook.items())))
    total = sum(per_notebook.values())
    lines.append(f"  total: ~{duration(total)}")
    return lines + cost_lines(total, price_per_hour, auto_stop_hours)


if __name__ == "__main__":  # measure_like_a_kernel's child: one JSON line of [key, train rate, eval rate]
    import json
    import sys

    from ..core.device import resolve_device

    _spec = json.loads(sys.argv[1])
    _rates = measure_here(set(_spec["models"]), resolve_device(_spec["device"]), {tuple(b) for b in _spec["batches"]})
    print(json.dumps([[list(k) if isinstance(k, tuple) else k, *v] for k, v in _rates.items()]))
