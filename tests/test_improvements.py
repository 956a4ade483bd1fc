"""The improvement techniques: augmentations, mixing, model switches, optimizer groups, EMA, TTA,
the validation split, and config validation. Small tensors only; no data set, no network."""
from __future__ import annotations

import pytest
import torch

from cvlab.core import augment as aug
from cvlab.report.ablation_plots import augmentation_gallery
from cvlab.report.plots import save_figure
from cvlab.core.config import make_config
from cvlab.core.data import Split, split_validation, subset
from cvlab.core.ema import WeightEMA
from cvlab.core.engine import EvalStep
from cvlab.core.optim import build_optimizer
from cvlab.core.errors import ConfigError, DataError
from cvlab.core.models import BasicBlock, CifarResNet18, HandoutBasicBlock, build_model, zero_init_last_bn



POLICIES = ["trivialaugment", "randaugment", "autoaugment"]


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- uint8 augmentations

def test_cutout_fills_one_square_per_image_with_the_mean_colour():
    x = images(16)
    out = aug.cutout(x, 8, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    fill = torch.tensor(aug.MEAN_FILL, dtype=torch.uint8)[:, None, None]
    changed = (out != x).any(dim=1)  # (B, H, W)
    assert ((out == fill).all(dim=1) | ~changed).all()  # changed pixels hold exactly the fill colour
    filled = (out == fill).all(dim=1).sum(dim=(1, 2))
    assert (filled <= 64).all() and (filled > 0).all()  # at most 8x8, partly outside allowed
    assert torch.equal(out, aug.cutout(x, 8, gen()))
    assert not torch.equal(out, aug.cutout(x, 8, gen(1)))


@pytest.mark.parametrize("name", POLICIES)
def test_policy_is_uint8_deterministic_and_leaves_global_rng_alone(name):
    x = images(8)
    policy = aug.make_policy(name)
    before = torch.get_rng_state()
    a = aug.apply_policy(x, policy, gen(3))
    assert torch.equal(torch.get_rng_state(), before)
    b = aug.apply_policy(x, policy, gen(3))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    grouped = aug.apply_policy(x, policy, gen(3), group=4)
    assert grouped.shape == x.shape


def test_build_augment_composes_crop_flip_policy_cutout():
    cfg = make_config("handout", crop_padding=4, hflip=True, policy="trivialaugment", cutout=8)
    a = aug.build_augment(cfg)
    out = a(images(4), gen(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, a(images(4), gen(0)))
    assert aug.build_augment(make_config("handout")) is None


# ---------------------------------------------------------------------------- mixing

def constant_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i, label i: a mixed pixel tells exactly which images it came from."""
    labels = torch.arange(n)
    return labels.float()[:, None, None, None].expand(n, 3, 32, 32).contiguous(), labels


@pytest.mark.parametrize("method", [aug.mixup, aug.cutmix])
def test_mixing_weights_sum_to_one_and_match_the_pixels(method):
    x, labels = constant_batch(6)
    targets = aug.one_hot(labels, 10)
    out, soft = method(x, targets, gen(5), 1.0)
    assert out.shape == x.shape and out.dtype == torch.float32 and soft.shape == (6, 10)
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))
    assert (soft >= 0).all() and (soft <= 1).all()
    # the mean pixel of each mixed image equals its target-weighted class index, for both methods
    assert torch.allclose(out.mean(dim=(1, 2, 3)), soft @ torch.arange(10.0), atol=1e-5)
    again = method(x, targets, gen(5), 1.0)
    assert torch.equal(out, again[0]) and torch.equal(soft, again[1])


def test_cutmix_box_share_is_the_partner_weight():
    x, labels = constant_batch(4)
    out, soft = aug.paste_box(x, aug.one_hot(labels, 4), (0, 16, 0, 8), torch.tensor([1, 2, 3, 0]))
    assert torch.allclose(soft[0], torch.tensor([1 - 128 / 1024, 128 / 1024, 0, 0]))
    assert (out[0, :, :16, :8] == 1).all() and (out[0, :, 16:, :] == 0).all()


def test_build_mix_probability_and_choice():
    x, labels = constant_batch(8)
    never = aug.build_mix(make_config("handout", mix="cutmix", mix_prob=0.0))
    out, soft = never(x, labels, gen())
    assert torch.equal(out, x) and torch.equal(soft, aug.one_hot(labels, 100))
    both = aug.build_mix(make_config("handout", mix="mixup_cutmix", mix_prob=1.0))
    for seed in range(4):
        out, soft = both(x, labels, gen(seed))
        assert soft.shape == (8, 100) and torch.allclose(soft.sum(1), torch.ones(8))
    assert aug.build_mix(make_config("handout")) is None


def test_visual_sanity_figure_is_written(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    fig = augmentation_gallery(images(4), seed=0, synthetic=True)
    path = save_figure(fig, tmp_path / "augmentations.png")
    assert path.stat().st_size > 10_000
    rows = len(fig.axes) // 4
    assert rows == 8  # original + crop/flip + cutout + 3 policies + mixup + cutmix


# ---------------------------------------------------------------------------- model and optimizer

@pytest.mark.parametrize("name", ["handout_resnet18", "cifar_resnet18"])
def test_zero_init_and_dropout(name):
    model = build_model(name, zero_init_last=True, dropout=0.5)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, HandoutBasicBlock))]
    assert len(blocks) == 8 and all((b.bn2.weight == 0).all() for b in blocks)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 1
    plain = build_model(name)
    assert all((b.bn2.weight == 1).all() for b in plain.modules() if isinstance(b, (BasicBlock, HandoutBasicBlock)))
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())


def test_zero_init_blocks_start_as_their_shortcut_and_dropout_acts_only_in_training():
    torch.manual_seed(0)
    model = CifarResNet18(widths=(4, 8, 16, 32), dropout=0.5)
    zero_init_last_bn(model)
    block = model.layers[1]  # identity shortcut: out = relu(0 + x) = x for x >= 0
    block.eval()
    x = torch.rand(2, 4, 8, 8)
    assert torch.equal(block(x), x)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_weight_decay_skips_bn_and_bias():
    model = build_model("cifar_resnet18")
    opt = build_optimizer(make_config("+no-bn-decay"), model)
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    assert len(build_optimizer(make_config("+onecycle"), model).param_groups) == 1


# ---------------------------------------------------------------------------- EMA and TTA

def test_weight_ema_follows_the_formula():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update()  # first decay: min(0.9, 2/11)
    d = 2 / 11
    for s, p, e in zip(start, model.parameters(), ema.module.parameters()):
        assert torch.allclose(e, d * s + (1 - d) * p)
    assert int(ema.module[1].num_batches_tracked) == 5
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == 0.9
    clone = WeightEMA(model, 0.9)
    clone.load_state_dict(ema.state_dict())
    assert clone.updates == ema.updates


def test_tta_flip_averages_the_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 5)).eval()
    x = torch.randn(3, 3, 32, 32)
    flip = EvalStep(model, torch.device("cpu"), tta_flip=True)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(3))) / 2
        assert torch.allclose(flip.logits(x), expected, atol=1e-6)
        mirror_symmetric = torch.cat([x[..., :16], x[..., :16].flip(3)], dim=3)
        plain = EvalStep(model, torch.device("cpu"))
        assert torch.allclose(flip.logits(mirror_symmetric), plain.logits(mirror_symmetric), atol=1e-5)


# ---------------------------------------------------------------------------- validation split

def labelled_split(per_class: int) -> Split:
    """Classes interleaved like the real order; image i carries i in its first two pixels (base 256)."""
    fine = torch.arange(100).repeat(per_class)
    ids = torch.arange(len(fine))
    imgs = torch.zeros(len(fine), 3, 32, 32, dtype=torch.uint8)
    imgs[:, 0, 0, 0], imgs[:, 0, 0, 1] = (ids // 256).to(torch.uint8), (ids % 256).to(torch.uint8)
    return Split(imgs, fine, fine // 5)


def ids(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist()


def test_validation_split_is_balanced_disjoint_and_deterministic():
    split = labelled_split(6)
    train, val = split_validation(split, 200)
    assert len(val) == 200 and len(train) == 400
    assert torch.equal(torch.bincount(val.fine, minlength=100), torch.full((100,), 2))
    assert ids(val) == list(range(400, 600))  # the last two of each class, original order
    assert ids(split_validation(split, 200)[1]) == ids(val)
    rest = subset(train, 100)  # the training subset is drawn from what is left
    assert ids(rest) == list(range(100)) and set(ids(rest)).isdisjoint(ids(val))
    assert split_validation(split, 0) == (split, None)
    with pytest.raises(DataError):
        split_validation(split, 600)


@pytest.mark.parametrize("field,value", [("cutout", -1), ("cutout", 40), ("mix", "blend"), ("mix_alpha", 0.0),
                                         ("mix_prob", 1.5), ("policy", "augmix"), ("policy_group", -1),
                                         ("dropout", 1.0), ("ema_decay", 1.0), ("val_size", 50), ("val_size", -100)])
def test_config_rejects_bad_technique_values(field, value):
    with pytest.raises(ConfigError):
        make_config("handout", **{field: value})


@pytest.mark.parametrize("name", ["trivialaugment", "randaugment", "autoaugment"])
def test_policies_batched_by_op_draw_per_image_and_repeat_from_the_generator(name):
    """policy_group 0 (default): every image draws its own op (so a batch holds many ops), images that drew
    the same op share its magnitude, and the result depends only on the CPU generator."""
    from cvlab.core import augment as aug
    policy = aug.make_policy(name)
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    stages = aug.policy_stages(policy, 128, torch.Generator().manual_seed(0))
    assert len(stages) == {"trivialaugment": 1, "randaugment": 2, "autoaugment": 2}[name]
    assert len({op[0] for op in stages[0] if op}) >= 8  # per image, not one op for the batch
    first = aug.apply_policy(x, policy, torch.Generator().manual_seed(3))
    assert first.dtype == torch.uint8 and first.shape == x.shape
    assert torch.equal(first, aug.apply_policy(x, policy, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, aug.apply_policy(x, policy, torch.Generator().manual_seed(4)))


def test_a_batched_op_gives_what_torchvision_gives_each_image():
    """One call on the group equals torchvision's op applied image by image at the same magnitude."""
    from cvlab.core import augment as aug
    policy = aug.make_policy("trivialaugment")
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for op, magnitude in [("Rotate", 20.0), ("ShearX", -0.3), ("Posterize", 4.0), ("Equalize", 0.0),
                          ("Solarize", 0.5), ("Contrast", 0.5), ("AutoContrast", 0.0)]:
        together = policy._apply_image_or_video_transform(x, op, magnitude, interpolation=policy.interpolation,
                                                          fill=policy._fill)
        alone = torch.cat([policy._apply_image_or_video_transform(x[i:i + 1], op, magnitude,
                                                                   interpolation=policy.interpolation,
                                                                   fill=policy._fill) for i in range(6)])
        assert torch.equal(together, alone), op
