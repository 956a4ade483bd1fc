"""Look inside a finished run: re-evaluate its checkpoint and return per-image predictions, then
accuracy per superclass and the most confused class pairs.

The predictions come from the run's own `last.pt` (the EMA weights when the run kept an EMA,
since those are what it was evaluated on), on the same test subset or validation split its
config selects, with its test-time flip setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import device as devices
from ..core.config import from_dict
from ..core.data import TensorLoader, load_for_config
from ..core.engine import EvalStep
from ..core.errors import RunDirError
from ..core.models import build_model
from ..core.runs import CHECKPOINT, CONFIG


@dataclass
class Predictions:
    """Logits of one evaluated split, with the true labels and the class names."""

    logits: torch.Tensor      # float32 (N, 100), on the CPU
    fine: torch.Tensor        # int64 (N,) true fine labels
    coarse: torch.Tensor      # int64 (N,) true superclass labels
    fine_names: list[str]
    coarse_names: list[str]
    split: str                # "test" or "val"
    weights: str              # "ema" or "model"
    synthetic: bool
    run: Path

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return (self.predicted == self.fine).float().mean().item()

    def fine_to_coarse(self) -> torch.Tensor:
        """Superclass of each fine class (CIFAR-100 nests 5 fine classes in each of 20 superclasses)."""
        mapping = torch.full((len(self.fine_names),), -1, dtype=torch.long)
        mapping[self.fine] = self.coarse
        return mapping


def load_trained_model(run_dir: str | Path, device: torch.device, weights: str = "auto"):
    """(model in eval mode, config, which weights) from a run directory's last.pt.

    `weights`: "auto" = the EMA when the run has one (what its history reports), else "ema" or "model".
    """
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / CONFIG).exists():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}; train it first with 'python -m cvlab train --out {run_dir}'")
    state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
    cfg = from_dict(state["config"])
    has_ema = bool(state.get("ema"))
    if weights == "auto":
        weights = "ema" if has_ema else "model"
    if weights == "ema" and not has_ema:
        raise RunDirError(f"{run_dir} kept no weight EMA (ema_decay = 0)")
    model = build_model(cfg.model, cfg.num_classes, dropout=cfg.dropout).to(device)
    model.load_state_dict(state["ema"]["module"] if weights == "ema" else state["model"])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg, weights


def predict_run(run_dir: str | Path, split: str = "test", data_root: str | None = None, device: str = "auto",
                weights: str = "auto") -> Predictions:
    """Evaluate a run's checkpoint on its test set (or validation split) and return the logits.

    `data_root` overrides where the data is read from (e.g. when the run was made on another machine).
    """
    if split not in ("test", "val"):
        raise RunDirError(f"split must be 'test' or 'val', got {split!r}")
    dev = devices.resolve_device(device)
    model, cfg, used = load_trained_model(run_dir, dev, weights)
    if data_root is not None and not cfg.synthetic:
        cfg = from_dict({**cfg.to_dict(), "data_root": data_root})
    data = load_for_config(cfg)
    chosen = data.test if split == "test" else data.val
    if chosen is None:
        raise RunDirError(f"{run_dir} was trained without a validation split (val_size = 0)")
    loader = TensorLoader(chosen, cfg.eval_batch_size, dev, cfg.normalization, channels_last=cfg.channels_last)
    step = EvalStep(model, dev, devices.resolve_precision(cfg.precision, dev), cfg.tta_flip)
    with torch.inference_mode():
        logits = torch.cat([step.logits(x).cpu() for x, _ in loader])
    return Predictions(logits, chosen.fine.clone(), chosen.coarse.clone(), data.fine_names, data.coarse_names,
                       split, used, data.synthetic, Path(run_dir))


def per_superclass_accuracy(pred: Predictions):
    """One row per superclass: images, fine-class accuracy on them, and superclass accuracy
    (the predicted fine class lies in the right superclass), sorted from worst to best."""
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
    return pd.DataFrame(rows).sort_values("fine_acc").reset_index(drop=True)


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
