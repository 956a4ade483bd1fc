"""`cvlab bench`: options, validation and printing around `cvlab.experiments.bench`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..core import device as devices
from ..core.config import DEVICES, FALSE_WORDS, OPTIMIZER_IMPLS, PRECISIONS, TRUE_WORDS, parse_bool
from ..core.errors import UsageError
from ..core.models import MODELS
from ..experiments import bench
from ..experiments.bench import PATHS, Settings, format_table, run_bench
from ..core.config import MAX_SEED, MAX_TRAIN_IMAGES
from .common import int_in


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if not items or bad:
        raise UsageError(f"{what} must be a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return list(dict.fromkeys(items))


def _flags(text: str, what: str) -> list[bool]:
    """A comma-separated list of booleans, each spelled as config.parse_bool accepts (yes/no, true/false, ...)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    values = [parse_bool(t) for t in items]
    if not items or None in values:
        raise UsageError(f"{what} must be a comma-separated list of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}; "
                         f"got {text!r}")
    return list(dict.fromkeys(values))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate every option before any work starts (bad values -> UsageError, exit 2)."""
    device = devices.resolve_device(args.device)
    accelerator = device.type != "cpu"
    precisions = [devices.resolve_precision(p, device)
                  for p in _list(args.precision, PRECISIONS, "--precision")]
    if "bf16" in precisions and not devices.bf16_supported(device):
        raise UsageError(f"bf16 is not supported on {devices.device_name(device)}; use --precision fp32 or fp16")
    batch = args.batch_size or (1024 if accelerator else 128)
    s = Settings(device=device, models=_list(args.models, tuple(MODELS), "--models"),
                 paths=_list(args.paths, PATHS, "--paths"), batch_size=batch,
                 eval_batch_size=args.eval_batch_size or 2 * batch,
                 steps=args.steps or (20 if accelerator else 3), windows=args.windows or (5 if accelerator else 3),
                 warmup=args.warmup if args.warmup is not None else (5 if accelerator else 1),
                 precisions=list(dict.fromkeys(precisions)), channels_last=_flags(args.channels_last, "--channels-last"),
                 compile=_flags(args.compile, "--compile"),
                 optimizer_impl=_list(args.optimizer_impl, OPTIMIZER_IMPLS, "--optimizer-impl"),
                 augment=args.augment, seed=args.seed)
    if args.json:
        target = Path(args.json)
        if target.is_dir() or not target.resolve().parent.is_dir():
            raise UsageError(f"--json {args.json}: not a file in an existing folder")
    return s


def cmd_bench(args: argparse.Namespace) -> int:
    if args.show:
        try:
            report = json.loads(Path(args.show).read_text(encoding="utf-8"))
            text = format_table(report, markdown=args.markdown)
            command = report["command"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--show {args.show}: not a readable cvlab bench report ({exc!r})") from None
        print(text + ("\n" if args.markdown else "") + f"\ncommand: {command}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings_from_args(args)

    def save(report: dict) -> None:  # after every row, so a run stopped early keeps the rows it measured
        from ..core.runs import write_json
        write_json(Path(args.json), report)

    report = run_bench(s, on_row=save if args.json else None)
    print(format_table(report))
    print(f"command: {report['command']}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time training/evaluation throughput: the handout's loop vs the cvlab path",
                       description=bench.__doc__.split("\n\n")[0] + " Synthetic in-memory data; no data set needed.")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)} (default: both)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated: handout, cvlab (default: both)")
    p.add_argument("--batch-size", type=int_in(1, MAX_TRAIN_IMAGES), metavar="N",
                   help=f"training batch, in [1, {MAX_TRAIN_IMAGES}] (default 1024 on GPUs, 128 on CPU)")
    p.add_argument("--eval-batch-size", type=int_in(1, MAX_TRAIN_IMAGES), metavar="N",
                   help=f"cvlab evaluation batch, in [1, {MAX_TRAIN_IMAGES}] (default 2x batch; the handout loop "
                        "evaluates at --batch-size)")
    p.add_argument("--steps", type=int_in(1, 10_000), metavar="N",
                   help="training steps per timed window, in [1, 10000] (default 20 GPU, 3 CPU)")
    p.add_argument("--windows", type=int_in(1, 1000), metavar="N",
                   help="timed windows, in [1, 1000]; the median is reported (default 5 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int_in(0, 10_000), metavar="N",
                   help="untimed steps first, in [0, 10000] (default 5 GPU, 1 CPU)")
    p.add_argument("--precision", default="fp32,auto", metavar="LIST",
                   help="cvlab path: fp32, bf16, fp16, auto (bf16 where supported, fp16 on older GPUs, fp32 on CPU); "
                        "comma-separated (default fp32,auto). The handout loop is always fp32")
    p.add_argument("--channels-last", default="no", nargs="?", const="yes", metavar="LIST",
                   help="cvlab path: NHWC memory format: yes, no or no,yes (default no)")
    p.add_argument("--compile", default="no", nargs="?", const="yes", metavar="LIST",
                   help="cvlab path: torch.compile (warm-up not timed): yes, no or no,yes (default no)")
    p.add_argument("--optimizer-impl", default="auto", metavar="LIST",
                   help="cvlab path: auto, default (torch's choice), fused, foreach, forloop; comma-separated "
                        "(default auto)")
    p.add_argument("--augment", action="store_true",
                   help="cvlab path: shuffle + random crop (padding 4) + flip on the device, as the improved recipes do")
    p.add_argument("--threads", type=int_in(1, 1024), metavar="N",
                   help="torch CPU threads, in [1, 1024] (default: torch's choice)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, metavar="N", help=f"random seed, in [0, {MAX_SEED}] (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON (fields: docs/performance.md)")
    p.add_argument("--show", metavar="FILE", help="print the table of a saved JSON report instead of measuring")
    p.add_argument("--markdown", action="store_true", help="with --show: a Markdown table")
    p.set_defaults(func=cmd_bench)
