"""`cvlab evaluate`, `predict`, `export`: what a student does with a finished run."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..core.config import DEVICES
from .common import int_in

WEIGHTS_HELP = ("last: last.pt as the run evaluated it (its EMA when it kept one; reproduces metrics.json's final "
                "figures); best: best.pt, the epoch chosen by validation accuracy (runs with a validation split); "
                "ema: last.pt's weight EMA; raw: last.pt's own weights even when the run kept an EMA")


def add_weight_options(p: argparse.ArgumentParser) -> None:
    from ..experiments.analysis import WEIGHTS
    p.add_argument("run", metavar="RUN", help="a run directory (holds config.json and last.pt)")
    p.add_argument("--weights", choices=WEIGHTS, default="last", help=WEIGHTS_HELP + " (default: last)")
    p.add_argument("--data-root", metavar="DIR",
                   help="where the run's data set is, when it moved since training (default: the run's own)")


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


# ---------------------------------------------------------------------------- evaluate

def evaluation_record(ev, metrics: dict) -> dict:
    """The JSON that `evaluate --json` writes: figures, what made them, and the run's own record to compare."""
    pred, trained = ev.predictions, ev.trained
    recorded = (metrics.get("best") if trained.weights == "best" else metrics.get("final")) or {}
    return {"run": str(pred.run), "weights": trained.weights, "parameters": trained.parameters,
            "checkpoint": trained.checkpoint.name, "epoch": trained.epoch, "tta_flip": ev.tta_flip,
            "device": ev.device, "split": pred.split, "images": len(pred.fine), "synthetic": pred.synthetic,
            "test_loss": ev.loss, "test_acc": ev.top1, "test_top5": ev.top5,
            "recorded": {k: recorded.get(k) for k in ("test_loss", "test_acc", "test_top5") if k in recorded}}


def _figure(value, fmt) -> str:
    """A recorded figure; metrics.json holds null where a value was not finite (a diverged run)."""
    return fmt(value) if isinstance(value, (int, float)) and math.isfinite(value) else "not finite"


def _comparison(record: dict) -> str:
    """One line comparing the figures with the run's metrics.json."""
    recorded = record["recorded"]
    if not recorded:
        return "metrics.json holds no figures for these weights"
    same = all(_figure(record[k], repr) == _figure(v, repr) for k, v in recorded.items())
    which = "best" if record["weights"] == "best" else "final"
    parts = [f"test loss {_figure(recorded['test_loss'], '{:.4f}'.format)}" if "test_loss" in recorded else "",
             f"top-1 {_figure(recorded['test_acc'], _percent)}" if "test_acc" in recorded else "",
             f"top-5 {_figure(recorded['test_top5'], _percent)}" if "test_top5" in recorded else ""]
    verdict = "identical" if same else "different: another device, precision, data root or test-time flip?"
    return f"metrics.json {which}: {', '.join(p for p in parts if p)} ({verdict})"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..core.paths import check_output_file
    from ..core.runs import RunDir, strict_json
    from ..experiments.analysis import evaluate_run, per_superclass_accuracy

    json_path = check_output_file(args.json, args.force, "--json") if args.json not in (None, "-") else None
    metrics = RunDir(args.run).read_metrics()  # one line when it is corrupt, before the evaluation
    ev = evaluate_run(args.run, args.weights, data_root=args.data_root, device=args.device, tta_flip=args.tta)
    record = evaluation_record(ev, metrics)
    if args.by_superclass:
        record["superclasses"] = per_superclass_accuracy(ev.predictions).to_dict(orient="records")
    if args.json == "-":  # strict JSON: a non-finite figure (a diverged run's weights) is null
        print(json.dumps(strict_json(record), indent=2, ensure_ascii=False, allow_nan=False))
        return 0
    cfg = ev.trained.config
    data = "SYNTHETIC data" if record["synthetic"] else "CIFAR-100"
    print(f"run      {args.run}  ({cfg.preset}, {cfg.model}, {data})")
    print(f"weights  {record['checkpoint']} epoch {record['epoch']}, {record['parameters']} parameters "
          f"(--weights {record['weights']}); test-time flip {'on' if ev.tta_flip else 'off'}; {ev.device}")
    print(f"test     {record['images']:,} images: loss {ev.loss:.4f}, top-1 {_percent(ev.top1)}, "
          f"top-5 {_percent(ev.top5)}")
    print(_comparison(record))
    if metrics.get("status") == "diverged":
        print(f"note: this run diverged; {record['checkpoint']} holds its last good epoch ({record['epoch']})")
    if args.by_superclass:
        print()
        print(_superclass_table(record["superclasses"]))
    if json_path is not None:
        from ..core.runs import write_json
        write_json(json_path, record)
        print(f"wrote {json_path}")
    return 0


def _superclass_table(rows: list[dict]) -> str:
    width = max(len("superclass"), *(len(r["superclass"]) for r in rows))
    lines = [f"{'superclass':<{width}} {'images':>6} {'fine top-1':>10} {'superclass':>10}"]
    lines += [f"{r['superclass']:<{width}} {r['images']:>6} {_percent(r['fine_acc']):>10} "
              f"{_percent(r['superclass_acc']):>10}" for r in rows]
    return "\n".join(lines)


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test loss, top-1 and top-5 of a run's weights",
                       description="Re-evaluate a run's weights on its test set (the test subset its config chose).")
    add_weight_options(p)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each image and its mirror image (default: as the run did)")
    p.add_argument("--by-superclass", action="store_true",
                   help="also fine-class and superclass accuracy for each of the 20 superclasses")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-': print only the JSON)")
    p.add_argument("--force", action="store_true", help="replace an existing --json FILE")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------- predict

def cmd_predict(args: argparse.Namespace) -> int:
    from ..core.paths import check_output_file
    from ..experiments.predict import predict_files
    from ..report.plots import FIGURE_SUFFIXES

    grid = None if args.grid is None else check_output_file(args.grid, args.force, "--grid", ".png", FIGURE_SUFFIXES)
    result = predict_files(args.run, args.images, args.weights, args.device, args.data_root, top=args.top)
    if result.synthetic:
        print("note: this run was trained on SYNTHETIC data; its class names and probabilities mean nothing")
    for item in result.items:
        print(item.path)
        for rank, (name, prob) in enumerate(item.top, 1):
            print(f"  {rank}. {name:<20} {_percent(prob):>7}")
    if grid is not None:
        from ..report.plots import prediction_grid, save_figure
        captions = [f"{it.top[0][0]}\n{_percent(it.top[0][1])}" for it in result.items]
        fig = prediction_grid([it.image for it in result.items], captions, synthetic=result.synthetic,
                              title=f"Predictions of {Path(args.run).name} ({result.trained.weights} weights)",
                              subtitles=[it.path.name for it in result.items])
        print(f"wrote {save_figure(fig, grid)}")
    return 0


def register_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify PNG or JPEG files with a run's weights",
                       description="Classify image files: each is cropped to its central square, resized to "
                                   "32x32 RGB (Pillow BICUBIC) and normalized as the run's training images were.")
    add_weight_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files (any format Pillow reads)")
    p.add_argument("--top", type=int_in(1, 100), default=5, metavar="K",
                   help="classes shown per image, in [1, 100] (CIFAR-100 has 100; default 5)")
    p.add_argument("--grid", metavar="FILE", help="save a figure of the images with their top prediction "
                                                  "(.png, .pdf, .svg or .jpg; .png is added when FILE has none)")
    p.add_argument("--force", action="store_true", help="replace an existing --grid FILE")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace) -> int:
    from ..experiments.export import export_run

    result = export_run(args.run, args.out, args.weights, force=args.force, onnx=args.onnx,
                        data_root=args.data_root)
    w = result.payload["weights"]
    print(f"wrote {result.path}: {result.payload['build']['name']}, {w['parameters']} parameters from "
          f"{w['checkpoint']} epoch {w['epoch']}; load with torch.load(FILE, weights_only=True) "
          "(see README, 'After training')")
    if args.onnx:
        print(result.onnx_note)
    return 0


def register_export(sub) -> None:
    p = sub.add_parser("export", help="write a run's weights and what is needed to use them to one file",
                       description="Write one file with the weights, model name, class names, normalization and "
                                   "the run's config; it loads with torch.load(FILE, weights_only=True).")
    add_weight_options(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (e.g. resnet18.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE (and FILE.onnx)")
    p.add_argument("--onnx", action="store_true",
                   help="also write FILE with suffix .onnx (needs onnx and onnxscript; checked with onnxruntime "
                        "when installed)")
    p.set_defaults(func=cmd_export)


REGISTER = [register_evaluate, register_predict, register_export]
