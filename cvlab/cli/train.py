"""`cvlab train`, `presets`, `models`, `data`: the core commands."""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from ..core.errors import UsageError
from .common import add_config_options, add_data_options, add_set_option, explicit_overrides, path_text


# ---------------------------------------------------------------------------- train

# The fields whose options README lists, first in `train --help`; the other Config fields follow
# in the order of the dataclass.
MAIN_FIELDS = ("epochs", "batch_size", "lr", "device", "subset", "seed", "data_root", "synthetic", "progress")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--preset, --config, one option per Config field (generated from its metadata), and --set."""
    from ..core.config import FIELDS, PRESETS, make_config

    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"start from a preset: {', '.join(PRESETS)} (default: handout; see 'python -m cvlab presets')")
    p.add_argument("--config", metavar="FILE", help="start from a JSON/YAML config file instead of a preset")
    handout = make_config("handout")
    main = p.add_argument_group("main options (these and the config options below override the preset or "
                                "--config file; defaults shown: the handout preset's)")
    add_config_options(main, MAIN_FIELDS, handout)
    others = [s for s in FIELDS.values() if s.name not in MAIN_FIELDS and s.name != "preset"]
    for section in dict.fromkeys(s.section for s in others):
        group = p.add_argument_group(f"{section} options")
        add_config_options(group, [s.name for s in others if s.section == section], handout)
    add_set_option(p)


def config_from_args(args: argparse.Namespace):
    """Preset or config file, then the config fields given on the command line (`explicit_overrides`:
    options, then --set); validated."""
    from ..core.config import load_config, make_config, with_overrides

    if args.config and args.preset:
        raise UsageError("give --preset or --config, not both")
    cfg = load_config(args.config) if args.config else make_config(args.preset or "handout")
    return with_overrides(cfg, explicit_overrides(args))


def cmd_train(args: argparse.Namespace) -> int:
    from ..core import distributed
    from ..core.engine import fit

    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out DIR, the run directory to continue")
        if args.config or args.preset:
            raise UsageError("--resume continues the run with its own config.json; drop --preset/--config")
        from ..core.runs import RunDir
        # The run's config.json with the options given that a resumption may change (RunDir.prepare, which fit
        # repeats): fit joins torchrun's group on its device, the time estimate takes its epochs and sizes.
        out = args.out
        cfg = RunDir(out).prepare(explicit_overrides(args), resume=True)
    else:
        cfg = config_from_args(args)
        out = args.out or str(Path("runs") / f"{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = fit(cfg, out, resume=args.resume, on_step=_step_estimate(cfg))
    distributed.leave()  # after a failure the process just exits: torchrun ends the others
    if distributed.is_main_process():
        print(f"run directory: {run_dir}")
    return 0


def _step_estimate(cfg):
    """The one-line time estimate `train` prints after its first steps (shared with `report`'s plan)."""
    from tqdm.auto import tqdm

    from ..report.plan import StepEstimate, split_sizes

    return StepEstimate(cfg.epochs, cfg.batch_size, split_sizes(cfg)[1], log=tqdm.write)  # not through the bar


def register_train(sub) -> None:
    p = sub.add_parser("train", help="train one run and write its run directory",
                       description="Train one run. Without options: the handout's experiment, exactly.")
    add_run_options(p)
    p.add_argument("--out", metavar="DIR", type=path_text, help="run directory (default: runs/<preset>-s<seed>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its own config.json; options given with it may change only "
                        "where it runs, or extend a constant-schedule run (--epochs N)")
    p.set_defaults(func=cmd_train)


# ---------------------------------------------------------------------------- presets, models

def cmd_presets(args: argparse.Namespace) -> int:
    from ..core.config import FIELDS, PRESETS, changes_text, preset_changes

    if args.fields:
        for spec in FIELDS.values():
            if spec.name == next(s for s in FIELDS.values() if s.section == spec.section).name:
                print(f"# {spec.section}")
            allowed = "|".join(spec.choices) if spec.choices else spec.range.text() if spec.range else ""
            print(f"{spec.name:<20} {spec.type.__name__:<5} default {spec.default!r:<20} {allowed:<14} {spec.help}")
        return 0
    width = max(len(n) for n in PRESETS)
    for name, (description, _) in PRESETS.items():
        changes = changes_text(preset_changes(name))
        print(f"{name:<{width}}  {description}" + (f" [changes: {changes}]" if changes else ""))
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
    from ..core.data import SPLIT_SIZES, describe, download_archive, load_cifar100, locate, synthetic_root

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
                             expected_sizes=None if args.synthetic else SPLIT_SIZES)
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


