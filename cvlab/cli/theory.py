"""`cvlab theory`: the theory demonstrations at the report's setting -> docs/results/theory.json -> answers/."""
from __future__ import annotations

from pathlib import Path

from ..core.config import MAX_SEED
from ..core.errors import UsageError
from .common import add_data_options, int_in


def cmd_theory(args) -> int:
    from ..coursework import theory
    from ..coursework.theory import results as tr
    from ..core.data import locate
    from ..core.paths import resolve_data_root

    out = Path(args.out)
    if args.render_only:
        if not out.is_file():
            raise UsageError(f"no results file at {out}; run 'python -m cvlab theory' first")
        results = tr.read_results(out)
    else:
        if args.synthetic:
            data = theory.load_demo_data("", synthetic=True)
        else:
            root = resolve_data_root(args.data_root or "")
            if locate(root) is None:
                raise UsageError(f"no CIFAR-100 in {root.resolve()} (q1, q3 and q4 need it); put "
                                 "cifar-100-python.tar.gz there, pass --data-root DIR, or --synthetic for a dry run")
            data = theory.load_demo_data(root, synthetic=False)
        only = tuple(q.strip() for q in args.only.split(",") if q.strip()) if args.only else ()
        unknown = [q for q in only if q not in tr.EXTRACT]
        if unknown:
            raise UsageError(f"--only takes question keys {', '.join(tr.EXTRACT)}, got {', '.join(unknown)}")
        if only and not out.is_file():
            raise UsageError(f"--only recomputes some questions of an existing results file; there is none at {out}")
        try:
            results = tr.compute(args.figures, data, quick=args.quick, seed=args.seed, baseline_run=args.baseline,
                                 only=only, previous=tr.read_results(out) if only else None)
        except ValueError as exc:
            raise UsageError(f"--only: {exc} ({out})") from None
        print(f"wrote {tr.write_results(results, out)}")
    if args.answers:
        for path in tr.render_answers(results):
            print(f"rendered {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("theory", help="compute the theory demos' numbers and render answers/ from them",
                       description="Run the six theory demonstrations at the report's setting (QUICK=False, real "
                                   "CIFAR-100 class-balanced subsets, seed 0, CPU, one thread), write their numbers "
                                   "to a JSON file and render answers/*.md from answers/templates/ with them.")
    add_data_options(p)
    p.add_argument("--out", default=str(Path("docs") / "results" / "theory.json"), metavar="FILE",
                   help="results file (default: docs/results/theory.json)")
    p.add_argument("--figures", default="figures", metavar="DIR", help="where the demo figures go (default: figures)")
    p.add_argument("--quick", action="store_true", help="the QUICK=True setting (seconds; not the report's numbers)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, metavar="N", help=f"random seed, in [0, {MAX_SEED}] (default 0)")
    p.add_argument("--baseline", metavar="RUN_DIR",
                   help="notebook 01's run directory, for the handout ResNet-18's own train/test gap in q3 "
                        "(default: none; the numbers then read 'not computed')")
    p.add_argument("--no-answers", dest="answers", action="store_false",
                   help="write the results file only, leave answers/ alone")
    p.add_argument("--render-only", action="store_true", help="render answers/ from the existing results file")
    p.add_argument("--only", metavar="Q,...", default="",
                   help="recompute only these questions (e.g. q4,q6) and keep the others' numbers from the results "
                        "file, which must be at the same setting")
    p.set_defaults(func=cmd_theory)
