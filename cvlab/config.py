"""One dataclass for a run, the presets, validation, and load/save.

Every hyperparameter of a run lives in `Config`; presets are named sets of overrides on
top of its defaults; `--set key=value` on the command line goes through `apply_overrides`,
which checks the key exists and converts the value to the field's type.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "adamw", "sgd"),
    "optimizer_impl": ("auto", "fused", "foreach", "forloop"),
    "schedule": ("constant", "cosine", "onecycle"),
    "normalization": ("cifar100", "handout"),
    "device": ("auto", "cpu", "cuda", "npu", "mps"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}


@dataclass
class Config:
    """Everything that defines a training run. Units are in the comments."""

    preset: str = "custom"              # name of the preset this config started from
    # --- model ---
    model: str = "handout_resnet18"     # a name from cvlab.models.MODELS
    num_classes: int = 100
    # --- data ---
    data_root: str = ""                 # folder with cifar-100-python/ or the .tar.gz; "" -> $CVLAB_DATA or ./data
    download: bool = True               # fetch the official archive when the data root has none
    subset: int = 0                     # first N training images (0 = all 50,000)
    subset_balanced: bool = True        # True: N/100 per class, original order kept; False: the first N
    test_subset: int = 0                # first N test images, class-balanced like `subset` (0 = all 10,000)
    synthetic: bool = False             # generated images in the official format instead of CIFAR-100
    synthetic_train: int = 5000         # images in the synthetic training set
    synthetic_test: int = 1000          # images in the synthetic test set
    normalization: str = "cifar100"     # "cifar100": per-channel mean/std; "handout": MNIST's (0.1307,), (0.3081,)
    shuffle: bool = True                # reshuffle the training set every epoch (the handout does not)
    crop_padding: int = 0               # random crop after zero padding by this many pixels (0 = off)
    hflip: bool = False                 # random horizontal flip with probability 1/2
    # --- optimization ---
    epochs: int = 100
    batch_size: int = 1024              # images per training step
    eval_batch_size: int = 1024         # images per evaluation step (no gradients, so it can be larger)
    optimizer: str = "adam"
    lr: float = 1e-4                    # peak learning rate (after warmup)
    momentum: float = 0.9               # SGD momentum; Adam/AdamW beta1
    nesterov: bool = False              # SGD only
    weight_decay: float = 0.0           # L2 (SGD, Adam) or decoupled (AdamW) weight decay
    schedule: str = "constant"          # LR shape after warmup; stepped every batch
    warmup_epochs: float = 0.0          # linear warmup from 0 to `lr`, in epochs (fractions allowed)
    label_smoothing: float = 0.0        # 0..1, passed to cross_entropy
    # --- execution ---
    device: str = "auto"                # auto picks cuda > npu > mps > cpu
    precision: str = "fp32"             # autocast dtype; "auto" = bf16 where supported, else fp16 on GPU, fp32 on CPU
    channels_last: bool = False         # NHWC memory format (faster convolutions on tensor cores)
    compile: bool = False               # torch.compile the model
    compile_warmup: bool = True         # compiled models: run the train/eval steps once per batch shape before epoch 1,
                                        # then restore model and optimizer, so compile time stays out of epoch timings
    optimizer_impl: str = "auto"        # "fused" kernels, "foreach" (multi-tensor) or "forloop"; auto = fused on CUDA
    cudnn_benchmark: bool = True        # CUDA only: let cuDNN time its convolution algorithms for each input shape
    seed: int = 0
    log_every: int = 10                 # steps between live-loss updates of the progress bar (each one syncs the device)
    progress: bool = True               # per-epoch progress bar

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_data_root(self) -> Path:
        return Path(self.data_root or os.environ.get("CVLAB_DATA") or "./data")


# A preset: a one-line description and the fields it changes from the defaults above.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "handout": (
        "the handout exactly: its ResNet-18, batch 1024, Adam lr 1e-4, 100 epochs, "
        "no shuffling, no augmentation, MNIST normalization, fp32",
        dict(model="handout_resnet18", batch_size=1024, optimizer="adam", lr=1e-4,
             epochs=100, shuffle=False, normalization="handout", precision="fp32",
             channels_last=False, compile=False),
    ),
}


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def parse_value(key: str, text: str) -> Any:
    """Convert the string `text` to the type of Config field `key`."""
    types = _field_types()
    if key not in types:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    kind = types[key]
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key} must be {kind.__name__}, got {text!r}") from None


def _check_type(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def make_config(preset: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the preset's fields, then `overrides`; validated."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; run 'python -m cvlab presets' to list them")
        values.update(PRESETS[preset][1], preset=preset)
    values.update(overrides)
    return from_dict(values)


def from_dict(values: dict[str, Any]) -> Config:
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}")
    checked = {k: _check_type(k, v, types[k]) for k, v in values.items()}
    cfg = Config(**checked)
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    """Apply `key=value` strings (from `--set`) to a copy of `cfg`."""
    values = cfg.to_dict()
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        values[key.strip()] = parse_value(key.strip(), text)
    return from_dict(values)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first impossible value."""
    from .models import MODELS  # local import: models does not depend on config

    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose from {', '.join(MODELS)}")
    positive = ("epochs", "batch_size", "eval_batch_size", "num_classes", "log_every",
                "synthetic_train", "synthetic_test")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("subset", "test_subset", "crop_padding", "weight_decay", "warmup_epochs", "seed"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) exceeds epochs ({cfg.epochs})")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        raise ConfigError("nesterov needs optimizer=sgd with momentum > 0")
    if cfg.subset and cfg.subset_balanced and cfg.subset < cfg.num_classes:
        raise ConfigError(f"a class-balanced subset needs at least {cfg.num_classes} images, got {cfg.subset}")
    if cfg.crop_padding > 16:
        raise ConfigError(f"crop_padding must be at most 16 pixels, got {cfg.crop_padding}")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_config(path: str | Path) -> Config:
    """Read a config from JSON or YAML (by extension)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as exc:  # yaml and json raise different error types
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys")
    return from_dict(values)
