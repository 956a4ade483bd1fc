"""One dataclass for a run, the presets, validation, and load/save.

Every hyperparameter of a run lives in `Config`; presets are named sets of overrides on
top of its defaults; `--set key=value` on the command line goes through `apply_overrides`,
which checks the key exists and converts the value to the field's type.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import resolve_data_root

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "adamw", "sgd"),
    "optimizer_impl": ("auto", "fused", "foreach", "forloop"),
    "schedule": ("constant", "cosine", "onecycle"),
    "normalization": ("cifar100", "handout"),
    "device": ("auto", "cpu", "cuda", "npu", "mps"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "mix": ("none", "mixup", "cutmix", "mixup_cutmix"),
    "policy": ("none", "trivialaugment", "randaugment", "autoaugment"),
}


@dataclass
class Config:
    """Everything that defines a training run. Units are in the comments."""

    preset: str = "custom"              # name of the preset this config started from
    # --- model ---
    model: str = "handout_resnet18"     # a name from cvlab.models.MODELS
    num_classes: int = 100
    zero_init_last_bn: bool = False     # start each residual branch's last BN at gamma = 0, so every block starts as the identity
    dropout: float = 0.0                # dropout probability before the classifier (0 = none)
    # --- data ---
    data_root: str = ""                 # folder with cifar-100-python/ or the .tar.gz; "" -> $CVLAB_DATA, else the repository's data/
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
    policy: str = "none"                # torchvision policy on the uint8 batch: trivialaugment (wide), randaugment (2 ops,
                                        # magnitude 9), autoaugment (CIFAR-10 policy); applied after crop/flip
    policy_group: int = 1               # images that share one sampled policy op (1 = every image its own; larger is faster on GPUs)
    cutout: int = 0                     # side in pixels of one square per image filled with the mean colour (0 = off; 8 for CIFAR-100)
    mix: str = "none"                   # batch mixing into soft targets: mixup, cutmix, or mixup_cutmix (one of the two per batch)
    mix_alpha: float = 1.0              # mixing weight lambda ~ Beta(alpha, alpha)
    mix_prob: float = 1.0               # probability that a batch is mixed (0..1)
    val_size: int = 0                   # training images held out for validation: the last val_size/100 of each class (0 = none)
    # --- optimization ---
    epochs: int = 100
    batch_size: int = 1024              # images per training step
    eval_batch_size: int = 1024         # images per evaluation step (no gradients, so it can be larger)
    optimizer: str = "adam"
    lr: float = 1e-4                    # peak learning rate (after warmup)
    momentum: float = 0.9               # SGD momentum; Adam/AdamW beta1
    nesterov: bool = False              # SGD only
    weight_decay: float = 0.0           # L2 (SGD, Adam) or decoupled (AdamW) weight decay
    wd_exclude_norm_bias: bool = False  # no weight decay on BN weights and biases or on any bias (1-D parameters)
    schedule: str = "constant"          # LR shape after warmup; stepped every batch
    warmup_epochs: float = 0.0          # linear warmup from 0 to `lr`, in epochs (fractions allowed)
    label_smoothing: float = 0.0        # 0..1, passed to cross_entropy
    ema_decay: float = 0.0              # per-step decay of an exponential moving average of the weights, which is then
                                        # the model evaluated and checkpointed beside the raw one (0 = off; e.g. 0.999)
    tta_flip: bool = False              # evaluate on each image and its mirror image, averaging the logits
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
        return resolve_data_root(self.data_root)


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

# The improvement ladder: each rung is its parent plus one change. PARENT maps a derived preset to the
# preset it changes, which is what `cvlab ablate` compares it with.
LADDER: list[str] = ["handout"]
PARENT: dict[str, str] = {}


def _derive(name: str, parent: str, description: str, rung: bool = True, **changes: Any) -> None:
    """Register preset `name` = preset `parent` + `changes`; a rung is appended to LADDER."""
    PRESETS[name] = (f"= {parent} {description}", {**PRESETS[parent][1], **changes})
    PARENT[name] = parent
    if rung:
        LADDER.append(name)


_derive("+norm-shuffle", "handout", "+ CIFAR-100 per-channel normalization and a new shuffle every epoch",
        normalization="cifar100", shuffle=True)
_derive("+crop-flip", "+norm-shuffle", "+ random crop with 4-pixel zero padding and horizontal flip (batched on the device)",
        crop_padding=4, hflip=True)
_derive("+cifar-stem", "+crop-flip", "+ the CIFAR ResNet-18: padded 3x3 stem without max-pool (32x32 feature maps "
        "in stage 1), BN in the projection shortcuts", model="cifar_resnet18")
_derive("+sgd-onecycle", "+cifar-stem", "+ SGD with Nesterov momentum 0.9 and weight decay 5e-4, batch 256 with lr 0.2 "
        "(0.1 per 128 images), linear warmup for 15% of the epochs then linear decay to 0",
        optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=256, lr=0.2,
        schedule="onecycle", warmup_epochs=15.0)
_derive("+no-bn-decay", "+sgd-onecycle", "+ no weight decay on BN parameters and biases", wd_exclude_norm_bias=True)
_derive("+label-smoothing", "+no-bn-decay", "+ label smoothing 0.1", label_smoothing=0.1)
_derive("+zero-init", "+label-smoothing", "+ zero-initialized last BN in every residual block", zero_init_last_bn=True)
_derive("+cutmix", "+zero-init", "+ CutMix (alpha 1) on half of the batches", mix="cutmix", mix_alpha=1.0, mix_prob=0.5)
_derive("+trivialaugment", "+cutmix", "+ TrivialAugmentWide on every training image (uint8, before CutMix)",
        policy="trivialaugment")
_derive("+ema", "+trivialaugment", "+ evaluate an exponential moving average of the weights (decay 0.999 per step)",
        ema_decay=0.999)
_derive("+tta-flip", "+ema", "+ test-time flip averaging (logits of each image and its mirror)", tta_flip=True)
# Alternatives to a rung, for side-by-side comparison; not on the ladder.
_derive("alt-cutout", "+zero-init", "+ Cutout 8x8 (DeVries & Taylor 2017), an alternative to +cutmix", rung=False, cutout=8)
_derive("alt-mixup", "+zero-init", "+ Mixup (alpha 1) on half of the batches, an alternative to +cutmix", rung=False,
        mix="mixup", mix_alpha=1.0, mix_prob=0.5)
_derive("alt-randaugment", "+cutmix", "+ RandAugment (2 ops, magnitude 9), an alternative to +trivialaugment", rung=False,
        policy="randaugment")
_derive("alt-autoaugment", "+cutmix", "+ AutoAugment's CIFAR-10 policy, an alternative to +trivialaugment", rung=False,
        policy="autoaugment")
_derive("alt-dropout", "+zero-init", "+ dropout 0.2 before the classifier", rung=False, dropout=0.2)
# The two end points. Their accuracy figures in the docs are TARGETS until measured on the full data set.
_derive("fast", "+tta-flip", "without CutMix and TrivialAugment (too strong for 30 epochs), batch 512 with lr 0.4, "
        "30 epochs (warmup 4.5), bf16 autocast where supported, channels_last; target >= 75% top-1 on an H100",
        rung=False, mix="none", policy="none", batch_size=512, lr=0.4, epochs=30, warmup_epochs=4.5,
        precision="auto", channels_last=True)
_derive("best", "+tta-flip", "for 200 epochs (warmup 30), bf16 autocast where supported, channels_last, policy ops "
        "shared by groups of 16 images; target >= 80% top-1, mean of 3 seeds", rung=False,
        epochs=200, warmup_epochs=30.0, precision="auto", channels_last=True, policy_group=16)
LADDER += ["fast", "best"]


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool | None:
    """True/False for the usual spellings (true/yes/on/1, false/no/off/0), None for anything else."""
    low = text.strip().lower()
    return True if low in TRUE_WORDS else False if low in FALSE_WORDS else None


def parse_value(key: str, text: str) -> Any:
    """Convert the string `text` to the type of Config field `key`."""
    types = _field_types()
    if key not in types:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    kind = types[key]
    if kind is bool:
        value = parse_bool(text)
        if value is None:
            raise ConfigError(f"{key} must be true or false, got {text!r}")
        return value
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
    if cfg.policy_group <= 0:
        raise ConfigError(f"policy_group must be positive, got {cfg.policy_group}")
    for key in ("subset", "test_subset", "crop_padding", "weight_decay", "warmup_epochs", "seed", "cutout",
                "val_size"):
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
    if cfg.cutout > 32:
        raise ConfigError(f"cutout must be at most 32 pixels (the image side), got {cfg.cutout}")
    if not cfg.mix_alpha > 0:
        raise ConfigError(f"mix_alpha must be positive, got {cfg.mix_alpha}")
    for key in ("mix_prob",):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {getattr(cfg, key)}")
    for key in ("dropout", "ema_decay"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.val_size and cfg.val_size < cfg.num_classes:
        raise ConfigError(f"a class-balanced validation split needs at least {cfg.num_classes} images, "
                          f"got val_size={cfg.val_size}")
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
