"""`cvlab report`: options around `cvlab.report.runner`."""
from __future__ import annotations

import sys
from pathlib import Path

from ..report import runner
from ..report.runner import NotebookFailed, NotebookStopped, available_profiles, run_report
from .common import path_text, positive_float


def cmd_report(args) -> int:
    try:
        run_report(args.profile, [tuple(p) for p in args.parameter], Path(args.notebooks) if args.notebooks else None,
                   Path(args.out) if args.out else None, args.only, args.log_output, args.no_input, args.pdf,
                   args.kernel, args.cell_timeout, estimate=args.estimate)
    except NotebookFailed as exc:
        sys.stderr.write(f"cvlab: error: {exc}\n")
        return 1
    except NotebookStopped as exc:  # SIGTERM (143) or Ctrl-C (130) while a notebook ran
        sys.stderr.write(f"cvlab: {exc}\n")
        return exc.exit_code
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="run the notebooks with papermill and export them to HTML/PDF",
                       description=runner.__doc__.split("\n\n")[0] + " Profiles: " + ", ".join(available_profiles()) + ".")
    p.add_argument("--profile", default="full",
                   help="parameter profile: a name (smoke: synthetic data, CPU; quick: real data at a CPU budget, "
                        "~15 min; full: real data, the handout's settings) or a .yaml file (default: full)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a parameter in every notebook that declares it (NOTEBOOK.KEY for one); repeatable")
    p.add_argument("--only", action="append", metavar="NAME", help="run only notebooks whose name starts with NAME")
    p.add_argument("--notebooks", metavar="DIR", help="folder holding 0*.ipynb (default: ./notebooks)")
    p.add_argument("--out", metavar="DIR", type=path_text,
                   help="executed notebooks and exports (default: reports/<profile>)")
    p.add_argument("--log-output", action="store_true", help="stream cell output live while notebooks run")
    p.add_argument("--no-input", action="store_true", help="hide code cells in the HTML/PDF (submission copy)")
    p.add_argument("--no-pdf", dest="pdf", action="store_false", help="HTML only, no PDF attempt")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="start at once, without printing the planned training and its time estimate")
    p.add_argument("--kernel", metavar="NAME", help="Jupyter kernel (default: one running this Python, registered if needed)")
    p.add_argument("--cell-timeout", type=positive_float, metavar="SECONDS", help="fail a cell that runs longer (default: none)")
    p.set_defaults(func=cmd_report)
