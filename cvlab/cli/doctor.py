"""`cvlab doctor`: check this machine (versions, device, presets, data, resources) and self-test on it."""
from __future__ import annotations

import argparse


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..experiments.doctor import run_doctor

    report = run_doctor(args.device, args.data_root, selftest=not args.no_selftest)
    return 1 if report.failed else 0


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine and self-test training on its device (< 1 minute)",
                       description="Versions, the device and what it can do, what each preset gets there, the "
                                   "data root, free disk and memory; then a self-test on the device: a few "
                                   "training steps of both models with the fast preset's settings, a save/resume "
                                   "round trip, and evaluation against a CPU reference. Exit 0 when every check "
                                   "passes, 1 naming the failed ones.")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "npu", "mps"))
    p.add_argument("--data-root", metavar="DIR",
                   help="folder holding cifar-100-python/ or cifar-100-python.tar.gz (default: $CVLAB_DATA or ./data)")
    p.add_argument("--no-selftest", action="store_true", help="only the report, no training")
    p.set_defaults(func=cmd_doctor)
