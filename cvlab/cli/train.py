"""`cvlab train`, `presets`, `models`, `data`: the core commands."""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from ..core.errors import UsageError
from .common import add_data_options, non_negative_int, positive_int


# ---------------------------------------------------------------------------- train

def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that configure training runs (train, and later ablate)."""
    from ..core.config import PRESETS
    p.add_argument("--preset", default=None, help=f"start from a preset: {', '.join(PRESETS)} (default: handout)")
    p.add_argument("--config", metavar="FILE", help="start from a JSON/YAML config file instead of a preset")
    p.add_argument("--epochs", type=positive_int, metavar="N")
    p.add_argument("--batch-size", type=positive_int, metavar="N")
    p.add_argument("--lr", type=float, metavar="X", help="peak learning rate")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "npu", "mps"))
    p.add_argument("--subset", type=non_negative_int, metavar="N",
                   help="train on N images: the first N/100 of each class, original order (see --set subset_balanced=false)")
    p.add_argument("--seed", type=non_negative_int, metavar="N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, only the per-epoch lines")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field (see 'python -m cvlab presets --fields'); repeatable")
    add_data_options(p)


def config_from_args(args: argparse.Namespace):
    """Preset or config file, then the named options, then --set; validated."""
    from ..core.config import apply_overrides, load_config, make_config

    if args.config and args.preset:
        raise UsageError("give --preset or --config, not both")
    cfg = load_config(args.config) if args.config else make_config(args.preset or "handout")
    named = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
             "subset": args.subset, "seed": args.seed, "data_root": args.data_root}
    pairs = [f"{k}={v}" for k, v in named.items() if v is not None]
    if args.synthetic:
        pairs.append("synthetic=true")
    if args.no_progress:
        pairs.append("progress=false")
    return apply_overrides(cfg, pairs + list(args.set))


def cmd_train(args: argparse.Namespace) -> int:
    from ..core.engine import fit

    cfg = config_from_args(args)
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR, the run directory to continue")
    out = args.out or str(Path("runs") / f"{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = fit(cfg, out, resume=args.resume)
    print(f"run directory: {run_dir}")
    return 0


def register_train(sub) -> None:
    p = sub.add_parser("train", help="train one run and write its run directory",
                       description="Train one run. Without options: the handout's experiment, exactly.")
    add_run_options(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-s<seed>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=cmd_train)


# ---------------------------------------------------------------------------- presets, models

def cmd_presets(args: argparse.Namespace) -> int:
    from ..core.config import PRESETS, Config
    import dataclasses

    if args.fields:
        for f in dataclasses.fields(Config):
            print(f"{f.name:<18} {f.type:<6} default {f.default!r}")
        return 0
    width = max(len(n) for n in PRESETS)
    for name, (description, _) in PRESETS.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..core.models import MODELS, build_model, count_parameters

    for name, (_, description) in MODELS.items():
        print(f"{name:<18} {count_parameters(build_model(name)):>11,} params  {description}")
    return 0


def register_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the presets, one line each")
    p.add_argument("--fields", action="store_true", help="list every config field with its type and default")
    p.set_defaults(func=cmd_presets)
    from ..core.models import MODELS
    p = sub.add_parser("models", help=f"list the models: {', '.join(MODELS)}")
    p.set_defaults(func=cmd_models)


# ---------------------------------------------------------------------------- data

def cmd_data(args: argparse.Namespace) -> int:
    from ..core.config import Config
    from ..core.data import describe, download_archive, load_cifar100, locate, synthetic_root

    if args.synthetic:
        root = synthetic_root(Config.synthetic_train, Config.synthetic_test, seed=0)
    else:
        root = Config(data_root=args.data_root or "").resolved_data_root()
    if args.action == "download":
        found = locate(root)
        if found is not None:
            print(f"already present: {found[1]}")
            return 0
        print(f"downloaded: {download_archive(root)}")
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # md5 status is reported below
        data = load_cifar100(root, download=False, check_md5=not args.synthetic,
                             expected_sizes=None if args.synthetic else {"train": 50000, "test": 10000})
    info = describe(data)
    info["synthetic"] = bool(args.synthetic)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"source        {info['source']}{'  (SYNTHETIC)' if args.synthetic else ''}")
    print(f"train images  {info['n_train']:,}")
    print(f"test images   {info['n_test']:,}")
    print(f"classes       {info['fine_classes']} fine ({info['fine_names']} names), {info['coarse_classes']} coarse")
    print("train mean/std per channel (R, G, B): "
          + ", ".join(f"{m:.4f}/{s:.4f}" for m, s in info["train_mean_std"]))
    for name, status in info["md5"].items():
        note = "" if status != "differs" else "  (not the official file; structure checks passed)"
        print(f"md5 {name:<24} {status}{note}")
    return 0


def register_data(sub) -> None:
    p = sub.add_parser("data", help="download CIFAR-100 or check what is at the data root")
    p.add_argument("action", choices=("download", "check"))
    p.add_argument("--json", action="store_true", help="check: print the report as JSON")
    add_data_options(p)
    p.set_defaults(func=cmd_data)


