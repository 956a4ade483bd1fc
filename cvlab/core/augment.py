"""Batched augmentations on uint8 image tensors (B, 3, H, W), run on the training device,
and batch mixing (Mixup, CutMix) on the normalized float batch.

Each uint8 augmentation takes the batch and a torch.Generator on the batch's device and returns
a new batch of the same shape and dtype; a seeded generator makes the result reproducible.
Each mixing function takes the float batch, its integer labels and a CPU generator and returns
the mixed batch with soft targets (B, num_classes) whose rows sum to 1.
`build_augment(cfg)` and `build_mix(cfg)` compose what a config switches on.

No host-device synchronization per batch (it would stall a GPU once per step): random draws for
the device happen on the device with the device generator, constants are built once per device,
and values the host needs (policy seeds, mixing weights and boxes) come from CPU generators.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # one step: (uint8 batch, device generator)
# What a loader calls (`compose` makes it): (batch, device generator, host generator or None).
BatchAugment = Callable[[torch.Tensor, torch.Generator, "torch.Generator | None"], torch.Tensor]
# (float batch, labels, CPU generator, device generator or None) -> (batch, soft targets)
Mix = Callable[[torch.Tensor, torch.Tensor, torch.Generator, "torch.Generator | None"],
               "tuple[torch.Tensor, torch.Tensor]"]

# The CIFAR-100 mean colour in 0..255: what Cutout and the policies' geometric ops fill with, so that
# a filled pixel is about 0 after normalization (DeVries & Taylor fill zeros after normalizing).
MEAN_FILL = (129, 124, 112)


# ---------------------------------------------------------------------------- uint8 augmentations

def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by `padding` pixels, then crop back to H x W at a random offset
    per image (the standard CIFAR "crop 32, padding 4")."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability `p`."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator,
           fill: tuple[int, ...] = MEAN_FILL) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): fill one size x size square per image with `fill`. The
    square's centre is uniform over the image, so it may be partly outside (as in the paper)."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)  # (B,H,W)
    return torch.where(inside[:, None], fill_colour(tuple(fill), x.dtype, x.device), x)


@functools.lru_cache(maxsize=16)
def fill_colour(fill: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The fill colour as a (1, C, 1, 1) tensor on `device`, built once per (fill, dtype, device): a
    host-to-device copy per batch would wait for the device."""
    return torch.tensor(fill, dtype=dtype, device=device)[None, :, None, None]  # sync-ok: once per device


def make_policy(name: str, fill: tuple[int, ...] = MEAN_FILL):
    """The torchvision (v2) augmentation policy `name`: trivialaugment (TrivialAugmentWide,
    Muller & Hutter 2021), randaugment (Cubuk et al. 2020, 2 ops at magnitude 9) or autoaugment
    (Cubuk et al. 2019, the CIFAR-10 policy)."""
    from torchvision.transforms import v2

    fill_list = list(fill)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(fill=fill_list)
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9, fill=fill_list)
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=fill_list)
    raise ValueError(f"unknown policy {name!r}")


def apply_policy(x: torch.Tensor, policy: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
                 group: int = 0) -> torch.Tensor:
    """Apply a torchvision policy to a uint8 batch, its draws from `generator` (a CPU generator: the loader's
    host generator), so the result depends on `generator` only and no global or CUDA RNG is touched.

    `group` 0 (the default): batched by op. Every image draws its own op (TrivialAugment, RandAugment) or
    sub-policy and its apply-coin (AutoAugment) as torchvision does; the images that drew the same op in a
    batch share one magnitude and sign, drawn per batch. Each distinct op is applied once, to all its images
    together, so a batch costs at most (ops in the policy) x (ops per image) calls instead of one per image,
    and one host-to-device copy (the grouping order) per op stage. `group` N >= 1: torchvision's own policy
    object called on chunks of N consecutive images (op and magnitude shared by the chunk; 1 = per image)."""
    if group >= 1:
        seed = host_seed(generator)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every CUDA generator too
            return torch.cat([policy(chunk) for chunk in x.split(group)])
    for stage in policy_stages(policy, x.shape[0], generator):
        x = _apply_stage(x, policy, stage, generator)
    return x


def policy_stages(policy, n: int, generator: torch.Generator) -> list[list]:
    """Per op stage, each of the n images' op or None (no op), drawn from the CPU `generator`: an op is
    (transform id, magnitude bins, bin index or None for a random bin per batch),
    with torchvision's probabilities: TrivialAugmentWide one uniform op (random bin of 31), RandAugment
    num_ops uniform ops (bin `magnitude`), AutoAugment one uniform sub-policy whose two ops each apply with
    their probability (their own bins)."""
    from torchvision.transforms import v2

    def uniform(k: int) -> list[int]:
        return torch.randint(0, k, (n,), generator=generator).tolist()  # sync-ok: a CPU generator

    if isinstance(policy, v2.AutoAugment):
        chosen = [policy._policies[i] for i in uniform(len(policy._policies))]
        stages = []
        for position in range(2):
            coins = torch.rand(n, generator=generator).tolist()  # sync-ok: a CPU generator
            stages.append([(sub[position][0], 10, sub[position][2]) if coin <= sub[position][1] else None
                           for sub, coin in zip(chosen, coins)])
        return stages
    names = list(policy._AUGMENTATION_SPACE)
    if isinstance(policy, v2.RandAugment):
        return [[(names[i], policy.num_magnitude_bins, policy.magnitude) for i in uniform(len(names))]
                for _ in range(policy.num_ops)]
    if isinstance(policy, v2.TrivialAugmentWide):
        return [[(names[i], policy.num_magnitude_bins, None) for i in uniform(len(names))]]
    raise ValueError(f"batched application does not know {type(policy).__name__}; use policy_group >= 1")


def _apply_stage(x: torch.Tensor, policy, stage: list, generator: torch.Generator) -> torch.Tensor:
    """One op stage: the images grouped by op (one gather by a permutation copied to the device once), each
    group transformed in one call with one magnitude, then put back in their places."""
    groups: dict = {}
    for i, op in enumerate(stage):
        if op is not None and op[0] != "Identity":
            groups.setdefault(op, []).append(i)
    if not groups:
        return x
    ops = sorted(groups)  # a fixed order: the draws below do not depend on dict order
    order = [i for op in ops for i in groups[op]]
    index = torch.tensor(order, device=x.device)  # sync-ok: one host-to-device copy per op stage
    picked = x[index]
    h, w = x.shape[-2:]
    parts, start = [], 0
    for op in ops:
        size = len(groups[op])
        parts.append(policy._apply_image_or_video_transform(
            picked[start:start + size], op[0], _magnitude(policy, op, h, w, generator),
            interpolation=policy.interpolation, fill=policy._fill))
        start += size
    out = x.clone()
    out[index] = torch.cat(parts)
    return out


def _magnitude(policy, op: tuple, h: int, w: int, generator: torch.Generator) -> float:
    """The op's magnitude as torchvision computes it (its bin, or a random bin, and a random sign for the
    signed ops), drawn once for the group from the CPU `generator` (read with .tolist(): no scalar reads)."""
    name, bins, level = op
    table, signed = _magnitudes(type(policy), name, bins, h, w)
    if table is None:
        return 0.0
    bin_draw, sign_draw = torch.rand(2, generator=generator).tolist()  # sync-ok: a CPU generator
    magnitude = table[min(int(bin_draw * bins), bins - 1) if level is None else level]
    return -magnitude if signed and sign_draw <= 0.5 else magnitude


@functools.lru_cache(maxsize=256)
def _magnitudes(policy_type: type, name: str, bins: int, h: int, w: int) -> tuple[tuple[float, ...] | None, bool]:
    """torchvision's magnitude table of an op (as floats, made once) and whether it takes a random sign."""
    magnitudes_fn, signed = policy_type._AUGMENTATION_SPACE[name]
    magnitudes = magnitudes_fn(bins, h, w)
    return (None if magnitudes is None else tuple(magnitudes.tolist())), signed


def host_seed(generator: torch.Generator) -> int:
    """A seed for the host, drawn from `generator`: a CPU generator gives it without waiting for any device
    (a device generator would cost a host-device sync)."""
    return torch.randint(0, 2**62, (1,), device=generator.device, generator=generator).tolist()[0]  # sync-ok: CPU


def host_uniform(generator: torch.Generator, n: int) -> list[float]:
    """n uniform numbers in [0, 1) for the host, from a CPU generator (no device involved)."""
    return torch.rand(n, generator=generator).tolist()  # sync-ok: a CPU generator


class PolicyStep:
    """A torchvision policy as a `compose` step: its per-batch seed comes from the host (CPU) generator."""

    def __init__(self, policy: Callable[[torch.Tensor], torch.Tensor], group: int = 0) -> None:
        self.policy, self.group = policy, group

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 host_generator: torch.Generator | None = None) -> torch.Tensor:
        return apply_policy(x, self.policy, host_generator if host_generator is not None else generator, self.group)


def compose(*steps: Augment | PolicyStep) -> BatchAugment:
    """The steps in order, as one `(x, generator, host_generator=None)` callable: every step draws from
    `generator` (on the batch's device); a PolicyStep takes its seeds from `host_generator` (CPU), or
    from `generator` when none is given (on a CPU batch, the same thing)."""
    def apply(x: torch.Tensor, generator: torch.Generator, host_generator: torch.Generator | None = None) -> torch.Tensor:
        for step in steps:
            x = step(x, generator, host_generator) if isinstance(step, PolicyStep) else step(x, generator)
        return x
    return apply


def build_augment(cfg) -> BatchAugment | None:
    """The uint8 batch augmentation a config asks for (crop, flip, policy, cutout, in that
    order), or None when it asks for none."""
    steps: list[Augment] = []
    if cfg.crop_padding > 0:
        steps.append(lambda x, g: random_crop(x, cfg.crop_padding, g))
    if cfg.hflip:
        steps.append(random_hflip)
    if cfg.policy != "none":
        steps.append(PolicyStep(make_policy(cfg.policy), cfg.policy_group))
    if cfg.cutout > 0:
        steps.append(lambda x, g: cutout(x, cfg.cutout, g))
    return compose(*steps) if steps else None


# ---------------------------------------------------------------------------- batch mixing

def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha), drawn reproducibly from a CPU torch generator."""
    return float(np.random.default_rng(host_seed(generator)).beta(alpha, alpha))


def partner_order(n: int, device: torch.device, generator: torch.Generator,
                  device_generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of a batch of n on `device`: drawn there from `device_generator` when the batch
    is not on the CPU (no host-to-device copy per batch), else from the CPU `generator`."""
    if device_generator is not None and device.type != "cpu":
        return torch.randperm(n, device=device, generator=device_generator)
    return torch.randperm(n, generator=generator).to(device)  # sync-ok: a no-op for CPU batches


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot rows by a scatter: F.one_hot reads the labels' min and max back to the host (a sync per
    batch) on devices other than CUDA."""
    return torch.zeros(labels.shape[0], num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)


def mix_pairs(x: torch.Tensor, targets: torch.Tensor, lam: float,
              perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup's blend with a given weight and partner order: lam x + (1 - lam) x[perm], same for targets."""
    return x * lam + x[perm] * (1 - lam), targets * lam + targets[perm] * (1 - lam)


def paste_box(x: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int],
              perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix's paste with a given box (top, bottom, left, right) and partner order; the partner's
    target weight is the box's exact share of the pixels."""
    top, bottom, left, right = box
    h, w = x.shape[-2:]
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (h * w)
    return mixed, targets * kept + targets[perm] * (1 - kept)


def mixup(x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
          perm: torch.Tensor | None = None, device_generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): lam ~ Beta(alpha, alpha), one per batch; each image is blended with
    a partner from a random permutation of the batch (or `perm`; see `partner_order`), and so are the soft targets."""
    lam = sample_beta(alpha, generator)
    if perm is None:
        perm = partner_order(x.shape[0], x.device, generator, device_generator)
    return mix_pairs(x, targets, lam, perm)


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box (top, bottom, left, right) of area about (1 - lam) h w, centred uniformly, clipped to the image."""
    ratio = (1.0 - lam) ** 0.5
    ch, cw = int(h * ratio), int(w * ratio)
    row, col = torch.rand(2, generator=generator).tolist()  # sync-ok: a CPU generator, no device involved
    cy, cx = min(int(row * h), h - 1), min(int(col * w), w - 1)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return top, bottom, left, right


def cutmix(x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
           perm: torch.Tensor | None = None, device_generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): paste a box of area (1 - lam), lam ~ Beta(alpha, alpha), from each
    image's partner (a random permutation of the batch, or `perm`; see `partner_order`) into it."""
    lam = sample_beta(alpha, generator)
    if perm is None:
        perm = partner_order(x.shape[0], x.device, generator, device_generator)
    return paste_box(x, targets, cutmix_box(*x.shape[-2:], lam, generator), perm)


def build_mix(cfg) -> Mix | None:
    """The batch mixing a config asks for, as (x, labels, generator, device_generator=None) -> (x, soft
    targets), or None. Host values come from the CPU `generator`, partner orders from `device_generator`.

    With probability mix_prob a batch is mixed; otherwise its targets are one-hot, so every
    batch has soft targets of the same shape. mixup_cutmix picks one of the two per batch.
    """
    if cfg.mix == "none":
        return None
    methods = {"mixup": [mixup], "cutmix": [cutmix], "mixup_cutmix": [mixup, cutmix]}[cfg.mix]
    alpha, prob, classes = cfg.mix_alpha, cfg.mix_prob, cfg.num_classes

    def mix(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
            device_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        targets = one_hot(labels, classes).to(x.dtype)
        draw = host_uniform(generator, 2)
        if draw[0] >= prob:
            return x, targets
        method = methods[min(int(draw[1] * len(methods)), len(methods) - 1)]
        return method(x, targets, generator, alpha, device_generator=device_generator)
    return mix
