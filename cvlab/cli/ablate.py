"""`cvlab ablate`: options around `cvlab.experiments.ablate`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import UsageError
from ..core.runs import CONFIG
from ..experiments import ablate
from ..experiments.ablate import (BUDGETS, LADDER_CSV, LADDER_MD, RUNS_CSV, get_budget, parse_pairs, plan,
                                  run_ablation, write_tables)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_ablate(args) -> int:
    budget = get_budget(args.budget)
    presets = budget.presets if args.presets in (None, "ladder") else _csv(args.presets)
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, got {args.seeds!r}") from None
    pairs = list(args.set)
    for key, value in (("epochs", args.epochs), ("subset", args.subset), ("device", args.device),
                       ("data_root", args.data_root)):
        if value is not None:
            pairs.append(f"{key}={value}")
    if args.synthetic:
        pairs.append("synthetic=true")
    if args.no_progress:
        pairs.append("progress=false")
    out = Path(args.out or f"runs/ablate-{budget.name}")
    if args.table_only:
        dirs = [r.run_dir for r in plan(presets, seeds, out, budget, parse_pairs(pairs))[0] if (r.run_dir / CONFIG).exists()]
        write_tables(out, dirs, order=presets, budget=budget)
    else:
        run_ablation(presets, seeds, out, budget, pairs)
    print((out / LADDER_MD).read_text(encoding="utf-8"))
    print(f"tables: {out / LADDER_CSV}, {out / LADDER_MD}, {out / RUNS_CSV}")
    return 0


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def register(sub) -> None:
    p = sub.add_parser("ablate", help="run presets x seeds under one budget and tabulate them",
                       description=ablate.__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=tuple(BUDGETS), default="subset",
                   help="; ".join(f"{b.name}: {b.description}" for b in BUDGETS.values()))
    p.add_argument("--presets", metavar="A,B,...", help="presets in ladder order (default: the whole ladder)")
    p.add_argument("--seeds", default="0", metavar="0,1,...", help="training seeds (default: 0)")
    p.add_argument("--out", metavar="DIR", help="folder for the run directories and tables (default: runs/ablate-BUDGET)")
    p.add_argument("--epochs", type=_count(1), metavar="N", help="override the budget's epochs")
    p.add_argument("--subset", type=_count(0), metavar="N", help="override the budget's training subset")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "npu", "mps"))
    p.add_argument("--data-root", metavar="DIR")
    p.add_argument("--synthetic", action="store_true", help="generated data instead of CIFAR-100")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config field for every run")
    p.add_argument("--table-only", action="store_true", help="only rebuild the tables from existing run directories")
    p.set_defaults(func=cmd_ablate)
