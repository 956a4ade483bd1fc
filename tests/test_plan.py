"""What `cvlab report` prints before it starts: each notebook's planned training and a time estimate."""
from __future__ import annotations

import torch

from cvlab.report import plan, runner
from cvlab.report.plan import PlannedTraining


def test_the_quick_profile_plans_real_data_at_a_cpu_budget():
    params = {"01_baseline": runner.load_profile("quick").notebooks["01_baseline"] | {"SYNTHETIC": False},
              "02_theory": {"QUICK": False},
              "03_improvements": {"BUDGET": "quick", "SEEDS": 1, "SEED": 0, "SYNTHETIC": False}}
    plans = plan.plan_report(params)
    first = plans[0]
    assert (first.notebook, first.runs, first.epochs, first.train_images, first.eval_images) == \
        ("01_baseline", 1, 3, 5000, 1000)
    assert plans[1].model == "" and "QUICK=False" in plans[1].note
    ladder = [p for p in plans if p.notebook == "03_improvements"]
    assert sum(p.runs for p in ladder) == 5 and {p.train_images for p in ladder} == {2000}
    assert {p.eval_images for p in ladder} == {2000}          # 1,000 validation + 1,000 test per epoch


def test_full_data_sizes_come_from_the_split_sizes():
    (p,) = plan.plan_notebook("01_baseline", {"PRESET": "handout", "EPOCHS": 100, "BATCH_SIZE": 1024})
    assert (p.train_images, p.eval_images, p.images) == (50_000, 10_000, (5_000_000, 1_000_000))


def test_estimate_and_description():
    plans = [PlannedTraining("01_baseline", "handout_resnet18", 1, 2, 1000, 500, 100),
             PlannedTraining("02_theory", "", 0, 0, 0, 0, 0, "theory demos on the CPU (QUICK=True), ...")]
    rates = {"handout_resnet18": (100.0, 500.0)}
    assert plan.estimate_seconds(plans[0], rates) == 2000 / 100 + 1000 / 500
    lines = plan.describe(plans, rates, "cpu (test)")
    assert "1 run(s) x 2 epoch(s) x 1,000 train images" in lines[2] and lines[-1].startswith("  total: ~")


def test_warm_up_measures_positive_rates():
    torch.set_num_threads(1)
    rates = plan.measure_rates({"handout_resnet18"}, torch.device("cpu"), batch_size=2, steps=1)
    train, evaluated = rates["handout_resnet18"]
    assert train > 0 and evaluated > 0


def test_a_plan_that_cannot_be_made_is_one_line(capsys):
    runner.print_plan({"01_baseline": {"PRESET": "no-such-preset"}}, print)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("plan: not available")
