"""What `cvlab report` prints before it starts: each notebook's planned training and a time estimate."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from cvlab.core.errors import UsageError
from cvlab.report import notebook, plan, runner
from cvlab.report.plan import PlannedTraining

REPO = Path(__file__).resolve().parent.parent
# notebook -> the function that turns its parameters into what it runs (the notebook and the plan call it)
FUNCTIONS = {"01_baseline": notebook.baseline_config, "02_theory": notebook.theory_quick,
             "03_improvements": notebook.improvements}


def test_the_quick_profile_plans_real_data_at_a_cpu_budget():
    params = {"01_baseline": runner.load_profile("quick").notebooks["01_baseline"] | {"SYNTHETIC": False},
              "02_theory": {"BUDGET": "quick"},
              "03_improvements": {"BUDGET": "quick", "SEEDS": 1, "SEED": 0, "SYNTHETIC": False}}
    plans = plan.plan_report(params)
    first = plans[0]
    assert (first.notebook, first.runs, first.epochs, first.train_images, first.eval_images) == \
        ("01_baseline", 1, 3, 5000, 1000)
    assert plans[1].model == "" and "the report's setting" in plans[1].note
    assert plans[1].fixed_seconds == plan.THEORY_SECONDS[False]
    ladder = [p for p in plans if p.notebook == "03_improvements"]
    assert sum(p.runs for p in ladder) == 5 and {p.train_images for p in ladder} == {2000}
    assert {p.eval_images for p in ladder} == {2000}          # 1,000 validation + 1,000 test per epoch


@pytest.mark.parametrize("stem", FUNCTIONS)
def test_each_notebooks_function_takes_its_parameters_with_their_defaults(stem):
    """Keyword = parameter in lower case, default = the parameters cell's: what the plan leaves out, the notebook
    leaves at the same value."""
    pytest.importorskip("nbformat")
    declared = runner.read_parameters(REPO / "notebooks" / f"{stem}.ipynb")
    signature = inspect.signature(FUNCTIONS[stem]).parameters
    assert {name: p.default for name, p in signature.items()} == \
        {k.lower(): v for k, v in declared.items() if k.lower() in signature}


@pytest.mark.parametrize("stem", FUNCTIONS)
def test_each_notebook_calls_the_function_the_plan_calls(stem):
    cells = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    setup = next(s for s in code if "notebook.setup(DATA_ROOT)" in s)   # one setup cell, the same in all three
    assert f"notebook.{FUNCTIONS[stem].__name__}(" in setup
    assert not any("sys.path" in s for s in code)                     # cvlab as installed, or report's PYTHONPATH


def test_the_plan_takes_the_notebooks_defaults_and_one_size_name():
    (theory,) = plan.plan_notebook("02_theory", {})                   # BUDGET "subset": the report's setting
    assert plan.estimate_seconds(theory, {}) == plan.THEORY_SECONDS[False]
    (smoke,) = plan.plan_notebook("02_theory", {"BUDGET": "smoke"})
    assert plan.estimate_seconds(smoke, {}) == plan.THEORY_SECONDS[True] and "(QUICK;" in smoke.note
    assert "ResNet-18 in Q1 and Q6" in smoke.note  # the demos that train the handout's network are named
    ladder = plan.plan_notebook("03_improvements", {"SYNTHETIC": True})  # BUDGET "subset"
    assert all(p.note == "budget subset" for p in ladder) and sum(p.runs for p in ladder) >= 5
    with pytest.raises(UsageError, match="unknown budget 'huge'"):
        plan.plan_notebook("02_theory", {"BUDGET": "huge"})


def test_full_data_sizes_come_from_the_split_sizes():
    (p,) = plan.plan_notebook("01_baseline", {"PRESET": "handout", "EPOCHS": 100, "BATCH_SIZE": 1024})
    assert (p.train_images, p.eval_images, p.images) == (50_000, 10_000, (5_000_000, 1_000_000))


def test_estimate_and_description():
    plans = [PlannedTraining("01_baseline", "handout_resnet18", 1, 2, 1000, 500, 100),
             PlannedTraining("02_theory", "", 0, 0, 0, 0, 0, "theory demos on the CPU (QUICK)", fixed_seconds=40.0)]
    rates = {"handout_resnet18": (plan.CALIBRATION_RATE / 2, 500.0)}   # twice as slow as the calibration run
    assert plan.estimate_seconds(plans[0], rates) == 2000 / rates["handout_resnet18"][0] + 1000 / 500
    assert plan.estimate_seconds(plans[1], rates) == 80.0                # the measured 40 s, scaled to this speed
    lines = plan.describe(plans, rates, "cpu (test)")
    assert any("1 run(s) x 2 epoch(s) x 1,000 train images" in line for line in lines)
    assert any(line.startswith("  02_theory: theory demos on the CPU (QUICK): ~80 s (40 s at") for line in lines)
    overhead = plan.NOTEBOOK_OVERHEAD_SECONDS[("01", False)] * 2
    assert any(f"data, figures, evaluation and export ~{overhead} s" in line for line in lines)
    assert any("data, figures, evaluation and export ~" in line for line in lines) and lines[-1].startswith("  total: ~")
    rates[("handout_resnet18", 100)] = (50.0, 500.0)  # a rate measured at the planned batch wins
    assert plan.estimate_seconds(plans[0], rates) == 2000 / 50 + 1000 / 500


def test_measured_times_scale_with_the_speed_the_warm_up_measures_now():
    theory = PlannedTraining("02_theory", "", 0, 0, 0, 0, 0, "demos", fixed_seconds=100.0)
    idle = {plan.CALIBRATION_MODEL: (plan.CALIBRATION_RATE, 1.0)}
    busy = {plan.CALIBRATION_MODEL: (plan.CALIBRATION_RATE / 3.5, 1.0)}   # e.g. a load of 4-5 on 2 cores
    assert plan.estimate_seconds(theory, idle) == pytest.approx(100.0)
    assert plan.estimate_seconds(theory, busy) == pytest.approx(350.0)
    assert plan.speed_factor({}) == 1.0
    # the one-thread calibration, when measured, decides (a multi-threaded warm-up suffers more from load)
    assert plan.speed_factor(busy | {plan.CALIBRATION: (plan.CALIBRATION_RATE / 2, 0.0)}) == pytest.approx(2.0)


def test_synthetic_notebooks_count_their_own_smaller_overhead():
    real = plan.plan_notebook("01_baseline", {"EPOCHS": 1, "SUBSET": 100, "TEST_SUBSET": 100})
    fake = plan.plan_notebook("01_baseline", {"EPOCHS": 1, "SUBSET": 100, "TEST_SUBSET": 100, "SYNTHETIC": True})
    assert not real[0].synthetic and fake[0].synthetic
    rates = {"handout_resnet18": (plan.CALIBRATION_RATE, 1000.0)}
    seconds = {name: plan.NOTEBOOK_OVERHEAD_SECONDS[("01", name == "fake")] for name in ("real", "fake")}
    assert seconds["fake"] < seconds["real"]
    for name, plans in (("real", real), ("fake", fake)):
        assert any(f"export ~{seconds[name]} s" in line for line in plan.describe(plans, rates, "cpu"))


def test_calibration_measures_one_cpu_thread_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    assert plan.calibration_rate(batch=4) > 0 and torch.get_num_threads() == threads


def test_warm_up_measures_positive_rates():
    torch.set_num_threads(1)
    rates = plan.measure_rates({"handout_resnet18"}, torch.device("cpu"), batch_size=2, steps=1,
                               batches={("handout_resnet18", 4)})
    train, evaluated = rates["handout_resnet18"]
    assert train > 0 and evaluated > 0 and rates[("handout_resnet18", 4)][0] > 0


def test_a_plan_that_cannot_be_made_is_one_line(capsys):
    runner.print_plan({"01_baseline": {"PRESET": "no-such-preset"}}, print)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("plan: not available")


def test_one_duration_format_for_the_lock_and_the_plan():
    """core.units.duration: seconds under 2 min, minutes under 2 h, then hours and minutes; the lock's messages and
    the plan's estimates both write it (the plan once said '3.4 h' where the lock said '3 h 24 min')."""
    from cvlab.core import lock, units

    assert lock.duration is units.duration and plan.duration is units.duration
    cases = {45: "45 s", 119.4: "119 s", 119.6: "2 min", 360.2: "6 min", 749: "12 min", 7170: "2 h 0 min",
             3.4 * 3600: "3 h 24 min", 86400: "24 h 0 min"}
    assert {s: units.duration(s) for s in cases} == cases


def test_cost_and_auto_stop_warning():
    from cvlab.report.plan import cost_lines

    lines = cost_lines(2 * 3600, price_per_hour=3.5, auto_stop_hours=1.0)
    assert "~7.00" in lines[0] and "warning" in lines[1] and "--resume" in lines[1]
    assert cost_lines(1800, None, 1.0) == []  # shorter than the auto-stop time, no price: nothing to say


def test_step_estimate_from_the_first_timed_steps(monkeypatch):
    from cvlab.report import plan

    clock = iter([0.0, 2.0, 4.0, 6.0, 8.0])  # 2 s per step
    monkeypatch.setattr(plan.time, "perf_counter", lambda: next(clock))
    said = []
    estimate = plan.StepEstimate(epochs=3, batch_size=100, eval_images=300, log=said.append, min_steps=3,
                                 min_seconds=5.0)
    for step in range(1, 5):
        estimate(1, step, 10)  # step 1 untimed; steps 2-4: 3 steps in 6 s
    # 26 training steps left at 2 s, plus 3 epochs x 300 eval images at a third of 2 s per 100 images (6 s)
    assert estimate.seconds == 26 * 2 + 6 and len(said) == 1


def test_per_notebook_estimates_add_up_to_the_total():
    plans = [PlannedTraining("01_baseline", "handout_resnet18", 1, 2, 1000, 500, 100),
             PlannedTraining("02_theory", "", 0, 0, 0, 0, 0, "demos", fixed_seconds=40.0)]
    rates = {"handout_resnet18": (plan.CALIBRATION_RATE, 500.0)}
    seconds = plan.notebook_seconds(plans, rates)
    overhead = plan.NOTEBOOK_OVERHEAD_SECONDS[("01", False)]
    assert seconds == pytest.approx({"01_baseline": 2000 / plan.CALIBRATION_RATE + 1000 / 500 + overhead,
                                     "02_theory": 40.0})
    lines = plan.describe(plans, rates, "cpu")
    assert lines[-2].startswith("  per notebook: 01_baseline ~") and "02_theory ~40 s" in lines[-2]
    assert lines[-1] == f"  total: ~{plan.duration(sum(seconds.values()))}"


def test_estimates_are_revised_by_how_long_the_finished_notebooks_took():
    planned = {"01_baseline": 100.0, "02_theory": 200.0, "03_improvements": 300.0}
    assert plan.revision_factor(planned, {}) == 1.0
    assert plan.revision_factor(planned, {"01_baseline": 50.0}) == pytest.approx(0.5)
    assert plan.revision_factor(planned, {"01_baseline": 50.0, "02_theory": 250.0}) == pytest.approx(1.0)
    assert plan.revision_factor(planned, {"elsewhere": 10.0}) == 1.0   # a notebook the plan did not estimate
    said = []
    first = runner.NotebookResult("01_baseline.ipynb", "x", {})
    runner.revise_estimate(first, "01_baseline", planned, [], said.append)
    assert first.estimate_seconds == 100.0 and first.revised_seconds is None and not said
    first.status, first.seconds = "ok", 300.0                      # three times as long as planned
    second = runner.NotebookResult("02_theory.ipynb", "x", {})
    runner.revise_estimate(second, "02_theory", planned, [first], said.append)
    assert (second.estimate_seconds, second.revised_seconds) == (200.0, 600.0)
    assert said == ["02_theory: estimate revised to ~10 min (the plan's ~3 min x3.00: the notebooks so far took "
                    "x3.00 their estimates); ~25 min left"]
    unplanned = runner.NotebookResult("04_extra.ipynb", "x", {})
    runner.revise_estimate(unplanned, "04_extra", planned, [first], said.append)
    assert unplanned.estimate_seconds is None and len(said) == 1


def test_the_warm_up_runs_in_its_own_session_like_a_kernel(monkeypatch):
    """measure_like_a_kernel runs the warm-up in a child process started in a new session (papermill's kernels
    are), returns the same keys as measuring in this process, and falls back to this process when the child
    cannot run."""
    import subprocess
    started = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        started.append(kwargs.get("start_new_session"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    rates = plan.measure_like_a_kernel({"tiny_resnet18"}, "cpu", {("tiny_resnet18", 4)})
    assert started == [True]
    assert set(rates) == {"tiny_resnet18", ("tiny_resnet18", 4), plan.CALIBRATION}
    assert all(train > 0 for train, _ in rates.values())

    def broken(*args, **kwargs):
        raise subprocess.CalledProcessError(1, args[0])

    monkeypatch.setattr(subprocess, "run", broken)
    here = plan.measure_like_a_kernel({"tiny_resnet18"}, "cpu")
    assert set(here) == {"tiny_resnet18", plan.CALIBRATION} and here["tiny_resnet18"][0] > 0


def test_runs_already_complete_are_reused_not_planned(tmp_path):
    """A report run again reuses the notebooks' finished runs: the plan leaves them out (a rebuilt quick report's
    first notebook took 17 s against a planned 107 s, and the revised estimates that followed were 6x too short)."""
    import json

    from cvlab.core.config import with_overrides
    from cvlab.experiments import ablate
    from cvlab.report import parameters

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    params = {"EPOCHS": 2, "SUBSET": 100, "TEST_SUBSET": 100, "RUN_DIR": "../runs/01"}
    baseline = plan._call(parameters.baseline_config, params)

    def finish(run_dir, cfg, status="complete"):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
        (run_dir / "history.csv").write_text("epoch\n1\n")
        (run_dir / "metrics.json").write_text(json.dumps({"status": status, "epochs_done": cfg.epochs}))

    (fresh,) = plan.plan_notebook("01_baseline", params, notebooks)
    assert fresh.runs == 1 and "reused" not in fresh.note
    finish(tmp_path / "runs" / "01", with_overrides(baseline, {"epochs": 1}))   # another run (1 epoch): not reused
    assert plan.plan_notebook("01_baseline", params, notebooks)[0].runs == 1
    finish(tmp_path / "runs" / "01", baseline, status="interrupted")   # this run, unfinished: trains on
    assert plan.plan_notebook("01_baseline", params, notebooks)[0].runs == 1
    finish(tmp_path / "runs" / "01", baseline)
    (reused,) = plan.plan_notebook("01_baseline", params, notebooks)
    assert reused.runs == 0 and reused.images == (0, 0) and "already trained: reused" in reused.note
    seconds = plan.notebook_seconds([reused], {"handout_resnet18": (plan.CALIBRATION_RATE, 500.0)})
    assert seconds["01_baseline"] == pytest.approx(plan.NOTEBOOK_OVERHEAD_SECONDS[("01", False)])  # still exported

    ladder = {"SYNTHETIC": True, "BUDGET": "smoke", "RUNS_DIR": "../runs/03"}
    planned = plan.plan_notebook("03_improvements", ladder, notebooks)
    total = sum(p.runs for p in planned)
    imp = plan._call(parameters.improvements, ladder)
    first = ablate.plan(imp.budget.presets, imp.seeds, tmp_path / "runs" / "03" / "smoke", imp.budget, imp.overrides)[0][0]
    finish(first.run_dir, first.config)
    assert sum(p.runs for p in plan.plan_notebook("03_improvements", ladder, notebooks)) == total - 1
    assert sum(p.runs for p in plan.plan_notebook("03_improvements", ladder)) == total   # no folder: all counted
