import json
import math
import re

import pytest

from cvlab.core.config import (DEVICES, FIELDS, PRESETS, Config, check_value, load_config, make_config, parse_pairs, parse_value, validate,
                               with_overrides)
from cvlab.core.errors import ConfigError
from cvlab.core.runs import write_json


def test_handout_preset_matches_the_handout():
    cfg = make_config("handout")
    assert (cfg.model, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.epochs) == ("handout_resnet18", 1024, "adam", 1e-4, 100)
    assert cfg.shuffle is False and cfg.crop_padding == 0 and cfg.hflip is False
    assert cfg.normalization == "handout" and cfg.precision == "fp32" and not cfg.compile


def test_overrides_are_typed():
    cfg = with_overrides(make_config("handout"), parse_pairs(["epochs=3", "lr=0.01", "shuffle=yes", "model=cifar_resnet18"]))
    assert (cfg.epochs, cfg.lr, cfg.shuffle, cfg.model) == (3, 0.01, True, "cifar_resnet18")


def test_one_typed_path_for_values_and_text():
    base = make_config("handout")
    typed = with_overrides(base, {"epochs": 3, "lr": 1, "shuffle": True, "device": "cpu"})
    text = with_overrides(base, {"epochs": "3", "lr": "1", "shuffle": "on", "device": "cpu"})
    assert typed == text == with_overrides(base, parse_pairs(["epochs=3", "lr=1", "shuffle=on", "device=cpu"]))
    assert isinstance(typed.lr, float) and typed.lr == 1.0
    assert base.epochs == 100  # a copy: the base is unchanged
    assert parse_pairs(["lr=0.1", "lr=0.2"]) == {"lr": 0.2}  # later pairs win
    with pytest.raises(ConfigError, match="epochs must be an integer, got True"):
        with_overrides(base, {"epochs": True})
    with pytest.raises(ConfigError, match="shuffle must be true or false"):
        with_overrides(base, {"shuffle": 1})


@pytest.mark.parametrize("word,value", [(w, True) for w in ("1", "true", "Yes", "ON")]
                         + [(w, False) for w in ("0", "false", "No", "off")])
def test_bool_spellings_are_the_same_everywhere(word, value):
    assert parse_value("shuffle", word) is value
    assert with_overrides(make_config("handout"), parse_pairs([f"hflip={word}"])).hflip is value


@pytest.mark.parametrize("pair,message", [
    ("epochz=3", "unknown config key 'epochz'"),
    ("epochs=three", "epochs must be an integer"),
    ("epochs=-1", r"epochs must be in \[1, 10000\], got -1"),
    ("batch_size=0", r"batch_size must be in \[1, 50000\], got 0"),
    ("model=vgg", "unknown model 'vgg'"),
    ("optimizer=lion", "optimizer must be one of"),
    ("device=tpu", "device must be one of auto, cpu, cuda, npu, mps"),
    ("shuffle=maybe", "shuffle must be true or false"),
    ("nesterov=true", "nesterov needs optimizer=sgd"),
    ("subset=50", "at least 100 images"),
    ("crop_padding=17", r"crop_padding must be in \[0, 16\]"),
    ("cutout=33", r"cutout must be in \[0, 32\]"),
    ("momentum=1", r"momentum must be in \[0, 1\)"),
    ("warmup=1.5", r"warmup must be in \[0, 1\]"),
    ("lr=0", r"lr must be in \(0, 1000\], got 0.0"),
    ("lr=inf", "lr must be a finite number"),
    ("weight_decay=inf", "weight_decay must be a finite number"),
    ("weight_decay=nan", "weight_decay must be a finite number"),
    ("warmup=nan", "warmup must be a finite number"),
    ("warmup_epochs=4.5", "config key 'warmup_epochs' was renamed warmup"),  # an older key: one line, no translation
    ("label_smoothing=-inf", "label_smoothing must be a finite number"),
    ("epochs", "--set expects key=value"),
])
@pytest.mark.filterwarnings("ignore:older config key")
def test_bad_values_are_rejected_with_the_reason(pair, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(make_config("handout"), parse_pairs([pair]))


@pytest.mark.parametrize("name", [n for n, s in FIELDS.items() if s.type is float])
def test_every_float_field_refuses_non_finite_values(name):
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
            with_overrides(make_config("handout"), {name: bad})
        cfg = Config()
        setattr(cfg, name, bad)  # built around with_overrides: validate still refuses it
        with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
            validate(cfg)


def test_non_finite_numbers_in_a_json_config_file_are_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"lr": Infinity}')  # Python's json reads it; the config refuses it
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        load_config(path)


def test_every_field_declares_its_help_and_choices_once():
    for spec in FIELDS.values():
        assert spec.help and spec.type in (bool, int, float, str), spec.name
        assert isinstance(spec.default, spec.type), spec.name
        if spec.choices:
            assert spec.default in spec.choices
    assert FIELDS["device"].choices == DEVICES
    validate(Config())


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        make_config("fastest")


def test_every_preset_is_valid():
    for name in PRESETS:
        assert make_config(name).preset == name


def test_presets_keep_their_warmup_at_their_default_length():
    # before the warmup became a fraction: +sgd-onecycle (now +onecycle) 15 of 100 epochs, fast 4.5 of 30, best 30 of 200
    for name, epochs, warmup_epochs in (("+onecycle", 100, 15), ("fast", 30, 4.5), ("best", 200, 30)):
        cfg = make_config(name)
        assert cfg.epochs == epochs and cfg.warmup * cfg.epochs == pytest.approx(warmup_epochs)
    for name in PRESETS:  # every preset with a warmup derives from +onecycle
        assert make_config(name).warmup in (0.0, 0.15)
    assert "15% of the steps" in PRESETS["+onecycle"][0]


def test_an_older_config_with_warmup_epochs_names_the_renamed_key(tmp_path):
    old = {**make_config("fast").to_dict(), "warmup_epochs": 4.5}
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"config key 'warmup_epochs' was renamed warmup \(a share of the run's steps"):
        load_config(tmp_path / "config.json")


def test_check_value_converts_ints_for_float_fields_only():
    assert check_value("lr", 1) == 1.0 and isinstance(check_value("lr", 1), float)
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        check_value("epochs", 2.0)


def test_save_and_load_round_trip_json_and_yaml(tmp_path):
    cfg = make_config("handout", epochs=7, seed=3)
    write_json(tmp_path / "c.json", cfg.to_dict())
    assert load_config(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("preset: handout\nepochs: 7\nlr: 1.0e-3\n")
    assert load_config(tmp_path / "c.yaml").lr == 1e-3
    (tmp_path / "e.yaml").write_text("lr: 1e-3\n")  # YAML 1.1 reads this as text; the field's type parses it
    assert load_config(tmp_path / "e.yaml").lr == 1e-3
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid yaml") as err:
        load_config(tmp_path / "bad.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "latin1.json").write_bytes('{"preset": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin1.json")


NUMERIC = [n for n, s in FIELDS.items() if s.type in (int, float)]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_field_has_an_upper_limit(name):
    spec = FIELDS[name]
    assert spec.range is not None and spec.range.high is not None, name
    high = spec.type(spec.range.high)
    if not spec.range.high_open:
        assert check_value(name, high) == high
    for absurd in (high * 10 + 1, spec.type(10 ** 22)):
        with pytest.raises(ConfigError, match=re.escape(f"{name} must be {spec.range.text()}, got")):
            with_overrides(make_config("handout"), {name: absurd})
    for preset in PRESETS:  # every preset stays within them
        assert getattr(make_config(preset), name) in spec.range


def test_the_limits_are_shown_in_help_and_fit_numpy(capsys):
    from cvlab.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in NUMERIC:
        assert f"{FIELDS[name].range.text()} (default:" in text, name
    assert "--epochs N passes over the training set; in [1, 10000] (default: 100)" in text
    assert "in [0, 4294967295]" in text  # the largest seed numpy takes
    import numpy as np
    np.random.seed(FIELDS["seed"].range.high)
