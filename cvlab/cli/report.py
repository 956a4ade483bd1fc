"""`cvlab report`: options around `cvlab.report.runner`."""
from __future__ import annotations

import sys
from pathlib import Path

from ..report import runner
from ..core.errors import UsageError
from ..report.runner import NotebookFailed, NotebookStopped, available_profiles, run_report
from ..report.submission import STUDENT_FILE, resolve_student
from .common import float_in, path_text

CELL_TIMEOUT_MAX = 30 * 24 * 3600.0  # seconds; Jupyter's timers overflow long before float's own limit


def cmd_report(args) -> int:
    student = None
    if args.submission:
        student = resolve_student(args.student_name, args.student_id, args.student_class,
                                  Path(args.student_file) if args.student_file else None)
    elif args.student_name or args.student_id or args.student_class or args.student_file:
        raise UsageError("--student-* options go with --submission")
    try:
        run_report(args.profile, [tuple(p) for p in args.parameter], Path(args.notebooks) if args.notebooks else None,
                   Path(args.out) if args.out else None, args.only, args.log_output, args.no_input, args.pdf,
                   args.kernel, args.cell_timeout, estimate=args.estimate,
                   student=student, price_per_hour=args.price_per_hour, auto_stop_hours=args.auto_stop_hours)
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
                        "11 min measured on 2 cores; full: real data, the handout's settings) or a .yaml file (default: full)")
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
    p.add_argument("--price-per-hour", type=float_in(0, 1e6, low_allowed=True), metavar="PRICE",
                   help="hourly price of this machine (e.g. the ModelArts flavour's): the plan adds the estimated cost")
    p.add_argument("--auto-stop-hours", type=float_in(0, 24 * 365, low_allowed=True), default=1.0, metavar="HOURS",
                   help="warn when the estimate is longer than this: a ModelArts notebook instance's auto-stop time, "
                        "set when it is created (default 1; 0 = no warning)")
    p.add_argument("--kernel", metavar="NAME", help="Jupyter kernel (default: one running this Python, registered if needed)")
    p.add_argument("--cell-timeout", type=float_in(0, CELL_TIMEOUT_MAX), metavar="SECONDS",
                   help=f"fail a cell that runs longer (at most {CELL_TIMEOUT_MAX:g} s, 30 days; default: none)")
    g = p.add_argument_group("submission", "one A4 document to hand in: cover, contents, the handout's chapters "
                             "and a source-code appendix -> reports/<profile>/submission.pdf and .html")
    g.add_argument("--submission", action="store_true", help="also write submission.pdf / submission.html")
    g.add_argument("--student-name", metavar="NAME", help="name on the cover")
    g.add_argument("--student-id", metavar="ID", help="student ID on the cover")
    g.add_argument("--student-class", metavar="CLASS", help="class on the cover (optional)")
    g.add_argument("--student-file", metavar="FILE",
                   help=f"YAML with name:, id:, class: (and date:) filled in once (default: ./{STUDENT_FILE} if present); "
                        "options override it")
    p.set_defaults(func=cmd_report)
