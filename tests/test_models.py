import pickle

import torch

from cvlab.core.models import MODELS, build_model, count_parameters, shape_walk


def test_handout_model_shape_and_parameter_count():
    model = build_model("handout_resnet18")
    assert count_parameters(model) == 11_223_140
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_handout_stem_gives_15x15_and_walk_ends_at_1x1():
    walk = shape_walk(build_model("handout_resnet18"))
    names = [name for name, _ in walk]
    assert walk[0][1] == (1, 64, 30, 30)  # unpadded 3x3 conv
    assert walk[names.index("MaxPool2d")][1] == (1, 64, 15, 15)
    spatial = [shape[-1] for _, shape in walk if len(shape) == 4]
    assert spatial[-1] == 1 and 2 in spatial and 4 in spatial and 8 in spatial
    assert walk[-1][1] == (1, 100)


def test_handout_shortcut_is_conv_without_bn_only_where_strided():
    model = build_model("handout_resnet18")
    blocks = [m for m in model if m.__class__.__name__ == "HandoutBasicBlock"]
    assert len(blocks) == 8
    strided = [b for b in blocks if b.conv1.stride == (2, 2)]
    assert len(strided) == 3
    for b in strided:
        assert [type(m).__name__ for m in b.downsample] == ["Conv2d"]
        assert b.downsample[0].kernel_size == (1, 1)
    for b in blocks:
        if b not in strided:
            assert isinstance(b.downsample, torch.nn.Identity)


def test_handout_model_pickles_and_round_trips():
    model = build_model("handout_resnet18").eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), clone(x))


def test_cifar_resnet18_shape_count_and_bn_shortcut():
    model = build_model("cifar_resnet18")
    assert count_parameters(model) == 11_220_132
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    shortcuts = [m.shortcut for m in model.modules() if hasattr(m, "shortcut") and isinstance(m.shortcut, torch.nn.Sequential)]
    assert len(shortcuts) == 3
    assert all(isinstance(s[1], torch.nn.BatchNorm2d) for s in shortcuts)


def test_registry_builds_every_model_with_num_classes():
    for name in MODELS:
        assert build_model(name, num_classes=10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
