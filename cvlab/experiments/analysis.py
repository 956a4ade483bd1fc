"""Look inside a trained run: load its weights (the one place that turns a run directory into a model),
re-evaluate them with per-image predictions, then accuracy per superclass and the most confused pairs.

Which weights (`WEIGHTS`):
  last  last.pt, the weights the run evaluated every epoch: its EMA when it kept one, else the model.
        Re-evaluated on the same device, they give metrics.json's final test figures.
  best  best.pt, the epoch chosen by validation accuracy (only runs with a validation split have one).
  ema   last.pt's weight EMA (only runs with ema_decay > 0 keep one).
  raw   last.pt's trained weights themselves, even when the run evaluated an EMA.

Predictions are made on the test subset (or validation split) the run's config selects, with its
test-time flip setting unless told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import device as devices
from ..core.config import Config, from_dict
from ..core.data import Split, load_for_config
from ..core.loader import TensorLoader
from ..core.engine import EvalStep, evaluate
from ..core.errors import RunDirError, UsageError
from ..core.models import build_model, state_dict_mismatch
from ..core.runs import BEST as BEST_CHECKPOINT, CHECKPOINT, CONFIG, RunDir, load_checkpoint  # noqa: F401

WEIGHTS = ("last", "best", "ema", "raw")


@dataclass
class Predictions:
    """Logits of one evaluated split, with the true labels and the class names."""

    logits: torch.Tensor      # float32 (N, 100), on the CPU
    fine: torch.Tensor        # int64 (N,) true fine labels
    coarse: torch.Tensor      # int64 (N,) true superclass labels
    fine_names: list[str]
    coarse_names: list[str]
    split: str                # "test" or "val"
    weights: str              # which parameters made them: "ema" or "model"
    synthetic: bool
    run: Path
    images: torch.Tensor | None = None  # uint8 (N, 3, 32, 32), the images themselves (for figures)
    class_superclass: torch.Tensor | None = None  # int64 (100,) superclass of each fine class, from all splits

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return (self.predicted == self.fine).float().mean().item()

    def fine_to_coarse(self) -> torch.Tensor:
        """Superclass of each fine class (CIFAR-100 nests 5 fine classes in each of 20 superclasses);
        -1 for a class seen in no split."""
        if self.class_superclass is not None:
            return self.class_superclass
        mapping = torch.full((len(self.fine_names),), -1, dtype=torch.long)
        mapping[self.fine] = self.coarse
        return mapping


@dataclass
class TrainedModel:
    """A model rebuilt from a run directory, in eval mode on its device."""

    model: nn.Module
    config: Config
    weights: str       # the choice made: one of WEIGHTS
    parameters: str    # which tensors were loaded: "ema" or "model"
    epoch: int         # the epoch after which they were saved
    checkpoint: Path


def _checkpoint_for(run_dir: Path, weights: str) -> Path:
    if weights not in WEIGHTS:
        raise RunDirError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if not (run_dir / CONFIG).exists() or not (run_dir / CHECKPOINT).exists():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}; train it first with 'python -m cvlab train --out {run_dir}'")
    if weights != "best":
        return run_dir / CHECKPOINT
    if not (run_dir / BEST_CHECKPOINT).exists():
        if _config_value(run_dir, "val_size", 0):
            raise RunDirError(f"{run_dir} has no {BEST_CHECKPOINT}: it was trained by a cvlab that did not keep the "
                              "best epoch's weights yet; use --weights last")
        raise RunDirError(f"{run_dir} has no {BEST_CHECKPOINT}: a best epoch is chosen only by validation accuracy, "
                          "and this run had no validation split (train with --set val_size=5000); use --weights last")
    return run_dir / BEST_CHECKPOINT


def _config_value(run_dir: Path, key: str, default):
    return RunDir(run_dir).read_config().get(key, default)


def load_trained_model(run_dir: str | Path, device: torch.device | str = "cpu", weights: str = "last") -> TrainedModel:
    """Rebuild the model of a run directory with the chosen `weights` (see WEIGHTS), in eval mode on `device`."""
    run_dir = Path(run_dir)
    path = _checkpoint_for(run_dir, weights)
    state = load_checkpoint(path, "cpu")  # through the CPU whatever `device`: load_state_dict places the tensors
    cfg = _checkpoint_config(state, path)
    _check_same_model(run_dir, cfg, path)
    has_ema = bool(state.get("ema"))
    if weights == "ema" and not has_ema:
        raise RunDirError(f"{run_dir} kept no weight EMA (ema_decay = 0); use --weights last")
    parameters = "ema" if has_ema and weights != "raw" else "model"
    model = build_model(cfg.model, cfg.num_classes, dropout=cfg.dropout).to(device)
    weights_state = (state["ema"] or {}).get("module") if parameters == "ema" else state["model"]
    mismatch = state_dict_mismatch(model, weights_state)
    if mismatch:
        raise RunDirError(f"{path} does not fit the {cfg.model} its own config names ({mismatch}); restore the "
                          "run's own checkpoint")
    model.load_state_dict(weights_state)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return TrainedModel(model.eval(), cfg, weights, parameters, int(state.get("epoch", 0)), path)


def _checkpoint_config(state: dict, path: Path) -> Config:
    """The config a checkpoint was saved with; one line when it has none or an invalid one."""
    if not isinstance(state.get("config"), dict):
        raise RunDirError(f"{path} holds no config; it is not a checkpoint cvlab wrote")
    try:
        return from_dict(state["config"])
    except UsageError as exc:
        raise RunDirError(f"{path} holds an invalid config ({exc})") from None


def _check_same_model(run_dir: Path, cfg: Config, path: Path) -> None:
    """Refuse (one line) a checkpoint saved for another network than the run's config.json names."""
    saved = RunDir(run_dir).read_config()
    differ = [f"{k} {getattr(cfg, k)!r} (config.json: {saved[k]!r})" for k in ("model", "num_classes")
              if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise RunDirError(f"{path} was saved by another run: its config names {', '.join(differ)}; restore the "
                          "run's own checkpoint")


def with_data_root(cfg: Config, data_root: str | None) -> Config:
    """The run's config reading its data from `data_root` (e.g. a run made on another machine)."""
    if data_root is None or cfg.synthetic:
        return cfg
    return from_dict({**cfg.to_dict(), "data_root": data_root})


def run_logits(trained: TrainedModel, split: Split, device: torch.device, tta_flip: bool) -> tuple[torch.Tensor, dict]:
    """CPU float32 logits of `split` and the (loss, top-1, top-5) over it, by `engine.evaluate` with the run's
    batches, normalization and precision: the same weights on the same device give the figures the run logged,
    to the last bit.
    """
    cfg = trained.config
    loader = TensorLoader(split, cfg.eval_batch_size, device, cfg.normalization, channels_last=cfg.channels_last)
    step = EvalStep(trained.model, device, devices.resolve_precision(cfg.precision, device), tta_flip)
    result = evaluate(step, loader, keep_logits=True)
    return result["logits"], {k: result[k] for k in ("loss", "acc", "top5")}


@dataclass
class Evaluation:
    """What `evaluate_run` measured: figures, predictions, and what produced them."""

    loss: float
    top1: float
    top5: float
    predictions: Predictions
    trained: TrainedModel
    tta_flip: bool
    device: str
    extra: dict = field(default_factory=dict)


def evaluate_run(run_dir: str | Path, weights: str = "last", split: str = "test", data_root: str | None = None,
                 device: str = "auto", tta_flip: bool | None = None) -> Evaluation:
    """Evaluate a run's weights on its test set (or validation split): loss, top-1, top-5 and the logits.

    `tta_flip` None = the run's own setting (what its history reports). `data_root` overrides where the
    data is read from.
    """
    if split not in ("test", "val"):
        raise RunDirError(f"split must be 'test' or 'val', got {split!r}")
    dev = devices.resolve_device(device)
    trained = load_trained_model(run_dir, dev, weights)
    cfg = with_data_root(trained.config, data_root)
    data = load_for_config(cfg)
    chosen = data.test if split == "test" else data.val
    if chosen is None:
        raise RunDirError(f"{run_dir} was trained without a validation split (val_size = 0)")
    flip = cfg.tta_flip if tta_flip is None else tta_flip
    logits, figures = run_logits(trained, chosen, dev, flip)
    pred = Predictions(logits, chosen.fine.clone(), chosen.coarse.clone(), data.fine_names, data.coarse_names,
                       split, trained.parameters, data.synthetic, Path(run_dir), chosen.images.clone(),
                       class_superclass(data))
    return Evaluation(figures["loss"], figures["acc"], figures["top5"], pred, trained, flip,
                      devices.device_name(dev))


def predict_run(run_dir: str | Path, split: str = "test", data_root: str | None = None, device: str = "auto",
                weights: str = "last") -> Predictions:
    """Per-image predictions of a run's weights on its test set (or validation split), with the images."""
    return evaluate_run(run_dir, weights, split, data_root, device).predictions


def class_superclass(data) -> torch.Tensor:
    """(num fine classes,) superclass of each fine class as the data set's labels give it (-1 if unseen)."""
    mapping = torch.full((len(data.fine_names),), -1, dtype=torch.long)
    for split in (data.train, data.val, data.test):
        if split is not None:
            mapping[split.fine] = split.coarse
    return mapping


def superclass_confusion(pred: Predictions) -> torch.Tensor:
    """(20, 20) image counts: row = true superclass, column = superclass of the predicted fine class."""
    n = len(pred.coarse_names)
    predicted_coarse = pred.fine_to_coarse()[pred.predicted]
    known = predicted_coarse >= 0
    flat = pred.coarse[known] * n + predicted_coarse[known]
    return torch.bincount(flat, minlength=n * n).view(n, n)


def per_superclass_accuracy(pred: Predictions):
    """One row per superclass: images, fine-class accuracy on them, and superclass accuracy
    (the predicted fine class lies in the right superclass), sorted from worst to best; ties by name."""
    import pandas as pd

    predicted = pred.predicted
    predicted_coarse = pred.fine_to_coarse()[predicted]
    rows = []
    for c, name in enumerate(pred.coarse_names):
        mask = pred.coarse == c
        n = int(mask.sum())
        if n == 0:
            continue
        rows.append({"superclass": name, "images": n,
                     "fine_acc": (predicted[mask] == pred.fine[mask]).float().mean().item(),
                     "superclass_acc": (predicted_coarse[mask] == c).float().mean().item()})
    return pd.DataFrame(rows).sort_values(["fine_acc", "superclass"], kind="stable").reset_index(drop=True)


def confused_pairs(pred: Predictions, top: int = 10):
    """The `top` most frequent (true class -> predicted class) mistakes, with their share of the
    true class's images and whether both classes share a superclass."""
    import pandas as pd

    n = len(pred.fine_names)
    counts = torch.bincount(pred.fine * n + pred.predicted, minlength=n * n).view(n, n)
    per_class = counts.sum(dim=1)
    counts.fill_diagonal_(0)
    values, flat = counts.flatten().topk(min(top, n * n))
    coarse_of = pred.fine_to_coarse()
    rows = []
    for count, index in zip(values.tolist(), flat.tolist()):
        if count == 0:
            break
        true, guess = divmod(index, n)
        rows.append({"true": pred.fine_names[true], "predicted": pred.fine_names[guess], "count": count,
                     "share_of_true": count / max(1, int(per_class[true])),
                     "same_superclass": bool(coarse_of[true] == coarse_of[guess] and coarse_of[true] >= 0)})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true", "same_superclass"])
