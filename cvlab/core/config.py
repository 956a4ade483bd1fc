"""One dataclass for a run, its field metadata, the presets, one typed override path, load/save.

Every hyperparameter of a run is a `Config` field declared with `option(...)`: its default, its help
text (with the unit) and, where they apply, its choices and its range live on that one line. The
command line is generated from these (`cvlab.cli.common.add_config_options`), `presets --fields`
prints them, and `validate` checks them.

Every way of changing a config goes through `with_overrides(cfg, values)`: typed values from
command-line options, `--set key=value` (text, parsed by `parse_value`), a `--config` file, a preset,
an ablation budget, and `report -p` for notebook parameters named after a field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError
from .paths import resolve_data_root

# The accelerators in the order `device=auto` tries them (cvlab.core.device); cpu is always there.
ACCELERATORS: tuple[str, ...] = ("cuda", "npu", "mps")
DEVICES: tuple[str, ...] = ("auto", "cpu", *ACCELERATORS)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
OPTIMIZER_IMPLS: tuple[str, ...] = ("auto", "default", "fused", "foreach", "forloop")


@dataclass(frozen=True)
class Range:
    """Allowed numeric values: low/high bounds (None = unbounded), each open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """'positive', 'not negative' or an interval such as 'in [0, 1)' or 'in [1, 10000]'."""
        if self.high is None:
            if self.low == 0:
                return "positive" if self.low_open else "not negative"
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FRACTION, FRACTION_BELOW_1 = Range(0, 1), Range(0, 1, high_open=True)
# Every numeric field has an upper limit that a real run could use, so that a typo ('--epochs 10000000000')
# is one line and exit 2, not an endless run or an allocation that takes the machine down. The image counts
# follow the official data set: 50,000 training and 10,000 test images.
MAX_TRAIN_IMAGES, MAX_TEST_IMAGES = 50_000, 10_000
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1  # numpy's global seed is 32-bit
TRAIN_IMAGES, TEST_IMAGES = Range(0, MAX_TRAIN_IMAGES), Range(0, MAX_TEST_IMAGES)  # 0 = all
BATCH = Range(1, MAX_TRAIN_IMAGES)


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, range: Range | None = None,
           metavar: str | None = None, section: str | None = None) -> Any:
    """A Config field: its default, help text (with the unit), its allowed values when limited, and the
    section it opens (model, data, ...; the fields after it belong to it until the next one opens)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range, "metavar": metavar,
                                            "section": section})


@dataclass
class Config:
    """Everything that defines a training run: one `option(default, help, ...)` per field."""

    preset: str = option("custom", "name of the preset this config started from", section="run")
    model: str = option("handout_resnet18", "model name, see 'python -m cvlab models'", metavar="NAME",
                        section="model")
    num_classes: int = option(100, "number of output classes", range=Range(1, 1000))
    zero_init_last_bn: bool = option(False, "start each residual branch's last BN at gamma = 0, so every block "
                                            "starts as the identity")
    dropout: float = option(0.0, "dropout probability before the classifier (0 = none)", range=FRACTION_BELOW_1)
    data_root: str = option("", "folder holding cifar-100-python/ or cifar-100-python.tar.gz "
                                "(empty: $CVLAB_DATA, else the repository's data/)", metavar="DIR", section="data")
    download: bool = option(True, "fetch the official archive when the data root has none")
    subset: int = option(0, "train on N images: the first N/100 of each class, original order "
                            "(see subset_balanced; 0 = all 50,000)", range=TRAIN_IMAGES)
    subset_balanced: bool = option(True, "true: N/100 images per class, original order kept; false: the first N")
    test_subset: int = option(0, "test on N images, class-balanced like subset (0 = all 10,000)", range=TEST_IMAGES)
    synthetic: bool = option(False, "generated images in the official format instead of CIFAR-100 (demos, tests)")
    synthetic_train: int = option(5000, "images in the synthetic training set", range=Range(1, MAX_TRAIN_IMAGES))
    synthetic_test: int = option(1000, "images in the synthetic test set", range=Range(1, MAX_TEST_IMAGES))
    normalization: str = option("cifar100", "cifar100: per-channel mean/std; handout: MNIST's (0.1307,), (0.3081,)",
                                choices=("cifar100", "handout"))
    shuffle: bool = option(True, "reshuffle the training set every epoch (the handout does not)")
    crop_padding: int = option(0, "random crop after zero padding by this many pixels (0 = off)", range=Range(0, 16))
    hflip: bool = option(False, "random horizontal flip with probability 1/2")
    policy: str = option("none", "torchvision policy on the uint8 batch, after crop/flip: trivialaugment (wide), "
                                 "randaugment (2 ops, magnitude 9), autoaugment (CIFAR-10 policy)",
                         choices=("none", "trivialaugment", "randaugment", "autoaugment"))
    policy_group: int = option(0, "how policy ops are applied: 0 = each image draws its op, images with the same op "
                                  "share its magnitude per batch, one call per op (fast everywhere); N = torchvision's "
                                  "policy called per chunk of N images (1 = per image, exactly torchvision)",
                               range=Range(0, MAX_TRAIN_IMAGES))
    cutout: int = option(0, "side in pixels of one square per image filled with the mean colour (0 = off; 8 for "
                            "CIFAR-100)", range=Range(0, 32))
    mix: str = option("none", "batch mixing into soft targets: mixup, cutmix, or mixup_cutmix (one of the two per "
                              "batch)", choices=("none", "mixup", "cutmix", "mixup_cutmix"))
    mix_alpha: float = option(1.0, "mixing weight lambda ~ Beta(alpha, alpha)", range=Range(0, 100, low_open=True))
    mix_prob: float = option(1.0, "probability that a batch is mixed", range=FRACTION)
    val_size: int = option(0, "training images held out for validation: the last val_size/100 of each class "
                              "(0 = none)", range=TRAIN_IMAGES)
    epochs: int = option(100, "passes over the training set", range=Range(1, MAX_EPOCHS), section="optimization")
    batch_size: int = option(1024, "images per training step", range=BATCH)
    eval_batch_size: int = option(1024, "images per evaluation step (no gradients, so it can be larger)",
                                  range=BATCH)
    optimizer: str = option("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = option(1e-4, "peak learning rate (after warmup)", range=Range(0, 1000, low_open=True))
    momentum: float = option(0.9, "SGD momentum; Adam/AdamW beta1", range=FRACTION_BELOW_1)
    nesterov: bool = option(False, "Nesterov momentum (SGD only)")
    weight_decay: float = option(0.0, "L2 (SGD, Adam) or decoupled (AdamW) weight decay", range=FRACTION)
    wd_exclude_norm_bias: bool = option(False, "no weight decay on BN weights and biases or on any bias "
                                               "(1-D parameters)")
    schedule: str = option("constant", "LR shape after warmup, stepped every batch: constant, cosine to 0, or "
                                       "onecycle (linear to 0)", choices=("constant", "cosine", "onecycle"))
    warmup: float = option(0.0, "fraction of the run's steps spent in linear warmup from 0 to lr (0 = none; "
                                "0.15 = the first 15%)", range=FRACTION)
    label_smoothing: float = option(0.0, "label smoothing passed to cross_entropy", range=FRACTION_BELOW_1)
    ema_decay: float = option(0.0, "per-step decay of an exponential moving average of the weights, which is then "
                                   "evaluated and checkpointed beside the raw model (0 = off; e.g. 0.999)",
                              range=FRACTION_BELOW_1)
    tta_flip: bool = option(False, "evaluate on each image and its mirror image, averaging the logits")
    device: str = option("auto", "where to run; auto picks " + " > ".join((*ACCELERATORS, "cpu")), choices=DEVICES,
                         section="execution")
    precision: str = option("fp32", "autocast dtype; auto = bf16 where supported, else fp16 on GPU, fp32 on CPU",
                            choices=PRECISIONS)
    channels_last: bool = option(False, "NHWC memory format (faster convolutions on tensor cores)")
    compile: bool = option(False, "torch.compile the model")
    compile_warmup: bool = option(True, "compiled models: run the train/eval steps once per batch shape before "
                                        "epoch 1, then restore model and optimizer, so compile time stays out of "
                                        "epoch timings")
    optimizer_impl: str = option("auto", "optimizer kernels: fused, foreach (multi-tensor), forloop, or default (torch's "
                                         "own choice, as a plain torch.optim.Adam gets); auto = fused on CUDA where "
                                         "torch has it", choices=OPTIMIZER_IMPLS)
    cudnn_benchmark: bool = option(True, "CUDA only: let cuDNN time its convolution algorithms for each input shape")
    sync_bn: bool = option(False, "data-parallel runs (torchrun): BatchNorm statistics over the global batch "
                                  "(SyncBatchNorm) instead of each process's share; no effect in one process")
    seed: int = option(0, "random seed for weights, data order and augmentation", range=Range(0, MAX_SEED))
    log_every: int = option(10, "steps between live-loss updates of the progress bar (each one syncs the device)",
                            range=Range(1, 100_000))
    progress: bool = option(True, "per-epoch progress bar")
    tensorboard: bool = option(False, "also write per-epoch scalars (losses, accuracies, lr, images/s) under RUN/tb "
                                      "for TensorBoard (needs the tensorboard package); history.csv stays the record")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_data_root(self) -> Path:
        return resolve_data_root(self.data_root)


@dataclass(frozen=True)
class FieldSpec:
    """What `option(...)` declared for one Config field, with its Python type."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    range: Range | None
    metavar: str | None
    section: str


def _field_specs() -> dict[str, FieldSpec]:
    hints, specs, section = typing.get_type_hints(Config), {}, ""
    for f in fields(Config):
        section = f.metadata["section"] or section
        specs[f.name] = FieldSpec(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata["choices"],
                                  f.metadata["range"], f.metadata["metavar"], section)
    return specs


FIELDS: dict[str, FieldSpec] = _field_specs()
# Keys of older config files and what they became: one line naming the new key, no silent translation.
RENAMED = {"warmup_epochs": "warmup (a share of the run's steps, e.g. warmup_epochs 15 of 100 epochs is warmup 0.15)"}
# Presets that were renamed or split, and the preset that trains the same config today.
RENAMED_PRESETS = {"+sgd-onecycle": "+onecycle", "+norm-shuffle": "+cifar-norm"}

# A preset: a one-line description and the fields it changes from the defaults above.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "handout": (
        "the handout exactly: its ResNet-18, batch 1024, Adam lr 1e-4, 100 epochs, "
        "no shuffling, no augmentation, MNIST normalization, fp32, torch's default Adam kernels, no cuDNN autotuning",
        dict(model="handout_resnet18", batch_size=1024, optimizer="adam", lr=1e-4,
             epochs=100, shuffle=False, normalization="handout", precision="fp32",
             channels_last=False, compile=False, optimizer_impl="default", cudnn_benchmark=False),
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


# One idea per rung. A rung changes one field, or the fields of one idea that cannot be set apart (IDEA_GROUPS):
# the standard CIFAR augmentation (crop and flip), an optimizer with the rate it is quoted at (Adam's 1e-4 means
# nothing to SGD), a schedule with its warm-up, a mixing method with its parameters. A model change is one
# architectural idea that changes several things inside the model: ARCHITECTURAL says what, and the ladder puts
# it last, where it costs least (on a CPU the CIFAR ResNet-18 takes ~3.5x the handout network's time per image).
IDEA_GROUPS: tuple[frozenset, ...] = (frozenset({"crop_padding", "hflip"}),
                                     frozenset({"optimizer", "momentum", "nesterov", "lr"}),
                                     frozenset({"schedule", "warmup"}), frozenset({"mix", "mix_alpha", "mix_prob"}))
ARCHITECTURAL: dict[str, str] = {
    "+cifar-stem": "the CIFAR ResNet-18 as one architectural change: a padded 3x3 stem without max-pool (32x32 "
                   "feature maps in stage 1 instead of 15x15), BN in the 1x1 projection shortcuts, bias-free "
                   "convolutions before BN",
}
_derive("+shuffle", "handout", "+ a new random order of the training images every epoch (the handout's DataLoader "
        "never shuffles)", shuffle=True)
_derive("+cifar-norm", "+shuffle", "+ CIFAR-100's own per-channel mean and std for normalization (the handout uses "
        "MNIST's single-channel constants)", normalization="cifar100")
_derive("+crop-flip", "+cifar-norm", "+ the standard CIFAR augmentation: random crop with 4-pixel zero padding and "
        "horizontal flip (batched on the device)", crop_padding=4, hflip=True)
_derive("+batch-256", "+crop-flip", "+ batch 256 instead of 1024 (4x the steps per epoch; Adam and its lr 1e-4 "
        "unchanged)", batch_size=256)
_derive("+sgd", "+batch-256", "+ SGD with Nesterov momentum 0.9 at its usual rate, 0.2 for batch 256 (0.1 per 128 "
        "images, He et al. 2016), instead of Adam lr 1e-4; constant rate, no weight decay",
        optimizer="sgd", momentum=0.9, nesterov=True, lr=0.2)
_derive("+weight-decay", "+sgd", "+ L2 weight decay 5e-4 on every parameter", weight_decay=5e-4)
_derive("+onecycle", "+weight-decay", "+ a one-cycle-style schedule: linear warmup for the first 15% of the steps, "
        "then linear decay to 0 (instead of the constant rate; momentum stays 0.9)", schedule="onecycle", warmup=0.15)
_derive("+no-bn-decay", "+onecycle", "+ no weight decay on BN parameters and biases", wd_exclude_norm_bias=True)
_derive("+label-smoothing", "+no-bn-decay", "+ label smoothing 0.1", label_smoothing=0.1)
_derive("+zero-init", "+label-smoothing", "+ zero-initialized last BN in every residual block", zero_init_last_bn=True)
_derive("+cutmix", "+zero-init", "+ CutMix (alpha 1) on half of the batches", mix="cutmix", mix_alpha=1.0, mix_prob=0.5)
_derive("+trivialaugment", "+cutmix", "+ TrivialAugmentWide on every training image (uint8, before CutMix)",
        policy="trivialaugment")
_derive("+ema", "+trivialaugment", "+ evaluate an exponential moving average of the weights (decay 0.999 per step)",
        ema_decay=0.999)
_derive("+tta-flip", "+ema", "+ test-time flip averaging (logits of each image and its mirror)", tta_flip=True)
_derive("+cifar-stem", "+tta-flip", "+ " + ARCHITECTURAL["+cifar-stem"], model="cifar_resnet18")
# Alternatives to a rung, for side-by-side comparison; not on the ladder.
_derive("alt-cutout", "+zero-init", "+ Cutout 8x8 (DeVries & Taylor 2017), an alternative to +cutmix", rung=False, cutout=8)
_derive("alt-mixup", "+zero-init", "+ Mixup (alpha 1) on half of the batches, an alternative to +cutmix", rung=False,
        mix="mixup", mix_alpha=1.0, mix_prob=0.5)
_derive("alt-randaugment", "+cutmix", "+ RandAugment (2 ops, magnitude 9), an alternative to +trivialaugment", rung=False,
        policy="randaugment")
_derive("alt-autoaugment", "+cutmix", "+ AutoAugment's CIFAR-10 policy, an alternative to +trivialaugment", rung=False,
        policy="autoaugment")
_derive("alt-dropout", "+zero-init", "+ dropout 0.2 before the classifier", rung=False, dropout=0.2)
# Two recipes made of the rungs, not rungs themselves. Their accuracy figures are TARGETS until measured on the
# full data set.
_derive("fast", "+cifar-stem", "without CutMix and TrivialAugment (too strong for 30 epochs), batch 512 with lr 0.4, "
        "30 epochs, bf16 autocast where supported, channels_last; target >= 75% top-1 on an H100",
        rung=False, mix="none", policy="none", batch_size=512, lr=0.4, epochs=30,
        precision="auto", channels_last=True, optimizer_impl="auto", cudnn_benchmark=True)
_derive("best", "+cifar-stem", "for 200 epochs, bf16 autocast where supported, channels_last; "
        "target >= 80% top-1, mean of 3 seeds", rung=False,
        epochs=200, precision="auto", channels_last=True, optimizer_impl="auto", cudnn_benchmark=True)
RECIPES = ("fast", "best")


def rung_is_one_idea(name: str) -> bool:
    """The rung changes one field, one IDEA_GROUPS group, or the model as a declared ARCHITECTURAL change."""
    changed = set(preset_changes(name))
    if "model" in changed:
        return changed == {"model"} and name in ARCHITECTURAL
    return len(changed) == 1 or any(changed <= group for group in IDEA_GROUPS)


def preset_changes(name: str, against: str | None = None) -> dict[str, Any]:
    """The fields preset `name` sets differently from `against` (default: its parent), with its values:
    what the rung changes, read from the configs themselves so the description cannot drift from them."""
    against = against or PARENT.get(name)
    if against is None:
        return {}
    mine, theirs = PRESETS[name][1], PRESETS[against][1]
    return {k: v for k, v in mine.items() if k != "preset" and theirs.get(k, FIELDS[k].default) != v}


def changes_text(changes: dict[str, Any]) -> str:
    """{'lr': 0.2, 'nesterov': True} -> 'lr=0.2, nesterov=true'."""
    show = lambda v: str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{k}={show(v)}" for k, v in changes.items())


# ---------------------------------------------------------------------------- text and typed values

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def parse_bool(text: str) -> bool | None:
    """True/False for the usual spellings (true/yes/on/1, false/no/off/0), None for anything else."""
    low = text.strip().lower()
    return True if low in TRUE_WORDS else False if low in FALSE_WORDS else None


def parse_text(text: str, kind: type, what: str) -> Any:
    """`text` as a bool, int, float (finite) or str; ConfigError naming `what` otherwise.

    The one text-to-value rule of the project: `--set`, generated options, ablation pairs and `report -p`."""
    if kind is bool:
        value = parse_bool(text)
        if value is None:
            raise ConfigError(f"{what} must be true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                              f"got {text!r}")
        return value
    if kind is str:
        return text
    try:
        value = kind(text.strip())
    except ValueError:
        raise ConfigError(f"{what} must be {KIND_NAMES[kind]}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {text!r}")
    return value


def _unknown_key(key: str) -> ConfigError:
    if key in RENAMED:
        return ConfigError(f"config key {key!r} was renamed {RENAMED[key]}; edit the config file or --set")
    return ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(FIELDS))}")


def check_value(key: str, value: Any) -> Any:
    """`value` for field `key`, of the field's type (text is parsed, an int is taken for a float),
    within its choices and range; ConfigError naming the field otherwise. Cross-field rules: `validate`."""
    spec = FIELDS.get(key)
    if spec is None:
        raise _unknown_key(key)
    if isinstance(value, str) and spec.type is not str:
        value = parse_text(value, spec.type, key)
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {KIND_NAMES[spec.type]}, got {value!r}")
    if spec.type is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{key} must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.range and value not in spec.range:
        raise ConfigError(f"{key} must be {spec.range.text()}, got {value!r}")
    return value


def parse_value(key: str, text: str) -> Any:
    """The text `text` as a value of Config field `key` (type, choices and range checked)."""
    if key not in FIELDS:
        raise _unknown_key(key)
    return check_value(key, parse_text(text, FIELDS[key].type, key))


def parse_pairs(pairs: Iterable[str], what: str = "--set") -> dict[str, Any]:
    """["key=value", ...] -> {key: typed value}, each checked by `parse_value`; later pairs win."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{what} expects key=value, got {pair!r}")
        key, text = (s.strip() for s in pair.split("=", 1))
        values[key] = parse_value(key, text)
    return values


# ---------------------------------------------------------------------------- building configs

def with_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with `values` (field -> value, typed or text) applied, checked and validated.

    The one way into a Config: presets, config files, command-line options, `--set`, ablation budgets."""
    checked = {key: check_value(key, value) for key, value in values.items()}
    new = dataclasses.replace(cfg, **checked)
    validate(new)
    return new


def make_config(preset: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the preset's fields, then `overrides`; validated."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset in RENAMED_PRESETS:
            raise ConfigError(f"preset {preset!r} was split so that each rung is one change; "
                              f"{RENAMED_PRESETS[preset]!r} trains the same config (see 'python -m cvlab presets')")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; run 'python -m cvlab presets' to list them")
        values.update(PRESETS[preset][1], preset=preset)
    values.update(overrides)
    return with_overrides(Config(), values)


def from_dict(values: dict[str, Any]) -> Config:
    """The defaults with `values` applied (a saved config.json, a config file)."""
    return with_overrides(Config(), values)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first impossible value: each field's type, choices, range and
    finiteness (see `option`), the model name, then the rules that involve two fields."""
    from .models import MODELS  # local import: models does not depend on config

    for key in FIELDS:
        check_value(key, getattr(cfg, key))
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose from {', '.join(MODELS)}")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        raise ConfigError("nesterov needs optimizer=sgd with momentum > 0")
    if cfg.subset and cfg.subset_balanced and cfg.subset < cfg.num_classes:
        raise ConfigError(f"a class-balanced subset needs at least {cfg.num_classes} images, got {cfg.subset}")
    if cfg.val_size and cfg.val_size < cfg.num_classes:
        raise ConfigError(f"a class-balanced validation split needs at least {cfg.num_classes} images, "
                          f"got val_size={cfg.val_size}")


# ---------------------------------------------------------------------------- files

def load_config(path: str | Path) -> Config:
    """Read a config from JSON or YAML (by extension): the defaults with the file's keys applied."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # yaml and json raise different error types
        first = " ".join(str(exc).split())  # yaml's messages span several lines
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {first}") from None
    if values is None:  # an empty file would silently be the defaults
        raise ConfigError(f"config file {path} is empty; give the config keys to set, or use --preset")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys")
    return from_dict(values)
