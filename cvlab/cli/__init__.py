"""Command line: `python -m cvlab <command> ...`. Parses, calls the library, maps errors to exit codes.

    python -m cvlab train --preset handout                      # the handout's experiment
    python -m cvlab train --preset handout --subset 2000 --epochs 2 --device cpu
    python -m cvlab train --synthetic --epochs 3 --out runs/demo  # no data set needed
    python -m cvlab train --resume --out runs/demo --epochs 3
    python -m cvlab data check --data-root ./data
    python -m cvlab presets
    python -m cvlab doctor                                      # check this machine first
    python -m cvlab theory                                      # the numbers behind answers/

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr); 3 training diverged (a non-finite
loss; the run directory keeps its last good epoch); 1 anything unexpected; 130 interrupted by Ctrl-C (SIGINT),
143 stopped by SIGTERM (either way the run directory stays valid, says "interrupted" and can be resumed).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..core.distributed import is_main_process, lost_peer
from ..core.errors import Diverged, Terminated, UsageError, disk_error, is_disk_error
from ..core.signals import sigterm_as_interrupt
from . import ablate, aftertrain, bench, doctor, report, theory, train
from .common import Parser

# ---------------------------------------------------------------------------- main

# One module per command (or family of commands), each with a `register(sub)` that adds its parser.
REGISTER = [train.register_train, train.register_presets, train.register_data, ablate.register, report.register,
            bench.register, doctor.register, *aftertrain.REGISTER, theory.register]


def build_parser() -> Parser:
    from .. import __version__
    parser = Parser(prog="python -m cvlab", description=__doc__.split("\n\n")[0],
                    epilog="Each command has --help.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cvlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTER:
        register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"cvlab: warning: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.showwarning = _one_line_warning
    main_process = is_main_process()  # torchrun: only rank 0 speaks
    if not main_process:
        warnings.simplefilter("ignore")
    try:
        with sigterm_as_interrupt():  # SIGTERM (a stopped instance, a scheduler) stops a command as Ctrl-C does
            return int(args.func(args) or 0)
    except UsageError as exc:
        if main_process:
            sys.stderr.write(f"cvlab: error: {exc}\n")
        return 2
    except Diverged as exc:
        sys.stderr.write(f"cvlab: error: {exc}\n")
        return Diverged.exit_code
    except Terminated:
        if main_process:
            sys.stderr.write("cvlab: stopped by SIGTERM\n")
        return Terminated.exit_code
    except KeyboardInterrupt:
        if main_process:
            sys.stderr.write("cvlab: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `python -m cvlab presets | head`: the reader has gone, nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        if main_process:  # every write cvlab makes is atomic: the file is whole or absent
            where = f" {exc.filename}" if exc.filename else ""
            sys.stderr.write(f"cvlab: error: cannot write{where} ({disk_error(exc)}); nothing was half-written; "
                             "make room or choose another place, then run the same command again\n")
        return 2
    except RuntimeError as exc:  # under torchrun: a collective failed because another process died
        reason = lost_peer(exc)
        if reason is None:
            raise
        sys.stderr.write(f"cvlab: error: {reason}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
