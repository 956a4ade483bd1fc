"""`cvlab ablate`: options around `cvlab.experiments.ablate`."""
from __future__ import annotations

from pathlib import Path

from ..core.config import FIELDS
from ..core.errors import UsageError
from ..core.runs import CONFIG
from ..experiments import ablate
from ..experiments.ablate import BUDGETS, LADDER_CSV, LADDER_MD, RUNS_CSV, get_budget, plan, run_ablation, write_tables
from .common import add_field_option, add_set_option, explicit_overrides, int_in, path_text


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_ablate(args) -> int:
    budget = get_budget(args.budget)
    whole_plan = budget.extra_seeds and args.presets in (None, "ladder") and args.seeds is None
    presets = budget.presets if args.presets in (None, "ladder") else _csv(args.presets)
    try:
        seeds = [int(s) for s in _csv(args.seeds or "0")]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, got {args.seeds!r}") from None
    for seed in seeds:  # before any run starts
        if seed not in FIELDS["seed"].range:
            raise UsageError(f"--seeds: each seed must be {FIELDS['seed'].range.text()}, got {seed}")
    overrides = explicit_overrides(args)
    out = Path(args.out or f"runs/ablate-{budget.name}")
    if args.table_only:
        table_seeds = (0, *budget.extra_seeds) if whole_plan else seeds
        dirs = [r.run_dir for r in plan(presets, table_seeds, out, budget, overrides)[0] if (r.run_dir / CONFIG).exists()]
        if not dirs:  # before write_tables creates `out`
            raise UsageError(f"--table-only: {out} holds none of the planned run directories; train them first "
                             "(without --table-only) or give the --out they are in")
        write_tables(out, dirs, order=presets, budget=budget)
    elif whole_plan:  # the budget's seed plan: every rung at seed 0, then the extra seeds where they are needed
        ablate.run_evidence(budget, out, overrides, devices=args.devices, parallel=args.parallel)
    else:
        run_ablation(presets, seeds, out, budget, overrides, devices=args.devices, parallel=args.parallel)
    print((out / LADDER_MD).read_text(encoding="utf-8"))
    print(f"tables: {out / LADDER_CSV}, {out / LADDER_MD}, {out / RUNS_CSV}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("ablate", help="run presets x seeds under one budget and tabulate them",
                       description=ablate.__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=tuple(BUDGETS), default="subset",
                   help="; ".join(f"{b.name}: {b.description}" for b in BUDGETS.values()))
    p.add_argument("--presets", metavar="A,B,...", help="presets in ladder order (default: the whole ladder)")
    p.add_argument("--seeds", metavar="0,1,...", help="training seeds, each in [0, 2^32 - 1] (default: 0; a budget "
                                                      "with a seed plan, e.g. evidence, runs its whole plan)")
    p.add_argument("--out", metavar="DIR", type=path_text,
                   help="folder for the run directories and tables (default: runs/ablate-BUDGET)")
    add_field_option(p, "epochs", help="override the budget's epochs")
    add_field_option(p, "subset", help="override the budget's training subset")
    for name in ("device", "data_root", "synthetic", "progress"):
        add_field_option(p, name)
    add_set_option(p, help="config field for every run, after the budget (see 'python -m cvlab presets --fields'); "
                           "repeatable")
    p.add_argument("--table-only", action="store_true", help="only rebuild the tables from existing run directories")
    p.add_argument("--parallel", type=int_in(1, 64), metavar="N",
                   help="train N runs at once (N in [1, 64]), one process each: on GPUs 0..N-1 (NPUs) of --device, "
                        "or N CPU processes sharing the cores; logs in OUT/logs/")
    p.add_argument("--devices", metavar="LIST", help="the devices to place runs on, one run each at a time, "
                                                     "e.g. cuda:0,cuda:1 or npu:0,npu:1,npu:2,npu:3 or cpu,cpu")
    p.set_defaults(func=cmd_ablate)
