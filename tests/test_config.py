import pytest

from cvlab.core.config import PRESETS, apply_overrides, load_config, make_config, save_config
from cvlab.core.errors import ConfigError


def test_handout_preset_matches_the_handout():
    cfg = make_config("handout")
    assert (cfg.model, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.epochs) == ("handout_resnet18", 1024, "adam", 1e-4, 100)
    assert cfg.shuffle is False and cfg.crop_padding == 0 and cfg.hflip is False
    assert cfg.normalization == "handout" and cfg.precision == "fp32" and not cfg.compile


def test_overrides_are_typed():
    cfg = apply_overrides(make_config("handout"), ["epochs=3", "lr=0.01", "shuffle=yes", "model=cifar_resnet18"])
    assert (cfg.epochs, cfg.lr, cfg.shuffle, cfg.model) == (3, 0.01, True, "cifar_resnet18")


@pytest.mark.parametrize("pair,message", [
    ("epochz=3", "unknown config key 'epochz'"),
    ("epochs=three", "epochs must be int"),
    ("epochs=-1", "epochs must be positive"),
    ("batch_size=0", "batch_size must be positive"),
    ("model=vgg", "unknown model 'vgg'"),
    ("optimizer=lion", "optimizer must be one of"),
    ("shuffle=maybe", "shuffle must be true or false"),
    ("nesterov=true", "nesterov needs optimizer=sgd"),
    ("subset=50", "at least 100 images"),
    ("epochs", "--set expects key=value"),
])
def test_bad_values_are_rejected_with_the_reason(pair, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(make_config("handout"), [pair])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        make_config("fastest")


def test_every_preset_is_valid():
    for name in PRESETS:
        assert make_config(name).preset == name


def test_save_and_load_round_trip_json_and_yaml(tmp_path):
    cfg = make_config("handout", epochs=7, seed=3)
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("preset: handout\nepochs: 7\nlr: 1.0e-3\n")
    assert load_config(tmp_path / "c.yaml").lr == 1e-3
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(tmp_path / "bad.yaml")
